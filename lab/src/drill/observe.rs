//! What a drill watches while it runs: when each event version first reached the sink (the file
//! sink's files, or the ADX emulator's table), and when each replica captured (its
//! `kevents_events_captured_total` counter, polled on `/metrics`).
//!
//! Owns the observers and the figures derived from them (end-to-end latency, failover gap). It
//! only reads: it must never write to the sink, the store or a replica.

use std::{
    collections::HashMap,
    io::{Read as _, Seek as _, SeekFrom},
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use kevents_testkit::{
    adx::AdxState,
    oracle::{self, Key},
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Where delivered rows land.
#[derive(Clone)]
pub enum SinkView {
    /// The file sink's active file (rotated files beside it).
    File(PathBuf),
    /// A table of the ADX emulator.
    Adx {
        /// The emulator's state.
        state: Arc<AdxState>,
        /// Database.
        database: String,
        /// Table.
        table: String,
    },
}

impl SinkView {
    /// Every delivered key and the count of rows without one.
    ///
    /// # Errors
    /// Fails if a sink file cannot be read.
    pub fn delivered(&self) -> std::io::Result<(Vec<Key>, usize)> {
        match self {
            Self::File(path) => {
                // A rotation between listing the files and reading them renames one away: list
                // and read again.
                let mut attempts = 0;
                loop {
                    match oracle::read_delivered(&oracle::sink_files(path)) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 10 => {
                            attempts += 1;
                            std::thread::sleep(std::time::Duration::from_millis(20));
                        }
                        read => break read,
                    }
                }
            }
            Self::Adx {
                state,
                database,
                table,
            } => {
                let mut keys = Vec::new();
                let mut unkeyed = 0;
                for row in state.rows(database, table) {
                    match oracle::key_of(&serde_json::Value::Object(row)) {
                        Some(key) => keys.push(key),
                        None => unkeyed += 1,
                    }
                }
                Ok((keys, unkeyed))
            }
        }
    }
}

/// Records the first time each key shows up in the sink (polled every 100 ms on a thread).
pub struct Deliveries {
    first_seen: Arc<Mutex<HashMap<Key, i64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Deliveries {
    /// Starts watching `sink`.
    #[must_use]
    pub fn start(sink: SinkView) -> Self {
        let first_seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let first_seen = first_seen.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut tail = Tail::default();
                while !stop.load(Ordering::Relaxed) {
                    let keys = tail.poll(&sink);
                    if !keys.is_empty() {
                        let now = now_ms();
                        let mut seen = lock(&first_seen);
                        for key in keys {
                            seen.entry(key).or_insert(now);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            first_seen,
            stop,
            thread: Some(thread),
        }
    }

    /// When each key was first seen (Unix ms).
    #[must_use]
    pub fn first_seen(&self) -> HashMap<Key, i64> {
        lock(&self.first_seen).clone()
    }

    /// True when every key in `keys` was seen.
    #[must_use]
    pub fn all_seen(&self, keys: &[Key]) -> bool {
        let seen = lock(&self.first_seen);
        keys.iter().all(|k| seen.contains_key(k))
    }

    /// Stops the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Read positions: per inode for files (rotation renames keep the inode), a row index for ADX.
#[derive(Default)]
struct Tail {
    offsets: HashMap<u64, u64>,
    rows: usize,
}

impl Tail {
    fn poll(&mut self, sink: &SinkView) -> Vec<Key> {
        match sink {
            SinkView::File(path) => {
                let mut keys = Vec::new();
                for file in oracle::sink_files(path) {
                    self.read_file(&file, &mut keys);
                }
                keys
            }
            SinkView::Adx {
                state,
                database,
                table,
            } => {
                let new = state.rows_from(database, table, self.rows);
                self.rows += new.len();
                new.into_iter()
                    .filter_map(|row| oracle::key_of(&serde_json::Value::Object(row)))
                    .collect()
            }
        }
    }

    fn read_file(&mut self, path: &std::path::Path, keys: &mut Vec<Key>) {
        let Ok(mut file) = std::fs::File::open(path) else {
            return;
        };
        let Ok(meta) = file.metadata() else { return };
        let offset = self.offsets.entry(meta.ino()).or_default();
        // A half-written batch may be cut off and written again: follow the file back.
        *offset = (*offset).min(meta.len());
        if meta.len() == *offset || file.seek(SeekFrom::Start(*offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return;
        }
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        for line in bytes[..end].split(|b| *b == b'\n') {
            if let Ok(row) = serde_json::from_slice::<serde_json::Value>(line)
                && let Some(key) = oracle::key_of(&row)
            {
                keys.push(key);
            }
        }
        *offset += end as u64 + 1;
    }
}

/// What the capture poller saw.
#[derive(Debug, Default, Clone)]
pub struct CaptureLog {
    /// `(unix_ms, identity)` of every poll that saw a replica's capture counter grow.
    pub captures: Vec<(i64, String)>,
    /// `kevents_relists_total` per identity (the highest value seen).
    pub relists: HashMap<String, u64>,
    last: HashMap<String, u64>,
}

impl CaptureLog {
    /// The failover gap around a fault at `fault_ms`: the longest silence between consecutive
    /// captures (by any replica) after the fault and before `until_ms` (the next fault), where
    /// the silence that the first capture after the fault ends always counts — the last capture
    /// of the old leader to the first capture of the new one.
    #[must_use]
    pub fn gap(&self, fault_ms: i64, until_ms: i64) -> Option<Duration> {
        let mut times: Vec<i64> = self.captures.iter().map(|(ms, _)| *ms).collect();
        times.sort_unstable();
        let first_after = times.iter().copied().find(|ms| *ms > fault_ms);
        times
            .windows(2)
            .filter(|w| w[1] > fault_ms && (w[1] <= until_ms || Some(w[1]) == first_after))
            .map(|w| w[1] - w[0])
            .max()
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis)
    }
}

/// Polls every replica's `/metrics` every 100 ms.
pub struct Captures {
    /// The replicas to poll: `(identity, admin address)`; the lab updates it on restarts.
    pub targets: Arc<Mutex<Vec<(String, SocketAddr)>>>,
    log: Arc<Mutex<CaptureLog>>,
    stop: CancellationToken,
}

impl Captures {
    /// Starts polling (the caller fills `targets`).
    #[must_use]
    pub fn start() -> Self {
        let targets: Arc<Mutex<Vec<(String, SocketAddr)>>> = Arc::default();
        let log: Arc<Mutex<CaptureLog>> = Arc::default();
        let stop = CancellationToken::new();
        {
            let (targets, log, stop) = (targets.clone(), log.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let current = lock(&targets).clone();
                    let polls = current.into_iter().map(|(identity, addr)| async move {
                        let body = tokio::time::timeout(
                            Duration::from_millis(300),
                            super::admin_get(addr, "/metrics"),
                        )
                        .await
                        .ok()
                        .flatten();
                        (identity, body)
                    });
                    let results = futures::future::join_all(polls).await;
                    let now = now_ms();
                    let mut log = lock(&log);
                    for (identity, body) in results {
                        let Some(body) = body else { continue };
                        if let Some(captured) = metric(&body, "kevents_events_captured_total") {
                            let last = log.last.insert(identity.clone(), captured);
                            if last.is_some_and(|l| captured > l)
                                || (last.is_none() && captured > 0)
                            {
                                log.captures.push((now, identity.clone()));
                            }
                        }
                        if let Some(relists) = metric(&body, "kevents_relists_total") {
                            let entry = log.relists.entry(identity).or_default();
                            *entry = (*entry).max(relists);
                        }
                    }
                }
            });
        }
        Self { targets, log, stop }
    }

    /// A copy of what was seen so far.
    #[must_use]
    pub fn log(&self) -> CaptureLog {
        lock(&self.log).clone()
    }

    /// Stops polling.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Captures {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The sum of a metric's samples (any labels) in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a counter of events"
        )]
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0) += value as u64;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_samples_of_one_name_only() {
        let text = "# HELP kevents_relists_total x\nkevents_relists_total 3\n\
                    kevents_relists_total_other 9\nkevents_events_captured_total{a=\"b\"} 5\n\
                    kevents_events_captured_total{a=\"c\"} 2\n";
        assert_eq!(metric(text, "kevents_relists_total"), Some(3));
        assert_eq!(metric(text, "kevents_events_captured_total"), Some(7));
        assert_eq!(metric(text, "kevents_missing"), None);
    }

    #[test]
    fn the_gap_is_the_longest_silence_across_the_fault() {
        let log = CaptureLog {
            captures: [1_000, 1_200, 1_400, 4_400, 4_500, 9_000]
                .into_iter()
                .map(|ms| (ms, "a".to_owned()))
                .collect(),
            ..CaptureLog::default()
        };
        assert_eq!(log.gap(1_300, 5_000), Some(Duration::from_secs(3)));
        // The next fault's silence is not this one's.
        assert_eq!(log.gap(1_300, 4_450), Some(Duration::from_secs(3)));
        assert_eq!(log.gap(4_450, 5_000), Some(Duration::from_millis(100)));
        assert_eq!(log.gap(4_450, 10_000), Some(Duration::from_millis(4_500)));
        // A fault right before the next: the silence that ends after both still counts.
        assert_eq!(log.gap(1_450, 1_460), Some(Duration::from_secs(3)));
        assert_eq!(log.gap(9_000, 10_000), None);
    }

    #[test]
    fn the_tail_reads_whole_lines_once_and_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let row = |n: u32| format!("{{\"Uid\":\"u{n}\",\"ResourceVersion\":\"{n}\"}}\n");
        std::fs::write(&path, format!("{}{}", row(1), "{\"Uid\":\"u2\"")).unwrap();
        let sink = SinkView::File(path.clone());
        let mut tail = Tail::default();
        assert_eq!(tail.poll(&sink), vec![("u1".into(), "1".into())]);
        std::fs::write(&path, format!("{}{}", row(1), row(2))).unwrap();
        assert_eq!(tail.poll(&sink), vec![("u2".into(), "2".into())]);
        std::fs::rename(&path, dir.path().join("events.ndjson.1")).unwrap();
        std::fs::write(&path, row(3)).unwrap();
        assert_eq!(tail.poll(&sink), vec![("u3".into(), "3".into())]);
        assert!(tail.poll(&sink).is_empty());
    }
}
