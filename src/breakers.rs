//! Route health: a circuit breaker per route (provider + upstream model). `failures` retriable
//! failures in a row open it; while open the route is skipped; after `cool_down` one trial request is
//! let through, and its result closes the breaker or opens it again. In memory, per process: each
//! gateway learns on its own, which is enough to keep a failing provider out of the way. A route the
//! provider says it cannot serve (our account refused or out of funds, the model gone) opens at once
//! and is marked unavailable, so that tasks fail over or end instead of waiting for it.
//!
//! A breaker is shared by every account, so only failures that say something about the route count
//! (see `providers::Blame`), and the account whose trial just failed does not get the next one until
//! a second cool-down has passed without another account's request: one tenant cannot keep a route
//! closed for everyone by holding its trial slot.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Health {
    failures: u32,
    open_until: Option<Instant>,
    /// A trial request is out (half-open), for this account: no other one until it reports.
    trial: Option<i64>,
    /// The account whose trial failed last.
    failed_trial: Option<i64>,
    /// Opened because the route is unavailable, not because it failed for a while.
    unavailable: bool,
}

/// Whether a route may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Allow,
    /// Failing for now: it may work again later.
    Resting,
    /// The provider said it cannot serve this route.
    Unavailable,
}

pub struct Breakers {
    failures: u32,
    cool_down: Duration,
    routes: Mutex<HashMap<(String, String), Health>>,
}

impl Breakers {
    pub fn new(failures: u32, cool_down: Duration) -> Breakers {
        Breakers { failures: failures.max(1), cool_down, routes: Mutex::new(HashMap::new()) }
    }

    fn with<T>(&self, provider: &str, model: &str, f: impl FnOnce(&mut Health) -> T) -> T {
        let mut routes = self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(routes.entry((provider.to_owned(), model.to_owned())).or_default())
    }

    /// Whether a request of `account` may go to this route now (taking the one trial of an open
    /// breaker).
    pub fn allow(&self, provider: &str, model: &str, account: i64) -> bool {
        self.gate(provider, model, account) == Gate::Allow
    }

    /// [`Breakers::allow`], telling a resting route from an unavailable one.
    pub fn gate(&self, provider: &str, model: &str, account: i64) -> Gate {
        let cool_down = self.cool_down;
        self.with(provider, model, |health| {
            let Some(until) = health.open_until else { return Gate::Allow };
            let wait = if health.failed_trial == Some(account) { until + cool_down } else { until };
            if health.trial.is_none() && Instant::now() >= wait {
                health.trial = Some(account);
                Gate::Allow
            } else if health.unavailable {
                Gate::Unavailable
            } else {
                Gate::Resting
            }
        })
    }

    /// The provider said it cannot serve the route: open its breaker now, for the cool-down.
    pub fn unavailable(&self, provider: &str, model: &str) {
        let cool_down = self.cool_down;
        self.with(provider, model, |health| {
            tracing::error!(provider, model, "route unavailable: taken out of service for the cool-down");
            health.open_until = Some(Instant::now() + cool_down);
            health.trial = None;
            health.unavailable = true;
        });
    }

    /// The route answered (even with a permanent error): close its breaker.
    pub fn succeeded(&self, provider: &str, model: &str) {
        self.with(provider, model, |health| *health = Health::default());
    }

    /// A failure that says nothing about the route (the request's content, our storage): not counted;
    /// a trial it was is handed back for another request.
    pub fn neutral(&self, provider: &str, model: &str) {
        self.with(provider, model, |health| health.trial = None);
    }

    /// A retriable failure: count it; open (or re-open) the breaker at the threshold or after a trial.
    pub fn failed(&self, provider: &str, model: &str) {
        let (threshold, cool_down) = (self.failures, self.cool_down);
        self.with(provider, model, |health| {
            health.failures += 1;
            let trial = health.trial.take();
            if trial.is_some() || health.failures >= threshold {
                if health.open_until.is_none() || trial.is_some() {
                    tracing::warn!(provider, model, failures = health.failures, "route circuit open");
                }
                health.open_until = Some(Instant::now() + cool_down);
                health.failed_trial = trial;
                health.unavailable = false;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_then_lets_one_trial_through() {
        let breakers = Breakers::new(2, Duration::ZERO);
        assert!(breakers.allow("p", "m", 1));
        breakers.failed("p", "m");
        assert!(breakers.allow("p", "m", 1), "one failure is not enough");
        breakers.failed("p", "m");
        // Open; the cool-down (zero here) is over: exactly one trial.
        assert!(breakers.allow("p", "m", 1));
        assert!(!breakers.allow("p", "m", 2), "only one trial at a time");
        breakers.failed("p", "m");
        assert!(breakers.allow("p", "m", 2), "the failed trial re-opened it; after the cool-down, a new trial");
        breakers.succeeded("p", "m");
        assert!(breakers.allow("p", "m", 1) && breakers.allow("p", "m", 1), "closed again");
        assert!(breakers.allow("other", "m", 1), "routes are independent");

        let long = Breakers::new(1, Duration::from_secs(3600));
        long.failed("p", "m");
        assert!(!long.allow("p", "m", 1), "open during the cool-down");
    }

    #[test]
    fn the_account_whose_trial_failed_waits_a_second_cool_down_and_neutral_failures_hand_the_trial_back() {
        let breakers = Breakers::new(1, Duration::from_millis(500));
        breakers.failed("p", "m");
        std::thread::sleep(Duration::from_millis(600));
        assert!(breakers.allow("p", "m", 7), "the trial");
        breakers.failed("p", "m");
        std::thread::sleep(Duration::from_millis(600));
        assert!(!breakers.allow("p", "m", 7), "not the same account's again");
        assert!(breakers.allow("p", "m", 8), "another account's request is the trial");
        breakers.neutral("p", "m");
        assert!(breakers.allow("p", "m", 9), "a failure that says nothing of the route hands the trial back");
        breakers.succeeded("p", "m");
        assert!(breakers.allow("p", "m", 7));
    }

    #[test]
    fn an_unavailable_route_opens_at_once_and_says_so() {
        let breakers = Breakers::new(5, Duration::from_secs(3600));
        breakers.unavailable("p", "m");
        assert_eq!(breakers.gate("p", "m", 1), Gate::Unavailable);
        breakers.failed("q", "m");
        assert_eq!(breakers.gate("q", "m", 1), Gate::Allow, "one retriable failure does not open it");
        let short = Breakers::new(5, Duration::ZERO);
        short.unavailable("p", "m");
        assert_eq!(short.gate("p", "m", 1), Gate::Allow, "after the cool-down, one trial");
        assert_eq!(short.gate("p", "m", 1), Gate::Unavailable, "and no second one");
        short.succeeded("p", "m");
        assert_eq!(short.gate("p", "m", 1), Gate::Allow);
    }
}
