//! What the bench runs against: the release gateway binary (built here), a fresh database on the
//! local PostgreSQL server, and the fake upstream process.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// The repository root (the workspace this crate is a member of).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ has a parent").to_path_buf()
}

/// The PostgreSQL server the bench uses (`AIO_BENCH_POSTGRES`, else the local one) and a new database
/// name on it, for one run (the scenario creates the database and drops it at the end).
pub fn fresh_database() -> (String, String) {
    let server = std::env::var("AIO_BENCH_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    (server, format!("aio_bench_{}", ulid::Ulid::new().to_string().to_lowercase()))
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `cargo build --release` of the gateway binary (with the bench in the same build, so features
/// resolve as for `cargo run -p aio-bench` and nothing is compiled twice); returns the directory of
/// both binaries.
pub fn build() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    // `cargo run` hands this process its CARGO_PKG_* (and the like); build scripts that watch them
    // (ring's) would see a change and recompile half the tree.
    for (name, _) in std::env::vars() {
        if name.starts_with("CARGO_") && !matches!(name.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR") {
            command.env_remove(name);
        }
    }
    let status = command
        .current_dir(root())
        .args(["build", "--release", "--locked", "-p", "aio-gateway", "-p", "aio-bench"])
        .status()
        .context("run cargo build")?;
    if !status.success() {
        bail!("building the gateway failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root().join("target"));
    Ok(target.join("release"))
}

/// A child process killed when dropped.
pub struct Process(pub Child);

impl Process {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fake upstream: the bench binary in `binaries` (freshly built: maybe not this process's own
/// file any more), as `fake-upstream PORT`.
pub fn start_fake(binaries: &Path, port: u16) -> anyhow::Result<Process> {
    let child = Command::new(binaries.join("aio-bench"))
        .args(["fake-upstream", &port.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .context("start the fake upstream")?;
    Ok(Process(child))
}

pub struct Gateway {
    pub binary: PathBuf,
    pub database_url: String,
    pub upstream: String,
    pub port: u16,
    pub log: PathBuf,
    /// More environment variables, set last (they win).
    pub extra: Vec<(String, String)>,
    /// The configuration file (default the shipped `config/gateway.toml`).
    pub config: Option<PathBuf>,
}

impl Gateway {
    /// The gateway's configuration: the shipped config and catalog, KIE pointed at the fake (polling,
    /// no callbacks), no per-key rate limit, warnings only in the log.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        for (name, _) in std::env::vars() {
            if name.starts_with("AIO__") {
                command.env_remove(name);
            }
        }
        command
            .current_dir(root())
            .arg("--config")
            .arg(self.config.clone().unwrap_or_else(|| root().join("config/gateway.toml")))
            .env("DATABASE_URL", &self.database_url)
            .env("AIO__SERVER__LISTEN", format!("127.0.0.1:{}", self.port))
            .env("AIO__BOOTSTRAP__ENABLED", "false")
            .env("AIO__FILES__DIR", std::env::temp_dir().join("aio-bench-files"))
            .env("KIE_API_KEY", "bench-upstream-key")
            .env("AIO__PROVIDERS__KIE__BASE_URL", &self.upstream)
            .env("AIO__PROVIDERS__KIE__CALLBACKS", "false")
            // The fake's result URLs are not real images: the gateway passes them through instead of
            // copying them (`results.rehost`, on by default), so the figures are the gateway's own work.
            .env("AIO__RESULTS__REHOST", "false")
            .env("AIO__RATE_LIMIT__REQUESTS_PER_MINUTE", "1000000000")
            .env("AIO__RATE_LIMIT__BURST", "100000000")
            .env("AIO__LOG__LEVEL", "warn")
            .env_remove("RUST_LOG");
        for (name, value) in &self.extra {
            command.env(name, value);
        }
        command
    }

    /// An admin command (`--json`); returns its JSON.
    pub fn admin(&self, args: &[&str]) -> anyhow::Result<Value> {
        let output = self.command().arg("--json").args(args).output().context("run an admin command")?;
        if !output.status.success() {
            bail!("{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    pub async fn serve(&self) -> anyhow::Result<Process> {
        let log = std::fs::File::create(&self.log)?;
        let child = self.command().arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn()?;
        let process = Process(child);
        wait_http(&format!("http://127.0.0.1:{}/healthz", self.port)).await?;
        Ok(process)
    }
}

/// Waits until `url` answers 200 (30 s at most).
pub async fn wait_http(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(url).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > give_up {
            bail!("{url} never answered");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
