//! The file sink: newline-delimited JSON with size-based rotation, delivering each batch id once.
//!
//! Owns the output file, its rotated predecessors (`<path>.1`, `<path>.2`, … oldest first) and a
//! small journal (`<path>.journal`) that makes re-sends idempotent across crashes and failovers:
//! before writing a batch it journals `begin <id> <offset>`, then writes and syncs the data, then
//! journals `commit <id>`. A batch already committed is skipped; a batch begun but not committed
//! (the writer died mid-write) is cut off at its offset and written again. Every write holds an
//! exclusive lock (`<path>.lock`) from reading the journal to its commit, and first reads what
//! other processes journaled since: a leader that lost its lease in the middle of a write (paused
//! after its fence check) finishes that write before a newer leader's re-send of the same batch
//! looks, which then finds it committed. The lock is a local one: the output must be on a
//! file system whose locks all writers share (not a `nobrl` share). It must never write outside
//! the batch it was given, and never keep more than one partial batch in the file.

use std::{
    collections::{HashSet, VecDeque},
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use crate::blocking::IoPool;

use super::{Error, OutgoingBatch, Receipt, Result, SendFuture, Sink};

/// Committed batch ids remembered for deduplication (re-sends are always recent ones).
const REMEMBERED_BATCHES: usize = 4096;
/// How long a send waits for another writer's lock before failing as retriable.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// File sink settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkOptions {
    /// The active output file.
    pub path: PathBuf,
    /// Rotate when the active file reaches this size.
    pub max_bytes: u64,
    /// Rotated files kept (older ones are deleted).
    pub max_files: usize,
}

#[derive(Debug)]
struct State {
    options: FileSinkOptions,
    committed: HashSet<String>,
    order: VecDeque<String>,
    /// Highest rotation index in use.
    rotated: usize,
    /// How far the journal was read, and which journal file (rotation replaces it).
    journal_read: Option<JournalPosition>,
    /// Drills: wait between journaling a batch and writing it.
    write_stall: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JournalPosition {
    inode: u64,
    offset: u64,
}

/// Delivers batches to a file, exactly once per batch id.
#[derive(Debug, Clone)]
pub struct FileSink {
    state: Arc<Mutex<State>>,
    /// Threads for writes, with their deadline (`None`: the runtime's blocking threads).
    io: Option<IoPool>,
}

impl FileSink {
    /// Opens the sink, recovering from a write that was cut short.
    ///
    /// # Errors
    /// Fails if the directory, the file or the journal cannot be read or written.
    pub fn open(options: FileSinkOptions) -> std::io::Result<Self> {
        if let Some(parent) = options.path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        let state = State {
            rotated: highest_rotation(&options.path)?,
            options,
            committed: HashSet::new(),
            order: VecDeque::new(),
            journal_read: None,
            write_stall: std::time::Duration::ZERO,
        };
        // The journal is read under the lock at the first write (a blocking task): a writer that
        // is paused while holding the lock must not stall the caller here.
        Ok(Self {
            state: Arc::new(Mutex::new(state)),
            io: None,
        })
    }
}

impl FileSink {
    /// Drills only: every write waits `stall` between journaling the batch and writing it, so a
    /// pause can land inside a sink write.
    #[must_use]
    pub fn with_write_stall(self, stall: std::time::Duration) -> Self {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_stall = stall;
        self
    }
}

impl FileSink {
    /// Writes on `io`'s threads, within its deadline: a hanging volume fails a send as retriable
    /// instead of holding the shipper.
    #[must_use]
    pub fn with_io(mut self, io: IoPool) -> Self {
        self.io = Some(io);
        self
    }
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn send<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        let state = Arc::clone(&self.state);
        let batch = batch.clone();
        let io = self.io.clone();
        Box::pin(async move {
            let write = move || {
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                state.write_batch(&batch)
            };
            match io {
                Some(io) => io.run("write", write).await.map_err(|e| Error::Retriable {
                    message: "file sink write did not finish in time".to_owned(),
                    retry_after: None,
                    source: Some(Box::new(e)),
                })?,
                None => tokio::task::spawn_blocking(write)
                    .await
                    .map_err(|e| Error::Retriable {
                        message: "file sink task failed".to_owned(),
                        retry_after: None,
                        source: Some(Box::new(e)),
                    })?,
            }?;
            Ok(Receipt::Delivered)
        })
    }
}

impl State {
    fn journal_path(&self) -> PathBuf {
        suffixed(&self.options.path, ".journal")
    }

