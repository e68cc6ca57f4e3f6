//! Versioned migrations on `PRAGMA user_version`, and the seed rows.
//!
//! Migration k (1-based) brings the schema from version k-1 to k. All pending
//! migrations run in one `BEGIN IMMEDIATE` transaction, so concurrent first
//! starts serialise on the write lock and the loser sees the finished schema.
//! Migrations are append-only: a released one is never edited, a change is a
//! new entry.

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

#[derive(Debug, thiserror::Error)]
pub(super) enum MigrateError {
    #[error("schema version {found} is newer than supported {supported}")]
    TooNew { found: i64, supported: i64 },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
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
