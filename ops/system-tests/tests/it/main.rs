//! System tests: the real API and worker against real Postgres and Redis and the fake OpenAI
//! server. One binary for the crate keeps link time down.

mod breaker;
mod browser;
mod knowledge;
mod limits;
mod moderation;
mod ops;
mod ops_files;
mod providers;
mod resilience;
mod runs;
mod secrets;
mod streaming;
mod webhooks;
mod widget;
