#![doc = include_str!("../README.md")]

mod config;
mod directive;
mod error;
mod middleware;
mod reply;
mod routes;
mod server;
mod state;
mod tokens;
mod util;

pub use config::FakeConfig;
pub use reply::FILLER;
pub use routes::embed;
pub use server::{FakeHandle, spawn};
pub use state::FakeStats;
