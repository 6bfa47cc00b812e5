//! Redemption codes: an admin makes a batch (credits each, how many, an optional expiry); the codes
//! are shown once and only their SHA-256 is kept. A code is redeemed once: the guarded update that
//! marks it redeemed and the ledger grant commit together, so concurrent redemptions of one code
//! grant exactly once.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{record_top_up, TopUp};
use crate::audit::{self, Action, Actor, Target};
use crate::error::Error;
use crate::ids::new_id;
use crate::ledger::{self, Entry, MAX_AMOUNT};
use crate::store::Db;
use crate::{on_db, on_tx};

pub const MAX_BATCH: i64 = 1000;
/// Letters and digits that cannot be mistaken for each other when typed (no 0/O, 1/I/L).
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// 20 characters of 31: about 99 bits.
const CODE_CHARS: usize = 20;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Batch {
    #[schema(example = "rcb_01JD3Z7YB4W4D0Q8WQK9N4V2XH")]
    pub batch_id: String,
    pub credits: i64,
    #[schema(required = true)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Shown this once: only their hashes are stored.
    pub codes: Vec<String>,
}

/// `AIO-XXXX-XXXX-XXXX-XXXX-XXXX`.
fn new_code() -> String {
    let mut rng = rand::thread_rng();
    let chars: Vec<char> = (0..CODE_CHARS).map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())])).collect();
    let groups: Vec<String> = chars.chunks(4).map(|group| group.iter().collect()).collect();
    format!("AIO-{}", groups.join("-"))
}

/// The hash of a code as typed: case, spaces and dashes do not matter. `None` when it cannot be a code.
fn hash_of(code: &str) -> Option<[u8; 32]> {
    let normalized: String = code.chars().filter(|c| !matches!(c, '-' | ' ')).map(|c| c.to_ascii_uppercase()).collect();
    let body = normalized.strip_prefix("AIO")?;
    (body.len() == CODE_CHARS && body.bytes().all(|b| ALPHABET.contains(&b))).then(|| Sha256::digest(body).into())
}

pub async fn create_batch(
    db: &Db,
    admin_account: i64,
    credits: i64,
    count: i64,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Batch, Error> {
    if !(1..=MAX_AMOUNT).contains(&credits) {
        return Err(Error::Invalid(format!("`credits`: 1 to {MAX_AMOUNT}.")));
    }
    if !(1..=MAX_BATCH).contains(&count) {
        return Err(Error::Invalid(format!("`count`: 1 to {MAX_BATCH}.")));
    }
    if expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(Error::Invalid("`expires_at`: must be in the future.".into()));
    }
    let batch_id = new_id("rcb");
    let codes: Vec<String> = (0..count).map(|_| new_code()).collect();
    let mut tx = db.begin().await?;
    for code in &codes {
        let hash = hash_of(code).ok_or_else(|| Error::Internal(anyhow::anyhow!("a new code does not parse")))?;
        on_tx!(&mut tx, conn => sqlx::query(
            "INSERT INTO redemption_codes (batch_id, hash, credits, expires_at, created_by) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&batch_id)
        .bind(&hash[..])
        .bind(credits)
        .bind(expires_at)
        .bind(admin_account)
        .execute(conn)
        .await
        .map(|done| done.rows_affected()))?;
    }
    tx.commit().await?;
    tracing::info!(admin = admin_account, batch_id = %batch_id, credits, count, "redemption codes created");
    Ok(Batch { batch_id, credits, expires_at, codes })
}

/// Redeems `code` for `account_id`: its credits are granted once, whoever asks how often.
pub async fn redeem(db: &Db, actor: &Actor, account_id: i64, code: &str) -> Result<Entry, Error> {
    let unknown = || Error::NotFound("No such redemption code.".into());
    let hash = hash_of(code).ok_or_else(unknown)?;
    let mut tx = db.begin().await?;
    let now = tx.dialect().now();
    let sql = format!(
        "UPDATE redemption_codes SET redeemed_by = $2, redeemed_at = {now}
         WHERE hash = $1 AND redeemed_by IS NULL AND (expires_at IS NULL OR expires_at > {now})
         RETURNING batch_id, credits"
    );
    let claimed: Option<(String, i64)> =
        on_tx!(&mut tx, conn => sqlx::query_as(&sql).bind(&hash[..]).bind(account_id).fetch_optional(conn).await)?;
    let Some((batch_id, credits)) = claimed else {
        drop(tx);
        // Why not: say so, without telling who redeemed it.
        let sql = format!("SELECT redeemed_by IS NOT NULL, expires_at IS NOT NULL AND expires_at <= {} FROM redemption_codes WHERE hash = $1", db.dialect().now());
        let row: Option<(bool, bool)> =
            on_db!(db, pool => sqlx::query_as(&sql).bind(&hash[..]).fetch_optional(pool).await)?;
        return Err(match row {
            None => unknown(),
            Some((true, _)) => Error::Conflict("This code has already been redeemed.".into()),
            Some((false, _)) => Error::Conflict("This code has expired.".into()),
        });
    };
    let source = format!("redemption code of batch {batch_id}");
    let entry = ledger::change_in(&mut tx, account_id, credits, &source).await?;
    audit::credits_in(&mut tx, actor, Action::CreditsRedeem, Target::of(account_id, &batch_id), &entry).await?;
    tx.commit().await?;
    record_top_up(&TopUp { account_id, credits, source: &source });
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_back_whatever_the_case_dashes_or_spaces() {
        let code = new_code();
        assert_eq!(code.len(), "AIO-".len() + CODE_CHARS + CODE_CHARS / 4 - 1);
        let hash = hash_of(&code).expect("a new code parses");
        assert_eq!(hash_of(&code.to_lowercase()), Some(hash));
        assert_eq!(hash_of(&code.replace('-', " ")), Some(hash));
        assert_eq!(hash_of("AIO-0000"), None);
        assert_eq!(hash_of(""), None);
        assert_ne!(new_code(), code);
    }
}
