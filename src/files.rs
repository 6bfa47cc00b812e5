//! The file store for result images, behind one type over `object_store`: a folder on disk (`local`,
//! the default) or an S3-compatible bucket (`s3`), which every replica shares. Names are random, so
//! a name cannot be guessed from another. Clients get links, not names: through the gateway,
//! `/files/{name}?exp=…&sig=…`, signed with a key kept in the database (so any replica checks any
//! link) and expiring; or, with `files.public_base_url`, the public URL of a bucket or CDN.
//! [`Rehost`] copies providers' results into the store.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore};
use rand::distributions::Alphanumeric;
use rand::Rng;
use reqwest::dns::Resolve;
use sha2::Sha256;

use crate::config::{FileSettings, ImageType, ResultSettings, StoreKind};
use crate::on_db;
use crate::store::Db;
use crate::tasks::OutputImage;
use crate::url_guard::{self, Guard};

#[derive(Clone)]
pub struct FileStore {
    objects: Arc<dyn ObjectStore>,
    /// Object keys are `{prefix}{name}`.
    prefix: String,
    /// S3 keeps each object's content type (a public bucket serves it); the local store cannot.
    keeps_content_type: bool,
    /// `server.public_base_url`: stored URLs are `{gateway_base}/files/{name}`.
    gateway_base: String,
    /// `files.public_base_url`; empty: signed links through the gateway.
    public_base: String,
    link_ttl: Duration,
    link_key: Arc<[u8]>,
}

/// An object read from the store: its bytes (all, or the range asked for) as a stream.
pub struct FileRead {
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
    pub size: u64,
    pub range: Option<Range<u64>>,
    pub content_type: &'static str,
}

/// Why a file link is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    Expired,
    Forged,
}

/// What a ranged read asks for (`Range: bytes=…`), before the size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-` or `bytes=a-b` (inclusive end).
    From(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Last(u64),
}

impl ByteRange {
    /// One range of a `Range` header; `None` for other units, several ranges or bad syntax (then the
    /// whole file is served, as RFC 9110 allows).
    pub fn parse(header: &str) -> Option<ByteRange> {
        let spec = header.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (start, end) = spec.split_once('-')?;
        let (start, end) = (start.trim(), end.trim());
        if start.is_empty() {
            return end.parse().ok().map(ByteRange::Last);
        }
        let start = start.parse().ok()?;
        let end = if end.is_empty() { None } else { Some(end.parse().ok()?) };
        if end.is_some_and(|end| end < start) {
            return None;
        }
        Some(ByteRange::From(start, end))
    }

    /// The bytes this asks for of a file of `size` bytes; `None` when it cannot be satisfied (416).
    pub fn within(self, size: u64) -> Option<Range<u64>> {
        match self {
            ByteRange::From(start, _) if start >= size => None,
            ByteRange::From(start, end) => Some(start..end.map_or(size, |end| (end + 1).min(size))),
            ByteRange::Last(0) => None,
            ByteRange::Last(n) => Some(size.saturating_sub(n)..size),
        }
    }
}

impl FileStore {
    /// The store `[files]` configures, its links signed with `link_key` (see [`link_key`]).
    pub fn from_settings(settings: &FileSettings, gateway_base: &str, link_key: Vec<u8>) -> anyhow::Result<FileStore> {
        let (objects, prefix, keeps_content_type): (Arc<dyn ObjectStore>, String, bool) = match settings.store {
            StoreKind::Local => (Arc::new(local(&settings.dir)?), String::new(), false),
            StoreKind::S3 => {
                let s3 = &settings.s3;
                // Credentials (and nothing else) from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, …
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_virtual_hosted_style_request(!s3.path_style);
                if !s3.endpoint.is_empty() {
                    builder = builder.with_endpoint(&s3.endpoint).with_allow_http(s3.endpoint.starts_with("http://"));
                }
                let store = builder.build().map_err(|e| anyhow::anyhow!("files.s3: {e}"))?;
                (Arc::new(store), s3.prefix.clone(), true)
            }
        };
        Ok(FileStore {
            objects,
            prefix,
            keeps_content_type,
            gateway_base: gateway_base.trim_end_matches('/').to_owned(),
            public_base: settings.public_base_url.trim_end_matches('/').to_owned(),
            link_ttl: settings.link_ttl,
            link_key: link_key.into(),
        })
    }

    /// A local store in `dir` whose links are signed with a key of this process only (tools, tests).
    pub fn new(dir: PathBuf, gateway_base: &str) -> anyhow::Result<FileStore> {
        let settings = FileSettings { dir, ..FileSettings::default() };
        FileStore::from_settings(&settings, gateway_base, rand::random::<[u8; 32]>().to_vec())
    }

    /// A fresh unguessable name with this extension, e.g. `Q2x…9a.png`.
    pub fn new_name(extension: &str) -> String {
        let random: String = rand::thread_rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect();
        format!("{random}.{extension}")
    }

