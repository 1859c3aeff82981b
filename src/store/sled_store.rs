//! The sled 0.34 implementation of [`EventStore`].
//!
//! Trees: `meta` (checkpoint, epoch, counters, schema version, store id, and the marks of
//! unfinished lists while there is no checkpoint: see `list_marks` and docs/dedupe.md), `seen`
//! (uid → last resourceVersion and time, for versions neither the checkpoint nor a list mark
//! covers: a version at or below the stored checkpoint is a replay by resourceVersion order, so
//! covered versions need no entry and the tree stays small), `seen_time` (time + uid index for
//! pruning), `outbox` (sequence → record), `batches` (in-flight batches), `dead` (batches the sink
//! rejected for good, bounded by `max_dead_bytes`: the oldest go first). Owns the byte encodings and the counters in `meta`. It
//! must never run a write without the fence check, never flush per event (group commit: one flush
//! per transaction), and never delete a store it cannot read (quarantine).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sled::{
    IVec, Transactional as _,
    transaction::{ConflictableTransactionError, TransactionError, abort},
};

use super::list_marks::{Advance, ListMarks};
use super::{
    BatchRecord, CaptureItem, CaptureOutcome, DEFAULT_MAX_DEAD_BYTES, DeadBatch, DroppedDead,
    Error, EventStore, Guard, Meta, OutboxEntry, OutboxSpan, ReplayOutcome, ReplayedBatch, Result,
    SCHEMA_VERSION,
};

const K_SCHEMA: &[u8] = b"schema_version";
const K_STORE_ID: &[u8] = b"store_id";
const K_CHECKPOINT: &[u8] = b"checkpoint";
const K_CHECKPOINT_TIME: &[u8] = b"checkpoint_time_ms";
/// How far each unfinished list got while the store had no checkpoint ([`ListMarks`]).
const K_LIST_MARKS: &[u8] = b"list_marks";
const K_EPOCH: &[u8] = b"epoch";
const K_NEXT_SEQ: &[u8] = b"next_seq";
const K_OUTBOX_EVENTS: &[u8] = b"outbox_events";
const K_OUTBOX_BYTES: &[u8] = b"outbox_bytes";
const K_DEAD_EVENTS: &[u8] = b"dead_events";
const K_DEAD_BYTES: &[u8] = b"dead_bytes";

/// Proof that the caller holds the store's write lock and found its term current when it took
/// it ([`SledStore::fenced`]); dropped, it releases the lock.
struct Fenced<'a> {
    _lock: std::sync::MutexGuard<'a, ()>,
}

/// Records deleted per transaction when a batch is acknowledged.
const ACK_CHUNK: u64 = 1000;

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The store directory (on the shared volume in production).
    pub path: PathBuf,
    /// sled's page cache in bytes (sled's own default is 1 GiB; ours is small on purpose).
    pub cache_capacity: u64,
    /// How long to keep retrying while another process holds the file lock.
    pub lock_timeout: Duration,
}

/// Why an open attempt failed in a way that quarantining can fix.
enum OpenFailure {
    Locked,
    Unusable(String),
    Other(Error),
}

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    seen: sled::Tree,
    seen_time: sled::Tree,
    outbox: sled::Tree,
    batches: sled::Tree,
    dead: sled::Tree,
    path: PathBuf,
    /// Serialises writers inside this process (other processes write other term directories).
    write_lock: Mutex<()>,
    /// Drills: wait between a capture's fence check and its write (milliseconds; 0: never).
    commit_stall_ms: AtomicU64,
    /// Payload bytes the dead tree holds at most (the newest dead batch is always kept).
    max_dead_bytes: AtomicU64,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The result of opening: the store, and where a bad store was moved, if one was.
#[derive(Debug)]
pub struct Opened {
    /// The open store.
    pub store: SledStore,
    /// Set when the previous store was unreadable and moved aside.
    pub quarantined: Option<(PathBuf, String)>,
}

