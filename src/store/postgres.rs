//! The PostgreSQL implementation of the store (SPEC §10): connecting, the
//! pool and what every connection is told, the SQL, and what the server's
//! errors mean for a client.
//!
//! Connections. The synchronous `postgres` client in an r2d2 pool
//! (`r2d2_postgres`), as SQLite's: the API already runs store work on the
//! blocking pool, and the group-commit writer is a thread. Every connection
//! starts with `lock_timeout` = `--busy-timeout-ms` (a table locked by
//! someone else is [`StoreError::Busy`] after that long, a 503 like
//! SQLite's busy), a backstop `statement_timeout`, and
//! `synchronous_commit=off` only under `--synchronous normal` (otherwise the
//! server's setting, `on` by default: an acknowledged write is flushed). No
//! TLS: the server is on loopback or a private network. `/health` has a
//! connection of its own, so it never queues behind list requests.
//!
//! Trouble. A pooled connection found dead when first used (the server
//! restarted, the backend was terminated) is dropped and the work retried
//! on another, as long as nothing of it happened yet; so a restart costs no
//! request. While the server cannot be connected to (down, refusing, the
//! database closed to connections, wrong credentials) every request is a
//! quick [`StoreError::Unreachable`] (503) instead of a wait for the pool,
//! each change of that state is logged once, and the pool keeps trying in
//! the background. Lock and statement timeouts, deadlocks and a pool with
//! no free connection are [`StoreError::Busy`]; anything else is a generic
//! error. Errors are logged with the server's code and message. At start, a server that cannot be
//! reached is one [`StoreError::CannotConnect`] line naming host, port,
//! database and user, never the password.
//!
//! Writes. A group is one transaction, a savepoint per write; the commit is
//! the group's one flush. Expired idempotency keys are pruned first, alone
//! and skipping rows another group is pruning, so pruning never waits. Each
//! key of the group is then locked with a transaction-level advisory lock
//! (in one order, so two groups never deadlock on each other), so that two
//! requests with one key on two workers serialise: the second finds the
//! first's row and replays it or refuses it.
//!
//! Freshness of the list cache ([`ServerVersion`]): the server's MVCC
//! snapshot (`pg_current_snapshot()`), which says which transactions had
//! finished, plus the server's start time. One round trip, no table scan,
//! and exact: a commit acknowledged by any worker is finished in every
//! snapshot taken after it, whatever order ids were committed in (which
//! `max(id)` would miss). Concurrent readers share one round trip
//! ([`VersionReads`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use postgres::{Client, Config, GenericClient, NoTls};
use r2d2_postgres::PostgresConnectionManager;

use super::location::PostgresUrl;
use super::schema::{self, MigrateError};
use super::{
    IDEMPOTENCY_WINDOW, Keyed, Page, StoreError, StoreOptions, Synchronous, Write, unix_seconds,
};
use crate::image::{Image, NewImage};

type Manager = PostgresConnectionManager<NoTls>;
type Pooled = r2d2::PooledConnection<Manager>;

/// How long a connection attempt may take when the URL does not say
/// (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one wait for a pooled connection lasts before the store looks
/// again at whether the server is reachable.
const POOL_SLICE: Duration = Duration::from_millis(100);

/// While the server cannot be connected to, how long a request waits for
/// a connection (one may just have come back) before its 503.
const DOWN_WAIT: Duration = Duration::from_millis(250);

/// A statement running this long is cancelled (a backstop: lock waits end
/// at the busy timeout; reading a very large table may take a while).
fn statement_timeout(busy_timeout: Duration) -> Duration {
    (busy_timeout * 2).max(Duration::from_secs(30))
}

/// A pool of connections to one PostgreSQL database, and the health
/// check's own connection.
#[derive(Clone)]
pub(super) struct Postgres {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    /// Taken only when dropped (see `Drop`).
    pool: Option<r2d2::Pool<Manager>>,
    health: Mutex<Option<Client>>,
    reach: Arc<Reach>,
    busy_timeout: Duration,
    versions: VersionReads,
}

/// Concurrent [`Postgres::data_version`] calls share reads: a caller may
/// take the answer of any read that *started* after it asked (that read
/// sees every commit acknowledged before the caller asked), so under load
/// one round trip answers everyone who arrived during the one before.
#[derive(Default)]
struct VersionReads {
    state: Mutex<ReadState>,
    done: std::sync::Condvar,
}

