//! Rate limits: 429 `rate_limited` with `Retry-After` after the burst, and recovery; a key's own
//! limit; the cap on concurrent creates; the shared limit through Redis (see `services::redis_url`).

use std::num::NonZeroU32;
use std::time::Duration;

use aio_gateway::config::RateLimitSettings;
use aio_gateway::error::Error;
use aio_gateway::ratelimit::RateLimiter;
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_error, assert_ledger_consistent, spawn_app_with, TestApp};
use crate::services::redis_url;

/// A Redis key prefix no other test (or earlier run) uses.
fn unique_prefix() -> String {
    format!("aio-test-{}:", ulid::Ulid::new())
}

/// Sends `GET /api/v1/billing/credits` until the first 429; returns how many passed and its Retry-After.
async fn requests_until_limited(app: &TestApp, key: &str, at_most: usize) -> (usize, u64) {
    for passed in 0..at_most {
        let response = app.get(key, "/api/v1/billing/credits").await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after =
                response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            let retry_after = retry_after.expect("429 carries Retry-After in seconds");
            let (_, message) = assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
            assert!(message.contains("per minute"), "{message}");
            return (passed, retry_after);
        }
        assert_eq!(response.status(), StatusCode::OK);
    }
    panic!("no 429 within {at_most} requests");
}

