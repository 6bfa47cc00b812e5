//! The result store and the copying of result images into it.

use std::num::{NonZeroU32, NonZeroU64};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{durations, lists};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSettings {
    /// Where result images are kept: `local` (the folder `dir`) or `s3` (an S3-compatible bucket,
    /// `[files.s3]`). Replicas behind a load balancer need `s3` (or one shared folder).
    pub store: StoreKind,
    /// The folder of the `local` store; served under `/files/`.
    pub dir: PathBuf,
    pub s3: S3Settings,
    /// Empty: links go through the gateway, `/files/{name}?exp=…&sig=…`, signed and expiring. Set: the
    /// images are public at `{public_base_url}/{name}` (a public bucket or a CDN in front of the store).
    #[serde(deserialize_with = "super::server::base_url")]
    pub public_base_url: String,
    /// `link_ttl_secs`. How long a signed link works; every read of a task signs its links anew.
    #[serde(rename = "link_ttl_secs", with = "durations::positive_secs")]
    pub link_ttl: Duration,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self {
            store: StoreKind::Local,
            dir: "data/files".into(),
            s3: S3Settings::default(),
            public_base_url: String::new(),
            link_ttl: Duration::from_secs(86_400),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Local,
    S3,
}

/// An S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, …). Credentials come from the standard
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) variables, never from here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// Empty: AWS S3 of `region`. Else the service's URL, e.g. `http://minio:9000`.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Keys are `{prefix}{name}`, e.g. `results/`.
    pub prefix: String,
    /// `http://endpoint/bucket/key` instead of `http://bucket.endpoint/key` (MinIO, most self-hosted).
    pub path_style: bool,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            bucket: String::new(),
            region: "us-east-1".into(),
            prefix: String::new(),
            path_style: false,
        }
    }
}

/// `[retention]`: what the background purge removes, in days since a task finished (0 = keep forever).
/// The ledger is never purged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Result files older than this are deleted from the store.
    pub results_days: u32,
    /// Finished tasks (and their webhook deliveries and idempotency keys) older than this are deleted.
    pub tasks_days: u32,
    /// Audit log entries older than this are deleted (0: kept for ever).
    pub audit_days: u32,
    /// `interval_secs`. How often one replica looks for what to purge.
    #[serde(rename = "interval_secs", with = "durations::positive_secs")]
    pub interval: Duration,
    /// Rows or files removed per batch, at most.
    pub batch_size: NonZeroU32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            results_days: 0,
            tasks_days: 0,
            audit_days: 365,
            interval: Duration::from_secs(3600),
            batch_size: const { NonZeroU32::new(500).unwrap() },
        }
    }
}

/// Result images: with `rehost`, each image a provider returns by URL is downloaded (through the
/// outbound URL guard) into the file store, and the task's URLs are the gateway's own `/files/…`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResultSettings {
    pub rehost: bool,
    /// A larger image fails the task (`upstream_failed`, credits released).
    pub max_bytes: NonZeroU64,
    /// `timeout_secs`. One download may take this long; a timeout is retried on the next poll.
    #[serde(rename = "timeout_secs", with = "durations::positive_secs")]
    pub timeout: Duration,
    /// Content types accepted; others fail the task. A list, or from the environment a
    /// comma-separated string.
    #[serde(with = "image_types")]
    pub content_types: Vec<ImageType>,
}

impl Default for ResultSettings {
    fn default() -> Self {
        Self {
            rehost: true,
            max_bytes: const { NonZeroU64::new(20 * 1024 * 1024).unwrap() },
            timeout: Duration::from_secs(60),
            content_types: ImageType::ALL.to_vec(),
        }
    }
}

/// The image types the file store can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    Png,
    Jpeg,
    Webp,
}

impl ImageType {
    pub const ALL: [ImageType; 3] = [ImageType::Png, ImageType::Jpeg, ImageType::Webp];

    /// `image/png`, `image/jpeg` or `image/webp`, in any case.
    pub fn from_mime(mime: &str) -> Option<ImageType> {
        ImageType::ALL.into_iter().find(|t| t.mime().eq_ignore_ascii_case(mime))
    }

    pub fn mime(self) -> &'static str {
        match self {
            ImageType::Png => "image/png",
            ImageType::Jpeg => "image/jpeg",
            ImageType::Webp => "image/webp",
        }
    }

    /// The extension of a stored file of this type.
    pub fn extension(self) -> &'static str {
        match self {
            ImageType::Png => "png",
            ImageType::Jpeg => "jpg",
            ImageType::Webp => "webp",
        }
    }
}

impl std::fmt::Display for ImageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mime())
    }
}

mod image_types {
    use serde::{Deserializer, Serializer};

    use super::ImageType;

    pub fn serialize<S: Serializer>(items: &[ImageType], serializer: S) -> Result<S::Ok, S::Error> {
        super::lists::serialize(items, serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ImageType>, D::Error> {
        super::lists::deserialize(deserializer, |text| {
            let all: Vec<&str> = ImageType::ALL.iter().map(|t| t.mime()).collect();
            ImageType::from_mime(text).ok_or_else(|| format!("`{text}` is not one of {}", all.join(", ")))
        })
    }
}
