//! The integration suite: one binary, one fresh database per test (see `helpers`).

mod auth;
mod cli;
mod flow;
mod helpers;
mod http_errors;
mod ledger;
mod recovery;
mod validation;
