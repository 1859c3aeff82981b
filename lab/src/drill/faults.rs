//! Faults the drills inject outside the emulators: the store directory turning read-only; and
//! what the drills read about a process from `/proc` around a pause (which store term
//! directories it has files open in, whether it was inside a drill stall).
//!
//! The drills run as root, for whom `chmod` changes nothing, and a read-only remount of a tmpfs
//! or bind mount fails with EBUSY while the store's files are open for writing. The immutable
//! attribute (`chattr +i`) does stop root: writes on already open descriptors and creating files
//! fail with EPERM until it is cleared. Owns only that; it must never touch files outside the
//! directory it is given.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::Context as _;

/// Makes `dir` and everything under it immutable (`on`), or writable again.
///
/// The directory itself goes first, so no file can be created between the two steps.
///
/// # Errors
/// Fails if `chattr` is missing or refuses (a file system without the attribute).
pub fn set_immutable(dir: &Path, on: bool) -> anyhow::Result<()> {
    let flag = if on { "+i" } else { "-i" };
    let steps: &[&[&str]] = if on {
        &[&[flag], &["-R", flag]]
    } else {
        &[&["-R", flag]]
    };
    for args in steps {
        let status = Command::new("chattr")
            .args(*args)
            .arg(dir)
            .status()
            .context("running chattr (e2fsprogs)")?;
        anyhow::ensure!(
            status.success(),
            "chattr {} {} failed: {status}",
            args.join(" "),
            dir.display()
        );
    }
    Ok(())
}

/// A node's mount made to hang by stopping its FUSE daemon; it answers again when dropped.
#[derive(Debug)]
pub struct HungMount {
    pid: nix::unistd::Pid,
}

impl HungMount {
    /// Stops the FUSE daemon `pid` (SIGSTOP): every call through its mount blocks until
    /// [`HungMount::release`] or drop.
    ///
    /// # Errors
    /// Fails if the signal cannot be sent.
    pub fn hang(pid: u32) -> anyhow::Result<Self> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)
            .context("stopping the node's FUSE daemon")?;
        Ok(Self { pid })
    }

    /// Lets the mount answer again.
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGCONT);
    }
}

/// The store term directories (`…/terms/<name>/…`) process `pid` has a file open in, by name.
#[must_use]
pub fn open_term_dirs(pid: u32) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| term_of(&target))
        .collect()
}

/// The term directory name in a path under `…/terms/<name>/…`.
fn term_of(path: &Path) -> Option<String> {
    let mut parts = path.iter();
    parts.find(|part| *part == "terms")?;
    let name = parts.next()?.to_string_lossy().into_owned();
    // The file must be inside the directory, not the directory listing itself.
    parts.next()?;
    Some(name)
}

/// True when a thread of `pid` sits in `nanosleep`/`clock_nanosleep`: with the drill stalls on,
/// that is a store commit or a file-sink write waiting after its fence check (the runtime's own
/// threads wait in `epoll_wait` or `futex`). x86-64 syscall numbers.
#[must_use]
pub fn in_stall(pid: u32) -> bool {
    const NANOSLEEP: &str = "35";
    const CLOCK_NANOSLEEP: &str = "230";
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|task| {
        std::fs::read_to_string(task.path().join("syscall")).is_ok_and(|text| {
            matches!(
                text.split_whitespace().next(),
                Some(NANOSLEEP | CLOCK_NANOSLEEP)
            )
        })
    })
}

/// `/proc` state of `pid` for a post-mortem: the process state, and each thread's state with
/// its kernel wait channel (`gone` when the process no longer exists).
#[must_use]
pub fn process_state(pid: u32) -> String {
    let state_of = |stat: &str| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default()
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return "gone".to_owned();
    };
    let mut threads = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.filter_map(Result::ok) {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
            threads.push(format!("{}:{}:{wchan}", comm.trim(), state_of(&stat)));
        }
    }
    format!("state {} threads [{}]", state_of(&stat), threads.join(" "))
}

/// Every file under `dir` with its size and modification time.
#[must_use]
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                out.push((entry.path(), metadata.len(), metadata.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_its_term_directory_only_for_files_inside_it() {
        assert_eq!(
            term_of(Path::new("/w/node-a/store/terms/g1-e2-ab/db")).as_deref(),
            Some("g1-e2-ab")
        );
        assert_eq!(term_of(Path::new("/w/node-a/store/terms/g1-e2-ab")), None);
        assert_eq!(term_of(Path::new("/w/node-a/store/db")), None);
    }

    #[test]
    fn this_process_is_seen_with_its_open_term_files() {
        let dir = tempfile::tempdir().unwrap();
        let term = dir.path().join("terms/g1-e1-aa");
        std::fs::create_dir_all(&term).unwrap();
        let _open = std::fs::File::create(term.join("db")).unwrap();
        let open = open_term_dirs(std::process::id());
        assert!(open.contains("g1-e1-aa"), "{open:?}");
        assert_eq!(fingerprint(&term).len(), 1);
    }

    #[test]
    fn an_immutable_directory_refuses_writes_even_on_open_files_until_cleared() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut file = std::fs::File::create(&path).unwrap();
        if set_immutable(dir.path(), true).is_err() {
            // No chattr, or a file system without the attribute (tmpfs on old kernels).
            return;
        }
        let refused = file.write_all(b"x").is_err();
        let create_refused = std::fs::File::create(dir.path().join("new")).is_err();
        set_immutable(dir.path(), false).unwrap();
        assert!(refused && create_refused);
        file.write_all(b"y").unwrap();
    }
}
