//! The OpenAI-compatible images API (`/v1/images/…`) and the live task events.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::durations;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiSettings {
    /// `sync_timeout_secs`. How long `POST /v1/images/…` waits for its images; then it answers an
    /// error naming the task, which goes on (and is charged only if it succeeds).
    #[serde(rename = "sync_timeout_secs", with = "durations::positive_secs")]
    pub sync_timeout: Duration,
    /// The largest `POST /v1/images/edits` body (its images together), in bytes.
    pub max_upload_bytes: NonZeroUsize,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        Self {
            sync_timeout: Duration::from_secs(120),
            max_upload_bytes: const { NonZeroUsize::new(20 * 1024 * 1024).unwrap() },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSettings {
    /// Open `GET /api/v1/tasks/{task_id}/events` streams per API key in one process; more get 429.
    pub max_streams_per_key: NonZeroU32,
    /// `keepalive_secs`. A comment line on an idle stream this often, so proxies keep it open.
    #[serde(rename = "keepalive_secs", with = "durations::positive_secs")]
    pub keepalive: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self { max_streams_per_key: const { NonZeroU32::new(8).unwrap() }, keepalive: Duration::from_secs(15) }
    }
}