    /// The URL a task keeps for a stored file; clients see [`FileStore::link`] of it.
    pub fn url(&self, name: &str) -> String {
        format!("{}/files/{name}", self.gateway_base)
    }

    /// Whether `url` is one of this store's own URLs.
    pub fn owns(&self, url: &str) -> bool {
        url.strip_prefix(&self.gateway_base).is_some_and(|rest| rest.starts_with("/files/"))
    }

    /// What a client gets for a task's image URL, made anew on every read: for this store's files a
    /// link signed until now + `link_ttl` (or the public URL); other URLs as they are.
    pub fn link(&self, url: &str) -> String {
        let Some(name) = url.strip_prefix(&self.gateway_base).and_then(|rest| rest.strip_prefix("/files/")) else {
            return url.to_owned();
        };
        let name = name.split('?').next().unwrap_or(name);
        if !self.public_base.is_empty() {
            return format!("{}/{name}", self.public_base);
        }
        let expires = Utc::now().timestamp().saturating_add(i64::try_from(self.link_ttl.as_secs()).unwrap_or(i64::MAX));
        format!("{}/files/{name}?exp={expires}&sig={}", self.gateway_base, self.signature(name, expires))
    }

    /// Whether `/files/{name}` needs `?exp=&sig=`: when links go through the gateway.
    pub fn signs_links(&self) -> bool {
        self.public_base.is_empty()
    }

    /// Checks a link's expiry (unix seconds) and signature; the signature first, so a forged link
    /// says nothing about expiry.
    pub fn check_link(&self, name: &str, expires: i64, signature: &str) -> Result<(), LinkError> {
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
            return Err(LinkError::Forged);
        };
        self.mac(name, expires).verify_slice(&signature).map_err(|_| LinkError::Forged)?;
        if expires <= Utc::now().timestamp() {
            return Err(LinkError::Expired);
        }
        Ok(())
    }

    fn mac(&self, name: &str, expires: i64) -> Hmac<Sha256> {
        // Any key length is accepted by HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.link_key).unwrap_or_else(|_| unreachable!());
        mac.update(format!("{name}\n{expires}").as_bytes());
        mac
    }

    fn signature(&self, name: &str, expires: i64) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(name, expires).finalize().into_bytes())
    }

    fn path(&self, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{name}", self.prefix))
    }

    pub async fn exists(&self, name: &str) -> bool {
        Self::is_valid_name(name) && self.objects.head(&self.path(name)).await.is_ok()
    }

    /// Stores a whole file; a reader never sees half of it (the local store writes a temporary file
    /// and renames it, S3 makes an object visible once complete).
    pub async fn save(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let mut upload = self.upload(name)?;
        upload.write(Bytes::copy_from_slice(bytes)).await?;
        upload.finish().await
    }

    /// A streaming write of `name`: chunks go out as they come (a multipart upload for large files).
    pub fn upload(&self, name: &str) -> std::io::Result<Upload> {
        if !Self::is_valid_name(name) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid file name"));
        }
        let mut writer = BufWriter::new(Arc::clone(&self.objects), self.path(name));
        if self.keeps_content_type {
            let content_type = content_type_of(name);
            writer = writer.with_attributes(Attributes::from_iter([(
                Attribute::ContentType,
                object_store::AttributeValue::from(content_type),
            )]));
        }
        Ok(Upload { writer })
    }

    /// The whole file in memory, if the name is ours and the file exists (small files: uploads, results).
    pub async fn read_all(&self, name: &str) -> Option<Bytes> {
        if !Self::is_valid_name(name) {
            return None;
        }
        self.objects.get(&self.path(name)).await.ok()?.bytes().await.ok()
    }

    /// The whole file, or `range` of it. `Ok(None)` for names that are not ours or files that do not
    /// exist; `Err(size)` for a range outside the file.
    pub async fn read(&self, name: &str, range: Option<ByteRange>) -> std::io::Result<Option<Result<FileRead, u64>>> {
        if !Self::is_valid_name(name) {
            return Ok(None);
        }
        let path = self.path(name);
        let (size, range) = match range {
            None => (None, None),
            Some(asked) => {
                let meta = match self.objects.head(&path).await {
                    Ok(meta) => meta,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(error) => return Err(std::io::Error::other(error)),
                };
                match asked.within(meta.size) {
                    Some(range) => (Some(meta.size), Some(range)),
                    None => return Ok(Some(Err(meta.size))),
                }
            }
        };
        let options = object_store::GetOptions { range: range.clone().map(Into::into), ..Default::default() };
        let result = match self.objects.get_opts(&path, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(std::io::Error::other(error)),
        };
        let size = size.unwrap_or(result.meta.size);
        let body = result.into_stream().map(|chunk| chunk.map_err(std::io::Error::other)).boxed();
        Ok(Some(Ok(FileRead { body, size, range, content_type: content_type_of(name) })))
    }

    /// Up to `limit` of this store's files last written before `before`.
    pub async fn older_than(&self, before: DateTime<Utc>, limit: usize) -> std::io::Result<Vec<String>> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let mut listing = self.objects.list(prefix.as_ref());
        let mut names = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(std::io::Error::other)?;
            let Some(name) = meta.location.filename() else { continue };
            // Only what this store made: never another tool's object under the same prefix.
            if meta.last_modified < before && Self::is_valid_name(name) {
                names.push(name.to_owned());
                if names.len() == limit {
                    break;
                }
            }
        }
        Ok(names)
    }

    pub async fn delete(&self, name: &str) -> std::io::Result<()> {
        match self.objects.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(std::io::Error::other(error)),
        }
    }

    /// Only names this store makes: no paths, no dot files.
    pub fn is_valid_name(name: &str) -> bool {
        let Some((stem, extension)) = name.split_once('.') else {
            return false;
        };
        !stem.is_empty()
            && stem.len() <= 64
            && stem.bytes().all(|b| b.is_ascii_alphanumeric())
            && matches!(extension, "png" | "jpg" | "webp")
    }
}