impl VersionReads {
    /// The answer of a `read` that started after this call did: this
    /// caller's own, or one another caller started meanwhile.
    fn read(
        &self,
        read: impl FnOnce() -> Result<ServerVersion, StoreError>,
    ) -> Result<ServerVersion, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Any read numbered above those started so far begins after now.
        let wanted = state.started + 1;
        loop {
            if state.finished >= wanted
                && let Some(answer) = &state.answer
            {
                return match answer {
                    Ok(version) => Ok(version.clone()),
                    Err(e) => Err(e.for_another()),
                };
            }
            if !state.reading {
                state.reading = true;
                state.started += 1;
                let number = state.started;
                drop(state);
                // A panic must not leave the others waiting for ever.
                let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
                    .unwrap_or_else(|_| {
                        Err(StoreError::Failed("reading the snapshot panicked".into()))
                    });
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.reading = false;
                state.finished = number;
                state.answer = Some(match &answer {
                    Ok(version) => Ok(version.clone()),
                    Err(e) => Err(e.for_another()),
                });
                self.done.notify_all();
                return answer;
            }
            state = self
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[derive(Default)]
struct ReadState {
    /// Reads started so far; the one in flight, if any, is the last.
    started: u64,
    reading: bool,
    /// The last read that finished: its number and its answer.
    finished: u64,
    answer: Option<Result<ServerVersion, StoreError>>,
}

/// Closing a connection blocks on the client's own small runtime, which
/// tokio forbids on a thread that drives async tasks (where the last
/// handle to a store may go, when a server shuts down): there, the
/// connections are closed on a thread of their own.
impl Drop for Shared {
    fn drop(&mut self) {
        let pool = self.pool.take();
        let health = self
            .health
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new()
                .name("postgres-close".into())
                .spawn(move || drop((pool, health)));
        }
    }
}

/// Whether the server took the last connection attempt; each change is
/// logged once.
#[derive(Debug)]
struct Reach {
    /// `HOST:PORT`, for the log.
    server: String,
    down: AtomicBool,
    reason: Mutex<String>,
}

impl Reach {
    fn failed(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = reason.clone();
        if !self.down.swap(true, Ordering::SeqCst) {
            tracing::error!(
                "cannot connect to PostgreSQL at {}: {reason}; answering 503 to every request that needs the database until it is back",
                self.server
            );
        }
    }

    fn succeeded(&self) {
        if self.down.swap(false, Ordering::SeqCst) {
            tracing::warn!("PostgreSQL at {} is reachable again: serving", self.server);
        }
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    fn unreachable(&self) -> StoreError {
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        StoreError::Unreachable(format!("cannot connect to {}: {reason}", self.server))
    }
}

/// Tells [`Reach`] how the pool's connection attempts go.
#[derive(Debug)]
struct Watcher(Arc<Reach>);

impl r2d2::HandleError<postgres::Error> for Watcher {
    fn handle_error(&self, error: postgres::Error) {
        self.0.failed(connect_reason(&error));
    }
}

impl r2d2::CustomizeConnection<Client, postgres::Error> for Watcher {
    fn on_acquire(&self, _: &mut Client) -> Result<(), postgres::Error> {
        self.0.succeeded();
        Ok(())
    }
}

/// The URL's settings plus what every connection of ours is told.
fn session_config(url: &PostgresUrl, options: &StoreOptions) -> Config {
    let mut config = url.config().clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name(&options.application_name);
    }
    let lock_ms = options.busy_timeout.as_millis().max(1);
    let statement_ms = statement_timeout(options.busy_timeout).as_millis();
    let mut settings = format!("-c lock_timeout={lock_ms} -c statement_timeout={statement_ms}");
    if options.synchronous == Synchronous::Normal {
        settings.push_str(" -c synchronous_commit=off");
    }
    let settings = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {settings}"),
        _ => settings,
    };
    config.options(&settings);
    config
}

/// An error on one line, for the log: the server's severity, code and
/// message when it is the server's, with what caused it (the client
/// library's own text says only "db error").
pub(super) fn describe(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Why a connection attempt failed, in brief: the server's message (wrong
/// password, unknown database, …) or the system's (connection refused),
/// never the password.
fn connect_reason(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return db.message().to_string();
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::TimedOut => "no answer (timed out)".into(),
                _ => io.to_string(),
            };
        }
        source = cause.source();
    }
    describe(error)
}

