//! `chatq-common` against a real Postgres (a fresh database per test). One binary keeps link
//! time down.

mod retrieval;
