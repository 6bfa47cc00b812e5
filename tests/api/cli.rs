//! The command line against a real database: admin commands with `--json`, `check-config`, and the
//! first-start bootstrap that prints a key once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{http_client, models_path, spawn_app, TestDatabase};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml");

/// `check-config` on the catalog at `path`, which must fail: its stderr.
fn check_config_fails(path: &std::path::Path) -> String {
    let bad = gateway("postgres://unused@127.0.0.1/none")
        .arg("check-config")
        .env("AIO__CATALOG__MODELS_PATH", path)
        .output()
        .expect("run check-config");
    assert!(!bad.status.success());
    String::from_utf8_lossy(&bad.stderr).into_owned()
}

fn gateway(database_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aio-gateway"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--config", CONFIG])
        .env("DATABASE_URL", database_url)
        .env("AIO__CATALOG__MODELS_PATH", models_path())
        .env_remove("RUST_LOG");
    command
}

/// Runs an admin command with `--json` and returns its exit status and the one JSON object it printed.
fn run_json(database_url: &str, args: &[&str]) -> (bool, Value) {
    let Output { status, stdout, stderr } =
        gateway(database_url).arg("--json").args(args).output().expect("run the CLI");
    let text = String::from_utf8(stdout).expect("utf-8 output");
    let value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("one JSON object, got {text:?}: {e}; stderr: {}", String::from_utf8_lossy(&stderr)));
    (status.success(), value)
}

#[tokio::test]
async fn admin_commands_manage_accounts_keys_and_credits() {
    let app = spawn_app().await;
    let db = app.database_url().to_owned();

    let (ok, created) = run_json(&db, &["accounts", "create", "--name", "acme", "--credits", "50"]);
    assert!(ok, "{created}");
    let account = created["account_id"].as_i64().expect("account_id");

    let (ok, key) = run_json(&db, &["keys", "create", "--account", &account.to_string(), "--name", "ci"]);
    assert!(ok, "{key}");
    let api_key = key["api_key"].as_str().expect("api_key").to_owned();
    let key_id = key["key_id"].as_str().expect("key_id").to_owned();
    assert!(api_key.starts_with("aio_") && api_key.len() >= 36);

    let (ok, granted) = run_json(&db, &["credits", "grant", "--account", &account.to_string(), "--amount", "100"]);
    assert!(ok, "{granted}");
    assert_eq!(granted["balance"], 150);

    // The key minted by the CLI works over HTTP and sees the granted balance and its history.
    let credits = app.credits(&api_key).await;
    assert_eq!(credits["balance"], 150, "{credits}");
    let kinds: Vec<&str> =
        credits["ledger"].as_array().expect("ledger").iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["grant", "grant"]);

    // Listings show the prefix, never the key or its hash.
    let (ok, listed) = run_json(&db, &["keys", "list", "--account", &account.to_string()]);
    assert!(ok, "{listed}");
    let keys = listed["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["key_id"], key_id.as_str());
    assert!(api_key.starts_with(keys[0]["prefix"].as_str().expect("prefix")));
    assert!(!listed.to_string().contains(&api_key), "the listing must not contain the key");

    // Limits: only the flags given change; `none` clears one; unknown models are refused.
    let (ok, limited) = run_json(
        &db,
        &["keys", "limits", &key_id, "--allowed-models", "flux-dev,seedream-4-5", "--daily-credit-cap", "100"],
    );
    assert!(ok, "{limited}");
    assert_eq!(
        (&limited["allowed_models"], &limited["daily_credit_cap"]),
        (&json!(["flux-dev", "seedream-4-5"]), &json!(100))
    );
    let (ok, limited) =
        run_json(&db, &["keys", "limits", &key_id, "--daily-credit-cap", "none", "--max-in-flight", "3"]);
    assert!(ok, "{limited}");
    assert_eq!((&limited["daily_credit_cap"], &limited["max_in_flight"]), (&Value::Null, &json!(3)), "{limited}");
    assert_eq!(limited["allowed_models"], json!(["flux-dev", "seedream-4-5"]));
    let (ok, refused) = run_json(&db, &["keys", "limits", &key_id, "--allowed-models", "nope"]);
    assert!(!ok && refused["error"].as_str().is_some_and(|e| e.contains("nope")), "{refused}");
    let (ok, account_limits) =
        run_json(&db, &["accounts", "limits", "--account", &account.to_string(), "--monthly-credit-cap", "500"]);
    assert!(ok && account_limits["monthly_credit_cap"] == 500, "{account_limits}");

    let (ok, revoked) = run_json(&db, &["keys", "revoke", &key_id]);
    assert!(ok && revoked["revoked"] == true, "{revoked}");
    let (ok, again) = run_json(&db, &["keys", "revoke", &key_id]);
    assert!(!ok, "revoking twice fails: {again}");
    assert!(again["error"].as_str().is_some_and(|e| e.contains(&key_id)), "{again}");

    // Bad input fails with a message, not a panic.
    let (ok, refused) = run_json(&db, &["credits", "grant", "--account", "999999", "--amount", "5"]);
    assert!(!ok && refused["error"].as_str().is_some_and(|e| e.contains("999999")), "{refused}");
    let (ok, refused) = run_json(&db, &["credits", "grant", "--account", &account.to_string(), "--amount=-5"]);
    assert!(!ok, "{refused}");

    // Each change is in the audit log once, by the CLI, without the key; refusals left nothing.
    let (ok, audit) = run_json(&db, &["audit", "--account", &account.to_string(), "--limit", "100"]);
    assert!(ok, "{audit}");
    let actions: Vec<&str> =
        audit["entries"].as_array().expect("entries").iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(
        actions,
        ["key.revoke", "account.limits", "key.limits", "key.limits", "credits.grant", "key.create", "account.create"],
        "{audit}"
    );
    assert!(audit["entries"].as_array().expect("entries").iter().all(|e| e["actor"]["kind"] == "cli"));
    assert!(!audit.to_string().contains(&api_key), "no key in the audit log");
    let (ok, refused) = run_json(&db, &["audit", "--action", "credits"]);
    assert!(!ok && refused["error"].as_str().is_some_and(|e| e.contains("credits.grant")), "{refused}");
}

