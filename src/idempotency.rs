//! Idempotency keys (SPEC §2.1): the same `Idempotency-Key` from the same account within 24 hours
//! returns the first task again and holds nothing new; the same key with another request is a
//! conflict.
//!
//! The key row is written in the transaction that inserts the task and holds its price
//! ([`crate::tasks::create`]), with `ON CONFLICT DO UPDATE … WHERE expired`: when two requests race
//! with one key, the second waits on the first's row and then finds it taken, so exactly one task
//! and one hold exist. A key older than [`KEY_LIFETIME_HOURS`] is taken over by the next request.

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

/// Records `key` for `task_id` in the caller's transaction. `false` when an unexpired row holds the key
/// (the caller rolls back and looks up [`find`]); a concurrent insert of the same key waits here until
/// the other transaction ends.
pub async fn claim(tx: &mut Tx, account_id: i64, key: &IdempotencyKey, task_id: &str) -> sqlx::Result<bool> {
    let sql = format!(
        "INSERT INTO idempotency_keys (account_id, key, request_hash, task_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (account_id, key) DO UPDATE
             SET request_hash = EXCLUDED.request_hash, task_id = EXCLUDED.task_id, created_at = {}
             WHERE idempotency_keys.created_at < {}",
        tx.dialect().now(),
        expired_before(tx.dialect())
    );
    let claimed = on_tx!(tx, conn => sqlx::query(&sql)
        .bind(account_id)
        .bind(&key.key)
        .bind(&key.request_hash[..])
        .bind(task_id)
        .execute(conn)
        .await
        .map(|done| done.rows_affected()))?;
    Ok(claimed == 1)
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
