//! Dead batches outside the shipper: the leader's handle that lets the admin server list and
//! replay them, the JSON shapes of `GET /dead` and `POST /dead/replay` (shared with the
//! `kevents dead` command in [`cli`]), and the report of dead batches dropped over the cap.
//!
//! Owns the [`DeadSlot`]: the running pipeline of a leadership term publishes its store, fence,
//! store threads and shipper wake-up there, and takes them back before it closes the store. It
//! must never write the store without that term's fence (a replica that is not leading has an
//! empty slot and writes nothing), and never hold the slot's lock across a store call.

pub mod cli;

use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::{
    blocking::{IoPool, Stuck},
    store::{self, DeadBatch, DroppedDead, EventStore, Guard, ReplayOutcome},
    telemetry::Metrics,
};

/// What a replica that is not leading answers to a dead-tree request.
pub const NOT_LEADER: &str =
    "this replica is not the leader; ask the leader (GET /status shows the holder)";

/// Why a dead-tree operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store refused or failed (a stale fence included: the term ended meanwhile).
    #[error("the store operation on the dead tree failed")]
    Store(#[from] store::Error),
    /// The store call overran its deadline.
    #[error("the store call on the dead tree did not finish in time")]
    Stuck(#[from] Stuck),
}

impl Error {
    /// True when the leadership term ended under the request: nothing (more) was written.
    #[must_use]
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            Self::Store(store::Error::Fenced | store::Error::StaleEpoch { .. })
        )
    }
}

/// `type Result<T> = Result<T, dead::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

// === impl DeadSlot ===

/// Where the running pipeline publishes its [`DeadHandle`]; empty while this replica does not
/// lead. Cloning shares the slot.
#[derive(Clone, Default)]
pub struct DeadSlot {
    inner: Arc<Mutex<Published>>,
}

#[derive(Default)]
struct Published {
    /// Bumped by every publication, so a term only clears what it published itself.
    serial: u64,
    handle: Option<DeadHandle>,
}

impl std::fmt::Debug for DeadSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadSlot")
            .field("leading", &self.current().is_some())
            .finish()
    }
}

impl DeadSlot {
    /// Publishes `handle` until the returned guard is dropped.
    #[must_use = "the handle is withdrawn when the guard drops"]
    pub fn publish(&self, handle: DeadHandle) -> Publication {
        let mut published = self.lock();
        published.serial += 1;
        published.handle = Some(handle);
        Publication {
            slot: self.clone(),
            serial: published.serial,
        }
    }

    /// The current leader's handle, if this replica leads.
    #[must_use]
    pub fn current(&self) -> Option<DeadHandle> {
        self.lock().handle.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Withdraws a published [`DeadHandle`] when dropped (the pipeline stops).
#[derive(Debug)]
pub struct Publication {
    slot: DeadSlot,
    serial: u64,
}

impl Drop for Publication {
    fn drop(&mut self) {
        let mut published = self.slot.lock();
        if published.serial == self.serial {
            published.handle = None;
        }
    }
}

// === impl DeadHandle ===

/// The dead tree of the running term: its store, fence, store threads, and the shipper's
/// wake-up.
#[derive(Clone)]
pub struct DeadHandle {
    store: Arc<dyn EventStore>,
    guard: Arc<dyn Guard>,
    io: IoPool,
    wake: Arc<Notify>,
}

impl DeadHandle {
    /// A handle on `store`, writing under `guard`, calling on `io`, waking the shipper through
    /// `wake` after a replay.
    #[must_use]
    pub fn new(
        store: Arc<dyn EventStore>,
        guard: Arc<dyn Guard>,
        io: IoPool,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            guard,
            io,
            wake,
        }
    }

    /// The dead batches, oldest first, with or without their records.
    pub async fn list(&self, payload: bool) -> Result<DeadListing> {
        let store = Arc::clone(&self.store);
        let (meta, dead) = self
            .io
            .run("dead_batches", move || {
                Ok::<_, store::Error>((store.meta()?, store.dead_batches()?))
            })
            .await??;
        Ok(DeadListing::new(
            Some(self.guard.epoch()),
            meta.dead_events,
            meta.dead_bytes,
            &dead,
            payload,
        ))
    }

    /// Moves the selected dead batches back into the outbox (fenced by this term) and wakes the
    /// shipper when anything moved.
    pub async fn replay(&self, selection: Selection) -> Result<ReplayOutcome> {
        let store = Arc::clone(&self.store);
        let guard = Arc::clone(&self.guard);
        let outcome = self
            .io
            .run("replay_dead", move || {
                let ids = match selection {
                    Selection::Ids(ids) => ids,
                    Selection::All => store
                        .dead_batches()?
                        .into_iter()
                        .map(|dead| dead.batch.id)
                        .collect(),
                };
                store.replay_dead(&ids, guard.as_ref())
            })
            .await??;
        if !outcome.replayed.is_empty() {
            tracing::info!(
                epoch = self.guard.epoch(),
                batches = outcome.replayed.len(),
                events = outcome.replayed.iter().map(|r| r.events).sum::<u64>(),
                "Dead batches replayed into the outbox; they ship as new batches"
            );
            self.wake.notify_one();
        }
        Ok(outcome)
    }
}

/// Which dead batches a replay takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These ids.
    Ids(Vec<String>),
    /// Every dead batch.
    All,
}

