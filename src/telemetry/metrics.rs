//! Every `kevents_` metric, registered in one registry per process.
//!
//! Names follow Prometheus conventions: base units, `_total` counters, labels from closed sets
//! only (never object names). Must never register a label whose values come from input data.

use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

/// The metrics of one kevents process.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `kevents_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    ///
    /// # Errors
    /// Fails only if two metrics share a name (a programming error caught by tests).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("kevents_build_info", "kevents build information; always 1"),
            &["version"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(Self {
            registry,
            build_info,
        })
    }

    /// The Prometheus text exposition of every metric.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_prefixed_and_build_info_is_one() {
        let metrics = Metrics::new().unwrap();
        let text = metrics.render();
        assert!(text.contains(&format!(
            "kevents_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("kevents_"), "{line}");
        }
    }
}
