//! The servers the suites need, PostgreSQL and Redis, found or started.
//!
//! PostgreSQL: `AIO_TEST_DATABASE_URL` (or its older name `AIO_TEST_POSTGRES`), a server URL without a
//! database name; else 127.0.0.1:5432 when it answers; else a private cluster (`initdb` / `pg_ctl` in a
//! temporary directory, on a free port). Redis: `AIO_TEST_REDIS_URL`; else 127.0.0.1:6379 when it
//! answers; else a private `redis-server` on a free port. `AIO_TEST_PRIVATE_SERVICES=1` skips the
//! shared servers and starts the private ones. A private server lives as long as the test binary: a
//! watchdog process stops it (and removes its directory) when the binary exits, however it exits.
//!
//! S3: `AIO_TEST_S3_URL` (an S3-compatible endpoint that accepts any credentials); else a private
//! `moto_server` (PyPI `moto[server]`, installed into `.venv` by `.ci/files`) on a free port, found as
//! `AIO_TEST_MOTO_SERVER`, `.venv/bin/moto_server` or on `PATH`. Missing, the tests that need it fail,
//! saying what to run; they never pass without it.
//!
//! [`Cluster`] is also the reliability suite's own PostgreSQL, which a test stops and starts.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tempfile::TempDir;

/// The PostgreSQL server the tests use, without a database name (`postgres://postgres@host:port`).
/// Panics, saying what to install or set, when there is none and none can be started.
pub fn postgres_server() -> String {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        let configured = std::env::var("AIO_TEST_DATABASE_URL").or_else(|_| std::env::var("AIO_TEST_POSTGRES"));
        if let Ok(url) = configured {
            return Ok(url.trim_end_matches('/').to_owned());
        }
        if !private_services() && answers(5432) {
            return Ok("postgres://postgres@127.0.0.1:5432".to_owned());
        }
        let cluster = Cluster::try_start()?;
        let url = format!("postgres://postgres@127.0.0.1:{}", cluster.port);
        keep_until_exit(cluster.stop_command(), Some(cluster.dir.path().to_path_buf()))?;
        // Never dropped: the watchdog stops it when the binary exits, after the last test.
        std::mem::forget(cluster);
        Ok(url)
    });
    server.clone().unwrap_or_else(|why| panic!("{why}"))
}

/// The Redis server the tests use (`redis://host:port`); panics like [`postgres_server`].
pub fn redis_url() -> String {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("AIO_TEST_REDIS_URL") {
            return Ok(url);
        }
        if !private_services() && answers(6379) {
            return Ok("redis://127.0.0.1:6379".to_owned());
        }
        start_redis()
    });
    server.clone().unwrap_or_else(|why| panic!("{why}"))
}

/// The S3-compatible server the tests use (`http://host:port`, path-style), with the standard
/// `AWS_*` credential variables set for this process (the gateway reads them as in production).
/// Panics like [`postgres_server`].
pub fn s3_url() -> String {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        // Set once, before the first store is built; moto accepts any key.
        std::env::set_var("AWS_ACCESS_KEY_ID", "aio-test-access-key");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "aio-test-secret-key");
        if let Ok(url) = std::env::var("AIO_TEST_S3_URL") {
            return Ok(url.trim_end_matches('/').to_owned());
        }
        start_moto()
    });
    server.clone().unwrap_or_else(|why| panic!("{why}"))
}

/// Creates a new, empty bucket on [`s3_url`] and returns its name (S3's own REST call, `PUT /{bucket}`).
pub async fn new_bucket() -> String {
    let name = format!("aio-test-{}", ulid::Ulid::new().to_string().to_ascii_lowercase());
    let response = reqwest::Client::new().put(format!("{}/{name}", s3_url())).send().await.expect("create a bucket");
    assert!(response.status().is_success(), "create bucket {name}: {}", response.status());
    name
}