#[test]
fn check_config_reports_every_problem_and_fails() {
    let ok = gateway("postgres://unused@127.0.0.1/none").arg("check-config").output().expect("run check-config");
    assert!(ok.status.success(), "the shipped config is valid: {}", String::from_utf8_lossy(&ok.stderr));

    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = dir.path().join("models.toml");
    let text = std::fs::read_to_string(models_path())
        .expect("read the catalog")
        .replace("credits = 12", "credits = -12")
        .replace(
            "provider = \"kie\"\nprovider_label = \"KIE\"\n# Evidence: docs.kie.ai/market (Seedream4.5 - Edit)",
            "provider = \"nowhere\"\n# Evidence: docs.kie.ai/market (Seedream4.5 - Edit)",
        );
    assert!(text.contains("credits = -12") && text.contains("provider = \"nowhere\""), "both breakages applied");
    std::fs::write(&catalog, text).expect("write the broken catalog");
    let bad = gateway("postgres://unused@127.0.0.1/none")
        .arg("check-config")
        .env("AIO__CATALOG__MODELS_PATH", &catalog)
        .env("AIO__TASKS__DEADLINE_SECS", "0")
        .output()
        .expect("run check-config");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("tasks.deadline_secs"), "{stderr}");

    let stderr = check_config_fails(&catalog);
    assert!(stderr.contains("credits must not be negative"), "{stderr}");
    assert!(stderr.contains("provider `nowhere`"), "{stderr}");
}

