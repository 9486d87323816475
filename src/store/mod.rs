//! One store over SQLite and PostgreSQL: two typed pools, shared SQL with `$N` placeholders.
//!
//! Every query is written once and compiled against both backends by [`with_tx!`], so a
//! type mismatch on either backend is a compile error, not a runtime surprise.

pub mod blobs;
pub mod checkpoint;
pub mod imap;
pub mod nodelay;
pub mod orgs;
pub mod outbox;
pub mod pending;
pub mod quarantine;
pub mod raw;
pub mod replies;
pub mod scratch;
pub mod tickets;
pub mod views;
pub mod wal_sync;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

/// Most rows one multi-row statement carries: far below both backends' bind-parameter limits.
pub const MAX_ROWS: usize = 500;

/// `items` padded with copies of its last item to the next power of two (at least 4), for
/// `IN (...)` lists: a handful of list lengths means a handful of statements, each prepared
/// once per connection and then taken from its cache.
fn padded_list<T: Clone>(items: &[T]) -> Vec<T> {
    let mut list = items.to_vec();
    if let Some(last) = items.last() {
        list.resize(items.len().next_power_of_two().max(4), last.clone());
    }
    list
}

/// Appends ` IN (...)` with `keys` bound, padded as [`padded_list`] says.
pub(crate) fn push_in_list<DB, K>(q: &mut sqlx::QueryBuilder<DB>, keys: &[K])
where
    DB: sqlx::Database,
    K: Clone + for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    q.push(" IN (");
    let mut list = q.separated(", ");
    for key in padded_list(keys) {
        list.push_bind(key);
    }
    q.push(")");
}

/// The rows of `select`, which ends where the organization's id goes, whose `column` is one
/// of `keys`, followed by `tail` (an `ORDER BY`, or empty): one statement per [`MAX_ROWS`]
/// keys, so the order holds within each statement's rows.
pub(crate) async fn select_in<T, K>(
    tx: &mut Tx,
    select: &str,
    org_id: i64,
    column: &str,
    keys: &[K],
    tail: &str,
) -> Result<Vec<T>, StoreError>
where
    T: Send + Unpin,
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    K: Clone + Send + Sync,
    K: for<'t> sqlx::Encode<'t, Sqlite> + sqlx::Type<Sqlite>,
    K: for<'t> sqlx::Encode<'t, Postgres> + sqlx::Type<Postgres>,
{
    let mut found = Vec::new();
    for chunk in keys.chunks(MAX_ROWS) {
        let rows: Vec<T> = crate::with_tx!(tx, |c| {
            let mut q = sqlx::QueryBuilder::new(select);
            q.push_bind(org_id).push(" AND ").push(column);
            push_in_list(&mut q, chunk);
            q.push(tail);
            q.build_query_as().fetch_all(c).await
        })?;
        found.extend(rows);
    }
    Ok(found)
}

/// Runs `$body` with `$c` bound to the transaction's connection, once per backend, after
/// writing the rows the transaction holds back ([`pending`]): every statement sees every
/// earlier write of its transaction. `$body` evaluates to a `Result<_, sqlx::Error>`.
#[macro_export]
macro_rules! with_tx {
    ($tx:expr, |$c:ident| $body:expr) => {{
        let tx: &mut $crate::store::Tx = $tx;
        match tx.write_pending().await {
            Err(e) => Err(e),
            Ok(()) => $crate::with_tx_as_is!(tx, |$c| $body),
        }
    }};
}