/// A private `moto_server`, stopped when this process exits (like [`start_redis`]).
pub fn start_moto() -> Result<String, String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    let binary = std::env::var_os("AIO_TEST_MOTO_SERVER")
        .map(PathBuf::from)
        .or_else(|| venv.exists().then_some(venv.clone()))
        .or_else(|| which("moto_server"))
        .ok_or_else(|| {
            format!(
                "no S3-compatible server for the object-storage tests: moto_server was not found (looked in \
                 AIO_TEST_MOTO_SERVER, {}, PATH): run ./.ci/files (pip install 'moto[server]') or set \
                 AIO_TEST_S3_URL",
                venv.display()
            )
        })?;
    // moto imports a lot of Python before it listens.
    let port = start_private(&binary, &["-H", "127.0.0.1", "-p"], 600)?;
    Ok(format!("http://127.0.0.1:{port}"))
}

fn private_services() -> bool {
    std::env::var("AIO_TEST_PRIVATE_SERVICES").is_ok_and(|v| v == "1")
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(300)).is_ok()
}

fn free_port() -> u16 {
    let probe = TcpListener::bind("127.0.0.1:0").expect("find a free port");
    probe.local_addr().expect("probe address").port()
}

/// Runs `stop` (then removes `dir`) when this process exits: a shell in its own process group (so
/// Ctrl-C reaches only the tests) waits for the end of its stdin, whose write end only this process
/// holds, and the kernel closes it however the process ends.
fn keep_until_exit(stop: Vec<String>, dir: Option<PathBuf>) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"read _ignored; "$@" >/dev/null 2>&1; [ -z "$AIO_REMOVE" ] || rm -rf "$AIO_REMOVE""#, "sh"])
        .args(&stop)
        .env("AIO_REMOVE", dir.as_deref().unwrap_or(Path::new("")))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0);
    let mut child = command.spawn().map_err(|e| format!("start the watchdog of {stop:?}: {e}"))?;
    let stdin = child.stdin.take().ok_or("the watchdog has no stdin")?;
    hold_until_exit(child, stdin);
    Ok(())
}

/// Keeps the write end of a watchdog's stdin open until this process exits.
fn hold_until_exit(child: Child, stdin: ChildStdin) {
    static HELD: Mutex<Vec<(Child, ChildStdin)>> = Mutex::new(Vec::new());
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((child, stdin));
}

/// A private `redis-server` (no persistence), run by a shell that stops it when this process exits.
fn start_redis() -> Result<String, String> {
    let candidates = ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/opt/homebrew/bin/redis-server"];
    let binary = which("redis-server")
        .or_else(|| candidates.iter().map(PathBuf::from).find(|p| p.exists()))
        .ok_or_else(|| {
            format!(
                "Redis is not reachable at 127.0.0.1:6379 and redis-server was not found (looked in PATH and {}): \
                 install it (apt-get install redis-server) or set AIO_TEST_REDIS_URL",
                candidates.join(", ")
            )
        })?;
    let port = start_private(&binary, &["--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--port"], 100)?;
    Ok(format!("redis://127.0.0.1:{port}"))
}

