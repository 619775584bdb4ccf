//! User tokens: short-lived tokens scoped to one end user of one client key, safe to hand to a
//! browser. Format: `cqu_<base64url(nonce ‖ ciphertext ‖ tag)>` without padding: the claims
//! `{"k": key id, "u": user, "i": issued at (unix ms), "e": expiry (unix s), "a": assistants}`
//! sealed with AES-256-GCM, so a holder can read nothing in them and change nothing. The key
//! is derived from `CHATQ_TOKEN_SECRET`; tokens sealed under `CHATQ_TOKEN_SECRET_PREVIOUS` are
//! still opened, so the secret can be rotated without signing everyone out.

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, AeadCore, OsRng, Payload},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// Prefix of every user token.
pub const PREFIX: &str = "cqu_";

/// Longest lifetime of a user token: a token claiming to live longer is refused.
pub const MAX_TTL_SECONDS: i64 = 24 * 3600;

/// Bound into every seal as associated data: a token of another format or purpose sealed with
/// the same key never opens as a user token.
const AAD: &[u8] = b"chatq user token v1";
const NONCE_LEN: usize = 12;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    k: Uuid,
    u: String,
    i: i64,
    e: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    a: Vec<Uuid>,
}

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The client key that issued it.
    pub key_id: Uuid,
    /// The end user it acts as.
    pub user: String,
    /// Issue time, unix milliseconds: revocations apply to tokens issued before them.
    pub issued_at_ms: i64,
    /// Expiry, unix seconds.
    pub expires_at: i64,
    /// The assistants it may choose; empty means none of its own choosing.
    pub assistants: Vec<Uuid>,
}

/// The sealing keys: the current one seals and opens, the previous one only opens.
pub struct TokenKeys {
    current: Aes256Gcm,
    previous: Option<Aes256Gcm>,
}

/// An AES-256 key from a secret: HMAC-SHA256 of a fixed label under the secret, so the key
/// is uniform whatever the secret's alphabet and is used for nothing else.
fn derive(secret: &str) -> Aes256Gcm {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    m.update(b"chatq user token key v1");
    Aes256Gcm::new(&m.finalize().into_bytes())
}

impl TokenKeys {
    /// Keys from the current secret and, during a rotation, the previous one.
    pub fn new(secret: &str, previous: Option<&str>) -> Self {
        Self { current: derive(secret), previous: previous.map(derive) }
    }

    /// Seals `grant` under the current secret.
    pub fn seal(&self, grant: &Grant) -> String {
        let claims = Claims {
            k: grant.key_id,
            u: grant.user.clone(),
            i: grant.issued_at_ms,
            e: grant.expires_at,
            a: grant.assistants.clone(),
        };
        let plain = serde_json::to_vec(&claims).expect("claims serialize");
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .current
            .encrypt(&nonce, Payload { msg: &plain, aad: AAD })
            .expect("AES-GCM seals any message shorter than 64 GiB");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Opens a token at `now` (unix seconds): `None` when it was not sealed by one of these
    /// keys, was changed, has expired, or claims a lifetime longer than [`MAX_TTL_SECONDS`].
    pub fn open(&self, token: &str, now: i64) -> Option<Grant> {
        let bytes = URL_SAFE_NO_PAD.decode(token.strip_prefix(PREFIX)?).ok()?;
        if bytes.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::from(<[u8; NONCE_LEN]>::try_from(nonce).ok()?);
        let payload = || Payload { msg: sealed, aad: AAD };
        let plain = self
            .current
            .decrypt(&nonce, payload())
            .or_else(|e| self.previous.as_ref().ok_or(e)?.decrypt(&nonce, payload()))
            .ok()?;
        let c: Claims = serde_json::from_slice(&plain).ok()?;
        let lifetime_ok = c.e - c.i.div_euclid(1000) <= MAX_TTL_SECONDS && c.e - now <= MAX_TTL_SECONDS;
        if c.e <= now || !lifetime_ok || c.u.is_empty() {
            return None;
        }
        Some(Grant { key_id: c.k, user: c.u, issued_at_ms: c.i, expires_at: c.e, assistants: c.a })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn grant(user: &str, expires_at: i64) -> Grant {
        Grant {
            key_id: Uuid::now_v7(),
            user: user.into(),
            issued_at_ms: (expires_at - 100) * 1000,
            expires_at,
            assistants: vec![Uuid::now_v7()],
        }
    }

    #[test]
    fn a_sealed_token_opens_until_it_expires() {
        let keys = TokenKeys::new(SECRET, None);
        let g = grant("alice", 1_000);
        let t = keys.seal(&g);
        assert_eq!(keys.open(&t, 999), Some(g));
        assert_eq!(keys.open(&t, 1_000), None);
    }

    #[test]
    fn a_tampered_token_or_another_secret_is_refused() {
        let keys = TokenKeys::new(SECRET, None);
        let t = keys.seal(&grant("alice", 1_000));
        let mut bytes = URL_SAFE_NO_PAD.decode(&t[PREFIX.len()..]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(keys.open(&format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes)), 0), None);
        assert_eq!(TokenKeys::new("another-secret-another-secret-123", None).open(&t, 0), None);
        assert_eq!(keys.open(&t[..t.len() - 2], 0), None);
        assert_eq!(keys.open("cqu_garbage", 0), None);
        assert_eq!(keys.open("cqu_", 0), None);
    }

    #[test]
    fn a_token_claiming_more_than_the_maximum_lifetime_is_refused() {
        let keys = TokenKeys::new(SECRET, None);
        let far = Grant { issued_at_ms: 0, ..grant("alice", MAX_TTL_SECONDS + 1) };
        assert_eq!(keys.open(&keys.seal(&far), 1), None, "lifetime from issue exceeds the maximum");
        let backdated = Grant { issued_at_ms: 10_000_000 * 1000, ..grant("alice", 10_000_000 + 10) };
        assert_eq!(keys.open(&keys.seal(&backdated), 10_000_000 - MAX_TTL_SECONDS), None, "expiry too far ahead");
    }

    #[test]
    fn a_token_of_the_previous_secret_opens_but_new_ones_use_the_current_one() {
        let old = TokenKeys::new("previous-secret-previous-secret-1", None);
        let rotated = TokenKeys::new(SECRET, Some("previous-secret-previous-secret-1"));
        let g = grant("alice", 1_000);
        assert_eq!(rotated.open(&old.seal(&g), 0), Some(g.clone()));
        assert_eq!(old.open(&rotated.seal(&g), 0), None);
    }
}
