//! Capture: turns the source's event versions into output records and commits them durably, many
//! per transaction, together with the checkpoint.
//!
//! Owns group commit (everything waiting in the channel, up to `max_commit_events`, goes into one
//! transaction and one flush), the bounded outbox (when the outbox and the dead tree together are
//! full, capture pauses, says so in a metric and a log line, and resumes when the shipper made
//! room — it never drops), and the
//! counting of unusable objects. Dedupe by (uid, resourceVersion) happens inside the store's
//! transaction. It must never advance the checkpoint past an event that is not durable.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    blocking::IoPool,
    source::SourceItem,
    store::{self, CaptureItem, EventStore, Guard},
    telemetry::Metrics,
    transform::{self, RecordOptions},
};

/// Decoded events taken from the source channel at a time.
const SOURCE_BATCH: usize = 256;

/// Records decoded and waiting for their transaction.
#[derive(Default)]
struct Pending {
    items: Vec<CaptureItem>,
    checkpoint: Option<String>,
    times: Vec<Option<jiff::Timestamp>>,
}

/// How often a paused capture re-checks the outbox size.
const PAUSE_POLL: Duration = Duration::from_millis(200);

/// Why capture stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A store operation failed (including a stale fence).
    #[error("durable capture failed")]
    Store(#[from] store::Error),
    /// A store call overran its deadline (the volume may hang).
    #[error("store call did not finish in time")]
    Stuck(#[from] crate::blocking::Stuck),
}

/// The capture stage of one leadership term.
pub struct Capture {
    /// The store.
    pub store: Arc<dyn EventStore>,
    /// The threads store calls run on, with their deadline.
    pub io: IoPool,
    /// The fence of this term.
    pub guard: Arc<dyn Guard>,
    /// How records are built.
    pub record: RecordOptions,
    /// Most events per transaction.
    pub max_commit_events: usize,
    /// Capture pauses while the outbox and the dead tree together hold this many bytes.
    pub max_outbox_bytes: u64,
    /// Metrics.
    pub metrics: Metrics,
    /// Woken after each commit that added records.
    pub shipper_wake: Arc<Notify>,
}

impl Capture {
    /// Captures until the source's channel closes or `stop` is cancelled.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<SourceItem>,
        stop: CancellationToken,
    ) -> Result<(), Error> {
        let mut buffer = Vec::with_capacity(SOURCE_BATCH);
        let mut paused = false;
        loop {
            let meta = self.blocking("meta", |store| store.meta()).await?;
            // Dead batches live on the same volume: they count, so they cannot fill it.
            let outbox_bytes = meta.outbox_bytes;
            let held = outbox_bytes + meta.dead_bytes;
            if held >= self.max_outbox_bytes {
                if !paused {
                    paused = true;
                    self.metrics.capture_paused.set(1);
                    self.metrics.capture_pauses.inc();
                    tracing::warn!(
                        outbox_bytes,
                        dead_bytes = meta.dead_bytes,
                        limit = self.max_outbox_bytes,
                        "Outbox is full; capture pauses until the sink catches up (nothing is dropped)"
                    );
                }
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(PAUSE_POLL) => continue,
                }
            }
            if paused {
                paused = false;
                self.metrics.capture_paused.set(0);
                tracing::info!(outbox_bytes, "Outbox has room again; capture resumes");
            }
            buffer.clear();
            let received = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                n = rx.recv_many(&mut buffer, SOURCE_BATCH) => n,
            };
            if received == 0 {
                return Ok(());
            }
            // Decode into compact records at once, and keep taking what the source has ready,
            // up to one transaction's worth: one flush for all of it (group commit).
            let mut pending = Pending::default();
            for item in buffer.drain(..) {
                if let SourceItem::Rewound = item {
                    self.rewound(std::mem::take(&mut pending)).await?;
                } else {
                    self.prepare(&mut pending, item);
                }
            }
            while pending.items.len() < self.max_commit_events {
                match rx.try_recv() {
                    Ok(SourceItem::Rewound) => {
                        self.rewound(std::mem::take(&mut pending)).await?;
                    }
                    Ok(item) => self.prepare(&mut pending, item),
                    Err(_) => break,
                }
            }
            self.commit(pending).await?;
        }
    }

    fn prepare(&self, pending: &mut Pending, item: SourceItem) {
        match item {
            SourceItem::Upsert {
                object,
                checkpoint: position,
            } => {
                if let Some(rv) = position {
                    pending.checkpoint = Some(rv);
                }
                let key = match transform::event_key(&object) {
                    Ok(key) => key,
                    Err(error) => {
                        self.malformed("missing_key", &error);
                        return;
                    }
                };
                match transform::to_record(&object, &self.record) {
                    Ok(record) => {
                        pending.times.push(transform::event_time(&object));
                        pending.items.push(CaptureItem {
                            uid: key.uid,
                            resource_version: key.resource_version,
                            record,
                        });
                    }
                    Err(error) => self.malformed("transform", &error),
                }
            }
            SourceItem::Checkpoint(rv) => pending.checkpoint = Some(rv),
            SourceItem::Rewound => {}
        }
    }

    /// Commits what came before the marker, then forgets the checkpoint: the relist that follows
    /// is deduped by the uids seen, not by resourceVersions that went backwards.
    async fn rewound(&self, before: Pending) -> Result<(), Error> {
        self.commit(before).await?;
        let guard = Arc::clone(&self.guard);
        self.blocking("forget_checkpoint", move |store| {
            store.forget_checkpoint(guard.as_ref())
        })
        .await
    }

    async fn commit(&self, pending: Pending) -> Result<(), Error> {
        let Pending {
            items,
            checkpoint,
            times,
        } = pending;
        if items.is_empty() && checkpoint.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        let guard = Arc::clone(&self.guard);
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let outcome = {
            let store = Arc::clone(&self.store);
            self.io
                .run("capture", move || {
                    store.capture(&items, checkpoint.as_deref(), now_ms, guard.as_ref())
                })
                .await??
        };
        self.metrics
            .capture_commit_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.events_captured.inc_by(outcome.captured);
        self.metrics.events_duplicate.inc_by(outcome.duplicates);
        if outcome.captured > 0 {
            let now = jiff::Timestamp::now();
            for time in times.into_iter().flatten() {
                let lag = now.duration_since(time).as_secs_f64();
                self.metrics.capture_lag.observe(lag.max(0.0));
            }
            self.shipper_wake.notify_one();
        }
        self.metrics.checkpoint_age.set(0.0);
        Ok(())
    }

    fn malformed(&self, reason: &'static str, error: &transform::Error) {
        self.metrics
            .events_malformed
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(reason, error = %error, "Skipped an event that cannot be captured");
    }

    async fn blocking<T: Send + 'static>(
        &self,
        name: &'static str,
        op: impl FnOnce(&dyn EventStore) -> store::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let store = Arc::clone(&self.store);
        Ok(self.io.run(name, move || op(store.as_ref())).await??)
    }
}
