//! The delivery loop: claims due deliveries, signs and POSTs each, records the attempt and schedules
//! the next one. Like the engine, all of its state is in the database, so it survives restarts and
//! several gateways can share the queue; a delivery is sent at least once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::store::Db;
use chrono::Utc;
use reqwest::dns::Resolve;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::queue::{self, Attempt, Delivery, Next};
use super::retry::{self, Schedule};
use super::{secrets, signing};
use crate::config::WebhookSettings;
use crate::url_guard::{self, Guard};
use crate::work_queue::{Job, Runner};

/// How much of a receiver's answer is kept in the delivery log.
const EXCERPT_BYTES: usize = 2048;

/// Due deliveries claimed per tick, at most.
const BATCH: usize = 100;

pub struct Webhooks {
    pool: Db,
    client: reqwest::Client,
    guard: Guard,
    schedule: Schedule,
    settings: WebhookSettings,
    /// The background loop; it bounds the deliveries in flight.
    runner: Runner,
    /// This process's instance: its claims name it (see [`crate::instances`]).
    instance: String,
}

/// What one HTTP attempt came back with.
struct Answer {
    status: Option<StatusCode>,
    error: Option<String>,
    excerpt: Option<String>,
    retry_after: Option<Duration>,
}

impl Webhooks {
    /// `resolver` resolves host names before the guard filters them: the system's in production.
    pub fn new(
        pool: Db,
        settings: &WebhookSettings,
        resolver: Arc<dyn Resolve>,
        instance: &str,
    ) -> anyhow::Result<Arc<Webhooks>> {
        let guard = Guard::new(settings);
        let client = url_guard::client(&guard, resolver, settings.timeout)?;
        Ok(Arc::new(Webhooks {
            pool,
            client,
            guard,
            schedule: Schedule::new(settings.retry_schedule.clone()),
            settings: settings.clone(),
            runner: Runner::new("webhooks", settings.tick, BATCH, settings.max_in_flight.get()),
            instance: instance.to_owned(),
        }))
    }

    /// The wait between a task's end and its first delivery attempt.
    pub fn first_delay(&self) -> Duration {
        self.schedule.first()
    }

    /// What the deliveries' bodies look like (`webhooks.body_version`).
    pub fn body_version(&self) -> crate::config::BodyVersion {
        self.settings.body_version
    }

    /// Something became due: look now rather than at the next tick (this process only).
    pub fn wake(&self) {
        self.runner.wake();
    }

