//! Settings: built-in defaults, then the TOML file, then `AIO__SECTION__KEY` environment variables
//! (and `DATABASE_URL`). The types refuse bad values as they are read (a zero where a count or a wait
//! must be positive, a name outside a closed set, an address that does not parse), and the error names
//! the key; [`Settings::validate`] checks only rules across fields. One file per area.
//!
//! A relative path written in the file is relative to the file's folder (the file is moved with what it
//! names); one given in the environment or as a default is relative to the working folder.

mod auth;
mod billing;
mod catalog;
mod durations;
mod files;
mod lists;
mod openai;
mod providers;
mod server;
mod tasks;
mod webhooks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::bail;
use figment::error::{Actual, Kind};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use auth::{AuthSettings, JwtAlgorithm, JwtSettings, SessionSettings};
pub use billing::{Package, StripeSettings, STRIPE_SECRET_KEY_ENV, STRIPE_WEBHOOK_SECRET_ENV};
pub use catalog::{BillingSettings, BootstrapSettings, CatalogSettings};
pub use durations::{format_duration, parse_duration};
pub use files::{FileSettings, ImageType, ResultSettings, RetentionSettings, S3Settings, StoreKind};
pub use openai::{EventSettings, OpenAiSettings};
pub use providers::{ProviderKind, ProviderMode, ProviderSettings, SubmitWindow};
pub use server::{DatabaseBackend, DatabaseSettings, LogFormat, LogSettings, RateLimitSettings, Role, ServerSettings};
pub use tasks::TaskSettings;
pub use webhooks::{BodyVersion, WebhookSettings};

pub const DEFAULT_CONFIG_PATH: &str = "config/gateway.toml";
/// An embedded SQLite file: a first start needs no database server.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/aio-gateway.db";

/// What a zero (or negative number) where a positive one is needed reads as, whichever type refused it.
const ABOVE_ZERO: &str = "must be above 0";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub catalog: CatalogSettings,
    pub billing: BillingSettings,
    pub bootstrap: BootstrapSettings,
    pub tasks: TaskSettings,
    pub files: FileSettings,
    pub results: ResultSettings,
    pub retention: RetentionSettings,
    pub webhooks: WebhookSettings,
    pub log: LogSettings,
    pub rate_limit: RateLimitSettings,
    pub openai: OpenAiSettings,
    pub events: EventSettings,
    pub providers: BTreeMap<String, ProviderSettings>,
}

impl Settings {
    /// Loads `path` (or the default path when it exists), then the environment.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Settings> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        let file = match path {
            Some(path) if !path.exists() => bail!("config file {} does not exist", path.display()),
            Some(path) => Some(path),
            None => Some(Path::new(DEFAULT_CONFIG_PATH)).filter(|path| path.exists()),
        };
        if let Some(file) = file {
            // `file_exact`: `Toml::file` would also search the parent folders for a relative path.
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("AIO__").split("__"));
        if let Ok(url) = std::env::var("DATABASE_URL") {
            figment = figment.merge(("database.url", url));
        }
        let mut settings: Settings = figment.extract().map_err(|e| anyhow::anyhow!(describe_figment_error(e)))?;
        if let Some(folder) = file.and_then(Path::parent) {
            settings.resolve_paths_from(&figment, folder);
        }
        settings.validate()?;
        for provider in settings.providers.values_mut() {
            provider.read_key();
        }
        settings.billing.stripe.read_secrets();
        Ok(settings)
    }

    /// Makes every relative path that the config file set relative to `folder`, the file's folder.
    /// Values from the environment or the defaults stay as they are (relative to the working folder).
    /// Every setting that names a file or folder is listed here.
    fn resolve_paths_from(&mut self, figment: &Figment, folder: &Path) {
        let from_file = |key: &str| {
            figment.find_metadata(key).is_some_and(|meta| meta.source.as_ref().is_some_and(|s| s.file_path().is_some()))
        };
        let within = |path: &Path| -> Option<PathBuf> {
            (!path.as_os_str().is_empty() && path.is_relative()).then(|| folder.join(path))
        };
        for (key, path) in [
            ("catalog.models_path", &mut self.catalog.models_path),
            ("files.dir", &mut self.files.dir),
            ("auth.jwt.public_key_path", &mut self.auth.jwt.public_key_path),
            ("bootstrap.key_file", &mut self.bootstrap.key_file),
        ] {
            if let Some(resolved) = within(path).filter(|_| from_file(key)) {
                *path = resolved;
            }
        }
        if from_file("database.url") {
            if let Some(url) = sqlite_url_within(&self.database.url, folder) {
                self.database.url = url;
            }
        }
    }

    /// Demo, live or staging: whether a real provider is active, and the staging flag.
    pub fn provider_mode(&self) -> ProviderMode {
        let real = self.providers.values().any(|p| p.kind != ProviderKind::Simulated && p.is_active());
        match (real, self.catalog.allow_simulated_fallback) {
            (false, _) => ProviderMode::Demo,
            (true, false) => ProviderMode::Live,
            (true, true) => ProviderMode::Staging,
        }
    }

    /// Checks the rules across fields that the types cannot: every problem is reported, each naming
    /// its key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems: Vec<String> =
            self.providers.iter().flat_map(|(id, provider)| provider.problems(id)).collect();
        problems.extend(billing::package_problems(&self.billing.packages, &self.billing.stripe));
        if self.files.store == StoreKind::S3 && self.files.s3.bucket.is_empty() {
            problems.push("files.s3.bucket: needed when files.store = \"s3\"".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration:\n  {}", problems.join("\n  "))
        }
    }
}