/// [`with_tx!`] without writing held-back rows first: only for statements whose result
/// cannot depend on them (the caller says why).
#[macro_export]
macro_rules! with_tx_as_is {
    ($tx:expr, |$c:ident| $body:expr) => {
        match &mut $tx.conn {
            $crate::store::TxConn::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::store::TxConn::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

/// A failure of the database or the blob store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True when retrying later may succeed (database down, busy, full disk); false for bugs and bad data.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Io(_) => true,
            StoreError::Db(e) => db_error_is_transient(e),
            StoreError::Migrate(_)
            | StoreError::Conflict(_)
            | StoreError::NotFound(_)
            | StoreError::Corrupt(_) => false,
        }
    }

    /// True when SQLite reported the database busy or locked by another connection.
    pub fn is_busy(&self) -> bool {
        use sqlx::migrate::MigrateError;
        let e = match self {
            StoreError::Db(e)
            | StoreError::Migrate(MigrateError::Execute(e))
            | StoreError::Migrate(MigrateError::ExecuteMigration(e, _)) => e,
            _ => return false,
        };
        // SQLite's primary codes: BUSY 5, LOCKED 6.
        matches!(e, sqlx::Error::Database(d) if matches!(sqlite_primary_code(d.as_ref()), Some(5 | 6)))
    }

    /// True for a unique-key violation (a concurrent insert of the same row).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Db(sqlx::Error::Database(d)) if d.is_unique_violation())
    }
}

/// The primary result code of a SQLite error (the low byte of its extended code); `None`
/// for a PostgreSQL error, whose SQLSTATE is often all digits too (08006, 40001, 53300).
fn sqlite_primary_code(d: &dyn sqlx::error::DatabaseError) -> Option<i64> {
    let sqlite = d.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    sqlx::error::DatabaseError::code(sqlite)?
        .parse::<i64>()
        .ok()
        .map(|n| n & 0xff)
}

fn db_error_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => {
            // SQLite primary codes: BUSY 5, LOCKED 6, NOMEM 7, READONLY 8, IOERR 10, FULL 13,
            // CANTOPEN 14, PROTOCOL 15.
            if let Some(n) = sqlite_primary_code(d.as_ref()) {
                return matches!(n, 5 | 6 | 7 | 8 | 10 | 13 | 14 | 15);
            }
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            // PostgreSQL classes: 08 connection, 53 resources, 57 operator intervention,
            // 58 system error, 40001/40P01 serialization failure and deadlock.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code.starts_with("58")
                || code == "40001"
                || code == "40P01"
        }
        _ => false,
    }
}

/// Which database engine a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database: one pool of the configured backend.
#[derive(Clone, Debug)]
pub enum Store {
    /// The pool readers use, and the connection every write transaction of this process uses.
    Sqlite(SqlitePool, SqliteWriter),
    Postgres(PgPool),
}

/// A transaction on either backend, with the rows it holds back to write in bulk.
pub struct Tx {
    #[doc(hidden)]
    pub conn: TxConn,
    /// Set while rows are held back ([`Tx::hold_back_inserts`]).
    pending: Option<Box<pending::Pending>>,
}

