//! The shipper: cuts the outbox into batches, records each batch before sending it, sends it, and
//! deletes its records only after the sink confirmed.
//!
//! Owns batching (max events / max bytes / max age), deterministic batch ids, retries with
//! backoff for retriable sink errors, and the dead tree for permanent ones. A new leader first
//! re-sends the batches its predecessor recorded but never saw confirmed, with the same ids. A
//! batch the sink only submitted (ADX queued ingestion, processed minutes later) stays in the
//! outbox, awaiting confirmation, while later batches go out: at most `max_awaiting` at a time;
//! the sink's confirmation deletes it, sends it again, or moves it to the dead tree. Every store
//! write and every send checks the fence right before acting. It must never delete a record the
//! sink has not confirmed, and never retry a permanent error.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    blocking::IoPool,
    sink::{Confirmation, OutgoingBatch, Receipt, Sink},
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
    /// Batches awaiting the sink's confirmation at most; more wait before being cut.
    pub max_awaiting: usize,
}

impl Default for ShipperOptions {
    fn default() -> Self {
        Self {
            max_events: 10_000,
            max_bytes: 16 << 20,
            max_age: Duration::from_secs(15),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            max_awaiting: 64,
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
    /// The sink will say later: ask after this long.
    Submitted(Duration),
}

/// Which send of a recorded batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendKind {
    /// Cut by this term.
    First,
    /// Recorded by an earlier term, which may have sent it.
    Recovered,
    /// The sink said a submission of it will not land.
    Resubmit,
}

/// A batch the sink submitted, awaiting its confirmation.
struct Awaiting {
    batch: BatchRecord,
    /// When to ask.
    check_at: Instant,
    /// The wait after a pending answer (doubles up to 4× the sink's).
    wait: Duration,
}

impl Awaiting {
    fn new(batch: BatchRecord, after: Duration) -> Self {
        Self {
            batch,
            check_at: Instant::now() + after,
            wait: after,
        }
    }
}

/// Where to read the outbox on from, and how much more of it the next batch can take, given
/// what `span` already holds of it (starting at `cursor`).
fn rest_of(span: &OutboxSpan, cursor: u64, options: &ShipperOptions) -> (u64, usize, u64) {
    if span.events == 0 {
        return (cursor, options.max_events, options.max_bytes);
    }
    let events = usize::try_from(span.events).unwrap_or(usize::MAX);
    let room = options.max_events.saturating_sub(events);
    let bytes = options.max_bytes.saturating_sub(span.bytes);
    if bytes == 0 {
        return (span.last + 1, 0, 0);
    }
    (span.last + 1, room, bytes)
}

/// Appends `grown` (read on from `span.last + 1`) to `span`, unless it alone overflows the bytes
/// left (a read always takes its first record): then the batch is full as it is.
fn extend(span: &mut OutboxSpan, grown: OutboxSpan, max_bytes: u64) -> bool {
    if grown.events == 0 {
        return false;
    }
    if span.events == 0 {
        *span = grown;
        return true;
    }
    if span.bytes + grown.bytes > max_bytes {
        return false;
    }
    span.last = grown.last;
    span.events += grown.events;
    span.bytes += grown.bytes;
    true
}

/// A point in time far enough away to mean "never" in a `select!`.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
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
        let mut awaiting: Vec<Awaiting> = Vec::new();
        for batch in inflight {
            cursor = cursor.max(batch.last + 1);
            match self.deliver(&batch, &stop, SendKind::Recovered).await? {
                Delivery::Stopped => return Ok(()),
                Delivery::Submitted(after) => awaiting.push(Awaiting::new(batch, after)),
                Delivery::Acked | Delivery::Dead => {}
            }
        }
        let mut pending_since: Option<Instant> = None;
        // The records from `cursor` on seen so far (the next batch, as far as it is known).
        let mut span = OutboxSpan::default();
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            if self.confirm_due(&mut awaiting, &stop).await? {
                return Ok(());
            }
            let next_check = awaiting
                .iter()
                .map(|a| a.check_at)
                .min()
                .unwrap_or_else(far_future);
            if awaiting.len() >= self.options.max_awaiting.max(1) {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep_until(next_check.into()) => continue,
                }
            }
            // Sizes only: the records are read once, when the batch is sent. Only what capture
            // appended since the last look is read: the records from `cursor` on do not change
            // until a batch is cut from them (capture and replays append after them).
            let (grown, meta) = {
                let (from, max_events, max_bytes) = rest_of(&span, cursor, &self.options);
                self.blocking("outbox_span", move |store| {
                    let grown = if max_events == 0 {
                        OutboxSpan::default()
                    } else {
                        store.outbox_span(from, max_events, max_bytes)?
                    };
                    Ok((grown, store.meta()?))
                })
                .await?
            };
            extend(&mut span, grown, self.options.max_bytes);
            self.publish_meta(&meta);
            if span.events == 0 {
                pending_since = None;
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = self.wake.notified() => continue,
                    // A safety net: capture always notifies, but never wait forever.
                    () = tokio::time::sleep(self.options.max_age) => continue,
                    () = tokio::time::sleep_until(next_check.into()) => continue,
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
                    () = tokio::time::sleep_until(next_check.into()) => {}
                }
                continue;
            }
            let batch = self.cut(span, &meta.store_id).await?;
            cursor = batch.last + 1;
            span = OutboxSpan::default();
            pending_since = None;
            match self.deliver(&batch, &stop, SendKind::First).await? {
                Delivery::Stopped => return Ok(()),
                Delivery::Submitted(after) => {
                    awaiting.push(Awaiting::new(batch, after));
                    self.metrics
                        .batches_awaiting
                        .set(i64::try_from(awaiting.len()).unwrap_or(i64::MAX));
                }
                Delivery::Acked | Delivery::Dead => {}
            }
        }
    }

    /// Asks the sink about every awaiting batch whose time has come: acknowledges the delivered
    /// ones, sends again those the sink says will not land, moves the failed ones to the dead
    /// tree, and asks again later about the rest. True when `stop` ended it.
    async fn confirm_due(
        &self,
        awaiting: &mut Vec<Awaiting>,
        stop: &CancellationToken,
    ) -> Result<bool> {
        let now = Instant::now();
        let mut index = 0;
        while index < awaiting.len() {
            if awaiting[index].check_at > now {
                index += 1;
                continue;
            }
            if !self.guard.is_current() {
                return Err(store::Error::Fenced.into());
            }
            let id = awaiting[index].batch.id.clone();
            let answer = tokio::select! {
                () = stop.cancelled() => return Ok(true),
                answer = self.sink.confirm(&id) => answer,
            };
            let entry = &mut awaiting[index];
            match answer {
                Ok(Confirmation::Delivered) => {
                    let batch = awaiting.remove(index);
                    self.acknowledge(&batch.batch).await?;
                    continue;
                }
                Ok(Confirmation::Pending { check_after }) => {
                    entry.wait = (entry.wait * 2).clamp(check_after, check_after * 4);
                    entry.check_at = Instant::now() + entry.wait;
                }
                Ok(Confirmation::Resubmit { reason }) => {
                    let batch = awaiting.remove(index);
                    self.metrics.batch_resubmissions.inc();
                    tracing::warn!(
                        batch_id = %batch.batch.id,
                        batch_size = batch.batch.events,
                        reason,
                        "The sink says the submitted batch will not land; submitting it again"
                    );
                    match self.deliver(&batch.batch, stop, SendKind::Resubmit).await? {
                        Delivery::Stopped => return Ok(true),
                        Delivery::Submitted(after) => {
                            awaiting.insert(index, Awaiting::new(batch.batch, after));
                        }
                        Delivery::Acked | Delivery::Dead => continue,
                    }
                }
                Err(error) if error.is_retriable() => {
                    tracing::warn!(
                        batch_id = %entry.batch.id,
                        retry_in = ?entry.wait,
                        error = %error_chain(&error),
                        "Reading whether a submitted batch landed failed; asking again later"
                    );
                    self.board.publish(
                        "sink",
                        serde_json::json!({
                            "sink": self.sink.name(),
                            "healthy": false,
                            "last_error": error.to_string(),
                            "failing_batch": entry.batch.id,
                        }),
                    );
                    entry.wait = (entry.wait * 2).min(self.options.retry_max);
                    entry.check_at = Instant::now() + entry.wait;
                }
                Err(error) => {
                    let batch = awaiting.remove(index);
                    self.bury(&batch.batch, &error_chain(&error)).await?;
                    continue;
                }
            }
            index += 1;
        }
        self.metrics
            .batches_awaiting
            .set(i64::try_from(awaiting.len()).unwrap_or(i64::MAX));
        Ok(false)
    }

    /// Deletes a delivered batch from the outbox (fenced).
    async fn acknowledge(&self, batch: &BatchRecord) -> Result<()> {
        let guard = Arc::clone(&self.guard);
        let record = batch.clone();
        self.blocking("ack_batch", move |store| {
            store.ack_batch(&record, guard.as_ref())
        })
        .await?;
        self.metrics.events_shipped.inc_by(batch.events);
        tracing::debug!(batch_id = %batch.id, batch_size = batch.events, "Batch delivered");
        Ok(())
    }

    /// Moves a batch the sink rejected for good to the dead tree (fenced).
    async fn bury(&self, batch: &BatchRecord, reason: &str) -> Result<()> {
        tracing::error!(
            batch_id = %batch.id,
            batch_size = batch.events,
            error = %reason,
            "Sink rejected the batch permanently; moved to the dead tree"
        );
        let guard = Arc::clone(&self.guard);
        let record = batch.clone();
        let reason = reason.to_owned();
        let now = jiff::Timestamp::now().as_millisecond();
        let dropped = self
            .blocking("dead_batch", move |store| {
                store.dead_batch(&record, &reason, now, guard.as_ref())
            })
            .await?;
        self.metrics.dead_batches.inc();
        self.metrics.events_dead.inc_by(batch.events);
        crate::dead::report_dropped(&self.metrics, &dropped);
        Ok(())
    }

    /// Records a batch for `span` (fenced) and returns it.
    async fn cut(&self, span: OutboxSpan, store_id: &str) -> Result<BatchRecord> {
        let batch = BatchRecord {
            id: BatchRecord::id_for(store_id, span.first, span.last),
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

    /// Sends one recorded batch until the sink confirms it (then deletes it), submits it (then
    /// it awaits confirmation) or rejects it for good (then moves it to `dead`). A recovered
    /// batch was recorded by an earlier term, which may have delivered it: it goes through
    /// [`Sink::resend`]; a resubmitted one through [`Sink::resubmit`].
    async fn deliver(
        &self,
        batch: &BatchRecord,
        stop: &CancellationToken,
        kind: SendKind,
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
            let send = match kind {
                SendKind::First => self.sink.send(&outgoing),
                SendKind::Recovered => self.sink.resend(&outgoing),
                SendKind::Resubmit => self.sink.resubmit(&outgoing),
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
                Ok(receipt) => {
                    self.metrics
                        .batch_sends
                        .with_label_values(&["success"])
                        .inc();
                    let delivery = match receipt {
                        Receipt::Delivered => {
                            self.acknowledge(batch).await?;
                            Delivery::Acked
                        }
                        Receipt::Submitted { check_after } => Delivery::Submitted(check_after),
                    };
                    if attempt > 1 {
                        tracing::info!(batch_id = %batch.id, attempt, "Batch delivered after retries");
                        self.board.publish(
                            "sink",
                            serde_json::json!({ "sink": self.sink.name(), "healthy": true }),
                        );
                    }
                    return Ok(delivery);
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
                    self.bury(batch, &error_chain(&error)).await?;
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
            self.publish_meta(&meta);
        }
    }

    fn publish_meta(&self, meta: &store::Meta) {
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
                "dead_bytes": meta.dead_bytes,
                "awaiting_confirmation": self.metrics.batches_awaiting.get(),
                "checkpoint": meta.checkpoint,
            }),
        );
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
