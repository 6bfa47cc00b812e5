//! Group commit of creates. A create is one request of a batch that commits in one transaction:
//!
//! 1. the rows of the batch's accounts are locked once each, in id order (two batches never wait on
//!    each other in a circle), and their balances loaded into memory ([`AccountState`]);
//! 2. idempotency keys already in use are read (race-free: every writer of an account's keys holds
//!    the account's row first);
//! 3. the limits and usage of every (account, key) of the batch, and each account's queued tasks, are
//!    loaded once, in one statement ([`limits::load_all`]), in the same transaction, so no other
//!    create of those accounts can change them meanwhile;
//! 4. each request is decided **in order** against that in-memory state by [`decide`], a pure function:
//!    its balance, then its key's and account's limits ([`limits::decide`]), so a request sees the
//!    spend and the unfinished tasks of the batch's earlier ones. One that does not fit gets its own
//!    `Insufficient` or `Refused`, the others are unaffected; a key used twice in the batch goes to
//!    its first use, the later ones replay it after the commit;
//! 5. the tasks, their keys and their ledger holds are written with one multi-row statement each, the
//!    accounts with one update (each by the sum of its holds), the limit counters with one statement
//!    per (account, key) counter row ([`limits::record_creates`]); then the commit.
//!
//! Nobody is answered before the commit, so a client's 200 always names a stored task. The
//! [`Batcher`] feeds batches: creates queue in a bounded channel; a committer takes the first one at
//! once (no added wait when idle) and with it whatever queued while the previous batch committed, up
//! to `tasks.create_batch_max`. A batch that fails (a constraint, text the database refuses) is
//! retried one request at a time, so only the request at fault fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::types::Json;

use super::group::{Group, GroupSettings};
use super::{admission, get, CallbackEvent, Created, NewTask, Task, TaskInput, TaskStatus, COLUMNS};
use crate::config::SubmitWindow;
use crate::error::Error;
use crate::idempotency::{self, Use};
use crate::ledger::{self, BatchHold};
use crate::limits::{self, Admit, LimitState, Limits, Refusal, Usage};
use crate::on_tx;
use crate::pricing::PriceStep;
use crate::store::{Db, Tx};

/// An account as a batch decides on it: loaded once per batch, right after its row is locked, and
/// changed in memory by each request the batch takes.
#[derive(Debug, Clone)]
pub struct AccountState {
    pub balance: i64,
    /// When the batch decides: the day and month its limit caps count in.
    pub now: DateTime<Utc>,
    /// The account's limits and usage; loaded with the first key of the batch's requests.
    pub limits: Option<(Limits, Usage)>,
    /// The limits and usage of each key creating in the batch.
    pub keys: HashMap<String, (Limits, Usage)>,
    /// The account's `queued` tasks: stored, and queued by the batch's earlier requests.
    pub queued: i64,
}

impl AccountState {
    pub fn new(balance: i64, now: DateTime<Utc>) -> AccountState {
        AccountState { balance, now, limits: None, keys: HashMap::new(), queued: 0 }
    }

    /// Adds what [`limits::load_all`] read for one key of the account.
    pub fn add_limits(&mut self, state: LimitState, key_id: &str) {
        self.limits.get_or_insert(state.account);
        self.keys.insert(key_id.to_owned(), state.key);
    }

    /// [`limits::admit`] for the request's key: the state it would leave (`None`: no limits to check;
    /// the batch loads every key it names), not yet applied.
    fn admit(&self, new: &NewTask) -> Result<(Admit, Option<LimitState>), Refusal> {
        let Some(key_id) = &new.key_id else { return Ok((Admit::Now, None)) };
        let (Some(account), Some(key)) = (&self.limits, self.keys.get(key_id)) else {
            return Ok((Admit::Now, None));
        };
        let mut state = LimitState { now: self.now, key: key.clone(), account: account.clone() };
        let admit = limits::admit(&mut state, &new.model, &new.sub_model, new.price)?;
        Ok((admit, Some(state)))
    }
}

/// A provider's submit window (`providers.<id>.max_submits`) as a batch decides on it: loaded once per
/// batch (its lock then held until the commit) and changed in memory by each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// Slots left: each request admitted at once takes one.
    pub free: i64,
    /// Tasks for the provider wait `queued` (stored, or queued by the batch's earlier requests).
    pub queued: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Hold {
        balance_after: i64,
        /// The task waits `queued` (admission queue) instead of starting now.
        queued: bool,
    },
    Insufficient {
        available: i64,
    },
    /// A limit of the key or its account refused it.
    Refused(Refusal),
}

