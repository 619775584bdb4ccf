//! Every message chatq passes between processes through Redis, each format's key name, writer
//! and reader side by side, so the two ends cannot drift apart:
//!
//! - [`run_stream`]: a run's live events (`{prefix}:run:{id}`), written by the worker (and the
//!   API for cancels of queued runs), read by the API's subscriber hub;
//! - [`cancel`]: the cancel signal (`{prefix}:cancel`), published by the API, heard by workers;
//! - [`breaker`]: each chat upstream's circuit breaker state (`{prefix}:breaker:{upstream}`), set by workers, read
//!   by every API replica's `/readyz`;
//! - [`rate_limit`]: the counters of rate limits and quotas (`{prefix}:rl:…`), shared by API
//!   replicas;
//! - [`run_lease`]: the leases of runs being answered (`{prefix}:run-leases`), held by workers so
//!   that a run waiting for Postgres to come back is not taken over.
//!
//! Queue names and apalis payloads live in [`crate::jobs`].

pub mod breaker;
pub mod cancel;
pub mod rate_limit;
pub mod run_lease;
pub mod run_stream;
