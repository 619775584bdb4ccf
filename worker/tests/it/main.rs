//! Worker tests that need the real `chatq-worker` binary: crash recovery with `kill -9`, and
//! knowledge-base ingestion (its `extract-pdf` child process). One binary keeps link time down.

mod crash;
// The API's system-test harness: a whole stack per test.
#[allow(dead_code)]
#[path = "../../../api/tests/it/harness.rs"]
mod harness;
mod housekeeping;
mod knowledge;
