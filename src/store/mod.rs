//! The database: PostgreSQL (production, several replicas) or an embedded SQLite file (one process,
//! nothing to install), chosen by the scheme of `database.url`. Connecting (creating the database on
//! first use), migrating, transactions, the work-queue claim, readiness, the first-start bootstrap;
//! [`copy`] moves a SQLite database to PostgreSQL (`migrate --to`).
//!
//! The storage modules (`accounts`, `ledger`, `tasks`, …) take a [`Db`] (or, inside a transaction, a
//! [`Tx`]). SQL that both backends understand is written once and run on either through [`on_db!`] /
//! [`on_tx!`]; where the dialects differ (the clock, intervals, `SKIP LOCKED`, advisory locks) the
//! [`Dialect`] gives the fragment, or the function says it twice.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{FromRow, PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use crate::config::{DatabaseBackend, DatabaseSettings};

pub mod copy;

/// Every table of the schema, parents before children: the order [`copy`] fills them in. The
/// schema-parity test checks that both backends' migrations create exactly these.
pub const TABLES: &[&str] = &[
    "accounts",
    "api_keys",
    "tasks",
    "ledger",
    "simulated_jobs",
    "webhook_secrets",
    "webhook_deliveries",
    "webhook_attempts",
    "idempotency_keys",
    "orders",
    "stripe_events",
    "redemption_codes",
    "signing_keys",
    "job_leases",
    "signed_out_sessions",
    "instances",
    "audit_log",
    "limit_usage",
    "provider_submits",
];

/// How long a SQLite writer waits for the one write lock before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The database of this process. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub enum Db {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

/// A transaction on either backend; dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub enum Tx {
    Pg(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

/// Runs `$body` with `$pool` bound to the backend's pool: the same code, compiled once per backend.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::store::Db::Pg($pool) => $body,
            $crate::store::Db::Sqlite($pool) => $body,
        }
    };
}

/// Runs `$body` with `$conn` bound to the transaction's connection (`&mut PgConnection` or
/// `&mut SqliteConnection`).
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::store::Tx::Pg(tx) => {
                let $conn = &mut **tx;
                $body
            }
            $crate::store::Tx::Sqlite(tx) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}

impl From<PgPool> for Db {
    fn from(pool: PgPool) -> Self {
        Db::Pg(pool)
    }
}

impl From<SqlitePool> for Db {
    fn from(pool: SqlitePool) -> Self {
        Db::Sqlite(pool)
    }
}