/// Starts `binary` with `args` and a free port as the last argument, under a shell that stops it when
/// this process exits (its stdin closes); waits up to `tries` × 50 ms for it to listen; returns the port.
fn start_private(binary: &Path, args: &[&str], tries: u32) -> Result<u16, String> {
    use std::os::unix::process::CommandExt;
    let port = free_port();
    let mut child = Command::new("sh")
        .args(["-c", r#""$@" & server=$!; read _ignored; kill $server; wait $server"#, "sh"])
        .arg(binary)
        .args(args)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("start {}: {e}", binary.display()))?;
    let stdin = child.stdin.take().ok_or_else(|| format!("the shell of {} has no stdin", binary.display()))?;
    for _ in 0..tries {
        if answers(port) {
            hold_until_exit(child, stdin);
            return Ok(port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Closing its stdin stops it.
    drop(stdin);
    let _ = child.wait();
    Err(format!("{} did not start listening on 127.0.0.1:{port}", binary.display()))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(program)).find(|path| path.is_file())
}

/// A private PostgreSQL cluster: `initdb` into a temporary directory and `pg_ctl` on a free port.
/// PostgreSQL refuses to run as root: as root, every command runs as the `postgres` OS user (which
/// then owns the directory).
pub struct Cluster {
    bin: PathBuf,
    dir: TempDir,
    pub port: u16,
}

impl Cluster {
    /// Creates and starts the cluster (trust authentication, user `postgres`, 127.0.0.1 only).
    pub fn start() -> Cluster {
        Cluster::try_start().unwrap_or_else(|why| panic!("{why}"))
    }

    fn try_start() -> Result<Cluster, String> {
        let bin = server_bin_dir()?;
        let dir =
            tempfile::Builder::new().prefix("aio-pg-").tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        if running_as_root() {
            try_run(Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir.path()))?;
        }
        let cluster = Cluster { bin, dir, port: free_port() };
        // `--no-sync`: this throwaway cluster never needs to survive an OS crash.
        try_run(
            cluster
                .command("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "-D"])
                .arg(cluster.data()),
        )?;
        cluster.try_pg_ctl_start()?;
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:{port}/{database}`
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A fast shutdown: sessions are terminated (`57P01 admin_shutdown`), then the server stops.
    pub fn stop(&self) {
        run(self.command("pg_ctl").args(["-w", "-m", "fast", "stop", "-D"]).arg(self.data()));
    }

    pub fn pg_ctl_start(&self) {
        self.try_pg_ctl_start().unwrap_or_else(|why| panic!("{why}"))
    }

    fn try_pg_ctl_start(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=100 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        try_run(
            self.command("pg_ctl")
                .args(["-w", "-t", "60", "start", "-D"])
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .arg("-o")
                .arg(options),
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let parts = self.command_line(program);
        let mut command = Command::new(&parts[0]);
        command.args(&parts[1..]);
        command
    }

    /// `program` of the server's binaries, as the user that runs the server.
    fn command_line(&self, program: &str) -> Vec<String> {
        let program = self.bin.join(program).display().to_string();
        if running_as_root() {
            vec!["runuser".into(), "-u".into(), "postgres".into(), "--".into(), program]
        } else {
            vec![program]
        }
    }

    /// The immediate stop, as a command line (for the watchdog).
    fn stop_command(&self) -> Vec<String> {
        let mut stop = self.command_line("pg_ctl");
        stop.extend(["-w", "-m", "immediate", "stop", "-D"].map(String::from));
        stop.push(self.data().display().to_string());
        stop
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-w", "-m", "immediate", "stop", "-D"]).arg(self.data()).output();
    }
}

/// `AIO_TEST_PG_BIN`, else the newest `/usr/lib/postgresql/{version}/bin` with `initdb`, else the
/// directory of `initdb` on `PATH`.
fn server_bin_dir() -> Result<PathBuf, String> {
    let missing = |looked: &str| {
        format!(
            "PostgreSQL is not reachable at 127.0.0.1:5432 and its server binaries (initdb, pg_ctl) were not found \
             (looked in {looked}): install them (apt-get install postgresql) or set \
             AIO_TEST_DATABASE_URL=postgres://user@host:port"
        )
    };
    if let Ok(dir) = std::env::var("AIO_TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").exists() {
            Ok(dir)
        } else {
            Err(missing(&format!("AIO_TEST_PG_BIN={}", dir.display())))
        };
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(initdb) = which("initdb").filter(|initdb| initdb.with_file_name("pg_ctl").exists()) {
        return Ok(initdb.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    Err(missing("/usr/lib/postgresql/*/bin and PATH"))
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn try_run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("run {command:?}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

fn run(command: &mut Command) {
    try_run(command).unwrap_or_else(|why| panic!("{why}"))
}
