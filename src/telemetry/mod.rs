//! Logs, metrics and the status board: the one place that names metrics and sets up tracing.
//!
//! Owns the tracing subscriber, the Prometheus registry with every `kevents_` metric, and the
//! status/readiness board that `/status` and `/readyz` read. It never decides anything about the
//! pipeline; components report into it.

mod liveness;
mod metrics;
mod status;

pub use liveness::Liveness;
pub use metrics::Metrics;
pub use status::StatusBoard;

/// Readiness condition raised while the leader has not finished its first list or resume: the
/// elector raises it the instant it publishes a term, the pipeline clears it when the source
/// reports the list done (and when the term's pipeline ends: a follower is ready).
pub const PIPELINE_READY: &str = "pipeline";

/// Readiness condition raised while the sink's health check fails, or while sends ran into a
/// configuration problem only an operator can fix. It never stops capture or shipping, and it is
/// cleared when the term ends (a follower is ready).
pub const SINK_READY: &str = "sink";

use crate::config::{LogConfig, LogFormat};

/// The filter for `level`: the Kubernetes client's own per-request error lines are silenced
/// (kevents logs every failure it acts on, once, with context) unless `level` names `kube`.
#[must_use]
pub fn filter_directives(level: &str) -> String {
    if level.contains("kube") {
        level.to_owned()
    } else {
        format!("{level},kube_client=off,kube=off")
    }
}

/// Installs the global tracing subscriber (stderr). Call once, from `main`.
pub fn init_tracing(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(filter_directives(&log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    // A second call (tests) keeps the first subscriber.
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// An error and all its causes, `: `-separated, for one log field.
#[must_use]
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
