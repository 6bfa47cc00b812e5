//! The load generator, latencies in an HDR histogram (µs, 3 significant digits):
//! - closed loop ([`run`]): `concurrency` workers, each sends its next request when the last one
//!   answered, for a fixed time; the rate is whatever the server allows.
//! - open loop ([`open_loop`]): requests sent at a constant rate whatever the answers do, each
//!   latency measured from the request's *intended* send time, so a server that falls behind shows
//!   its queueing in the percentiles instead of slowing the generator down (no coordinated omission).
//!
//! It reports its own CPU, so a saturated generator shows, and the CPU of the processes watched
//! (the gateway or the floor's server; PostgreSQL's).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::procstat::{self, CpuClock};

/// What one request did: `Ok(())` for a success, `Err(())` for any error answer or failure.
pub type Outcome = Result<(), ()>;

#[derive(Debug, Clone)]
pub struct Measured {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// The load generator's CPU, in cores (1.0 = one core busy).
    pub client_cpu: f64,
    /// The gateway's (or the floor server's) CPU over the same time, in cores, when it was measured.
    pub server_cpu: Option<f64>,
    /// PostgreSQL's CPU over the same time (see [`Watch::postgres`]), in cores.
    pub postgres_cpu: Option<f64>,
    /// Open loop: the rate asked for (requests/s).
    pub offered_rate: Option<f64>,
}

/// The processes whose CPU a measurement reports.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub server: Option<u32>,
    /// PostgreSQL's processes: the backends of the bench's database and the server's WAL writer,
    /// checkpointer and background writer.
    pub postgres: Vec<u32>,
}

/// The CPU clocks of one measurement.
struct Clocks {
    client: Option<CpuClock>,
    server: Option<CpuClock>,
    postgres: Option<CpuClock>,
}

impl Clocks {
    fn start(watch: &Watch) -> Clocks {
        Clocks {
            client: CpuClock::own(),
            server: watch.server.and_then(CpuClock::of),
            postgres: CpuClock::of_all(&watch.postgres),
        }
    }

    fn measured(&self, histogram: &Histogram<u64>, errors: u64, seconds: f64, offered_rate: Option<f64>) -> Measured {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Measured {
            requests: histogram.len(),
            errors,
            seconds,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            client_cpu: self.client.as_ref().map_or(f64::NAN, CpuClock::cores),
            server_cpu: self.server.as_ref().map(CpuClock::cores),
            postgres_cpu: self.postgres.as_ref().map(CpuClock::cores),
            offered_rate,
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

impl Measured {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub fn json(&self) -> Value {
        json!({
            "requests": self.requests, "errors": self.errors, "seconds": self.seconds,
            "requests_per_sec": self.rate(), "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms, "client_cpu_cores": self.client_cpu, "gateway_cpu_cores": self.server_cpu,
            "postgres_cpu_cores": self.postgres_cpu, "offered_rate": self.offered_rate,
        })
    }
}

/// Runs `request(worker, n)` from `concurrency` workers for `duration`, closed loop; the CPU of the
/// processes in `watch` is measured over the same time.
pub async fn run<F, Fut>(concurrency: usize, duration: Duration, watch: &Watch, request: F) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let request = Arc::new(request);
    let clocks = Clocks::start(watch);
    let started = Instant::now();
    let until = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let request = Arc::clone(&request);
            tokio::spawn(async move {
                let mut histogram = histogram();
                let mut errors = 0u64;
                let mut n = 0u64;
                while Instant::now() < until {
                    let sent = Instant::now();
                    if request(worker, n).await.is_err() {
                        errors += 1;
                    }
                    let _ = histogram.record(sent.elapsed().as_micros().max(1) as u64);
                    n += 1;
                }
                (histogram, errors)
            })
        })
        .collect();
    let mut histogram = histogram();
    let mut errors = 0;
    for worker in workers {
        if let Ok((part, part_errors)) = worker.await {
            let _ = histogram.add(&part);
            errors += part_errors;
        }
    }
    clocks.measured(&histogram, errors, started.elapsed().as_secs_f64(), None)
}

/// The schedule of an open loop: request `n` (from 0) is due `n / rate` seconds after the start.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub rate: f64,
    pub total: u64,
}

impl Schedule {
    /// `rate` requests/s for `duration`.
    pub fn new(rate: f64, duration: Duration) -> Schedule {
        Schedule { rate, total: (rate * duration.as_secs_f64()).floor() as u64 }
    }