fn cannot_connect(url: &PostgresUrl, error: &postgres::Error) -> StoreError {
    let who = match (url.database(), url.user()) {
        (Some(database), Some(user)) => format!(" (database {database}, user {user})"),
        (Some(database), None) => format!(" (database {database})"),
        (None, Some(user)) => format!(" (user {user})"),
        (None, None) => String::new(),
    };
    StoreError::CannotConnect {
        server: url.server(),
        who,
        reason: connect_reason(error),
    }
}

/// A connection that is gone: the server closed it, shut down, or the
/// socket failed. Nothing more will happen on it.
fn is_dead_connection(error: &postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        }
        None => has_io_cause(error),
    }
}

fn has_io_cause(error: &postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Classifies an error from normal operation: busy (retry soon), the
/// server unavailable, or anything else.
fn classify(error: postgres::Error) -> StoreError {
    const BUSY: [SqlState; 5] = [
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::QUERY_CANCELED,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::TOO_MANY_CONNECTIONS,
    ];
    const UNAVAILABLE: [SqlState; 4] = [
        SqlState::DATABASE_DROPPED,
        SqlState::IDLE_SESSION_TIMEOUT,
        SqlState::READ_ONLY_SQL_TRANSACTION,
        SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
    ];
    match error.code() {
        Some(code) if BUSY.contains(code) => StoreError::Busy(describe(&error)),
        // Class 53: insufficient resources (disk full, out of memory).
        Some(code) if UNAVAILABLE.contains(code) || code.code().starts_with("53") => {
            StoreError::Unreachable(describe(&error))
        }
        _ if is_dead_connection(&error) => StoreError::Unreachable(describe(&error)),
        _ => StoreError::Postgres(error),
    }
}

/// The key of an `Idempotency-Key`'s advisory lock: FNV-1a of its bytes,
/// stable across builds (two keys sharing one only wait for each other).
fn key_lock(key: &str) -> i64 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    hash as i64
}

impl Postgres {
    /// Connects, then migrates and seeds the database (under the schema's
    /// advisory lock). A server that cannot be reached or logged in to is
    /// [`StoreError::CannotConnect`].
    pub(super) fn open(url: &PostgresUrl, options: &StoreOptions) -> Result<Self, StoreError> {
        Self::prepare(url, options)?;
        Ok(Self::open_existing(url, options))
    }

    /// Migrates and seeds the database on one session, closed before this
    /// returns.
    pub(super) fn prepare(url: &PostgresUrl, options: &StoreOptions) -> Result<(), StoreError> {
        let config = session_config(url, options);
        let mut client = config.connect(NoTls).map_err(|e| cannot_connect(url, &e))?;
        schema::migrate_postgres(&mut client).map_err(|e| match e {
            MigrateError::TooNew { found, supported } => StoreError::TooNew { found, supported },
            MigrateError::Postgres(e) => match classify(e) {
                StoreError::Postgres(e) => StoreError::Failed(format!(
                    "cannot migrate PostgreSQL database {} at {}: {}",
                    url.database().or(url.user()).unwrap_or("?"),
                    url.server(),
                    e.as_db_error()
                        .map_or_else(|| describe(&e), |db| db.message().into())
                )),
                other => other,
            },
            MigrateError::Sqlite(e) => StoreError::Sqlite(e),
        })?;
        drop(client);
        Ok(())
    }

