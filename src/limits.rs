//! Limits per key and per account (issue 20): the models a key or account may use, caps on the
//! credits its tasks commit per UTC calendar day and month, and the most tasks it may have unfinished.
//! `null` (`None`) is no limit.
//!
//! They are enforced in the create batch's transaction after it has locked the accounts' rows
//! ([`crate::tasks::batch`]), so one account's creates are decided one after another and no race
//! exceeds a cap.
//! What they count lives in `limit_usage`, one row per key and one per account (key `''`), updated in
//! the same transactions as the hold and the settlement: no sum over history. A day's (month's) spend
//! is the credits held by tasks created that UTC day (month), less what their settlements released:
//! a task created just before midnight counts on the day it was created.
//!
//! [`decide`] is pure: it decides one request against a [`LimitState`] and updates the state, so that
//! a batch of creates in one transaction can be decided one after the other.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::types::Json;

use crate::audit::{self, Action, Actor, Target};
use crate::error::Error;
use crate::store::{Db, Tx};
use crate::{on_db, on_tx};

/// The four limits of a key or an account; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Limits {
    /// Model or sub-model ids this key (account) may use; `null`: every model.
    #[schema(value_type = Option<Vec<String>>, example = json!(["seedream-4-5"]))]
    pub allowed_models: Option<Json<Vec<String>>>,
    /// The most unfinished tasks at once; `null`: no limit.
    pub max_in_flight: Option<i64>,
    /// Credits per UTC calendar day; `null`: no cap.
    pub daily_credit_cap: Option<i64>,
    /// Credits per UTC calendar month; `null`: no cap.
    pub monthly_credit_cap: Option<i64>,
}

impl Limits {
    fn is_empty(&self) -> bool {
        self == &Limits::default()
    }
}

/// What one key or account has used in the current periods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub day_credits: i64,
    pub month_credits: i64,
    pub in_flight: i64,
}

/// Whose limit: the key's or the account's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Key,
    Account,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Account => "account",
        }
    }
}

/// A spend cap's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// The limits and usage of one account and the key creating, as of `now`.
#[derive(Debug, Clone)]
pub struct LimitState {
    pub now: DateTime<Utc>,
    pub key: (Limits, Usage),
    pub account: (Limits, Usage),
}

/// Why a create is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403 `model_not_allowed`.
    ModelNotAllowed { scope: Scope, model: String },
    /// 429 `credit_cap_reached`.
    CapReached { scope: Scope, period: Period, cap: i64, used: i64, price: i64, resets_at: DateTime<Utc> },
    /// 429 `too_many_in_flight`.
    InFlight { scope: Scope, max: i64 },
    /// 429 `queue_full`: the account has `max` tasks `queued` (`tasks.max_queued_per_account`).
    QueueFull { max: i64 },
}

impl Refusal {
    /// Whose limit refused.
    pub fn scope(&self) -> Scope {
        match self {
            Refusal::ModelNotAllowed { scope, .. }
            | Refusal::CapReached { scope, .. }
            | Refusal::InFlight { scope, .. } => *scope,
            Refusal::QueueFull { .. } => Scope::Account,
        }
    }

