//! Signed webhooks, the parts the API and the worker share: event names, signing secrets (made,
//! sealed at rest, opened), the Standard Webhooks signature, the retry schedule, the check of
//! destination addresses, and the `data` object of each event.
//!
//! Secrets are sealed with AES-256-GCM under a key derived from `CHATQ_TOKEN_SECRET` (the
//! secret material the API and worker already share) rather than hashed: the worker needs them
//! in clear to sign. A database dump alone reveals none of them.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, AeadCore, OsRng, Payload},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::db::{knowledge::Document, runs::Run};

/// Every event a webhook can subscribe to.
pub const EVENTS: &[&str] = &["run.completed", "run.failed", "document.ready", "document.failed", "batch.completed"];

/// Prefix of a signing secret, as Standard Webhooks writes them.
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a signing secret.
const SECRET_BYTES: usize = 32;

/// Delay before each retry: attempt `n` (1-based) failed, the next one waits `RETRY_SCHEDULE[n-1]`.
/// The Standard Webhooks schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, so 8 attempts over
/// about 27 hours; after the last the delivery is `failed` (it can still be retried by hand).
pub const RETRY_SCHEDULE: &[Duration] = &[
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// The wait after failed attempt `attempt` (1-based), or `None` when it was the last.
pub fn retry_delay(attempt: i32) -> Option<Duration> {
    usize::try_from(attempt).ok().and_then(|n| n.checked_sub(1)).and_then(|i| RETRY_SCHEDULE.get(i)).copied()
}

/// A new signing secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The HMAC key of a secret: the base64 after `whsec_`, decoded.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()
}

/// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")): the `webhook-signature` header.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = secret_key(secret)?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// Bound into every seal, so nothing else sealed with the same key opens as a webhook secret.
const AAD: &[u8] = b"chatq webhook secret v1";
const NONCE_LEN: usize = 12;

/// Seals and opens signing secrets. The current key seals and opens; the key of
/// `CHATQ_TOKEN_SECRET_PREVIOUS` only opens, so that secret can be rotated.
pub struct SecretBox {
    current: Aes256Gcm,
    previous: Option<Aes256Gcm>,
}

fn derive(secret: &str) -> Aes256Gcm {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    m.update(b"chatq webhook secret key v1");
    Aes256Gcm::new(&m.finalize().into_bytes())
}

impl SecretBox {
    /// Keys from the current server secret and, during a rotation, the previous one.
    pub fn new(secret: &str, previous: Option<&str>) -> Self {
        Self { current: derive(secret), previous: previous.map(derive) }
    }

    /// The box of this configuration, `None` without `CHATQ_TOKEN_SECRET`.
    pub fn from_config(config: &crate::config::Config) -> Option<Self> {
        use secrecy::ExposeSecret as _;
        let secret = config.auth.token_secret.as_ref()?;
        let previous = config.auth.token_secret_previous.as_ref().map(|p| p.expose_secret().to_string());
        Some(Self::new(secret.expose_secret(), previous.as_deref()))
    }

    /// `nonce ‖ ciphertext ‖ tag` of `plain`.
    pub fn seal(&self, plain: &str) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .current
            .encrypt(&nonce, Payload { msg: plain.as_bytes(), aad: AAD })
            .expect("AES-GCM seals any message under 64 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// The secret sealed in `sealed`, `None` if neither key opens it.
    pub fn open(&self, sealed: &[u8]) -> Option<String> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::from(<[u8; NONCE_LEN]>::try_from(nonce).ok()?);
        let open = |k: &Aes256Gcm| k.decrypt(&nonce, Payload { msg: body, aad: AAD }).ok();
        let plain = open(&self.current).or_else(|| self.previous.as_ref().and_then(open))?;
        String::from_utf8(plain).ok()
    }
}

/// Why a webhook URL is refused at creation.
pub fn url_problem(url: &str) -> Option<&'static str> {
    let Ok(u) = reqwest::Url::parse(url) else { return Some("must be an absolute http or https URL") };
    if !matches!(u.scheme(), "http" | "https") {
        return Some("must use http or https");
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Some("must name a host");
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Some("must not carry credentials");
    }
    if u.fragment().is_some() {
        return Some("must not have a fragment");
    }
    if url.len() > 2048 {
        return Some("must be at most 2048 characters");
    }
    None
}

/// Whether a webhook may be sent to `ip` when private destinations are not allowed: not
/// loopback, private, link-local, unspecified, multicast, broadcast, CGNAT (100.64/10),
/// reserved or documentation ranges, nor an IPv6 unique-local or IPv4-mapped form of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 to any IPv4
                || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0)) // IPv4-compatible
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || o[0] >= 240) // reserved
}

