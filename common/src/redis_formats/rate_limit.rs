//! The keys of the rate-limit and quota counters that API replicas share in Redis: fixed
//! one-minute windows of runs per key or per end user (`{prefix}:rl:runs:{scope}:{minute}`) and
//! uploaded bytes per key and UTC day (`{prefix}:rl:upload:{key_id}:{yyyymmdd}`). Each counter
//! is an integer under `INCR`/`INCRBY` with an expiry just past its window.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Whose runs a per-minute counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunScope<'a> {
    /// Every run of an API key.
    Key(Uuid),
    /// The runs of one end user (the client's string) of an API key.
    EndUser(Uuid, &'a str),
}

/// The counter of `scope`'s runs in the minute `minute` (Unix seconds / 60).
pub fn runs_key(prefix: &str, scope: RunScope<'_>, minute: u64) -> String {
    match scope {
        RunScope::Key(key_id) => format!("{prefix}:rl:runs:key:{key_id}:{minute}"),
        // End-user ids are the client's strings: hex keeps the key well-formed and unambiguous.
        RunScope::EndUser(key_id, user) => format!("{prefix}:rl:runs:user:{key_id}:{}:{minute}", hex_of(user)),
    }
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The counter of bytes uploaded with `key_id` on `now`'s UTC day.
pub fn upload_key(prefix: &str, key_id: Uuid, now: DateTime<Utc>) -> String {
    format!("{prefix}:rl:upload:{key_id}:{}", now.format("%Y%m%d"))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn keys_keep_their_names_and_name_their_scope() {
        let key_id = Uuid::nil();
        assert_eq!(runs_key("p", RunScope::Key(key_id), 7), format!("p:rl:runs:key:{key_id}:7"));
        let user = runs_key("p", RunScope::EndUser(key_id, "a:b"), 7);
        assert_eq!(user, format!("p:rl:runs:user:{key_id}:613a62:7"));
        assert_ne!(user, runs_key("p", RunScope::EndUser(key_id, "a"), 7));
        let day = Utc.with_ymd_and_hms(2026, 3, 9, 23, 59, 0).unwrap();
        assert_eq!(upload_key("p", key_id, day), format!("p:rl:upload:{key_id}:20260309"));
    }
}
