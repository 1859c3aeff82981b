//! Term directories: every leadership term writes a sled database of its own, and takes over
//! the previous term's state by a verified copy. This is what keeps the store intact on a share
//! where file locks do not cross nodes (`nobrl`) and file sizes are cached (`actimeo`).
//!
//! Layout under `store.path`: `terms/g<generation>-e<epoch>-<nonce>/` (one sled database, plus a
//! `BEGUN` marker once the term owns complete state), `…​.partial` while a copy is being made. A
//! new term picks the begun directory with the highest generation, refreshes every file's
//! attributes from the server (`statx` with `AT_STATX_FORCE_SYNC`, so a cached size cannot cut the
//! log short), copies it, reads the source again and accepts the copy only when both reads are
//! byte-for-byte equal (then the copy is the source's exact content at one instant, even if a
//! paused previous leader wakes and writes meanwhile), opens the copy, and marks it begun.
//! `docs/store-across-nodes.md` walks through every fault. It must never write into another
//! term's directory, never mark a term begun before its copy is complete and flushed, and never
//! delete a directory it cannot name as older than the one it took over.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs::File,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{Error, EventStore as _, Guard, OpenOptions, Result, SledStore};

/// The directory holding the term directories.
pub const TERMS_DIR: &str = "terms";
/// The marker a term writes once it holds complete state; only begun terms are taken over.
pub const BEGUN_MARKER: &str = "BEGUN";
const PARTIAL_SUFFIX: &str = ".partial";
/// Copy passes before giving up on a source that keeps changing.
const COPY_ATTEMPTS: u32 = 8;
/// sled files of a store written before term directories existed (taken over once).
const LEGACY_FILES: &[&str] = &["conf", "db", "blobs"];
const LEGACY_SNAPSHOT_PREFIX: &str = "snap.";

/// A term directory found on the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermDir {
    /// Its path.
    pub path: PathBuf,
    /// Hand-overs since the store was created (0: a store from before term directories).
    pub generation: u64,
    /// The leadership term that wrote it.
    pub epoch: i64,
    /// True once it held complete state.
    pub begun: bool,
}

/// Who takes a term: the holder, and the Lease object it won the term on. Recorded in the term's
/// marker, so the store tells which Lease it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TermOwner {
    /// The lease holder (this replica's identity).
    pub holder: String,
    /// The Lease's namespace.
    #[serde(default)]
    pub lease_namespace: String,
    /// The Lease's name.
    #[serde(default)]
    pub lease_name: String,
    /// The Lease's `metadata.uid` (a recreated Lease has a new one).
    #[serde(default)]
    pub lease_uid: String,
}

impl From<&str> for TermOwner {
    fn from(holder: &str) -> Self {
        Self {
            holder: holder.to_owned(),
            ..Self::default()
        }
    }
}

impl TermOwner {
    fn same_lease(&self, other: &Self) -> bool {
        (&self.lease_namespace, &self.lease_name, &self.lease_uid)
            == (&other.lease_namespace, &other.lease_name, &other.lease_uid)
    }
}

/// What taking over the store did.
#[derive(Debug)]
pub struct Handover {
    /// The open store of this term.
    pub store: SledStore,
    /// This term's directory.
    pub dir: PathBuf,
    /// This term's generation (hand-overs since the store was created).
    pub generation: u64,
    /// The directory taken over (`None`: a new store).
    pub source: Option<PathBuf>,
    /// Bytes copied from it.
    pub copied_bytes: u64,
    /// Copy passes it took (2 or more reads of the source).
    pub attempts: u32,
    /// Time spent copying.
    pub copy_time: Duration,
    /// Set when the copy was unreadable and moved aside (a fresh store was started).
    pub quarantined: Option<(PathBuf, String)>,
    /// Older directories removed after this term began.
    pub removed: Vec<PathBuf>,
}

