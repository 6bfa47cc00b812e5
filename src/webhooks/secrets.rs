//! Each account's webhook signing secret: created on first use, rotated by the CLI. After a rotation
//! the previous secret keeps signing, next to the new one, for `webhooks.secret_overlap_secs`, so
//! receivers can switch without dropping a webhook.

use std::time::Duration;

use serde_json::json;

use crate::audit::{self, Action, Actor, Target};
use crate::store::Db;
use crate::{on_db, on_tx};

use super::signing;

/// The secrets that sign now: the current one first, then the previous one while its overlap lasts.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Signing {
    pub current: String,
    pub previous: Option<String>,
}

impl Signing {
    pub fn all(&self) -> Vec<&str> {
        std::iter::once(self.current.as_str()).chain(self.previous.as_deref()).collect()
    }
}

/// The account's secrets, creating its secret on first use. The account must exist.
pub async fn signing(db: &Db, account_id: i64) -> sqlx::Result<Signing> {
    if let Some(found) = read(db, account_id).await? {
        return Ok(found);
    }
    // Two first uses at once: one insert wins, both read the winner.
    const SQL: &str =
        "INSERT INTO webhook_secrets (account_id, secret) VALUES ($1, $2) ON CONFLICT (account_id) DO NOTHING";
    on_db!(db, pool => sqlx::query(SQL)
        .bind(account_id)
        .bind(signing::generate_secret())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
    read(db, account_id).await?.ok_or(sqlx::Error::RowNotFound)
}

async fn read(db: &Db, account_id: i64) -> sqlx::Result<Option<Signing>> {
    let sql = format!(
        "SELECT secret AS current, CASE WHEN previous_expires_at > {} THEN previous_secret END AS previous
         FROM webhook_secrets WHERE account_id = $1",
        db.dialect().now()
    );
    on_db!(db, pool => sqlx::query_as(&sql).bind(account_id).fetch_optional(pool).await)
}

/// A new current secret; the one it replaces signs too until `overlap` has passed. Rotating again
/// within the overlap retires the oldest secret at once. Returns the new secret.
/// Recorded in the audit log (`webhook_secret.rotate`, with the overlap, never a secret).
pub async fn rotate(db: &Db, actor: &Actor, account_id: i64, overlap: Duration) -> sqlx::Result<String> {
    signing(db, account_id).await?;
    let d = db.dialect();
    let sql = format!(
        "UPDATE webhook_secrets
         SET previous_secret = secret, previous_expires_at = {}, secret = $2, rotated_at = {}
         WHERE account_id = $1 RETURNING secret",
        d.now_plus_secs("$3"),
        d.now()
    );
    let mut tx = db.begin().await?;
    let (secret,): (String,) = on_tx!(&mut tx, conn => sqlx::query_as(&sql)
        .bind(account_id)
        .bind(signing::generate_secret())
        .bind(overlap.as_secs_f64())
        .fetch_one(conn)
        .await)?;
    let after = json!({"overlap_secs": overlap.as_secs()});
    audit::record_in(&mut tx, actor, Action::WebhookSecretRotate, Target::account(account_id), None, Some(after))
        .await?;
    tx.commit().await?;
    Ok(secret)
}
