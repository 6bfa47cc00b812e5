//! The built-in simulated provider: an asynchronous upstream that needs no account. It keeps its jobs
//! in its own table (as a real provider keeps them on its side), so they outlive a gateway crash,
//! and finishes each one after a delay with a real PNG stored in the gateway's file store.
//!
//! Prompt markers drive it, like a payment provider's test mode: `[simulate:fail]` fails the job,
//! `[simulate:reject]` refuses the submit, `[simulate:delay=MS]` sets the completion delay,
//! `[simulate:images=K]` delivers K of the images asked for (`n`; fewer only), to show per-image capture.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{picture, JobState, Provider, ProviderError, SubmitRequest, Submitted};
use crate::files::FileStore;
use crate::on_db;
use crate::store::Db;
use crate::tasks::{OutputImage, TaskError, TaskErrorCode};

pub const DEFAULT_DELAY_MS: u64 = 3000;

/// The longest `[simulate:delay=MS]` honoured: longer asks are clamped (a task's deadline ends it anyway).
const MAX_DELAY: Duration = Duration::from_secs(3600);

pub struct Simulated {
    db: Db,
    files: FileStore,
    default_delay: Duration,
}

impl Simulated {
    pub fn new(db: Db, files: FileStore, default_delay: Duration) -> Self {
        Self { db, files, default_delay }
    }
}

/// The delay asked for by `[simulate:delay=MS]`, if the prompt has a readable one, at most [`MAX_DELAY`].
fn delay_marker(prompt: &str) -> Option<Duration> {
    let rest = &prompt[prompt.find("[simulate:delay=")? + "[simulate:delay=".len()..];
    let millis: u64 = rest[..rest.find(']')?].trim().parse().ok()?;
    Some(Duration::from_millis(millis).min(MAX_DELAY))
}

/// The number of images asked for by `[simulate:images=K]`, if the prompt has a readable one.
fn images_marker(prompt: &str) -> Option<u32> {
    let rest = &prompt[prompt.find("[simulate:images=")? + "[simulate:images=".len()..];
    rest[..rest.find(']')?].trim().parse().ok()
}

/// The `i`-th image's file of a job whose first image is `file_name`.
fn image_file(file_name: &str, i: u32) -> String {
    match i {
        0 => file_name.to_owned(),
        i => format!("{}{i}.png", file_name.trim_end_matches(".png")),
    }
}

fn upstream_unavailable(error: sqlx::Error) -> ProviderError {
    tracing::warn!(error = %error, "simulated provider storage failed");
    ProviderError::local("The simulated provider is unavailable.")
}

#[async_trait]
impl Provider for Simulated {
    async fn submit(&self, request: SubmitRequest<'_>) -> Result<Submitted, ProviderError> {
        let prompt = &request.input.prompt;
        if prompt.contains("[simulate:reject]") {
            return Err(ProviderError::permanent(
                TaskErrorCode::UpstreamRejected,
                "The provider refused the request ([simulate:reject]).",
            ));
        }
        let delay = delay_marker(prompt).unwrap_or(self.default_delay);
        let job_id = format!("sim_{}", ulid::Ulid::new());
        let asked = request.input.images();
        let images = images_marker(prompt).map_or(asked, |k| k.min(asked));
        // One job per task: a resubmit of the same task (after a crash) gets the first job back.
        let sql = format!(
            "INSERT INTO simulated_jobs (id, task_id, prompt, aspect_ratio, fails, due_at, file_name, images)
             VALUES ($1, $2, $3, $4, $5, {}, $7, $8)
             ON CONFLICT (task_id) DO UPDATE SET task_id = EXCLUDED.task_id
             RETURNING id",
            self.db.dialect().now_plus_secs("$6")
        );
        let (upstream_id,): (String,) = on_db!(&self.db, pool => sqlx::query_as(&sql)
        .bind(&job_id)
        .bind(request.task_id)
        .bind(prompt)
        .bind(request.input.aspect_ratio.as_deref().unwrap_or("1:1"))
        .bind(prompt.contains("[simulate:fail]"))
        .bind(delay.as_secs_f64())
        .bind(FileStore::new_name("png"))
        .bind(i64::from(images))
        .fetch_one(pool)
        .await)
        .map_err(upstream_unavailable)?;
        Ok(Submitted::Accepted { upstream_id })
    }

    async fn poll(&self, upstream_id: &str) -> Result<JobState, ProviderError> {
        type Job = (String, String, bool, DateTime<Utc>, String, i64);
        let job: Option<Job> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT prompt, aspect_ratio, fails, due_at, file_name, images FROM simulated_jobs WHERE id = $1",
        )
        .bind(upstream_id)
        .fetch_optional(pool)
        .await)
        .map_err(upstream_unavailable)?;
        let Some((prompt, aspect_ratio, fails, due_at, file_name, images)) = job else {
            return Err(ProviderError::permanent(TaskErrorCode::UpstreamFailed, super::LOST));
        };
        let remaining = (due_at - Utc::now()).to_std().unwrap_or_default();
        if !remaining.is_zero() {
            return Ok(JobState::Running { check_after: Some(remaining) });
        }
        if fails {
            return Ok(JobState::Failed(TaskError {
                code: TaskErrorCode::UpstreamFailed,
                message: "The provider could not generate the image ([simulate:fail]).".into(),
            }));
        }
        let mut urls = Vec::new();
        for i in 0..u32::try_from(images).unwrap_or(1) {
            let name = image_file(&file_name, i);
            if !self.files.exists(&name).await {
                let png = picture::render(&prompt, &aspect_ratio);
                self.files.save(&name, &png).await.map_err(|error| {
                    tracing::error!(error = %error, "cannot store a simulated result");
                    ProviderError::local("The result could not be stored.")
                })?;
            }
            urls.push(OutputImage { url: self.files.url(&name) });
        }
        Ok(JobState::Succeeded { images: urls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_delay_marker() {
        assert_eq!(delay_marker("a cat [simulate:delay=250]"), Some(Duration::from_millis(250)));
        assert_eq!(delay_marker("[simulate:delay=abc] a cat"), None);
        assert_eq!(delay_marker("[simulate:delay=12"), None);
        assert_eq!(delay_marker("a cat"), None);
        assert_eq!(delay_marker("[simulate:delay=18446744073709551615]"), Some(MAX_DELAY));
    }
}
