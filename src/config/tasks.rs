//! The task engine: deadlines, polling, retries, leases, concurrency and the circuit breakers.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::durations;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSettings {
    /// `deadline_secs`. A task not finished this long after creation fails with `timeout` and its hold
    /// is released.
    #[serde(rename = "deadline_secs", with = "durations::positive_secs")]
    pub deadline: Duration,
    /// `poll_initial_ms`. First poll of a running task after this long; later polls back off by 1.5×
    /// up to `poll_max_ms`.
    #[serde(rename = "poll_initial_ms", with = "durations::positive_millis")]
    pub poll_initial: Duration,
    #[serde(rename = "poll_max_ms", with = "durations::positive_millis")]
    pub poll_max: Duration,
    /// `retry_initial_ms`. A failed submit that may succeed later is retried after this long, doubling
    /// up to `poll_max_ms`.
    #[serde(rename = "retry_initial_ms", with = "durations::positive_millis")]
    pub retry_initial: Duration,
    /// `tick_ms`. How often the engine looks for due tasks.
    #[serde(rename = "tick_ms", with = "durations::positive_millis")]
    pub tick: Duration,
    /// `lease_secs`. A claimed task is invisible to other workers this long; if its worker dies it is
    /// picked up again.
    #[serde(rename = "lease_secs", with = "durations::positive_secs")]
    pub lease: Duration,
    /// `heartbeat_ms`. How often each process running the engine records that it is alive (and takes
    /// over the leases of dead ones).
    #[serde(rename = "heartbeat_ms", with = "durations::positive_millis")]
    pub heartbeat: Duration,
    /// `instance_stale_ms`. A process whose last heartbeat is older than this is dead: its leased tasks
    /// and webhook deliveries are taken over at once by a live process. Several heartbeats long.
    #[serde(rename = "instance_stale_ms", with = "durations::positive_millis")]
    pub instance_stale: Duration,
    /// Due tasks claimed per tick, and how many provider calls run at once.
    pub batch_size: NonZeroUsize,
    pub max_in_flight: NonZeroUsize,
    /// `dispatch_wait_ms`. How long the create request waits for the provider to accept the task
    /// before answering `pending`.
    #[serde(rename = "dispatch_wait_ms", with = "durations::millis")]
    pub dispatch_wait: Duration,
    /// A route's circuit opens after this many retriable submit failures in a row…
    pub breaker_failures: u32,
    /// `breaker_cooldown_secs`. …for this long; then one trial request decides whether it closes.
    #[serde(rename = "breaker_cooldown_secs", with = "durations::secs")]
    pub breaker_cooldown: Duration,
    /// Most creates committed in one transaction (group commit): a batch is whatever queued while the
    /// previous one committed, up to this.
    pub create_batch_max: NonZeroUsize,
    /// Most creates waiting for a batch; one more is answered `503 overloaded`.
    pub create_queue_max: NonZeroUsize,
    /// Batches committing at once on PostgreSQL (SQLite: always one).
    pub create_committers: NonZeroUsize,
    /// The most `queued` tasks one account may have; a create beyond is refused 429 `queue_full`.
    pub max_queued_per_account: NonZeroUsize,
    /// `max_queue_secs`. A task `queued` longer fails with `timeout` and its credits are released.
    #[serde(rename = "max_queue_secs", with = "durations::positive_secs")]
    pub max_queue: Duration,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(900),
            poll_initial: Duration::from_millis(1000),
            poll_max: Duration::from_millis(30_000),
            retry_initial: Duration::from_millis(1000),
            tick: Duration::from_millis(500),
            lease: Duration::from_secs(60),
            heartbeat: Duration::from_millis(1000),
            instance_stale: Duration::from_millis(3000),
            batch_size: const { NonZeroUsize::new(100).unwrap() },
            max_in_flight: const { NonZeroUsize::new(64).unwrap() },
            dispatch_wait: Duration::from_millis(5000),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(30),
            create_batch_max: const { NonZeroUsize::new(256).unwrap() },
            create_queue_max: const { NonZeroUsize::new(4096).unwrap() },
            create_committers: const { NonZeroUsize::new(2).unwrap() },
            max_queued_per_account: const { NonZeroUsize::new(1000).unwrap() },
            max_queue: Duration::from_secs(600),
        }
    }
}
