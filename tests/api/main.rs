//! The integration suite: one binary, one fresh database per test (see `helpers`).

mod auth;
mod cli;
mod dashboard;
mod flow;
mod helpers;
mod http_errors;
mod idempotency;
mod ledger;
mod logs;
mod metrics;
mod openapi;
mod rate_limits;
mod recovery;
mod shutdown;
mod validation;