#[tokio::test]
async fn webhook_secrets_are_shown_and_rotated_with_an_overlap() {
    let database = TestDatabase::new(2).await;
    let db = database.url.clone();
    let (_, created) = run_json(&db, &["accounts", "create", "--name", "hooks"]);
    let account = created["account_id"].as_i64().expect("account_id").to_string();

    let (ok, shown) = run_json(&db, &["webhooks", "secret", "show", "--account", &account]);
    assert!(ok, "{shown}");
    let first = shown["secret"].as_str().expect("secret").to_owned();
    assert!(first.starts_with("whsec_") && first.len() >= 6 + 44, "{first}");
    assert_eq!(shown, serde_json::json!({"secret": first}), "exactly the secret");
    let (_, again) = run_json(&db, &["webhooks", "secret", "show", "--account", &account]);
    assert_eq!(again["secret"], first.as_str(), "showing does not change it");

    let rotate = gateway(&db)
        .args(["--json", "webhooks", "secret", "rotate", "--account", &account])
        .env("AIO__WEBHOOKS__SECRET_OVERLAP_SECS", "600")
        .output()
        .expect("rotate");
    assert!(rotate.status.success(), "{}", String::from_utf8_lossy(&rotate.stderr));
    let rotated: Value = serde_json::from_slice(&rotate.stdout).expect("one JSON object");
    let second = rotated["secret"].as_str().expect("secret").to_owned();
    assert!(second.starts_with("whsec_") && second != first, "{rotated}");
    let (_, shown) = run_json(&db, &["webhooks", "secret", "show", "--account", &account]);
    assert_eq!(shown["secret"], second.as_str(), "the new secret is the current one");

    // The previous secret signs on for the configured overlap.
    let (previous, overlap): (String, f64) = sqlx::query_as(
        "SELECT previous_secret, EXTRACT(EPOCH FROM previous_expires_at - rotated_at)::float8 FROM webhook_secrets",
    )
    .fetch_one(&database.pool)
    .await
    .expect("the secrets row");
    assert_eq!(previous, first);
    assert!((overlap - 600.0).abs() < 1.0, "overlap {overlap}");

    let (ok, refused) = run_json(&db, &["webhooks", "secret", "show", "--account", "999999"]);
    assert!(!ok && refused["error"].as_str().is_some_and(|e| e.contains("999999")), "{refused}");
}

#[test]
fn webhook_lists_can_be_set_from_the_environment_as_comma_separated_values() {
    let check = |schedule: &str, cidrs: &str| {
        gateway("postgres://unused@127.0.0.1/none")
            .arg("check-config")
            .env("AIO__WEBHOOKS__RETRY_SCHEDULE", schedule)
            .env("AIO__WEBHOOKS__ALLOWED_PRIVATE_CIDRS", cidrs)
            .output()
            .expect("run check-config")
    };
    let ok = check("0s,1s,2s", "10.0.0.0/8,fd00::/8");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = check("0s,soon", "10.0.0.0/8");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("webhooks.retry_schedule"));
    let bad = check("0s", "10.0.0.0/99");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("webhooks.allowed_private_cidrs"));
}

