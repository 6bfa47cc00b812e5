//! Console sessions that must end before their token expires. A session token is stateless, so two
//! things are checked on every use: the API key it was signed in with is still live (through the key
//! cache, so a revoked key ends its sessions within `auth.key_cache_ttl_secs`), and it was not signed
//! out (its `jti` is kept in `signed_out_sessions` until the token would have expired).

use chrono::{DateTime, Utc};

use crate::auth::KeyAuth;
use crate::error::Error;
use crate::jwt::Session;
use crate::on_db;
use crate::store::Db;

/// Whether `session` may still be used.
pub async fn is_live(db: &Db, keys: &KeyAuth, session: &Session) -> Result<bool, Error> {
    if let Some(key_id) = &session.key_id {
        if !keys.key_is_live(key_id).await? {
            return Ok(false);
        }
    }
    let Some(token_id) = &session.token_id else {
        return Ok(true);
    };
    let found: Option<(String,)> = on_db!(db, pool => sqlx::query_as(
        "SELECT token_id FROM signed_out_sessions WHERE token_id = $1",
    )
    .bind(token_id)
    .fetch_optional(pool)
    .await)?;
    Ok(found.is_none())
}

/// Ends `session` for good: its token id is refused until the token expires. Also purges the ids of
/// tokens that have expired meanwhile, which need no refusing any more.
pub async fn sign_out(db: &Db, session: &Session) -> Result<(), Error> {
    let now = db.dialect().now();
    on_db!(db, pool => sqlx::query(&format!("DELETE FROM signed_out_sessions WHERE expires_at < {now}"))
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
    let Some(token_id) = &session.token_id else {
        return Ok(());
    };
    let expires_at = DateTime::<Utc>::from_timestamp(i64::try_from(session.expires_at).unwrap_or(i64::MAX), 0)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    on_db!(db, pool => sqlx::query(
        "INSERT INTO signed_out_sessions (token_id, expires_at) VALUES ($1, $2) ON CONFLICT (token_id) DO NOTHING",
    )
    .bind(token_id)
    .bind(expires_at)
    .execute(pool)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(())
}
