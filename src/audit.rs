//! The audit log: every action that changes money or access (credit grants and adjustments, top-ups,
//! refunds, redeemed codes, account creation, key creation and revocation, key limits, webhook secret
//! rotation, console sign-in), with who did it ([`Actor`]), the request id, and the values before and
//! after.
//!
//! An entry is written **in the transaction of the change it records** ([`record_in`]), so the log
//! holds each committed change exactly once and nothing of a change that rolled back. Recording a new
//! kind of change is one line in the code that makes it:
//!
//! ```ignore
//! audit::record_in(&mut tx, &actor, Action::KeyLimits, Target::of(account_id, &key_id), Some(before), Some(after)).await?;
//! ```
//!
//! `before` and `after` hold balances, statuses, names, limits: never a key, secret, password hash or
//! token. An acting key is named by its id and its visible prefix only (looked up here).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::types::Json;

use crate::error::Error;
use crate::ledger;
use crate::store::{Db, Tx};
use crate::{monitoring, on_db, on_tx};

/// What was done. Stored and shown as its dotted name (`credits.grant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = AuditAction)]
pub enum Action {
    /// An account was created (admin API, CLI, or the first start's `default` account).
    #[serde(rename = "account.create")]
    AccountCreate,
    /// An operator added credits (admin API or CLI).
    #[serde(rename = "credits.grant")]
    CreditsGrant,
    /// An operator took credits back (admin API or CLI).
    #[serde(rename = "credits.adjust")]
    CreditsAdjust,
    /// A paid Stripe order granted its credits.
    #[serde(rename = "credits.top_up")]
    CreditsTopUp,
    /// A Stripe refund or dispute took credits back.
    #[serde(rename = "credits.refund")]
    CreditsRefund,
    /// A redemption code granted its credits.
    #[serde(rename = "credits.redeem")]
    CreditsRedeem,
    #[serde(rename = "key.create")]
    KeyCreate,
    #[serde(rename = "key.revoke")]
    KeyRevoke,
    /// A key's limits changed.
    #[serde(rename = "key.limits")]
    KeyLimits,
    /// An account's limits changed.
    #[serde(rename = "account.limits")]
    AccountLimits,
    #[serde(rename = "webhook_secret.rotate")]
    WebhookSecretRotate,
    /// A console session was started with an API key.
    #[serde(rename = "session.sign_in")]
    SessionSignIn,
}

impl Action {
    pub const ALL: [Action; 12] = [
        Action::AccountCreate,
        Action::CreditsGrant,
        Action::CreditsAdjust,
        Action::CreditsTopUp,
        Action::CreditsRefund,
        Action::CreditsRedeem,
        Action::KeyCreate,
        Action::KeyRevoke,
        Action::KeyLimits,
        Action::AccountLimits,
        Action::WebhookSecretRotate,
        Action::SessionSignIn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::AccountCreate => "account.create",
            Action::CreditsGrant => "credits.grant",
            Action::CreditsAdjust => "credits.adjust",
            Action::CreditsTopUp => "credits.top_up",
            Action::CreditsRefund => "credits.refund",
            Action::CreditsRedeem => "credits.redeem",
            Action::KeyCreate => "key.create",
            Action::KeyRevoke => "key.revoke",
            Action::KeyLimits => "key.limits",
            Action::AccountLimits => "account.limits",
            Action::WebhookSecretRotate => "webhook_secret.rotate",
            Action::SessionSignIn => "session.sign_in",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|action| action.as_str() == text)
    }
}

/// Who acted: its kind, as stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = AuditActorKind)]
pub enum ActorKind {
    /// An account acting on itself through a console or dashboard session (`id`: the account id).
    Account,
    /// An API key (`id`: the key id).
    Key,
    /// An admin session (`id`: the admin's account id).
    Admin,
    /// The command line, run by whoever has the database (no id).
    Cli,
    /// The gateway itself (`id`: what did it, e.g. `stripe`, `bootstrap`).
    System,
}

impl ActorKind {
    pub const ALL: [ActorKind; 5] =
        [ActorKind::Account, ActorKind::Key, ActorKind::Admin, ActorKind::Cli, ActorKind::System];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Account => "account",
            ActorKind::Key => "key",
            ActorKind::Admin => "admin",
            ActorKind::Cli => "cli",
            ActorKind::System => "system",
        }
    }

    pub fn parse(text: &str) -> Option<ActorKind> {
        ActorKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// Who made a change, and in which request: built by the HTTP layer (from the session or key and the
/// `X-Request-Id`), the CLI, or the gateway's own jobs, and handed to the domain code that records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: Option<String>,
    /// The key that acted, or that the acting session signed in with: its prefix is recorded.
    pub key_id: Option<String>,
    pub request_id: Option<String>,
}

