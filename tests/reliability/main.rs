//! The reliability suite: two gateway processes on one private PostgreSQL cluster and a KIE upstream
//! with faults, while one gateway is SIGKILLed and PostgreSQL restarts; money must come out exact.
//! Its own test binary, sharing the API suite's harness, fakes and webhook receiver.

// Test code fails loudly: unwrap/expect are its assertions, and its servers live as long as the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

// The shared modules serve the API suite too; this binary uses only part of them.
#[allow(dead_code)]
#[path = "../api/contract.rs"]
mod contract;
#[allow(dead_code)]
#[path = "../api/fakes/mod.rs"]
mod fakes;
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../api/receiver.rs"]
mod receiver;
#[allow(dead_code)]
#[path = "../api/services.rs"]
mod services;

mod batches;
mod faults;
mod replicas;
mod traffic;
mod upstream;
