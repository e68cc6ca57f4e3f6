//! The database behind a test, on either backend (SPEC §3, §10): the
//! `--database` argument a worker or a stack is started with, reading rows
//! back, and the sabotage the contract tests need, each done the way its
//! backend does it.
//!
//! The contract tests take a [`Backend`] and [`on_both_backends!`] runs
//! each of them once per backend, as `FILE::sqlite::NAME` and
//! `FILE::postgres::NAME`: one body, two runs. Everything that must differ
//! between the backends lives here, so a test body never branches on its
//! backend. SQL passed to [`TestDatabase::rows`] must therefore be plain
//! enough for both (`SELECT ... FROM images ...`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::time::Duration;

use super::postgres;

/// Which store the workers run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A `gallery.db` file in a temp directory of its own.
    Sqlite,
    /// A fresh database on the test process's throwaway PostgreSQL cluster.
    Postgres,
}

/// For each listed `fn NAME(backend: Backend)` of the calling module,
/// generates `sqlite::NAME` and `postgres::NAME`, the `#[test]`s that run it
/// on each backend. A listed name that is not such a function fails to
/// compile; a contract test left off the list is dead code (a warning that
/// `clippy -D warnings` refuses).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::helpers::database::Backend::Sqlite)
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::helpers::database::Backend::Postgres)
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

/// One test's database, removed when dropped (drop it after every process
/// that uses it: declare it first).
pub struct TestDatabase {
    store: Store,
}

enum Store {
    Sqlite {
        /// The directory holding the file (and its `-wal` and `-shm`).
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres(postgres::Database),
}

impl TestDatabase {
    /// A fresh, empty database: the workers create, migrate and seed it.
    pub fn new(backend: Backend) -> TestDatabase {
        let store = match backend {
            Backend::Sqlite => {
                // 0755 like a checkout, as `Supervisor::temp_dir` makes it:
                // run as root, the supervisor's servers run as `nobody`.
                let dir = super::supervisor::Supervisor::temp_dir();
                let path = dir.path().join("gallery.db");
                Store::Sqlite { _dir: dir, path }
            }
            Backend::Postgres => Store::Postgres(postgres::database()),
        };
        TestDatabase { store }
    }

    pub fn backend(&self) -> Backend {
        match self.store {
            Store::Sqlite { .. } => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// What `--database` takes: the file's path, or the `postgres://` URL.
    pub fn arg(&self) -> String {
        match &self.store {
            Store::Sqlite { path, .. } => path.display().to_string(),
            Store::Postgres(database) => database.url.clone(),
        }
    }

    /// What `DATABASE_URL` takes: `sqlite://PATH`, or the `postgres://` URL.
    pub fn url(&self) -> String {
        match &self.store {
            Store::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            Store::Postgres(database) => database.url.clone(),
        }
    }

    /// The SQLite file, for the tests that are about the file itself.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.store {
            Store::Sqlite { path, .. } => Some(path),
            Store::Postgres(_) => None,
        }
    }

    /// Every row `sql` yields, each value as text (NULL as ""). The SQL
    /// must mean the same on both backends.
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        match &self.store {
            Store::Sqlite { path, .. } => sqlite_rows(path, sql),
            Store::Postgres(database) => postgres_rows(database, sql),
        }
    }

