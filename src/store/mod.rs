//! The durable store on the shared volume: checkpoint, dedupe set, outbox, in-flight batches and
//! dead batches, behind one trait so the engine (sled 0.34 today) can be swapped.
//!
//! Owns the on-disk layout and the transactional rules of DESIGN.md: a capture appends records,
//! marks them seen and advances the checkpoint in **one** transaction (never seen before durable);
//! records leave the outbox only when their batch is acknowledged; every write checks the fence
//! right before it runs. The fence is a check-then-act (a process paused right after the check
//! writes later), so what keeps a newer term safe is where writes go: every term writes only a
//! database of its own and takes over the previous term's state by a verified copy (`terms`,
//! `docs/store-across-nodes.md`); a late write lands in a directory no newer term uses.
//! It must never log record contents, and never depend on `kube` or `reqwest`.

mod list_marks;
mod sled_store;
pub mod terms;

use std::path::PathBuf;

pub use sled_store::{OpenOptions, Opened, SledStore};
pub use terms::{Handover, TermOwner, probe, take_over};

/// Layout version written into new stores; a store with a newer version is quarantined.
pub const SCHEMA_VERSION: u32 = 1;

/// Payload bytes the dead tree holds at most unless configured (`store.max_dead_bytes`): a few
/// full batches, for an operator to inspect and replay, without letting rejected batches fill
/// the volume.
pub const DEFAULT_MAX_DEAD_BYTES: u64 = 64 << 20;

pub use crate::fence::Guard;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's lease is no longer current: nothing was written.
    #[error("leadership is no longer current; write refused")]
    Fenced,
    /// A newer leadership term has taken the store over: nothing was written.
    #[error(
        "the store belongs to a newer term {stored} (this replica holds term {ours}); write refused"
    )]
    StaleEpoch {
        /// Term recorded in the store.
        stored: i64,
        /// The caller's term.
        ours: i64,
    },
    /// The previous term's files kept changing while they were copied (a process of that term
    /// is still writing): the hand-over is tried again later.
    #[error("the previous term's store {path} kept changing over {attempts} copies")]
    SourceUnsettled {
        /// The previous term's directory.
        path: PathBuf,
        /// Copies made.
        attempts: u32,
    },
    /// While this term was running, a newer term took the store over (a leader on another Lease,
    /// or one that started while this replica's lease still looked valid to it).
    #[error("a newer term took the store over ({path}) while this one was running")]
    Superseded {
        /// The newer term's directory.
        path: PathBuf,
    },
    /// Another process holds the store's file lock.
    #[error("store {path} is locked by another process")]
    Locked {
        /// Store directory.
        path: PathBuf,
    },
    /// The store is unreadable, corrupt or of a newer format and was moved aside.
    #[error("store {path} was quarantined to {moved_to}: {reason}")]
    Quarantined {
        /// Store directory.
        path: PathBuf,
        /// Where it was moved.
        moved_to: PathBuf,
        /// Why.
        reason: String,
    },
    /// A stored value does not decode.
    #[error("store value {key} is malformed")]
    Malformed {
        /// Which value.
        key: String,
    },
    /// The store cannot be read as it is; nothing was moved or changed (an inspection never
    /// quarantines).
    #[error("store {path} is unreadable: {reason}")]
    Unreadable {
        /// Store directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The storage engine failed.
    #[error("storage engine error")]
    Engine(#[source] sled::Error),
    /// A filesystem operation failed.
    #[error("store I/O on {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// `type Result<T> = Result<T, store::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One event version to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureItem {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
    /// The output record (one JSON object, no newline).
    pub record: Vec<u8>,
    /// Set for an item of a LIST: where it sits in the list.
    pub listed: Option<ListPosition>,
}

/// Where an item sits in a LIST: the list's resourceVersion and the item's storage key
/// (`namespace/name`), which a list returns in rising order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPosition {
    /// The list's resourceVersion.
    pub list_resource_version: String,
    /// Which run of the list (random per LIST started): a list restarted at the same
    /// resourceVersion is another run.
    pub list_run: u64,
    /// `metadata.namespace` + `/` + `metadata.name`.
    pub key: String,
}

