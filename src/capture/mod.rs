//! Capture: turns the source's event versions into output records and commits them durably, many
//! per transaction, together with the checkpoint.
//!
//! Owns group commit: the first event of a group opens a commit window (`commit_window`); what
//! arrives until the window ends, or until `max_commit_events` are gathered (whichever comes
//! first), goes into one transaction and one flush. A group that already holds a source batch
//! (256 events) does not wait for more: at relist speed the groups are what the source had
//! ready. So flushes, wake-ups and metric updates per second stay about the same whatever the
//! event rate, and the cost per event stays flat at the low rates real clusters produce. Nothing
//! is acknowledged before its flush: the checkpoint moves in the same transaction, and events
//! still gathering when the stage stops are dropped, not committed (the next term reads them
//! again from the checkpoint). It also owns the bounded outbox (when the outbox and the dead tree
//! together are full, capture pauses, says so in a metric and a log line, and resumes when the
//! shipper made room — it never drops), and the counting of unusable objects. Dedupe by (uid,
//! resourceVersion) happens inside the store's transaction. It must never advance the checkpoint
//! past an event that is not durable.

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

/// How long a group gathers events after its first one before it is committed, unless it fills
/// up first: at most this much capture latency, for about ten flushes a second at any rate.
pub const COMMIT_WINDOW: Duration = Duration::from_millis(100);