/// Starts `serve` on a free port; returns the child and the first stdout line that holds a key, if any
/// appears before the gateway answers `/healthz`.
async fn serve_once(database_url: &str, files: &std::path::Path) -> Option<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let mut child = gateway(database_url)
        .arg("serve")
        .env("AIO__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("AIO__FILES__DIR", files)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve");
    let client = http_client();
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_ok_and(|response| response.status() == StatusCode::OK)
    {
        assert!(std::time::Instant::now() < give_up, "serve never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.split_whitespace().find(|word| word.starts_with("aio_")).map(str::to_owned))
}

#[tokio::test]
async fn first_start_creates_the_default_account_and_prints_its_key_once() {
    let database = TestDatabase::new(2).await;
    let files = tempfile::tempdir().expect("tempdir");
    let key = serve_once(&database.url, files.path()).await.expect("the first start prints a key");
    assert!(key.len() >= 36);

    let (name, balance): (String, i64) =
        sqlx::query_as("SELECT name, balance FROM accounts").fetch_one(&database.pool).await.expect("one account");
    assert_eq!((name.as_str(), balance), ("default", 1000));
    let (hash,): (Vec<u8>,) =
        sqlx::query_as("SELECT hash FROM api_keys").fetch_one(&database.pool).await.expect("one key");
    assert_eq!(hash, aio_gateway::auth::hash_key(&key).to_vec(), "only the hash is stored");

    assert_eq!(serve_once(&database.url, files.path()).await, None, "a second start prints no key");
    let (accounts,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM accounts").fetch_one(&database.pool).await.expect("count");
    assert_eq!(accounts, 1);
    let audited: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT action, actor_kind, actor_id FROM audit_log ORDER BY id")
            .fetch_all(&database.pool)
            .await
            .expect("the audit log");
    let system = |action: &str| (action.to_owned(), "system".to_owned(), Some("bootstrap".to_owned()));
    assert_eq!(audited, [system("account.create"), system("key.create")], "the first start, audited once");
}

#[tokio::test]
async fn token_mint_signs_a_session_token_the_gateway_accepts() {
    let app = crate::helpers::spawn_dashboard_app_with(|_| {}).await;
    let (account, _) = app.new_account(10).await;
    let output = gateway("postgres://unused@127.0.0.1/none")
        .args(["--json", "token", "mint", "--account", &account.to_string(), "--role", "admin", "--ttl", "1h"])
        .env("AIO__AUTH__JWT__SECRET_ENV", crate::helpers::JWT_SECRET_ENV)
        .env(crate::helpers::JWT_SECRET_ENV, crate::helpers::JWT_SECRET)
        .output()
        .expect("run token mint");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let token = printed["token"].as_str().expect("token");
    let response = app.with_bearer(reqwest::Method::GET, "/api/v1/admin/accounts", token).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::OK);

    // Without the secret in the environment it says which variable to set, and prints no token.
    let output = gateway("postgres://unused@127.0.0.1/none")
        .args(["--json", "token", "mint", "--account", "1", "--role", "user"])
        .env("AIO__AUTH__JWT__SECRET_ENV", "AIO_TEST_NO_SUCH_SECRET")
        .output()
        .expect("run token mint");
    assert!(!output.status.success());
    let printed: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert!(printed["error"].as_str().is_some_and(|e| e.contains("AIO_TEST_NO_SUCH_SECRET")), "{printed}");
    let bad_ttl = gateway("postgres://unused@127.0.0.1/none")
        .args(["token", "mint", "--account", "1", "--role", "user", "--ttl", "forever"])
        .env(crate::helpers::JWT_SECRET_ENV, crate::helpers::JWT_SECRET)
        .env("AIO__AUTH__JWT__SECRET_ENV", crate::helpers::JWT_SECRET_ENV)
        .output()
        .expect("run token mint");
    assert!(!bad_ttl.status.success() && String::from_utf8_lossy(&bad_ttl.stderr).contains("--ttl"));
}

// Multi-threaded: the in-process gateway must answer while this thread waits for the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_only_when_the_gateway_is_ready() {
    let app = spawn_app().await;
    let ready =
        gateway("postgres://unused@127.0.0.1/none").args(["healthcheck", "--url", &app.address]).output().expect("run");
    assert!(ready.status.success(), "{}", String::from_utf8_lossy(&ready.stderr));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let down = gateway("postgres://unused@127.0.0.1/none")
        .args(["healthcheck", "--url", &format!("http://127.0.0.1:{closed}")])
        .output()
        .expect("run");
    assert!(!down.status.success());
}