    /// When request `n` is due, after the start.
    pub fn due_at(&self, n: u64) -> Duration {
        Duration::from_secs_f64(n as f64 / self.rate)
    }

    /// How many requests are due `elapsed` after the start (request 0 is due at once), at most all.
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        ((elapsed.as_secs_f64() * self.rate).floor() as u64).saturating_add(1).min(self.total)
    }
}

/// Sends `request(n)` at `rate` per second for `duration`, whatever the answers do (open loop); each
/// latency counts from when the request was due. At most `max_in_flight` requests are outstanding:
/// a request due while that many wait is not sent and counts as an error (the bound keeps the
/// generator's memory finite when the server stops answering). After the last send, outstanding
/// requests get 10 s to answer; those that do not count as errors.
pub async fn open_loop<F, Fut>(
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
    watch: &Watch,
    request: F,
) -> Measured
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let schedule = Schedule::new(rate, duration);
    let clocks = Clocks::start(watch);
    let started = Instant::now();
    let mut histogram = histogram();
    let mut errors = 0u64;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut record =
        |histogram: &mut Histogram<u64>, done: Result<(Duration, Outcome), tokio::task::JoinError>| match done {
            Ok((latency, outcome)) => {
                let _ = histogram.record(latency.as_micros().max(1) as u64);
                if outcome.is_err() {
                    errors += 1;
                }
            }
            Err(_) => errors += 1,
        };
    let mut next = 0u64;
    while next < schedule.total {
        let due = schedule.due_by(started.elapsed());
        while next < due {
            let intended = started + schedule.due_at(next);
            if in_flight.len() >= max_in_flight {
                record(&mut histogram, Ok((Duration::ZERO, Err(()))));
            } else {
                let sent = request(next);
                in_flight.spawn(async move {
                    let outcome = sent.await;
                    (intended.elapsed(), outcome)
                });
            }
            next += 1;
        }
        while let Some(done) = in_flight.try_join_next() {
            record(&mut histogram, done);
        }
        if next < schedule.total {
            tokio::time::sleep_until((started + schedule.due_at(next)).into()).await;
        }
    }
    let give_up = Instant::now() + Duration::from_secs(10);
    while !in_flight.is_empty() {
        match tokio::time::timeout_at(give_up.into(), in_flight.join_next()).await {
            Ok(Some(done)) => record(&mut histogram, done),
            Ok(None) => break,
            Err(_) => {
                for _ in 0..in_flight.len() {
                    record(&mut histogram, Ok((Duration::from_secs(10), Err(()))));
                }
                in_flight.abort_all();
                break;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    clocks.measured(&histogram, errors, seconds, Some(rate))
}

/// A 2xx answer whose body was read in full is a success.
pub async fn ok(response: reqwest::Result<reqwest::Response>) -> Outcome {
    let response = response.map_err(|_| ())?;
    let success = response.status().is_success();
    response.bytes().await.map_err(|_| ())?;
    if success {
        Ok(())
    } else {
        Err(())
    }
}

/// The resident memory of `pid`, in MB.
pub fn rss_mb(pid: u32) -> f64 {
    procstat::rss_kb(pid).map(|kb| kb as f64 / 1024.0).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_spaces_requests_evenly_from_the_start() {
        let schedule = Schedule::new(1000.0, Duration::from_secs(2));
        assert_eq!(schedule.total, 2000);
        assert_eq!(schedule.due_at(0), Duration::ZERO);
        assert_eq!(schedule.due_at(500), Duration::from_millis(500));
        // Request 0 is due at once; one more every millisecond.
        assert_eq!(schedule.due_by(Duration::ZERO), 1);
        assert_eq!(schedule.due_by(Duration::from_micros(999)), 1);
        assert_eq!(schedule.due_by(Duration::from_millis(1)), 2);
        assert_eq!(schedule.due_by(Duration::from_millis(10)), 11);
        // Never more than the total, however late the generator wakes.
        assert_eq!(schedule.due_by(Duration::from_secs(60)), 2000);
    }

    #[test]
    fn every_request_due_by_a_time_was_due_before_it() {
        let schedule = Schedule::new(333.0, Duration::from_secs(3));
        for ms in [0, 1, 7, 100, 1234, 2999] {
            let elapsed = Duration::from_millis(ms);
            let due = schedule.due_by(elapsed);
            assert!(schedule.due_at(due - 1) <= elapsed, "{ms} ms");
            if due < schedule.total {
                assert!(schedule.due_at(due) > elapsed, "{ms} ms");
            }
        }
    }
}