/// Why a group stopped gathering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupEnd {
    /// It holds `max_commit_events` events, or a source's batch with nothing more ready.
    Full,
    /// Its window ended.
    Window,
    /// The source's channel closed (commit what came, then stop).
    Closed,
    /// The stage is stopping (drop what came: nothing of it is acknowledged).
    Stopped,
}

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
    /// How long a group gathers after its first event ([`COMMIT_WINDOW`]).
    pub commit_window: Duration,
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
            // Decode into compact records at once, and keep taking what the source sends until
            // the window ends or one transaction's worth is gathered: one flush for all of it.
            let mut pending = Pending::default();
            let end = self
                .gather(&mut rx, &mut buffer, &mut pending, &stop)
                .await?;
            if end == GroupEnd::Stopped {
                return Ok(());
            }
            self.commit(pending).await?;
            if end == GroupEnd::Closed {
                return Ok(());
            }
        }
    }

    /// Prepares what `buffer` holds and what arrives until the group is full or its window
    /// ends.
    async fn gather(
        &self,
        rx: &mut mpsc::Receiver<SourceItem>,
        buffer: &mut Vec<SourceItem>,
        pending: &mut Pending,
        stop: &CancellationToken,
    ) -> Result<GroupEnd, Error> {
        let window_ends = tokio::time::Instant::now() + self.commit_window;
        loop {
            for item in buffer.drain(..) {
                if let SourceItem::Rewound = item {
                    self.rewound(std::mem::take(pending)).await?;
                } else {
                    self.prepare(pending, item);
                }
            }
            let room = self.max_commit_events.saturating_sub(pending.items.len());
            if room == 0 {
                return Ok(GroupEnd::Full);
            }
            // Events arrive faster than a window can wait for (a relist, a burst): commit what
            // the source had ready, as capture did before windows, so a transaction stays as
            // small as the source's pace allows instead of growing to `max_commit_events`.
            if pending.items.len() >= SOURCE_BATCH && rx.is_empty() {
                return Ok(GroupEnd::Full);
            }
            let received = tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(GroupEnd::Stopped),
                n = rx.recv_many(buffer, room.min(SOURCE_BATCH)) => n,
                () = tokio::time::sleep_until(window_ends) => return Ok(GroupEnd::Window),
            };
            if received == 0 {
                return Ok(GroupEnd::Closed);
            }
        }
    }

    fn prepare(&self, pending: &mut Pending, item: SourceItem) {
        match item {
            SourceItem::Upsert {
                object,
                checkpoint: position,
                listed,
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
                            listed: listed.map(|listed| store::ListPosition {
                                list_resource_version: listed.resource_version,
                                list_run: listed.run,
                                key: listed.key,
                            }),
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
        if outcome.unordered_list {
            tracing::warn!(
                "A list returned its events out of key order: the rest of it is deduped by one entry per event (more memory), and what it captured before may be captured again if this leader stops before the list ends"
            );
        }
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

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicBool, sync::atomic::Ordering};

    use serde_json::json;

    use super::*;
    use crate::store::{OpenOptions, SledStore};

    struct TestGuard(AtomicBool);

    impl Guard for TestGuard {
        fn is_current(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
        fn epoch(&self) -> i64 {
            1
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<SledStore>,
        tx: mpsc::Sender<SourceItem>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), Error>>,
    }

    const CHANNEL: usize = 16;

    fn start(max_commit_events: usize, commit_window: Duration) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&OpenOptions {
            path: dir.path().join("store"),
            cache_capacity: 8 << 20,
            lock_timeout: Duration::from_secs(1),
        })
        .unwrap()
        .store;
        let guard = Arc::new(TestGuard(AtomicBool::new(true)));
        store.begin_term(guard.as_ref()).unwrap();
        let store = Arc::new(store);
        let capture = Capture {
            store: Arc::clone(&store) as Arc<dyn EventStore>,
            io: IoPool::new("store", 1, Duration::from_secs(30)).unwrap(),
            guard,
            record: RecordOptions::default(),
            max_commit_events,
            commit_window,
            max_outbox_bytes: 1 << 30,
            metrics: Metrics::new().unwrap(),
            shipper_wake: Arc::new(Notify::new()),
        };
        let (tx, rx) = mpsc::channel(CHANNEL);
        let stop = CancellationToken::new();
        let task = tokio::spawn(capture.run(rx, stop.clone()));
        Fixture {
            _dir: dir,
            store,
            tx,
            stop,
            task,
        }
    }

    fn event(n: u64) -> SourceItem {
        SourceItem::Upsert {
            object: json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": format!("web-{n}"),
                    "namespace": "shop",
                    "uid": format!("uid-{n}"),
                    "resourceVersion": n.to_string(),
                    "creationTimestamp": "2024-05-01T10:00:00Z"
                },
                "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web"},
                "reason": "BackOff",
                "message": "Back-off",
                "type": "Warning"
            }),
            checkpoint: Some(n.to_string()),
            listed: None,
        }
    }

    /// Waits until capture took everything sent out of the channel (it is then gathering).
    async fn taken(tx: &mpsc::Sender<SourceItem>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tx.capacity() < CHANNEL {
            assert!(Instant::now() < deadline, "capture never took the events");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the store's checkpoint is `rv`.
    async fn checkpoint_becomes(store: &SledStore, rv: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.meta().unwrap().checkpoint.as_deref() != Some(rv) {
            assert!(
                Instant::now() < deadline,
                "the checkpoint never became {rv}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_full_group_is_committed_without_waiting_for_its_window() {
        let fx = start(3, Duration::from_secs(3600));
        fx.tx.send(event(1)).await.unwrap();
        fx.tx.send(event(2)).await.unwrap();
        taken(&fx.tx).await;
        // Two of three gathered, and the window lasts an hour: nothing is acknowledged yet.
        let meta = fx.store.meta().unwrap();
        assert_eq!(meta.checkpoint, None);
        assert_eq!(meta.outbox_events, 0);
        fx.tx.send(event(3)).await.unwrap();
        checkpoint_becomes(&fx.store, "3").await;
        assert_eq!(fx.store.meta().unwrap().outbox_events, 3);
        fx.stop.cancel();
        fx.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_group_holding_a_source_batch_is_committed_once_nothing_more_is_ready() {
        let fx = start(100_000, Duration::from_secs(3600));
        let last = SOURCE_BATCH as u64;
        for n in 1..=last {
            fx.tx.send(event(n)).await.unwrap();
        }
        // Far from full and the window lasts an hour, but the source has nothing more ready.
        checkpoint_becomes(&fx.store, &last.to_string()).await;
        assert_eq!(fx.store.meta().unwrap().outbox_events, last);
        fx.stop.cancel();
        fx.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_group_that_does_not_fill_up_is_committed_when_its_window_ends() {
        let fx = start(1000, Duration::from_millis(20));
        fx.tx.send(event(7)).await.unwrap();
        fx.tx.send(event(8)).await.unwrap();
        checkpoint_becomes(&fx.store, "8").await;
        assert_eq!(fx.store.meta().unwrap().outbox_events, 2);
        fx.stop.cancel();
        fx.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_burst_larger_than_the_channel_after_a_slow_group_is_captured_whole() {
        let fx = start(1000, Duration::from_millis(30));
        // A slow group: the next one sleeps through its window instead of waking per event.
        fx.tx.send(event(1)).await.unwrap();
        checkpoint_becomes(&fx.store, "1").await;
        let last = 2 + 3 * CHANNEL as u64;
        for n in 2..=last {
            fx.tx.send(event(n)).await.unwrap();
        }
        checkpoint_becomes(&fx.store, &last.to_string()).await;
        assert_eq!(fx.store.meta().unwrap().outbox_events, last);
        fx.stop.cancel();
        fx.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn events_still_gathering_when_capture_stops_are_neither_stored_nor_checkpointed() {
        let fx = start(1000, Duration::from_secs(3600));
        fx.tx.send(event(1)).await.unwrap();
        fx.tx.send(event(2)).await.unwrap();
        taken(&fx.tx).await;
        fx.stop.cancel();
        fx.task.await.unwrap().unwrap();
        let meta = fx.store.meta().unwrap();
        assert_eq!(meta.checkpoint, None);
        assert_eq!(meta.outbox_events, 0);
    }

    #[tokio::test]
    async fn what_gathered_before_the_source_closes_is_committed() {
        let fx = start(1000, Duration::from_secs(3600));
        fx.tx.send(event(4)).await.unwrap();
        fx.tx.send(event(5)).await.unwrap();
        drop(fx.tx);
        fx.task.await.unwrap().unwrap();
        let meta = fx.store.meta().unwrap();
        assert_eq!(meta.checkpoint.as_deref(), Some("5"));
        assert_eq!(meta.outbox_events, 2);
    }
}
