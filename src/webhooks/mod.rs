//! Outgoing webhooks (SPEC §4): when a task with a `callback_url` ends, the gateway POSTs its task
//! object there, signed per Standard Webhooks, retried on a schedule until a 2xx (or a 410, or the
//! last attempt), with every attempt recorded.
//!
//! - [`queue`]: the `webhook_deliveries` and `webhook_attempts` tables. `tasks::settle` enqueues in
//!   the transaction of the terminal transition.
//! - [`delivery`]: the loop that claims due deliveries, signs, sends and records ([`Webhooks`]).
//! - [`retry`]: the schedule, its jitter, `Retry-After`.
//! - [`signing`] and [`secrets`]: the signature, and each account's secret with its rotation.
//!
//! Where a delivery may go is decided by the outbound URL guard in [`crate::url_guard`].

pub mod delivery;
pub mod queue;
pub mod retry;
pub mod secrets;
pub mod signing;

pub use delivery::Webhooks;
