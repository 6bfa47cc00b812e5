//! Accounts and their API keys: what the CLI and the admin API create, list and revoke, and the
//! `default` account of a fresh install ([`bootstrap`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use ulid::Ulid;

use crate::audit::{self, Action, Actor, Target};
use crate::limits::Limits;
use crate::store::{Db, Tx};
use crate::{auth, ledger, on_db, on_tx};

/// On a database with no accounts, creates `default` with `credits` and a key for it. Returns the new
/// key. On PostgreSQL an advisory lock keeps two replicas starting together from both doing it; a
/// SQLite file has one gateway (see [`crate::store::lock_single_process`]).
pub async fn bootstrap(db: &Db, credits: i64) -> anyhow::Result<Option<CreatedKey>> {
    let create = async {
        let (accounts,): (i64,) =
            on_db!(db, pool => sqlx::query_as("SELECT count(*) FROM accounts").fetch_one(pool).await)?;
        if accounts > 0 {
            return Ok(None);
        }
        let actor = Actor::system("bootstrap");
        let account_id = create(db, &actor, "default", credits).await?;
        let key = create_key(db, &actor, account_id, Some("bootstrap"), None).await?;
        Ok(Some(key))
    };
    let Db::Pg(pool) = db else {
        return create.await;
    };
    let mut lock = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock(736241)").execute(&mut *lock).await?;
    let result = create.await;
    sqlx::query("SELECT pg_advisory_unlock(736241)").execute(&mut *lock).await?;
    result
}

/// Creates an account, granting `credits` through the ledger so the balance has its history, and
/// records it (`account.create`) in the audit log.
pub async fn create(db: &Db, actor: &Actor, name: &str, credits: i64) -> anyhow::Result<i64> {
    anyhow::ensure!(credits >= 0, "credits must not be negative");
    let mut tx = db.begin().await?;
    let (account_id,): (i64,) = on_tx!(&mut tx, conn => sqlx::query_as("INSERT INTO accounts (name) VALUES ($1) RETURNING id")
        .bind(name)
        .fetch_one(conn)
        .await)?;
    if credits > 0 {
        ledger::grant(&mut tx, account_id, credits, "initial credits").await?;
    }
    let after = json!({"name": name, "balance": credits});
    audit::record_in(&mut tx, actor, Action::AccountCreate, Target::account(account_id), None, Some(after)).await?;
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
    /// Credits a refund or dispute could not take back because they were already spent.
    pub credits_owed: i64,
    /// Set when a refund or dispute first left credits owed: the operator should look at the account.
    #[schema(required = true)]
    pub billing_flagged_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The account's limits (issue 20), over all its keys; `null` is no limit.
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub limits: Limits,
}

const ACCOUNT_COLUMNS: &str = "id AS account_id, name, balance, held, credits_owed, billing_flagged_at, created_at, \
     allowed_models, max_in_flight, daily_credit_cap, monthly_credit_cap";

pub async fn get(db: &Db, account_id: i64) -> sqlx::Result<Option<Account>> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1");
    on_db!(db, pool => sqlx::query_as(&sql).bind(account_id).fetch_optional(pool).await)
}

/// A page cursor is the id of the last account of the previous page (see [`crate::paging`]).
pub fn cursor(text: &str) -> Option<i64> {
    text.parse::<i64>().ok()
}

/// Accounts by id, after `after` (the cursor) when given.
pub async fn list(db: &Db, after: Option<i64>, limit: i64) -> sqlx::Result<Vec<Account>> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2");
    on_db!(db, pool => sqlx::query_as(&sql).bind(after).bind(limit).fetch_all(pool).await)
}

pub async fn exists(db: &Db, account_id: i64) -> anyhow::Result<bool> {
    let found: Option<(i64,)> = on_db!(db, pool => sqlx::query_as("SELECT id FROM accounts WHERE id = $1").bind(account_id).fetch_optional(pool).await)?;
    Ok(found.is_some())
}

#[derive(Debug, Serialize)]
pub struct CreatedKey {
    pub key_id: String,
    /// The only time the key is shown.
    pub api_key: String,
}