/// Takes the store over for the term of `guard`: copies the newest begun term into a new
/// directory of this term, opens it, records the term, and marks it begun. `cancelled` is
/// polled between files so a stop or a lost lease ends a long copy.
///
/// # Errors
/// [`Error::StaleEpoch`] when a newer term has begun (or another holder's term with this epoch:
/// two terms the epoch cannot tell apart, so neither is trusted), [`Error::Fenced`] when the
/// lease is lost or `cancelled` answers true, [`Error::SourceUnsettled`] when the source kept
/// changing, and I/O or engine errors.
///
/// `cancelled` is asked between files and between chunks of a file; a caller can count those
/// calls as progress.
pub fn take_over(
    options: &OpenOptions,
    owner: &TermOwner,
    guard: &dyn Guard,
    cancelled: &dyn Fn() -> bool,
) -> Result<Handover> {
    let root = &options.path;
    let terms_dir = root.join(TERMS_DIR);
    std::fs::create_dir_all(&terms_dir).map_err(io(&terms_dir))?;
    let dirs = scan(root)?;
    let ours = guard.epoch();
    if let Some(newest) = dirs.iter().filter(|d| d.begun).map(|d| d.epoch).max()
        && newest > ours
    {
        return Err(Error::StaleEpoch {
            stored: newest,
            ours,
        });
    }
    let source = newest_begun(&dirs).cloned();
    let previous = source.as_ref().and_then(|s| read_owner(&s.path));
    if let (Some(source), Some(previous)) = (&source, &previous)
        && source.epoch == ours
        && previous.holder != owner.holder
    {
        return Err(Error::StaleEpoch {
            stored: source.epoch,
            ours,
        });
    }
    if let Some(previous) = &previous
        && !previous.same_lease(owner)
    {
        tracing::warn!(
            previous_lease = %format!("{}/{}", previous.lease_namespace, previous.lease_name),
            previous_uid = %previous.lease_uid,
            lease = %format!("{}/{}", owner.lease_namespace, owner.lease_name),
            uid = %owner.lease_uid,
            "The store belongs to another Lease (deleted and recreated, renamed, or restored): this term takes it over from there"
        );
    }
    let generation = source.as_ref().map_or(1, |s| s.generation + 1);
    let name = format!("g{generation:010}-e{ours}-{}", nonce());
    let dir = terms_dir.join(&name);
    let partial = terms_dir.join(format!("{name}{PARTIAL_SUFFIX}"));

    let started = Instant::now();
    let keep_going = || guard.is_current() && !cancelled();
    let copied = match &source {
        Some(source) => copy_verified(&source.path, &partial, source.generation == 0, &keep_going),
        None => std::fs::create_dir_all(&partial)
            .map(|()| Copied::default())
            .map_err(io(&partial)),
    };
    let copy = match copied {
        Ok(copy) => copy,
        Err(error) => {
            // Nobody takes a partial copy over; remove it now rather than at the next hand-over.
            let _ = std::fs::remove_dir_all(&partial);
            return Err(error);
        }
    };
    let copy_time = started.elapsed();
    std::fs::rename(&partial, &dir).map_err(io(&partial))?;
    sync_dir(&terms_dir)?;

    let opened = SledStore::open(&OpenOptions {
        path: dir.clone(),
        ..options.clone()
    })?;
    let store = opened.store;
    store.begin_term(guard)?;
    if !keep_going() {
        return Err(Error::Fenced);
    }
    write_marker(
        &dir,
        &serde_json::json!({
            "generation": generation,
            "epoch": ours,
            "holder": owner.holder,
            "lease_namespace": owner.lease_namespace,
            "lease_name": owner.lease_name,
            "lease_uid": owner.lease_uid,
            "source": source.as_ref().and_then(|s| s.path.file_name()).map(|n| n.to_string_lossy()),
            "begun_unix_ms": jiff::Timestamp::now().as_millisecond(),
        }),
    )?;
    let removed = source
        .as_ref()
        .map(|source| remove_older(root, &dirs, source, ours))
        .unwrap_or_default();
    Ok(Handover {
        store,
        dir,
        generation,
        source: source.map(|s| s.path),
        copied_bytes: copy.bytes,
        attempts: copy.attempts,
        copy_time,
        quarantined: opened.quarantined,
        removed,
    })
}

/// A begun term newer than `generation` under `root`, if any: a running term that finds one has
/// been superseded.
///
/// # Errors
/// Fails if the store directory cannot be listed.
pub fn newer_term(root: &Path, generation: u64) -> Result<Option<PathBuf>> {
    Ok(scan(root)?
        .into_iter()
        .find(|d| d.begun && d.generation > generation)
        .map(|d| d.path))
}

/// The directory of the newest begun term under `root` (what the next leader takes over).
///
/// # Errors
/// Fails if the store directory cannot be listed.
pub fn current_dir(root: &Path) -> Result<Option<PathBuf>> {
    Ok(newest_begun(&scan(root)?).map(|d| d.path.clone()))
}