/// The connection of a [`Tx`].
pub enum TxConn {
    Sqlite(SqliteTx),
    Postgres(Transaction<'static, Postgres>),
}

impl From<TxConn> for Tx {
    fn from(conn: TxConn) -> Self {
        Tx {
            conn,
            pending: None,
        }
    }
}

/// A SQLite transaction on a pooled connection, begun and ended with plain SQL.
///
/// sqlx's own transaction type returns a connection to the pool after a failed COMMIT with
/// its transaction depth still set, and every later `BEGIN` on it fails: one disk error would
/// turn into minutes of 451s. Here a connection whose transaction did not end cleanly is
/// closed instead (SQLite rolls back on close) and the pool opens a fresh one.
pub struct SqliteTx {
    conn: PoolConnection<Sqlite>,
    open: bool,
    /// Held by a write transaction until it ends.
    _gate: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A write transaction's log, made durable after its commit.
    wal: Option<std::sync::Arc<wal_sync::WalSync>>,
}

/// Queues this process's SQLite write transactions in order. SQLite lets one writer in at a
/// time and makes the others poll with growing sleeps (1, 2, 5 ... 100 ms), which measured
/// as 80 ms p99 for 0.5 ms transactions under four concurrent API writers; a queue wakes the
/// next writer at once. Other processes (`deliver`) still meet the busy timeout.
pub type WriteGate = std::sync::Arc<tokio::sync::Semaphore>;

/// Where this process's SQLite writes go: one connection, behind the [`WriteGate`].
///
/// One connection for every write keeps its page cache warm: SQLite drops a connection's
/// cache whenever another connection committed, so writes spread over a pool re-read the
/// same index pages from the file on every batch.
#[derive(Clone, Debug)]
pub struct SqliteWriter {
    pool: SqlitePool,
    gate: WriteGate,
    /// Set when commits do not wait for the disk themselves (`synchronous = NORMAL`).
    wal: Option<std::sync::Arc<wal_sync::WalSync>>,
}

/// How long a write waits for the gate before it is a temporary failure (as the busy timeout).
const WRITE_GATE_WAIT: Duration = Duration::from_secs(10);

/// Page cache of the writing connection (negative: KiB): the indexes a batch looks up stay
/// in memory between batches.
const WRITER_CACHE_SIZE: &str = "-16384";

impl SqliteTx {
    async fn begin(
        pool: &SqlitePool,
        statement: &'static str,
        gate: Option<&WriteGate>,
        wal: Option<&std::sync::Arc<wal_sync::WalSync>>,
    ) -> Result<Self, StoreError> {
        if let Some(wal) = wal {
            wal.check()?;
        }
        let permit = match gate {
            Some(gate) => Some(
                tokio::time::timeout(WRITE_GATE_WAIT, gate.clone().acquire_owned())
                    .await
                    .map_err(|_| StoreError::Db(sqlx::Error::PoolTimedOut))?
                    .map_err(|_| StoreError::Db(sqlx::Error::PoolClosed))?,
            ),
            None => None,
        };
        let mut conn = pool.acquire().await?;
        if let Err(e) = sqlx::query(statement).execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(Self {
            conn,
            open: true,
            _gate: permit,
            wal: wal.cloned(),
        })
    }

