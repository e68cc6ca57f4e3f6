//! Versioned migrations and the seed rows, for both backends side by side:
//! migration k (1-based) brings the schema from version k-1 to k, on SQLite
//! ([`MIGRATIONS`]) and on PostgreSQL ([`POSTGRES_MIGRATIONS`]) alike, so a
//! version number means the same tables on either.
//!
//! SQLite records the version in `PRAGMA user_version`; all pending
//! migrations run in one `BEGIN IMMEDIATE` transaction, so concurrent first
//! starts serialise on the write lock and the loser sees the finished schema.
//!
//! PostgreSQL records it in the one-row table `schema_version`; all pending
//! migrations run in one transaction that first takes a transaction-level
//! advisory lock ([`SCHEMA_LOCK`]), so concurrent first starts of any number
//! of processes serialise there, and each later one, once it has the lock,
//! reads the version the first committed and has nothing left to do: one
//! schema, seeded once. (DDL is transactional in PostgreSQL, so a failed
//! migration leaves nothing half-made.)
//!
//! Migrations are append-only: a released one is never edited, a change is
//! a new entry in both lists.

use rusqlite::{Connection, TransactionBehavior};

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the images table of the original design, and the three sample images.
    "CREATE TABLE images (
         id       INTEGER PRIMARY KEY,
         title    TEXT NOT NULL,
         alt_text TEXT NOT NULL,
         url      TEXT NOT NULL
     );
     INSERT INTO images (title, alt_text, url) VALUES
         ('Sunset', 'A warm sunset over the sea', '/images/sunset.svg'),
         ('Mountain', 'A snowy mountain under a clear sky', '/images/mountain.svg'),
         ('Cat', 'A cat curled up asleep', '/images/cat.svg');",
    // 2: `Idempotency-Key`s of POSTs (SPEC §13), each with the exact request
    // body it came with and the image it stored, written in the same
    // transaction as that image. `created_at` is in Unix seconds; rows older
    // than the replay window are pruned by inserts, through the index.
    "CREATE TABLE idempotency_keys (
         key          TEXT PRIMARY KEY,
         request_body BLOB NOT NULL,
         image_id     INTEGER NOT NULL,
         created_at   INTEGER NOT NULL
     );
     CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);",
];

/// The same schema on PostgreSQL, version for version: ids are `BIGINT`
/// identities (assigned by the database, in insertion order), bodies
/// `BYTEA`.
pub(super) const POSTGRES_MIGRATIONS: &[&str] = &[
    // 1: the images table of the original design, and the three sample images.
    "CREATE TABLE images (
         id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         title    TEXT NOT NULL,
         alt_text TEXT NOT NULL,
         url      TEXT NOT NULL
     );
     INSERT INTO images (title, alt_text, url) VALUES
         ('Sunset', 'A warm sunset over the sea', '/images/sunset.svg'),
         ('Mountain', 'A snowy mountain under a clear sky', '/images/mountain.svg'),
         ('Cat', 'A cat curled up asleep', '/images/cat.svg');",
    // 2: `Idempotency-Key`s of POSTs, as on SQLite.
    "CREATE TABLE idempotency_keys (
         key          TEXT PRIMARY KEY,
         request_body BYTEA NOT NULL,
         image_id     BIGINT NOT NULL,
         created_at   BIGINT NOT NULL
     );
     CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);",
];

/// The advisory lock (two-key form: "gall", 1) held while migrating a
/// PostgreSQL database. The per-key locks of idempotent inserts use the
/// one-key form, a space of its own.
pub(super) const SCHEMA_LOCK: (i32, i32) = (0x6761_6c6c, 1);

#[derive(Debug, thiserror::Error)]
pub(super) enum MigrateError {
    #[error("schema version {found} is newer than supported {supported}")]
    TooNew { found: i64, supported: i64 },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] postgres::Error),
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let supported = MIGRATIONS.len() as i64;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > supported {
        return Err(MigrateError::TooNew { found, supported });
    }
    for migration in &MIGRATIONS[found as usize..] {
        tx.execute_batch(migration)?;
    }
    if found < supported {
        tx.pragma_update(None, "user_version", supported)?;
    }
    tx.commit()?;
    Ok(())
}

/// Brings a PostgreSQL database to the newest schema, seeding a new one,
/// under [`SCHEMA_LOCK`] (see the module doc).
pub(super) fn migrate_postgres(client: &mut postgres::Client) -> Result<(), MigrateError> {
    let supported = POSTGRES_MIGRATIONS.len() as i64;
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&SCHEMA_LOCK.0, &SCHEMA_LOCK.1],
    )?;
    let recorded: bool = tx
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?
        .get(0);
    let found: i64 = if recorded {
        tx.query_opt("SELECT version::bigint FROM schema_version", &[])?
            .map_or(0, |row| row.get(0))
    } else {
        tx.batch_execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")?;
        0
    };
    if found > supported {
        return Err(MigrateError::TooNew { found, supported });
    }
    for migration in &POSTGRES_MIGRATIONS[found as usize..] {
        tx.batch_execute(migration)?;
    }
    if found < supported {
        tx.execute("DELETE FROM schema_version", &[])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1::bigint)",
            &[&supported],
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_every_version() {
        assert_eq!(MIGRATIONS.len(), POSTGRES_MIGRATIONS.len());
    }
}