    /// The error code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::ModelNotAllowed { .. } => "model_not_allowed",
            Refusal::CapReached { .. } => "credit_cap_reached",
            Refusal::InFlight { .. } => "too_many_in_flight",
            Refusal::QueueFull { .. } => "queue_full",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::ModelNotAllowed { scope, model } => {
                format!("This {} may not use {model}: it is not among its allowed_models.", scope.as_str())
            }
            Refusal::CapReached { scope, period, cap, used, price, resets_at } => format!(
                "The {}'s {} credit cap of {cap} is reached: {used} committed this {}, and this request costs {price}. \
                 It resets at {}.",
                scope.as_str(),
                match period {
                    Period::Day => "daily",
                    Period::Month => "monthly",
                },
                period.as_str(),
                crate::tasks::timestamp(*resets_at),
            ),
            Refusal::InFlight { scope, max } => format!(
                "The {} has {max} unfinished tasks, its max_in_flight; create more when one has ended.",
                scope.as_str()
            ),
            Refusal::QueueFull { max } => {
                format!("The account has {max} tasks queued, the most it may; create more when some have started.")
            }
        }
    }

    /// Seconds a client should wait before trying again (a cap: until it resets).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Refusal::ModelNotAllowed { .. } => None,
            Refusal::CapReached { resets_at, .. } => {
                Some(u64::try_from((*resets_at - Utc::now()).num_seconds()).unwrap_or(0).max(1))
            }
            Refusal::InFlight { .. } | Refusal::QueueFull { .. } => Some(1),
        }
    }

    /// The refusal's facts, for the error object: scope, and for a cap its amount, period and reset.
    pub fn details(&self) -> serde_json::Value {
        match self {
            Refusal::ModelNotAllowed { scope, model } => serde_json::json!({"scope": scope.as_str(), "model": model}),
            Refusal::CapReached { scope, period, cap, resets_at, .. } => serde_json::json!({
                "scope": scope.as_str(), "cap": cap, "period": period.as_str(),
                "resets_at": crate::tasks::timestamp(*resets_at),
            }),
            Refusal::InFlight { scope, max } => serde_json::json!({"scope": scope.as_str(), "max_in_flight": max}),
            Refusal::QueueFull { max } => serde_json::json!({"scope": "account", "max_queued": max}),
        }
    }
}

/// Decides one create of `price` credits for `model` (its model and sub-model ids): admitted (and the
/// state counts it) or refused (the state is unchanged). The key's limits are checked before the
/// account's.
pub fn decide(state: &mut LimitState, model: &str, sub_model: &str, price: i64) -> Result<(), Refusal> {
    for (scope, (limits, usage)) in [(Scope::Key, &state.key), (Scope::Account, &state.account)] {
        if let Some(allowed) = &limits.allowed_models {
            if !allowed.iter().any(|id| id == model || id == sub_model) {
                return Err(Refusal::ModelNotAllowed { scope, model: sub_model.to_owned() });
            }
        }
        if let Some(max) = limits.max_in_flight {
            if usage.in_flight >= max {
                return Err(Refusal::InFlight { scope, max });
            }
        }
        let caps = [
            (Period::Day, limits.daily_credit_cap, usage.day_credits),
            (Period::Month, limits.monthly_credit_cap, usage.month_credits),
        ];
        for (period, cap, used) in caps {
            if let Some(cap) = cap.filter(|cap| used.saturating_add(price) > *cap) {
                let resets_at = resets_at(state.now, period);
                return Err(Refusal::CapReached { scope, period, cap, used, price, resets_at });
            }
        }
    }
    for usage in [&mut state.key.1, &mut state.account.1] {
        usage.day_credits = usage.day_credits.saturating_add(price);
        usage.month_credits = usage.month_credits.saturating_add(price);
        usage.in_flight += 1;
    }
    Ok(())
}

/// How an admitted create goes on: at once, or `queued` because a `max_in_flight` is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Now,
    Queue,
}

/// [`decide`], except that a full `max_in_flight` queues the task instead of refusing it: its
/// credits still count against the caps (they are held), but it is not in flight until dispatched.
/// A `max_in_flight` of 0 still refuses (`too_many_in_flight`): such a task could never start.
pub fn admit(state: &mut LimitState, model: &str, sub_model: &str, price: i64) -> Result<Admit, Refusal> {
    match decide(state, model, sub_model, price) {
        Err(Refusal::InFlight { .. }) => {
            // A max of 0 stays: it refuses whatever is in flight.
            let mut unbounded = state.clone();
            unbounded.key.0.max_in_flight = unbounded.key.0.max_in_flight.filter(|max| *max == 0);
            unbounded.account.0.max_in_flight = unbounded.account.0.max_in_flight.filter(|max| *max == 0);
            decide(&mut unbounded, model, sub_model, price)?;
            state.key.1.day_credits = unbounded.key.1.day_credits;
            state.key.1.month_credits = unbounded.key.1.month_credits;
            state.account.1.day_credits = unbounded.account.1.day_credits;
            state.account.1.month_credits = unbounded.account.1.month_credits;
            Ok(Admit::Queue)
        }
        decided => decided.map(|()| Admit::Now),
    }
}