impl SledStore {
    /// Opens (or creates) the store, retrying while another process holds its lock. An
    /// unreadable, corrupt or newer-format store is moved aside (never deleted) and a fresh one
    /// is created.
    pub fn open(options: &OpenOptions) -> Result<Opened> {
        let deadline = Instant::now() + options.lock_timeout;
        let mut wait = Duration::from_millis(50);
        loop {
            match Self::try_open(options) {
                Ok(store) => {
                    return Ok(Opened {
                        store,
                        quarantined: None,
                    });
                }
                Err(OpenFailure::Locked) => {
                    if Instant::now() >= deadline {
                        return Err(Error::Locked {
                            path: options.path.clone(),
                        });
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(OpenFailure::Unusable(reason)) => {
                    let moved_to = quarantine(&options.path)?;
                    let store = Self::try_open(options).map_err(|failure| match failure {
                        OpenFailure::Other(error) => error,
                        OpenFailure::Locked => Error::Locked {
                            path: options.path.clone(),
                        },
                        OpenFailure::Unusable(reason) => Error::Quarantined {
                            path: options.path.clone(),
                            moved_to: moved_to.clone(),
                            reason,
                        },
                    })?;
                    return Ok(Opened {
                        store,
                        quarantined: Some((moved_to, reason)),
                    });
                }
                Err(OpenFailure::Other(error)) => return Err(error),
            }
        }
    }

    fn try_open(options: &OpenOptions) -> std::result::Result<Self, OpenFailure> {
        std::fs::create_dir_all(&options.path).map_err(|source| {
            OpenFailure::Other(Error::Io {
                path: options.path.clone(),
                source,
            })
        })?;
        let db = sled::Config::new()
            .path(&options.path)
            .cache_capacity(options.cache_capacity)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(classify_open_error)?;
        let tree = |name: &str| db.open_tree(name).map_err(classify_open_error);
        let store = Self {
            meta: tree("meta")?,
            seen: tree("seen")?,
            seen_time: tree("seen_time")?,
            outbox: tree("outbox")?,
            batches: tree("batches")?,
            dead: tree("dead")?,
            db,
            path: options.path.clone(),
            write_lock: Mutex::new(()),
            commit_stall_ms: AtomicU64::new(0),
            max_dead_bytes: AtomicU64::new(DEFAULT_MAX_DEAD_BYTES),
        };
        store.initialise()?;
        Ok(store)
    }

    /// Writes the schema version and store id into a new store; checks them in an old one.
    fn initialise(&self) -> std::result::Result<(), OpenFailure> {
        let engine = |e: sled::Error| OpenFailure::Other(Error::Engine(e));
        match self.meta.get(K_SCHEMA).map_err(classify_open_error)? {
            Some(raw) => {
                let version = decode_u32(&raw).ok_or_else(|| {
                    OpenFailure::Unusable("schema version is malformed".to_owned())
                })?;
                if version > SCHEMA_VERSION {
                    return Err(OpenFailure::Unusable(format!(
                        "store format {version} is newer than this release supports ({SCHEMA_VERSION})"
                    )));
                }
                if self.meta.get(K_STORE_ID).map_err(engine)?.is_none() {
                    return Err(OpenFailure::Unusable("store id is missing".to_owned()));
                }
            }
            None => {
                if !self.outbox.is_empty() || !self.seen.is_empty() {
                    return Err(OpenFailure::Unusable(
                        "data present but no schema version".to_owned(),
                    ));
                }
                self.meta
                    .insert(K_SCHEMA, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(engine)?;
                self.meta
                    .insert(K_STORE_ID, new_store_id().as_bytes())
                    .map_err(engine)?;
                self.db.flush().map_err(engine)?;
            }
        }
        // Read everything once, so a damaged value is found now rather than mid-pipeline.
        self.meta_now()
            .map_err(|e| OpenFailure::Unusable(format!("metadata unreadable: {e}")))?;
        Ok(())
    }

    /// Drills only: makes every capture wait `stall` between its fence check and its write, so
    /// a pause can land inside that window.
    pub fn set_commit_stall(&self, stall: Duration) {
        self.commit_stall_ms.store(
            u64::try_from(stall.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Opens an existing store to inspect it (`kevents dead list --offline`): one attempt, no
    /// waiting for the lock, nothing created, and an unreadable store is reported, not moved.
    ///
    /// # Errors
    /// [`Error::Locked`] while a process holds the store open (a running leader),
    /// [`Error::Unreadable`] for a store this release cannot read, I/O errors when the directory
    /// does not exist.
    pub fn open_existing(options: &OpenOptions) -> Result<Self> {
        let path = &options.path;
        if !path.join("conf").is_file() {
            return Err(Error::Io {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no sled database in this directory",
                ),
            });
        }
        Self::try_open(options).map_err(|failure| match failure {
            OpenFailure::Locked => Error::Locked { path: path.clone() },
            OpenFailure::Unusable(reason) => Error::Unreadable {
                path: path.clone(),
                reason,
            },
            OpenFailure::Other(error) => error,
        })
    }

    /// Sets the cap of the dead tree in payload bytes (`store.max_dead_bytes`); applies from
    /// the next dead batch on.
    pub fn set_max_dead_bytes(&self, bytes: u64) {
        self.max_dead_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The store directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta_now(&self) -> Result<Meta> {
        let get = |key: &[u8]| self.meta.get(key).map_err(Error::Engine);
        let u64_of = |key: &[u8]| -> Result<u64> {
            get(key)?.map_or(Ok(0), |raw| decode_u64(&raw).ok_or_else(|| malformed(key)))
        };
        let string_of = |key: &[u8]| -> Result<Option<String>> {
            get(key)?
                .map(|raw| String::from_utf8(raw.to_vec()).map_err(|_| malformed(key)))
                .transpose()
        };
        Ok(Meta {
            store_id: string_of(K_STORE_ID)?.unwrap_or_default(),
            checkpoint: string_of(K_CHECKPOINT)?,
            checkpoint_time_ms: get(K_CHECKPOINT_TIME)?
                .map(|raw| decode_i64(&raw).ok_or_else(|| malformed(K_CHECKPOINT_TIME)))
                .transpose()?,
            epoch: get(K_EPOCH)?.map_or(Ok(-1), |raw| {
                decode_i64(&raw).ok_or_else(|| malformed(K_EPOCH))
            })?,
            next_seq: u64_of(K_NEXT_SEQ)?,
            outbox_events: u64_of(K_OUTBOX_EVENTS)?,
            outbox_bytes: u64_of(K_OUTBOX_BYTES)?,
            dead_events: u64_of(K_DEAD_EVENTS)?,
            dead_bytes: u64_of(K_DEAD_BYTES)?,
        })
    }

    /// Every dead batch with its key, oldest first.
    fn dead_entries(&self) -> Result<Vec<(IVec, DeadBatch)>> {
        self.dead
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(Error::Engine)?;
                Ok((key, decode_dead(&value)?))
            })
            .collect()
    }

    /// Counts the dead tree into `dead_events`/`dead_bytes` when the store predates those
    /// counters (`dead_bytes` absent; `dead_events` then counted every batch that ever died).
    fn count_dead_if_uncounted(&self, _fenced: &Fenced<'_>) -> Result<()> {
        if self
            .meta
            .get(K_DEAD_BYTES)
            .map_err(Error::Engine)?
            .is_some()
        {
            return Ok(());
        }
        let (events, bytes) = self
            .dead_entries()?
            .iter()
            .fold((0, 0), |(events, bytes), (_, dead)| {
                (events + dead.events(), bytes + dead.bytes())
            });
        tx_result(self.meta.transaction(|meta| {
            meta.insert(K_DEAD_EVENTS, &events.to_be_bytes())?;
            meta.insert(K_DEAD_BYTES, &bytes.to_be_bytes())?;
            Ok(())
        }))
    }

    /// Forgets dedupe entries the checkpoint has since moved past (a finished relist leaves
    /// one per listed event): the checkpoint rule dedupes those versions now.
    fn prune_covered(&self, guard: &dyn Guard) -> Result<u64> {
        const CHUNK: usize = 1000;
        let Some(checkpoint) = self
            .meta
            .get(K_CHECKPOINT)
            .map_err(Error::Engine)?
            .and_then(|raw| std::str::from_utf8(&raw).ok().and_then(numeric_rv))
        else {
            return Ok(0);
        };
        let mut pruned = 0u64;
        let mut from: Vec<u8> = Vec::new();
        loop {
            let mut covered: Vec<(IVec, IVec)> = Vec::new();
            let mut scanned = 0usize;
            for entry in self.seen.range(from.as_slice()..) {
                let (uid, value) = entry.map_err(Error::Engine)?;
                scanned += 1;
                from = uid.to_vec();
                from.push(0);
                if decode_seen(&value)
                    .and_then(|(_, rv)| numeric_rv(rv))
                    .is_some_and(|rv| rv <= checkpoint)
                {
                    covered.push((uid, value));
                }
                if scanned >= CHUNK {
                    break;
                }
            }
            if !covered.is_empty() {
                let _fenced = self.fenced(guard)?;
                tx_result(
                    (&self.seen, &self.seen_time).transaction(|(seen, seen_time)| {
                        for (uid, value) in &covered {
                            // Unchanged since the scan: a newer version keeps its entry.
                            if seen.get(uid)?.is_some_and(|current| current == *value)
                                && let Some((time_ms, _)) = decode_seen(value)
                            {
                                seen.remove(uid)?;
                                let uid = String::from_utf8_lossy(uid);
                                seen_time.remove(seen_time_key(time_ms, &uid))?;
                            }
                        }
                        Ok(())
                    }),
                )?;
                pruned += covered.len() as u64;
            }
            if scanned < CHUNK {
                return Ok(pruned);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The write lock, only while `guard`'s term is current: every write of the store starts
    /// here, and the helpers that write take the returned proof, so none can skip the check.
    fn fenced(&self, guard: &dyn Guard) -> Result<Fenced<'_>> {
        let lock = self.lock();
        if !guard.is_current() {
            return Err(Error::Fenced);
        }
        Ok(Fenced { _lock: lock })
    }

    /// Overwrites the stored schema version (tests of the quarantine path).
    #[cfg(test)]
    pub(crate) fn set_schema_version_for_test(&self, version: u32) -> Result<()> {
        self.meta
            .insert(K_SCHEMA, &version.to_be_bytes())
            .map_err(Error::Engine)?;
        self.flush_now()
    }

    /// Leaves the dead counters as a release before `dead_bytes` did: a cumulative event count
    /// and no byte count (tests of the recount).
    #[cfg(test)]
    pub(crate) fn set_dead_counters_as_before_for_test(&self, events: u64) -> Result<()> {
        self.meta
            .insert(K_DEAD_EVENTS, &events.to_be_bytes())
            .map_err(Error::Engine)?;
        self.meta.remove(K_DEAD_BYTES).map_err(Error::Engine)?;
        self.flush_now()
    }

    fn flush_now(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(Error::Engine)
    }
}

fn tx_u64(
    tree: &sled::transaction::TransactionalTree,
    key: &[u8],
) -> std::result::Result<u64, ConflictableTransactionError<Error>> {
    match tree.get(key)? {
        Some(raw) => {
            decode_u64(&raw).ok_or_else(|| ConflictableTransactionError::Abort(malformed(key)))
        }
        None => Ok(0),
    }
}

fn tx_result<T>(result: std::result::Result<T, TransactionError<Error>>) -> Result<T> {
    result.map_err(|e| match e {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => Error::Engine(error),
    })
}

impl EventStore for SledStore {
    fn meta(&self) -> Result<Meta> {
        self.meta_now()
    }

    fn begin_term(&self, guard: &dyn Guard) -> Result<()> {
        let fenced = self.fenced(guard)?;
        let ours = guard.epoch();
        tx_result(self.meta.transaction(|meta| {
            let stored = match meta.get(K_EPOCH)? {
                Some(raw) => decode_i64(&raw)
                    .ok_or_else(|| ConflictableTransactionError::Abort(malformed(K_EPOCH)))?,
                None => -1,
            };
            if stored > ours {
                return abort(Error::StaleEpoch { stored, ours });
            }
            meta.insert(K_EPOCH, &ours.to_be_bytes())?;
            Ok(())
        }))?;
        self.count_dead_if_uncounted(&fenced)?;
        self.flush_now()
    }

    fn capture(
        &self,
        items: &[CaptureItem],
        checkpoint: Option<&str>,
        now_ms: i64,
        guard: &dyn Guard,
    ) -> Result<CaptureOutcome> {
        let _fenced = self.fenced(guard)?;
        let stall = self.commit_stall_ms.load(Ordering::Relaxed);
        if stall > 0 {
            std::thread::sleep(Duration::from_millis(stall));
        }
        // The checkpoint this transaction writes covers every item at or below it, so those need
        // no dedupe entry: a replay of them is dropped by the checkpoint rule below.
        let covering = checkpoint.and_then(numeric_rv);
        let outcome = tx_result(
            (&self.meta, &self.seen, &self.seen_time, &self.outbox).transaction(
                |(meta, seen, seen_time, outbox)| {
                    let stored = meta
                        .get(K_CHECKPOINT)?
                        .and_then(|raw| std::str::from_utf8(&raw).ok().and_then(numeric_rv));
                    // Without a checkpoint, listed items are deduped by how far earlier lists
                    // got, not by an entry each (a first list may hold a million events).
                    let mut marks = match (stored, meta.get(K_LIST_MARKS)?) {
                        (None, Some(raw)) => Some(ListMarks::decode(&raw).ok_or_else(|| {
                            ConflictableTransactionError::Abort(malformed(K_LIST_MARKS))
                        })?),
                        (None, None) => Some(ListMarks::default()),
                        (Some(_), _) => None,
                    };
                    let mut marks_changed = false;
                    let mut outcome = CaptureOutcome::default();
                    let mut next_seq = tx_u64(meta, K_NEXT_SEQ)?;
                    // Versions taken earlier in this transaction without a dedupe entry.
                    let mut taken: HashMap<&str, &str> = HashMap::new();
                    for item in items {
                        let rv = numeric_rv(&item.resource_version);
                        // Everything at or below the stored checkpoint was captured (or skipped
                        // on purpose) before the checkpoint moved past it.
                        if let (Some(stored), Some(rv)) = (stored, rv)
                            && rv <= stored
                        {
                            outcome.duplicates += 1;
                            continue;
                        }
                        // The list's resourceVersion and the item's key, when marks apply.
                        let listed =
                            marks
                                .as_ref()
                                .and(rv)
                                .and(item.listed.as_ref())
                                .and_then(|listed| {
                                    numeric_rv(&listed.list_resource_version)
                                        .map(|list| (list, listed.list_run, listed.key.as_bytes()))
                                });
                        if let (Some(marks), Some(rv), Some((list, run, key))) =
                            (&marks, rv, listed)
                            && marks.covers(rv, key, list, run)
                        {
                            outcome.duplicates += 1;
                            continue;
                        }
                        if taken
                            .get(item.uid.as_str())
                            .is_some_and(|prev| is_same_or_older(&item.resource_version, prev))
                        {
                            outcome.duplicates += 1;
                            continue;
                        }
                        let previous = seen.get(item.uid.as_bytes())?;
                        if let Some(previous) = &previous
                            && let Some((prev_ms, prev_rv)) = decode_seen(previous)
                        {
                            if is_same_or_older(&item.resource_version, prev_rv) {
                                outcome.duplicates += 1;
                                continue;
                            }
                            seen_time.remove(seen_time_key(prev_ms, &item.uid))?;
                        }
                        outbox.insert(&next_seq.to_be_bytes(), item.record.as_slice())?;
                        next_seq += 1;
                        let covered = covering
                            .zip(rv)
                            .is_some_and(|(covering, rv)| rv <= covering)
                            || match (&mut marks, listed) {
                                (Some(marks), Some((list, run, key))) => {
                                    marks_changed = true;
                                    let advance = marks.advance(list, run, key);
                                    outcome.unordered_list |= advance == Advance::Poisoned;
                                    advance == Advance::Covered
                                }
                                _ => false,
                            };
                        if covered {
                            if previous.is_some() {
                                seen.remove(item.uid.as_bytes())?;
                            }
                        } else {
                            seen.insert(
                                item.uid.as_bytes(),
                                encode_seen(now_ms, &item.resource_version),
                            )?;
                            seen_time.insert(seen_time_key(now_ms, &item.uid), &[])?;
                        }
                        taken.insert(&item.uid, &item.resource_version);
                        outcome.captured += 1;
                        outcome.bytes += item.record.len() as u64;
                    }
                    if outcome.captured > 0 {
                        meta.insert(K_NEXT_SEQ, &next_seq.to_be_bytes())?;
                        let events = tx_u64(meta, K_OUTBOX_EVENTS)? + outcome.captured;
                        let bytes = tx_u64(meta, K_OUTBOX_BYTES)? + outcome.bytes;
                        meta.insert(K_OUTBOX_EVENTS, &events.to_be_bytes())?;
                        meta.insert(K_OUTBOX_BYTES, &bytes.to_be_bytes())?;
                    }
                    if let Some(rv) = checkpoint {
                        meta.insert(K_CHECKPOINT, rv.as_bytes())?;
                        meta.insert(K_CHECKPOINT_TIME, &now_ms.to_be_bytes())?;
                        // The checkpoint covers everything the marks did.
                        meta.remove(K_LIST_MARKS)?;
                    } else if let Some(marks) = marks.as_ref().filter(|_| marks_changed) {
                        if marks.is_empty() {
                            meta.remove(K_LIST_MARKS)?;
                        } else {
                            meta.insert(K_LIST_MARKS, marks.encode())?;
                        }
                    }
                    Ok(outcome)
                },
            ),
        )?;
        self.flush_now()?;
        Ok(outcome)
    }

    fn forget_checkpoint(&self, guard: &dyn Guard) -> Result<()> {
        let _fenced = self.fenced(guard)?;
        tx_result(self.meta.transaction(|meta| {
            meta.remove(K_CHECKPOINT)?;
            meta.remove(K_CHECKPOINT_TIME)?;
            // Marks compare resourceVersions of the history that was just left behind.
            meta.remove(K_LIST_MARKS)?;
            Ok(())
        }))?;
        self.flush_now()
    }

    fn outbox_from(
        &self,
        from_seq: u64,
        max_events: usize,
        max_bytes: u64,
    ) -> Result<Vec<OutboxEntry>> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for entry in self.outbox.range(from_seq.to_be_bytes()..) {
            let (key, value) = entry.map_err(Error::Engine)?;
            let seq = decode_u64(&key).ok_or_else(|| malformed(b"outbox key"))?;
            let size = value.len() as u64 + 1;
            if !out.is_empty() && (out.len() >= max_events || bytes + size > max_bytes) {
                break;
            }
            bytes += size;
            out.push(OutboxEntry {
                seq,
                record: value.to_vec(),
            });
            if out.len() >= max_events {
                break;
            }
        }
        Ok(out)
    }

    fn outbox_span(&self, from_seq: u64, max_events: usize, max_bytes: u64) -> Result<OutboxSpan> {
        let mut span = OutboxSpan::default();
        for entry in self.outbox.range(from_seq.to_be_bytes()..) {
            let (key, value) = entry.map_err(Error::Engine)?;
            let seq = decode_u64(&key).ok_or_else(|| malformed(b"outbox key"))?;
            let size = value.len() as u64 + 1;
            if span.events > 0
                && (span.events >= max_events as u64 || span.bytes + size > max_bytes)
            {
                break;
            }
            if span.events == 0 {
                span.first = seq;
            }
            span.last = seq;
            span.events += 1;
            span.bytes += size;
        }
        Ok(span)
    }

    fn outbox_payload(&self, first: u64, last: u64, capacity: usize) -> Result<(Vec<u8>, u64)> {
        let mut payload = Vec::with_capacity(capacity);
        let mut events = 0u64;
        for entry in self.outbox.range(first.to_be_bytes()..=last.to_be_bytes()) {
            let (_, value) = entry.map_err(Error::Engine)?;
            payload.extend_from_slice(&value);
            payload.push(b'\n');
            events += 1;
        }
        Ok((payload, events))
    }

    fn record_batch(&self, batch: &BatchRecord, guard: &dyn Guard) -> Result<()> {
        let _fenced = self.fenced(guard)?;
        let encoded = serde_json::to_vec(batch).map_err(|_| malformed(b"batch"))?;
        tx_result(self.batches.transaction(|batches| {
            batches.insert(&batch.first.to_be_bytes(), encoded.as_slice())?;
            Ok::<_, ConflictableTransactionError<Error>>(())
        }))?;
        self.flush_now()
    }

    fn inflight_batches(&self) -> Result<Vec<BatchRecord>> {
        self.batches
            .iter()
            .map(|entry| {
                let (_, value) = entry.map_err(Error::Engine)?;
                serde_json::from_slice(&value).map_err(|_| malformed(b"batch"))
            })
            .collect()
    }

    fn ack_batch(&self, batch: &BatchRecord, guard: &dyn Guard) -> Result<()> {
        let _fenced = self.fenced(guard)?;
        // Delete in chunks (huge transactions clone many tree nodes), the batch entry last: a
        // crash in between leaves the batch recorded, and its re-send is idempotent by id.
        let mut first = batch.first;
        while first <= batch.last {
            let last = first.saturating_add(ACK_CHUNK - 1).min(batch.last);
            let done = last == batch.last;
            tx_result((&self.meta, &self.outbox, &self.batches).transaction(
                |(meta, outbox, batches)| {
                    let (removed, bytes) = remove_range(outbox, first, last)?;
                    if done {
                        batches.remove(&batch.first.to_be_bytes())?;
                    }
                    let events = tx_u64(meta, K_OUTBOX_EVENTS)?.saturating_sub(removed);
                    let total = tx_u64(meta, K_OUTBOX_BYTES)?.saturating_sub(bytes);
                    meta.insert(K_OUTBOX_EVENTS, &events.to_be_bytes())?;
                    meta.insert(K_OUTBOX_BYTES, &total.to_be_bytes())?;
                    Ok(())
                },
            ))?;
            first = last + 1;
        }
        self.flush_now()
    }

    fn dead_batch(
        &self,
        batch: &BatchRecord,
        reason: &str,
        now_ms: i64,
        guard: &dyn Guard,
    ) -> Result<Vec<DroppedDead>> {
        let _fenced = self.fenced(guard)?;
        let mut payload = String::new();
        for entry in self
            .outbox
            .range(batch.first.to_be_bytes()..=batch.last.to_be_bytes())
        {
            let (_, value) = entry.map_err(Error::Engine)?;
            payload.push_str(&String::from_utf8_lossy(&value));
            payload.push('\n');
        }
        let dead = DeadBatch {
            batch: batch.clone(),
            reason: reason.to_owned(),
            dead_ms: now_ms,
            payload,
        };
        let (events, size) = (dead.events(), dead.bytes());
        let encoded = serde_json::to_vec(&dead).map_err(|_| malformed(b"dead batch"))?;
        let key = batch.first.to_be_bytes();
        // Transactions cannot iterate, so the oldest batches to drop are chosen here; the write
        // lock is held and only this process writes this term's database, so they stay put.
        let cap = self.max_dead_bytes.load(Ordering::Relaxed);
        let held = self.meta_now()?.dead_bytes;
        let mut excess = (held + size).saturating_sub(cap);
        let mut victims: Vec<IVec> = Vec::new();
        for entry in &self.dead {
            if excess == 0 {
                break;
            }
            let (old_key, value) = entry.map_err(Error::Engine)?;
            if old_key == key.as_slice() {
                continue;
            }
            excess = excess.saturating_sub(decode_dead(&value)?.bytes());
            victims.push(old_key);
        }
        let dropped = tx_result(
            (&self.meta, &self.outbox, &self.batches, &self.dead).transaction(
                |(meta, outbox, batches, dead_tree)| {
                    let (removed, bytes) = remove_range(outbox, batch.first, batch.last)?;
                    batches.remove(&key)?;
                    let mut dead_events = tx_u64(meta, K_DEAD_EVENTS)?;
                    let mut dead_bytes = tx_u64(meta, K_DEAD_BYTES)?;
                    let mut forget = |old: &IVec| {
                        let old = decode_dead(old).map_err(ConflictableTransactionError::Abort)?;
                        dead_events = dead_events.saturating_sub(old.events());
                        dead_bytes = dead_bytes.saturating_sub(old.bytes());
                        Ok::<_, ConflictableTransactionError<Error>>(old)
                    };
                    let mut dropped = Vec::with_capacity(victims.len());
                    for victim in &victims {
                        if let Some(old) = dead_tree.remove(victim)? {
                            dropped.push(DroppedDead::from(&forget(&old)?));
                        }
                    }
                    if let Some(replaced) = dead_tree.insert(&key, encoded.as_slice())? {
                        forget(&replaced)?;
                    }
                    let events_left = tx_u64(meta, K_OUTBOX_EVENTS)?.saturating_sub(removed);
                    let total = tx_u64(meta, K_OUTBOX_BYTES)?.saturating_sub(bytes);
                    meta.insert(K_OUTBOX_EVENTS, &events_left.to_be_bytes())?;
                    meta.insert(K_OUTBOX_BYTES, &total.to_be_bytes())?;
                    meta.insert(K_DEAD_EVENTS, &(dead_events + events).to_be_bytes())?;
                    meta.insert(K_DEAD_BYTES, &(dead_bytes + size).to_be_bytes())?;
                    Ok(dropped)
                },
            ),
        )?;
        self.flush_now()?;
        Ok(dropped)
    }

    fn dead_batches(&self) -> Result<Vec<DeadBatch>> {
        Ok(self
            .dead_entries()?
            .into_iter()
            .map(|(_, dead)| dead)
            .collect())
    }

    fn replay_dead(&self, ids: &[String], guard: &dyn Guard) -> Result<ReplayOutcome> {
        let _fenced = self.fenced(guard)?;
        let mut wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let found: Vec<(IVec, DeadBatch)> = self
            .dead_entries()?
            .into_iter()
            .filter(|(_, dead)| wanted.binary_search(&dead.batch.id.as_str()).is_ok())
            .collect();
        let mut outcome = ReplayOutcome {
            unknown: wanted
                .iter()
                .filter(|id| !found.iter().any(|(_, dead)| dead.batch.id == **id))
                .map(|id| (*id).to_owned())
                .collect(),
            ..ReplayOutcome::default()
        };
        let mut result = Ok(());
        for (key, dead) in &found {
            if !guard.is_current() {
                result = Err(Error::Fenced);
                break;
            }
            let moved = tx_result((&self.meta, &self.outbox, &self.dead).transaction(
                |(meta, outbox, dead_tree)| {
                    if dead_tree.remove(key)?.is_none() {
                        return Ok(None);
                    }
                    let first = tx_u64(meta, K_NEXT_SEQ)?;
                    let mut next = first;
                    let mut bytes = 0u64;
                    for record in dead.records() {
                        outbox.insert(&next.to_be_bytes(), record.as_bytes())?;
                        next += 1;
                        bytes += record.len() as u64;
                    }
                    let events = next - first;
                    let outbox_events = tx_u64(meta, K_OUTBOX_EVENTS)? + events;
                    let outbox_bytes = tx_u64(meta, K_OUTBOX_BYTES)? + bytes;
                    let dead_events = tx_u64(meta, K_DEAD_EVENTS)?.saturating_sub(dead.events());
                    let dead_bytes = tx_u64(meta, K_DEAD_BYTES)?.saturating_sub(dead.bytes());
                    meta.insert(K_NEXT_SEQ, &next.to_be_bytes())?;
                    meta.insert(K_OUTBOX_EVENTS, &outbox_events.to_be_bytes())?;
                    meta.insert(K_OUTBOX_BYTES, &outbox_bytes.to_be_bytes())?;
                    meta.insert(K_DEAD_EVENTS, &dead_events.to_be_bytes())?;
                    meta.insert(K_DEAD_BYTES, &dead_bytes.to_be_bytes())?;
                    Ok(Some(ReplayedBatch {
                        id: dead.batch.id.clone(),
                        events,
                        bytes: dead.bytes(),
                        seqs: first..next,
                    }))
                },
            ));
            match moved {
                Ok(Some(replayed)) => outcome.replayed.push(replayed),
                Ok(None) => outcome.unknown.push(dead.batch.id.clone()),
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        // What moved before a failure stays moved: make it durable either way.
        self.flush_now()?;
        result.map(|()| outcome)
    }

    fn prune_seen(&self, older_than_ms: i64, guard: &dyn Guard) -> Result<u64> {
        const CHUNK: usize = 1000;
        let mut pruned = 0u64;
        loop {
            let _fenced = self.fenced(guard)?;
            let end = seen_time_key(older_than_ms, "");
            let keys: Vec<IVec> = self
                .seen_time
                .range(..end)
                .keys()
                .take(CHUNK)
                .collect::<std::result::Result<_, _>>()
                .map_err(Error::Engine)?;
            if keys.is_empty() {
                break;
            }
            let count = keys.len();
            tx_result(
                (&self.seen, &self.seen_time).transaction(|(seen, seen_time)| {
                    for key in &keys {
                        seen_time.remove(key)?;
                        let Some((time_ms, uid)) = split_seen_time_key(key) else {
                            continue;
                        };
                        // Only forget the uid if it was not seen again since.
                        if let Some(current) = seen.get(uid)?
                            && decode_seen(&current).is_some_and(|(ms, _)| ms == time_ms)
                        {
                            seen.remove(uid)?;
                        }
                    }
                    Ok(())
                }),
            )?;
            pruned += count as u64;
            if count < CHUNK {
                break;
            }
        }
        pruned += self.prune_covered(guard)?;
        if pruned > 0 {
            self.flush_now()?;
        }
        Ok(pruned)
    }

    fn seen_len(&self) -> u64 {
        self.seen.len() as u64
    }

    fn flush(&self) -> Result<()> {
        self.flush_now()
    }
}

fn remove_range(
    outbox: &sled::transaction::TransactionalTree,
    first: u64,
    last: u64,
) -> std::result::Result<(u64, u64), ConflictableTransactionError<Error>> {
    let mut removed = 0u64;
    let mut bytes = 0u64;
    for seq in first..=last {
        if let Some(old) = outbox.remove(&seq.to_be_bytes())? {
            removed += 1;
            bytes += old.len() as u64;
        }
    }
    Ok((removed, bytes))
}

/// A resourceVersion as a number: etcd revisions are, and they only grow.
fn numeric_rv(rv: &str) -> Option<u64> {
    rv.parse().ok()
}

/// True when `new` is the version already seen, or (both being numbers, as etcd revisions are)
/// older than it: a replay, not a new version. resourceVersions are otherwise opaque.
fn is_same_or_older(new: &str, seen: &str) -> bool {
    if new == seen {
        return true;
    }
    match (new.parse::<u64>(), seen.parse::<u64>()) {
        (Ok(new), Ok(seen)) => new < seen,
        _ => false,
    }
}

fn encode_seen(time_ms: i64, resource_version: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + resource_version.len());
    out.extend_from_slice(&time_ms.to_be_bytes());
    out.extend_from_slice(resource_version.as_bytes());
    out
}

fn decode_seen(raw: &[u8]) -> Option<(i64, &str)> {
    let (time, rv) = raw.split_at_checked(8)?;
    Some((
        i64::from_be_bytes(time.try_into().ok()?),
        std::str::from_utf8(rv).ok()?,
    ))
}

fn seen_time_key(time_ms: i64, uid: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + uid.len());
    // Offset so negative times still sort before positive ones.
    out.extend_from_slice(&(time_ms.cast_unsigned() ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(uid.as_bytes());
    out
}

fn split_seen_time_key(key: &[u8]) -> Option<(i64, &[u8])> {
    let (time, uid) = key.split_at_checked(8)?;
    let raw = u64::from_be_bytes(time.try_into().ok()?) ^ (1 << 63);
    Some((raw.cast_signed(), uid))
}

fn decode_u64(raw: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(raw.try_into().ok()?))
}

fn decode_i64(raw: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(raw.try_into().ok()?))
}

fn decode_u32(raw: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(raw.try_into().ok()?))
}

fn decode_dead(raw: &[u8]) -> Result<DeadBatch> {
    serde_json::from_slice(raw).map_err(|_| malformed(b"dead batch"))
}

fn malformed(key: &[u8]) -> Error {
    Error::Malformed {
        key: String::from_utf8_lossy(key).into_owned(),
    }
}

fn classify_open_error(error: sled::Error) -> OpenFailure {
    match error {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            OpenFailure::Locked
        }
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => OpenFailure::Locked,
        sled::Error::Corruption { .. } => OpenFailure::Unusable("corruption detected".to_owned()),
        sled::Error::Unsupported(text) | sled::Error::ReportableBug(text) => {
            OpenFailure::Unusable(text)
        }
        sled::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenFailure::Unusable(format!("unreadable: {io}"))
        }
        other => OpenFailure::Other(Error::Engine(other)),
    }
}

/// Moves a store directory aside as `<dir>.quarantined-<unix seconds>[-n]`.
fn quarantine(path: &Path) -> Result<PathBuf> {
    let stamp = jiff::Timestamp::now().as_second();
    let name = path
        .file_name()
        .map_or_else(|| "store".to_owned(), |n| n.to_string_lossy().into_owned());
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    let mut target = parent.join(format!("{name}.quarantined-{stamp}"));
    let mut n = 1;
    while target.exists() {
        target = parent.join(format!("{name}.quarantined-{stamp}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &target).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(target)
}

fn new_store_id() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..8)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}