    /// Ends the transaction; the connection and the write gate are free when this returns.
    async fn finish(mut self, statement: &'static str) -> Result<(), StoreError> {
        let result = sqlx::query(statement).execute(&mut *self.conn).await;
        if result.is_ok() {
            self.open = false;
        }
        // On failure `open` stays set and Drop closes the connection.
        result.map(|_| ()).map_err(StoreError::from)
    }
}

impl std::ops::Deref for SqliteTx {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Connects to `url` (`sqlite://path` or `postgres://...`); creates a SQLite file and its folder when missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit is on disk when it returns, which is what a 250 promises.
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            if let Some(parent) = options.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent)?;
            }
            let in_memory = options
                .get_filename()
                .to_string_lossy()
                .contains(":memory:");
            // No ping before handing out a connection (sqlx's default): an SQLite connection
            // is a file handle that cannot drop like a socket, and the ping is a round trip
            // to its thread on every transaction, the serial batch commit's included.
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.clamp(1, 8))
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
                .await?;
            // An in-memory database exists once per pool: there, readers and the writer share.
            let (writes, wal) = if in_memory {
                (pool.clone(), None)
            } else {
                let wal = wal_sync::WalSync::for_database(options.get_filename());
                let writes = SqlitePoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .acquire_timeout(WRITE_GATE_WAIT)
                    .connect_with(
                        options
                            .pragma("cache_size", WRITER_CACHE_SIZE)
                            // Statement journals in memory: a multi-row INSERT inside the batch
                            // transaction keeps one, and above 64 KiB SQLite spills it to a
                            // temporary file it creates, writes and unlinks every time.
                            .pragma("temp_store", "memory")
                            // Checkpoints run in the background (checkpoint.rs); this only
                            // bounds the log if they cannot keep up.
                            .pragma("wal_autocheckpoint", checkpoint::FALLBACK_PAGES)
                            // The log is fsynced after the commit instead (wal_sync).
                            .synchronous(SqliteSynchronous::Normal),
                    )
                    .await?;
                checkpoint::spawn(pool.clone(), wal.clone());
                (writes, Some(wal))
            };
            Ok(Store::Sqlite(
                pool,
                SqliteWriter {
                    pool: writes,
                    gate: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
                    wal,
                },
            ))
        } else {
            // PostgreSQL's default plan caching: the pipeline's batch transaction asks for
            // per-execution plans itself (Tx::plan_each_execution); elsewhere the cached
            // generic plans of primary-key lookups save the planning.
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(Duration::from_secs(5))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        if !nodelay::set(conn).await? {
                            tracing::debug!("no TCP socket found to set TCP_NODELAY on");
                        }
                        Ok(())
                    })
                })
                .connect_with(options)
                .await?;
            Ok(Store::Postgres(pool))
        }
    }

    /// Creates or upgrades the schema.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(p, _) => {
                // sqlx locks migrations on PostgreSQL (an advisory lock) but not on SQLite, and
                // an MTA may start several `deliver`s on a fresh file at once: a file lock
                // beside the database serializes them.
                let db = p.connect_options().get_filename().to_path_buf();
                let lock = if db.as_os_str().is_empty() || db.to_string_lossy().contains(":memory:")
                {
                    None
                } else {
                    let path = PathBuf::from(format!("{}.migrate-lock", db.display()));
                    let file =
                        tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
                            let file = std::fs::OpenOptions::new()
                                .create(true)
                                .truncate(false)
                                .write(true)
                                .open(path)?;
                            file.lock()?;
                            Ok(file)
                        })
                        .await
                        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
                    Some(file)
                };
                let result = SQLITE_MIGRATIONS.run(p).await;
                drop(lock);
                result?;
            }
            Store::Postgres(p) => POSTGRES_MIGRATIONS.run(p).await?,
        }
        Ok(())
    }

    /// The engine behind this store.
    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite(..) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// Begins a write transaction. SQLite takes the write lock up front (`BEGIN IMMEDIATE`)
    /// so two writers queue on the busy timeout instead of failing on lock upgrade.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Store::Sqlite(_, w) => TxConn::Sqlite(
                SqliteTx::begin(&w.pool, "BEGIN IMMEDIATE", Some(&w.gate), w.wal.as_ref()).await?,
            ),
            Store::Postgres(p) => TxConn::Postgres(p.begin().await?),
        }
        .into())
    }

    /// Begins a transaction that only reads.
    pub async fn begin_read(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Store::Sqlite(p, _) => TxConn::Sqlite(SqliteTx::begin(p, "BEGIN", None, None).await?),
            Store::Postgres(p) => TxConn::Postgres(p.begin().await?),
        }
        .into())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_read().await?;
        with_tx!(&mut tx, |c| sqlx::query("SELECT 1")
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
        tx.rollback().await
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(p, w) => {
                w.pool.close().await;
                p.close().await;
            }
            Store::Postgres(p) => p.close().await,
        }
    }
}

impl Tx {
    /// The engine of this transaction.
    pub fn backend(&self) -> Backend {
        match self.conn {
            TxConn::Sqlite(_) => Backend::Sqlite,
            TxConn::Postgres(_) => Backend::Postgres,
        }
    }

