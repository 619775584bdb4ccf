//! User tokens: short-lived, HMAC-SHA256-signed tokens scoped to one end user of one client
//! key, safe to hand to a browser. Format: `cqu_<payload>.<signature>`, both base64url without
//! padding; the payload is JSON `{"k": key id, "u": user, "e": expiry (unix seconds)}`.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// Prefix of every user token.
pub const PREFIX: &str = "cqu_";

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Claims {
    k: Uuid,
    u: String,
    e: i64,
}

/// What a valid token grants.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    /// The client key that issued it.
    pub key_id: Uuid,
    /// The end user it acts as.
    pub user: String,
    /// Expiry, unix seconds.
    pub expires_at: i64,
}

fn mac(secret: &str) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length")
}

/// Signs a token for `user` of `key_id`, valid until `expires_at` (unix seconds).
pub fn sign(secret: &str, key_id: Uuid, user: &str, expires_at: i64) -> String {
    let claims = Claims { k: key_id, u: user.to_string(), e: expires_at };
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
    let mut m = mac(secret);
    m.update(payload.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{PREFIX}{payload}.{sig}")
}

/// Checks the signature (in constant time) and the expiry; `None` for anything invalid.
pub fn verify(secret: &str, token: &str, now: i64) -> Option<Grant> {
    let (payload, sig) = token.strip_prefix(PREFIX)?.split_once('.')?;
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    let mut m = mac(secret);
    m.update(payload.as_bytes());
    m.verify_slice(&sig).ok()?;
    let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    if claims.e <= now || claims.u.is_empty() {
        return None;
    }
    Some(Grant { key_id: claims.k, user: claims.u, expires_at: claims.e })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let key = Uuid::now_v7();
        let t = sign(SECRET, key, "alice", 1_000);
        assert_eq!(verify(SECRET, &t, 999), Some(Grant { key_id: key, user: "alice".into(), expires_at: 1_000 }));
        assert_eq!(verify(SECRET, &t, 1_000), None);
    }

    #[test]
    fn a_tampered_token_or_another_secret_is_refused() {
        let key = Uuid::now_v7();
        let t = sign(SECRET, key, "alice", 1_000);
        let other = sign(SECRET, key, "mallory", 1_000);
        let (_, sig) = t.split_once('.').unwrap();
        let (payload, _) = other.split_once('.').unwrap();
        assert_eq!(verify(SECRET, &format!("{payload}.{sig}"), 0), None);
        assert_eq!(verify("another-secret-another-secret-123", &t, 0), None);
        assert_eq!(verify(SECRET, &t[..t.len() - 2], 0), None);
        assert_eq!(verify(SECRET, "cqu_garbage", 0), None);
    }
}
