//! API tests: the real API alone (no worker) against real Postgres and Redis. Tests that need
//! runs answered live in `ops/system-tests`. One binary for the crate keeps link time down.

mod auth;
mod harness;
mod http;
mod limits;
mod openapi;
mod streams;
mod validation;
