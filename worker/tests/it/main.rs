//! Worker tests without the API: the jobs driven directly on a per-test database and queue
//! prefix, and crash recovery with the real `chatq-worker` binary killed with `kill -9`. One
//! binary keeps link time down.

mod chat_run;
mod cleanup;
mod crash;
mod housekeeping;
mod ingest;
mod outage;
mod reconciler;
mod stream_end;
mod support;
mod usage;
