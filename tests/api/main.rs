//! The integration suite: one binary, one fresh database per test (see `helpers`).

mod auth;
mod callbacks;
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
mod rate_limits;
mod recovery;
mod shutdown;
mod replicate;
mod validation;
mod wavespeed;
mod webhooks;
