#![doc = include_str!("../README.md")]

pub mod ann;
pub mod config;
pub mod connections;
pub mod db;
pub mod domain;
pub mod events;
pub mod jobs;
pub mod keys;
pub mod lexical;
pub mod media;
pub mod metrics;
pub mod pricing;
pub mod provider;
pub mod redis_conn;
pub mod redis_formats;
pub mod retrieval;
pub mod signal;
pub mod telemetry;
pub mod tokens;
pub mod upstreams;
pub mod webhooks;

/// The embedded sqlx migrations: the only source of the schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A new time-ordered id (UUIDv7), used for every row chatq creates.
pub fn new_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}
