//! The result store and the copying of result images into it.

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{durations, lists};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSettings {
    /// Where result images are stored; served under `/files/`. Share it between replicas.
    pub dir: PathBuf,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self { dir: "data/files".into() }
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
