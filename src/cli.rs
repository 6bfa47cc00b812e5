//! The command line (SPEC §5). Admin commands print one JSON object on stdout with `--json`,
//! readable lines without it; failures go to stderr with a non-zero exit code.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::store::Db;
use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::Application;
use crate::audit::{self, Actor};
use crate::catalog::{self, Catalog};
use crate::config::Settings;
use crate::files::FileStore;
use crate::jwt::{self, JwtAuth, Role, SessionSigner};
use crate::limits::{self, Limits, LimitsPatch};
use crate::providers::Providers;
use crate::webhooks::secrets;
use crate::{accounts, ledger, store, telemetry};

#[derive(Debug, Parser)]
#[command(name = "aio-gateway", version, about = "Image-generation API gateway: keys, credits, tasks, providers.")]
pub struct Cli {
    /// Configuration file [default: config/gateway.toml when it exists].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run migrations, then serve the API and run the task engine.
    Serve,
    /// Run migrations and exit. With `--to`: copy this (SQLite) database into an empty PostgreSQL one.
    Migrate {
        /// Copy accounts, keys, ledger, tasks, webhooks and idempotency keys from the configured SQLite
        /// database into this empty PostgreSQL database (postgres://…), then verify balances and ledgers.
        #[arg(long, value_name = "POSTGRES_URL")]
        to: Option<String>,
    },
    /// Manage accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage credits.
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Manage outgoing webhooks.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Print recent audit log entries, newest first (one JSON object a line; `--json`: one list).
    Audit {
        /// Only this action, e.g. `credits.grant`, `key.revoke`.
        #[arg(long)]
        action: Option<String>,
        /// Only changes of this account.
        #[arg(long)]
        account: Option<i64>,
        /// How many: 1–100.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Session tokens (JWT) for the dashboard and admin routes.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Validate the configuration and catalog; exit non-zero if anything is wrong.
    CheckConfig,
    /// Ask the configured providers about their routes.
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// Exit 0 when the gateway on `server.listen` (or `--url`) answers `/readyz` with 200: the
    /// container HEALTHCHECK, with no curl in the image.
    Healthcheck {
        /// Base URL of the gateway [default: http://127.0.0.1:<port of server.listen>].
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// For every configured provider route, one authenticated call that bills nothing: reachable, key
    /// accepted, model exists, remaining balance (where the provider tells). Exit non-zero when a
    /// route is dead.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Sign an HS256 token with the secret in the environment variable `auth.jwt.secret_env`.
    Mint {
        #[arg(long)]
        account: i64,
        #[arg(long, value_enum)]
        role: TokenRole,
        /// Lifetime: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TokenRole {
    Admin,
    User,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Create an account, optionally with starting credits.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 0)]
        credits: i64,
    },
    /// Set an account's limits over all its keys (only the flags given change; `none` clears one).
    Limits {
        #[arg(long)]
        account: i64,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// The limits of a key or an account, as flags: each given one replaces the current value, `none`
/// clears it (no limit).
#[derive(Debug, clap::Args)]
pub struct LimitArgs {
    /// Model or sub-model ids, comma-separated, or `none` (every model).
    #[arg(long)]
    allowed_models: Option<String>,
    /// The most unfinished tasks at once, or `none`.
    #[arg(long)]
    max_in_flight: Option<String>,
    /// Credits per UTC calendar day, or `none`.
    #[arg(long)]
    daily_credit_cap: Option<String>,
    /// Credits per UTC calendar month, or `none`.
    #[arg(long)]
    monthly_credit_cap: Option<String>,
}

impl LimitArgs {
    fn patch(self) -> anyhow::Result<LimitsPatch> {
        fn number(flag: &str, value: Option<String>) -> anyhow::Result<Option<Option<i64>>> {
            value
                .map(|value| match value.as_str() {
                    "none" => Ok(None),
                    text => text.parse().map(Some).with_context(|| format!("--{flag}: a number or `none`")),
                })
                .transpose()
        }
        let allowed_models = self.allowed_models.map(|list| match list.as_str() {
            "none" => None,
            list => Some(list.split(',').map(|id| id.trim().to_owned()).filter(|id| !id.is_empty()).collect()),
        });
        Ok(LimitsPatch {
            allowed_models,
            max_in_flight: number("max-in-flight", self.max_in_flight)?,
            daily_credit_cap: number("daily-credit-cap", self.daily_credit_cap)?,
            monthly_credit_cap: number("monthly-credit-cap", self.monthly_credit_cap)?,
        })
    }
}

/// Applies `args` to `current`, model ids checked against the configured catalog's ids.
fn apply_limits(settings: &Settings, current: Limits, args: LimitArgs) -> anyhow::Result<Limits> {
    let models = catalog::read(&settings.catalog.models_path)?;
    let known = |id: &str| models.iter().any(|m| m.id == id || m.sub_models.iter().any(|s| s.id == id));
    Ok(args.patch()?.apply(current, known)?)
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key; it is printed once and never stored.
    Create {
        #[arg(long)]
        account: i64,
        #[arg(long)]
        name: Option<String>,
        /// RFC 3339 time after which the key stops working, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires_at: Option<DateTime<Utc>>,
    },
    /// Revoke a key by its id (`key_…`).
    Revoke { key_id: String },
    /// List an account's keys (prefixes only).
    List {
        #[arg(long)]
        account: i64,
    },
    /// Set a key's limits (only the flags given change; `none` clears one).
    Limits {
        key_id: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CreditsCommand {
    /// Add credits to an account, recorded in its ledger.
    Grant {
        #[arg(long)]
        account: i64,
        #[arg(long)]
        amount: i64,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// An account's webhook signing secret.
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print the account's current secret (`whsec_…`), creating it on first use.
    Show {
        #[arg(long)]
        account: i64,
    },
    /// Replace the account's secret and print the new one; the previous one keeps signing, next to
    /// it, for `webhooks.secret_overlap_secs`.
    Rotate {
        #[arg(long)]
        account: i64,
    },
}

pub async fn run(cli: Cli) -> ExitCode {
    let json = cli.json;
    match execute(cli).await {
        Ok(Some(output)) => {
            print(json, &output);
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => {
            if json {
                println!("{}", json!({"error": format!("{error:#}")}));
            }
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command; returns what to print (admin commands) or nothing (serve).
async fn execute(cli: Cli) -> anyhow::Result<Option<Value>> {
    let settings = Settings::load(cli.config.as_deref())?;
    match &cli.command {
        Command::CheckConfig => return check_config(&settings, cli.json).map(Some),
        Command::Healthcheck { url } => {
            healthcheck(&settings, url.as_deref()).await?;
            return Ok(Some(json!({"ready": true})));
        }
        // Signing needs no database: a token for an account that does not exist is refused when used.
        Command::Token(TokenCommand::Mint { account, role, ttl }) => {
            anyhow::ensure!(*account > 0, "--account must be an account id");
            let role = match role {
                TokenRole::Admin => Role::Admin,
                TokenRole::User => Role::User,
            };
            let token = jwt::mint(&settings.auth.jwt, *account, role, jwt::parse_ttl(ttl)?)?;
            return Ok(Some(json!({"token": token})));
        }
        _ => {}
    }
    // The whole configuration is checked before anything is opened, created or printed: a bad catalog
    // or key file must not leave a new database or a bootstrapped account behind. Logging starts after
    // it, so the catalog's warnings are logged once, when the application loads it again.
    check_parts(&settings)?;
    telemetry::init(&settings.log);
    // A SQLite file serves one gateway; a copy must not race one either.
    let _lock = match &cli.command {
        Command::Serve | Command::Migrate { to: Some(_) } => store::lock_single_process(&settings.database.url)?,
        _ => None,
    };
    let pool = store::connect(&settings.database).await?;
    store::migrate(&pool).await?;
    Ok(match cli.command {
        Command::Serve => {
            serve(settings, pool).await?;
            None
        }
        Command::Migrate { to: None } => Some(json!({"migrated": true})),
        Command::Migrate { to: Some(url) } => Some(copy_to_postgres(&pool, &settings, url).await?),
        Command::Accounts(AccountsCommand::Create { name, credits }) => {
            Some(json!({"account_id": accounts::create(&pool, &Actor::cli(), &name, credits).await?}))
        }
        Command::Accounts(AccountsCommand::Limits { account, limits: args }) => {
            let current = limits::of_account(&pool, account).await?.with_context(|| format!("no account {account}"))?;
            let next = apply_limits(&settings, current.clone(), args)?;
            limits::set_account(&pool, &Actor::cli(), account, &current, &next).await?;
            Some(serde_json::to_value(accounts::get(&pool, account).await?)?)
        }
        Command::Keys(command) => Some(keys(&pool, &settings, command).await?),
        Command::Credits(CreditsCommand::Grant { account, amount, reason }) => {
            // This command only grants; the rest of the rules are the ledger's, as for the admin API.
            anyhow::ensure!(amount > 0, "--amount must be above 0");
            let reason = reason.as_deref().unwrap_or("granted by CLI");
            let entry = ledger::change(&pool, &Actor::cli(), account, amount, reason)
                .await
                .with_context(|| format!("account {account}"))?;
            Some(json!({"balance": entry.balance_after}))
        }
        Command::Webhooks(WebhooksCommand::Secret(command)) => Some(webhook_secret(&pool, &settings, command).await?),
        Command::Audit { action, account, limit } => {
            let action = match action.as_deref() {
                None => None,
                Some(name) => Some(audit::Action::parse(name).with_context(|| {
                    format!("--action: one of {}", audit::Action::ALL.map(audit::Action::as_str).join(", "))
                })?),
            };
            let limit = crate::paging::limit(Some(limit)).map_err(|_| anyhow::anyhow!("--limit: 1 to 100"))?;
            let filter = audit::Filter { action, account_id: account, ..audit::Filter::default() };
            Some(json!({"entries": audit::page(&pool, &filter, None, limit).await?}))
        }
        Command::Providers(ProvidersCommand::Check) => {
            let (report, dead) = providers_check(&settings, &pool, cli.json).await?;
            if dead > 0 {
                print(cli.json, &report);
                anyhow::bail!("{dead} provider route(s) cannot serve");
            }
            Some(report)
        }
        Command::CheckConfig | Command::Token(_) | Command::Healthcheck { .. } => {
            unreachable!("handled before connecting")
        }
    })
}

/// `check-config`: every error of the catalog (including routes to providers that are not
/// configured) fails; warnings (inactive providers, models without an active route) are printed on
/// stderr (and listed in the `--json` output).
fn check_config(settings: &Settings, json: bool) -> anyhow::Result<Value> {
    let path = &settings.catalog.models_path;
    let report = catalog::check(&catalog::read(path)?, settings);
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    let errors: Vec<&String> = report.errors.iter().chain(&report.unknown_providers).collect();
    anyhow::ensure!(
        errors.is_empty(),
        "invalid catalog {}:\n  {}",
        path.display(),
        errors.iter().map(|e| e.as_str()).collect::<Vec<_>>().join("\n  ")
    );
    let catalog = check_parts(settings)?;
    let offered: Vec<&str> = catalog.models().iter().map(|m| m.id.as_str()).collect();
    let mode = catalog.mode().as_str();
    Ok(if json {
        json!({"ok": true, "mode": mode, "models_path": path, "models_offered": offered, "warnings": report.warnings})
    } else {
        json!({"ok": true, "mode": mode, "models_path": path, "models_offered": offered.join(", ")})
    })
}

/// Loads what the settings name besides themselves (the catalog, the session key files), as serving
/// would: an error names the setting and the file.
fn check_parts(settings: &Settings) -> anyhow::Result<Catalog> {
    let catalog = Catalog::load(settings).context("catalog.models_path")?;
    JwtAuth::from_settings(&settings.auth.jwt)?;
    SessionSigner::from_settings(&settings.auth.jwt)?;
    Ok(catalog)
}

/// `providers check`: each real route of the live catalog, checked once; returns the report and how
/// many routes are dead.
async fn providers_check(settings: &Settings, pool: &Db, json: bool) -> anyhow::Result<(Value, usize)> {
    let catalog = Catalog::load(settings)?;
    let files = FileStore::new(settings.files.dir.clone(), &settings.server.public_base_url)?;
    let providers = Providers::from_settings(settings, pool, &files)?;
    // (provider, upstream model) → the sub-models it serves.
    let mut routes: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for sub in catalog.models().iter().flat_map(|m| &m.sub_models) {
        for route in sub.routes.iter().filter(|r| !catalog.is_simulated(&r.provider)) {
            routes.entry((route.provider.clone(), route.upstream_model.clone())).or_default().push(sub.id.clone());
        }
    }
    let (mut rows, mut dead) = (Vec::new(), 0);
    for ((provider_id, upstream_model), sub_models) in routes {
        let Some(provider) = providers.get(&provider_id) else { continue };
        let check = provider.check(&upstream_model).await;
        dead += usize::from(check.dead());
        let verdict = if check.dead() { "DEAD" } else { "ok" };
        rows.push(if json {
            let mut row = json!({"provider": provider_id, "upstream_model": upstream_model, "sub_models": sub_models,
                                 "ok": !check.dead()});
            if let (Some(row), Value::Object(fields)) = (row.as_object_mut(), serde_json::to_value(&check)?) {
                row.extend(fields);
            }
            row
        } else {
            let known = |value: Option<bool>| value.map_or("?".to_owned(), |v| v.to_string());
            let balance = check.balance.map(|b| format!(", balance {b}")).unwrap_or_default();
            json!(format!(
                "{verdict} {provider_id} {upstream_model}: reachable {}, key accepted {}, model exists {}{balance} ({})",
                known(check.reachable),
                known(check.key_accepted),
                known(check.model_exists),
                check.detail
            ))
        });
    }
    Ok((json!({"mode": catalog.mode().as_str(), "routes": rows, "dead": dead}), dead))
}

async fn keys(pool: &Db, settings: &Settings, command: KeysCommand) -> anyhow::Result<Value> {
    Ok(match command {
        KeysCommand::Create { account, name, expires_at } => serde_json::to_value(
            accounts::create_key(pool, &Actor::cli(), account, name.as_deref(), expires_at).await?,
        )?,
        KeysCommand::Revoke { key_id } => {
            anyhow::ensure!(accounts::revoke_key(pool, &Actor::cli(), &key_id).await?, "no active key {key_id}");
            json!({"key_id": key_id, "revoked": true})
        }
        KeysCommand::List { account } => json!({"keys": accounts::list_keys(pool, account).await?}),
        KeysCommand::Limits { key_id, limits: args } => {
            let current = limits::of_key(pool, None, &key_id).await?.with_context(|| format!("no key {key_id}"))?;
            let next = apply_limits(settings, current.clone(), args)?;
            limits::set_key(pool, &Actor::cli(), None, &key_id, &current, &next).await?;
            serde_json::to_value(accounts::key(pool, None, &key_id).await?)?
        }
    })
}

async fn webhook_secret(pool: &Db, settings: &Settings, command: SecretCommand) -> anyhow::Result<Value> {
    let (SecretCommand::Show { account } | SecretCommand::Rotate { account }) = command;
    anyhow::ensure!(accounts::exists(pool, account).await?, "account {account} does not exist");
    let secret = match command {
        SecretCommand::Show { .. } => secrets::signing(pool, account).await?.current,
        SecretCommand::Rotate { .. } => {
            secrets::rotate(pool, &Actor::cli(), account, settings.webhooks.secret_overlap).await?
        }
    };
    Ok(json!({"secret": secret}))
}

/// Creates `path` readable by its owner only, refusing to overwrite an existing file.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

async fn serve(settings: Settings, pool: Db) -> anyhow::Result<()> {
    let bootstrap = settings.bootstrap.clone();
    // Built (and the port bound) before the bootstrap account exists: a gateway that cannot start
    // prints no key.
    let application = Application::build(settings, pool.clone()).await?;
    if bootstrap.enabled {
        if let Some(key) = accounts::bootstrap(&pool, bootstrap.credits).await? {
            let file = &bootstrap.key_file;
            if file.as_os_str().is_empty() {
                // Printed once, on stdout only: it is never logged and cannot be shown again.
                println!(
                    "Created account `default` with {} credits.\nIts API key (shown once, store it now):\n\n    {}\n",
                    bootstrap.credits, key.api_key
                );
            } else {
                write_private(file, &format!("{}\n", key.api_key))
                    .with_context(|| format!("bootstrap.key_file: cannot write {}", file.display()))?;
                tracing::info!(file = %file.display(), "created account `default`; its API key is in the file (mode 0600)");
            }
        }
    }
    let shutdown = CancellationToken::new();
    let signals = TaskTracker::new();
    signals.spawn(stop_on_signal(shutdown.clone()));
    signals.close();
    let served = application.run(shutdown.clone()).await;
    // Stopped by itself (an error): the signal watcher stops too.
    shutdown.cancel();
    signals.wait().await;
    served
}

/// `migrate --to`: the configured SQLite database into the empty PostgreSQL database at `url`.
async fn copy_to_postgres(source: &Db, settings: &Settings, url: String) -> anyhow::Result<Value> {
    let Db::Sqlite(source) = source else {
        anyhow::bail!("migrate --to copies from a SQLite database; database.url (DATABASE_URL) is not one");
    };
    anyhow::ensure!(
        crate::config::DatabaseBackend::of_url(&url) == Some(crate::config::DatabaseBackend::Postgres),
        "--to must be a PostgreSQL URL (postgres://…)"
    );
    let target = store::connect(&crate::config::DatabaseSettings { url, ..settings.database.clone() }).await?;
    store::migrate(&target).await?;
    let Db::Pg(target) = target else { anyhow::bail!("--to must be a PostgreSQL URL (postgres://…)") };
    let copied = crate::store::copy::sqlite_to_postgres(source, &target).await?;
    Ok(json!({"copied": copied, "verified": true}))
}

async fn healthcheck(settings: &Settings, url: Option<&str>) -> anyhow::Result<()> {
    let base = match url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            format!("http://127.0.0.1:{}", settings.server.listen.port())
        }
    };
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(3)).build()?;
    let response = client.get(format!("{base}/readyz")).send().await?;
    anyhow::ensure!(response.status().is_success(), "{base}/readyz answered {}", response.status());
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

fn print(json: bool, output: &Value) {
    if json {
        println!("{output}");
        return;
    }
    match output {
        Value::Object(fields) => {
            for (key, value) in fields {
                match value {
                    Value::String(s) => println!("{key}: {s}"),
                    Value::Array(items) => {
                        for item in items {
                            println!("{item}");
                        }
                    }
                    other => println!("{key}: {other}"),
                }
            }
        }
        other => println!("{other}"),
    }
}
