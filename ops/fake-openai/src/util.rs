//! Small helpers: random ids and unix time.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::distr::Alphanumeric;

/// `len` random ASCII letters and digits, as in `chatcmpl-` ids.
pub(crate) fn random_alphanumeric(len: usize) -> String {
    rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
}

/// `len` random lowercase hex digits, as in `x-request-id` and `modr-` ids.
pub(crate) fn random_hex(len: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rng = rand::rng();
    (0..len).map(|_| char::from(HEX[rng.random_range(0..16)])).collect()
}

/// Seconds since the Unix epoch, as OpenAI's `created` (a `u32` in async-openai).
pub(crate) fn unix_now() -> u32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}