    /// Runs `sql` (statements that mean the same on both backends).
    pub fn execute(&self, sql: &str) {
        match &self.store {
            Store::Sqlite { path, .. } => sqlite_connection(path)
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql:?}: {e}")),
            Store::Postgres(database) => {
                database.query(sql);
            }
        }
    }

    /// The one value `sql` yields.
    pub fn value(&self, sql: &str) -> String {
        let rows = self.rows(sql);
        assert!(
            rows.len() == 1 && rows[0].len() == 1,
            "{sql:?} yielded {rows:?}, not one value"
        );
        rows[0][0].clone()
    }

    /// How many rows `images` holds.
    pub fn count(&self) -> usize {
        self.value("SELECT count(*) FROM images").parse().unwrap()
    }

    /// Every title in `images`, with how many rows carry it.
    pub fn titles(&self) -> HashMap<String, i64> {
        self.rows("SELECT title, count(*) FROM images GROUP BY title")
            .into_iter()
            .map(|row| (row[0].clone(), row[1].parse().unwrap()))
            .collect()
    }

    /// The ids of each title among the rows whose `alt_text` is `marker`,
    /// in id order.
    pub fn ids_by_title(&self, marker: &str) -> HashMap<String, Vec<i64>> {
        let sql = format!(
            "SELECT title, id FROM images WHERE alt_text = '{}' ORDER BY id",
            marker.replace('\'', "''")
        );
        let mut ids: HashMap<String, Vec<i64>> = HashMap::new();
        for row in self.rows(&sql) {
            ids.entry(row[0].clone())
                .or_default()
                .push(row[1].parse().unwrap());
        }
        ids
    }

    /// Panics unless every acknowledged title is stored exactly once and no
    /// title is stored twice; returns how many titles there are.
    pub fn assert_stored_once(&self, acknowledged: &[String]) -> usize {
        super::load::assert_each_stored_once(&self.titles(), acknowledged)
    }

    /// The version the migrations recorded (SQLite: `PRAGMA user_version`;
    /// PostgreSQL: the one row of `schema_version`).
    pub fn schema_version(&self) -> i64 {
        let sql = match self.store {
            Store::Sqlite { .. } => "SELECT user_version FROM pragma_user_version",
            Store::Postgres(_) => "SELECT version FROM schema_version",
        };
        self.value(sql).parse().unwrap()
    }

    /// The schema as the backend describes it: every table, column and
    /// index, the schema version where the backend keeps one outside a
    /// table, and how many rows each table other than `images` holds (a
    /// migration run twice shows there). Equal for two databases that the
    /// same migrations made once each.
    pub fn schema(&self) -> Vec<Vec<String>> {
        let (described, tables) = match self.store {
            Store::Sqlite { .. } => (
                [
                    "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name",
                    "SELECT 'user_version', user_version FROM pragma_user_version",
                ],
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            ),
            Store::Postgres(_) => (
                [
                    "SELECT table_name, column_name, data_type, is_nullable, column_default \
                     FROM information_schema.columns WHERE table_schema = 'public' \
                     ORDER BY table_name, ordinal_position",
                    "SELECT tablename, indexname, indexdef FROM pg_indexes \
                     WHERE schemaname = 'public' ORDER BY tablename, indexname",
                ],
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
            ),
        };
        let mut schema: Vec<Vec<String>> =
            described.iter().flat_map(|sql| self.rows(sql)).collect();
        for table in self.rows(tables).into_iter().map(|row| row[0].clone()) {
            if table != "images" {
                let rows = self.value(&format!("SELECT count(*) FROM \"{table}\""));
                schema.push(vec![table, rows]);
            }
        }
        schema
    }

    /// Inserts `count` rows (titles `bulk 000000 ttt…`, `alt_text` of
    /// `alt_chars` characters, urls `/images/uuu…` of `url_chars` more)
    /// straight into `images`, in one transaction; the schema must exist.
    pub fn bulk_insert(&self, count: usize, alt_chars: usize, url_chars: usize) {
        match &self.store {
            Store::Sqlite { path, .. } => {
                let mut conn = sqlite_connection(path);
                let tx = conn.transaction().unwrap();
                {
                    let mut insert = tx
                        .prepare("INSERT INTO images (title, alt_text, url) VALUES (?1, ?2, ?3)")
                        .unwrap();
                    let alt = "a".repeat(alt_chars);
                    let url = format!("/images/{}", "u".repeat(url_chars));
                    for n in 0..count {
                        insert
                            .execute((format!("bulk {n:06} {}", "t".repeat(90)), &alt, &url))
                            .unwrap();
                    }
                }
                tx.commit().unwrap();
            }
            Store::Postgres(database) => {
                database.query(&format!(
                    "INSERT INTO images (title, alt_text, url) \
                     SELECT 'bulk ' || lpad(n::text, 6, '0') || ' ' || repeat('t', 90), \
                            repeat('a', {alt_chars}), '/images/' || repeat('u', {url_chars}) \
                     FROM generate_series(0, {count} - 1) AS n ORDER BY n"
                ));
            }
        }
    }

    /// Sabotage: drops the `images` table under the running workers.
    pub fn drop_images_table(&self) {
        match &self.store {
            Store::Sqlite { path, .. } => sqlite_connection(path)
                .execute_batch("DROP TABLE images")
                .unwrap(),
            Store::Postgres(database) => {
                database.query("DROP TABLE images CASCADE");
            }
        }
    }

    /// What the backend's error says once `images` is gone: the workers
    /// must log it, and never send it to a client.
    pub fn missing_table_error(&self) -> &'static str {
        match self.store {
            Store::Sqlite { .. } => "no such table",
            Store::Postgres(_) => "does not exist",
        }
    }

    /// Sabotage: holds the database's write lock until the guard is
    /// released or dropped, so every write waits (SQLite: a `BEGIN
    /// EXCLUSIVE` transaction; PostgreSQL: every table of the schema locked
    /// `IN EXCLUSIVE MODE` by a `psql` kept open, which, like SQLite's write
    /// lock in WAL mode, stops writers and lets readers read).
    pub fn hold_write_lock(&self) -> WriteLock {
        match &self.store {
            Store::Sqlite { path, .. } => {
                let conn = sqlite_connection(path);
                conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
                WriteLock::Sqlite(Some(conn))
            }
            Store::Postgres(database) => {
                let mut psql = database
                    .cluster()
                    .psql(&database.name)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("psql runs");
                let mut stdin = psql.stdin.take().unwrap();
                stdin
                    .write_all(
                        b"BEGIN;\n\
                          DO $$ DECLARE t text; BEGIN\n\
                            FOR t IN SELECT quote_ident(tablename) FROM pg_tables\n\
                                     WHERE schemaname = 'public' ORDER BY tablename LOOP\n\
                              EXECUTE 'LOCK TABLE ' || t || ' IN EXCLUSIVE MODE';\n\
                            END LOOP;\n\
                          END $$;\n\
                          SELECT 'locked';\n",
                    )
                    .unwrap();
                stdin.flush().unwrap();
                let mut line = String::new();
                BufReader::new(psql.stdout.take().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                if line.trim() != "locked" {
                    drop(stdin);
                    let out = psql.wait_with_output().unwrap();
                    panic!(
                        "psql did not take the lock: {line:?} {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                WriteLock::Postgres(Some((psql, stdin)))
            }
        }
    }

    /// Strings that no response body may ever carry: where the database
    /// is and how to get in.
    pub fn private_details(&self) -> Vec<String> {
        match &self.store {
            Store::Sqlite { path, .. } => vec![
                "gallery.db".to_string(),
                path.parent().unwrap().display().to_string(),
            ],
            Store::Postgres(database) => vec![
                postgres::PASSWORD.to_string(),
                database.name.clone(),
                format!(":{}", database.cluster().port),
            ],
        }
    }
}

/// The database's write lock, held (see [`TestDatabase::hold_write_lock`]);
/// released by [`WriteLock::release`] or on drop.
pub enum WriteLock {
    Sqlite(Option<rusqlite::Connection>),
    Postgres(Option<(Child, ChildStdin)>),
}

impl WriteLock {
    /// Ends the holding transaction (a rollback) and lets the writers on.
    pub fn release(mut self) {
        self.end(true);
    }

    fn end(&mut self, check: bool) {
        match self {
            WriteLock::Sqlite(conn) => {
                if let Some(conn) = conn.take() {
                    let rolled_back = conn.execute_batch("ROLLBACK");
                    if check {
                        rolled_back.unwrap();
                    }
                }
            }
            WriteLock::Postgres(held) => {
                if let Some((mut psql, mut stdin)) = held.take() {
                    let _ = stdin.write_all(b"ROLLBACK;\n");
                    drop(stdin);
                    let done = super::wait_for(Duration::from_secs(10), "psql to exit", || {
                        psql.try_wait().unwrap()
                    });
                    if check {
                        assert!(done.success(), "psql holding the lock exited {done}");
                    }
                }
            }
        }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        if let WriteLock::Postgres(Some((psql, _))) = self
            && std::thread::panicking()
        {
            // A failing test: do not wait on anything.
            let _ = psql.kill();
            let _ = psql.wait();
            return;
        }
        self.end(false);
    }
}

fn sqlite_connection(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

fn sqlite_rows(path: &Path, sql: &str) -> Vec<Vec<String>> {
    use rusqlite::types::ValueRef;
    let conn = sqlite_connection(path);
    let mut statement = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql:?}: {e}"));
    let columns = statement.column_count();
    statement
        .query_map([], |row| {
            (0..columns)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        ValueRef::Null => String::new(),
                        ValueRef::Integer(n) => n.to_string(),
                        ValueRef::Real(x) => x.to_string(),
                        ValueRef::Text(t) | ValueRef::Blob(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                    })
                })
                .collect()
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Unit and record separators: no title or url in the tests holds them.
const FIELD: char = '\u{1f}';
const RECORD: char = '\u{1e}';

fn postgres_rows(database: &postgres::Database, sql: &str) -> Vec<Vec<String>> {
    let mut psql = database.cluster().psql(&database.name);
    psql.arg("-F")
        .arg(FIELD.to_string())
        .arg("-R")
        .arg(RECORD.to_string());
    // Nothing at all for no rows; else records between separators, and
    // a newline after the last (so one empty value is "\n").
    let text = postgres::run_sql(psql, sql);
    if text.is_empty() {
        return Vec::new();
    }
    text.strip_suffix('\n')
        .unwrap_or(&text)
        .split(RECORD)
        .map(|record| record.split(FIELD).map(str::to_string).collect())
        .collect()
}

impl AsRef<OsStr> for TestDatabase {
    /// The `--database` argument, so a `&TestDatabase` goes wherever a
    /// database path went.
    fn as_ref(&self) -> &OsStr {
        match &self.store {
            Store::Sqlite { path, .. } => path.as_os_str(),
            Store::Postgres(database) => OsStr::new(&database.url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    on_both_backends! {
        rows_come_back_as_written,
        the_write_lock_stops_writers_and_lets_readers_read,
    }

    /// The table the workers would create, made by hand (no worker here).
    fn images_table(backend: Backend) -> TestDatabase {
        let db = TestDatabase::new(backend);
        db.execute(match backend {
            Backend::Sqlite => {
                "PRAGMA journal_mode = WAL; CREATE TABLE images (id INTEGER PRIMARY KEY, title TEXT NOT NULL, \
                 alt_text TEXT NOT NULL, url TEXT NOT NULL)"
            }
            Backend::Postgres => {
                "CREATE TABLE images (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
                 title text NOT NULL, alt_text text NOT NULL, url text NOT NULL)"
            }
        });
        db
    }

    fn rows_come_back_as_written(backend: Backend) {
        let db = images_table(backend);
        assert_eq!(db.count(), 0);
        assert!(db.titles().is_empty());
        db.execute(
            "INSERT INTO images (title, alt_text, url) VALUES \
             ('a | b', 'm', '/1'), ('it''s \"é\"', 'm', '/2')",
        );
        db.assert_stored_once(&["a | b".to_string()]);
        db.execute(
            "INSERT INTO images (title, alt_text, url) VALUES \
             ('a | b', 'm', '/3'), ('multi\nline', '', '/4')",
        );
        db.bulk_insert(5, 3, 2);
        assert_eq!(db.count(), 9);
        let titles = db.titles();
        assert_eq!(titles.len(), 8, "{titles:?}");
        assert_eq!(titles["a | b"], 2);
        assert_eq!(titles["it's \"é\""], 1);
        assert_eq!(titles["multi\nline"], 1);
        assert_eq!(titles[&format!("bulk 000004 {}", "t".repeat(90))], 1);
        let ids = db.ids_by_title("m");
        assert_eq!(ids["a | b"], [1, 3]);
        assert_eq!(ids["it's \"é\""], [2]);
        assert_eq!(ids.len(), 2);
        assert_eq!(
            db.rows("SELECT alt_text, url FROM images WHERE id = 6"),
            [["aaa", "/images/uu"]]
        );
        assert_eq!(db.value("SELECT alt_text FROM images WHERE id = 4"), "");
        db.drop_images_table();
        assert_eq!(db.count_of_tables_named_images(), 0);
    }

    fn the_write_lock_stops_writers_and_lets_readers_read(backend: Backend) {
        let db = images_table(backend);
        let write = "INSERT INTO images (title, alt_text, url) VALUES ('w', '', '/w')";
        let lock = db.hold_write_lock();
        assert_eq!(db.count(), 0, "readers read");
        let waited = db.try_write_within(write, Duration::from_millis(200));
        assert!(waited.is_err(), "a writer got through the lock");
        lock.release();
        db.try_write_within(write, Duration::from_millis(200))
            .unwrap();
        assert_eq!(db.count(), 1);
        // Dropped rather than released: let go all the same.
        drop(db.hold_write_lock());
        db.try_write_within(write, Duration::from_millis(200))
            .unwrap();
    }

    impl TestDatabase {
        fn count_of_tables_named_images(&self) -> usize {
            let sql = match self.backend() {
                Backend::Sqlite => "SELECT count(*) FROM sqlite_master WHERE name = 'images'",
                Backend::Postgres => "SELECT count(*) FROM pg_tables WHERE tablename = 'images'",
            };
            self.value(sql).parse().unwrap()
        }

        /// Runs the write `sql`, giving up after waiting `timeout` for a lock.
        fn try_write_within(&self, sql: &str, timeout: Duration) -> Result<(), String> {
            match &self.store {
                Store::Sqlite { path, .. } => {
                    let conn = rusqlite::Connection::open(path).unwrap();
                    conn.busy_timeout(timeout).unwrap();
                    conn.execute_batch(sql).map_err(|e| e.to_string())
                }
                Store::Postgres(database) => {
                    let out = database
                        .cluster()
                        .psql(&database.name)
                        .arg("-c")
                        .arg(format!("SET lock_timeout = {}", timeout.as_millis()))
                        .arg("-c")
                        .arg(sql)
                        .output()
                        .unwrap();
                    if out.status.success() {
                        Ok(())
                    } else {
                        Err(String::from_utf8_lossy(&out.stderr).into_owned())
                    }
                }
            }
        }
    }
}
