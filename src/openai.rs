//! The OpenAI images API (`POST /v1/images/generations`, `POST /v1/images/edits`) over the task
//! engine: a request becomes `n` ordinary tasks (held, submitted, charged per successful image like
//! any create), the request waits for them, and the answer is OpenAI's `{created, data}`. The wire
//! format and its errors are the HTTP layer's (`http::openai`); this is what the request means.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::catalog::{Catalog, CreateRequest};
use crate::engine::Engine;
use crate::error::Error;
use crate::files::FileStore;
use crate::task_events::TaskEvents;
use crate::tasks::{Task, TaskErrorCode, TaskStatus};

/// OpenAI allows 1–10 images per request.
pub const MAX_IMAGES: u32 = 10;

/// A request of either route, as read from JSON or multipart.
#[derive(Debug, Default)]
pub struct ImagesRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub n: Option<u32>,
    pub size: Option<String>,
    pub quality: Option<String>,
    /// `response_format = "b64_json"`.
    pub b64_json: bool,
    /// `/v1/images/edits`: the uploaded images, already in the file store.
    pub edit: Option<Vec<String>>,
}

/// What the request became.
pub enum Images {
    /// Every task ended: the images of those that succeeded (the others were not charged).
    Done { created: i64, data: Vec<Image> },
    /// The wait ran out: these tasks go on, and are charged only if they succeed.
    Pending { task_ids: Vec<String> },
    /// No task succeeded; nothing was charged. The first failure's code and message.
    Failed { code: TaskErrorCode, message: String },
}

/// One image of the answer: `b64_json` when asked for and the image is in the file store, else `url`.
pub enum Image {
    Url(String),
    B64(String),
}

/// The catalog request (one task; with `n` on a model whose `max_images` allows it, all its images): the model (an id, sub-model id or OpenAI alias; for edits a model
/// id means its edit sub-model), OpenAI's `size` and `quality` through the model's `[models.openai]`
/// tables. Errors name OpenAI's fields.
pub fn create_request(catalog: &Catalog, request: &ImagesRequest) -> Result<CreateRequest, Error> {
    let (model, sub_model) = catalog.resolve_openai(request.model.as_deref(), request.edit.is_some())?;
    let aspect_ratio = match request.size.as_deref() {
        None | Some("auto") => None,
        Some(size) => Some(model.openai.sizes.get(size).cloned().ok_or_else(|| {
            let mut sizes: Vec<&str> = model.openai.sizes.keys().map(String::as_str).collect();
            sizes.push("auto");
            Error::Invalid(format!(
                "`size`: {size} is not available for {}; use one of {}.",
                model.id,
                sizes.join(", ")
            ))
        })?),
    };
    let quality = match request.quality.as_deref() {
        None | Some("auto") => None,
        // A model without a quality parameter renders one way, whatever is asked.
        Some(_) if model.parameter("quality").is_none() => None,
        Some(quality) => Some(model.openai.quality.get(quality).cloned().ok_or_else(|| {
            let mut qualities: Vec<&str> = model.openai.quality.keys().map(String::as_str).collect();
            qualities.push("auto");
            Error::Invalid(format!(
                "`quality`: {quality} is not available for {}; use one of {}.",
                model.id,
                qualities.join(", ")
            ))
        })?),
    };
    Ok(CreateRequest {
        model: Some(sub_model.id.clone()),
        prompt: request.prompt.clone(),
        aspect_ratio,
        quality,
        image_urls: request.edit.clone(),
        callback_url: None,
        callback_events: None,
        // A model that makes several images per request gets them as one task (one price, charged
        // per image delivered); otherwise the request becomes `n` tasks of one image.
        n: request.n.filter(|n| *n > 1 && *n <= model.max_images),
    })
}

/// How many images: `n`, 1 by default, at most [`MAX_IMAGES`].
pub fn count(n: Option<u32>) -> Result<u32, Error> {
    match n.unwrap_or(1) {
        n @ 1..=MAX_IMAGES => Ok(n),
        n => Err(Error::Invalid(format!("`n`: {n} is not between 1 and {MAX_IMAGES}."))),
    }
}

/// Creates the request's `n` tasks (one when the request itself asks its model for `n` images; each held like a native create; with an `Idempotency-Key`, task
/// `i` uses the key and `#i`). If one cannot be created (no credits left, …), those already created
/// are cancelled, released at once: the client gets the error and is charged nothing.
pub async fn create_tasks(
    engine: &Arc<Engine>,
    account_id: i64,
    key_id: &str,
    request: CreateRequest,
    n: u32,
    idempotency_key: Option<String>,
) -> Result<Vec<Task>, Error> {
    let n = if request.n.is_some() { 1 } else { n };
    let mut created: Vec<Task> = Vec::new();
    for i in 0..n {
        let key = idempotency_key.as_ref().map(|key| if n == 1 { key.clone() } else { format!("{key}#{i}") });
        match engine.create(account_id, key_id, request.clone(), key).await {
            Ok(task) => created.push(task),
            Err(error) => {
                for task in &created {
                    // A task that ended meanwhile stays as it ended (and, if it succeeded, charged —
                    // its image exists); an unfinished one is released now.
                    let _ = engine.cancel(account_id, &task.id).await;
                }
                return Err(error);
            }
        }
    }
    Ok(created)
}

/// Waits until every task ended or `until` passed, then reads the answer.
pub async fn wait(
    events: &TaskEvents,
    files: &FileStore,
    account_id: i64,
    created: &[Task],
    until: tokio::time::Instant,
    b64_json: bool,
) -> Result<Images, Error> {
    let mut ended = Vec::with_capacity(created.len());
    for task in created {
        let task =
            events.wait_until_ended(account_id, &task.id, until).await?.ok_or_else(|| Error::not_found("Task"))?;
        ended.push(task);
    }
    if ended.iter().any(|task| !task.status.is_terminal()) {
        return Ok(Images::Pending { task_ids: ended.into_iter().map(|task| task.id).collect() });
    }
    let mut data = Vec::new();
    for task in ended.iter().filter(|task| task.status == TaskStatus::Succeeded) {
        for image in task.output.iter().flat_map(|output| &output.0.images) {
            data.push(image_of(files, &image.url, b64_json).await);
        }
    }
    if data.is_empty() {
        let (code, message) = ended
            .iter()
            .find_map(|task| task.error.as_ref().map(|e| (e.0.code, e.0.message.clone())))
            .unwrap_or((TaskErrorCode::UpstreamFailed, "The task was cancelled; nothing was charged.".into()));
        return Ok(Images::Failed { code, message });
    }
    let created = ended.iter().map(|task| task.created_at.timestamp()).min().unwrap_or_default();
    Ok(Images::Done { created, data })
}

/// The image as OpenAI's `b64_json` when asked for and it is in the gateway's file store (with
/// `results.rehost`, every result is); otherwise its URL.
async fn image_of(files: &FileStore, url: &str, b64_json: bool) -> Image {
    if b64_json {
        let own = files.url("");
        if let Some(bytes) = match url.strip_prefix(&own) {
            Some(name) => files.read_all(name).await,
            None => None,
        } {
            return Image::B64(BASE64.encode(bytes));
        }
    }
    // Clients get the link a task read gives them: signed, or the public URL.
    Image::Url(files.link(url))
}
