//! Every `kevents_` metric, registered in one registry per process.
//!
//! Names follow Prometheus conventions: base units, `_total` counters, labels from closed sets
//! only (never object names). Must never register a label whose values come from input data.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// `reason` values of `kevents_events_malformed_total`.
pub const MALFORMED_REASONS: &[&str] = &[
    "not_json",
    "missing_key",
    "unknown_type",
    "status_object",
    "transform",
];
/// `reason` values of `kevents_watch_restarts_total`.
pub const WATCH_RESTART_REASONS: &[&str] = &["timeout", "expired", "error", "stalled", "closed"];
/// `outcome` values of `kevents_batch_sends_total`.
pub const SEND_OUTCOMES: &[&str] = &["success", "retriable_error", "permanent_error"];

/// `operation` values of the `kevents_adx_requests_total` and
/// `kevents_adx_request_duration_seconds` metrics.
pub const ADX_OPERATIONS: &[&str] = &[
    "token",
    "mgmt",
    "blob_upload",
    "enqueue",
    "streaming",
    "query",
    "failed_ingestions_poll",
    "status_table",
];
/// `outcome` values of `kevents_adx_requests_total`.
pub const ADX_OUTCOMES: &[&str] = &["success", "throttled", "retriable_error", "permanent_error"];
/// `stage` values of `kevents_adx_batches_total`: how a delivered batch reached ADX.
/// `already_ingested`: a re-sent batch found already in the table, so not sent again.
pub const ADX_ROUTES: &[&str] = &["queued", "streaming", "already_ingested"];
/// `reason` values of `kevents_adx_managed_fallbacks_total`.
/// `resend`: a batch that may have reached ADX goes queued, where `ingest-by` tags drop a repeat.
/// `policy_off`: the table's streaming ingestion policy is off (streaming is retried every 15 min).
/// `query_forbidden`: such a batch could not be looked up (403: the identity lacks Database
/// Viewer), so it goes queued with its tag; in streaming mode too, when an ingest endpoint is set.
pub const ADX_FALLBACK_REASONS: &[&str] = &[
    "transient",
    "throttled",
    "too_large",
    "suspended",
    "resend",
    "policy_off",
    "query_forbidden",
];
/// `status` values of `kevents_adx_ingestion_status_total`: what a queued batch's status row
/// said when it was final, or why it was submitted again (`pending_timeout`, `failed_transient`,
/// `row_missing`).
pub const ADX_INGESTION_STATUSES: &[&str] = &[
    "succeeded",
    "skipped",
    "failed_permanent",
    "partially_succeeded",
    "failed_transient",
    "pending_timeout",
    "row_missing",
];
/// `reason` values of `kevents_adx_ingestion_failures_total` (the DM's `FailureStatus`).
pub const ADX_FAILURE_STATUSES: &[&str] = &["permanent", "transient", "exhausted", "unknown"];

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
    /// `kevents_capture_stalled`: 1 while this replica leads but its pipeline makes no capture
    /// progress (failing, restarting, or a store call stuck past its deadline).
    pub capture_stalled: IntGauge,
    /// `kevents_pipeline_failures_total`: leader pipeline runs that ended in an error.
    pub pipeline_failures: IntCounter,
    /// `kevents_leader_stepdowns_total`: times this replica released the lease because its
    /// pipeline could not make progress.
    pub leader_stepdowns: IntCounter,
    /// `kevents_identity_clash`: 1 while another process holds the Lease under this replica's
    /// identity.
    pub identity_clash: IntGauge,
    /// `kevents_events_received_total`: ADDED/MODIFIED events read from the API server.
    pub events_received: IntCounter,
    /// `kevents_events_captured_total`: new event versions durably captured.
    pub events_captured: IntCounter,
    /// `kevents_events_duplicate_total`: event versions dropped as already captured.
    pub events_duplicate: IntCounter,
    /// `kevents_events_filtered_total`: events dropped by the configured filters.
    pub events_filtered: IntCounter,
    /// `kevents_events_malformed_total{reason}`: watch lines or objects that could not be used.
    pub events_malformed: IntCounterVec,
    /// `kevents_events_shipped_total`: records the sink confirmed.
    pub events_shipped: IntCounter,
    /// `kevents_events_dead_total`: records moved to the dead tree.
    pub events_dead: IntCounter,
    /// `kevents_outbox_events`: records waiting to be shipped.
    pub outbox_events: IntGauge,
    /// `kevents_outbox_bytes`: bytes waiting to be shipped.
    pub outbox_bytes: IntGauge,
    /// `kevents_capture_commit_duration_seconds`: durable capture transactions.
    pub capture_commit_duration: Histogram,
    /// `kevents_capture_lag_seconds`: event time to durable capture.
    pub capture_lag: Histogram,
    /// `kevents_capture_paused`: 1 while capture waits for room in the outbox.
    pub capture_paused: IntGauge,
    /// `kevents_capture_pauses_total`: times capture paused on a full outbox.
    pub capture_pauses: IntCounter,
    /// `kevents_batch_send_duration_seconds`: sink sends.
    pub batch_send_duration: Histogram,
    /// `kevents_batch_sends_total{outcome}`: sink sends by outcome.
    pub batch_sends: IntCounterVec,
    /// `kevents_dead_batches_total`: batches moved to the dead tree.
    pub dead_batches: IntCounter,
    /// `kevents_dead_dropped_events_total`: records of dead batches dropped, oldest first, to keep
    /// the dead tree within `store.max_dead_bytes`.
    pub dead_dropped_events: IntCounter,
    /// `kevents_watch_restarts_total{reason}`: watch streams restarted.
    pub watch_restarts: IntCounterVec,
    /// `kevents_relists_total`: paged LISTs (first start or after 410).
    pub relists: IntCounter,
    /// `kevents_watch_expired_total`: 410 Gone answers (in-stream or HTTP).
    pub watch_expired: IntCounter,
    /// `kevents_resource_version_rewinds_total`: relists whose resourceVersion went backwards.
    pub rv_rewinds: IntCounter,
    /// `kevents_checkpoint_age_seconds`: time since the checkpoint last advanced.
    pub checkpoint_age: Gauge,
    /// `kevents_capture_gaps_total`: resumes from a checkpoint older than the event TTL.
    pub capture_gaps: IntCounter,
    /// `kevents_store_quarantined_total`: unreadable stores moved aside.
    pub store_quarantined: IntCounter,
    /// `kevents_store_handover_seconds`: copying the previous term's store at a term's start.
    pub store_handover_seconds: Histogram,
    /// `kevents_seen_entries`: dedupe entries held.
    pub seen_entries: IntGauge,
    /// `kevents_seen_pruned_total`: dedupe entries pruned.
    pub seen_pruned: IntCounter,
    /// `kevents_adx_requests_total{operation,outcome}`: HTTP requests of the ADX sink.
    pub adx_requests: IntCounterVec,
    /// `kevents_adx_request_duration_seconds{operation}`: their duration.
    pub adx_request_duration: HistogramVec,
    /// `kevents_adx_batches_total{stage}`: batches ADX accepted, by route (queued, streaming).
    pub adx_batches: IntCounterVec,
    /// `kevents_adx_raw_bytes_total`: uncompressed bytes handed to ADX.
    pub adx_raw_bytes: IntCounter,
    /// `kevents_adx_compressed_bytes_total`: gzip bytes sent to ADX.
    pub adx_compressed_bytes: IntCounter,
    /// `kevents_adx_blob_already_uploaded_total`: uploads answered 409 (a re-send).
    pub adx_blob_already_uploaded: IntCounter,
    /// `kevents_adx_managed_fallbacks_total{reason}`: batches sent queued instead of streaming
    /// (managed mode; in streaming mode, re-sends that could not be looked up).
    pub adx_managed_fallbacks: IntCounterVec,
    /// `kevents_adx_token_refreshes_total{outcome}`: AAD token fetches.
    pub adx_token_refreshes: IntCounterVec,
    /// `kevents_adx_resource_refreshes_total{outcome}`: ingestion resource fetches.
    pub adx_resource_refreshes: IntCounterVec,
    /// `kevents_adx_ingestion_failures_total{reason}`: failed queued ingestions of this
    /// collector's batches, read from the failed-ingestions queue.
    pub adx_ingestion_failures: IntCounterVec,
    /// `kevents_adx_ingestion_status_total{status}`: status rows of queued batches read final,
    /// or read as a reason to submit the batch again.
    pub adx_ingestion_status: IntCounterVec,
    /// `kevents_batches_awaiting_confirmation`: batches the sink accepted for later processing
    /// whose outcome is not known yet (they stay in the outbox).
    pub batches_awaiting: IntGauge,
    /// `kevents_batch_resubmissions_total`: submitted batches the sink said would not land, sent
    /// again.
    pub batch_resubmissions: IntCounter,
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
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let metric = IntCounter::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let metric = IntGauge::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let histogram =
            |name: &str, help: &str, buckets: Vec<f64>| -> Result<Histogram, prometheus::Error> {
                let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let labelled = |name: &str,
                        help: &str,
                        label: &str,
                        values: &[&str]|
         -> Result<IntCounterVec, prometheus::Error> {
            let metric = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(metric.clone()))?;
            for value in values {
                metric.with_label_values(&[*value]);
            }
            Ok(metric)
        };
        let fast = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let slow = vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        let events_received = counter(
            "kevents_events_received_total",
            "ADDED/MODIFIED events read from the API server",
        )?;
        let events_captured = counter(
            "kevents_events_captured_total",
            "New event versions durably captured",
        )?;
        let events_duplicate = counter(
            "kevents_events_duplicate_total",
            "Event versions dropped as already captured (uid, resourceVersion)",
        )?;
        let events_filtered = counter(
            "kevents_events_filtered_total",
            "Events dropped by the configured filters",
        )?;
        let events_malformed = labelled(
            "kevents_events_malformed_total",
            "Watch lines or objects that could not be used",
            "reason",
            MALFORMED_REASONS,
        )?;
        let events_shipped = counter("kevents_events_shipped_total", "Records the sink confirmed")?;
        let events_dead = counter(
            "kevents_events_dead_total",
            "Records moved to the dead tree after a permanent sink error",
        )?;
        let outbox_events = gauge("kevents_outbox_events", "Records waiting to be shipped")?;
        let outbox_bytes = gauge("kevents_outbox_bytes", "Bytes waiting to be shipped")?;
        let capture_commit_duration = histogram(
            "kevents_capture_commit_duration_seconds",
            "Durable capture transactions (one flush each)",
            fast.clone(),
        )?;
        let capture_lag = histogram(
            "kevents_capture_lag_seconds",
            "Time from an event's own timestamp to its durable capture",
            slow.clone(),
        )?;
        let capture_paused = gauge(
            "kevents_capture_paused",
            "1 while capture waits for room in the outbox",
        )?;
        let capture_pauses = counter(
            "kevents_capture_pauses_total",
            "Times capture paused because the outbox was full",
        )?;
        let batch_send_duration = histogram(
            "kevents_batch_send_duration_seconds",
            "Sink sends of one batch",
            slow.clone(),
        )?;
        let batch_sends = labelled(
            "kevents_batch_sends_total",
            "Sink sends by outcome",
            "outcome",
            SEND_OUTCOMES,
        )?;
        let dead_batches = counter(
            "kevents_dead_batches_total",
            "Batches moved to the dead tree after a permanent sink error",
        )?;
        let dead_dropped_events = counter(
            "kevents_dead_dropped_events_total",
            "Records of dead batches dropped (oldest first) to keep the dead tree within store.max_dead_bytes",
        )?;
        let watch_restarts = labelled(
            "kevents_watch_restarts_total",
            "Watch streams restarted, by reason",
            "reason",
            WATCH_RESTART_REASONS,
        )?;
        let relists = counter(
            "kevents_relists_total",
            "Paged LISTs of events (first start, or after 410 Gone)",
        )?;
        let watch_expired = counter(
            "kevents_watch_expired_total",
            "410 Gone answers from the API server (in-stream or HTTP)",
        )?;
        let rv_rewinds = counter(
            "kevents_resource_version_rewinds_total",
            "Relists whose resourceVersion was below the checkpoint (restored API server data)",
        )?;
        let capture_stalled = gauge(
            "kevents_capture_stalled",
            "1 while this replica leads but its pipeline makes no capture progress (failing, \
             restarting, or a store call stuck past its deadline)",
        )?;
        let pipeline_failures = counter(
            "kevents_pipeline_failures_total",
            "Leader pipeline runs that ended in an error",
        )?;
        let leader_stepdowns = counter(
            "kevents_leader_stepdowns_total",
            "Times this replica released the lease because its pipeline could not make progress",
        )?;
        let identity_clash = gauge(
            "kevents_identity_clash",
            "1 while another process holds the Lease under this replica's identity",
        )?;
        let checkpoint_age = Gauge::new(
            "kevents_checkpoint_age_seconds",
            "Seconds since the stored checkpoint last advanced",
        )?;
        registry.register(Box::new(checkpoint_age.clone()))?;
        let capture_gaps = counter(
            "kevents_capture_gaps_total",
            "Resumes from a checkpoint older than the event TTL: events may have expired unseen",
        )?;
        let store_quarantined = counter(
            "kevents_store_quarantined_total",
            "Unreadable, corrupt or newer-format stores moved aside",
        )?;
        let store_handover_seconds = histogram(
            "kevents_store_handover_seconds",
            "Time a new leader spent copying the previous term's store (verified read)",
            slow,
        )?;
        let seen_entries = gauge("kevents_seen_entries", "Dedupe entries held in the store")?;
        let seen_pruned = counter(
            "kevents_seen_pruned_total",
            "Dedupe entries pruned after the event TTL plus margin",
        )?;
        let adx_requests = IntCounterVec::new(
            Opts::new(
                "kevents_adx_requests_total",
                "HTTP requests of the ADX sink, by operation and outcome",
            ),
            &["operation", "outcome"],
        )?;
        registry.register(Box::new(adx_requests.clone()))?;
        for operation in ADX_OPERATIONS {
            for outcome in ADX_OUTCOMES {
                adx_requests.with_label_values(&[*operation, *outcome]);
            }
        }
        let adx_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "kevents_adx_request_duration_seconds",
                "Duration of the ADX sink's HTTP requests, by operation",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["operation"],
        )?;
        registry.register(Box::new(adx_request_duration.clone()))?;
        let adx_batches = labelled(
            "kevents_adx_batches_total",
            "Batches ADX accepted, by route (queued or streaming)",
            "stage",
            ADX_ROUTES,
        )?;
        let adx_raw_bytes = counter(
            "kevents_adx_raw_bytes_total",
            "Uncompressed bytes handed to ADX",
        )?;
        let adx_compressed_bytes = counter(
            "kevents_adx_compressed_bytes_total",
            "Gzip bytes sent to ADX (blobs and streaming bodies)",
        )?;
        let adx_blob_already_uploaded = counter(
            "kevents_adx_blob_already_uploaded_total",
            "Blob uploads answered 409: a re-sent batch whose blob a previous attempt uploaded",
        )?;
        let adx_managed_fallbacks = labelled(
            "kevents_adx_managed_fallbacks_total",
            "Batches sent through queued ingestion instead of streaming (managed mode, or a \
             re-send that could not be looked up)",
            "reason",
            ADX_FALLBACK_REASONS,
        )?;
        let adx_token_refreshes = labelled(
            "kevents_adx_token_refreshes_total",
            "AAD token fetches of the ADX sink",
            "outcome",
            &["success", "error"],
        )?;
        let adx_resource_refreshes = labelled(
            "kevents_adx_resource_refreshes_total",
            "Fetches of ingestion resources and the identity token",
            "outcome",
            &["success", "error"],
        )?;
        let adx_ingestion_failures = labelled(
            "kevents_adx_ingestion_failures_total",
            "Failed queued ingestions of this collector's batches (failed-ingestions queue)",
            "reason",
            ADX_FAILURE_STATUSES,
        )?;
        let adx_ingestion_status = labelled(
            "kevents_adx_ingestion_status_total",
            "Ingestion status rows of queued batches: final outcomes, and reasons to submit again",
            "status",
            ADX_INGESTION_STATUSES,
        )?;
        let batches_awaiting = gauge(
            "kevents_batches_awaiting_confirmation",
            "Batches accepted by the sink for later processing whose outcome is not known yet",
        )?;
        let batch_resubmissions = counter(
            "kevents_batch_resubmissions_total",
            "Submitted batches that the sink said would not land, sent again",
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
            capture_stalled,
            pipeline_failures,
            leader_stepdowns,
            identity_clash,
            events_received,
            events_captured,
            events_duplicate,
            events_filtered,
            events_malformed,
            events_shipped,
            events_dead,
            outbox_events,
            outbox_bytes,
            capture_commit_duration,
            capture_lag,
            capture_paused,
            capture_pauses,
            batch_send_duration,
            batch_sends,
            dead_batches,
            dead_dropped_events,
            watch_restarts,
            relists,
            watch_expired,
            rv_rewinds,
            checkpoint_age,
            capture_gaps,
            store_quarantined,
            store_handover_seconds,
            seen_entries,
            seen_pruned,
            adx_requests,
            adx_request_duration,
            adx_batches,
            adx_raw_bytes,
            adx_compressed_bytes,
            adx_blob_already_uploaded,
            adx_managed_fallbacks,
            adx_token_refreshes,
            adx_resource_refreshes,
            adx_ingestion_failures,
            adx_ingestion_status,
            batches_awaiting,
            batch_resubmissions,
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
