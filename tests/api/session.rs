//! The web console's sign-in: an API key exchanged for a session cookie (its attributes), the cookie
//! on dashboard and API-key routes, the same-origin check on state-changing requests (CSRF), sign-out,
//! and the console page itself (CSP, cache headers, the redirect from `/`).

use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, json_of, seed_request, spawn_app, spawn_app_with, TestApp};

/// Signs in with `key`; returns the `Set-Cookie` header and the `Cookie` header to send back.
async fn sign_in(app: &TestApp, key: &str) -> (String, String) {
    let response =
        app.client.post(app.url("/api/v1/session")).json(&json!({"api_key": key})).send().await.expect("sign in");
    assert_eq!(response.status(), StatusCode::OK);
    let set_cookie = response.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).expect("Set-Cookie").to_owned();
    let pair = set_cookie.split(';').next().expect("name=value").to_owned();
    (set_cookie, pair)
}

fn with_cookie(app: &TestApp, method: Method, path: &str, cookie: &str) -> reqwest_middleware::RequestBuilder {
    app.client.request(method, app.url(path)).header(COOKIE, cookie)
}

#[tokio::test]
async fn signing_in_sets_a_strict_http_only_cookie_that_opens_dashboard_and_key_routes() {
    let app = spawn_app().await;
    let (account_id, key) = app.new_account(100).await;
    let response =
        app.client.post(app.url("/api/v1/session")).json(&json!({"api_key": key})).send().await.expect("sign in");
    assert_eq!(response.status(), StatusCode::OK);
    let set_cookie = response.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).expect("Set-Cookie").to_owned();
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["account_id"], account_id);
    assert_eq!(body["role"], "user");
    assert!(body["expires_at"].as_str().is_some_and(|at| at.ends_with('Z')), "{body}");
    for attribute in ["aio_session=", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"] {
        assert!(set_cookie.contains(attribute), "{attribute} missing in {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain http: no Secure ({set_cookie})");
    assert!(!set_cookie.contains(&key), "the key itself is not in the cookie");
    let cookie = set_cookie.split(';').next().expect("pair");

    let session: Value = json_of(with_cookie(&app, Method::GET, "/api/v1/session", cookie)).await;
    assert_eq!((session["account_id"].clone(), session["role"].clone()), (json!(account_id), json!("user")));
    // A dashboard route and an API-key route, both by the cookie alone.
    let keys = with_cookie(&app, Method::GET, "/api/v1/keys", cookie).send().await.expect("GET keys");
    assert_eq!(keys.status(), StatusCode::OK);
    let credits: Value = json_of(with_cookie(&app, Method::GET, "/api/v1/billing/credits", cookie)).await;
    assert_eq!(credits["balance"], 100);
    // A user session is no admin.
    let admin = with_cookie(&app, Method::GET, "/api/v1/admin/accounts", cookie).send().await.expect("GET admin");
    assert_error(admin, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn the_cookie_is_secure_over_https_and_admin_accounts_sign_in_as_admin() {
    let app = spawn_app_with(|settings| {
        settings.server.public_base_url = "https://gateway.example.com".into();
        // Each test has its own database: its first account is 1.
        settings.auth.session.admin_accounts = vec![1];
    })
    .await;
    let (account_id, key) = app.new_account(10).await;
    assert_eq!(account_id, 1);
    let response =
        app.client.post(app.url("/api/v1/session")).json(&json!({"api_key": key})).send().await.expect("sign in");
    let set_cookie = response.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["role"], "admin");
    let cookie = set_cookie.split(';').next().unwrap_or_default();
    let accounts = with_cookie(&app, Method::GET, "/api/v1/admin/accounts", cookie).send().await.expect("GET admin");
    assert_eq!(accounts.status(), StatusCode::OK);

    // Behind a TLS-terminating proxy that says so, the cookie is Secure too.
    let plain = spawn_app().await;
    let (_, key) = plain.new_account(10).await;
    let response = plain
        .client
        .post(plain.url("/api/v1/session"))
        .header("x-forwarded-proto", "https")
        .json(&json!({"api_key": key}))
        .send()
        .await
        .expect("sign in");
    let set_cookie = response.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
}

#[tokio::test]
async fn bad_keys_bad_bodies_and_bad_cookies_are_refused() {
    let app = spawn_app().await;
    let (_, key) = app.new_account(10).await;
    let unknown = format!("aio_{}", "Z".repeat(40));
    for api_key in [unknown.as_str(), "", "not a key"] {
        let response =
            app.client.post(app.url("/api/v1/session")).json(&json!({"api_key": api_key})).send().await.expect("POST");
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let response = app.client.post(app.url("/api/v1/session")).json(&json!({"key": key})).send().await.expect("POST");
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    for cookie in ["aio_session=garbage", "aio_session=", "other=1"] {
        let response = with_cookie(&app, Method::GET, "/api/v1/keys", cookie).send().await.expect("GET");
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
        let response = with_cookie(&app, Method::GET, "/api/v1/billing/credits", cookie).send().await.expect("GET");
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // A revoked key signs in no more.
    let (_, cookie) = sign_in(&app, &key).await;
    let keys: Value =
        with_cookie(&app, Method::GET, "/api/v1/keys", &cookie).send().await.expect("GET").json().await.expect("JSON");
    let key_id = keys["data"][0]["key_id"].as_str().expect("key id").to_owned();
    let revoked = with_cookie(&app, Method::DELETE, &format!("/api/v1/keys/{key_id}"), &cookie)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let response =
        app.client.post(app.url("/api/v1/session")).json(&json!({"api_key": key})).send().await.expect("POST");
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn state_changing_requests_by_cookie_must_be_same_origin() {
    let app = spawn_app().await;
    let (_, key) = app.new_account(100).await;
    let (_, cookie) = sign_in(&app, &key).await;
    let create_key = || with_cookie(&app, Method::POST, "/api/v1/keys", &cookie).json(&json!({"name": "csrf"}));

    // No browser header at all, another site, a foreign or opaque Origin: refused.
    assert_error(create_key().send().await.expect("POST"), StatusCode::FORBIDDEN, "forbidden").await;
    for (header, value) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "http://evil.example"),
        ("origin", "null"),
    ] {
        let response = create_key().header(header, value).send().await.expect("POST");
        assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let task = with_cookie(&app, Method::POST, "/api/v1/images/generations", &cookie)
        .json(&seed_request())
        .send()
        .await
        .expect("POST");
    assert_error(task, StatusCode::FORBIDDEN, "forbidden").await;
    let rotate = with_cookie(&app, Method::POST, "/api/v1/webhooks/secret/rotate", &cookie)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("POST");
    assert_error(rotate, StatusCode::FORBIDDEN, "forbidden").await;
    let keys: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_keys").fetch_one(app.pool()).await.expect("count keys");
    assert_eq!(keys, 1, "nothing was created");

    // The console's own requests pass: Sec-Fetch-Site, or an Origin naming this gateway.
    let response = create_key().header("sec-fetch-site", "same-origin").send().await.expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = create_key().header("origin", app.address.as_str()).send().await.expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    let task = with_cookie(&app, Method::POST, "/api/v1/images/generations", &cookie)
        .header("sec-fetch-site", "same-origin")
        .json(&seed_request())
        .send()
        .await
        .expect("POST");
    assert_eq!(task.status(), StatusCode::OK);
    let task: Value = task.json().await.expect("JSON");
    let polled =
        with_cookie(&app, Method::GET, &format!("/api/v1/tasks/{}", task["task_id"].as_str().expect("id")), &cookie)
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .expect("GET");
    assert_eq!(polled.status(), StatusCode::OK, "reading needs no same-origin proof");
    // A bearer key is no cookie: no same-origin proof needed.
    assert_eq!(app.create(&key, seed_request()).await.status(), StatusCode::OK);

    // Signing in from another site is refused too (login CSRF).
    let response = app
        .client
        .post(app.url("/api/v1/session"))
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"api_key": key}))
        .send()
        .await
        .expect("POST");
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn signing_out_clears_the_cookie() {
    let app = spawn_app().await;
    let (_, key) = app.new_account(10).await;
    let (_, cookie) = sign_in(&app, &key).await;
    let response = with_cookie(&app, Method::DELETE, "/api/v1/session", &cookie)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cleared = response.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(
        cleared.starts_with("aio_session=;") && cleared.contains("Max-Age=0") && cleared.contains("HttpOnly"),
        "{cleared}"
    );
    // The browser then sends no cookie: nothing is signed in.
    let response = app.client.get(app.url("/api/v1/session")).send().await.expect("GET");
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let response = with_cookie(&app, Method::DELETE, "/api/v1/session", &cookie)
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("DELETE");
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn the_webhook_secret_is_revealed_and_rotated_with_the_session() {
    let app = spawn_app().await;
    let (_, key) = app.new_account(10).await;
    let (_, cookie) = sign_in(&app, &key).await;
    let shown: Value = json_of(with_cookie(&app, Method::GET, "/api/v1/webhooks/secret", &cookie)).await;
    let first = shown["secret"].as_str().expect("secret").to_owned();
    assert!(first.starts_with("whsec_"), "{shown}");
    let rotated = with_cookie(&app, Method::POST, "/api/v1/webhooks/secret/rotate", &cookie)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .expect("POST");
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated: Value = rotated.json().await.expect("JSON");
    assert!(rotated["secret"].as_str().is_some_and(|s| s.starts_with("whsec_") && s != first), "{rotated}");
    let again: Value = json_of(with_cookie(&app, Method::GET, "/api/v1/webhooks/secret", &cookie)).await;
    assert_eq!(again["secret"], rotated["secret"]);
    let response = app.client.get(app.url("/api/v1/webhooks/secret")).send().await.expect("GET");
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_csp_and_hashed_cached_assets() {
    let app = spawn_app().await;
    let root = app.client.get(app.url("/")).send().await.expect("GET /");
    assert!(root.status().is_redirection());
    assert_eq!(root.headers().get(LOCATION).and_then(|v| v.to_str().ok()), Some("/console"));

    let page = app.client.get(app.url("/console")).send().await.expect("GET /console");
    assert_eq!(page.status(), StatusCode::OK);
    let header = |name: &str| page.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(header(CONTENT_TYPE.as_str()).starts_with("text/html"));
    assert_eq!(header(CACHE_CONTROL.as_str()), "no-cache");
    let csp = header("content-security-policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let html = page.text().await.expect("HTML");
    let assets: Vec<&str> = html.split('"').filter(|part| part.starts_with("/console/assets/")).collect();
    assert!(assets.len() >= 2, "{html}");
    for asset in assets {
        let response = app.client.get(app.url(asset)).send().await.expect("GET asset");
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let cache = response.headers().get(CACHE_CONTROL).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(cache.contains("immutable") && cache.contains("max-age=31536000"), "{asset}: {cache}");
    }
    let missing = app.client.get(app.url("/console/assets/core.0000000000000000.js")).send().await.expect("GET");
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn the_task_list_filters_by_model_as_the_usage_page_asks() {
    let app = TestApp::builder().driven().spawn().await;
    let (_, key) = app.new_account(100).await;
    let task = app.create_ok(&key, seed_request()).await;
    let task_id = task["task_id"].as_str().expect("task id");
    assert_eq!(app.wait_terminal(&key, task_id).await["status"], "succeeded");
    for (query, found) in [
        ("model=seedream-4-5", 1),
        ("model=seedream/4.5-text-to-image", 1),
        ("model=seedream/4.5-text-to-image&status=succeeded", 1),
        ("model=seedream-4-5&status=failed", 0),
        ("model=seedream/4.5-edit", 0),
        ("model=no-such-model", 0),
    ] {
        let page = app.get_json(&key, &format!("/api/v1/tasks?{query}")).await;
        let ids: Vec<&str> =
            page["data"].as_array().expect("data").iter().filter_map(|t| t["task_id"].as_str()).collect();
        assert_eq!(ids.len(), found, "{query}: {page}");
        assert!(ids.iter().all(|id| *id == task_id), "{query}: {page}");
    }
}