/// Waits out a Retry-After; then the key works again.
async fn recovers_after(app: &TestApp, key: &str, retry_after: u64) {
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(app.get(key, "/api/v1/billing/credits").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_key_is_limited_after_its_burst_and_recovers() {
    let app = spawn_app_with(|s| {
        s.rate_limit.requests_per_minute = NonZeroU32::new(60).unwrap();
        s.rate_limit.burst = NonZeroU32::new(5).unwrap();
    })
    .await;
    let (_, key) = app.new_account(100).await;
    let (_, other) = app.new_account(100).await;
    let (passed, retry_after) = requests_until_limited(&app, &key, 50).await;
    // The burst, plus at most what trickled in while the requests were sent.
    assert!((5..=7).contains(&passed), "{passed} requests passed");
    // Limits are per key: another key is unaffected.
    assert_eq!(app.get(&other, "/api/v1/billing/credits").await.status(), StatusCode::OK);
    // A refused create holds nothing.
    assert_error(app.create(&key, json!({"prompt": "x"})).await, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(app.count_tasks().await, 0);
    recovers_after(&app, &key, retry_after).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_key_with_its_own_limit_uses_it() {
    let app = spawn_app_with(|s| {
        s.rate_limit.requests_per_minute = NonZeroU32::new(6000).unwrap();
        s.rate_limit.burst = NonZeroU32::new(2).unwrap();
    })
    .await;
    let (_, key) = app.new_account(100).await;
    sqlx::query("UPDATE api_keys SET rate_limit_per_minute = 1")
        .execute(app.pool())
        .await
        .expect("set the key's limit");
    let (passed, retry_after) = requests_until_limited(&app, &key, 50).await;
    assert_eq!(passed, 2, "the burst only: one request a minute trickles in after it");
    assert!(retry_after > 10, "the next request is allowed only after about a minute: {retry_after}");
}

#[tokio::test]
async fn creates_beyond_the_concurrency_cap_get_429() {
    // The cap itself: a second slot while the only one is taken is a 429 with Retry-After: 1.
    let settings =
        RateLimitSettings { max_concurrent_creates: std::num::NonZeroUsize::MIN, ..RateLimitSettings::default() };
    let limiter = RateLimiter::new(&settings).expect("limiter");
    let slot = limiter.create_permit().expect("the first slot");
    match limiter.create_permit() {
        Err(Error::RateLimited { retry_after_secs, .. }) => assert_eq!(retry_after_secs, 1),
        Err(other) => panic!("expected rate_limited, got {other:?}"),
        Ok(_) => panic!("a second slot was handed out"),
    }
    drop(slot);
    assert!(limiter.create_permit().is_ok(), "a released slot is free again");

    // Over HTTP: racing creates either get their task or a 429 envelope, and nothing refused is held.
    let app = spawn_app_with(|s| s.rate_limit.max_concurrent_creates = std::num::NonZeroUsize::MIN).await;
    let (_, key) = app.new_account(1000).await;
    let responses = futures::future::join_all((0..12).map(|_| app.create(&key, json!({"prompt": "x"})))).await;
    let mut created = 0;
    for response in responses {
        if response.status() == StatusCode::OK {
            created += 1;
        } else {
            assert_eq!(response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
            assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
        }
    }
    assert!(created >= 1);
    assert_eq!(app.count_tasks().await, created);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn with_redis_the_limit_is_enforced_and_recovers() {
    let prefix = unique_prefix();
    let redis = redis_url();
    let app = spawn_app_with(|s| {
        s.rate_limit.requests_per_minute = NonZeroU32::new(60).unwrap();
        s.rate_limit.burst = NonZeroU32::new(4).unwrap();
        s.rate_limit.redis_url = redis.clone();
        s.rate_limit.redis_prefix = prefix.clone();
    })
    .await;
    let (_, key) = app.new_account(100).await;
    let (passed, retry_after) = requests_until_limited(&app, &key, 50).await;
    assert!((4..=6).contains(&passed), "{passed} requests passed");
    // The state is in Redis, under the prefix, with an expiry.
    let client = redis::Client::open(redis.as_str()).expect("redis client");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect to Redis");
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut connection).await.expect("KEYS");
    // The key's state, and (once the account's own limit has counted) the account's: nothing else.
    assert!(keys.iter().any(|k| k.starts_with(&format!("{prefix}rl:key_"))), "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with(&format!("{prefix}rl:key_")) || k.starts_with(&format!("{prefix}rl:account_"))),
        "{keys:?}"
    );
    // Every state expires (the account's, far below its limit, may already have: PTTL -2). PTTL 0 is an
    // expiry under a millisecond away; -1 would be a state that never expires.
    for state in &keys {
        let ttl: i64 = redis::cmd("PTTL").arg(state).query_async(&mut connection).await.expect("PTTL");
        assert!(ttl >= 0 || (ttl == -2 && state.contains(":rl:account_")), "the state expires: {state} {ttl}");
    }
    recovers_after(&app, &key, retry_after).await;
}

/// Sends `requests` checks of `key_id` to the limiters in turn; returns how many passed.
async fn passes(limiters: &[&RateLimiter], key_id: &str, requests: usize) -> usize {
    let mut passed = 0;
    for i in 0..requests {
        if limiters[i % limiters.len()].check_key(key_id, None).await.is_ok() {
            passed += 1;
        }
    }
    passed
}

/// Two limiters (two replicas) on one Redis share one budget per key; each limits alone without it.
#[tokio::test]
async fn replicas_share_the_limit_through_redis() {
    let shared = RateLimitSettings {
        requests_per_minute: NonZeroU32::new(60).unwrap(),
        burst: NonZeroU32::new(6).unwrap(),
        max_concurrent_creates: std::num::NonZeroUsize::new(10).unwrap(),
        redis_url: redis_url(),
        redis_prefix: unique_prefix(),
        ..RateLimitSettings::default()
    };
    let (a, b) = (RateLimiter::new(&shared).expect("limiter"), RateLimiter::new(&shared).expect("limiter"));
    let passed = passes(&[&a, &b], "key_shared", 20).await;
    assert!((6..=7).contains(&passed), "one budget of 6 for both replicas, {passed} passed");

    let alone = RateLimitSettings { redis_url: String::new(), ..shared };
    let (a, b) = (RateLimiter::new(&alone).expect("limiter"), RateLimiter::new(&alone).expect("limiter"));
    let passed = passes(&[&a, &b], "key_alone", 20).await;
    assert!((12..=14).contains(&passed), "a budget of 6 per process, {passed} passed");
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_to_the_process_limit() {
    let settings = RateLimitSettings {
        requests_per_minute: NonZeroU32::new(60).unwrap(),
        burst: NonZeroU32::new(3).unwrap(),
        max_concurrent_creates: std::num::NonZeroUsize::new(10).unwrap(),
        // Nothing listens on port 1.
        redis_url: "redis://127.0.0.1:1".into(),
        redis_prefix: unique_prefix(),
        ..RateLimitSettings::default()
    };
    let limiter = RateLimiter::new(&settings).expect("limiter");
    let passed = passes(&[&limiter], "key_fallback", 10).await;
    assert!((3..=4).contains(&passed), "{passed} passed");
}