/// Every term directory under `root`, and a store from before term directories as generation 0.
///
/// # Errors
/// Fails if the store directory cannot be listed.
pub fn scan(root: &Path) -> Result<Vec<TermDir>> {
    let mut dirs = Vec::new();
    if LEGACY_FILES[..2].iter().all(|f| root.join(f).is_file()) {
        dirs.push(TermDir {
            path: root.to_owned(),
            generation: 0,
            epoch: i64::MIN,
            begun: true,
        });
    }
    let terms_dir = root.join(TERMS_DIR);
    let entries = match std::fs::read_dir(&terms_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(dirs),
        Err(e) => return Err(io(&terms_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(&terms_dir))?;
        let file_name = entry.file_name();
        let Some((generation, epoch, partial)) = parse_name(&file_name.to_string_lossy()) else {
            continue;
        };
        // Listing the directory, not looking the marker up: a cached negative lookup cannot
        // hide a marker written through another node.
        let begun = !partial && lists(&entry.path(), BEGUN_MARKER)?;
        dirs.push(TermDir {
            path: entry.path(),
            generation,
            epoch,
            begun,
        });
    }
    Ok(dirs)
}

fn newest_begun(dirs: &[TermDir]) -> Option<&TermDir> {
    dirs.iter()
        .filter(|d| d.begun)
        .max_by_key(|d| (d.generation, d.epoch))
}

/// `g<generation>-e<epoch>-<nonce>[.partial]`.
fn parse_name(name: &str) -> Option<(u64, i64, bool)> {
    let (name, partial) = match name.strip_suffix(PARTIAL_SUFFIX) {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    let rest = name.strip_prefix('g')?;
    let (generation, rest) = rest.split_once("-e")?;
    let (epoch, nonce) = rest.rsplit_once('-')?;
    if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((generation.parse().ok()?, epoch.parse().ok()?, partial))
}

fn lists(dir: &Path, name: &str) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                if entry.map_err(io(dir))?.file_name() == name {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(dir)(e)),
    }
}

/// What a verified copy read.
#[derive(Debug, Default)]
struct Copied {
    bytes: u64,
    attempts: u32,
}

/// Per file (relative path): length and CRC-32 of what was read.
type Digest = BTreeMap<PathBuf, (u64, u32)>;

/// Copies `source` into `target` until a second read of `source` equals the copy: then no byte
/// changed between the two reads, so the copy is the source's content at one instant.
fn copy_verified(
    source: &Path,
    target: &Path,
    legacy: bool,
    keep_going: &dyn Fn() -> bool,
) -> Result<Copied> {
    let mut wait = Duration::from_millis(50);
    for attempt in 1..=COPY_ATTEMPTS {
        if target.exists() {
            std::fs::remove_dir_all(target).map_err(io(target))?;
        }
        std::fs::create_dir_all(target).map_err(io(target))?;
        let copied = read_tree(source, Some(target), legacy, keep_going)?;
        let again = read_tree(source, None, legacy, keep_going)?;
        if copied == again {
            return Ok(Copied {
                bytes: copied.values().map(|(len, _)| len).sum(),
                attempts: attempt,
            });
        }
        tracing::warn!(
            source = %source.display(),
            attempt,
            "The previous term's store changed while it was copied (its process is still writing); copying again"
        );
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(1));
    }
    Err(Error::SourceUnsettled {
        path: source.to_owned(),
        attempts: COPY_ATTEMPTS,
    })
}

/// Reads every file under `source` (with fresh attributes), copying it under `target` if given.
fn read_tree(
    source: &Path,
    target: Option<&Path>,
    legacy: bool,
    keep_going: &dyn Fn() -> bool,
) -> Result<Digest> {
    let mut digest = Digest::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = source.join(&relative);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed by its writer since it was listed: the second read tells.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            if skipped(&name, relative.as_os_str().is_empty(), legacy) {
                continue;
            }
            if !keep_going() {
                return Err(Error::Fenced);
            }
            let relative = relative.join(&name);
            let file_type = entry.file_type().map_err(io(&entry.path()))?;
            if file_type.is_dir() {
                if let Some(target) = target {
                    let made = target.join(&relative);
                    std::fs::create_dir_all(&made).map_err(io(&made))?;
                }
                pending.push(relative);
            } else if file_type.is_file()
                && let Some(read) = read_file(
                    &source.join(&relative),
                    target.map(|t| t.join(&relative)).as_deref(),
                    keep_going,
                )?
            {
                digest.insert(relative, read);
            }
        }
    }
    if let Some(target) = target {
        sync_dir(target)?;
    }
    Ok(digest)
}

/// Names a copy leaves out: the marker (the new term writes its own) and, when copying a store
/// from before term directories, everything but sled's own files.
fn skipped(name: &OsStr, top: bool, legacy: bool) -> bool {
    if !top {
        return false;
    }
    let name = name.to_string_lossy();
    if legacy {
        !(LEGACY_FILES.contains(&name.as_ref()) || name.starts_with(LEGACY_SNAPSHOT_PREFIX))
    } else {
        name == BEGUN_MARKER
    }
}

