//! API keys: their format, their hash, and the lookup that turns a bearer token into a caller.
//!
//! A key is `aio_` + 40 random base62 characters. Only its SHA-256 is stored, next to a short
//! visible prefix for listings. Successful lookups are cached for a short TTL so that status polls
//! do not touch the database; every kind of failure answers the same 401.

use std::time::Duration;

use crate::store::Db;
use chrono::{DateTime, Utc};
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::Error;

const KEY_PREFIX: &str = "aio_";
const KEY_RANDOM_CHARS: usize = 40;
const MIN_RANDOM_CHARS: usize = 32;
/// `aio_` and the first 8 random characters: enough to tell keys apart, far too few to guess one.
pub const VISIBLE_PREFIX_CHARS: usize = KEY_PREFIX.len() + 8;

pub type KeyHash = [u8; 32];

/// A freshly minted key. `secret` is shown to its owner once and never stored.
pub struct NewKey {
    pub secret: String,
    pub prefix: String,
    pub hash: KeyHash,
}

pub fn generate_key() -> NewKey {
    let random: String = rand::thread_rng().sample_iter(&Alphanumeric).take(KEY_RANDOM_CHARS).map(char::from).collect();
    let secret = format!("{KEY_PREFIX}{random}");
    NewKey { prefix: secret[..VISIBLE_PREFIX_CHARS].to_owned(), hash: hash_key(&secret), secret }
}

pub fn hash_key(secret: &str) -> KeyHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Checked before any lookup so that garbage never reaches the database.
fn is_well_formed(secret: &str) -> bool {
    secret.strip_prefix(KEY_PREFIX).is_some_and(|random| {
        random.len() >= MIN_RANDOM_CHARS && random.len() <= 128 && random.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// Who is calling: the account and the key it used.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account_id: i64,
    pub key_id: String,
    /// The key's own rate limit, when it has one.
    pub rate_limit_per_minute: Option<u32>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    account_id: i64,
    expires_at: Option<DateTime<Utc>>,
    rate_limit_per_minute: Option<i32>,
}

#[derive(Clone)]
struct CachedKey {
    caller: Caller,
    expires_at: Option<DateTime<Utc>>,
}

pub struct KeyAuth {
    db: Db,
    /// Keyed by the full hash: a hit proves the caller holds the whole key.
    cache: moka::sync::Cache<KeyHash, CachedKey>,
    /// Whether a key (by id) is live, for the sessions signed in with it: the same TTL.
    live: moka::sync::Cache<String, bool>,
}

impl KeyAuth {
    pub fn new(db: Db, cache_ttl: Duration) -> Self {
        let cache = moka::sync::Cache::builder().max_capacity(100_000).time_to_live(cache_ttl).build();
        let live = moka::sync::Cache::builder().max_capacity(100_000).time_to_live(cache_ttl).build();
        Self { db, cache, live }
    }

    /// Drops a key from this process's caches (after revoking it); other processes notice within the TTL.
    pub fn forget(&self, hash: &[u8], key_id: &str) {
        if let Ok(hash) = KeyHash::try_from(hash) {
            self.cache.invalidate(&hash);
        }
        self.live.invalidate(key_id);
    }

    /// Whether the key `key_id` is neither revoked nor expired (cached for the TTL).
    pub async fn key_is_live(&self, key_id: &str) -> Result<bool, Error> {
        if let Some(live) = self.live.get(key_id) {
            return Ok(live);
        }
        let sql = format!(
            "SELECT id FROM api_keys WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {})",
            self.db.dialect().now()
        );
        let row: Option<(String,)> =
            crate::on_db!(&self.db, pool => sqlx::query_as(&sql).bind(key_id).fetch_optional(pool).await)?;
        self.live.insert(key_id.to_owned(), row.is_some());
        Ok(row.is_some())
    }

    /// Resolves an `Authorization` header value to a caller, or the one 401.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, Error> {
        let secret = authorization
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, secret)| secret.trim())
            .ok_or(Error::Unauthorized)?;
        self.authenticate_key(secret).await
    }

    /// Resolves the key itself (as the console's sign-in receives it) to a caller, or the one 401.
    pub async fn authenticate_key(&self, secret: &str) -> Result<Caller, Error> {
        if !is_well_formed(secret) {
            return Err(Error::Unauthorized);
        }
        let hash = hash_key(secret);
        let now = Utc::now();
        if let Some(hit) = self.cache.get(&hash) {
            if hit.expires_at.is_some_and(|at| at <= now) {
                self.cache.invalidate(&hash);
                return Err(Error::Unauthorized);
            }
            return Ok(hit.caller);
        }
        let sql = format!(
            "UPDATE api_keys SET last_used_at = {now}
             WHERE hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {now})
             RETURNING id, account_id, expires_at, rate_limit_per_minute",
            now = self.db.dialect().now()
        );
        let row: Option<KeyRow> =
            crate::on_db!(&self.db, pool => sqlx::query_as(&sql).bind(&hash[..]).fetch_optional(pool).await)?;
        let KeyRow { id: key_id, account_id, expires_at, rate_limit_per_minute } = row.ok_or(Error::Unauthorized)?;
        let rate_limit_per_minute = rate_limit_per_minute.and_then(|r| u32::try_from(r).ok());
        let caller = Caller { account_id, key_id, rate_limit_per_minute };
        self.cache.insert(hash, CachedKey { caller: caller.clone(), expires_at });
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = generate_key();
        let b = generate_key();
        assert!(is_well_formed(&a.secret));
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.prefix.len(), 12);
        assert!(a.secret.starts_with(&a.prefix));
        assert_eq!(a.hash, hash_key(&a.secret));
    }

    #[test]
    fn malformed_keys_are_refused_before_lookup() {
        // Built at run time, so nothing key-shaped sits in the source.
        let foreign = format!("sk-{}", "0".repeat(32));
        let bad_char = format!("aio_{}!", "0".repeat(35));
        for bad in ["", "aio_", "aio_short", foreign.as_str(), bad_char.as_str()] {
            assert!(!is_well_formed(bad), "{bad} should be malformed");
        }
        assert!(is_well_formed(&format!("aio_{}", "a".repeat(32))));
    }
}
