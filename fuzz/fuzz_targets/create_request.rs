//! Create-request bodies: any bytes are decoded as the route decodes them, then validated against
//! the shipped catalog. Nothing may panic (a refusal is an `Err`, as it is for the route).
#![no_main]

use std::sync::LazyLock;

use aio_gateway::catalog::{Catalog, CreateRequest};
use aio_gateway::config::{ProviderKind, ProviderSettings, Settings};
use aio_gateway::url_guard::Guard;
use libfuzzer_sys::fuzz_target;

static CATALOG: LazyLock<(Catalog, Guard)> = LazyLock::new(|| {
    let mut settings = Settings::default();
    settings.catalog.models_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/models.toml").into();
    // The providers the shipped catalog routes to.
    for (id, kind) in [("kie", ProviderKind::Kie), ("simulated", ProviderKind::Simulated)] {
        settings.providers.insert(id.into(), ProviderSettings::new(kind));
    }
    let catalog = Catalog::load(&settings).expect("the shipped catalog loads");
    (catalog, Guard::new(&settings.webhooks))
});

fuzz_target!(|data: &[u8]| {
    let (catalog, guard) = &*CATALOG;
    if let Ok(request) = serde_json::from_slice::<CreateRequest>(data) {
        let _ = catalog.validate(request, guard);
    }
});
