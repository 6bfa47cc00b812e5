//! The background loop of a Postgres work queue, shared by the task engine and the webhook deliveries:
//! every tick (or when woken), claim what is due, as many rows as there are free slots, and work on
//! each in its own (tracked) task, at most `max_in_flight` at once. A row this process schedules for
//! later also arms a timer ([`Runner::wake_at`]), so it is claimed when it comes due rather than at the
//! next tick. On shutdown the work in flight may finish briefly; what is cut off comes due again after
//! its lease, or at once when this instance is found dead (see [`crate::instances`]).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a [`Runner`] drives.
pub trait Job: Send + Sync + 'static {
    type Item: Send + 'static;

    /// Claims up to `limit` due items, hiding them from other workers for a lease.
    fn claim(&self, limit: usize) -> impl Future<Output = sqlx::Result<Vec<Self::Item>>> + Send;

    /// Works on one claimed item; its errors are the job's to log and its lease's to retry.
    fn work(self: Arc<Self>, item: Self::Item) -> impl Future<Output = ()> + Send;
}

pub struct Runner {
    /// Names the loop in logs.
    name: &'static str,
    tick: Duration,
    /// Items claimed per tick, at most.
    batch: usize,
    in_flight: Arc<Semaphore>,
    /// The work on each claimed item; shutdown waits for it.
    work: TaskTracker,
    wake: Notify,
    /// When rows this process scheduled come due (at most [`MAX_TIMERS`]; beyond, the tick finds them).
    timers: Mutex<BTreeSet<Instant>>,
    /// An earlier timer was armed: the loop's sleep is cut shorter.
    rearm: Notify,
    /// The origin of the timer grid.
    epoch: Instant,
}

/// Timers kept at most: a bound on memory with many rows scheduled at once.
const MAX_TIMERS: usize = 10_000;

/// Timers fire on this grid: under load a claim takes every row that came due in one step of it
/// instead of one claim (a statement and a commit) per row.
const TIMER_GRID: Duration = Duration::from_millis(10);

impl Runner {
    pub fn new(name: &'static str, tick: Duration, batch: usize, max_in_flight: usize) -> Runner {
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        Runner {
            name,
            tick,
            batch,
            in_flight,
            work: TaskTracker::new(),
            wake: Notify::new(),
            timers: Mutex::new(BTreeSet::new()),
            rearm: Notify::new(),
            epoch: Instant::now(),
        }
    }

    /// A row was scheduled to come due `after` from now (call it once the schedule is committed, so
    /// the row is due by then): look at that time rather than at the next tick.
    pub fn wake_at(&self, after: Duration) {
        // Rounded up to the timer grid: rows scheduled close together are claimed in one go.
        let since = (Instant::now() + after).duration_since(self.epoch);
        let grid = TIMER_GRID.as_millis() as u64;
        let at = self.epoch + Duration::from_millis((since.as_millis() as u64).div_ceil(grid) * grid);
        let mut timers = self.timers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if timers.len() >= MAX_TIMERS {
            return;
        }
        let earliest = timers.first().is_none_or(|first| at < *first);
        timers.insert(at);
        drop(timers);
        if earliest {
            self.rearm.notify_one();
        }
    }

    /// The earliest armed timer, after dropping those that are past.
    fn next_timer(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut timers = self.timers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while timers.first().is_some_and(|first| *first <= now) {
            timers.pop_first();
        }
        timers.first().copied()
    }

    /// Something became due: look now rather than at the next tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs `job` until `shutdown`.
    pub async fn run<J: Job>(&self, job: &Arc<J>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let (claimed, room) = self.tick(job).await.unwrap_or_else(|error| {
                tracing::error!(error = %error, worker = self.name, "tick failed");
                (0, 1)
            });
            // Every free slot filled (or none free) means more may be due: go again as soon as a slot
            // frees up, not a whole tick later, or the loop works off at most `max_in_flight` items
            // per tick however fast each one is.
            if claimed == room {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.in_flight.acquire() => {}
                }
                continue;
            }
            // Until the tick, a wake, or the earliest timer (re-read when an earlier one is armed).
            let tick = Instant::now() + self.tick;
            loop {
                let until = self.next_timer().map_or(tick, |timer| timer.min(tick));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(until) => break,
                    _ = self.wake.notified() => break,
                    _ = self.rearm.notified() => {}
                }
            }
        }
        self.work.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.work.wait()).await;
        tracing::info!(worker = self.name, "stopped");
    }

    /// Claims up to a batch of due items (as many as there are free slots) and starts working on them.
    /// Returns how many it claimed, and how many it had room for.
    pub async fn tick<J: Job>(&self, job: &Arc<J>) -> sqlx::Result<(usize, usize)> {
        let free = self.in_flight.available_permits().min(self.batch);
        if free == 0 {
            return Ok((0, 0));
        }
        let due = job.claim(free).await?;
        let claimed = due.len();
        for item in due {
            let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
                break;
            };
            let job = Arc::clone(job);
            self.work.spawn(async move {
                job.work(item).await;
                drop(permit);
            });
        }
        Ok((claimed, free))
    }
}
