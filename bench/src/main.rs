//! `cargo run --release -p aio-bench -- time-to-result`: see [`result_time`].
//!
//! `cargo run --release -p aio-bench -- takeover`: see [`takeover`].
//!
//! `cargo run --release -p aio-bench -- all [--secs N] [--rows N] [--running N] [--poll-rate N]
//! [--create-rate N] [--only a,b]`: builds the gateway
//! (release), starts an instant fake KIE upstream and the gateway as separate processes on a fresh
//! database of the local PostgreSQL server, runs the scenarios of docs/performance.md,
//! prints a Markdown table and writes `bench/results/latest.json`.

// A benchmark's load workers and fake upstream are joined or dropped by the scenario that starts them.
#![allow(clippy::disallowed_methods)]

mod fake;
mod gateway;
mod load;
mod procstat;
mod result_time;
mod scenarios;
mod takeover;

use std::time::Duration;

use anyhow::bail;

/// Options of `all`.
pub struct Options {
    /// How long each measurement runs.
    pub measure: Duration,
    /// Tasks in the database for the large scale measurement.
    pub rows: i64,
    /// Running tasks for the memory measurement.
    pub running: i64,
    /// The open-loop poll's rate (requests/s).
    pub poll_rate: f64,
    /// The open-loop create's rate (requests/s).
    pub create_rate: f64,
    /// Only these scenarios (create, poll, open, writes, e2e, scale, memory); empty: all.
    pub only: Vec<String>,
}

const SCENARIOS: [&str; 7] = ["create", "poll", "open", "writes", "e2e", "scale", "memory"];

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        measure: Duration::from_secs(8),
        rows: 1_000_000,
        running: 100_000,
        poll_rate: 10_000.0,
        create_rate: 300.0,
        only: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--secs" => options.measure = Duration::from_secs(value()?.parse()?),
            "--rows" => options.rows = value()?.parse()?,
            "--running" => options.running = value()?.parse()?,
            "--poll-rate" => options.poll_rate = value()?.parse()?,
            "--create-rate" => options.create_rate = value()?.parse()?,
            "--only" => {
                options.only = value()?.split(',').map(str::to_owned).collect();
                if let Some(unknown) = options.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    bail!("--only: unknown scenario {unknown} (one of {})", SCENARIOS.join(", "));
                }
            }
            other => bail!("unknown option {other}"),
        }
    }
    anyhow::ensure!(options.poll_rate > 0.0 && options.create_rate > 0.0, "rates must be positive");
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fake-upstream") => {
            let port = args.get(1).ok_or_else(|| anyhow::anyhow!("fake-upstream PORT"))?.parse()?;
            fake::serve(port).await
        }
        Some("all") => scenarios::all(parse(&args[1..])?).await,
        Some("time-to-result") => result_time::run(result_time::parse(&args[1..])?).await,
        Some("takeover") => takeover::run(takeover::parse(&args[1..])?).await,
        _ => bail!(
            "usage: aio-bench all [--secs N] [--rows N] [--running N] [--poll-rate N] [--create-rate N] [--only create,poll,open,writes,e2e,scale,memory]\n       \
             aio-bench time-to-result [--gateway BINARY] [--catalog PATH] [--config PATH] [--concurrency N] [--tasks N] [--poll-after SECS]\n       \
             aio-bench takeover [--gateway BINARY] [--tasks N] [--heartbeat-ms MS] [--stale-ms MS] [--lease-secs SECS]"
        ),
    }
}