impl Actor {
    fn new(kind: ActorKind, id: Option<String>, key_id: Option<&str>) -> Actor {
        Actor { kind, id, key_id: key_id.map(str::to_owned), request_id: None }
    }

    /// An account acting on itself through a session signed in with `key_id`.
    pub fn account(account_id: i64, key_id: Option<&str>) -> Actor {
        Actor::new(ActorKind::Account, Some(account_id.to_string()), key_id)
    }

    /// An admin session of `account_id`, signed in with `key_id`.
    pub fn admin(account_id: i64, key_id: Option<&str>) -> Actor {
        Actor::new(ActorKind::Admin, Some(account_id.to_string()), key_id)
    }

    pub fn key(key_id: &str) -> Actor {
        Actor::new(ActorKind::Key, Some(key_id.to_owned()), Some(key_id))
    }

    pub fn cli() -> Actor {
        Actor::new(ActorKind::Cli, None, None)
    }

    /// The gateway itself; `what` names the part (`stripe`, `bootstrap`).
    pub fn system(what: &str) -> Actor {
        Actor::new(ActorKind::System, Some(what.to_owned()), None)
    }

    pub fn in_request(mut self, request_id: Option<String>) -> Actor {
        self.request_id = request_id;
        self
    }
}

/// What was changed: an account, and the key, order or code batch of it when there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = AuditTarget)]
pub struct Target {
    pub account_id: Option<i64>,
    /// A key id, order id or redemption code batch id.
    pub id: Option<String>,
}

impl Target {
    pub fn account(account_id: i64) -> Target {
        Target { account_id: Some(account_id), id: None }
    }

    /// A key, order or code batch of `account_id`.
    pub fn of(account_id: i64, id: &str) -> Target {
        Target { account_id: Some(account_id), id: Some(id.to_owned()) }
    }
}

/// Records `action` by `actor` on `target`, in the transaction of the change.
pub async fn record_in(
    tx: &mut Tx,
    actor: &Actor,
    action: Action,
    target: Target,
    before: Option<Value>,
    after: Option<Value>,
) -> sqlx::Result<()> {
    const SQL: &str = "INSERT INTO audit_log
         (action, actor_kind, actor_id, actor_key_prefix, target_account_id, target_id, request_id, before, after)
         VALUES ($1, $2, $3, (SELECT prefix FROM api_keys WHERE id = $4), $5, $6, $7, $8, $9)";
    on_tx!(tx, conn => sqlx::query(SQL)
        .bind(action.as_str())
        .bind(actor.kind.as_str())
        .bind(actor.id.as_deref())
        .bind(actor.key_id.as_deref())
        .bind(target.account_id)
        .bind(target.id.as_deref())
        .bind(actor.request_id.as_deref())
        .bind(before.map(Json))
        .bind(after.map(Json))
        .execute(conn)
        .await
        .map(|done| done.rows_affected()))?;
    monitoring::audit_entry(action.as_str());
    Ok(())
}

/// [`record_in`] for an action that changes nothing else in the database (a sign-in).
pub async fn record(
    db: &Db,
    actor: &Actor,
    action: Action,
    target: Target,
    before: Option<Value>,
    after: Option<Value>,
) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    record_in(&mut tx, actor, action, target, before, after).await?;
    tx.commit().await
}

/// Records a change of credits from its ledger row: the balance before and after, the amount and
/// its reason.
pub async fn credits_in(
    tx: &mut Tx,
    actor: &Actor,
    action: Action,
    target: Target,
    entry: &ledger::Entry,
) -> sqlx::Result<()> {
    let before = json!({"balance": entry.balance_after - entry.amount});
    let after = json!({"balance": entry.balance_after, "amount": entry.amount, "reason": entry.reason});
    record_in(tx, actor, action, target, Some(before), Some(after)).await
}