    /// Commits the transaction, held-back rows first, and waits until it is durable.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.commit_then_sync().await?.wait().await
    }

    /// Commits the transaction and frees the connection; the commit is durable once the
    /// result's `wait` returns, and must not be acknowledged before.
    pub async fn commit_then_sync(mut self) -> Result<wal_sync::Durable, StoreError> {
        self.write_pending().await?;
        match self.conn {
            TxConn::Sqlite(t) => {
                let wal = t.wal.clone();
                t.finish("COMMIT").await?;
                Ok(wal.map_or_else(wal_sync::Durable::already, |w| w.committed()))
            }
            TxConn::Postgres(t) => {
                t.commit().await?;
                Ok(wal_sync::Durable::already())
            }
        }
    }

    /// Rolls the transaction back.
    pub async fn rollback(self) -> Result<(), StoreError> {
        match self.conn {
            TxConn::Sqlite(t) => t.finish("ROLLBACK").await?,
            TxConn::Postgres(t) => t.rollback().await?,
        }
        Ok(())
    }

    /// Ends a transaction after a failure. A SQLite connection is closed rather than reused:
    /// it may be mid-transaction, or have been opened read-only while the file was not
    /// writable (SQLite then stays read-only for the connection's life). PostgreSQL rolls back.
    pub async fn discard(self) {
        match self.conn {
            // Still open: dropping closes the connection.
            TxConn::Sqlite(t) => drop(t),
            TxConn::Postgres(t) => {
                let _ = t.rollback().await;
            }
        }
    }

    /// PostgreSQL: plans every statement of this transaction for its own parameters. Generic
    /// plans cached while the tables were nearly empty kept choosing the wrong index for the
    /// pipeline's lookups as the tables grew (measured: 10 M index entries read per 10,000
    /// messages). Elsewhere planning anew each time costs more than it saves.
    pub async fn plan_each_execution(&mut self) -> Result<(), StoreError> {
        if let TxConn::Postgres(t) = &mut self.conn {
            sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
                .execute(&mut **t)
                .await?;
        }
        Ok(())
    }

    /// Marks a savepoint so one message of a batch can fail without undoing the others.
    pub async fn savepoint(&mut self) -> Result<(), StoreError> {
        with_tx!(self, |c| sqlx::query("SAVEPOINT one_message")
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Keeps the work since [`Tx::savepoint`].
    pub async fn release_savepoint(&mut self) -> Result<(), StoreError> {
        with_tx!(self, |c| sqlx::query("RELEASE SAVEPOINT one_message")
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Undoes the work since [`Tx::savepoint`].
    pub async fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        with_tx!(self, |c| sqlx::query("ROLLBACK TO SAVEPOINT one_message")
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
        with_tx!(self, |c| sqlx::query("RELEASE SAVEPOINT one_message")
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }
}

/// Current time truncated to microseconds, the precision both backends keep.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::{SubsecRound, Utc};
    Utc::now().trunc_subsecs(6)
}

/// Encodes a list of strings for a JSON text column.
pub fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// Decodes a JSON text column holding a list of strings; corrupt values read as empty.
pub fn parse_json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Removes NUL characters: PostgreSQL text cannot hold them, and no mail needs them.
pub fn clean_text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s.to_string()
    }
}

/// Opens the configured store, runs migrations, and returns it.
pub async fn open(url: &str, max_connections: u32) -> Result<Store, StoreError> {
    // An MTA starts several `deliver`s at once, each opening the same SQLite file: one can
    // find it locked by another's set-up in a way SQLite does not wait out (its switch to
    // WAL on a new file, a read that must become a write). That passes within moments.
    let give_up = std::time::Instant::now() + OPEN_BUSY_FOR;
    loop {
        let e = match Store::connect(url, max_connections).await {
            Ok(store) => match store.migrate().await {
                Ok(()) => return Ok(store),
                Err(e) => {
                    store.close().await;
                    e
                }
            },
            Err(e) => e,
        };
        if !e.is_busy() || std::time::Instant::now() >= give_up {
            return Err(e);
        }
        tracing::debug!(error = %e, "database busy while opening; trying again");
        let wait = rand::Rng::random_range(&mut rand::rng(), 10..60);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// How long opening the database is tried again while SQLite reports it busy or locked.
const OPEN_BUSY_FOR: Duration = Duration::from_secs(10);

/// True when `path` looks like a SQLite URL's file (used to prepare folders).
pub fn sqlite_path(url: &str) -> Option<&Path> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|p| Path::new(p.split('?').next().unwrap_or(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_lists_are_padded_to_a_few_lengths() {
        assert_eq!(padded_list::<i64>(&[]), Vec::<i64>::new());
        assert_eq!(padded_list(&[7]), vec![7, 7, 7, 7]);
        assert_eq!(padded_list(&[1, 2, 3, 4, 5]), vec![1, 2, 3, 4, 5, 5, 5, 5]);
        assert_eq!(padded_list(&[1, 2, 3, 4]).len(), 4);
    }
}
