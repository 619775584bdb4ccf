//! The one typed configuration, read once from the environment and validated at start.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A configuration problem, always naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

/// Everything chatq reads from the environment. See `.env.example` for defaults and meanings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Postgres connection string (`DATABASE_URL`); may hold a password, so it is a secret.
    pub database_url: Secret,
    /// Redis connection string (`REDIS_URL`).
    pub redis_url: Secret,
    /// Key for the OpenAI-compatible provider (`OPENAI_API_KEY`); `None` means "no key".
    pub openai_api_key: Option<Secret>,
    /// Base URL of the provider including `/v1` (`OPENAI_BASE_URL`).
    pub openai_base_url: String,
    /// Address of the HTTP API (`CHATQ_LISTEN`).
    pub listen: SocketAddr,
    /// Address of the worker's health and metrics server (`CHATQ_WORKER_LISTEN`).
    pub worker_listen: SocketAddr,
    /// Prefix of every Redis key and queue name, so stacks and tests can share one Redis
    /// (`CHATQ_QUEUE_PREFIX`).
    pub queue_prefix: String,
    /// HMAC secret for user tokens (`CHATQ_TOKEN_SECRET`); required by the API.
    pub token_secret: Option<Secret>,
    /// Chat runs one worker process executes at once (`CHATQ_CHAT_CONCURRENCY`).
    pub chat_concurrency: usize,
    /// How often an idle worker polls the chat queue (`CHATQ_CHAT_POLL_MS`).
    pub chat_poll_interval: Duration,
    /// How long a claimed run stays leased without renewal (`CHATQ_RUN_LEASE_SECS`).
    pub run_lease: Duration,
    /// Window for coalescing deltas into one event (`CHATQ_STREAM_COALESCE_MS`).
    pub stream_coalesce: Duration,
    /// Interval of the batched event writer (`CHATQ_EVENT_FLUSH_MS`).
    pub event_flush_interval: Duration,
    /// How long a run's live Redis stream is kept after it finishes (`CHATQ_RUN_STREAM_TTL_SECS`).
    pub run_stream_ttl: Duration,
    /// Token budget for the thread history sent to the model (`CHATQ_HISTORY_MAX_TOKENS`).
    pub history_max_tokens: usize,
    /// Largest accepted chat message in bytes (`CHATQ_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// Largest accepted JSON request body in bytes (`CHATQ_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Idle timeout between two chunks of a provider stream (`CHATQ_PROVIDER_IDLE_TIMEOUT_SECS`).
    pub provider_idle_timeout: Duration,
    /// Connect timeout to the provider (`CHATQ_PROVIDER_CONNECT_TIMEOUT_SECS`).
    pub provider_connect_timeout: Duration,
    /// A pricing file replacing the built-in `ops/pricing.toml` (`CHATQ_PRICING_FILE`).
    pub pricing_file: Option<PathBuf>,
    /// Size of the Postgres pool per process (`CHATQ_DB_MAX_CONNECTIONS`).
    pub db_max_connections: u32,
    // issue 3: live streaming
    /// Origins allowed to call the API from a browser, comma-separated, or `*`
    /// (`CHATQ_CORS_ORIGINS`); empty means no CORS headers.
    pub cors_origins: Vec<String>,
}