/// What a capture did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureOutcome {
    /// New records appended to the outbox.
    pub captured: u64,
    /// Items dropped because (uid, resourceVersion) was already seen.
    pub duplicates: u64,
    /// Bytes appended.
    pub bytes: u64,
    /// A listed item came in a lower key than one before it in its list: that list is deduped
    /// by an entry per item from then on (see `list_marks`).
    pub unordered_list: bool,
}

/// Store-wide values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Random id minted when the store was created; part of every batch id.
    pub store_id: String,
    /// The resourceVersion to resume watching from.
    pub checkpoint: Option<String>,
    /// When the checkpoint last advanced (Unix ms).
    pub checkpoint_time_ms: Option<i64>,
    /// The newest leadership term that opened the store.
    pub epoch: i64,
    /// Sequence number the next captured record gets.
    pub next_seq: u64,
    /// Records in the outbox.
    pub outbox_events: u64,
    /// Bytes in the outbox.
    pub outbox_bytes: u64,
    /// Records in the dead tree.
    pub dead_events: u64,
    /// Payload bytes in the dead tree (records plus newlines). They count against
    /// `store.max_outbox_bytes` together with the outbox.
    pub dead_bytes: u64,
}

/// A record waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its sequence number.
    pub seq: u64,
    /// The record.
    pub record: Vec<u8>,
}

/// A run of outbox records: their sequence numbers, count and payload size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxSpan {
    /// First sequence number.
    pub first: u64,
    /// Last sequence number (inclusive).
    pub last: u64,
    /// Records (0: the outbox holds nothing from there on).
    pub events: u64,
    /// Payload bytes (records plus newlines).
    pub bytes: u64,
}

/// A batch recorded before it is sent, so a new leader re-sends it with the same id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchRecord {
    /// Deterministic id: store id, first and last sequence numbers.
    pub id: String,
    /// First sequence number.
    pub first: u64,
    /// Last sequence number (inclusive).
    pub last: u64,
    /// Number of records.
    pub events: u64,
    /// Uncompressed bytes (records plus newlines).
    pub bytes: u64,
    /// Term that cut the batch.
    pub epoch: i64,
    /// When it was cut (Unix ms).
    pub created_ms: i64,
}

impl BatchRecord {
    /// The deterministic batch id for a range in a store.
    #[must_use]
    pub fn id_for(store_id: &str, first: u64, last: u64) -> String {
        format!("{store_id}-{first:012}-{last:012}")
    }
}

/// A batch that the sink rejected for good.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadBatch {
    /// The batch.
    pub batch: BatchRecord,
    /// Why the sink rejected it.
    pub reason: String,
    /// When (Unix ms).
    pub dead_ms: i64,
    /// The records, newline-delimited.
    pub payload: String,
}

impl DeadBatch {
    /// The records, one JSON object each.
    pub fn records(&self) -> impl Iterator<Item = &str> {
        self.payload.split_terminator('\n')
    }

    /// Number of records.
    #[must_use]
    pub fn events(&self) -> u64 {
        self.records().count() as u64
    }

    /// Payload bytes (records plus newlines): what the batch counts against the caps.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.payload.len() as u64
    }
}

/// A dead batch dropped to keep the dead tree within `store.max_dead_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedDead {
    /// The batch id.
    pub id: String,
    /// Records dropped with it.
    pub events: u64,
    /// Payload bytes dropped with it.
    pub bytes: u64,
    /// Why the sink had rejected it.
    pub reason: String,
    /// When it had died (Unix ms).
    pub dead_ms: i64,
}

impl From<&DeadBatch> for DroppedDead {
    fn from(dead: &DeadBatch) -> Self {
        Self {
            id: dead.batch.id.clone(),
            events: dead.events(),
            bytes: dead.bytes(),
            reason: dead.reason.clone(),
            dead_ms: dead.dead_ms,
        }
    }
}