impl LimitState {
    /// Whether the key and the account both have room for one more task in flight.
    pub fn has_room(&self) -> bool {
        [&self.key, &self.account]
            .iter()
            .all(|(limits, usage)| limits.max_in_flight.is_none_or(|max| usage.in_flight < max))
    }
}

/// The start of the next UTC day or month after `now`.
pub fn resets_at(now: DateTime<Utc>, period: Period) -> DateTime<Utc> {
    let today = now.date_naive();
    let next = match period {
        Period::Day => today + Duration::days(1),
        Period::Month => {
            let (year, month) =
                if today.month() == 12 { (today.year() + 1, 1) } else { (today.year(), today.month() + 1) };
            NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(today)
        }
    };
    Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0).unwrap_or_default())
}

pub fn day_of(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

pub fn month_of(at: DateTime<Utc>) -> String {
    at.format("%Y-%m").to_string()
}

/// The account's key (`''` for the account as a whole) in `limit_usage`.
const ACCOUNT: &str = "";

/// One row of [`load_all`]'s read: an account's limits and its `queued` tasks (`source` = `account`),
/// a key's limits (`key`), or a usage row (`usage`).
#[derive(sqlx::FromRow)]
struct LoadRow {
    source: String,
    account_id: i64,
    #[sqlx(flatten)]
    limits: Limits,
    key_id: Option<String>,
    day: Option<String>,
    day_credits: Option<i64>,
    month: Option<String>,
    month_credits: Option<i64>,
    in_flight: Option<i64>,
    queued: Option<i64>,
}

/// What a batch of creates is decided against: per `(account, key)`, the limits and their usage in
/// the periods of `now` ([`LimitState`]); per account, its `queued` tasks.
#[derive(Debug, Default)]
pub struct Loaded {
    pub limits: HashMap<(i64, String), LimitState>,
    pub queued: HashMap<i64, i64>,
}

/// Loads the limits of the account and the key, and their usage in the periods of `now`, in the
/// caller's transaction (which holds the account's row): [`load_all`] for one key.
pub async fn load(tx: &mut Tx, account_id: i64, key_id: &str, now: DateTime<Utc>) -> sqlx::Result<LimitState> {
    let mut loaded = load_all(tx, &[account_id], &[(account_id, key_id)], now).await?;
    Ok(loaded.limits.remove(&(account_id, key_id.to_owned())).unwrap_or_else(|| LimitState {
        now,
        key: Default::default(),
        account: Default::default(),
    }))
}

/// [`Loaded`] for `accounts` and the `(account, key)` pairs creating, in the caller's transaction
/// (which holds the accounts' rows, so no other create of theirs changes what it read): one
/// statement, however many accounts and keys.
pub async fn load_all(tx: &mut Tx, accounts: &[i64], keys: &[(i64, &str)], now: DateTime<Utc>) -> sqlx::Result<Loaded> {
    let d = tx.dialect();
    let account_rows = d.json_rows("$1", &[("id", "bigint")], accounts.len());
    let key_rows = d.json_rows("$2", &[("account_id", "bigint"), ("key_id", "text")], keys.len());
    let sql = format!(
        "SELECT 'account' AS source, a.id AS account_id, a.allowed_models, a.max_in_flight, a.daily_credit_cap,
                a.monthly_credit_cap, CAST(NULL AS TEXT) AS key_id, CAST(NULL AS TEXT) AS day,
                CAST(NULL AS BIGINT) AS day_credits, CAST(NULL AS TEXT) AS month, CAST(NULL AS BIGINT) AS month_credits,
                CAST(NULL AS BIGINT) AS in_flight,
                (SELECT count(*) FROM tasks t WHERE t.account_id = a.id AND t.status = 'queued') AS queued
         FROM accounts a WHERE a.id IN (SELECT r.id FROM {account_rows})
         UNION ALL
         SELECT 'key', k.account_id, k.allowed_models, k.max_in_flight, k.daily_credit_cap, k.monthly_credit_cap, k.id,
                NULL, NULL, NULL, NULL, NULL, NULL
         FROM api_keys k WHERE (k.account_id, k.id) IN (SELECT r.account_id, r.key_id FROM {key_rows})
         UNION ALL
         SELECT 'usage', u.account_id, NULL, NULL, NULL, NULL, u.key_id, u.day, u.day_credits, u.month, u.month_credits,
                u.in_flight, NULL
         FROM limit_usage u
         WHERE (u.key_id = '' AND u.account_id IN (SELECT r.id FROM {account_rows}))
            OR (u.account_id, u.key_id) IN (SELECT r.account_id, r.key_id FROM {key_rows})"
    );
    let account_json: Vec<serde_json::Value> = accounts.iter().map(|id| json!({ "id": id })).collect();
    let key_json: Vec<serde_json::Value> =
        keys.iter().map(|(account_id, key_id)| json!({ "account_id": account_id, "key_id": key_id })).collect();
    let rows: Vec<LoadRow> = on_tx!(tx, conn => sqlx::query_as(&sql)
        .bind(Json(&account_json))
        .bind(Json(&key_json))
        .fetch_all(conn)
        .await)?;
    let (day, month) = (day_of(now), month_of(now));
    // Each row once by (source, account, key): a batch of many keys looks each up, not each scan.
    let found: HashMap<(&str, i64, Option<&str>), &LoadRow> =
        rows.iter().map(|row| ((row.source.as_str(), row.account_id, row.key_id.as_deref()), row)).collect();
    let usage = |account_id: i64, id: &str| {
        found.get(&("usage", account_id, Some(id))).map_or(Usage::default(), |row| Usage {
            day_credits: if row.day.as_deref() == Some(day.as_str()) { row.day_credits.unwrap_or(0) } else { 0 },
            month_credits: if row.month.as_deref() == Some(month.as_str()) {
                row.month_credits.unwrap_or(0)
            } else {
                0
            },
            in_flight: row.in_flight.unwrap_or(0),
        })
    };
    let limits = |source: &str, account_id: i64, key_id: Option<&str>| {
        found.get(&(source, account_id, key_id)).map(|row| row.limits.clone()).unwrap_or_default()
    };
    let mut loaded = Loaded::default();
    for row in found.values().filter(|row| row.source == "account") {
        loaded.queued.insert(row.account_id, row.queued.unwrap_or(0));
    }
    for &(account_id, key_id) in keys {
        let state = LimitState {
            now,
            key: (limits("key", account_id, Some(key_id)), usage(account_id, key_id)),
            account: (limits("account", account_id, None), usage(account_id, ACCOUNT)),
        };
        loaded.limits.insert((account_id, key_id.to_owned()), state);
    }
    Ok(loaded)
}

impl LimitState {
    /// Whether no limit applies (then [`decide`] admits everything).
    pub fn is_unlimited(&self) -> bool {
        self.key.0.is_empty() && self.account.0.is_empty()
    }
}

/// A queued task of the key was dispatched: one more in flight.
pub async fn record_dispatch(tx: &mut Tx, account_id: i64, key_id: &str) -> sqlx::Result<()> {
    on_tx!(tx, conn => sqlx::query(
        "UPDATE limit_usage SET in_flight = in_flight + 1 WHERE account_id = $1 AND key_id IN ($2, '')",
    )
    .bind(account_id)
    .bind(key_id)
    .execute(conn)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(())
}

/// Counts admitted creates at `now`, each `(account_id, key_id, price, in_flight)` (`in_flight`: it
/// starts now, not `queued`): one statement that adds to every counter row concerned (each key's and
/// each account's) its credits and the number of its creates in flight.
pub async fn record_creates(tx: &mut Tx, creates: &[(i64, &str, i64, bool)], now: DateTime<Utc>) -> sqlx::Result<()> {
    // In (account, key) order: concurrent transactions update the rows in one order.
    let mut counters: BTreeMap<(i64, &str), (i64, i64)> = BTreeMap::new();
    for &(account_id, key_id, price, in_flight) in creates {
        for id in [key_id, ACCOUNT] {
            let row = counters.entry((account_id, id)).or_default();
            *row = (row.0.saturating_add(price), row.1 + i64::from(in_flight));
        }
    }
    if counters.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = counters
        .iter()
        .map(|((account_id, key_id), (credits, count))| {
            json!({"account_id": account_id, "key_id": key_id, "credits": credits, "in_flight": count})
        })
        .collect();
    let columns = [("account_id", "bigint"), ("key_id", "text"), ("credits", "bigint"), ("in_flight", "bigint")];
    // `WHERE true`: SQLite reads `ON CONFLICT` after a bare `FROM` as part of the join.
    let sql = format!(
        "INSERT INTO limit_usage (account_id, key_id, day, day_credits, month, month_credits, in_flight)
         SELECT r.account_id, r.key_id, $2, r.credits, $3, r.credits, r.in_flight FROM {rows} WHERE true
         ON CONFLICT (account_id, key_id) DO UPDATE SET
             day_credits = CASE WHEN limit_usage.day = EXCLUDED.day
                                THEN limit_usage.day_credits + EXCLUDED.day_credits ELSE EXCLUDED.day_credits END,
             day = EXCLUDED.day,
             month_credits = CASE WHEN limit_usage.month = EXCLUDED.month
                                  THEN limit_usage.month_credits + EXCLUDED.month_credits ELSE EXCLUDED.month_credits END,
             month = EXCLUDED.month,
             in_flight = limit_usage.in_flight + EXCLUDED.in_flight",
        rows = tx.dialect().json_rows("$1", &columns, rows.len()),
    );
    on_tx!(tx, conn => sqlx::query(&sql)
        .bind(Json(&rows))
        .bind(day_of(now))
        .bind(month_of(now))
        .execute(conn)
        .await
        .map(|done| done.rows_affected()))?;
    Ok(())
}

/// Tasks of the key, created in the day and month of `created_at`, ended: `in_flight` fewer in flight
/// (those not still `queued`), and what their settlements released (`released`) no longer counts
/// against the periods they were created in.
pub async fn record_settle(
    tx: &mut Tx,
    account_id: i64,
    key_id: &str,
    created_at: DateTime<Utc>,
    released: i64,
    in_flight: i64,
) -> sqlx::Result<()> {
    const SQL: &str = "UPDATE limit_usage SET
             day_credits = CASE WHEN day <> $3 THEN day_credits WHEN day_credits > $4 THEN day_credits - $4 ELSE 0 END,
             month_credits = CASE WHEN month <> $5 THEN month_credits WHEN month_credits > $4 THEN month_credits - $4 ELSE 0 END,
             in_flight = CASE WHEN in_flight > $6 THEN in_flight - $6 ELSE 0 END
         WHERE account_id = $1 AND key_id IN ($2, '')";
    on_tx!(tx, conn => sqlx::query(SQL)
        .bind(account_id)
        .bind(key_id)
        .bind(day_of(created_at))
        .bind(released)
        .bind(month_of(created_at))
        .bind(in_flight)
        .execute(conn)
        .await
        .map(|done| done.rows_affected()))?;
    Ok(())
}

/// The largest cap or in-flight limit accepted.
pub const MAX_LIMIT: i64 = 1_000_000_000_000;
/// The most model ids in `allowed_models`.
pub const MAX_ALLOWED_MODELS: usize = 100;

/// A change of limits: each field given replaces the current one (`null` clears it); absent fields
/// stay as they are.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub max_in_flight: Option<Option<i64>>,
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub daily_credit_cap: Option<Option<i64>>,
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub monthly_credit_cap: Option<Option<i64>>,
}

/// A present field, `null` or not, is `Some`.
fn some<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

impl LimitsPatch {
    /// `current` with this change, checked: numbers 0 to [`MAX_LIMIT`], model ids known to `known`.
    pub fn apply(self, current: Limits, known: impl Fn(&str) -> bool) -> Result<Limits, Error> {
        let number = |name: &str, value: Option<i64>| match value {
            Some(n) if !(0..=MAX_LIMIT).contains(&n) => {
                Err(Error::Invalid(format!("`{name}`: 0 to {MAX_LIMIT}, or null for no limit.")))
            }
            other => Ok(other),
        };
        let mut limits = current;
        if let Some(models) = self.allowed_models {
            if let Some(models) = &models {
                if models.len() > MAX_ALLOWED_MODELS {
                    return Err(Error::Invalid(format!("`allowed_models`: at most {MAX_ALLOWED_MODELS} ids.")));
                }
                if let Some(unknown) = models.iter().find(|id| !known(id)) {
                    return Err(Error::Invalid(format!(
                        "`allowed_models`: unknown model `{unknown}`. GET /api/v1/models lists the models."
                    )));
                }
            }
            limits.allowed_models = models.map(Json);
        }
        if let Some(value) = self.max_in_flight {
            limits.max_in_flight = number("max_in_flight", value)?;
        }
        if let Some(value) = self.daily_credit_cap {
            limits.daily_credit_cap = number("daily_credit_cap", value)?;
        }
        if let Some(value) = self.monthly_credit_cap {
            limits.monthly_credit_cap = number("monthly_credit_cap", value)?;
        }
        Ok(limits)
    }
}

/// The limits of a key of `account_id` (`None`: no such key).
pub async fn of_key(db: &Db, account_id: Option<i64>, key_id: &str) -> sqlx::Result<Option<Limits>> {
    on_db!(db, pool => sqlx::query_as(
        "SELECT allowed_models, max_in_flight, daily_credit_cap, monthly_credit_cap FROM api_keys
         WHERE id = $1 AND ($2 IS NULL OR account_id = $2)",
    )
    .bind(key_id)
    .bind(account_id)
    .fetch_optional(pool)
    .await)
}

/// The limits of an account (`None`: no such account).
pub async fn of_account(db: &Db, account_id: i64) -> sqlx::Result<Option<Limits>> {
    on_db!(db, pool => sqlx::query_as(
        "SELECT allowed_models, max_in_flight, daily_credit_cap, monthly_credit_cap FROM accounts WHERE id = $1",
    )
    .bind(account_id)
    .fetch_optional(pool)
    .await)
}

/// Stores a key's limits (of `account_id` when given) and records the change, from `before`, in the
/// audit log in the same transaction. `false`: no such key (nothing written).
pub async fn set_key(
    db: &Db,
    actor: &Actor,
    account_id: Option<i64>,
    key_id: &str,
    before: &Limits,
    limits: &Limits,
) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let owner: Option<(i64,)> = on_tx!(&mut tx, conn => sqlx::query_as(
        "UPDATE api_keys SET allowed_models = $3, max_in_flight = $4, daily_credit_cap = $5, monthly_credit_cap = $6
         WHERE id = $1 AND ($2 IS NULL OR account_id = $2) RETURNING account_id",
    )
    .bind(key_id)
    .bind(account_id)
    .bind(&limits.allowed_models)
    .bind(limits.max_in_flight)
    .bind(limits.daily_credit_cap)
    .bind(limits.monthly_credit_cap)
    .fetch_optional(conn)
    .await)?;
    let Some((owner,)) = owner else {
        return Ok(false);
    };
    let target = Target::of(owner, key_id);
    audit::record_in(&mut tx, actor, Action::KeyLimits, target, Some(json!(before)), Some(json!(limits))).await?;
    tx.commit().await?;
    Ok(true)
}

