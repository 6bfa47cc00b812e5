//! `GET /api/v1/tasks/{task_id}/events`: the task as Server-Sent Events. One `task` event with the
//! task object now and on every change, the last at its terminal status (then the stream ends); a
//! comment line as keep-alive while nothing changes. Changes are heard through `task_events` (across
//! replicas on PostgreSQL), and each event is read from the task row, so the stream never shows a
//! state the task did not have. `Last-Event-ID` resumes: a state already seen is not sent again.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::stream;

use super::error::ApiError;
use super::extract::ApiPath;
use super::openapi::{ErrorEnvelope, KeyErrors};
use super::AppState;
use crate::auth::Caller;
use crate::error::Error;
use crate::files::FileStore;
use crate::monitoring;
use crate::store::Db;
use crate::task_events::{Waiter, RECHECK};
use crate::tasks::{self, Task, TaskView};

/// Open streams per API key in this process (`events.max_streams_per_key`).
#[derive(Default)]
pub struct StreamSlots {
    open: Mutex<HashMap<String, u32>>,
}

/// One open stream; its slot is given back when the stream is dropped (ended or disconnected).
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    key_id: String,
}

impl StreamSlots {
    fn take(self: &Arc<Self>, key_id: &str, max: u32) -> Result<StreamSlot, Error> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(key_id.to_owned()).or_default();
        if *count >= max {
            return Err(Error::RateLimited {
                retry_after_secs: 1,
                message: format!("This key has {max} event streams open; close one first."),
            });
        }
        *count += 1;
        monitoring::event_streams(1.0);
        Ok(StreamSlot { slots: Arc::clone(self), key_id: key_id.to_owned() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.key_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key_id);
            }
        }
        monitoring::event_streams(-1.0);
    }
}

/// One event of the stream, as the OpenAPI document describes it (the fields of an SSE event).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct TaskEventFrame {
    /// Always `task`.
    #[schema(example = "task")]
    event: String,
    /// This state's id: send it back as `Last-Event-ID` to resume after it.
    id: String,
    /// The task object (as `GET /api/v1/tasks/{task_id}` answers it), as JSON text.
    data: String,
}

/// The id of a task state: it changes whenever the task does (each change moves `updated_at`).
fn event_id(task: &Task) -> String {
    format!("{}-{}", task.updated_at.timestamp_micros(), task.status.as_str())
}

/// What the stream carries between events.
struct Follow {
    db: Db,
    /// Signs the task's file links in each event, as a read of the task does.
    files: FileStore,
    account_id: i64,
    task_id: String,
    waiter: Waiter,
    /// The id of the last state sent (or, on resume, the client's `Last-Event-ID`).
    last: Option<String>,
    ended: bool,
    _slot: StreamSlot,
}

impl Follow {
    /// The next state to send, waiting for a change; `None` once the task ended (or vanished).
    async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        loop {
            let task = match tasks::get(&self.db, self.account_id, &self.task_id).await {
                Ok(Some(task)) => task,
                Ok(None) => return None,
                Err(error) => {
                    tracing::warn!(error = %error, task_id = %self.task_id, "event stream cannot read its task");
                    self.waiter.changed(RECHECK).await;
                    continue;
                }
            };
            let id = event_id(&task);
            if self.last.as_deref() != Some(id.as_str()) {
                self.ended = task.status.is_terminal();
                self.last = Some(id.clone());
                let event = Event::default().event("task").id(id);
                return Some(
                    event
                        .json_data(TaskView::from(&task).with_links(|url| self.files.link(url)))
                        .unwrap_or_else(|_| Event::default().comment("")),
                );
            }
            if task.status.is_terminal() {
                return None;
            }
            self.waiter.changed(RECHECK).await;
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/tasks/{task_id}/events",
    operation_id = "taskEvents",
    tag = "tasks",
    params(
        ("task_id" = String, Path, description = "The task id, `task_…`."),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received: that state is not sent again."),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `event: task`, `id`, `data: <the task object>` now and on every change, ending at a terminal status; comment lines as keep-alive.", content_type = "text/event-stream", body = TaskEventFrame),
        (status = 404, description = "No such task of this account.", body = ErrorEnvelope),
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(task_id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    // Listen before the first read, so no change between the two is missed.
    let waiter = state.events.waiter(&task_id);
    tasks::get(&state.pool, caller.account_id, &task_id).await?.ok_or_else(|| Error::not_found("Task"))?;
    let slot = state.streams.take(&caller.key_id, state.settings.events.max_streams_per_key.get())?;
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let follow = Follow {
        db: state.pool.clone(),
        files: state.files.clone(),
        account_id: caller.account_id,
        task_id,
        waiter,
        last,
        ended: false,
        _slot: slot,
    };
    let events = stream::unfold(follow, |mut follow| async move {
        let event = follow.next().await?;
        Some((Ok::<_, Infallible>(event), follow))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(state.settings.events.keepalive)))
}