    /// A pool on a database that must already be migrated. Nothing is
    /// waited for: connections are made in the background and on demand.
    pub(super) fn open_existing(url: &PostgresUrl, options: &StoreOptions) -> Self {
        let config = session_config(url, options);
        let reach = Arc::new(Reach {
            server: url.server(),
            down: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
        });
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size)
            .min_idle(Some(1))
            .connection_timeout(options.busy_timeout)
            // A dead connection is found by using it (see `checked_out`),
            // not by a round trip before every use.
            .test_on_check_out(false)
            .error_handler(Box::new(Watcher(reach.clone())))
            .connection_customizer(Box::new(Watcher(reach.clone())))
            .build_unchecked(Manager::new(config.clone(), NoTls));
        Postgres {
            shared: Arc::new(Shared {
                config,
                pool: Some(pool),
                health: Mutex::new(None),
                reach,
                busy_timeout: options.busy_timeout,
                versions: VersionReads::default(),
            }),
        }
    }

    fn pool(&self) -> &r2d2::Pool<Manager> {
        self.shared.pool.as_ref().expect("taken only when dropped")
    }

    /// A pooled connection: waits up to the busy timeout for a free one,
    /// but answers [`StoreError::Unreachable`] quickly while the server
    /// cannot be connected to.
    fn connection(&self) -> Result<Pooled, StoreError> {
        let reach = &self.shared.reach;
        let deadline = Instant::now() + self.shared.busy_timeout;
        loop {
            let now = Instant::now();
            let wait = if reach.is_down() {
                DOWN_WAIT
            } else {
                POOL_SLICE.min(deadline.saturating_duration_since(now))
            };
            match self.pool().get_timeout(wait) {
                Ok(connection) => return Ok(connection),
                Err(_) if reach.is_down() => return Err(reach.unreachable()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(StoreError::Busy(format!("no free connection: {e}")));
                }
                Err(_) => {}
            }
        }
    }

    /// A pooled connection on which `first` succeeded. A connection found
    /// dead by `first` is dropped (the pool discards a closed one) and
    /// `first` tried on another, while `may_retry` says nothing of it has
    /// taken effect, up to once per connection the pool can hold.
    fn checked_out<T>(
        &self,
        mut first: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
        may_retry: impl Fn() -> bool,
    ) -> Result<(Pooled, T), StoreError> {
        let attempts = self.pool().max_size() + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut connection = self.connection()?;
            match first(&mut connection) {
                Ok(value) => return Ok((connection, value)),
                Err(e) if is_dead_connection(&e) && may_retry() && attempt < attempts => {
                    tracing::debug!(
                        error = describe(&e),
                        "a pooled PostgreSQL connection was dead; trying another"
                    );
                }
                Err(e) => return Err(classify(e)),
            }
        }
    }

    /// Hands each image to `each`, in id order, streamed from one
    /// statement (one snapshot).
    pub(super) fn for_each_image(
        &self,
        page: Option<Page>,
        mut each: impl FnMut(&Image),
    ) -> Result<(), StoreError> {
        let delivered = Cell::new(false);
        self.checked_out(
            |client| {
                let mut rows = match page {
                    None => client.query_typed_raw(
                        "SELECT id, title, alt_text, url FROM images ORDER BY id",
                        std::iter::empty::<(&(dyn ToSql + Sync), Type)>(),
                    )?,
                    Some(page) => {
                        let limit = i64::from(page.limit);
                        let params: [(&(dyn ToSql + Sync), Type); 2] =
                            [(&page.after, Type::INT8), (&limit, Type::INT8)];
                        client.query_typed_raw(
                            "SELECT id, title, alt_text, url FROM images WHERE id > $1 ORDER BY id LIMIT $2",
                            params,
                        )?
                    }
                };
                while let Some(row) = rows.next()? {
                    let image = image_from_row(&row)?;
                    delivered.set(true);
                    each(&image);
                }
                Ok(())
            },
            || !delivered.get(),
        )
        .map(|(_, ())| ())
    }

    /// The server's snapshot now (taken after this call began); see
    /// [`ServerVersion`] and [`VersionReads`].
    pub(super) fn data_version(&self) -> Result<ServerVersion, StoreError> {
        self.shared.versions.read(|| self.read_version())
    }

    fn read_version(&self) -> Result<ServerVersion, StoreError> {
        let (_, (started, snapshot)) = self.checked_out(
            |client| {
                let row = client.query_typed_one(
                    "SELECT pg_postmaster_start_time()::text, pg_current_snapshot()::text",
                    &[],
                )?;
                Ok((row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?))
            },
            || true,
        )?;
        ServerVersion::parse(started, &snapshot)
            .ok_or_else(|| StoreError::Failed(format!("unexpected snapshot {snapshot:?}")))
    }

    /// Commits `writes` in one transaction, a savepoint each (see the
    /// module doc for the order of things).
    pub(super) fn commit_group(
        &self,
        writes: &[Write],
        now: SystemTime,
    ) -> Result<Vec<Result<Keyed, StoreError>>, StoreError> {
        let oldest_kept = unix_seconds(now) - IDEMPOTENCY_WINDOW.as_secs() as i64;
        // The prune is safe to repeat, so a dead connection found by it is
        // swapped for another before the transaction begins.
        let (mut connection, ()) =
            self.checked_out(|client| prune_keys(client, oldest_kept), || true)?;
        let mut tx = connection.transaction().map_err(classify)?;
        let mut locks: Vec<i64> = writes
            .iter()
            .filter_map(|write| match write {
                Write::Keyed { key, .. } => Some(key_lock(key)),
                Write::Plain(_) => None,
            })
            .collect();
        locks.sort_unstable();
        locks.dedup();
        for lock in locks {
            tx.execute_typed("SELECT pg_advisory_xact_lock($1)", &[(&lock, Type::INT8)])
                .map_err(classify)?;
        }
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            let mut savepoint = tx.savepoint("write").map_err(classify)?;
            let result = match write {
                Write::Plain(image) => insert(&mut savepoint, image).map(Keyed::Stored),
                Write::Keyed { image, key, body } => {
                    insert_once(&mut savepoint, image, key, body, now, oldest_kept)
                }
            };
            match result {
                Ok(keyed) => {
                    savepoint.commit().map_err(classify)?;
                    results.push(Ok(keyed));
                }
                Err(e) => {
                    // Explicitly, not by dropping it: a rollback that fails
                    // must fail the group, not leave it aborted (PostgreSQL
                    // turns the COMMIT of an aborted transaction into a
                    // ROLLBACK without an error).
                    savepoint.rollback().map_err(classify)?;
                    results.push(Err(classify(e)));
                }
            }
        }
        tx.commit().map_err(classify)?;
        Ok(results)
    }

    /// A real round trip on the health connection: the server answers and
    /// knows the images table. It takes no lock on the table, so a table
    /// locked by someone else makes requests wait, not the worker unhealthy.
    pub(super) fn ping(&self) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut slot = shared.health.lock().unwrap_or_else(PoisonError::into_inner);
        for attempt in 0..2 {
            if slot.is_none() {
                match shared.config.connect(NoTls) {
                    Ok(client) => {
                        shared.reach.succeeded();
                        *slot = Some(client);
                    }
                    Err(e) => {
                        shared.reach.failed(connect_reason(&e));
                        return Err(shared.reach.unreachable());
                    }
                }
            }
            let client = slot.as_mut().expect("connected above");
            match client.query_typed_one("SELECT to_regclass('images') IS NOT NULL", &[]) {
                Ok(row) => {
                    let present: bool = row.try_get(0).map_err(classify)?;
                    return if present {
                        Ok(())
                    } else {
                        Err(StoreError::Failed("the images table is missing".into()))
                    };
                }
                Err(e) => {
                    *slot = None;
                    if attempt == 0 && is_dead_connection(&e) {
                        continue;
                    }
                    return Err(classify(e));
                }
            }
        }
        unreachable!("the second attempt returns")
    }
}