/// Whether the account takes `new`, after the batch's earlier requests took theirs: its balance first,
/// then its key's and account's limits ([`limits::admit`]), then the admission queue: the task is
/// `queued` when a `max_in_flight` is full, when the account has queued tasks (first in, first out),
/// or when its provider has a submit window (`window`) that is full or has queued tasks; else it takes
/// a slot of the window. A task that would queue beyond `max_queued` is refused (`queue_full`).
/// Pure: no SQL; the batch writes what the decisions say. A refusal changes nothing.
pub fn decide(account: &mut AccountState, window: Option<&mut WindowState>, new: &NewTask) -> Decision {
    if account.balance < new.price {
        return Decision::Insufficient { available: account.balance };
    }
    let (admit, state) = match account.admit(new) {
        Ok(admitted) => admitted,
        Err(refusal) => return Decision::Refused(refusal),
    };
    // The one branch point of the admission queue: queue instead of refusing (or starting now).
    let queued = admit == Admit::Queue
        || account.queued > 0
        || window.as_ref().is_some_and(|window| window.queued || window.free <= 0);
    if queued && account.queued >= new.max_queued {
        return Decision::Refused(Refusal::QueueFull { max: new.max_queued });
    }
    if let (Some(mut state), Some(key_id)) = (state, &new.key_id) {
        if queued && admit == Admit::Now {
            // Admitted at once by the limits but queued behind others: not in flight until dispatched.
            state.key.1.in_flight -= 1;
            state.account.1.in_flight -= 1;
        }
        account.limits = Some(state.account);
        account.keys.insert(key_id.clone(), state.key);
    }
    match (queued, window) {
        (true, window) => {
            account.queued += 1;
            if let Some(window) = window {
                window.queued = true;
            }
        }
        (false, Some(window)) => window.free -= 1,
        (false, None) => {}
    }
    account.balance -= new.price;
    Decision::Hold { balance_after: account.balance, queued }
}