impl Db {
    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Pg(_) => Dialect::Postgres,
            Db::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// A write transaction. On SQLite it is `BEGIN IMMEDIATE`: it takes the one write lock up front, so
    /// transactions that read before they write queue up instead of failing with "database is locked".
    pub async fn begin(&self) -> sqlx::Result<Tx> {
        Ok(match self {
            Db::Pg(pool) => Tx::Pg(pool.begin().await?),
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    /// Connections open, in use or idle.
    pub fn size(&self) -> u32 {
        on_db!(self, pool => pool.size())
    }

    pub fn num_idle(&self) -> usize {
        on_db!(self, pool => pool.num_idle())
    }
}

impl Tx {
    pub fn dialect(&self) -> Dialect {
        match self {
            Tx::Pg(_) => Dialect::Postgres,
            Tx::Sqlite(_) => Dialect::Sqlite,
        }
    }

    pub async fn commit(self) -> sqlx::Result<()> {
        match self {
            Tx::Pg(tx) => tx.commit().await,
            Tx::Sqlite(tx) => tx.commit().await,
        }
    }

    pub async fn rollback(self) -> sqlx::Result<()> {
        match self {
            Tx::Pg(tx) => tx.rollback().await,
            Tx::Sqlite(tx) => tx.rollback().await,
        }
    }
}

/// SQLite keeps timestamps as RFC 3339 text in UTC, as sqlx writes `DateTime<Utc>`: text order is time
/// order. This is SQLite's current time in that form (milliseconds).
const SQLITE_NOW: &str = "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')";

/// The SQL fragments that differ between the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    /// The current time.
    pub fn now(self) -> &'static str {
        match self {
            Dialect::Postgres => "now()",
            Dialect::Sqlite => SQLITE_NOW,
        }
    }

    /// The current time plus `seconds` (a parameter or expression, fractional, may be negative or
    /// NULL: then the result is NULL).
    pub fn now_plus_secs(self, seconds: &str) -> String {
        match self {
            Dialect::Postgres => format!("now() + make_interval(secs => {seconds})"),
            Dialect::Sqlite => {
                format!("strftime('%Y-%m-%dT%H:%M:%f+00:00', julianday('now') + ({seconds}) / 86400.0)")
            }
        }
    }

    /// The smaller of two values (`LEAST(a, b)`).
    pub fn least(self, a: &str, b: &str) -> String {
        match self {
            Dialect::Postgres => format!("LEAST({a}, {b})"),
            Dialect::Sqlite => format!("min({a}, {b})"),
        }
    }

    /// The rows of a JSON array of objects bound as `param`, as a table `r` with the given columns
    /// (name, PostgreSQL type): a batch of rows in one parameter, for multi-row statements
    /// (`INSERT … SELECT … FROM {rows}`, `UPDATE … FROM {rows}`). Nested objects and arrays come out
    /// as JSON (`jsonb` on PostgreSQL, JSON text on SQLite).
    ///
    /// `count` is how many rows the array has. PostgreSQL guesses 100 rows for a function; against
    /// that guess, a join scanning every unfinished task (a partial index) looks cheaper than a
    /// primary-key probe per row, and a batch of five starts read 10,000 index entries. A `LIMIT` of
    /// the next power of two (never below `count`; few distinct statements to prepare) tells it.
    pub fn json_rows(self, param: &str, columns: &[(&str, &str)], count: usize) -> String {
        match self {
            Dialect::Postgres => {
                let typed: Vec<String> = columns.iter().map(|(name, kind)| format!("{name} {kind}")).collect();
                format!(
                    "(SELECT * FROM jsonb_to_recordset({param}) AS r({}) LIMIT {}) AS r",
                    typed.join(", "),
                    count.next_power_of_two()
                )
            }
            Dialect::Sqlite => {
                let picked: Vec<String> =
                    columns.iter().map(|(name, _)| format!("value ->> '{name}' AS {name}")).collect();
                format!("(SELECT {} FROM json_each({param})) AS r", picked.join(", "))
            }
        }
    }

    /// Bytes from their hexadecimal text (NULL stays NULL).
    pub fn unhex(self, text: &str) -> String {
        match self {
            Dialect::Postgres => format!("decode({text}, 'hex')"),
            Dialect::Sqlite => format!("unhex({text})"),
        }
    }
}

/// Opens the database `settings.url` names, creating it on first use (PostgreSQL: the database;
/// SQLite: the file and its folder). Errors never include the URL, which may hold a password.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Db> {
    match DatabaseBackend::of_url(&settings.url) {
        Some(DatabaseBackend::Postgres) => connect_postgres(settings).await.map(Db::Pg),
        Some(DatabaseBackend::Sqlite) => connect_sqlite(settings).await.map(Db::Sqlite),
        None => anyhow::bail!("database.url (DATABASE_URL) must start with postgres:// or sqlite://"),
    }
}

/// Prepared statements kept per PostgreSQL connection (sqlx's default is 100). The batch statements
/// come in up to nine sizes each ([`Dialect::json_rows`]), so a gateway under mixed load uses more than
/// 100 distinct statements, and each one evicted is prepared again: a round trip and a plan.
const PG_STATEMENT_CACHE: usize = 400;

async fn connect_postgres(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions =
        settings.url.parse().context("database.url (DATABASE_URL) is not a valid PostgreSQL URL")?;
    let options = options.statement_cache_capacity(PG_STATEMENT_CACHE);
    let database = options.get_database().unwrap_or("postgres").to_owned();
    if !Postgres::database_exists(&settings.url)
        .await
        .with_context(|| format!("cannot reach PostgreSQL to open database `{database}`"))?
    {
        match Postgres::create_database(&settings.url).await {
            Ok(()) => tracing::info!(database = %database, "created database"),
            // Another replica may have created it in the meantime.
            Err(_) if Postgres::database_exists(&settings.url).await.unwrap_or(false) => {}
            Err(error) => return Err(error).with_context(|| format!("cannot create database `{database}`")),
        }
    }
    PgPoolOptions::new()
        .max_connections(settings.max_connections.get())
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to database `{database}`"))
}

/// WAL (readers never wait for the writer), a busy timeout (writers queue for the lock), foreign keys.
async fn connect_sqlite(settings: &DatabaseSettings) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(&settings.url)
        .context("database.url (DATABASE_URL) is not a valid SQLite URL like sqlite://data/aio-gateway.db")?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    let file = options.get_filename().to_path_buf();
    create_folder_of(&file)?;
    SqlitePoolOptions::new()
        .max_connections(settings.max_connections.get())
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open the SQLite database {}", file.display()))
}