fn image_from_row(row: &postgres::Row) -> Result<Image, postgres::Error> {
    Ok(Image {
        id: row.try_get(0)?,
        title: row.try_get(1)?,
        alt_text: row.try_get(2)?,
        url: row.try_get(3)?,
    })
}

/// Forgets keys whose window has closed, skipping rows another group is
/// forgetting right now (so it never waits, and never deadlocks).
fn prune_keys(client: &mut Client, oldest_kept: i64) -> Result<(), postgres::Error> {
    client.execute_typed(
        "DELETE FROM idempotency_keys WHERE key IN (
             SELECT key FROM idempotency_keys WHERE created_at <= $1 FOR UPDATE SKIP LOCKED)",
        &[(&oldest_kept, Type::INT8)],
    )?;
    Ok(())
}

fn insert(tx: &mut impl GenericClient, image: &NewImage) -> Result<Image, postgres::Error> {
    let row = tx.query_typed_one(
        "INSERT INTO images (title, alt_text, url) VALUES ($1, $2, $3) RETURNING id",
        &[
            (&image.title(), Type::TEXT),
            (&image.alt_text(), Type::TEXT),
            (&image.url(), Type::TEXT),
        ],
    )?;
    Ok(Image {
        id: row.try_get(0)?,
        title: image.title().to_string(),
        alt_text: image.alt_text().to_string(),
        url: image.url().to_string(),
    })
}

