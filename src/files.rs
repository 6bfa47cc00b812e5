//! The file store for result images: a directory on disk, served under `/files/{name}`. Names are
//! random, so a URL cannot be guessed from another. [`Rehost`] copies providers' results into it.

use std::path::PathBuf;
use std::sync::Arc;

use rand::distributions::Alphanumeric;
use rand::Rng;
use reqwest::dns::Resolve;

use crate::config::{ImageType, ResultSettings};
use crate::tasks::OutputImage;
use crate::url_guard::{self, Guard};

#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    public_base_url: String,
}

impl FileStore {
    pub fn new(dir: PathBuf, public_base_url: &str) -> anyhow::Result<FileStore> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("files.dir: cannot create {}: {e}", dir.display()))?;
        Ok(FileStore { dir, public_base_url: public_base_url.trim_end_matches('/').to_owned() })
    }

    /// A fresh unguessable name with this extension, e.g. `Q2x…9a.png`.
    pub fn new_name(extension: &str) -> String {
        let random: String = rand::thread_rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect();
        format!("{random}.{extension}")
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/files/{name}", self.public_base_url)
    }

    /// Whether `url` is one of this store's own URLs.
    pub fn owns(&self, url: &str) -> bool {
        url.strip_prefix(&self.public_base_url).is_some_and(|rest| rest.starts_with("/files/"))
    }

    pub async fn exists(&self, name: &str) -> bool {
        Self::is_valid_name(name) && tokio::fs::try_exists(self.dir.join(name)).await.unwrap_or(false)
    }

    /// Writes through a temporary file and a rename, so a reader never sees half a file.
    pub async fn save(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        if !Self::is_valid_name(name) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid file name"));
        }
        let temporary = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        tokio::fs::write(&temporary, bytes).await?;
        tokio::fs::rename(&temporary, self.dir.join(name)).await
    }

    /// `None` for names that are not ours or files that do not exist.
    pub async fn read(&self, name: &str) -> Option<Vec<u8>> {
        if !Self::is_valid_name(name) {
            return None;
        }
        tokio::fs::read(self.dir.join(name)).await.ok()
    }

    /// Only names this store makes: no paths, no dot files.
    fn is_valid_name(name: &str) -> bool {
        let Some((stem, extension)) = name.split_once('.') else {
            return false;
        };
        !stem.is_empty()
            && stem.len() <= 64
            && stem.bytes().all(|b| b.is_ascii_alphanumeric())
            && matches!(extension, "png" | "jpg" | "webp")
    }
}

/// Copies providers' result images into the store (`[results]`): upstream URLs expire, the
/// gateway's own `/files/…` URLs do not. Downloads go through the outbound URL guard, like webhooks,
/// except from the backend nodes the operator configured (`kind = "worker"`), which usually sit on a
/// private network and serve their results from their own `base_url`.
#[derive(Clone)]
pub struct Rehost {
    files: FileStore,
    guard: Guard,
    http: reqwest::Client,
    /// Origins of the worker providers' `base_url`, fetched with `nodes_http` (no guard).
    nodes: Vec<url::Origin>,
    nodes_http: reqwest::Client,
    max_bytes: u64,
    content_types: Vec<ImageType>,
}

/// Why a result could not be copied. `Retry`: a passing problem (network, timeout, 429/5xx, disk):
/// try again on the next poll. `Refuse`: the image will never be deliverable (too large, not an
/// allowed image type, refused by the guard, gone): the task fails and its credits are released.
#[derive(Debug, thiserror::Error)]
pub enum RehostError {
    #[error("{0}")]
    Retry(String),
    #[error("{0}")]
    Refuse(String),
}

impl Rehost {
    pub fn new(
        files: FileStore,
        settings: &ResultSettings,
        guard: Guard,
        resolver: Arc<dyn Resolve>,
        node_base_urls: &[&str],
    ) -> anyhow::Result<Rehost> {
        let timeout = settings.timeout;
        let http = url_guard::client(&guard, resolver, timeout)?;
        let nodes_http =
            reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none()).build()?;
        let nodes = node_base_urls.iter().filter_map(|u| url::Url::parse(u).ok()).map(|u| u.origin()).collect();
        Ok(Rehost {
            files,
            guard,
            http,
            nodes,
            nodes_http,
            max_bytes: settings.max_bytes.get(),
            content_types: settings.content_types.clone(),
        })
    }

    /// The images with every upstream URL replaced by the URL of its copy; images already in the
    /// store (OpenAI's `b64_json`, the simulated provider) stay as they are.
    pub async fn images(&self, images: Vec<OutputImage>) -> Result<Vec<OutputImage>, RehostError> {
        let mut copies = Vec::with_capacity(images.len());
        for image in images {
            let url = if self.files.owns(&image.url) { image.url } else { self.copy(&image.url).await? };
            copies.push(OutputImage { url });
        }
        Ok(copies)
    }

    async fn copy(&self, url: &str) -> Result<String, RehostError> {
        let from_node = url::Url::parse(url).is_ok_and(|u| self.nodes.contains(&u.origin()));
        let request = if from_node {
            self.nodes_http.get(url)
        } else {
            let parsed = self.guard.check_url(url).map_err(|why| RehostError::Refuse(format!("its URL {why}")))?;
            self.http.get(parsed)
        };
        let mut response = request.send().await.map_err(|error| {
            if url_guard::refused_by_guard(&error).is_some_and(|refused| !refused.lookup_failed) {
                RehostError::Refuse("its URL resolves to no public address".into())
            } else if error.is_timeout() {
                RehostError::Retry("the download timed out".into())
            } else {
                RehostError::Retry("the download failed".into())
            }
        })?;
        let status = response.status();
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(RehostError::Retry(format!("the image host answered {}", status.as_u16())));
        }
        if !status.is_success() {
            return Err(RehostError::Refuse(format!("the image host answered {}", status.as_u16())));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let Some(image_type) = ImageType::from_mime(&content_type).filter(|t| self.content_types.contains(t)) else {
            return Err(RehostError::Refuse(format!("it is `{content_type}`, not an allowed image type")));
        };
        let too_large = || RehostError::Refuse(format!("it is larger than {} bytes", self.max_bytes));
        if response.content_length().is_some_and(|length| length > self.max_bytes) {
            return Err(too_large());
        }
        // Read in chunks, so a host that lies about (or omits) its length cannot exceed the limit.
        let mut bytes = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|_| RehostError::Retry("the download broke off".into()))?
        {
            if (bytes.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let name = FileStore::new_name(image_type.extension());
        self.files.save(&name, &bytes).await.map_err(|error| {
            tracing::error!(error = %error, "cannot store a result image");
            RehostError::Retry("the image could not be stored".into())
        })?;
        Ok(self.files.url(&name))
    }
}
