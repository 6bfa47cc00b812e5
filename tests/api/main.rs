//! The integration suite: one binary, one fresh database per test (see `helpers`).

// Test code fails loudly: unwrap/expect are its assertions, and its servers live as long as the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod audit;
mod auth;
mod batches;
mod billing;
mod callbacks;
mod cancel;
mod catalog;
mod cli;
mod config_paths;
mod contract;
mod dashboard;
mod events;
mod failover;
mod fakes;
mod fal;
mod files;
mod flow;
mod guard;
mod helpers;
mod http_errors;
mod idempotency;
mod kie;
mod ledger;
mod limits;
mod live_providers;
mod logs;
mod metrics;
mod openai;
mod openai_compat;
mod openapi;
mod poll;
mod pricing;
mod properties;
mod queue;
mod rate_limits;
mod receiver;
mod recovery;
mod rehost;
// Stopping and restarting a private cluster serves the reliability suite only.
mod replicate;
mod retention;
mod schema;
mod security;
#[allow(dead_code)]
mod services;
mod session;
mod shutdown;
mod sqlite;
mod storage;
mod takeover;
mod validation;
mod wavespeed;
mod webhooks;
mod worker_nodes;