#[test]
fn check_config_warns_about_unused_routes_and_fails_on_bad_mappings_and_unknown_providers() {
    // The shipped configuration without provider keys: valid, with warnings for what is unused.
    let ok = gateway("postgres://unused@127.0.0.1/none")
        .args(["--json", "check-config"])
        .env_remove("WAVESPEED_API_KEY")
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stderr}");
    assert!(stderr.contains("warning: provider `wavespeed` is inactive ($WAVESPEED_API_KEY is unset)"), "{stderr}");
    let report: Value = serde_json::from_slice(&ok.stdout).expect("one JSON object");
    assert_eq!(report["ok"], true);
    assert!(report["warnings"].as_array().is_some_and(|w| !w.is_empty()), "{report}");
    // No key at all: demo mode, the simulated provider serves every model.
    assert_eq!(report["mode"], "demo", "{report}");
    assert_eq!(report["models_offered"].as_array().map(Vec::len), Some(11), "{report}");

    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = dir.path().join("models.toml");
    let text = std::fs::read_to_string(models_path()).expect("read the catalog");
    let broken = [
        // A value the parameter does not have, and so one of its values left unmapped.
        (
            "map.quality = { values = { basic = \"low\", high = \"high\" } }",
            "map.quality = { values = { basic = \"low\", ultra = \"high\" } }",
        ),
        // A parameter the model does not have.
        (
            "upstream_model = \"z-ai/cogview-4\"\n",
            "upstream_model = \"z-ai/cogview-4\"\nmap.style = { to = \"style\" }\n",
        ),
        // A provider the configuration does not have.
        (
            "provider = \"replicate\"\nprovider_label = \"Replicate\"\n# Evidence: replicate.com/google/nano-banana-2",
            "provider = \"midjourney\"\n# Evidence: replicate.com/google/nano-banana-2",
        ),
    ]
    .iter()
    .fold(text, |text, (from, to)| {
        assert!(text.contains(from), "the shipped catalog has {from:?}");
        text.replace(from, to)
    });
    std::fs::write(&catalog, broken).expect("write the broken catalog");
    let stderr = check_config_fails(&catalog);
    for expected in [
        "model `gpt-image-2-6-flare`: route `openai` → `gpt-image-2.6-flare`: map.quality: `ultra` is not one of the parameter's values (basic, high)",
        "model `gpt-image-2-6-flare`: route `openai` → `gpt-image-2.6-flare`: map.quality: the parameter's value `high` is not mapped",
        "model `cogview-4`: route `wavespeed` → `z-ai/cogview-4`: map.style: the model has no parameter `style`",
        "routes of nano-banana-2/text-to-image name provider `midjourney`, which is not configured",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    }
}

#[test]
fn check_config_refuses_a_model_mixing_simulated_and_real_routes_unless_staging() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = dir.path().join("models.toml");
    // A simulated fallback beside Seedream 4.5's KIE route: what once billed placeholders.
    let kie_route =
        "provider = \"kie\"\nprovider_label = \"KIE\"\n# Evidence: docs.kie.ai/market (Seedream4.5 - Text to Image)";
    let text = std::fs::read_to_string(models_path()).expect("read the catalog");
    assert!(text.contains(kie_route), "the shipped catalog routes Seedream 4.5 to KIE");
    let fallback = "provider = \"simulated\"\nupstream_model = \"seedream/4.5-text-to-image\"\npriority = 10\n\n[[models.sub_models.routes]]\n";
    std::fs::write(&catalog, text.replace(kie_route, &format!("{fallback}{kie_route}"))).expect("write");
    let stderr = check_config_fails(&catalog);
    assert!(stderr.contains("sub-model `seedream/4.5-text-to-image` mixes simulated and real routes"), "{stderr}");

    let staging = gateway("postgres://unused@127.0.0.1/none")
        .args(["--json", "check-config"])
        .env("AIO__CATALOG__MODELS_PATH", &catalog)
        .env("AIO__CATALOG__ALLOW_SIMULATED_FALLBACK", "true")
        .output()
        .expect("run check-config");
    assert!(staging.status.success(), "{}", String::from_utf8_lossy(&staging.stderr));
}

