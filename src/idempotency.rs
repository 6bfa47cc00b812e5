//! Idempotency keys (SPEC §2.1): the same `Idempotency-Key` from the same account within 24 hours
//! returns the first task again and holds nothing new; the same key with another request is a
//! conflict.
//!
//! The key row is written in the transaction that inserts the task and holds its price (a batch of
//! creates, [`crate::tasks::batch`]), after the account's row is locked: when two requests race with
//! one key, the second waits on the account and then finds the key taken, so exactly one task and one
//! hold exist. A key older than [`KEY_LIFETIME_HOURS`] is taken over by the next request.

use serde::Serialize;
use sqlx::types::Json;

use crate::error::Error;
use crate::store::{Db, Dialect, Tx};
use crate::{on_db, on_tx};

/// Keys are honoured this long; older ones are reusable and purged by the engine.
pub const KEY_LIFETIME_HOURS: i32 = 24;

/// When a key stops being honoured: `created_at` before this has expired.
fn expired_before(dialect: Dialect) -> String {
    dialect.now_plus_secs(&format!("-{}", i64::from(KEY_LIFETIME_HOURS) * 3600))
}
pub const MAX_KEY_CHARS: usize = 255;

/// A client's key with the hash of the request it came with (see [`crate::tasks::request_hash`]).
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: [u8; 32],
}

/// Why a header value is not a key, in words for the client.
pub fn check_key(key: &str) -> Result<(), Error> {
    let chars = key.chars().count();
    if chars == 0 || chars > MAX_KEY_CHARS {
        return Err(Error::Invalid(format!(
            "`Idempotency-Key`: must be 1 to {MAX_KEY_CHARS} characters; got {chars}."
        )));
    }
    Ok(())
}

/// One use of a key in a batch of creates: the key, its request's hash (hexadecimal) and its task.
#[derive(Debug, Serialize)]
pub struct Use<'a> {
    pub account_id: i64,
    pub key: &'a str,
    pub hash: String,
    pub task_id: &'a str,
}

impl<'a> Use<'a> {
    pub fn new(account_id: i64, key: &'a IdempotencyKey, task_id: &'a str) -> Use<'a> {
        Use { account_id, key: &key.key, hash: hex::encode(key.request_hash), task_id }
    }
}

const USE_COLUMNS: &[(&str, &str)] =
    &[("account_id", "bigint"), ("key", "text"), ("hash", "text"), ("task_id", "text")];

/// Of `uses`, the `(account_id, key)` pairs an unexpired row already holds, in the caller's
/// transaction. Race-free because every writer of an account's keys holds the account's row first
/// (see [`crate::tasks::batch`]): a concurrent claim of the same key has committed or rolled back.
pub async fn taken(tx: &mut Tx, uses: &[Use<'_>]) -> sqlx::Result<Vec<(i64, String)>> {
    let d = tx.dialect();
    let sql = format!(
        "SELECT k.account_id, k.key FROM idempotency_keys k JOIN {rows} ON k.account_id = r.account_id AND k.key = r.key
         WHERE k.created_at >= {expired}",
        rows = d.json_rows("$1", USE_COLUMNS, uses.len()),
        expired = expired_before(d),
    );
    on_tx!(tx, conn => sqlx::query_as(&sql).bind(Json(uses)).fetch_all(conn).await)
}

/// Records `uses` (none of them [`taken`]) in the caller's transaction; an expired row of the key is
/// taken over. Returns how many were recorded: fewer than `uses.len()` means a key was taken after all.
pub async fn claim(tx: &mut Tx, uses: &[Use<'_>]) -> sqlx::Result<u64> {
    let d = tx.dialect();
    let sql = format!(
        "INSERT INTO idempotency_keys (account_id, key, request_hash, task_id)
         SELECT r.account_id, r.key, {hash}, r.task_id FROM {rows} WHERE true
         ON CONFLICT (account_id, key) DO UPDATE
             SET request_hash = EXCLUDED.request_hash, task_id = EXCLUDED.task_id, created_at = {now}
             WHERE idempotency_keys.created_at < {expired}",
        hash = d.unhex("r.hash"),
        rows = d.json_rows("$1", USE_COLUMNS, uses.len()),
        now = d.now(),
        expired = expired_before(d),
    );
    on_tx!(tx, conn => sqlx::query(&sql).bind(Json(uses)).execute(conn).await.map(|done| done.rows_affected()))
}

/// The unexpired use of a key: `(request_hash, task_id)`.
pub async fn find(db: &Db, account_id: i64, key: &str) -> sqlx::Result<Option<(Vec<u8>, String)>> {
    let sql = format!(
        "SELECT request_hash, task_id FROM idempotency_keys
         WHERE account_id = $1 AND key = $2 AND created_at >= {}",
        expired_before(db.dialect())
    );
    on_db!(db, pool => sqlx::query_as(&sql).bind(account_id).bind(key).fetch_optional(pool).await)
}

/// Deletes expired keys; returns how many.
pub async fn purge(db: &Db) -> sqlx::Result<u64> {
    let sql = format!("DELETE FROM idempotency_keys WHERE created_at < {}", expired_before(db.dialect()));
    let done = on_db!(db, pool => sqlx::query(&sql).execute(pool).await.map(|done| done.rows_affected()))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_255_characters() {
        assert!(check_key("k").is_ok());
        assert!(check_key(&"é".repeat(255)).is_ok());
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(256)).is_err_and(|e| e.to_string().contains("256")));
    }
}