impl Config {
    /// Reads and validates the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader { lookup: &lookup, errors: Vec::new() };
        let config = Config {
            database_url: Secret::new(r.string("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/chatq")),
            redis_url: Secret::new(r.string("REDIS_URL", "redis://127.0.0.1:6379")),
            openai_api_key: r.optional("OPENAI_API_KEY").map(Secret::new),
            openai_base_url: r.string("OPENAI_BASE_URL", "https://api.openai.com/v1").trim_end_matches('/').to_string(),
            listen: r.parse("CHATQ_LISTEN", "127.0.0.1:8080"),
            worker_listen: r.parse("CHATQ_WORKER_LISTEN", "127.0.0.1:9091"),
            queue_prefix: r.string("CHATQ_QUEUE_PREFIX", "chatq"),
            token_secret: r.optional("CHATQ_TOKEN_SECRET").map(Secret::new),
            chat_concurrency: r.parse("CHATQ_CHAT_CONCURRENCY", "256"),
            chat_poll_interval: Duration::from_millis(r.parse("CHATQ_CHAT_POLL_MS", "20")),
            run_lease: Duration::from_secs(r.parse("CHATQ_RUN_LEASE_SECS", "30")),
            stream_coalesce: Duration::from_millis(r.parse("CHATQ_STREAM_COALESCE_MS", "25")),
            event_flush_interval: Duration::from_millis(r.parse("CHATQ_EVENT_FLUSH_MS", "100")),
            run_stream_ttl: Duration::from_secs(r.parse("CHATQ_RUN_STREAM_TTL_SECS", "3600")),
            history_max_tokens: r.parse("CHATQ_HISTORY_MAX_TOKENS", "16000"),
            max_message_bytes: r.parse("CHATQ_MAX_MESSAGE_BYTES", "32768"),
            max_body_bytes: r.parse("CHATQ_MAX_BODY_BYTES", "1048576"),
            provider_idle_timeout: Duration::from_secs(r.parse("CHATQ_PROVIDER_IDLE_TIMEOUT_SECS", "120")),
            provider_connect_timeout: Duration::from_secs(r.parse("CHATQ_PROVIDER_CONNECT_TIMEOUT_SECS", "10")),
            pricing_file: r.optional("CHATQ_PRICING_FILE").map(PathBuf::from),
            db_max_connections: r.parse("CHATQ_DB_MAX_CONNECTIONS", "20"),
            // issue 3: live streaming
            cors_origins: r
                .string("CHATQ_CORS_ORIGINS", "")
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect(),
        };
        config.validate(&mut r.errors);
        if r.errors.is_empty() { Ok(config) } else { Err(ConfigError(r.errors)) }
    }

    fn validate(&self, errors: &mut Vec<String>) {
        let prefix_ok = !self.queue_prefix.is_empty()
            && self.queue_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !prefix_ok {
            errors.push("CHATQ_QUEUE_PREFIX must be non-empty and use only letters, digits, '-', '_' or '.'".into());
        }
        if let Some(secret) = &self.token_secret
            && secret.expose().len() < 32
        {
            errors.push("CHATQ_TOKEN_SECRET must be at least 32 characters".into());
        }
        if !(self.openai_base_url.starts_with("http://") || self.openai_base_url.starts_with("https://")) {
            errors.push("OPENAI_BASE_URL must start with http:// or https://".into());
        }
        for (name, value) in [
            ("CHATQ_CHAT_CONCURRENCY", self.chat_concurrency),
            ("CHATQ_MAX_MESSAGE_BYTES", self.max_message_bytes),
            ("CHATQ_MAX_BODY_BYTES", self.max_body_bytes),
            ("CHATQ_HISTORY_MAX_TOKENS", self.history_max_tokens),
        ] {
            if value == 0 {
                errors.push(format!("{name} must be greater than 0"));
            }
        }
        for origin in &self.cors_origins {
            let ok = origin == "*" || origin.starts_with("http://") || origin.starts_with("https://");
            if !ok || (origin == "*" && self.cors_origins.len() > 1) || !origin.chars().all(|c| c.is_ascii_graphic()) {
                errors.push(format!(
                    "CHATQ_CORS_ORIGINS must be `*` or a comma-separated list of origins like https://app.example.com (got {origin:?})"
                ));
            }
        }
        if self.run_lease < Duration::from_secs(3) {
            errors.push("CHATQ_RUN_LEASE_SECS must be at least 3".into());
        }
    }

    /// The API key sent to the provider; servers like the fake accept any non-empty key.
    pub fn provider_key(&self) -> &str {
        self.openai_api_key.as_ref().map(Secret::expose).unwrap_or("sk-no-key")
    }
}

struct Reader<'a, F: Fn(&str) -> Option<String>> {
    lookup: &'a F,
    errors: Vec<String>,
}

impl<F: Fn(&str) -> Option<String>> Reader<'_, F> {
    fn optional(&mut self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    fn string(&mut self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_string())
    }

    fn parse<T: FromStr>(&mut self, name: &str, default: &str) -> T
    where
        T::Err: fmt::Display,
    {
        let raw = self.string(name, default);
        match raw.trim().parse() {
            Ok(v) => v,
            Err(e) => {
                self.errors.push(format!("{name}={raw:?} is not valid: {e}"));
                // The error is reported; the built-in default keeps the struct complete.
                match default.parse() {
                    Ok(v) => v,
                    Err(_) => unreachable!("built-in default of {name} is valid"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_valid() {
        let c = from(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.queue_prefix, "chatq");
        assert!(c.openai_api_key.is_none());
    }

    #[test]
    fn every_error_names_its_variable() {
        let err =
            from(&[("CHATQ_LISTEN", "nowhere"), ("CHATQ_CHAT_CONCURRENCY", "0"), ("CHATQ_TOKEN_SECRET", "short")])
                .unwrap_err()
                .to_string();
        assert!(err.contains("CHATQ_LISTEN"), "{err}");
        assert!(err.contains("CHATQ_CHAT_CONCURRENCY"), "{err}");
        assert!(err.contains("CHATQ_TOKEN_SECRET"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = from(&[("OPENAI_API_KEY", "sk-very-secret"), ("DATABASE_URL", "postgres://u:pw@h/db")]).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk-very-secret"));
        assert!(!shown.contains("pw@"));
    }
}