/// Reads one file to its end after refreshing its attributes from the server, copying it to
/// `target` (synced) if given. `None` when it vanished meanwhile. `keep_going` is asked between
/// chunks (it also reports progress to the caller).
fn read_file(
    path: &Path,
    target: Option<&Path>,
    keep_going: &dyn Fn() -> bool,
) -> Result<Option<(u64, u32)>> {
    let expected = match fresh_size(path) {
        Ok(size) => size,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let mut out = target
        .map(|target| File::create(target).map_err(io(target)))
        .transpose()?;
    let mut crc = flate2::Crc::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut length = 0u64;
    loop {
        if !keep_going() {
            return Err(Error::Fenced);
        }
        let read = file.read(&mut buffer).map_err(io(path))?;
        if read == 0 {
            break;
        }
        let chunk = &buffer[..read];
        crc.update(chunk);
        length += read as u64;
        if let (Some(out), Some(target)) = (out.as_mut(), target) {
            out.write_all(chunk).map_err(io(target))?;
        }
    }
    if let (Some(out), Some(target)) = (out, target) {
        out.sync_all().map_err(io(target))?;
    }
    // A file that reads shorter than the server says it is was cut by a stale cache: mark the
    // read so it never equals another one.
    let crc = if length < expected {
        !crc.sum()
    } else {
        crc.sum()
    };
    Ok(Some((length.max(expected), crc)))
}

/// Checks that the store's volume answers from this node: creates the store directory if needed
/// and reads its attributes from the server (a hung mount blocks here; run it with a deadline).
///
/// # Errors
/// The I/O error the volume answered with.
pub fn probe(root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    fresh_size(root).map(|_| ())
}

/// The file's size as the server has it now, not as this node cached it.
fn fresh_size(path: &Path) -> std::io::Result<u64> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    let stat = statx(CWD, path, AtFlags::STATX_FORCE_SYNC, StatxFlags::SIZE)?;
    Ok(stat.stx_size)
}

/// Who began the term in `dir`, from its marker (`None`: no readable marker, or a store from
/// before term directories).
fn read_owner(dir: &Path) -> Option<TermOwner> {
    let text = std::fs::read_to_string(dir.join(BEGUN_MARKER)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_marker(dir: &Path, value: &serde_json::Value) -> Result<()> {
    let temporary = dir.join(format!("{BEGUN_MARKER}.tmp"));
    let marker = dir.join(BEGUN_MARKER);
    let mut file = File::create(&temporary).map_err(io(&temporary))?;
    file.write_all(value.to_string().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(&temporary))?;
    std::fs::rename(&temporary, &marker).map_err(io(&marker))?;
    sync_dir(dir)
}

/// Removes begun term directories older than the one taken over (which is kept as the last good
/// state), and directories of older terms that never began (a copy cut short). Best effort: a
/// directory a paused process still holds open may refuse (an SMB share), and is tried again at
/// the next hand-over.
fn remove_older(root: &Path, dirs: &[TermDir], source: &TermDir, ours: i64) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for dir in dirs {
        let older = if dir.begun {
            dir.generation < source.generation
        } else {
            dir.epoch < ours
        };
        if !older || dir.path == source.path {
            continue;
        }
        let result = if dir.generation == 0 {
            remove_legacy(root)
        } else {
            std::fs::remove_dir_all(&dir.path)
        };
        match result {
            Ok(()) => removed.push(dir.path.clone()),
            Err(error) => tracing::debug!(
                path = %dir.path.display(),
                error = %error,
                "An old term directory could not be removed yet; trying again at the next hand-over"
            ),
        }
    }
    removed
}

fn remove_legacy(root: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if LEGACY_FILES.contains(&name.as_ref()) || name.starts_with(LEGACY_SNAPSHOT_PREFIX) {
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn nonce() -> String {
    use rand::Rng as _;
    format!("{:08x}", rand::rng().random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_directory_names_parse_and_others_are_ignored() {
        assert_eq!(parse_name("g0000000003-e7-0a1b2c3d"), Some((3, 7, false)));
        assert_eq!(
            parse_name("g0000000003-e7-0a1b2c3d.partial"),
            Some((3, 7, true))
        );
        assert_eq!(parse_name("g0000000001-e-1-ff"), Some((1, -1, false)));
        assert_eq!(parse_name("g0000000003-e7-0a1b2c3d.quarantined-17"), None);
        assert_eq!(parse_name("store"), None);
        assert_eq!(parse_name("g1-e2-"), None);
    }
}
