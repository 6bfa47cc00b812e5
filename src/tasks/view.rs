//! The task object clients see (SPEC §2.2): the answer of `GET /api/v1/tasks/{id}`, and the body of
//! the task's webhook.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::{Task, TaskError, TaskInput, TaskOutput, TaskStatus};
use crate::pricing::PriceStep;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    pub task_id: String,
    pub model: String,
    pub sub_model: String,
    pub status: TaskStatus,
    pub input: TaskInput,
    #[schema(required = true)]
    pub output: Option<TaskOutput>,
    #[schema(required = true)]
    pub error: Option<TaskError>,
    pub credits: CreditsView,
    #[schema(required = true)]
    pub callback_url: Option<String>,
    /// The provider route serving the task (the last one tried while pending).
    pub provider: ProviderView,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(required = true, format = DateTime)]
    pub completed_at: Option<String>,
    /// While `queued`: its place among the account's queued tasks, 1 = dispatched next; else `null`.
    #[schema(required = true)]
    pub queue_position: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreditsView {
    /// The quote held on create: the per-image price × the images asked for.
    pub price: i64,
    /// Captured on success: the per-image price × the images delivered (the rest was released).
    pub charged: i64,
    /// `held` while unfinished, `charged` after success, `refunded` after failure or cancel.
    pub state: CreditsState,
    /// How the price came about, in order: `base`, each matching price rule, `images` (× n). Absent on
    /// tasks created before quotes.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub breakdown: Option<Vec<PriceStep>>,
}

/// Where a task's price stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CreditsState {
    /// Unfinished: the price is set aside.
    Held,
    /// Succeeded: what was delivered is paid.
    Charged,
    /// Failed or cancelled: the price came back.
    Refunded,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProviderView {
    /// The route's label, e.g. `KIE`, or `Simulated`.
    pub label: String,
    /// `true`: the simulated provider (demo mode): the image is a placeholder.
    pub simulated: bool,
}

/// API timestamps: RFC 3339, UTC, milliseconds.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl TaskView {
    /// The view with each image URL (results, and inputs such as edit uploads) replaced by `link` of
    /// it: the file store signs its own links afresh on every read (`FileStore::link`).
    pub fn with_links(mut self, link: impl Fn(&str) -> String) -> TaskView {
        for image in self.output.iter_mut().flat_map(|output| output.images.iter_mut()) {
            image.url = link(&image.url);
        }
        for url in &mut self.input.image_urls {
            *url = link(url);
        }
        self
    }
}

impl From<&Task> for TaskView {
    fn from(task: &Task) -> Self {
        let state = match task.status {
            TaskStatus::Queued | TaskStatus::Pending | TaskStatus::Running => CreditsState::Held,
            TaskStatus::Succeeded => CreditsState::Charged,
            TaskStatus::Failed | TaskStatus::Cancelled => CreditsState::Refunded,
        };
        TaskView {
            task_id: task.id.clone(),
            model: task.model.clone(),
            sub_model: task.sub_model.clone(),
            status: task.status,
            input: task.input.0.clone(),
            output: task.output.as_ref().map(|o| o.0.clone()),
            error: task.error.as_ref().map(|e| e.0.clone()),
            credits: CreditsView {
                price: task.price,
                charged: task.charged(),
                state,
                breakdown: task.price_breakdown.as_ref().map(|steps| steps.0.clone()),
            },
            callback_url: task.callback_url.clone(),
            provider: ProviderView {
                label: task.provider_label.clone().unwrap_or_else(|| task.provider.clone()),
                simulated: task.simulated,
            },
            created_at: timestamp(task.created_at),
            updated_at: timestamp(task.updated_at),
            completed_at: task.completed_at.map(timestamp),
            queue_position: task.queue_position,
        }
    }
}
