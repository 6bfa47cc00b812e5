//! The integration suite: one binary, one fresh database per test (see `helpers`).

// Test code fails loudly: unwrap/expect are its assertions, and its servers live as long as the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod auth;
mod callbacks;
mod catalog;
mod cli;
mod failover;
mod fal;
mod fakes;
mod dashboard;
mod flow;
mod guard;
mod helpers;
mod http_errors;
mod kie;
mod ledger;
mod openai;
mod receiver;
mod idempotency;
mod logs;
mod metrics;
mod openapi;
mod properties;
mod rate_limits;
mod recovery;
mod rehost;
// Stopping and restarting a private cluster serves the reliability suite only.
#[allow(dead_code)]
mod services;
mod schema;
mod session;
mod shutdown;
mod sqlite;
mod storage;
mod replicate;
mod validation;
mod wavespeed;
mod webhooks;
mod worker_nodes;