/// As SQLite's `insert_once`, under the key's advisory lock (taken by the
/// group before any write).
fn insert_once(
    tx: &mut impl GenericClient,
    image: &NewImage,
    key: &str,
    body: &[u8],
    now: SystemTime,
    oldest_kept: i64,
) -> Result<Keyed, postgres::Error> {
    // This key's own expired row, if the group's prune skipped it.
    tx.execute_typed(
        "DELETE FROM idempotency_keys WHERE key = $1 AND created_at <= $2",
        &[(&key, Type::TEXT), (&oldest_kept, Type::INT8)],
    )?;
    let previous = tx.query_typed_opt(
        "SELECT request_body, image_id FROM idempotency_keys WHERE key = $1",
        &[(&key, Type::TEXT)],
    )?;
    if let Some(previous) = previous {
        let first_body: &[u8] = previous.try_get(0)?;
        if first_body != body {
            return Ok(Keyed::Conflict);
        }
        let id: i64 = previous.try_get(1)?;
        let first = tx.query_typed_opt(
            "SELECT id, title, alt_text, url FROM images WHERE id = $1",
            &[(&id, Type::INT8)],
        )?;
        if let Some(first) = first {
            return Ok(Keyed::Replayed(image_from_row(&first)?));
        }
        // The image was deleted behind the API's back (by an operator): the
        // client still wants it stored, so the key starts afresh.
        tx.execute_typed(
            "DELETE FROM idempotency_keys WHERE key = $1",
            &[(&key, Type::TEXT)],
        )?;
    }
    let stored = insert(tx, image)?;
    tx.execute_typed(
        "INSERT INTO idempotency_keys (key, request_body, image_id, created_at)
         VALUES ($1, $2, $3, $4)",
        &[
            (&key, Type::TEXT),
            (&body, Type::BYTEA),
            (&stored.id, Type::INT8),
            (&unix_seconds(now), Type::INT8),
        ],
    )?;
    Ok(Keyed::Stored(stored))
}

/// A reading of the server's MVCC snapshot: which transactions had
/// finished (committed or aborted) when it was taken, and which server
/// instance took it.
///
/// Reading `a` is at least as new as `b` when it sees every transaction
/// `b` sees as finished: then whatever `b` could read, `a` reads too (or
/// newer). That is only a partial order (two snapshots may each see a
/// transaction the other does not), and readings of different server
/// instances (a restart, another server at the same address) do not
/// compare, so a cache holding one of those rebuilds.
#[derive(Debug, Clone)]
pub(super) struct ServerVersion {
    /// `pg_postmaster_start_time()`, as text.
    started: String,
    /// Every transaction id below this had started; those not in
    /// `in_progress` had finished.
    xmax: u64,
    in_progress: Vec<u64>,
}

impl ServerVersion {
    /// From `pg_current_snapshot()`'s text, `xmin:xmax:xip,xip,…`.
    fn parse(started: String, snapshot: &str) -> Option<Self> {
        let mut parts = snapshot.split(':');
        let _xmin: u64 = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let in_progress = if xip.is_empty() {
            Vec::new()
        } else {
            xip.split(',')
                .map(|xid| xid.parse().ok())
                .collect::<Option<_>>()?
        };
        Some(ServerVersion {
            started,
            xmax,
            in_progress,
        })
    }

    /// Whether every transaction `other` saw finished, this one saw
    /// finished too.
    fn sees_all_of(&self, other: &Self) -> bool {
        self.xmax >= other.xmax
            && self
                .in_progress
                .iter()
                .all(|xid| *xid >= other.xmax || other.in_progress.contains(xid))
    }
}

impl PartialEq for ServerVersion {
    fn eq(&self, other: &Self) -> bool {
        self.partial_cmp(other) == Some(std::cmp::Ordering::Equal)
    }
}