/// `providers check` against the fakes: one call per route that bills nothing; a model the provider
/// does not have makes the route dead and the exit non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_check_asks_each_route_without_billing() {
    use crate::fakes::{kie::FakeKie, openai::FakeOpenAi, replicate::FakeReplicate, wavespeed::FakeWaveSpeed};
    let database = TestDatabase::new(2).await;
    let (kie, replicate, openai, wavespeed) =
        (FakeKie::start().await, FakeReplicate::start().await, FakeOpenAi::start().await, FakeWaveSpeed::start().await);
    let run = |catalog: &std::path::Path| {
        let mut command = gateway(&database.url);
        command
            .args(["--json", "providers", "check"])
            .env("AIO__CATALOG__MODELS_PATH", catalog)
            .env("AIO__PROVIDERS__KIE__BASE_URL", kie.base_url())
            .env("KIE_API_KEY", crate::fakes::kie::KEY)
            .env("AIO__PROVIDERS__REPLICATE__BASE_URL", replicate.base_url())
            .env("REPLICATE_API_TOKEN", crate::fakes::replicate::KEY)
            .env("AIO__PROVIDERS__OPENAI__BASE_URL", openai.base_url())
            .env("OPENAI_API_KEY", crate::fakes::openai::KEY)
            .env("AIO__PROVIDERS__WAVESPEED__BASE_URL", wavespeed.base_url())
            .env("WAVESPEED_API_KEY", crate::fakes::wavespeed::KEY)
            .env_remove("FAL_KEY");
        let output = command.output().expect("run providers check");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let report: Value = serde_json::from_str(stdout.lines().next().unwrap_or_default()).unwrap_or_else(|e| {
            panic!("a JSON report, got {stdout:?} ({e}); {}", String::from_utf8_lossy(&output.stderr))
        });
        (output.status.success(), report)
    };
    let (ok, report) = run(&models_path());
    assert!(ok, "every shipped route is alive on the fakes: {report}");
    assert_eq!(report["mode"], "live");
    let routes = report["routes"].as_array().expect("routes");
    let route = |provider: &str, model: &str| {
        routes
            .iter()
            .find(|r| r["provider"] == provider && r["upstream_model"] == model)
            .unwrap_or_else(|| panic!("{provider} {model} in {report}"))
            .clone()
    };
    let nano = route("replicate", "google/nano-banana-2");
    assert_eq!(
        (nano["reachable"].clone(), nano["key_accepted"].clone(), nano["model_exists"].clone()),
        (true.into(), true.into(), true.into())
    );
    assert_eq!(route("openai", "gpt-image-2.6-sunburst")["model_exists"], true);
    let seedream = route("kie", "seedream/4.5-text-to-image");
    assert_eq!(
        (seedream["key_accepted"].clone(), seedream["balance"].clone()),
        (true.into(), 100.0.into()),
        "{seedream}"
    );
    assert_eq!(route("wavespeed", "z-ai/cogview-4")["balance"], 156.78);
    // Nothing was generated: no submit reached any fake.
    assert!(kie.creates().is_empty() && replicate.creates().is_empty() && wavespeed.submits().is_empty());

    // A shut-down model in the catalog: the route is dead, the exit non-zero.
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = dir.path().join("models.toml");
    let text = std::fs::read_to_string(models_path()).expect("read").replace("\"gpt-image-2.6-flare\"", "\"dall-e-3\"");
    std::fs::write(&catalog, text).expect("write");
    let (ok, report) = run(&catalog);
    assert!(!ok, "{report}");
    assert_eq!(report["dead"], 1, "{report}");
    let dead = routes_of(&report, "dall-e-3");
    assert_eq!((dead["ok"].clone(), dead["model_exists"].clone()), (false.into(), false.into()), "{dead}");
}

fn routes_of(report: &Value, model: &str) -> Value {
    report["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["upstream_model"] == model)
        .cloned()
        .unwrap_or_default()
}
