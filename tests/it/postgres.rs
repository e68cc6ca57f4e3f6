//! The PostgreSQL backend (SPEC §10): things only Postgres has. The API
//! contract itself runs on both backends in `api.rs` and friends.

use crate::helpers::postgres;

#[test]
fn the_throwaway_cluster_gives_each_test_a_database_of_its_own() {
    let first = postgres::database();
    let second = postgres::database();
    assert_ne!(first.name, second.name);
    first.query("CREATE TABLE only_here (x int)");
    assert_eq!(first.query("SELECT count(*) FROM only_here"), "0");
    assert_eq!(
        second.query("SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'"),
        "0"
    );
    assert!(first.url.starts_with("postgres://gallery:"));
}
