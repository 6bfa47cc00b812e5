//! The outbound URL guard at validation (SPEC §8): every non-public address in every spelling the URL
//! parser accepts, and the `localhost` names, are refused with 400 for `callback_url` and `image_urls`,
//! holding nothing; `webhooks.allow_http` and `webhooks.allowed_private_cidrs` open exactly what they
//! say. (Connect-time refusal is in `webhooks.rs`.) Apps whose URLs pass run with `role = api`: no
//! engine, so nothing is ever sent to those addresses.

use aio_gateway::config::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

/// Hosts that must never be called, each in the spellings that reach the same address.
const REFUSED_HOSTS: &[&str] = &[
    // loopback
    "127.0.0.1",
    "127.0.0.1.",
    "2130706433",
    "017700000001",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7f000001",
    "0x7F.1",
    "127.1",
    "127.0.1",
    "%31%32%37.0.0.1",
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",
    "localhost",
    "LOCALHOST",
    "localhost.",
    "api.localhost",
    // unspecified
    "0.0.0.0",
    "0",
    "[::]",
    // private
    "10.0.0.7",
    "012.0.0.7",
    "167772167",
    "172.16.5.4",
    "172.31.255.255",
    "192.168.1.10",
    "0xc0.0xa8.1.10",
    "[::ffff:10.0.0.1]",
    "[::ffff:c0a8:10a]",
    "[64:ff9b::10.0.0.1]",
    // link-local, cloud metadata
    "169.254.169.254",
    "2852039166",
    "0xa9.0xfe.0xa9.0xfe",
    "0251.0376.0251.0376",
    "[::ffff:169.254.169.254]",
    "[fe80::1]",
    // CGNAT
    "100.64.0.1",
    "100.127.255.254",
    // multicast, broadcast, reserved
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "[ff02::1]",
    // unique-local and site-local IPv6
    "[fd00::1]",
    "[fc00::1]",
    "[fec0::1]",
];

async fn assert_refused(app: &TestApp, key: &str, body: Value, field: &str) {
    let response = app.create(key, body.clone()).await;
    let (_, message) = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(message.contains(field), "{body}: message {message:?} names {field}");
}

async fn assert_nothing_held(app: &TestApp, key: &str) {
    let credits = app.credits(key).await;
    assert_eq!((credits["balance"].as_i64(), credits["held"].as_i64()), (Some(100), Some(0)), "{credits}");
    assert_eq!(app.count_tasks().await, 0, "no task was stored");
}

#[tokio::test]
async fn every_non_public_address_in_every_spelling_is_refused_on_create() {
    let app = spawn_app().await;
    let (_, key) = app.new_account(100).await;
    for host in REFUSED_HOSTS {
        let url = format!("https://{host}/hook");
        assert_refused(&app, &key, json!({"prompt": "a cat", "callback_url": url}), "`callback_url`").await;
        let edit = json!({"model": "seedream/4.5-edit", "prompt": "winter", "image_urls": [url]});
        assert_refused(&app, &key, edit, "`image_urls[0]`").await;
    }
    for url in ["https://user:pw@example.com/hook", "https://user@example.com/hook", "ftp://example.com/hook"] {
        assert_refused(&app, &key, json!({"prompt": "a cat", "callback_url": url}), "`callback_url`").await;
    }
    assert_nothing_held(&app, &key).await;
}

#[tokio::test]
async fn http_is_refused_unless_allowed_for_callbacks_and_image_urls() {
    let strict = spawn_app().await;
    let (_, key) = strict.new_account(100).await;
    let callback = json!({"prompt": "a cat", "callback_url": "http://example.com/hook"});
    let edit = json!({"model": "seedream/4.5-edit", "prompt": "winter", "image_urls": ["http://example.com/in.png"]});
    assert_refused(&strict, &key, callback.clone(), "https").await;
    assert_refused(&strict, &key, edit.clone(), "https").await;
    assert_nothing_held(&strict, &key).await;

    let open = spawn_app_with(|settings| {
        settings.server.role = Role::Api;
        settings.webhooks.allow_http = true;
    })
    .await;
    let (_, key) = open.new_account(100).await;
    open.create_ok(&key, callback).await;
    open.create_ok(&key, edit).await;
    // allow_http opens the scheme, not the addresses.
    assert_refused(&open, &key, json!({"prompt": "a cat", "callback_url": "http://127.0.0.1/hook"}), "`callback_url`")
        .await;
}

#[tokio::test]
async fn allowed_private_cidrs_open_exactly_the_listed_ranges() {
    let app = spawn_app_with(|settings| {
        settings.server.role = Role::Api;
        settings.webhooks.allowed_private_cidrs =
            vec!["10.20.0.0/16".parse().expect("cidr"), "fd12::/16".parse().expect("cidr")];
    })
    .await;
    let (_, key) = app.new_account(1000).await;
    for url in [
        "https://10.20.1.2/hook",
        "https://169083138/hook",
        "https://[::ffff:10.20.1.2]/hook",
        "https://[fd12::5]/hook",
    ] {
        app.create_ok(&key, json!({"prompt": "a cat", "callback_url": url})).await;
    }
    for url in ["https://10.21.0.1/hook", "https://127.0.0.1/hook", "https://localhost/hook", "https://[fd13::5]/hook"]
    {
        assert_refused(&app, &key, json!({"prompt": "a cat", "callback_url": url}), "`callback_url`").await;
    }
}
