//! Rate limits: per API key (`rate_limit.requests_per_minute` with `rate_limit.burst`, or the key's
//! own `rate_limit_per_minute`), per account over all its keys and its console session
//! (`rate_limit.account_requests_per_minute`: more keys do not mean more requests), and a cap on
//! creates in flight across the process (`rate_limit.max_concurrent_creates`). All answer
//! `429 rate_limited` with `Retry-After`.
//!
//! The per-key limit is a GCRA (a token bucket without a timer): each request moves the key's
//! "theoretical arrival time" one emission interval (60 s / rate) ahead, and a request is refused
//! when that time would run more than `burst` intervals ahead of now. Without `rate_limit.redis_url`
//! each process keeps its own state (`governor`), so N replicas allow up to N× the rate. With it, the
//! state lives in Redis and one atomic Lua script updates it, so all replicas share one limit. If Redis
//! cannot be reached, the process falls back to its own limit (logged) rather than refusing traffic.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::RateLimitSettings;
use crate::error::Error;
use crate::monitoring;

/// GCRA in Redis, atomic. KEYS[1]: the key's state (its theoretical arrival time, in ms).
/// ARGV: emission interval in ms, burst. Returns `{allowed (1|0), retry_after_ms}`.
const GCRA_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
local ahead = next_tat - now
local allowed_ahead = burst * interval
if ahead > allowed_ahead then
  return {0, ahead - allowed_ahead}
end
redis.call('SET', KEYS[1], next_tat, 'PX', ahead)
return {1, 0}
";

pub struct RateLimiter {
    default_per_minute: u32,
    account_per_minute: u32,
    burst: NonZeroU32,
    /// Per-process state, one limiter per (key, rate); idle keys are forgotten.
    local: moka::sync::Cache<(String, u32), Arc<DefaultDirectRateLimiter>>,
    redis: Option<SharedState>,
    creates: Arc<Semaphore>,
}

struct SharedState {
    connection: redis::aio::ConnectionManager,
    script: redis::Script,
    prefix: String,
}

/// A slot among the creates in flight; released when dropped.
pub struct CreatePermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl RateLimiter {
    pub fn new(settings: &RateLimitSettings) -> anyhow::Result<RateLimiter> {
        let redis = match settings.redis_url.as_str() {
            "" => None,
            url => {
                // The URL may hold a password: never echoed in errors.
                let client = redis::Client::open(url)
                    .map_err(|_| anyhow::anyhow!("rate_limit.redis_url: not a valid Redis URL"))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_millis(500)))
                    .set_number_of_retries(1);
                let connection = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|_| anyhow::anyhow!("rate_limit.redis_url: cannot set up the Redis connection"))?;
                Some(SharedState {
                    connection,
                    script: redis::Script::new(GCRA_SCRIPT),
                    prefix: settings.redis_prefix.clone(),
                })
            }
        };
        Ok(RateLimiter {
            default_per_minute: settings.requests_per_minute.get(),
            account_per_minute: settings.account_requests_per_minute.get(),
            burst: settings.burst,
            local: moka::sync::Cache::builder().max_capacity(100_000).time_to_idle(Duration::from_secs(600)).build(),
            redis,
            creates: Arc::new(Semaphore::new(settings.max_concurrent_creates.get())),
        })
    }

    /// Counts one request of `key_id` against its limit (`per_minute` overrides the default).
    pub async fn check_key(&self, key_id: &str, per_minute: Option<u32>) -> Result<(), Error> {
        let per_minute = per_minute.unwrap_or(self.default_per_minute).max(1);
        self.check(key_id, per_minute, "key", "This API key").await
    }

    /// Counts one request of `account_id` (by any of its keys, or its console session) against the
    /// account's limit.
    pub async fn check_account(&self, account_id: i64) -> Result<(), Error> {
        self.check(&format!("account_{account_id}"), self.account_per_minute, "account", "This account").await
    }

    async fn check(&self, bucket: &str, per_minute: u32, kind: &'static str, who: &str) -> Result<(), Error> {
        let wait = match &self.redis {
            Some(shared) => match self.check_shared(shared, bucket, per_minute).await {
                Ok(wait) => wait,
                Err(error) => {
                    tracing::warn!(error = %error, "Redis rate limit unavailable; using this process's limit");
                    self.check_local(bucket, per_minute)
                }
            },
            None => self.check_local(bucket, per_minute),
        };
        match wait {
            None => Ok(()),
            Some(wait) => {
                monitoring::rate_limited(kind);
                Err(Error::RateLimited {
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                    message: format!(
                        "{who} is limited to {per_minute} requests per minute (bursts of {}); retry later.",
                        self.burst
                    ),
                })
            }
        }
    }

    fn check_local(&self, key_id: &str, per_minute: u32) -> Option<Duration> {
        let burst = self.burst;
        let limiter = self.local.get_with((key_id.to_owned(), per_minute), || {
            let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
            Arc::new(DefaultDirectRateLimiter::direct(Quota::per_minute(rate).allow_burst(burst)))
        });
        limiter.check().err().map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    async fn check_shared(
        &self,
        shared: &SharedState,
        key_id: &str,
        per_minute: u32,
    ) -> redis::RedisResult<Option<Duration>> {
        let interval_ms = (60_000 / u64::from(per_minute)).max(1);
        let mut connection = shared.connection.clone();
        let (allowed, retry_after_ms): (i64, i64) = shared
            .script
            .key(format!("{}rl:{key_id}", shared.prefix))
            .arg(interval_ms)
            .arg(self.burst.get())
            .invoke_async(&mut connection)
            .await?;
        Ok((allowed == 0).then(|| Duration::from_millis(retry_after_ms.max(1) as u64)))
    }

    /// A slot for one create; 429 when `rate_limit.max_concurrent_creates` are already in flight.
    pub fn create_permit(&self) -> Result<CreatePermit, Error> {
        match Arc::clone(&self.creates).try_acquire_owned() {
            Ok(permit) => Ok(CreatePermit(permit)),
            Err(_) => {
                monitoring::rate_limited("concurrency");
                Err(Error::RateLimited {
                    retry_after_secs: 1,
                    message: "The gateway is handling as many creates as it allows at once; retry shortly.".into(),
                })
            }
        }
    }
}
