//! The shipper: cuts the outbox into batches, records each batch before sending it, sends it, and
//! deletes its records only after the sink confirmed.
//!
//! Owns batching (max events / max bytes / max age), deterministic batch ids, retries with
//! backoff for retriable sink errors, and the dead tree for permanent ones. A new leader first
//! re-sends the batches its predecessor recorded but never saw confirmed, with the same ids. Every
//! store write and every send checks the fence right before acting. It must never delete a record
//! the sink has not confirmed, and never retry a permanent error.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    blocking::IoPool,
    sink::{OutgoingBatch, Sink},
    store::{self, BatchRecord, EventStore, Guard, OutboxSpan},
    telemetry::error_chain,
    telemetry::{Metrics, StatusBoard},
};

/// Batching and retry settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipperOptions {
    /// A batch holds at most this many records.
    pub max_events: usize,
    /// A batch holds at most about this many uncompressed bytes.
    pub max_bytes: u64,
    /// A record waits at most this long before its batch is cut.
    pub max_age: Duration,
    /// First retry delay after a retriable error.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl Default for ShipperOptions {
    fn default() -> Self {
        Self {
            max_events: 10_000,
            max_bytes: 16 << 20,
            max_age: Duration::from_secs(15),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// Why the shipper stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A store operation failed (including a stale fence).
    #[error("store operation failed while shipping")]
    Store(#[from] store::Error),
    /// A store call overran its deadline (the volume may hang).
    #[error("store call did not finish in time")]
    Stuck(#[from] crate::blocking::Stuck),
}

/// How long a stopping shipper waits for the send in flight to finish while its term is current.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(5);

/// `type Result<T> = Result<T, ship::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The shipper of one leadership term.
pub struct Shipper {
    /// The store.
    pub store: Arc<dyn EventStore>,
    /// The threads store calls run on, with their deadline.
    pub io: IoPool,
    /// The destination.
    pub sink: Arc<dyn Sink>,
    /// The fence of this term.
    pub guard: Arc<dyn Guard>,
    /// Settings.
    pub options: ShipperOptions,
    /// Metrics.
    pub metrics: Metrics,
    /// Status board.
    pub board: Arc<StatusBoard>,
    /// Signalled by capture when records were added.
    pub wake: Arc<Notify>,
}

enum Delivery {
    Acked,
    Dead,
    Stopped,
}

impl Shipper {
    /// Ships until `stop` is cancelled. Returns an error when the store fails or the fence goes
    /// stale (the pipeline then stops).
    pub async fn run(self, stop: CancellationToken) -> Result<()> {
        // First, what the previous leader recorded but never saw confirmed.
        let inflight = self
            .blocking("inflight_batches", |store| store.inflight_batches())
            .await?;
        let mut cursor = 0u64;
        if !inflight.is_empty() {
            tracing::info!(
                batches = inflight.len(),
                "Re-sending batches recorded by the previous term"
            );
        }
        for batch in inflight {
            cursor = cursor.max(batch.last + 1);
            if matches!(self.deliver(&batch, &stop, true).await?, Delivery::Stopped) {
                return Ok(());
            }
        }
        let mut pending_since: Option<Instant> = None;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let (max_events, max_bytes) = (self.options.max_events, self.options.max_bytes);
            // Sizes only: the records are read once, when the batch is sent.
            let span = self
                .blocking("outbox_span", move |store| {
                    store.outbox_span(cursor, max_events, max_bytes)
                })
                .await?;
            self.publish_outbox().await;
            if span.events == 0 {
                pending_since = None;
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = self.wake.notified() => continue,
                    // A safety net: capture always notifies, but never wait forever.
                    () = tokio::time::sleep(self.options.max_age) => continue,
                }
            }
            let since = *pending_since.get_or_insert_with(Instant::now);
            let full = span.events >= self.options.max_events as u64
                || span.bytes + 4096 >= self.options.max_bytes;
            let due = since + self.options.max_age;
            if !full && Instant::now() < due {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep_until(due.into()) => {}
                }
                continue;
            }
            let batch = self.cut(span).await?;
            cursor = batch.last + 1;
            pending_since = None;
            if matches!(self.deliver(&batch, &stop, false).await?, Delivery::Stopped) {
                return Ok(());
            }
        }
    }

    /// Records a batch for `span` (fenced) and returns it.
    async fn cut(&self, span: OutboxSpan) -> Result<BatchRecord> {
        let meta = self.blocking("meta", |store| store.meta()).await?;
        let batch = BatchRecord {
            id: BatchRecord::id_for(&meta.store_id, span.first, span.last),
            first: span.first,
            last: span.last,
            events: span.events,
            bytes: span.bytes,
            epoch: self.guard.epoch(),
            created_ms: jiff::Timestamp::now().as_millisecond(),
        };
        let guard = Arc::clone(&self.guard);
        let record = batch.clone();
        self.blocking("record_batch", move |store| {
            store.record_batch(&record, guard.as_ref())
        })
        .await?;
        Ok(batch)
    }

    /// Sends one recorded batch until the sink confirms it (then deletes it) or rejects it for
    /// good (then moves it to `dead`). A `recovered` batch was recorded by an earlier term, which
    /// may have delivered it: it goes through [`Sink::resend`].
    async fn deliver(
        &self,
        batch: &BatchRecord,
        stop: &CancellationToken,
        recovered: bool,
    ) -> Result<Delivery> {
        let (first, last) = (batch.first, batch.last);
        let capacity = usize::try_from(batch.bytes).unwrap_or(0);
        let (payload, events) = self
            .blocking("outbox_payload", move |store| {
                store.outbox_payload(first, last, capacity)
            })
            .await?;
        let outgoing = OutgoingBatch {
            id: batch.id.clone(),
            payload: payload.into(),
            events,
        };
        let mut delay = self.options.retry_initial;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if stop.is_cancelled() {
                return Ok(Delivery::Stopped);
            }
            if !self.guard.is_current() {
                return Err(store::Error::Fenced.into());
            }
            let started = Instant::now();
            let send = if recovered {
                self.sink.resend(&outgoing)
            } else {
                self.sink.send(&outgoing)
            };
            tokio::pin!(send);
            let result = tokio::select! {
                () = stop.cancelled() => {
                    // A stop while this term is still current (a shutdown, a rolling update):
                    // finish the send in flight, bounded, so it ends acknowledged rather than
                    // "maybe delivered" for the next leader. A send that outlives that, or the
                    // term, is abandoned; the batch stays recorded, and the next leader re-sends
                    // it with the same id.
                    if !self.guard.is_current() {
                        return Ok(Delivery::Stopped);
                    }
                    match tokio::time::timeout(IN_FLIGHT_GRACE, &mut send).await {
                        Ok(result) if self.guard.is_current() => result,
                        _ => return Ok(Delivery::Stopped),
                    }
                }
                result = &mut send => result,
            };
            self.metrics
                .batch_send_duration
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    self.metrics
                        .batch_sends
                        .with_label_values(&["success"])
                        .inc();
                    let guard = Arc::clone(&self.guard);
                    let record = batch.clone();
                    self.blocking("ack_batch", move |store| {
                        store.ack_batch(&record, guard.as_ref())
                    })
                    .await?;
                    self.metrics.events_shipped.inc_by(outgoing.events);
                    tracing::debug!(
                        batch_id = %batch.id,
                        batch_size = outgoing.events,
                        attempt,
                        "Batch delivered"
                    );
                    if attempt > 1 {
                        tracing::info!(batch_id = %batch.id, attempt, "Batch delivered after retries");
                        self.board.publish(
                            "sink",
                            serde_json::json!({ "sink": self.sink.name(), "healthy": true }),
                        );
                    }
                    return Ok(Delivery::Acked);
                }
                Err(error) if error.is_retriable() => {
                    self.metrics
                        .batch_sends
                        .with_label_values(&["retriable_error"])
                        .inc();
                    let wait = error.retry_after().map_or(delay, |after| after.max(delay));
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(
                            batch_id = %batch.id,
                            batch_size = outgoing.events,
                            attempt,
                            retry_in = ?wait,
                            error = %error_chain(&error),
                            "Batch send failed; retrying"
                        );
                    }
                    self.board.publish(
                        "sink",
                        serde_json::json!({
                            "sink": self.sink.name(),
                            "healthy": false,
                            "last_error": error.to_string(),
                            "failing_batch": batch.id,
                            "attempt": attempt,
                        }),
                    );
                    // Capture goes on while the sink is down: keep the backlog figures current.
                    self.publish_outbox().await;
                    tokio::select! {
                        () = stop.cancelled() => return Ok(Delivery::Stopped),
                        () = tokio::time::sleep(wait) => {}
                    }
                    delay = (delay * 2).min(self.options.retry_max);
                }
                Err(error) => {
                    self.metrics
                        .batch_sends
                        .with_label_values(&["permanent_error"])
                        .inc();
                    let reason = error_chain(&error);
                    tracing::error!(
                        batch_id = %batch.id,
                        batch_size = outgoing.events,
                        error = %reason,
                        "Sink rejected the batch permanently; moved to the dead tree"
                    );
                    let guard = Arc::clone(&self.guard);
                    let record = batch.clone();
                    let now = jiff::Timestamp::now().as_millisecond();
                    let dropped = self
                        .blocking("dead_batch", move |store| {
                            store.dead_batch(&record, &reason, now, guard.as_ref())
                        })
                        .await?;
                    self.metrics.dead_batches.inc();
                    self.metrics.events_dead.inc_by(outgoing.events);
                    crate::dead::report_dropped(&self.metrics, &dropped);
                    return Ok(Delivery::Dead);
                }
            }
        }
    }

    async fn publish_outbox(&self) {
        if let Ok(Ok(meta)) = {
            let store = Arc::clone(&self.store);
            self.io.run("meta", move || store.meta()).await
        } {
            self.metrics
                .outbox_events
                .set(i64::try_from(meta.outbox_events).unwrap_or(i64::MAX));
            self.metrics
                .outbox_bytes
                .set(i64::try_from(meta.outbox_bytes).unwrap_or(i64::MAX));
            self.board.publish(
                "outbox",
                serde_json::json!({
                    "events": meta.outbox_events,
                    "bytes": meta.outbox_bytes,
                    "dead_events": meta.dead_events,
                    "checkpoint": meta.checkpoint,
                }),
            );
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        name: &'static str,
        op: impl FnOnce(&dyn EventStore) -> store::Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = Arc::clone(&self.store);
        Ok(self.io.run(name, move || op(store.as_ref())).await??)
    }
}

#[cfg(test)]
mod tests;
