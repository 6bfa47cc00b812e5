//! `cargo run --release -p aio-bench -- time-to-result`: see [`result_time`].
//!
//! `cargo run --release -p aio-bench -- takeover`: see [`takeover`].
//!
//! `cargo run --release -p aio-bench -- all [--secs N] [--rows N] [--running N]`: builds the gateway
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
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options { measure: Duration::from_secs(8), rows: 1_000_000, running: 100_000 };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--secs" => options.measure = Duration::from_secs(value()?.parse()?),
            "--rows" => options.rows = value()?.parse()?,
            "--running" => options.running = value()?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
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
            "usage: aio-bench all [--secs N] [--rows N] [--running N]\n       \
             aio-bench time-to-result [--gateway BINARY] [--catalog PATH] [--config PATH] [--concurrency N] [--tasks N] [--poll-after SECS]\n       \
             aio-bench takeover [--gateway BINARY] [--tasks N] [--heartbeat-ms MS] [--stale-ms MS] [--lease-secs SECS]"
        ),
    }
}
