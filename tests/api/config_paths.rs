//! Paths in a configuration file resolve against the file's folder, whatever the working folder; a
//! configuration that does not load changes nothing (no database, no account, no key printed).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{bearer, http_client, TestDatabase};

/// The checkout's own configuration file, named by an absolute path.
const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml");

/// The binary run from `folder`, with no `AIO__…` variable of the test's environment.
fn gateway_in(folder: &Path, config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aio-gateway"));
    for (name, _) in std::env::vars() {
        if name.starts_with("AIO__") {
            command.env_remove(name);
        }
    }
    command.current_dir(folder).arg("--config").arg(config).env_remove("DATABASE_URL").env_remove("RUST_LOG");
    command
}

#[tokio::test]
async fn started_from_another_folder_the_shipped_config_serves_the_seed_request() {
    let folder = tempfile::tempdir().expect("a working folder outside the checkout");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    // The catalog comes from the file (`models_path = "models.toml"`, beside it); the database and the
    // files are given in the environment, so they are relative to the working folder.
    let mut child = gateway_in(folder.path(), Path::new(SHIPPED_CONFIG))
        .arg("serve")
        .env("DATABASE_URL", "sqlite://state/gateway.db")
        .env("AIO__FILES__DIR", "state/files")
        .env("AIO__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("AIO__PROVIDERS__SIMULATED__DELAY_MS", "50")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve");
    let stdout = child.stdout.take().expect("stdout");
    // The bootstrap key is printed once, before the gateway serves.
    let key = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .map(|line| line.trim().to_owned())
        .find(|line| line.starts_with("aio_"))
        .expect("serve printed the bootstrap key");
    assert!(folder.path().join("state/gateway.db").exists(), "the database is relative to the working folder");

    let client = http_client();
    let base = format!("http://127.0.0.1:{port}");
    let created = client
        .post(format!("{base}/api/v1/images/generations"))
        .header(AUTHORIZATION, bearer(&key))
        .json(&json!({"prompt": "a lighthouse at dawn"}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::OK);
    let task: Value = created.json().await.expect("task JSON");
    let id = task["task_id"].as_str().expect("task_id").to_owned();
    assert_eq!(task["sub_model"], "seedream/4.5-text-to-image", "the default model of the file: {task}");

    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    let finished = loop {
        let task: Value = client
            .get(format!("{base}/api/v1/tasks/{id}"))
            .header(AUTHORIZATION, bearer(&key))
            .send()
            .await
            .expect("poll")
            .json()
            .await
            .expect("task JSON");
        if task["status"] != "pending" && task["status"] != "running" {
            break task;
        }
        assert!(std::time::Instant::now() < give_up, "the task never finished: {task}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(finished["status"], "succeeded", "{finished}");
}

/// A configuration file in `folder/conf` whose catalog does not exist, and the database it names.
fn config_with_missing_catalog(folder: &Path, database_url: &str) -> std::path::PathBuf {
    let conf = folder.join("conf");
    std::fs::create_dir_all(&conf).expect("conf folder");
    let file = conf.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[database]\nurl = \"{database_url}\"\n\n[catalog]\nmodels_path = \"missing.toml\"\n\n\
             [files]\ndir = \"state/files\"\n"
        ),
    )
    .expect("write the config");
    file
}

#[tokio::test]
async fn a_missing_catalog_stops_serve_before_it_creates_a_database_or_prints_a_key() {
    let folder = tempfile::tempdir().expect("temp folder");
    let elsewhere = tempfile::tempdir().expect("a working folder");
    let config = config_with_missing_catalog(folder.path(), "sqlite://state/gateway.db");
    let output = gateway_in(elsewhere.path(), &config).arg("serve").output().expect("run serve");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = folder.path().join("conf/missing.toml");
    assert!(stderr.contains("catalog.models_path"), "the message names the key: {stderr}");
    assert!(stderr.contains(&expected.display().to_string()), "the message names the file: {stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("aio_"), "no key was printed");
    for place in [folder.path().join("conf/state"), elsewhere.path().join("state")] {
        assert!(!place.exists(), "{} was created", place.display());
    }
}

#[tokio::test]
async fn a_missing_catalog_leaves_no_account_in_postgres() {
    let database = TestDatabase::new(2).await;
    let folder = tempfile::tempdir().expect("temp folder");
    let config = config_with_missing_catalog(folder.path(), &database.url);
    for args in [&["serve"][..], &["accounts", "create", "--name", "acme", "--credits", "5"]] {
        let output = gateway_in(folder.path(), &config).args(args).output().expect("run the CLI");
        assert!(!output.status.success(), "{args:?} should refuse the configuration");
        assert!(String::from_utf8_lossy(&output.stderr).contains("catalog.models_path"));
    }
    // The template database is already migrated; nothing was added to it.
    let accounts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(&database.pool).await.expect("count");
    assert_eq!(accounts, 0);
}