/// One entry of the log, as `GET /api/v1/admin/audit` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = AuditEntry)]
pub struct Entry {
    pub id: i64,
    #[schema(value_type = Action)]
    pub action: String,
    pub actor: ActorView,
    pub target: Target,
    /// The `X-Request-Id` of the request that made the change (none for the CLI).
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The values the change replaced (`null` for a creation).
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

/// Who acted, as shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = AuditActor)]
pub struct ActorView {
    #[schema(value_type = ActorKind)]
    pub kind: String,
    /// The account id (`account`, `admin`), key id (`key`) or part of the gateway (`system`).
    pub id: Option<String>,
    /// The visible prefix of the acting key, or of the key the acting session signed in with.
    pub key_prefix: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    action: String,
    actor_kind: String,
    actor_id: Option<String>,
    actor_key_prefix: Option<String>,
    target_account_id: Option<i64>,
    target_id: Option<String>,
    request_id: Option<String>,
    before: Option<Json<Value>>,
    after: Option<Json<Value>>,
    created_at: DateTime<Utc>,
}

impl From<Row> for Entry {
    fn from(row: Row) -> Entry {
        Entry {
            id: row.id,
            action: row.action,
            actor: ActorView { kind: row.actor_kind, id: row.actor_id, key_prefix: row.actor_key_prefix },
            target: Target { account_id: row.target_account_id, id: row.target_id },
            request_id: row.request_id,
            created_at: row.created_at,
            before: row.before.map(|json| json.0),
            after: row.after.map(|json| json.0),
        }
    }
}

/// The filters of a page of the log; all optional. Times are `[since, until)`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub action: Option<Action>,
    pub account_id: Option<i64>,
    pub actor_kind: Option<ActorKind>,
    pub actor_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    /// Reads an `actor` filter: a kind (`admin`), or a kind and an id (`admin:1`, `key:key_…`).
    pub fn with_actor(mut self, text: &str) -> Result<Filter, Error> {
        let (kind, id) = match text.split_once(':') {
            Some((kind, id)) => (kind, Some(id)),
            None => (text, None),
        };
        let kinds = ActorKind::ALL.map(ActorKind::as_str).join(", ");
        self.actor_kind = Some(ActorKind::parse(kind).ok_or_else(|| {
            Error::Invalid(format!("`actor`: a kind ({kinds}), optionally followed by `:` and an id."))
        })?);
        self.actor_id = id.filter(|id| !id.is_empty()).map(str::to_owned);
        Ok(self)
    }
}

/// A page cursor is the id of the last entry of the previous page (see [`crate::paging`]).
pub fn cursor(text: &str) -> Option<i64> {
    text.parse::<i64>().ok().filter(|id| *id > 0)
}

/// Entries newest first, older than `before` (an entry id) when given.
pub async fn page(db: &Db, filter: &Filter, before: Option<i64>, limit: i64) -> sqlx::Result<Vec<Entry>> {
    // No casts on the optional parameters: sqlx tells PostgreSQL their types, SQLite needs none.
    const SQL: &str = "SELECT id, action, actor_kind, actor_id, actor_key_prefix, target_account_id, target_id,
                request_id, before, after, created_at
         FROM audit_log
         WHERE ($1 IS NULL OR action = $1) AND ($2 IS NULL OR target_account_id = $2)
           AND ($3 IS NULL OR actor_kind = $3) AND ($4 IS NULL OR actor_id = $4)
           AND ($5 IS NULL OR created_at >= $5) AND ($6 IS NULL OR created_at < $6)
           AND ($7 IS NULL OR id < $7)
         ORDER BY id DESC LIMIT $8";
    let rows: Vec<Row> = on_db!(db, pool => sqlx::query_as(SQL)
        .bind(filter.action.map(Action::as_str))
        .bind(filter.account_id)
        .bind(filter.actor_kind.map(ActorKind::as_str))
        .bind(filter.actor_id.as_deref())
        .bind(filter.since)
        .bind(filter.until)
        .bind(before)
        .bind(limit)
        .fetch_all(pool)
        .await)?;
    Ok(rows.into_iter().map(Entry::from).collect())
}

/// Deletes up to `limit` entries older than `age_secs`, oldest first (the retention purge). Returns
/// how many it deleted.
pub async fn purge(db: &Db, age_secs: f64, limit: usize) -> sqlx::Result<u64> {
    let sql = format!(
        "DELETE FROM audit_log WHERE id IN
           (SELECT id FROM audit_log WHERE created_at < {} ORDER BY id LIMIT $2)",
        db.dialect().now_plus_secs("$1")
    );
    on_db!(db, pool => sqlx::query(&sql)
        .bind(-age_secs)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
            assert_eq!(serde_json::to_value(action).ok(), Some(Value::from(action.as_str())));
        }
        for kind in ActorKind::ALL {
            assert_eq!(ActorKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).ok(), Some(Value::from(kind.as_str())));
        }
        assert_eq!(Action::parse("credits"), None);
    }

    #[test]
    fn actor_filters() {
        let filter = Filter::default().with_actor("admin:7").ok();
        assert_eq!(filter.as_ref().and_then(|f| f.actor_kind), Some(ActorKind::Admin));
        assert_eq!(filter.and_then(|f| f.actor_id), Some("7".to_owned()));
        let filter = Filter::default().with_actor("cli").ok();
        assert_eq!(filter.and_then(|f| f.actor_kind), Some(ActorKind::Cli));
        assert!(Filter::default().with_actor("root").is_err());
    }
}