/// `sqlite://relative/file?options` with the file made relative to `folder`; `None` for any other URL (a
/// PostgreSQL one, an absolute path, an in-memory database).
fn sqlite_url_within(url: &str, folder: &Path) -> Option<String> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let (file, options) = rest.split_once('?').map_or((rest, None), |(file, options)| (file, Some(options)));
    if file.is_empty() || file.starts_with(':') || Path::new(file).is_absolute() {
        return None;
    }
    let joined = folder.join(file);
    let options = options.map(|o| format!("?{o}")).unwrap_or_default();
    Some(format!("sqlite://{}{options}", joined.display()))
}

/// Figment's errors already name the key; make them one line per problem, word the refusals of the
/// non-zero and enum types like the gateway's own, and never echo values of keys that could be secrets.
fn describe_figment_error(error: figment::Error) -> String {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let kind = match &e.kind {
                Kind::InvalidValue(Actual::Unsigned(0), expected) if expected.starts_with("a nonzero") => {
                    ABOVE_ZERO.into()
                }
                Kind::InvalidValue(Actual::Signed(n), expected) if *n <= 0 && expected.starts_with("a nonzero") => {
                    ABOVE_ZERO.into()
                }
                Kind::UnknownVariant(found, expected) => format!("`{found}` is not one of {}", expected.join(", ")),
                kind => kind.to_string(),
            };
            if key.is_empty() {
                kind
            } else {
                format!("{key}: {kind}")
            }
        })
        .collect();
    format!("invalid configuration:\n  {}", lines.join("\n  "))
}
#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;

    /// The defaults with `key` set to `value`, as the file or the environment would set it; an error
    /// as `check-config` prints it.
    fn with(key: &str, value: impl Serialize) -> Result<Settings, String> {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge((key, value))
            .extract()
            .map_err(describe_figment_error)
    }

    fn refusal(key: &str, value: impl Serialize) -> String {
        with(key, value).map(|_| ()).expect_err(key)
    }

    /// The defaults and this TOML text.
    fn from_toml(text: &str) -> Result<Settings, String> {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(describe_figment_error)
    }

    #[test]
    fn a_zero_where_a_positive_value_is_needed_is_refused_naming_the_key() {
        for key in [
            "server.body_limit_bytes",
            "database.max_connections",
            "auth.session.ttl_secs",
            "tasks.deadline_secs",
            "tasks.poll_initial_ms",
            "tasks.poll_max_ms",
            "tasks.retry_initial_ms",
            "tasks.tick_ms",
            "tasks.lease_secs",
            "tasks.batch_size",
            "tasks.max_in_flight",
            "tasks.max_queued_per_account",
            "tasks.max_queue_secs",
            "results.max_bytes",
            "results.timeout_secs",
            "files.link_ttl_secs",
            "retention.interval_secs",
            "retention.batch_size",
            "webhooks.timeout_secs",
            "webhooks.tick_ms",
            "webhooks.max_in_flight",
            "rate_limit.requests_per_minute",
            "rate_limit.burst",
            "rate_limit.max_concurrent_creates",
        ] {
            let error = refusal(key, 0);
            assert!(error.contains(&format!("{key}: must be above 0")), "{error}");
        }
        assert!(refusal("tasks.batch_size", -1).contains("tasks.batch_size: must be above 0"));
        // Where 0 means "no wait", it stays allowed.
        assert_eq!(with("tasks.dispatch_wait_ms", 0).map(|s| s.tasks.dispatch_wait), Ok(Duration::ZERO));
        assert_eq!(with("server.shutdown_grace_secs", 0).map(|s| s.server.shutdown_grace), Ok(Duration::ZERO));
    }

    #[test]
    fn a_submit_window_is_parsed_at_load_and_a_bad_one_refused_naming_the_key() {
        let settings = from_toml("[providers.kie]\nkind = \"kie\"\nmax_submits = \"20/10s\"").expect("loads");
        let window = settings.providers["kie"].max_submits.expect("a window");
        assert_eq!((window.max, window.window), (20, Duration::from_secs(10)));
        for bad in ["20", "0/10s", "20/0s", "20 per 10s", "x/1s"] {
            let toml = format!("[providers.kie]\nkind = \"kie\"\nmax_submits = \"{bad}\"");
            let error = from_toml(&toml).map(|_| ()).expect_err("refused");
            assert!(error.contains("providers.kie.max_submits"), "{error}");
        }
    }

    #[test]
    fn a_provider_timeout_of_zero_is_refused_naming_the_provider() {
        let error = from_toml("[providers.kie]\nkind = \"kie\"\ntimeout_secs = 0").map(|_| ()).expect_err("refused");
        assert!(error.contains("providers.kie.timeout_secs: must be above 0"), "{error}");
    }

    #[test]
    fn durations_keep_the_unit_of_their_key() {
        let settings = with("tasks.tick_ms", 50).expect("tick");
        assert_eq!(settings.tasks.tick, Duration::from_millis(50));
        let settings = with("tasks.deadline_secs", 2).expect("deadline");
        assert_eq!(settings.tasks.deadline, Duration::from_secs(2));
        let defaults = Settings::default();
        assert_eq!(defaults.tasks.deadline, Duration::from_secs(900));
        assert_eq!(defaults.tasks.poll_initial, Duration::from_millis(1000));
        assert_eq!(defaults.webhooks.secret_overlap, Duration::from_secs(86_400));
        let mut settings = from_toml("[providers.sim]\nkind = \"simulated\"\ndelay_ms = 250").expect("a provider");
        let sim = settings.providers.remove("sim").expect("sim");
        assert_eq!(
            (sim.timeout, sim.callback_poll, sim.delay),
            (Duration::from_secs(30), Duration::from_secs(30), Some(Duration::from_millis(250)))
        );
    }

    #[test]
    fn a_name_outside_a_closed_set_is_refused_naming_the_key_and_the_choices() {
        assert_eq!(
            refusal("log.format", "xml"),
            "invalid configuration:\n  log.format: `xml` is not one of pretty, json"
        );
        let error = refusal("auth.jwt.algorithm", "HS512");
        assert!(error.contains("auth.jwt.algorithm: `HS512` is not one of HS256, RS256, ES256"), "{error}");
        // The spellings are exact, as they always were.
        assert!(refusal("auth.jwt.algorithm", "hs256").contains("auth.jwt.algorithm"));
        assert_eq!(with("auth.jwt.algorithm", "ES256").map(|s| s.auth.jwt.algorithm), Ok(JwtAlgorithm::Es256));
        assert!(
            refusal("server.role", "everything").contains("server.role: `everything` is not one of all, api, worker")
        );
        assert_eq!(with("log.format", "json").map(|s| s.log.format), Ok(LogFormat::Json));
        let error = refusal("results.content_types", "image/png,image/gif");
        assert!(
            error.contains("results.content_types: `image/gif` is not one of image/png, image/jpeg, image/webp"),
            "{error}"
        );
        let types = with("results.content_types", "IMAGE/JPEG, image/webp").map(|s| s.results.content_types);
        assert_eq!(types, Ok(vec![ImageType::Jpeg, ImageType::Webp]));
    }

    #[test]
    fn addresses_are_socket_addresses_and_an_empty_metrics_address_is_none() {
        let error = refusal("server.listen", "localhost");
        assert!(error.contains("server.listen: `localhost` is not an address like 0.0.0.0:8080"), "{error}");
        let listen = with("server.listen", "0.0.0.0:9000").map(|s| s.server.listen);
        assert_eq!(listen, Ok(SocketAddr::from(([0, 0, 0, 0], 9000))));
        assert_eq!(Settings::default().server.metrics_listen, None);
        assert_eq!(with("server.metrics_listen", "").map(|s| s.server.metrics_listen), Ok(None));
        let metrics = with("server.metrics_listen", "127.0.0.1:9090").map(|s| s.server.metrics_listen);
        assert_eq!(metrics, Ok(Some(SocketAddr::from(([127, 0, 0, 1], 9090)))));
        let error = refusal("server.metrics_listen", "127.0.0.1");
        assert!(error.contains("server.metrics_listen: `127.0.0.1` is not an address like 127.0.0.1:9090"), "{error}");
    }

    #[test]
    fn single_values_are_checked_as_they_are_read() {
        assert!(
            refusal("database.url", "mysql://x").contains("database.url: (DATABASE_URL) must start with postgres://")
        );
        assert!(refusal("rate_limit.redis_url", "http://x").contains("rate_limit.redis_url: must start with redis://"));
        assert!(refusal("server.public_base_url", "not a url").contains("server.public_base_url: not a URL"));
        assert!(refusal("bootstrap.credits", -1).contains("bootstrap.credits: must not be negative"));
        assert!(refusal("billing.usd_per_credit", -0.5).contains("billing.usd_per_credit: must be a number ≥ 0"));
    }

    #[test]
    fn console_admin_accounts_come_as_a_list_one_id_or_a_comma_separated_string() {
        let key = "auth.session.admin_accounts";
        let ids = |settings: Result<Settings, String>| settings.map(|s| s.auth.session.admin_accounts);
        assert_eq!(ids(with(key, vec![1, 7])), Ok(vec![1, 7]));
        assert_eq!(ids(with(key, 3)), Ok(vec![3]));
        // What AIO__AUTH__SESSION__ADMIN_ACCOUNTS=1,7 produces.
        assert_eq!(ids(with(key, "1, 7")), Ok(vec![1, 7]));
        assert_eq!(ids(with(key, "")), Ok(vec![]));
        assert!(with(key, "1,admin").is_err());
        assert!(Settings::default().auth.session.admin_accounts.is_empty());
    }

    #[test]
    fn webhook_lists_come_as_lists_or_comma_separated_strings() {
        let defaults = Settings::default().webhooks;
        let expected: Vec<String> = ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"].map(String::from).to_vec();
        assert_eq!(defaults.retry_schedule.iter().map(|d| format_duration(*d)).collect::<Vec<_>>(), expected);

        // What an environment variable such as AIO__WEBHOOKS__RETRY_SCHEDULE=0s,1s,2s produces: a string.
        let csv = with("webhooks.retry_schedule", "0s, 1s,2s,500ms").expect("comma-separated");
        let millis = [0, 1000, 2000, 500].map(Duration::from_millis).to_vec();
        assert_eq!(csv.webhooks.retry_schedule, millis);
        let list = with("webhooks.retry_schedule", ["0s", "1s", "2s", "500ms"]).expect("list");
        assert_eq!(list.webhooks.retry_schedule, millis);
        assert!(with("webhooks.retry_schedule", "0s,soon").is_err());
        assert!(with("webhooks.retry_schedule", "5").is_err(), "a duration needs a unit");

        let cidrs = with("webhooks.allowed_private_cidrs", "10.0.0.0/8,fd00::/8").expect("cidrs");
        let nets: Vec<String> = cidrs.webhooks.allowed_private_cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/8", "fd00::/8"]);
        assert!(with("webhooks.allowed_private_cidrs", "").expect("empty").webhooks.allowed_private_cidrs.is_empty());
        assert!(with("webhooks.allowed_private_cidrs", "10.0.0.0/33").is_err());
    }

    #[test]
    fn durations_parse_and_format_both_ways() {
        for text in ["0s", "500ms", "5s", "5m", "2h", "1d", "90s"] {
            assert_eq!(format_duration(parse_duration(text).expect(text)), text);
        }
        assert!(parse_duration("5x").is_err() && parse_duration("").is_err() && parse_duration("-1s").is_err());
    }

    #[test]
    fn a_provider_is_active_only_once_its_key_variable_is_set() {
        let mut kie = ProviderSettings {
            api_key_env: Some("AIO_SURELY_UNSET_VARIABLE".into()),
            ..ProviderSettings::new(ProviderKind::Kie)
        };
        kie.read_key();
        assert!(!kie.is_active());
        // Any variable that is set will do for the test; PATH always is.
        kie.api_key_env = Some("PATH".into());
        kie.read_key();
        assert!(kie.is_active());
        assert!(
            !format!("{kie:?}").contains(&std::env::var("PATH").unwrap_or_default()),
            "the key is redacted in Debug"
        );
        assert!(ProviderSettings::new(ProviderKind::Simulated).is_active());
    }

    #[test]
    fn a_worker_node_needs_a_base_url_and_a_key_variable() {
        let mut settings = Settings::default();
        settings.providers.insert("node30".into(), ProviderSettings::new(ProviderKind::Worker));
        let error = settings.validate().expect_err("refused").to_string();
        assert!(
            error.contains("providers.node30.base_url") && error.contains("providers.node30.api_key_env"),
            "{error}"
        );
        let node = settings.providers.get_mut("node30").expect("node30");
        node.base_url = Some("http://127.0.0.1:8081".into());
        node.api_key_env = Some("NODE30_API_KEY".into());
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn billing_packages_are_checked_naming_the_key() {
        let good = "[[billing.packages]]\nid = \"starter\"\ncredits = 1000\namount = 500\ncurrency = \"usd\"\nlabel = \"1,000 credits\"\n";
        let settings = from_toml(good).expect("a package");
        assert!(settings.validate().is_ok());
        assert_eq!(settings.billing.packages[0].credits, 1000);
        assert_eq!(settings.billing.stripe.api_base, "https://api.stripe.com");
        let bad = format!("{good}{}", good.replace("credits = 1000", "credits = 0").replace("\"usd\"", "\"USD\""));
        let error = from_toml(&bad).expect("parses").validate().expect_err("refused").to_string();
        for problem in [
            "billing.packages[1].id: `starter` is listed twice",
            "billing.packages[1].credits",
            "billing.packages[1].currency",
        ] {
            assert!(error.contains(problem), "{problem} in {error}");
        }
        assert!(from_toml(&format!("{good}colour = \"red\"")).is_err(), "unknown package keys are refused");
        let settings = from_toml("[billing.stripe]\napi_base = \"stripe\"").expect("parses");
        assert!(settings.validate().expect_err("refused").to_string().contains("billing.stripe.api_base"));
    }

    #[test]
    fn the_file_store_is_local_or_s3_and_s3_needs_a_bucket() {
        assert!(refusal("files.store", "gcs").contains("files.store: `gcs` is not one of local, s3"));
        let defaults = Settings::default();
        assert_eq!((defaults.files.store, defaults.files.link_ttl), (StoreKind::Local, Duration::from_secs(86_400)));
        assert_eq!((defaults.retention.results_days, defaults.retention.tasks_days), (0, 0), "kept forever");
        assert_eq!(defaults.retention.audit_days, 365, "the audit log is kept a year");
        let s3 = from_toml("[files]\nstore = \"s3\"\n[files.s3]\nendpoint = \"http://minio:9000\"\npath_style = true")
            .expect("s3");
        assert!(s3.validate().expect_err("no bucket").to_string().contains("files.s3.bucket"));
        assert!(refusal("files.public_base_url", "cdn").contains("files.public_base_url"));
    }

    #[test]
    fn an_empty_schedule_is_refused() {
        let error = refusal("webhooks.retry_schedule", Vec::<String>::new());
        assert!(error.contains("webhooks.retry_schedule: needs at least one entry"), "{error}");
        assert!(refusal("webhooks.retry_schedule", "").contains("webhooks.retry_schedule"));
    }

    #[test]
    fn relative_paths_in_the_file_resolve_against_its_folder_and_defaults_against_the_working_folder() {
        let folder = tempfile::tempdir().expect("temp folder");
        let file = folder.path().join("gateway.toml");
        std::fs::write(
            &file,
            "[database]\nurl = \"sqlite://../data/gw.db?mode=rwc\"\n[catalog]\nmodels_path = \"models.toml\"\n\
             [auth.jwt]\npublic_key_path = \"/etc/aio/key.pem\"\n",
        )
        .expect("write the config");
        let settings = Settings::load(Some(&file)).expect("load");
        assert_eq!(settings.catalog.models_path, folder.path().join("models.toml"));
        assert_eq!(
            settings.database.url,
            format!("sqlite://{}?mode=rwc", folder.path().join("../data/gw.db").display())
        );
        // Absolute in the file, and a default the file does not set: unchanged.
        assert_eq!(settings.auth.jwt.public_key_path, PathBuf::from("/etc/aio/key.pem"));
        assert_eq!(settings.files.dir, Settings::default().files.dir);
    }

    #[test]
    fn only_relative_sqlite_files_move() {
        let folder = Path::new("/srv/aio/config");
        assert_eq!(
            sqlite_url_within("sqlite://data/a.db", folder).as_deref(),
            Some("sqlite:///srv/aio/config/data/a.db")
        );
        assert_eq!(sqlite_url_within("sqlite:a.db", folder).as_deref(), Some("sqlite:///srv/aio/config/a.db"));
        for unchanged in ["sqlite:///var/a.db", "sqlite::memory:", "sqlite://:memory:", "postgres://u@h/d"] {
            assert_eq!(sqlite_url_within(unchanged, folder), None, "{unchanged}");
        }
    }
}
