//! A private PostgreSQL cluster for one test: `initdb` into a temporary directory and `pg_ctl` on a
//! free port, so the test can stop and start *its* server while other suites keep using the shared
//! one on :5432. PostgreSQL refuses to run as root: as root, every command runs as the `postgres` OS
//! user (which then owns the directory).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

pub struct Cluster {
    bin: PathBuf,
    dir: TempDir,
    pub port: u16,
}

impl Cluster {
    /// Creates and starts the cluster (trust authentication, user `postgres`, 127.0.0.1 only).
    pub fn start() -> Cluster {
        let bin = newest_bin_dir();
        let dir = tempfile::Builder::new().prefix("aio-pg-").tempdir().expect("a directory for the cluster");
        if running_as_root() {
            run(Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir.path()));
        }
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("find a free port");
            probe.local_addr().expect("probe address").port()
        };
        let cluster = Cluster { bin, dir, port };
        // `--no-sync`: this throwaway cluster never needs to survive an OS crash.
        run(cluster
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "-D"])
            .arg(cluster.data()));
        cluster.pg_ctl_start();
        cluster
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
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=60 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "start", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("-o")
            .arg(options));
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-w", "-m", "immediate", "stop", "-D"]).arg(self.data()).output();
    }
}

/// `/usr/lib/postgresql/{newest version}/bin`, or `AIO_TEST_PG_BIN`.
fn newest_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("AIO_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (or set AIO_TEST_PG_BIN)")
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an installed PostgreSQL with initdb").1
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
