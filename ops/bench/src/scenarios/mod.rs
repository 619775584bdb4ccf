//! Benchmark scenarios, one module each, each with its clap `Args` and an async `run` that
//! returns a serializable report.
//!
//! To add a scenario (`stream_latency`, `subscribers`, `streams`, `chaos`, ...): add a module
//! here with `Args` and `run(args) -> anyhow::Result<Report>`, reuse [`crate::client`] for HTTP
//! and [`crate::stats`] for percentiles, and add a variant to [`crate::Command`].

pub mod runs;
pub mod search;
pub mod stream_latency;
pub mod streams;
pub mod subscribers;
