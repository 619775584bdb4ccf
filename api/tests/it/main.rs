//! System tests: the real API and worker against real Postgres and Redis and the fake OpenAI
//! server. One binary for the crate keeps link time down.

mod auth;
mod browser;
mod harness;
mod openapi;
mod runs;
mod streaming;
mod validation;
mod worker_jobs;
