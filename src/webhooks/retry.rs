//! When to try a delivery again: the configured schedule with ±20 % jitter, and a receiver's
//! `Retry-After` honoured between the scheduled delay and twice it.

use std::time::{Duration, SystemTime};

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Schedule(Vec<Duration>);

impl Schedule {
    /// `delays[0]` is the wait before the first attempt, `delays[n]` the wait after the n-th failed
    /// one; there are as many attempts as delays. Must not be empty (the settings check it).
    pub fn new(delays: Vec<Duration>) -> Schedule {
        Schedule(delays)
    }

    /// The wait between the task's end and the first attempt.
    pub fn first(&self) -> Duration {
        self.0.first().copied().map(jitter).unwrap_or_default()
    }

    /// After `attempts` attempts, the last of which failed: the wait before the next one, or `None`
    /// when that was the last attempt.
    pub fn next(&self, attempts: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let base = jitter(*self.0.get(attempts as usize)?);
        Some(match retry_after {
            Some(asked) => asked.clamp(base, base * 2),
            None => base,
        })
    }
}

/// ±20 %, so that deliveries that failed together do not all come back at once.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::thread_rng().gen_range(0.8..=1.2))
}

/// A `Retry-After` value: delay-seconds or an HTTP date (a date in the past means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn follows_the_schedule_with_jitter_and_ends() {
        let schedule = Schedule::new(vec![secs(0), secs(10), secs(100)]);
        assert_eq!(schedule.first(), secs(0));
        for _ in 0..100 {
            let next = schedule.next(1, None).expect("a second retry");
            assert!(next >= secs(8) && next <= secs(12), "{next:?}");
            let last = schedule.next(2, None).expect("a third attempt");
            assert!(last >= secs(80) && last <= secs(120), "{last:?}");
        }
        assert_eq!(schedule.next(3, None), None, "three delays, three attempts");
    }

    #[test]
    fn retry_after_is_clamped_between_the_delay_and_twice_it() {
        let schedule = Schedule::new(vec![secs(0), secs(10)]);
        for _ in 0..100 {
            let short = schedule.next(1, Some(secs(1))).expect("retry");
            assert!(short >= secs(8) && short <= secs(12), "never sooner than scheduled: {short:?}");
            let long = schedule.next(1, Some(secs(3600))).expect("retry");
            assert!(long >= secs(16) && long <= secs(24), "at most twice the delay: {long:?}");
            let fits = schedule.next(1, Some(secs(15))).expect("retry");
            assert_eq!(fits, secs(15));
        }
    }

    #[test]
    fn parses_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 25 Nov 2026 10:00:00 GMT").expect("date");
        assert_eq!(parse_retry_after("120", now), Some(secs(120)));
        assert_eq!(parse_retry_after(" 7 ", now), Some(secs(7)));
        assert_eq!(parse_retry_after("Wed, 25 Nov 2026 10:01:30 GMT", now), Some(secs(90)));
        assert_eq!(parse_retry_after("Wed, 25 Nov 2026 09:00:00 GMT", now), Some(secs(0)));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