/// Stores an account's limits and records the change, from `before`, in the audit log in the same
/// transaction. `false`: no such account (nothing written).
pub async fn set_account(
    db: &Db,
    actor: &Actor,
    account_id: i64,
    before: &Limits,
    limits: &Limits,
) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let done = on_tx!(&mut tx, conn => sqlx::query(
        "UPDATE accounts SET allowed_models = $2, max_in_flight = $3, daily_credit_cap = $4, monthly_credit_cap = $5
         WHERE id = $1",
    )
    .bind(account_id)
    .bind(&limits.allowed_models)
    .bind(limits.max_in_flight)
    .bind(limits.daily_credit_cap)
    .bind(limits.monthly_credit_cap)
    .execute(conn)
    .await
    .map(|done| done.rows_affected()))?;
    if done != 1 {
        return Ok(false);
    }
    let target = Target::account(account_id);
    audit::record_in(&mut tx, actor, Action::AccountLimits, target, Some(json!(before)), Some(json!(limits))).await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(key: Limits, account: Limits) -> LimitState {
        let now = Utc.with_ymd_and_hms(2026, 12, 31, 23, 0, 0).single().expect("a time");
        LimitState { now, key: (key, Usage::default()), account: (account, Usage::default()) }
    }

    #[test]
    fn caps_count_what_was_admitted_and_refuse_beyond() {
        let mut state = state(
            Limits { daily_credit_cap: Some(25), ..Limits::default() },
            Limits { max_in_flight: Some(3), ..Limits::default() },
        );
        assert_eq!(decide(&mut state, "m", "m/t", 12), Ok(()));
        assert_eq!(decide(&mut state, "m", "m/t", 12), Ok(()));
        let refused = decide(&mut state, "m", "m/t", 12);
        let Err(Refusal::CapReached { scope, period, cap, used, resets_at, .. }) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!((scope, period, cap, used), (Scope::Key, Period::Day, 25, 24));
        assert_eq!(resets_at, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).single().expect("a time"));
        assert_eq!(state.key.1.day_credits, 24, "a refusal counts nothing");
        assert_eq!(decide(&mut state, "m", "m/t", 1), Ok(()));
        assert_eq!(decide(&mut state, "m", "m/t", 0), Err(Refusal::InFlight { scope: Scope::Account, max: 3 }));
        // Queued instead: counted against the caps, not in flight; a max of 0 still refuses.
        assert_eq!(admit(&mut state, "m", "m/t", 0), Ok(Admit::Queue));
        assert_eq!((state.key.1.day_credits, state.account.1.in_flight), (25, 3));
        state.key.0.max_in_flight = Some(0);
        assert_eq!(admit(&mut state, "m", "m/t", 0), Err(Refusal::InFlight { scope: Scope::Key, max: 0 }));
    }

    #[test]
    fn allowed_models_name_models_or_sub_models() {
        let only = |ids: &[&str]| Limits {
            allowed_models: Some(Json(ids.iter().map(|s| s.to_string()).collect())),
            ..Limits::default()
        };
        let mut state = state(only(&["m"]), only(&["m/t", "n"]));
        assert_eq!(decide(&mut state, "m", "m/t", 1), Ok(()));
        assert_eq!(
            decide(&mut state, "m", "m/edit", 1),
            Err(Refusal::ModelNotAllowed { scope: Scope::Account, model: "m/edit".into() })
        );
        assert_eq!(
            decide(&mut state, "n", "n/t", 1),
            Err(Refusal::ModelNotAllowed { scope: Scope::Key, model: "n/t".into() })
        );
        assert_eq!(
            resets_at(Utc.with_ymd_and_hms(2026, 11, 30, 2, 0, 0).single().expect("a time"), Period::Month),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).single().expect("a time")
        );
    }
}
