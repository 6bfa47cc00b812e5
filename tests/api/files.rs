//! The file store and its links (issue 18): results kept in a local folder or an S3-compatible bucket
//! (a real `moto_server` over HTTP, as AWS would be spoken to); links through the gateway signed with
//! the database's key (so any replica checks any link) and expiring; forged and expired links a 403;
//! byte ranges; a public base URL instead of signed links.

use aio_gateway::config::{Settings, StoreKind};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::{ACCEPT_RANGES, CACHE_CONTROL, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::StatusCode;
use sha2::Sha256;

use crate::fakes::kie::{self, FakeKie};
use crate::helpers::{assert_error, TestApp};
use crate::{rehost, services};

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The settings of a store in `bucket` on the test S3 server, under `prefix`.
fn s3(bucket: &str, prefix: &str) -> impl FnOnce(&mut Settings) {
    let (bucket, prefix, endpoint) = (bucket.to_owned(), prefix.to_owned(), services::s3_url());
    move |settings| {
        settings.files.store = StoreKind::S3;
        settings.files.s3.endpoint = endpoint;
        settings.files.s3.bucket = bucket;
        settings.files.s3.prefix = prefix;
        settings.files.s3.path_style = true;
    }
}

/// A driven gateway on the simulated provider, which stores its result in the file store.
async fn app(configure: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::builder().configure(configure).driven().spawn().await
}

/// Runs the seed request to success; returns the key, the task id and its image link.
async fn succeeded(app: &TestApp) -> (String, String, String) {
    let (_, key) = app.new_account(100).await;
    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let url = done["output"]["images"][0]["url"].as_str().expect("an image URL").to_owned();
    (key, done["task_id"].as_str().expect("task id").to_owned(), url)
}

/// `(name, exp, sig)` of a signed link.
fn parts(url: &str) -> (String, i64, String) {
    let parsed = reqwest::Url::parse(url).expect("a URL");
    let name = parsed.path().strip_prefix("/files/").expect("a /files/ link").to_owned();
    let query: std::collections::HashMap<String, String> = parsed.query_pairs().into_owned().collect();
    (name, query["exp"].parse().expect("exp is unix seconds"), query["sig"].clone())
}

/// The signature of `name` until `expires`, computed here from the key in the database: the link
/// format is HMAC-SHA256 over `{name}\n{exp}`, base64url without padding.
async fn sign(app: &TestApp, name: &str, expires: i64) -> String {
    let key = aio_gateway::files::link_key(&app.db).await.expect("the link key");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{name}\n{expires}").as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn a_result_link_is_signed_works_from_any_replica_and_refuses_forged_or_expired_links() {
    let app = app(|_| {}).await;
    let (key, task_id, url) = succeeded(&app).await;
    let (name, expires, signature) = parts(&url);
    let now = chrono::Utc::now().timestamp();
    assert!(expires > now && expires <= now + 86_400, "valid for the default day: {url}");
    assert_eq!(signature, sign(&app, &name, expires).await, "HMAC of name and expiry with the database's key");

    let response = app.client.get(&url).send().await.expect("GET the link");
    assert_eq!(response.status(), 200);
    let cache = response.headers()[CACHE_CONTROL].to_str().expect("ascii").to_owned();
    let max_age: i64 = cache
        .strip_prefix("private, max-age=")
        .and_then(|rest| rest.split(',').next())
        .and_then(|age| age.parse().ok())
        .unwrap_or_else(|| panic!("cacheable by the client while the link lives: {cache}"));
    assert!(max_age > 0 && max_age <= 86_400, "{cache}");
    assert_eq!(response.headers()[CONTENT_TYPE], "image/png");
    assert_eq!(response.headers()[ACCEPT_RANGES], "bytes");
    assert!(response.bytes().await.expect("bytes").starts_with(PNG_MAGIC));

    // Another replica on the same database (its own process, the same key) accepts the link.
    assert_eq!(app.file_store().await.check_link(&name, expires, &signature), Ok(()));

    let base = app.url(&format!("/files/{name}"));
    let expired = now - 1;
    for (link, why) in [
        (format!("{base}?exp={expired}&sig={}", sign(&app, &name, expired).await), "expired"),
        (format!("{base}?exp={}&sig={signature}", expires + 3600), "not valid"),
        (format!("{base}?exp={expires}&sig={}", sign(&app, "Other0name.png", expires).await), "not valid"),
        (format!("{base}?exp={expires}&sig=not-base64!"), "not valid"),
        (base.clone(), "not valid"),
    ] {
        let response = app.client.get(&link).send().await.expect("GET");
        let (_, message) = assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
        assert!(message.contains(why), "{link}: {message}");
    }

    // Every read of the task signs its link anew, with a fresh expiry.
    let again = app.get_task(&key, &task_id).await;
    let (same_name, later, _) = parts(again["output"]["images"][0]["url"].as_str().expect("url"));
    assert_eq!(same_name, name);
    assert!(later >= expires);
}

/// Ranges of the file the seed task stored: first bytes, last bytes, from an offset; a range past the
/// end is a 416 with the file's size.
async fn assert_ranges(app: &TestApp, url: &str) {
    let whole = app.client.get(url).send().await.expect("GET").bytes().await.expect("bytes");
    let size = whole.len();
    assert!(size > 100, "a real image: {size} bytes");
    for (range, expected, content_range) in [
        ("bytes=0-7", &whole[..8], format!("bytes 0-7/{size}")),
        ("bytes=-10", &whole[size - 10..], format!("bytes {}-{}/{size}", size - 10, size - 1)),
        ("bytes=100-", &whole[100..], format!("bytes 100-{}/{size}", size - 1)),
        (&format!("bytes=90-{}", size + 50) as &str, &whole[90..], format!("bytes 90-{}/{size}", size - 1)),
    ] {
        let response = app.client.get(url).header(RANGE, range).send().await.expect("GET a range");
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(response.headers()[CONTENT_RANGE].to_str().ok(), Some(content_range.as_str()), "{range}");
        assert_eq!(response.bytes().await.expect("bytes").as_ref(), expected, "{range}");
    }
    let response = app.client.get(url).header(RANGE, format!("bytes={size}-")).send().await.expect("GET");
    assert_eq!(response.headers()[CONTENT_RANGE].to_str().ok(), Some(format!("bytes */{size}").as_str()));
    assert_error(response, StatusCode::RANGE_NOT_SATISFIABLE, "invalid_request").await;
    // Several ranges (or another unit): the whole file.
    let response = app.client.get(url).header(RANGE, "bytes=0-1,5-9").send().await.expect("GET");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("bytes"), whole);
}