fn local(dir: &std::path::Path) -> anyhow::Result<LocalFileSystem> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("files.dir: cannot create {}: {e}", dir.display()))?;
    LocalFileSystem::new_with_prefix(dir).map_err(|e| anyhow::anyhow!("files.dir: {}: {e}", dir.display()))
}

/// The content type of a stored name (its extension is one of the allowed image types').
fn content_type_of(name: &str) -> &'static str {
    let extension = name.rsplit('.').next().unwrap_or_default();
    ImageType::ALL.into_iter().find(|t| t.extension() == extension).unwrap_or(ImageType::Png).mime()
}

/// A file being written; dropped without [`Upload::finish`], nothing is stored.
pub struct Upload {
    writer: BufWriter,
}

impl Upload {
    pub async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.writer.put(chunk).await.map_err(std::io::Error::other)
    }

    pub async fn finish(mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.writer.shutdown().await
    }

    /// Gives up: a multipart upload already started is aborted.
    pub async fn abort(mut self) {
        let _ = self.writer.abort().await;
    }
}

/// The key that signs file links, made on first use and kept in the database, so every replica
/// signs and checks with the same one.
pub async fn link_key(db: &Db) -> sqlx::Result<Vec<u8>> {
    let fresh = rand::random::<[u8; 32]>().to_vec();
    on_db!(db, pool => sqlx::query("INSERT INTO signing_keys (name, secret) VALUES ('file_links', $1) ON CONFLICT (name) DO NOTHING")
        .bind(&fresh)
        .execute(pool)
        .await
        .map(|_| ()))?;
    on_db!(db, pool => sqlx::query_scalar("SELECT secret FROM signing_keys WHERE name = 'file_links'")
        .fetch_one(pool)
        .await)
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
        // Stream to the store chunk by chunk, so a host that lies about (or omits) its length cannot
        // exceed the limit, and a large image is never held whole in memory.
        let name = FileStore::new_name(image_type.extension());
        let stored = |error: std::io::Error| {
            tracing::error!(error = %error, "cannot store a result image");
            RehostError::Retry("the image could not be stored".into())
        };
        let mut upload = self.files.upload(&name).map_err(stored)?;
        let mut received = 0u64;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => {
                    upload.abort().await;
                    return Err(RehostError::Retry("the download broke off".into()));
                }
            };
            received += chunk.len() as u64;
            if received > self.max_bytes {
                upload.abort().await;
                return Err(too_large());
            }
            if let Err(error) = upload.write(chunk).await {
                return Err(stored(error));
            }
        }
        upload.finish().await.map_err(stored)?;
        Ok(self.files.url(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::ByteRange;

    #[test]
    fn one_byte_range_is_read_and_fitted_to_the_file() {
        let within = |header: &str, size: u64| ByteRange::parse(header).and_then(|r| r.within(size));
        assert_eq!(within("bytes=0-9", 100), Some(0..10));
        assert_eq!(within("bytes=90-200", 100), Some(90..100));
        assert_eq!(within("bytes=50-", 100), Some(50..100));
        assert_eq!(within("bytes=-10", 100), Some(90..100));
        assert_eq!(within("bytes=-500", 100), Some(0..100));
        // Unsatisfiable: a 416.
        assert_eq!(ByteRange::parse("bytes=100-").map(|r| r.within(100)), Some(None));
        assert_eq!(ByteRange::parse("bytes=-0").map(|r| r.within(100)), Some(None));
        // Not one byte range: the whole file.
        for ignored in ["bytes=0-1,5-9", "items=0-9", "bytes=9-0", "bytes=a-b", "bytes=-", ""] {
            assert_eq!(ByteRange::parse(ignored), None, "{ignored}");
        }
    }
}
