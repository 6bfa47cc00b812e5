//! The database: connecting (creating the database on first use), migrating, readiness.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::DatabaseSettings;

/// Creates the database if it is missing, then opens a pool. Errors never include the URL, which may
/// hold a password.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions =
        settings.url.parse().context("database.url (DATABASE_URL) is not a valid PostgreSQL URL")?;
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
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to database `{database}`"))
}

/// Applies the migrations in `migrations/postgres` (embedded in the binary). Safe to run from
/// several replicas at once: sqlx takes an advisory lock.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations/postgres").run(pool).await.context("running database migrations")
}

/// The claim of a work queue table: up to `$1` rows matching `pending` whose `due_column` has passed,
/// oldest due first, locked with `SKIP LOCKED` (so several gateways share the queue without waiting on
/// each other) and pushed `$2` seconds into the future: the lease that keeps them from being claimed
/// twice. Returns `columns` of the claimed rows.
pub fn claim_due_sql(table: &str, pending: &str, due_column: &str, columns: &str) -> String {
    let returning = columns.split(", ").map(|c| format!("claimed.{c}")).collect::<Vec<_>>().join(", ");
    format!(
        "WITH due AS (
             SELECT id FROM {table}
             WHERE {pending} AND {due_column} <= now()
             ORDER BY {due_column} LIMIT $1
             FOR UPDATE SKIP LOCKED)
         UPDATE {table} claimed SET {due_column} = now() + make_interval(secs => $2)
         FROM due WHERE claimed.id = due.id
         RETURNING {returning}"
    )
}

pub async fn is_ready(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

/// On a database with no accounts, creates `default` with `credits` and a key for it, under an
/// advisory lock so two replicas starting together do not both do it. Returns the new key.
pub async fn bootstrap(pool: &PgPool, credits: i64) -> anyhow::Result<Option<crate::accounts::CreatedKey>> {
    let mut lock = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock(736241)").execute(&mut *lock).await?;
    let result = async {
        let (accounts,): (i64,) = sqlx::query_as("SELECT count(*) FROM accounts").fetch_one(pool).await?;
        if accounts > 0 {
            return Ok(None);
        }
        let account_id = crate::accounts::create(pool, "default", credits).await?;
        let key = crate::accounts::create_key(pool, account_id, Some("bootstrap"), None).await?;
        Ok(Some(key))
    }
    .await;
    sqlx::query("SELECT pg_advisory_unlock(736241)").execute(&mut *lock).await?;
    result
}