/// Commits `batch` in one transaction (see the module). One answer per request, in order: `None` when
/// its idempotency key is in use (nothing written for it; the caller replays the key).
pub async fn commit(db: &Db, batch: &[&NewTask]) -> sqlx::Result<Vec<Option<Created>>> {
    let mut tx = db.begin().await?;
    let mut account_ids: Vec<i64> = batch.iter().map(|new| new.account_id).collect();
    account_ids.sort_unstable();
    account_ids.dedup();
    let now = Utc::now();
    let mut accounts: HashMap<i64, AccountState> = ledger::lock_balances(&mut tx, &account_ids)
        .await?
        .into_iter()
        .map(|(id, balance)| (id, AccountState::new(balance, now)))
        .collect();
    let mut keys: Vec<(i64, &str)> =
        batch.iter().filter_map(|new| Some((new.account_id, new.key_id.as_deref()?))).collect();
    keys.sort_unstable();
    keys.dedup();
    let loaded = limits::load_all(&mut tx, &account_ids, &keys, now).await?;
    for ((account_id, key_id), state) in loaded.limits {
        if let Some(account) = accounts.get_mut(&account_id) {
            account.add_limits(state, &key_id);
        }
    }
    for (account_id, account) in &mut accounts {
        account.queued = loaded.queued.get(account_id).copied().unwrap_or(0);
    }
    // The windows in provider order: concurrent batches lock them in one order.
    let named: BTreeMap<&str, SubmitWindow> =
        batch.iter().filter_map(|new| Some((new.provider.as_str(), new.window?))).collect();
    let mut windows: HashMap<&str, WindowState> = HashMap::new();
    for (provider, window) in named {
        let free = admission::free_slots(&mut tx, provider, window).await?;
        windows.insert(provider, WindowState { free, queued: admission::provider_queued(&mut tx, provider).await? });
    }
    let uses: Vec<Use> = batch.iter().filter_map(|new| key_use(new)).collect();
    let mut keys: HashSet<(i64, String)> =
        if uses.is_empty() { HashSet::new() } else { idempotency::taken(&mut tx, &uses).await?.into_iter().collect() };
    let decisions: Vec<Option<Decision>> = batch
        .iter()
        .map(|new| {
            if let Some(key) = &new.idempotency {
                if !keys.insert((new.account_id, key.key.clone())) {
                    return None;
                }
            }
            let window = new.window.and_then(|_| windows.get_mut(new.provider.as_str()));
            Some(match accounts.get_mut(&new.account_id) {
                Some(account) => decide(account, window, new),
                None => Decision::Insufficient { available: 0 },
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut holds = Vec::new();
    let mut counted = Vec::new();
    let mut slots = Vec::new();
    for (new, decision) in batch.iter().zip(&decisions) {
        if let Some(Decision::Hold { balance_after, queued }) = decision {
            held.push((*new, *queued));
            if let Some(key_id) = &new.key_id {
                counted.push((new.account_id, key_id.as_str(), new.price, !queued));
            }
            if new.window.is_some() && !queued {
                slots.push(*new);
            }
            holds.push(BatchHold {
                account_id: new.account_id,
                task_id: &new.id,
                price: new.price,
                balance_after: *balance_after,
            });
        }
    }
    let mut tasks: HashMap<String, Task> = HashMap::new();
    if !held.is_empty() {
        tasks = insert(&mut tx, &held).await?.into_iter().map(|task| (task.id.clone(), task)).collect();
        let claims: Vec<Use> = held.iter().filter_map(|(new, _)| key_use(new)).collect();
        if tasks.len() != held.len()
            || (!claims.is_empty() && idempotency::claim(&mut tx, &claims).await? != claims.len() as u64)
        {
            return Err(sqlx::Error::Protocol("a create of the batch was not stored as decided".into()));
        }
        ledger::hold_all(&mut tx, &holds).await?;
        limits::record_creates(&mut tx, &counted, now).await?;
        for new in slots {
            admission::reserve_slot(&mut tx, &new.provider, &new.id, false).await?;
        }
    }
    tx.commit().await?;
    Ok(batch
        .iter()
        .zip(decisions)
        .map(|(new, decision)| match decision? {
            Decision::Hold { .. } => tasks.remove(&new.id).map(|task| Created::Task(Box::new(task))),
            Decision::Insufficient { available } => Some(Created::Insufficient { available }),
            Decision::Refused(refusal) => Some(Created::Refused(refusal)),
        })
        .collect())
}

fn key_use(new: &NewTask) -> Option<Use<'_>> {
    new.idempotency.as_ref().map(|key| Use::new(new.account_id, key, &new.id))
}

/// A task as the batch's insert reads it.
#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    account_id: i64,
    model: &'a str,
    sub_model: &'a str,
    input: &'a TaskInput,
    price: i64,
    price_breakdown: Option<&'a [PriceStep]>,
    key_id: Option<&'a str>,
    callback_url: Option<&'a str>,
    provider: &'a str,
    upstream_model: &'a str,
    provider_label: &'a str,
    simulated: bool,
    deadline_secs: f64,
    lease_secs: f64,
    callback_events: Option<&'a [CallbackEvent]>,
    status: TaskStatus,
    leased_by: Option<&'a str>,
    token_hash: Option<String>,
}

const ROW_COLUMNS: &[(&str, &str)] = &[
    ("id", "text"),
    ("account_id", "bigint"),
    ("model", "text"),
    ("sub_model", "text"),
    ("input", "jsonb"),
    ("price", "bigint"),
    ("price_breakdown", "jsonb"),
    ("key_id", "text"),
    ("callback_url", "text"),
    ("provider", "text"),
    ("upstream_model", "text"),
    ("provider_label", "text"),
    ("simulated", "boolean"),
    ("deadline_secs", "float8"),
    ("lease_secs", "float8"),
    ("callback_events", "jsonb"),
    ("status", "text"),
    ("leased_by", "text"),
    ("token_hash", "text"),
];

/// The tasks in one statement: `pending`, each born claimed by its creator when it has a lease, or
/// `queued` (unleased, with no callback token: its dispatch makes one).
async fn insert(tx: &mut Tx, batch: &[(&NewTask, bool)]) -> sqlx::Result<Vec<Task>> {
    let rows: Vec<Row> = batch
        .iter()
        .map(|&(new, queued)| Row {
            id: &new.id,
            account_id: new.account_id,
            model: &new.model,
            sub_model: &new.sub_model,
            input: &new.input,
            price: new.price,
            price_breakdown: new.breakdown.as_deref(),
            key_id: new.key_id.as_deref(),
            callback_url: new.callback_url.as_deref(),
            provider: &new.provider,
            upstream_model: &new.upstream_model,
            provider_label: &new.provider_label,
            simulated: new.simulated,
            deadline_secs: new.deadline.as_secs_f64(),
            lease_secs: new.lease.unwrap_or_default().as_secs_f64(),
            callback_events: new.callback_events.as_deref(),
            status: if queued { TaskStatus::Queued } else { TaskStatus::Pending },
            leased_by: new.lease.filter(|_| !queued).map(|_| new.owner.as_str()),
            token_hash: new
                .callback_token
                .as_ref()
                .filter(|_| !queued)
                .map(|token| hex::encode(Sha256::digest(token.as_bytes()))),
        })
        .collect();
    let d = tx.dialect();
    let sql = format!(
        "INSERT INTO tasks (id, account_id, model, sub_model, status, input, price, callback_url, provider,
                            upstream_model, provider_label, simulated, deadline_at, next_poll_at, callback_events,
                            leased_by, callback_token_hash, price_breakdown, key_id)
         SELECT r.id, r.account_id, r.model, r.sub_model, r.status, r.input, r.price, r.callback_url, r.provider,
                r.upstream_model, r.provider_label, r.simulated, {deadline}, {lease}, r.callback_events,
                r.leased_by, {token}, r.price_breakdown, r.key_id
         FROM {rows}
         RETURNING {COLUMNS}",
        deadline = d.now_plus_secs("r.deadline_secs"),
        lease = d.now_plus_secs("r.lease_secs"),
        token = d.unhex("r.token_hash"),
        rows = d.json_rows("$1", ROW_COLUMNS, rows.len()),
    );
    on_tx!(tx, conn => sqlx::query_as(&sql).bind(Json(&rows)).fetch_all(conn).await)
}

/// A create through `attempt` (one commit of it, alone or in a batch). An idempotency key in use
/// answers its first task (same request) or a conflict; a key that expires or frees up meanwhile (its
/// first request did not fit the balance) is simply tried again.
pub(super) async fn create_with<E, F, Fut>(db: &Db, new: &NewTask, mut attempt: F) -> Result<Created, E>
where
    E: From<sqlx::Error>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<Created>, E>>,
{
    for _ in 0..3 {
        if let Some(created) = attempt().await? {
            return Ok(created);
        }
        let Some(key) = &new.idempotency else { break };
        if let Some((hash, task_id)) = idempotency::find(db, new.account_id, &key.key).await? {
            if hash != key.request_hash {
                return Ok(Created::Conflict);
            }
            if let Some(task) = get(db, new.account_id, &task_id).await? {
                return Ok(Created::Replayed(Box::new(task)));
            }
        }
    }
    Err(sqlx::Error::Protocol("idempotency key kept changing hands".into()).into())
}

/// The create queue and its committers ([`group`]): a full queue refuses a create with `Overloaded`.
pub struct Batcher {
    db: Db,
    group: Group<NewTask, Option<Created>>,
}

impl Batcher {
    /// Starts the committers on the current runtime (always one on SQLite, which has one writer);
    /// they stop when the batcher is dropped.
    pub fn start(db: Db, settings: GroupSettings) -> Batcher {
        let committing = db.clone();
        let group = Group::start(
            settings.for_db(&db),
            Arc::new(move |batch: Vec<Arc<NewTask>>| {
                let db = committing.clone();
                Box::pin(async move {
                    let batch: Vec<&NewTask> = batch.iter().map(|new| &**new).collect();
                    commit(&db, &batch).await
                })
            }),
        );
        Batcher { db, group }
    }

    /// [`super::create`] through the batches: a full queue is `Overloaded`.
    pub async fn create(&self, new: NewTask) -> Result<Created, Error> {
        let new = Arc::new(new);
        // No task event for a new task: nobody can wait on a task before its create answered.
        create_with(&self.db, &new, || self.group.submit(new.account_id as u64, Arc::clone(&new))).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn costing(price: i64) -> NewTask {
        NewTask {
            id: "task_x".into(),
            account_id: 1,
            model: "m".into(),
            sub_model: "m/s".into(),
            input: TaskInput { prompt: "p".into(), aspect_ratio: None, quality: None, image_urls: vec![], n: None },
            price,
            breakdown: None,
            key_id: None,
            callback_url: None,
            callback_events: None,
            provider: "simulated".into(),
            upstream_model: "u".into(),
            provider_label: "Simulated".into(),
            simulated: true,
            deadline: Duration::from_secs(60),
            lease: None,
            owner: "inst".into(),
            idempotency: None,
            callback_token: None,
            window: None,
            max_queued: 1000,
        }
    }

    #[test]
    fn requests_are_decided_in_order_against_what_the_earlier_ones_took() {
        let mut account = AccountState::new(30, Utc::now());
        let decisions: Vec<Decision> =
            [12, 12, 12, 6, 0].iter().map(|price| decide(&mut account, None, &costing(*price))).collect();
        assert_eq!(
            decisions,
            [
                Decision::Hold { balance_after: 18, queued: false },
                Decision::Hold { balance_after: 6, queued: false },
                Decision::Insufficient { available: 6 },
                Decision::Hold { balance_after: 0, queued: false },
                Decision::Hold { balance_after: 0, queued: false },
            ]
        );
        assert_eq!(account.balance, 0);
    }

    #[test]
    fn limits_see_what_the_earlier_requests_of_the_batch_took() {
        let now = Utc::now();
        let mut account = AccountState::new(100, now);
        let key = Limits { max_in_flight: Some(2), ..Limits::default() };
        let whole = Limits { daily_credit_cap: Some(25), ..Limits::default() };
        account
            .add_limits(LimitState { now, key: (key, Usage::default()), account: (whole, Usage::default()) }, "key_a");
        let keyed = |price| NewTask { key_id: Some("key_a".into()), ..costing(price) };
        let decisions: Vec<Decision> =
            [10, 10, 1].into_iter().map(|price| decide(&mut account, None, &keyed(price))).collect();
        assert_eq!(
            decisions[..2],
            [Decision::Hold { balance_after: 90, queued: false }, Decision::Hold { balance_after: 80, queued: false }]
        );
        // The key's max_in_flight is full: the third waits queued, its credits held and counted.
        assert_eq!(decisions[2], Decision::Hold { balance_after: 79, queued: true });
        assert_eq!((account.keys["key_a"].1.in_flight, account.queued), (2, 1));
        let other = NewTask { key_id: Some("key_b".into()), ..costing(10) };
        account.add_limits(
            LimitState {
                now,
                key: (Limits::default(), Usage::default()),
                account: (Limits::default(), Usage::default()),
            },
            "key_b",
        );
        // The account's cap counts key_a's 21: 10 more would pass 25.
        assert!(matches!(decide(&mut account, None, &other), Decision::Refused(Refusal::CapReached { cap: 25, .. })));
        assert_eq!(account.balance, 79);
    }

    #[test]
    fn the_queue_keeps_its_order_its_windows_and_its_bound() {
        let mut account = AccountState::new(100, Utc::now());
        let mut window = WindowState { free: 1, queued: false };
        let windowed = NewTask { max_queued: 2, ..costing(1) };
        let decisions: Vec<Decision> = (0..4).map(|_| decide(&mut account, Some(&mut window), &windowed)).collect();
        assert_eq!(
            decisions,
            [
                Decision::Hold { balance_after: 99, queued: false },
                Decision::Hold { balance_after: 98, queued: true },
                Decision::Hold { balance_after: 97, queued: true },
                Decision::Refused(Refusal::QueueFull { max: 2 }),
            ]
        );
        assert_eq!((window, account.queued, account.balance), (WindowState { free: 0, queued: true }, 2, 97));
        // Another account's create for that provider queues behind its queued tasks, even with a slot free.
        let mut other = AccountState::new(100, Utc::now());
        window.free = 5;
        assert_eq!(
            decide(&mut other, Some(&mut window), &windowed),
            Decision::Hold { balance_after: 99, queued: true }
        );
        // Without a window, an account with queued tasks still queues its next create (first in, first out).
        assert_eq!(decide(&mut other, None, &windowed), Decision::Hold { balance_after: 98, queued: true });
    }
}
