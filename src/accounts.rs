//! Accounts and their API keys: what the CLI (and later the admin API) creates, lists and revokes.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use ulid::Ulid;

use crate::{auth, ledger};

/// Creates an account, granting `credits` through the ledger so the balance has its history.
pub async fn create(pool: &PgPool, name: &str, credits: i64) -> anyhow::Result<i64> {
    anyhow::ensure!(credits >= 0, "credits must not be negative");
    let mut tx = pool.begin().await?;
    let (account_id,): (i64,) =
        sqlx::query_as("INSERT INTO accounts (name) VALUES ($1) RETURNING id").bind(name).fetch_one(&mut *tx).await?;
    if credits > 0 {
        ledger::grant(&mut tx, account_id, credits, "initial credits").await?;
    }
    tx.commit().await?;
    Ok(account_id)
}

pub async fn exists(pool: &PgPool, account_id: i64) -> anyhow::Result<bool> {
    let found: Option<(i64,)> =
        sqlx::query_as("SELECT id FROM accounts WHERE id = $1").bind(account_id).fetch_optional(pool).await?;
    Ok(found.is_some())
}

#[derive(Debug, Serialize)]
pub struct CreatedKey {
    pub key_id: String,
    /// The only time the key is shown.
    pub api_key: String,
}

pub async fn create_key(
    pool: &PgPool,
    account_id: i64,
    name: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> anyhow::Result<CreatedKey> {
    anyhow::ensure!(exists(pool, account_id).await?, "account {account_id} does not exist");
    let key = auth::generate_key();
    let key_id = format!("key_{}", Ulid::new());
    sqlx::query("INSERT INTO api_keys (id, account_id, name, prefix, hash, expires_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&key_id)
        .bind(account_id)
        .bind(name)
        .bind(&key.prefix)
        .bind(&key.hash[..])
        .bind(expires_at)
        .execute(pool)
        .await?;
    Ok(CreatedKey { key_id, api_key: key.secret })
}

/// Returns false when no active key has that id.
pub async fn revoke_key(pool: &PgPool, key_id: &str) -> anyhow::Result<bool> {
    let done = sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(key_id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct KeyInfo {
    pub key_id: String,
    pub name: Option<String>,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn list_keys(pool: &PgPool, account_id: i64) -> anyhow::Result<Vec<KeyInfo>> {
    Ok(sqlx::query_as(
        "SELECT id AS key_id, name, prefix, created_at, last_used_at, expires_at, revoked_at
         FROM api_keys WHERE account_id = $1 ORDER BY created_at DESC",
    )
    .bind(account_id)
    .fetch_all(pool)
    .await?)
}
