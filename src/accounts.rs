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

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Account {
    pub account_id: i64,
    pub name: String,
    /// What the account can spend now.
    pub balance: i64,
    /// What its unfinished tasks have reserved.
    pub held: i64,
    pub created_at: DateTime<Utc>,
}

const ACCOUNT_COLUMNS: &str = "id AS account_id, name, balance, held, created_at";

pub async fn get(pool: &PgPool, account_id: i64) -> sqlx::Result<Option<Account>> {
    sqlx::query_as(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"))
        .bind(account_id)
        .fetch_optional(pool)
        .await
}

/// Accounts by id, after `after` (the cursor) when given.
pub async fn list(pool: &PgPool, after: Option<i64>, limit: i64) -> sqlx::Result<Vec<Account>> {
    sqlx::query_as(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE ($1::bigint IS NULL OR id > $1) ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
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

/// Revokes a key of `account_id` (a key of another account is not found). Returns the key's hash
/// when this call revoked it, so the caller can drop it from its cache; nothing when there is no
/// such key or it was revoked before (see [`OwnRevoke`]).
pub async fn revoke_own_key(pool: &PgPool, account_id: i64, key_id: &str) -> sqlx::Result<OwnRevoke> {
    let row: Option<(Vec<u8>, bool)> = sqlx::query_as(
        "WITH target AS (SELECT id, hash, revoked_at IS NOT NULL AS was_revoked FROM api_keys
                         WHERE id = $1 AND account_id = $2 FOR UPDATE)
         UPDATE api_keys k SET revoked_at = COALESCE(k.revoked_at, now())
         FROM target WHERE k.id = target.id
         RETURNING target.hash, target.was_revoked",
    )
    .bind(key_id)
    .bind(account_id)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => OwnRevoke::NotFound,
        Some((_, true)) => OwnRevoke::AlreadyRevoked,
        Some((hash, false)) => OwnRevoke::Revoked { hash },
    })
}

pub enum OwnRevoke {
    NotFound,
    AlreadyRevoked,
    /// Revoked now; the hash lets this process drop the key from its cache at once.
    Revoked { hash: Vec<u8> },
}

/// Returns false when no active key has that id.
pub async fn revoke_key(pool: &PgPool, key_id: &str) -> anyhow::Result<bool> {
    let done = sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(key_id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
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
