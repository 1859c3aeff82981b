//! Every `kevents_` metric, registered in one registry per process.
//!
//! Names follow Prometheus conventions: base units, `_total` counters, labels from closed sets
//! only (never object names). Must never register a label whose values come from input data.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The metrics of one kevents process.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `kevents_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
    /// `kevents_leader`: 1 while this replica holds a current lease.
    pub leader: IntGauge,
    /// `kevents_leader_transitions_total`: times this replica became leader.
    pub leader_transitions: IntCounter,
    /// `kevents_lease_renew_duration_seconds`: duration of successful lease renewals.
    pub lease_renew_duration: Histogram,
    /// `kevents_lease_renew_failures_total`: failed lease renewals (errors and conflicts).
    pub lease_renew_failures: IntCounter,
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
        let leader = IntGauge::new(
            "kevents_leader",
            "1 while this replica holds a current lease, else 0",
        )?;
        let leader_transitions = IntCounter::new(
            "kevents_leader_transitions_total",
            "Times this replica became leader",
        )?;
        let lease_renew_duration = Histogram::with_opts(
            HistogramOpts::new(
                "kevents_lease_renew_duration_seconds",
                "Duration of successful lease renewals",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let lease_renew_failures = IntCounter::new(
            "kevents_lease_renew_failures_total",
            "Failed lease renewals (API errors, timeouts and conflicts)",
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(leader_transitions.clone()))?;
        registry.register(Box::new(lease_renew_duration.clone()))?;
        registry.register(Box::new(lease_renew_failures.clone()))?;
        Ok(Self {
            registry,
            build_info,
            leader,
            leader_transitions,
            lease_renew_duration,
            lease_renew_failures,
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