/// A dead batch moved back into the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayedBatch {
    /// The dead batch's id (the shipper sends its records under a new one).
    pub id: String,
    /// Records moved back.
    pub events: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// The new sequence numbers they got, at the end of the outbox.
    pub seqs: std::ops::Range<u64>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// The batches moved back into the outbox, oldest first.
    pub replayed: Vec<ReplayedBatch>,
    /// Ids asked for that the dead tree does not hold.
    pub unknown: Vec<String>,
}

/// The store operations the pipeline uses.
pub trait EventStore: Send + Sync {
    /// Store-wide values.
    fn meta(&self) -> Result<Meta>;
    /// Records `guard`'s term in this term's database; refuses a database a newer term wrote.
    fn begin_term(&self, guard: &dyn Guard) -> Result<()>;
    /// Appends the items not seen before, marks them seen and (if given) moves the checkpoint, in
    /// one transaction, then flushes. `now_ms` is the wall-clock time used for pruning.
    fn capture(
        &self,
        items: &[CaptureItem],
        checkpoint: Option<&str>,
        now_ms: i64,
        guard: &dyn Guard,
    ) -> Result<CaptureOutcome>;
    /// Forgets the checkpoint (resourceVersions went backwards): the next relist is deduped by
    /// the dedupe entries only, and a new leader starting meanwhile relists.
    fn forget_checkpoint(&self, guard: &dyn Guard) -> Result<()>;
    /// Up to `max_events` records (and about `max_bytes`) from `from_seq` on, in order.
    fn outbox_from(
        &self,
        from_seq: u64,
        max_events: usize,
        max_bytes: u64,
    ) -> Result<Vec<OutboxEntry>>;
    /// What [`EventStore::outbox_from`] would return, without copying the records.
    fn outbox_span(&self, from_seq: u64, max_events: usize, max_bytes: u64) -> Result<OutboxSpan>;
    /// The records `first..=last` as one newline-delimited payload (allocated with `capacity`),
    /// and how many there are.
    fn outbox_payload(&self, first: u64, last: u64, capacity: usize) -> Result<(Vec<u8>, u64)>;
    /// Records a batch as in flight (before it is sent).
    fn record_batch(&self, batch: &BatchRecord, guard: &dyn Guard) -> Result<()>;
    /// Batches recorded but not yet acknowledged, oldest first.
    fn inflight_batches(&self) -> Result<Vec<BatchRecord>>;
    /// Deletes a sent batch's records and its in-flight entry (the sink confirmed it).
    fn ack_batch(&self, batch: &BatchRecord, guard: &dyn Guard) -> Result<()>;
    /// Moves a batch the sink rejected for good to the dead tree. When the tree would then hold
    /// more than its cap, the oldest dead batches are dropped first, in the same transaction, and
    /// returned; the batch being added is kept even if it alone exceeds the cap.
    fn dead_batch(
        &self,
        batch: &BatchRecord,
        reason: &str,
        now_ms: i64,
        guard: &dyn Guard,
    ) -> Result<Vec<DroppedDead>>;
    /// Dead batches (oldest first).
    fn dead_batches(&self) -> Result<Vec<DeadBatch>>;
    /// Moves the named dead batches' records back into the outbox as new records at its end
    /// (new sequence numbers: the shipper sends them in a new batch with a new id), bypassing
    /// the capture dedupe (they were captured once already). Each batch moves in one fenced
    /// transaction with the counters, so it is either dead or back in the outbox, never both.
    /// Ids the dead tree does not hold are reported in [`ReplayOutcome::unknown`].
    fn replay_dead(&self, ids: &[String], guard: &dyn Guard) -> Result<ReplayOutcome>;
    /// Forgets dedupe entries last seen before `older_than_ms`; returns how many.
    fn prune_seen(&self, older_than_ms: i64, guard: &dyn Guard) -> Result<u64>;
    /// Number of dedupe entries.
    fn seen_len(&self) -> u64;
    /// Flushes everything to disk.
    fn flush(&self) -> Result<()>;
}

#[cfg(test)]
mod tests;
