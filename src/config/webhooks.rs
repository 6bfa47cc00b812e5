//! Outgoing webhooks (SPEC §4) and the outbound URL guard (SPEC §8).

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{durations, lists};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// The wait before each delivery attempt, ±20 % jitter: the first entry counts from the task's end,
    /// each later one from the previous attempt. Its length is the number of attempts (at least one);
    /// after the last failed one the delivery is `dead`. A list, or from the environment a
    /// comma-separated string.
    #[serde(with = "durations::list")]
    pub retry_schedule: Vec<Duration>,
    /// `timeout_secs`. One attempt (connect, send, first 2 KiB of the answer) may take this long.
    #[serde(rename = "timeout_secs", with = "durations::positive_secs")]
    pub timeout: Duration,
    /// Accept `http://` for `callback_url` and `image_urls` (otherwise https only).
    pub allow_http: bool,
    /// Private ranges the guard lets through, e.g. `10.20.0.0/16`. A list or a comma-separated string.
    #[serde(with = "lists::cidrs")]
    pub allowed_private_cidrs: Vec<ipnet::IpNet>,
    /// `secret_overlap_secs`. After a secret rotation the previous secret still signs (a second
    /// signature) this long.
    #[serde(rename = "secret_overlap_secs", with = "durations::secs")]
    pub secret_overlap: Duration,
    /// `tick_ms`. How often the delivery loop looks for due deliveries.
    #[serde(rename = "tick_ms", with = "durations::positive_millis")]
    pub tick: Duration,
    /// Deliveries in flight at once, per process.
    pub max_in_flight: NonZeroUsize,
    /// The longest `callback_url` and `image_urls` entry accepted, in bytes.
    pub max_url_bytes: NonZeroUsize,
    /// Deliveries a task may have in all (its first one and manual re-sends); more re-sends get 409.
    pub max_deliveries_per_task: NonZeroU32,
    /// What a delivery's body is (see [`BodyVersion`]).
    pub body_version: BodyVersion,
}

/// `body_version`: `1`, the task object itself (what receivers have always got); `2`, Standard
/// Webhooks' event convention, `{"type": "task.completed" | "task.started", "timestamp", "data": <task>}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum BodyVersion {
    #[default]
    V1,
    V2,
}

impl TryFrom<u8> for BodyVersion {
    type Error = String;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(BodyVersion::V1),
            2 => Ok(BodyVersion::V2),
            other => Err(format!("`{other}` is not 1 or 2")),
        }
    }
}

impl From<BodyVersion> for u8 {
    fn from(version: BodyVersion) -> u8 {
        match version {
            BodyVersion::V1 => 1,
            BodyVersion::V2 => 2,
        }
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let schedule = ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"];
        Self {
            retry_schedule: schedule.iter().filter_map(|d| durations::parse_duration(d).ok()).collect(),
            timeout: Duration::from_secs(15),
            allow_http: false,
            allowed_private_cidrs: Vec::new(),
            secret_overlap: Duration::from_secs(86_400),
            tick: Duration::from_millis(500),
            max_in_flight: const { NonZeroUsize::new(32).unwrap() },
            max_url_bytes: const { NonZeroUsize::new(2048).unwrap() },
            max_deliveries_per_task: const { NonZeroU32::new(10).unwrap() },
            body_version: BodyVersion::V1,
        }
    }
}
