//! The web console at `/console` (and `/` redirects there; `/console/models/{id}` is the same page,
//! showing that model): one HTML page with its scripts and style
//! sheet, plain files under `console/` embedded in the binary (no build step, nothing fetched from
//! elsewhere). The page is served under a strict Content-Security-Policy (no inline script or style,
//! requests to this origin only). Assets are named by their content hash (`core.3f2a….js`) and cached
//! for a year; the page itself is revalidated on every load, so a new binary is picked up at once.

use std::sync::OnceLock;

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::extract::ApiPath;
use crate::error::Error;

/// The page's `{{name}}` placeholders are replaced by the hashed URL of the asset `name`.
const PAGE: &str = include_str!("../../console/index.html");

/// `(name, content type, bytes)`: the scripts in the order the page loads them.
const SOURCES: [(&str, &str, &[u8]); 10] = [
    ("console.css", "text/css; charset=utf-8", include_bytes!("../../console/console.css")),
    ("core.js", "text/javascript; charset=utf-8", include_bytes!("../../console/core.js")),
    ("models.js", "text/javascript; charset=utf-8", include_bytes!("../../console/models.js")),
    ("model.js", "text/javascript; charset=utf-8", include_bytes!("../../console/model.js")),
    ("playground.js", "text/javascript; charset=utf-8", include_bytes!("../../console/playground.js")),
    ("keys.js", "text/javascript; charset=utf-8", include_bytes!("../../console/keys.js")),
    ("usage.js", "text/javascript; charset=utf-8", include_bytes!("../../console/usage.js")),
    ("admin.js", "text/javascript; charset=utf-8", include_bytes!("../../console/admin.js")),
    ("audit.js", "text/javascript; charset=utf-8", include_bytes!("../../console/audit.js")),
    ("billing.js", "text/javascript; charset=utf-8", include_bytes!("../../console/billing.js")),
];

/// Images may come from this gateway (`/files/…`) or from a provider's https URL.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    hashed_name: String,
    content_type: &'static str,
    bytes: &'static [u8],
}

struct Console {
    page: String,
    assets: Vec<Asset>,
}

fn console() -> &'static Console {
    static CONSOLE: OnceLock<Console> = OnceLock::new();
    CONSOLE.get_or_init(|| {
        let mut page = PAGE.to_owned();
        let assets = SOURCES
            .iter()
            .map(|&(name, content_type, bytes)| {
                let hash = hex::encode(&Sha256::digest(bytes)[..8]);
                let hashed_name = match name.rsplit_once('.') {
                    Some((stem, extension)) => format!("{stem}.{hash}.{extension}"),
                    None => format!("{name}.{hash}"),
                };
                page = page.replace(&format!("{{{{{name}}}}}"), &format!("/console/assets/{hashed_name}"));
                Asset { hashed_name, content_type, bytes }
            })
            .collect();
        Console { page, assets }
    })
}

fn secured(mut response: Response, cache: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(HeaderName::from_static("content-security-policy"), HeaderValue::from_static(CSP));
    headers.insert(HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff"));
    headers.insert(HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer"));
    headers.insert(HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY"));
    response
}

pub async fn root() -> Redirect {
    Redirect::to("/console")
}

pub async fn page() -> Response {
    let response = ([(CONTENT_TYPE, "text/html; charset=utf-8")], console().page.as_str()).into_response();
    secured(response, "no-cache")
}

pub async fn asset(ApiPath(name): ApiPath<String>) -> Result<Response, ApiError> {
    let asset = console().assets.iter().find(|a| a.hashed_name == name).ok_or_else(|| Error::not_found("Asset"))?;
    let response = ([(CONTENT_TYPE, asset.content_type)], asset.bytes).into_response();
    Ok(secured(response, "public, max-age=31536000, immutable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset_by_its_hash() {
        let console = console();
        assert!(!console.page.contains("{{"), "a placeholder was left in the page");
        for asset in &console.assets {
            assert!(console.page.contains(&format!("/console/assets/{}", asset.hashed_name)), "{}", asset.hashed_name);
        }
        assert!(!console.page.contains("<script>") && !console.page.contains("style="), "no inline script or style");
    }
}
