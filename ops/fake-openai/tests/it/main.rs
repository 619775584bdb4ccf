//! Integration tests: the fake driven by the real async-openai client and raw HTTP.

mod chat;
mod control;
mod embeddings;
mod faults;
mod helpers;
mod moderations;