/// `data` of a run event: the run as `GET /v1/runs/{id}` returns it.
pub fn run_data(r: &Run, citations: Value) -> Value {
    let usage = match (r.input_tokens, r.cached_input_tokens, r.output_tokens) {
        (Some(i), c, Some(o)) => json!({"input_tokens": i, "cached_input_tokens": c.unwrap_or(0), "output_tokens": o}),
        _ => Value::Null,
    };
    let error = match r.error_code {
        Some(code) => json!({"code": code, "message": r.error_message.clone().unwrap_or_default()}),
        None => Value::Null,
    };
    json!({
        "id": r.id,
        "object": "run",
        "thread_id": r.thread_id,
        "assistant_id": r.assistant_id,
        "user_message_id": r.user_message_id,
        "status": r.status,
        "attempt": r.attempt,
        "model": r.model,
        "upstream": r.upstream,
        "output_text": r.output_text,
        "last_seq": r.last_seq,
        "finish_reason": r.finish_reason,
        "usage": usage,
        "cost_usd": r.cost_usd,
        "error": error,
        "waiting_reason": r.waiting_reason,
        "citations": citations,
        "created_at": r.created_at,
        "started_at": r.started_at,
        "first_token_at": r.first_token_at,
        "completed_at": r.completed_at,
    })
}

/// `data` of a document event: the document as `GET /v1/documents/{id}` returns it.
pub fn document_data(d: &Document) -> Value {
    let error = match d.error_code {
        Some(code) => json!({"code": code, "message": d.error_message.clone().unwrap_or_default()}),
        None => Value::Null,
    };
    json!({
        "id": d.id,
        "object": "document",
        "knowledge_base_id": d.knowledge_base_id,
        "batch_id": d.batch_id,
        "filename": d.filename,
        "media_type": d.media_type,
        "size_bytes": d.size_bytes,
        "sha256": hex::encode(&d.sha256),
        "status": d.status,
        "error": error,
        "chunk_count": d.chunk_count,
        "token_count": d.token_count,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    })
}

/// `data` of a batch event: the batch as `GET /v1/ingestion-batches/{id}` returns it.
pub fn batch_data(batch: &crate::db::knowledge::Batch, docs: &[Document]) -> Value {
    use crate::domain::DocumentStatus;
    let count = |s: DocumentStatus| docs.iter().filter(|d| d.status == s).count() as i64;
    let duplicate = batch.duplicate_count as i64;
    json!({
        "id": batch.id,
        "knowledge_base_id": batch.knowledge_base_id,
        "counts": {
            "queued": count(DocumentStatus::Queued),
            "processing": count(DocumentStatus::Processing),
            "ready": count(DocumentStatus::Ready),
            "failed": count(DocumentStatus::Failed),
            "duplicate": duplicate,
            "total": docs.len() as i64 + duplicate,
        },
        "documents": docs.iter().map(document_data).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn a_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (spec/standard-webhooks.md).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn sealed_secrets_open_with_the_current_or_previous_key_only() {
        let old = SecretBox::new("old-secret-old-secret-old-secret-0000", None);
        let sealed = old.seal("whsec_abc");
        assert_eq!(old.open(&sealed).as_deref(), Some("whsec_abc"));
        let rotated =
            SecretBox::new("new-secret-new-secret-new-secret-0000", Some("old-secret-old-secret-old-secret-0000"));
        assert_eq!(rotated.open(&sealed).as_deref(), Some("whsec_abc"));
        let other = SecretBox::new("new-secret-new-secret-new-secret-0000", None);
        assert_eq!(other.open(&sealed), None);
        assert!(!String::from_utf8_lossy(&sealed).contains("whsec_abc"));
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} counted as public");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "100.128.0.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} counted as private");
        }
        assert!(!is_public(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn urls_need_http_a_host_and_no_credentials() {
        assert_eq!(url_problem("https://example.com/hook"), None);
        assert_eq!(url_problem("http://127.0.0.1:8080/x"), None);
        assert!(url_problem("ftp://example.com").is_some());
        assert!(url_problem("https://user:pw@example.com").is_some());
        assert!(url_problem("not a url").is_some());
        assert!(url_problem("https://example.com/#frag").is_some());
    }

    #[test]
    fn the_retry_schedule_spans_more_than_a_day() {
        let total: Duration = RETRY_SCHEDULE.iter().sum();
        assert!(total > Duration::from_secs(24 * 3600));
        assert_eq!(retry_delay(1), Some(Duration::from_secs(5)));
        assert_eq!(retry_delay(8), None);
        assert_eq!(retry_delay(0), None);
    }

    #[test]
    fn new_secrets_carry_at_least_24_random_bytes() {
        let s = new_secret();
        assert!(s.starts_with(SECRET_PREFIX));
        assert!(secret_key(&s).unwrap().len() >= 24);
        assert_ne!(s, new_secret());
    }
}