/// Logs and counts dead batches dropped to keep the dead tree within `store.max_dead_bytes`.
pub fn report_dropped(metrics: &Metrics, dropped: &[DroppedDead]) {
    for batch in dropped {
        metrics.dead_dropped_events.inc_by(batch.events);
        tracing::warn!(
            batch_id = %batch.id,
            batch_size = batch.events,
            bytes = batch.bytes,
            dead_at = %format_ms(batch.dead_ms),
            reason = %batch.reason,
            "The dead tree is over store.max_dead_bytes; dropped its oldest batch"
        );
    }
}

// === wire shapes ===

/// `GET /dead`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadListing {
    /// The leadership term that answered (`None`: read offline from a stopped store).
    pub epoch: Option<i64>,
    /// Records in the dead tree.
    pub dead_events: u64,
    /// Payload bytes in the dead tree.
    pub dead_bytes: u64,
    /// The dead batches, oldest first.
    pub batches: Vec<DeadEntry>,
}

impl DeadListing {
    /// The listing of `dead`, with the records when `payload`.
    #[must_use]
    pub fn new(
        epoch: Option<i64>,
        dead_events: u64,
        dead_bytes: u64,
        dead: &[DeadBatch],
        payload: bool,
    ) -> Self {
        Self {
            epoch,
            dead_events,
            dead_bytes,
            batches: dead
                .iter()
                .map(|dead| DeadEntry {
                    id: dead.batch.id.clone(),
                    events: dead.events(),
                    bytes: dead.bytes(),
                    reason: dead.reason.clone(),
                    dead_ms: dead.dead_ms,
                    dead_at: format_ms(dead.dead_ms),
                    epoch: dead.batch.epoch,
                    payload: payload.then(|| dead.payload.clone()),
                })
                .collect(),
        }
    }
}

/// One dead batch in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadEntry {
    /// The batch id.
    pub id: String,
    /// Records.
    pub events: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Why the sink rejected it.
    pub reason: String,
    /// When it died (Unix ms).
    pub dead_ms: i64,
    /// When it died (RFC 3339).
    pub dead_at: String,
    /// The term that cut the batch.
    pub epoch: i64,
    /// The records, newline-delimited (only when asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

/// `POST /dead/replay`: `{"ids": [...]}` or `{"all": true}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Batch ids to replay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// Replay every dead batch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl ReplayRequest {
    /// The selection this request makes, or why it makes none.
    ///
    /// # Errors
    /// A message for the caller when the request names no ids and not `all`, or both.
    pub fn selection(self) -> Result<Selection, &'static str> {
        match (self.ids.is_empty(), self.all) {
            (false, false) => Ok(Selection::Ids(self.ids)),
            (true, true) => Ok(Selection::All),
            (true, false) => Err("name the batches to replay: {\"ids\": [...]} or {\"all\": true}"),
            (false, true) => Err("give either \"ids\" or \"all\", not both"),
        }
    }
}

/// The answer to `POST /dead/replay`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Batches moved back into the outbox, oldest first.
    pub replayed: Vec<ReplayedEntry>,
    /// Ids the dead tree does not hold.
    pub unknown: Vec<String>,
    /// Records moved back in all.
    pub events: u64,
}

/// One replayed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayedEntry {
    /// The dead batch's id.
    pub id: String,
    /// Records moved back.
    pub events: u64,
    /// The first new sequence number.
    pub first_seq: u64,
    /// The last new sequence number (inclusive).
    pub last_seq: u64,
}

impl From<ReplayOutcome> for ReplayReport {
    fn from(outcome: ReplayOutcome) -> Self {
        Self {
            events: outcome.replayed.iter().map(|r| r.events).sum(),
            replayed: outcome
                .replayed
                .into_iter()
                .map(|r| ReplayedEntry {
                    id: r.id,
                    events: r.events,
                    first_seq: r.seqs.start,
                    last_seq: r.seqs.end.saturating_sub(1),
                })
                .collect(),
            unknown: outcome.unknown,
        }
    }
}

/// Unix ms as RFC 3339 (UTC), or the number itself when out of range.
fn format_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests;
