//! API tests: the real API alone (no worker) against real Postgres and Redis. Tests that need
//! runs answered live in `ops/system-tests`. One binary for the crate keeps link time down.

mod auth;
mod harness;
mod http;
mod keys_cli;
mod limits;
mod openapi;
mod ops;
mod streams;
mod thread_stream;
mod tokens;
mod validation;
mod webhooks;