impl PartialOrd for ServerVersion {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        use std::cmp::Ordering;
        if self.started != other.started {
            return None;
        }
        match (self.sees_all_of(other), other.sees_all_of(self)) {
            (true, true) => Some(Ordering::Equal),
            (true, false) => Some(Ordering::Greater),
            (false, true) => Some(Ordering::Less),
            (false, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(snapshot: &str) -> ServerVersion {
        ServerVersion::parse("2026-01-01 00:00:00+00".into(), snapshot).unwrap()
    }

    #[test]
    fn a_snapshot_is_newer_when_it_sees_every_transaction_the_other_saw_finished() {
        let quiet = version("100:100:");
        assert_eq!(quiet, version("100:100:"));
        // 100 started and finished: newer.
        assert!(version("101:101:") > quiet);
        // 100 started, still running: nothing new is visible, yet later.
        let running = version("100:101:100");
        assert!(running >= quiet);
        // 101 finished while 100 still runs (commits out of id order):
        // newer than both.
        let out_of_order = version("100:102:100");
        assert!(out_of_order > running && out_of_order > quiet);
        // 100 finished, 101 started later and still runs.
        let other = version("101:102:101");
        assert!(other > running);
        // Each sees a transaction the other does not: no order, so a cache
        // filed under one is not taken as fresh for the other.
        assert_eq!(out_of_order.partial_cmp(&other), None);
        assert_eq!(other.partial_cmp(&out_of_order), None);
        assert!(version("103:103:") > out_of_order);
    }

    #[test]
    fn snapshots_of_different_server_instances_do_not_compare() {
        let before = version("100:100:");
        let after_restart =
            ServerVersion::parse("2026-01-02 00:00:00+00".into(), "100:100:").unwrap();
        assert_eq!(before.partial_cmp(&after_restart), None);
        assert_eq!(after_restart.partial_cmp(&before), None);
    }

    #[test]
    fn odd_snapshots_are_refused() {
        for text in ["", "1:2", "1:2:3:4", "a:2:", "1:2:x"] {
            assert!(
                ServerVersion::parse(String::new(), text).is_none(),
                "{text}"
            );
        }
        assert_eq!(version("5:9:5,7").in_progress, [5, 7]);
    }

    #[test]
    fn concurrent_version_reads_share_a_read_that_started_after_each_asked() {
        use std::sync::atomic::AtomicU64;
        const CALLERS: u64 = 24;
        let reads = Arc::new(VersionReads::default());
        // The "server": a commit counter, bumped by every caller just
        // before it asks (its own write, acknowledged).
        let commits = Arc::new(AtomicU64::new(100));
        let round_trips = Arc::new(AtomicU64::new(0));
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (reads, commits, round_trips) =
                    (reads.clone(), commits.clone(), round_trips.clone());
                std::thread::spawn(move || {
                    let mine = commits.fetch_add(1, Ordering::SeqCst) + 1;
                    let seen = reads
                        .read(|| {
                            round_trips.fetch_add(1, Ordering::SeqCst);
                            let now = commits.load(Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            Ok(version(&format!("{now}:{now}:")))
                        })
                        .unwrap();
                    (mine, seen)
                })
            })
            .collect();
        for caller in callers {
            let (mine, seen) = caller.join().unwrap();
            assert!(
                seen.xmax >= mine,
                "a read that began before commit {mine}: {seen:?}"
            );
        }
        let trips = round_trips.load(Ordering::SeqCst);
        assert!(trips < CALLERS, "{trips} round trips for {CALLERS} callers");
    }

    #[test]
    fn a_failed_or_panicking_version_read_answers_its_waiters_and_the_next_reads_again() {
        let reads = VersionReads::default();
        let error = reads.read(|| panic!("boom")).unwrap_err();
        assert!(error.to_string().contains("panicked"), "{error}");
        let busy = reads
            .read(|| Err(StoreError::Busy("lock timeout".into())))
            .unwrap_err();
        assert!(busy.is_busy());
        assert_eq!(reads.read(|| Ok(version("7:7:"))).unwrap(), version("7:7:"));
    }

    #[test]
    fn key_locks_are_stable_across_builds() {
        // FNV-1a: a rolling upgrade's old and new workers lock the same key.
        assert_eq!(key_lock(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(key_lock("a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
        assert_ne!(key_lock("k1"), key_lock("k2"));
    }

    #[test]
    fn every_connection_is_told_the_busy_timeout() {
        let url = match super::super::parse_database_location(
            "postgres://u:p@127.0.0.1:5/db?options=-c%20search_path%3Dgallery",
        )
        .unwrap()
        {
            super::super::Location::Postgres(url) => url,
            other => panic!("{other:?}"),
        };
        let options = StoreOptions {
            busy_timeout: Duration::from_millis(1500),
            synchronous: Synchronous::Normal,
            ..StoreOptions::default()
        };
        let config = session_config(&url, &options);
        assert_eq!(
            config.get_options(),
            Some(
                "-c search_path=gallery -c lock_timeout=1500 -c statement_timeout=30000 -c synchronous_commit=off"
            )
        );
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_application_name(), Some("gallery"));
    }
}
