//! The load generator: `concurrency` closed-loop workers (each sends its next request when the last
//! one answered) for a fixed time, latencies in an HDR histogram (µs, 3 significant digits). It
//! reports its own CPU, so a saturated generator shows.

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
    /// The gateway's CPU over the same time, in cores, when it was measured.
    pub server_cpu: Option<f64>,
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
        })
    }
}

/// Runs `request(worker, n)` from `concurrency` workers for `duration`; `server` is the gateway's
/// pid, whose CPU is measured over the same time.
pub async fn run<F, Fut>(concurrency: usize, duration: Duration, server: Option<u32>, request: F) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let request = Arc::new(request);
    let client_clock = CpuClock::own();
    let server_clock = server.and_then(CpuClock::of);
    let started = Instant::now();
    let until = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let request = Arc::clone(&request);
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
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
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut errors = 0;
    for worker in workers {
        if let Ok((part, part_errors)) = worker.await {
            let _ = histogram.add(&part);
            errors += part_errors;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Measured {
        requests: histogram.len(),
        errors,
        seconds,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        client_cpu: client_clock.map(|c| c.cores()).unwrap_or(f64::NAN),
        server_cpu: server_clock.map(|c| c.cores()),
    }
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
