//! The integration suite: one binary, one fresh database per test (see `helpers`).

mod auth;
mod callbacks;
mod cli;
mod failover;
mod fakes;
mod dashboard;
mod flow;
mod guard;
mod helpers;
mod http_errors;
mod kie;
mod ledger;
mod receiver;
mod idempotency;
mod logs;
mod metrics;
mod openapi;
mod rate_limits;
mod recovery;
mod shutdown;
mod validation;
mod webhooks;