#[tokio::test]
async fn a_local_file_is_served_in_ranges() {
    let app = app(|_| {}).await;
    let (_, _, url) = succeeded(&app).await;
    assert_ranges(&app, &url).await;
}

#[tokio::test]
async fn results_go_to_the_s3_bucket_and_are_served_from_it_in_ranges() {
    let bucket = services::new_bucket().await;
    let app = app(s3(&bucket, "results/")).await;
    let (_, _, url) = succeeded(&app).await;
    let (name, _, _) = parts(&url);

    // The object is in the bucket under the prefix, with its content type: read with the S3 client
    // directly (signed requests to the server, not through the gateway).
    let bucket_client = object_store::aws::AmazonS3Builder::from_env()
        .with_endpoint(services::s3_url())
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .with_region("us-east-1")
        .build()
        .expect("an S3 client");
    let object =
        object_store::ObjectStore::get(&bucket_client, &format!("results/{name}").into()).await.expect("the object");
    assert_eq!(object.attributes.get(&object_store::Attribute::ContentType).map(|v| v.as_ref()), Some("image/png"));
    let stored = object.bytes().await.expect("bytes");
    assert!(stored.starts_with(PNG_MAGIC));
    let served = app.client.get(&url).send().await.expect("GET the link").bytes().await.expect("bytes");
    assert_eq!(served, stored, "the gateway serves the bucket's bytes");
    assert_ranges(&app, &url).await;
    assert!(app.file_store().await.exists(&name).await, "another replica's store finds it");
}

/// What the bucket holds (listed with the S3 client, not through the gateway).
async fn bucket_keys(bucket: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let client = object_store::aws::AmazonS3Builder::from_env()
        .with_endpoint(services::s3_url())
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .build()
        .expect("an S3 client");
    let listing: Vec<_> = object_store::ObjectStore::list(&client, None).try_collect().await.expect("list the bucket");
    listing.into_iter().map(|meta| meta.location.to_string()).collect()
}

#[tokio::test]
async fn a_rehosted_result_streams_into_s3_within_the_limits() {
    let fake = FakeKie::start().await;
    let bucket = services::new_bucket().await;
    let app = rehost::app(&fake, |settings| {
        rehost::rehosting(settings);
        s3(&bucket, "")(settings);
    })
    .await;
    let (_, key) = app.new_account(100).await;
    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let link = done["output"]["images"][0]["url"].as_str().expect("link");
    let served = app.client.get(link).send().await.expect("GET").bytes().await.expect("bytes");
    assert_eq!(served.as_ref(), kie::result_png().as_slice(), "byte-identical to the upstream image");
    assert_eq!(bucket_keys(&bucket).await, [parts(link).0]);

    // Too large: the task fails, costs nothing, and the upload leaves nothing in the bucket.
    let fake = FakeKie::start().await;
    let bucket = services::new_bucket().await;
    let app = rehost::app(&fake, |settings| {
        rehost::rehosting(settings);
        s3(&bucket, "")(settings);
        settings.results.max_bytes = std::num::NonZeroU64::new(16).unwrap();
    })
    .await;
    let (_, key) = app.new_account(100).await;
    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["error"]["message"].as_str().is_some_and(|m| m.contains("larger than 16 bytes")), "{done}");
    app.assert_balance(&key, 100, 0).await;
    assert!(bucket_keys(&bucket).await.is_empty());
}

#[tokio::test]
async fn with_a_public_base_url_links_point_there_and_need_no_signature() {
    let app = app(|settings| settings.files.public_base_url = "https://cdn.example.com/results".into()).await;
    let (_, _, url) = succeeded(&app).await;
    let name = url.strip_prefix("https://cdn.example.com/results/").unwrap_or_else(|| panic!("public: {url}"));
    assert!(!url.contains("sig="), "{url}");
    // The gateway still serves the file (a CDN in front of it fetches it there), unsigned and cacheable.
    let response = app.client.get(app.url(&format!("/files/{name}"))).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[CACHE_CONTROL], "public, max-age=31536000, immutable");
}

#[tokio::test]
async fn a_missing_file_is_a_404_after_the_signature_is_checked() {
    let app = app(|_| {}).await;
    let name = "NoSuchFile123.png";
    let expires = chrono::Utc::now().timestamp() + 60;
    let link = app.url(&format!("/files/{name}?exp={expires}&sig={}", sign(&app, name, expires).await));
    assert_error(app.client.get(&link).send().await.expect("GET"), StatusCode::NOT_FOUND, "not_found").await;
    let unsigned = app.url(&format!("/files/{name}"));
    assert_error(app.client.get(&unsigned).send().await.expect("GET"), StatusCode::FORBIDDEN, "forbidden").await;
}
