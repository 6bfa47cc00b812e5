//! Route health: a circuit breaker per route (provider + upstream model). `failures` retriable
//! failures in a row open it; while open the route is skipped; after `cool_down` one trial request is
//! let through, and its result closes the breaker or opens it again. In memory, per process: each
//! gateway learns on its own, which is enough to keep a failing provider out of the way. A route the
//! provider says it cannot serve (our account refused or out of funds, the model gone) opens at once
//! and is marked unavailable, so that tasks fail over or end instead of waiting for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Health {
    failures: u32,
    open_until: Option<Instant>,
    /// A trial request is out (half-open): no other one until it reports.
    trial: bool,
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

    /// Whether a request may go to this route now (taking the one trial of an open breaker).
    pub fn allow(&self, provider: &str, model: &str) -> bool {
        self.gate(provider, model) == Gate::Allow
    }

    /// [`Breakers::allow`], telling a resting route from an unavailable one.
    pub fn gate(&self, provider: &str, model: &str) -> Gate {
        self.with(provider, model, |health| match health.open_until {
            None => Gate::Allow,
            Some(until) if Instant::now() >= until && !health.trial => {
                health.trial = true;
                Gate::Allow
            }
            Some(_) if health.unavailable => Gate::Unavailable,
            Some(_) => Gate::Resting,
        })
    }

    /// The provider said it cannot serve the route: open its breaker now, for the cool-down.
    pub fn unavailable(&self, provider: &str, model: &str) {
        let cool_down = self.cool_down;
        self.with(provider, model, |health| {
            tracing::error!(provider, model, "route unavailable: taken out of service for the cool-down");
            health.open_until = Some(Instant::now() + cool_down);
            health.trial = false;
            health.unavailable = true;
        });
    }

    /// The route answered (even with a permanent error): close its breaker.
    pub fn succeeded(&self, provider: &str, model: &str) {
        self.with(provider, model, |health| *health = Health::default());
    }

    /// A retriable failure: count it; open (or re-open) the breaker at the threshold or after a trial.
    pub fn failed(&self, provider: &str, model: &str) {
        let (threshold, cool_down) = (self.failures, self.cool_down);
        self.with(provider, model, |health| {
            health.failures += 1;
            if health.trial || health.failures >= threshold {
                if health.open_until.is_none() || health.trial {
                    tracing::warn!(provider, model, failures = health.failures, "route circuit open");
                }
                health.open_until = Some(Instant::now() + cool_down);
                health.trial = false;
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
        assert!(breakers.allow("p", "m"));
        breakers.failed("p", "m");
        assert!(breakers.allow("p", "m"), "one failure is not enough");
        breakers.failed("p", "m");
        // Open; the cool-down (zero here) is over: exactly one trial.
        assert!(breakers.allow("p", "m"));
        assert!(!breakers.allow("p", "m"), "only one trial at a time");
        breakers.failed("p", "m");
        assert!(breakers.allow("p", "m"), "the failed trial re-opened it; after the cool-down, a new trial");
        breakers.succeeded("p", "m");
        assert!(breakers.allow("p", "m") && breakers.allow("p", "m"), "closed again");
        assert!(breakers.allow("other", "m"), "routes are independent");

        let long = Breakers::new(1, Duration::from_secs(3600));
        long.failed("p", "m");
        assert!(!long.allow("p", "m"), "open during the cool-down");
    }

    #[test]
    fn an_unavailable_route_opens_at_once_and_says_so() {
        let breakers = Breakers::new(5, Duration::from_secs(3600));
        breakers.unavailable("p", "m");
        assert_eq!(breakers.gate("p", "m"), Gate::Unavailable);
        breakers.failed("q", "m");
        assert_eq!(breakers.gate("q", "m"), Gate::Allow, "one retriable failure does not open it");
        let short = Breakers::new(5, Duration::ZERO);
        short.unavailable("p", "m");
        assert_eq!(short.gate("p", "m"), Gate::Allow, "after the cool-down, one trial");
        assert_eq!(short.gate("p", "m"), Gate::Unavailable, "and no second one");
        short.succeeded("p", "m");
        assert_eq!(short.gate("p", "m"), Gate::Allow);
    }
}