/// Creates a key of `account_id` and records it (`key.create`, with its prefix, never the key).
pub async fn create_key(
    db: &Db,
    actor: &Actor,
    account_id: i64,
    name: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> anyhow::Result<CreatedKey> {
    anyhow::ensure!(exists(db, account_id).await?, "account {account_id} does not exist");
    let key = auth::generate_key();
    let key_id = format!("key_{}", Ulid::new());
    const SQL: &str =
        "INSERT INTO api_keys (id, account_id, name, prefix, hash, expires_at) VALUES ($1, $2, $3, $4, $5, $6)";
    let mut tx = db.begin().await?;
    on_tx!(&mut tx, conn => sqlx::query(SQL)
        .bind(&key_id)
        .bind(account_id)
        .bind(name)
        .bind(&key.prefix)
        .bind(&key.hash[..])
        .bind(expires_at)
        .execute(conn)
        .await
        .map(|done| done.rows_affected()))?;
    let after = json!({"status": "active", "name": name, "prefix": key.prefix, "expires_at": expires_at});
    audit::record_in(&mut tx, actor, Action::KeyCreate, Target::of(account_id, &key_id), None, Some(after)).await?;
    tx.commit().await?;
    Ok(CreatedKey { key_id, api_key: key.secret })
}

/// Revokes a key of `account_id` (a key of another account is not found). Returns the key's hash
/// when this call revoked it, so the caller can drop it from its cache; nothing when there is no
/// such key or it was revoked before (see [`OwnRevoke`]).
pub async fn revoke_own_key(db: &Db, actor: &Actor, account_id: i64, key_id: &str) -> sqlx::Result<OwnRevoke> {
    // Read and revoke in one transaction (the row locked on PostgreSQL; SQLite has one writer).
    let mut tx = db.begin().await?;
    let for_update = if db.dialect() == crate::store::Dialect::Postgres { "FOR UPDATE" } else { "" };
    let sql =
        format!("SELECT hash, revoked_at IS NOT NULL FROM api_keys WHERE id = $1 AND account_id = $2 {for_update}");
    let row: Option<(Vec<u8>, bool)> =
        on_tx!(&mut tx, conn => sqlx::query_as(&sql).bind(key_id).bind(account_id).fetch_optional(conn).await)?;
    if let Some((_, false)) = row {
        let sql = format!("UPDATE api_keys SET revoked_at = {} WHERE id = $1", tx.dialect().now());
        on_tx!(&mut tx, conn => sqlx::query(&sql).bind(key_id).execute(conn).await.map(|done| done.rows_affected()))?;
        record_revoke(&mut tx, actor, account_id, key_id).await?;
    }
    tx.commit().await?;
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
    Revoked {
        hash: Vec<u8>,
    },
}

/// Revokes a key of any account (the CLI). Returns false when no active key has that id.
pub async fn revoke_key(db: &Db, actor: &Actor, key_id: &str) -> anyhow::Result<bool> {
    let mut tx = db.begin().await?;
    let sql = format!(
        "UPDATE api_keys SET revoked_at = {} WHERE id = $1 AND revoked_at IS NULL RETURNING account_id",
        db.dialect().now()
    );
    let revoked: Option<(i64,)> =
        on_tx!(&mut tx, conn => sqlx::query_as(&sql).bind(key_id).fetch_optional(conn).await)?;
    if let Some((account_id,)) = revoked {
        record_revoke(&mut tx, actor, account_id, key_id).await?;
    }
    tx.commit().await?;
    Ok(revoked.is_some())
}

async fn record_revoke(tx: &mut Tx, actor: &Actor, account_id: i64, key_id: &str) -> sqlx::Result<()> {
    let (before, after) = (json!({"status": "active"}), json!({"status": "revoked"}));
    audit::record_in(tx, actor, Action::KeyRevoke, Target::of(account_id, key_id), Some(before), Some(after)).await
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KeyInfo {
    pub key_id: String,
    #[schema(required = true)]
    pub name: Option<String>,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub last_used_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub expires_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key's limits (issue 20); `null` is no limit. The account's limits apply too.
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub limits: Limits,
}

const KEY_COLUMNS: &str = "id AS key_id, name, prefix, created_at, last_used_at, expires_at, revoked_at, \
     allowed_models, max_in_flight, daily_credit_cap, monthly_credit_cap";

pub async fn list_keys(db: &Db, account_id: i64) -> anyhow::Result<Vec<KeyInfo>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE account_id = $1 ORDER BY created_at DESC");
    Ok(on_db!(db, pool => sqlx::query_as(&sql).bind(account_id).fetch_all(pool).await)?)
}

/// One key, of `account_id` when given (an admin may name any key).
pub async fn key(db: &Db, account_id: Option<i64>, key_id: &str) -> sqlx::Result<Option<KeyInfo>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND ($2 IS NULL OR account_id = $2)");
    on_db!(db, pool => sqlx::query_as(&sql).bind(key_id).bind(account_id).fetch_optional(pool).await)
}

/// The account's active keys: neither revoked nor expired.
pub async fn count_active_keys(db: &Db, account_id: i64) -> sqlx::Result<i64> {
    let sql = format!(
        "SELECT count(*) FROM api_keys WHERE account_id = $1 AND revoked_at IS NULL
                                         AND (expires_at IS NULL OR expires_at > {})",
        db.dialect().now()
    );
    let (count,): (i64,) = on_db!(db, pool => sqlx::query_as(&sql).bind(account_id).fetch_one(pool).await)?;
    Ok(count)
}
