//! Prometheus helpers shared by both processes (each has its own `Metrics` struct).

use prometheus::{Encoder, Registry, TextEncoder};

/// Buckets for request latencies in seconds (1 ms .. 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Buckets for run-level durations in seconds (10 ms .. 5 min).
pub const RUN_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The Prometheus text exposition of a registry.
pub fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail for well-formed metric families.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Registers collectors in a new registry and remembers every family name, so tests can
/// check that dashboards only use names the process exports (a labelled family with no
/// series yet does not show in `gather()`).
pub struct Registrar {
    registry: Registry,
    names: Vec<String>,
}

impl Registrar {
    /// A new, empty registry.
    pub fn new() -> Self {
        Self { registry: Registry::new(), names: Vec::new() }
    }

    /// Registers `collector` (a metric handle; its clones share state) and returns it.
    /// Panics on an invalid or duplicate metric: both are programming errors found at start.
    pub fn add<C: prometheus::core::Collector + Clone + 'static>(
        &mut self,
        collector: Result<C, prometheus::Error>,
    ) -> C {
        let collector = collector.expect("valid metric");
        self.names.extend(collector.desc().iter().map(|d| d.fq_name.clone()));
        self.registry.register(Box::new(collector.clone())).expect("metric registered once");
        collector
    }

    /// The registry and the names registered.
    pub fn finish(self) -> (Registry, Vec<String>) {
        (self.registry, self.names)
    }
}

impl Default for Registrar {
    fn default() -> Self {
        Self::new()
    }
}
