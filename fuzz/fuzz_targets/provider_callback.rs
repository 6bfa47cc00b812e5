//! Provider callbacks: any bytes, as the body of a callback to each adapter that reads them (KIE,
//! WaveSpeed, Replicate, fal). The first byte picks the adapter, and whether its webhook secret is
//! configured (then the signature check runs first, against wrong headers). Nothing may panic.
//!
//! Polling answers go through the same record types; `tests/api/properties.rs` drives those through
//! a loopback upstream.
#![no_main]

use std::sync::LazyLock;

use aio_gateway::config::{ProviderKind, ProviderSettings, Settings};
use aio_gateway::files::FileStore;
use aio_gateway::providers::Providers;
use libfuzzer_sys::fuzz_target;
use reqwest::header::{HeaderMap, HeaderValue};

const IDS: [&str; 4] = ["kie", "wavespeed", "replicate", "fal"];

/// The adapters without webhook secrets (bodies are read in full) and with them.
static PROVIDERS: LazyLock<(tokio::runtime::Runtime, [Providers; 2])> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let providers = [false, true].map(|signed| runtime.block_on(providers(signed)));
    (runtime, providers)
});

async fn providers(signed: bool) -> Providers {
    let mut settings = Settings::default();
    let kinds = [ProviderKind::Kie, ProviderKind::Wavespeed, ProviderKind::Replicate, ProviderKind::Fal];
    settings.providers = IDS
        .iter()
        .zip(kinds)
        .map(|(id, kind)| {
            let mut provider = ProviderSettings::new(kind);
            // Nothing listens on port 9: fal's key fetch fails at once.
            provider.base_url = Some("http://127.0.0.1:9".into());
            provider.api_key = Some("fuzz-key".into());
            provider.webhook_hmac_key = signed.then(|| "fuzz-secret".into());
            provider.jwks_url = Some("http://127.0.0.1:9/jwks".into());
            (id.to_string(), provider)
        })
        .collect();
    let pool = aio_gateway::store::Db::from(sqlx::PgPool::connect_lazy("postgres://unused@127.0.0.1:9/unused").expect("lazy pool"));
    let files = FileStore::new(std::env::temp_dir().join("aio-fuzz-files"), "http://127.0.0.1:9").expect("files");
    Providers::from_settings(&settings, &pool, &files).expect("providers")
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let (runtime, providers) = &*PROVIDERS;
    let signed = pick & 0x80 != 0;
    let provider = providers[usize::from(signed)].get(IDS[pick as usize % IDS.len()]).expect("configured");
    // Signed inputs carry a (wrong) KIE-style signature with a current timestamp, past the check's
    // early exits.
    let mut headers = HeaderMap::new();
    if signed {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        headers.insert("x-webhook-timestamp", HeaderValue::from(now));
        headers.insert("x-webhook-signature", HeaderValue::from_static("AAAA"));
    }
    let _ = runtime.block_on(provider.read_callback(&headers, body));
});