fn create_folder_of(file: &Path) -> anyhow::Result<()> {
    if let Some(folder) = file.parent().filter(|folder| !folder.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).with_context(|| format!("cannot create the folder {}", folder.display()))?;
    }
    Ok(())
}

/// Applies the backend's migrations (`migrations/postgres` or `migrations/sqlite`, embedded in the
/// binary). Safe to run from several PostgreSQL replicas at once: sqlx takes an advisory lock.
pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    match db {
        Db::Pg(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await,
        Db::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await,
    }
    .context("running database migrations")
}

/// The lock that keeps a second gateway off a SQLite file; released when dropped or when the process
/// ends, however it ends.
#[derive(Debug)]
pub struct ProcessLock {
    _file: File,
}

/// For a SQLite URL: takes the exclusive lock on `<database file>.lock`, or explains why another
/// gateway has it. Nothing for PostgreSQL, which any number of gateways share.
pub fn lock_single_process(url: &str) -> anyhow::Result<Option<ProcessLock>> {
    if DatabaseBackend::of_url(url) != Some(DatabaseBackend::Sqlite) {
        return Ok(None);
    }
    let options =
        SqliteConnectOptions::from_str(url).context("database.url (DATABASE_URL) is not a valid SQLite URL")?;
    create_folder_of(options.get_filename())?;
    let path: PathBuf = lock_path(options.get_filename());
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(ProcessLock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another gateway is serving the SQLite database {} (it holds {}). SQLite serves one process; \
             to run several replicas, use PostgreSQL (DATABASE_URL=postgres://…; `aio-gateway migrate --to` \
             moves the data)",
            options.get_filename().display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// A work queue table: rows matching `pending` are due when `due_column` has passed.
pub struct WorkQueue {
    pub table: &'static str,
    pub pending: &'static str,
    pub due_column: &'static str,
    /// What a claim returns, as `a, b, c`.
    pub columns: &'static str,
}

/// Claims up to `limit` due rows of `queue` for the instance `owner`, oldest due first, and pushes their
/// due time `lease` into the future: the lease that keeps them from being claimed twice (a worker that
/// dies lets them become due again; at once, when its instance is found dead: see [`crate::instances`]).
/// PostgreSQL locks them with `SKIP LOCKED`, so several gateways share the queue without
/// waiting on each other; SQLite claims in one `BEGIN IMMEDIATE` transaction, its single writer.
pub async fn claim_due<T>(db: &Db, queue: &WorkQueue, limit: i64, lease: Duration, owner: &str) -> sqlx::Result<Vec<T>>
where
    T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
{
    let WorkQueue { table, pending, due_column, columns } = queue;
    let lease = lease.as_secs_f64();
    match db {
        Db::Pg(pool) => {
            let returning = columns.split(", ").map(|c| format!("claimed.{c}")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "WITH due AS (
                     SELECT id FROM {table}
                     WHERE {pending} AND {due_column} <= now()
                     ORDER BY {due_column} LIMIT $1
                     FOR UPDATE SKIP LOCKED)
                 UPDATE {table} claimed SET {due_column} = now() + make_interval(secs => $2), leased_by = $3
                 FROM due WHERE claimed.id = due.id
                 RETURNING {returning}"
            );
            sqlx::query_as(&sql).bind(limit).bind(lease).bind(owner).fetch_all(pool).await
        }
        Db::Sqlite(_) => {
            let dialect = Dialect::Sqlite;
            let sql = format!(
                "UPDATE {table} SET {due_column} = {}, leased_by = $3
                 WHERE id IN (SELECT id FROM {table} WHERE {pending} AND {due_column} <= {}
                              ORDER BY {due_column} LIMIT $1)
                 RETURNING {columns}",
                dialect.now_plus_secs("$2"),
                dialect.now(),
            );
            let mut tx = db.begin().await?;
            let claimed = on_tx!(&mut tx, conn => sqlx::query_as(&sql).bind(limit).bind(lease).bind(owner).fetch_all(conn).await)?;
            tx.commit().await?;
            Ok(claimed)
        }
    }
}

pub async fn is_ready(db: &Db) -> bool {
    on_db!(db, pool => sqlx::query("SELECT 1").execute(pool).await.is_ok())
}
