//! Logging set-up shared by every binary: `tracing` with `RUST_LOG`, pretty or JSON.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber once. Logs go to stderr, so CLI output on stdout (a new key)
/// stays clean for scripts. `LOG_FORMAT=json` switches to JSON lines.
/// Calling it twice (tests) is harmless.
pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,apalis=warn,apalis_redis=warn,apalis_core=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(fmt::layer().json().with_current_span(true).with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(fmt::layer().with_target(false).with_writer(std::io::stderr)).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}