    /// Takes the writers' lock (held until the file drops), waiting up to [`LOCK_WAIT`]: a writer
    /// paused while holding it makes this send fail as retriable rather than hang.
    fn lock(&self) -> std::io::Result<File> {
        use rustix::fs::{FlockOperation, flock};
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(suffixed(&self.options.path, ".lock"))?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(file),
                Err(e)
                    if e == rustix::io::Errno::WOULDBLOCK
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads what was journaled since the last read (by any process; the caller holds the lock):
    /// remembers committed ids, and cuts off a batch that was begun but not committed (its
    /// writer died mid-write, since a live one would still hold the lock).
    fn catch_up(&mut self) -> std::io::Result<()> {
        use std::io::Seek as _;
        use std::os::unix::fs::MetadataExt as _;
        let mut journal = match File::open(self.journal_path()) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let metadata = journal.metadata()?;
        let from = match self.journal_read {
            Some(read) if read.inode == metadata.ino() && read.offset <= metadata.len() => {
                read.offset
            }
            _ => 0,
        };
        journal.seek(std::io::SeekFrom::Start(from))?;
        let mut offset = from;
        let mut open_begin: Option<u64> = None;
        let mut reader = BufReader::new(journal);
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line)?;
            if read == 0 || !line.ends_with('\n') {
                // A torn last line (the writer died while journaling) means nothing.
                break;
            }
            offset += read as u64;
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("begin"), Some(_), Some(at)) => open_begin = at.parse().ok(),
                (Some("commit"), Some(id), None) => {
                    open_begin = None;
                    self.remember(id.to_owned());
                }
                _ => {}
            }
        }
        self.journal_read = Some(JournalPosition {
            inode: metadata.ino(),
            offset,
        });
        if let Some(offset) = open_begin {
            let file = OpenOptions::new().write(true).open(&self.options.path);
            if let Ok(file) = file
                && file.metadata()?.len() > offset
            {
                tracing::warn!(
                    offset,
                    "File sink: cutting off a batch whose write was interrupted; it will be re-sent"
                );
                file.set_len(offset)?;
                file.sync_all()?;
            }
        }
        Ok(())
    }

    fn remember(&mut self, id: String) {
        if self.committed.insert(id.clone()) {
            self.order.push_back(id);
            while self.order.len() > REMEMBERED_BATCHES {
                if let Some(old) = self.order.pop_front() {
                    self.committed.remove(&old);
                }
            }
        }
    }

    fn journal(&self, line: &str) -> std::io::Result<()> {
        let mut journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.journal_path())?;
        journal.write_all(line.as_bytes())?;
        journal.sync_data()
    }

    fn write_batch(&mut self, batch: &OutgoingBatch) -> Result<()> {
        let _lock = self.lock().map_err(|e| {
            Error::io(
                "locking the file sink (another writer holds it, or the lock file is unwritable)",
                e,
            )
        })?;
        self.catch_up()
            .map_err(|e| Error::io("reading the file sink journal", e))?;
        if self.committed.contains(&batch.id) {
            tracing::info!(batch_id = %batch.id, "File sink: batch already delivered; skipping the re-send");
            return Ok(());
        }
        let path = self.options.path.clone();
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let size = if size >= self.options.max_bytes && size > 0 {
            self.rotate()
                .map_err(|e| Error::io("rotating the output file", e))?;
            0
        } else {
            size
        };
        self.journal(&format!("begin {} {size}\n", batch.id))
            .map_err(|e| Error::io("writing the file sink journal", e))?;
        if !self.write_stall.is_zero() {
            std::thread::sleep(self.write_stall);
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        file.write_all(&batch.payload)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        self.journal(&format!("commit {}\n", batch.id))
            .map_err(|e| Error::io("writing the file sink journal", e))?;
        // Our own lines are read back (and the id remembered) by the next catch-up.
        self.catch_up()
            .map_err(|e| Error::io("reading the file sink journal", e))?;
        Ok(())
    }

    /// Renames the active file to the next rotation index and starts a fresh journal that keeps
    /// the remembered ids.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.rotated += 1;
        std::fs::rename(
            &self.options.path,
            suffixed(&self.options.path, &format!(".{}", self.rotated)),
        )?;
        let keep_from = self.rotated.saturating_sub(self.options.max_files);
        for index in (1..=keep_from).rev() {
            let old = suffixed(&self.options.path, &format!(".{index}"));
            if old.exists() {
                std::fs::remove_file(old)?;
            } else {
                break;
            }
        }
        // Rewrite the journal: only commits matter once the active file is new.
        let tmp = suffixed(&self.options.path, ".journal.tmp");
        {
            let mut out = File::create(&tmp)?;
            for id in &self.order {
                writeln!(out, "commit {id}")?;
            }
            out.sync_all()?;
        }
        std::fs::rename(tmp, self.journal_path())
    }
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn highest_rotation(path: &Path) -> std::io::Result<usize> {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(0);
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut highest = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(index) = file
            .strip_prefix(&name)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.parse::<usize>().ok())
        {
            highest = highest.max(index);
        }
    }
    Ok(highest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: &str, lines: &[&str]) -> OutgoingBatch {
        let mut payload = Vec::new();
        for line in lines {
            payload.extend_from_slice(line.as_bytes());
            payload.push(b'\n');
        }
        OutgoingBatch {
            id: id.to_owned(),
            payload: payload.into(),
            events: lines.len() as u64,
        }
    }

    fn options(dir: &Path, max_bytes: u64) -> FileSinkOptions {
        FileSinkOptions {
            path: dir.join("out/events.ndjson"),
            max_bytes,
            max_files: 3,
        }
    }

    #[tokio::test]
    async fn a_resent_batch_is_written_once_even_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(options(dir.path(), 1 << 20)).unwrap();
        sink.send(&batch("b1", &["{\"a\":1}", "{\"a\":2}"]))
            .await
            .unwrap();
        sink.send(&batch("b1", &["{\"a\":1}", "{\"a\":2}"]))
            .await
            .unwrap();
        let reopened = FileSink::open(options(dir.path(), 1 << 20)).unwrap();
        reopened
            .send(&batch("b1", &["{\"a\":1}", "{\"a\":2}"]))
            .await
            .unwrap();
        reopened.send(&batch("b2", &["{\"a\":3}"])).await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("out/events.ndjson")).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
    }

    #[tokio::test]
    async fn a_batch_another_writer_committed_after_this_one_opened_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), 1 << 20);
        // The old leader's sink, and the new leader's, opened before the old one's write.
        let old = FileSink::open(opts.clone()).unwrap();
        let new = FileSink::open(opts.clone()).unwrap();
        // The old leader is inside its write (holding the lock) when the new one re-sends.
        let held = old.state.lock().unwrap().lock().unwrap();
        let resend = tokio::spawn({
            let new = new.clone();
            async move { new.send(&batch("b1", &["{\"a\":1}"])).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !resend.is_finished(),
            "the re-send waits for the writer in progress"
        );
        {
            let state = old.state.lock().unwrap();
            state.journal("begin b1 0\n").unwrap();
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&opts.path)
                .unwrap();
            file.write_all(b"{\"a\":1}\n").unwrap();
            state.journal("commit b1\n").unwrap();
        }
        drop(held);
        resend.await.unwrap().unwrap();
        new.send(&batch("b2", &["{\"a\":2}"])).await.unwrap();
        old.send(&batch("b2", &["{\"a\":2}"])).await.unwrap();
        let text = std::fs::read_to_string(&opts.path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
    }

    #[tokio::test]
    async fn a_write_cut_short_is_removed_and_the_resend_lands_once() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), 1 << 20);
        let sink = FileSink::open(opts.clone()).unwrap();
        sink.send(&batch("b1", &["{\"a\":1}"])).await.unwrap();
        // Simulate a writer that died after `begin` and half the data.
        {
            let state = sink.state.lock().unwrap();
            state.journal("begin b2 8\n").unwrap();
        }
        let mut file = OpenOptions::new().append(true).open(&opts.path).unwrap();
        file.write_all(b"{\"a\":2").unwrap();
        drop(sink);
        let sink = FileSink::open(opts.clone()).unwrap();
        sink.send(&batch("b2", &["{\"a\":2}"])).await.unwrap();
        let text = std::fs::read_to_string(&opts.path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
    }

    #[tokio::test]
    async fn files_rotate_by_size_and_old_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), 10);
        let sink = FileSink::open(opts.clone()).unwrap();
        for i in 0..6 {
            sink.send(&batch(&format!("b{i}"), &["{\"x\":\"0123456789\"}"]))
                .await
                .unwrap();
        }
        // Six batches of one over-size line: five rotations, three kept.
        assert!(suffixed(&opts.path, ".5").exists());
        assert!(suffixed(&opts.path, ".3").exists());
        assert!(!suffixed(&opts.path, ".2").exists());
        // Dedupe survives rotation and reopening.
        let sink = FileSink::open(opts.clone()).unwrap();
        sink.send(&batch("b5", &["{\"x\":\"0123456789\"}"]))
            .await
            .unwrap();
        let active = std::fs::read_to_string(&opts.path).unwrap();
        assert_eq!(active.lines().count(), 1);
    }
}
