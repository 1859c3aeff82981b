//! `kevents-lab bench adx` (queued ingestion into the ADX emulator on Azurite, in events/s).
//!
//! Owns the benchmark's procedure and figures. It never asserts a timing: it measures and
//! reports.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt as _;

use kevents::{
    config::Config,
    sink::{AdxSink, OutgoingBatch, Sink as _},
    telemetry::Metrics,
};
use kevents_testkit::adx::{AdxEmulator, AdxEmulatorConfig, synthetic_batch_id, synthetic_payload};

/// A batch of `count` synthetic records starting at record `first`, id `{prefix}-{first}`.
#[must_use]
pub fn synthetic_batch(prefix: &str, first: u64, count: u64) -> OutgoingBatch {
    OutgoingBatch {
        id: synthetic_batch_id(prefix, first, count),
        payload: synthetic_payload(first, count).into(),
        events: count,
    }
}

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events in total.
    pub events: u64,
    /// Events per batch.
    pub batch_events: u64,
    /// Batches in flight at once (the shipper sends one at a time: 1 is the product's figure).
    pub concurrency: usize,
}

/// What the benchmark measured.
#[derive(Debug, Clone)]
pub struct BenchOutcome {
    /// Events sent.
    pub events: u64,
    /// Uncompressed bytes sent.
    pub bytes: u64,
    /// From the first send to the last confirmed send.
    pub send_time: Duration,
    /// From the first send to the last row stored by the emulator's worker.
    pub ingest_time: Duration,
    /// Rows stored.
    pub rows: usize,
    /// Distinct `(Uid, ResourceVersion)` among them.
    pub distinct: usize,
}

/// The rate queued ingestion must reach end to end, events/s (issue 4/7 acceptance).
pub const TARGET_EVENTS_PER_SECOND: f64 = 10_000.0;

impl BenchOutcome {
    /// Events per second over `time`.
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    pub fn rate(&self, time: Duration) -> f64 {
        self.events as f64 / time.as_secs_f64()
    }

    /// Every event arrived once (plus the warm-up row).
    #[must_use]
    pub fn is_exact(&self) -> bool {
        self.distinct == self.rows
            && self.rows == usize::try_from(self.events + 1).unwrap_or(usize::MAX)
    }

    /// Exact, and ingested as rows at [`TARGET_EVENTS_PER_SECOND`] or faster.
    #[must_use]
    pub fn meets_target(&self) -> bool {
        self.is_exact() && self.rate(self.ingest_time) >= TARGET_EVENTS_PER_SECOND
    }
}

/// Runs the queued-ingestion benchmark against a fresh emulator (which starts Azurite).
///
/// # Errors
/// Emulator start-up or a failed send.
pub async fn bench(options: BenchOptions) -> anyhow::Result<BenchOutcome> {
    let emulator = AdxEmulator::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        AdxEmulatorConfig::default(),
    )
    .await
    .context("starting the ADX emulator")?;
    let yaml = format!(
        "cluster:\n  name: bench\n{}",
        emulator.sink_yaml("bench", "queued", kevents_testkit::adx::QUICK_POLLING)
    );
    let config = Config::parse(&yaml, &kevents::config::Environment::process())
        .context("the benchmark's sink config")?;
    let kevents::config::SinkConfig::Adx(adx) = &config.sink else {
        anyhow::bail!("the benchmark's sink config is not an ADX sink");
    };
    let sink = AdxSink::new(adx, Metrics::new()?)?;
    // Warm-up: resources, connections.
    let warm = synthetic_batch("warm", 0, 1);
    sink.send(&warm).await?;
    let batches: Vec<OutgoingBatch> = (0..options.events.div_ceil(options.batch_events))
        .map(|i| {
            let first = 1 + i * options.batch_events;
            let count = options.batch_events.min(options.events + 1 - first);
            synthetic_batch("bench", first, count)
        })
        .collect();
    let bytes = batches.iter().map(|b| b.payload.len() as u64).sum();
    let started = Instant::now();
    let sink = &sink;
    let results: Vec<_> = futures::stream::iter(batches.iter())
        .map(|batch| async move { sink.send(batch).await })
        .buffer_unordered(options.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    for result in results {
        result?;
    }
    let send_time = started.elapsed();
    let expected = usize::try_from(options.events + 1).unwrap_or(usize::MAX);
    let rows = emulator
        .wait_for_rows("bench", "KubeEvents", expected, Duration::from_secs(600))
        .await;
    let ingest_time = started.elapsed();
    let distinct = emulator
        .state()
        .rows("bench", "KubeEvents")
        .iter()
        .filter_map(|row| kevents_testkit::oracle::key_of(&serde_json::Value::Object(row.clone())))
        .collect::<HashSet<_>>()
        .len();
    emulator.shutdown().await;
    Ok(BenchOutcome {
        events: options.events,
        bytes,
        send_time,
        ingest_time,
        rows,
        distinct,
    })
}
