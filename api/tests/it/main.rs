//! System tests: the real API and worker against real Postgres and Redis and the fake OpenAI
//! server. One binary for the crate keeps link time down.

mod auth;
mod breaker;
mod browser;
mod harness;
mod limits;
mod moderation;
mod openapi;
mod ops;
mod ops_files;
mod resilience;
mod runs;
mod streaming;
mod validation;
mod widget;
mod worker_jobs;