    /// Runs until `shutdown`: every tick, claim what is due and deliver it.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        self.runner.run(&self, shutdown).await;
    }

    /// Claims what is due now and starts delivering it; returns how many it claimed.
    pub async fn tick(self: &Arc<Self>) -> sqlx::Result<usize> {
        self.runner.tick(self).await.map(|(claimed, _)| claimed)
    }

    /// Delivers everything due now, one delivery after another, until nothing is due; returns how many
    /// attempts were made. The loop's work without the loop: tests drive the queue with it.
    pub async fn run_pending(&self) -> sqlx::Result<usize> {
        let mut worked = 0;
        loop {
            let due = queue::claim_due(&self.pool, BATCH as i64, self.lease(), &self.instance).await?;
            if due.is_empty() {
                return Ok(worked);
            }
            worked += due.len();
            for delivery in due {
                self.attempt(delivery).await;
            }
        }
    }

    /// Longer than an attempt can take, so a delivery is not claimed twice while it is being sent.
    fn lease(&self) -> Duration {
        self.settings.timeout + Duration::from_secs(30)
    }

    /// One attempt of one claimed delivery. A database error leaves it to its lease: due again later.
    async fn attempt(&self, delivery: Delivery) {
        let span = tracing::info_span!(
            "webhook",
            task_id = %delivery.task_id,
            delivery_id = %delivery.id,
            attempt = delivery.attempts + 1,
        );
        async {
            if let Err(error) = self.try_attempt(&delivery).await {
                tracing::warn!(error = %error, "webhook attempt not recorded; it is retried after its lease");
            }
        }
        .instrument(span)
        .await
    }

    async fn try_attempt(&self, delivery: &Delivery) -> sqlx::Result<()> {
        let signing = secrets::signing(&self.pool, delivery.account_id).await?;
        let attempted_at = Utc::now();
        let started = Instant::now();
        let answer = self.send(delivery, &signing.all(), attempted_at.timestamp()).await;
        let latency_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);

        let attempts = u32::try_from(delivery.attempts).unwrap_or(0) + 1;
        let next = match answer.status {
            Some(status) if status.is_success() => Next::Delivered,
            Some(StatusCode::GONE) => Next::Dead,
            _ => self.schedule.next(attempts, answer.retry_after).map_or(Next::Dead, Next::RetryIn),
        };
        let status_code = answer.status.map(|s| i32::from(s.as_u16()));
        tracing::info!(?status_code, latency_ms, error = ?answer.error, ?next, "webhook attempt");
        let attempt = Attempt {
            delivery_id: delivery.id.clone(),
            attempted_at,
            status_code,
            latency_ms,
            error: answer.error,
            response_excerpt: answer.excerpt,
        };
        if let Err(error) = queue::record(&self.pool, &attempt, next).await {
            // Whatever the detail was that the database refused, the attempt still counts and the next
            // one is scheduled: a delivery must never be re-sent forever for want of a log line.
            tracing::warn!(error = %error, "webhook attempt not recorded in full; recording it without its detail");
            let bare = Attempt {
                error: Some("The attempt's details could not be recorded.".into()),
                response_excerpt: None,
                ..attempt
            };
            queue::record(&self.pool, &bare, next).await?;
        }
        crate::monitoring::webhook_attempt(match next {
            Next::Delivered => "delivered",
            Next::Dead => "dead",
            Next::RetryIn(_) => "retry",
        });
        Ok(())
    }

    /// Signs and POSTs the frozen body. Never fails: whatever went wrong is in the answer.
    async fn send(&self, delivery: &Delivery, secrets: &[&str], timestamp: i64) -> Answer {
        let failed = |error: String| Answer { status: None, error: Some(error), excerpt: None, retry_after: None };
        // Literal addresses never reach the resolver: check the URL again, against today's settings.
        let url = match self.guard.check_url(&delivery.url) {
            Ok(url) => url,
            Err(why) => return failed(format!("refused by the outbound URL guard: the URL {why}")),
        };
        let signature = signing::signature_header(secrets, &delivery.webhook_id, timestamp, &delivery.body);
        let request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &delivery.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.body.clone());
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => return failed(self.describe(&error)),
        };
        let status = response.status();
        // A destination opened by `allowed_private_cidrs` is a private service: its answer is not for
        // clients to read (only its status is logged).
        let private = response.remote_addr().is_none_or(|addr| !url_guard::is_public(addr.ip()));
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
        let mut head = Vec::new();
        let mut error = (!status.is_success()).then(|| match status {
            s if s.is_redirection() => format!("HTTP {s}: redirects are not followed"),
            s => format!("HTTP {s}"),
        });
        while !private && head.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(read) => {
                    error.get_or_insert_with(|| format!("reading the answer failed: {}", self.describe(&read)));
                    break;
                }
            }
        }
        Answer { status: Some(status), error: error.map(|e| storable(&e)), excerpt: excerpt(&head), retry_after }
    }

    /// A transport error in words for the delivery log, which clients read: a name that is unknown
    /// and one that leads only to private addresses read the same (no internal DNS enumeration).
    fn describe(&self, error: &reqwest::Error) -> String {
        if let Some(refused) = url_guard::refused_by_guard(error) {
            return refused.to_string();
        }
        if error.is_timeout() {
            return format!("timed out after {} s", self.settings.timeout.as_secs());
        }
        let mut cause: &dyn std::error::Error = error;
        while let Some(source) = cause.source() {
            cause = source;
        }
        let what = if error.is_connect() { "connection failed" } else { "request failed" };
        storable(&format!("{what}: {cause}"))
    }
}

impl Job for Webhooks {
    type Item = Delivery;

    async fn claim(&self, limit: usize) -> sqlx::Result<Vec<Delivery>> {
        queue::claim_due(&self.pool, limit as i64, self.lease(), &self.instance).await
    }

    async fn work(self: Arc<Self>, delivery: Delivery) {
        self.attempt(delivery).await;
    }
}

/// At most the first [`EXCERPT_BYTES`] of an answer, as storable text, cut at a character boundary.
fn excerpt(head: &[u8]) -> Option<String> {
    if head.is_empty() {
        return None;
    }
    let text = storable(&String::from_utf8_lossy(&head[..head.len().min(EXCERPT_BYTES)]));
    let mut end = text.len().min(EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].to_owned()).filter(|text| !text.is_empty())
}

/// Text both databases store: without NUL, which PostgreSQL refuses in `text` (invalid UTF-8 is already
/// replaced by the lossy conversion).
fn storable(text: &str) -> String {
    text.replace('\0', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_at_most_2_kib_of_text() {
        assert_eq!(excerpt(b""), None);
        assert_eq!(excerpt(b"ok").as_deref(), Some("ok"));
        let long = "é".repeat(3000);
        let cut = excerpt(long.as_bytes()).expect("text");
        assert!(cut.len() <= EXCERPT_BYTES && cut.chars().all(|c| c == 'é'), "{}", cut.len());
        let binary = excerpt(&[0xff; 5000]).expect("text");
        assert!(binary.len() <= EXCERPT_BYTES);
        assert_eq!(excerpt(b"a\0b\xffc").as_deref(), Some("ab\u{fffd}c"));
        assert_eq!(excerpt(b"\0\0"), None);
    }
}
