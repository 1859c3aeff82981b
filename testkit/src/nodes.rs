//! The lab's test ground: one directory (`share`) seen through several FUSE mounts, one per
//! modelled node, as replicas on different AKS nodes see one Azure Files (SMB) share.
//!
//! Each node is `bindfs -o attr_timeout=N,entry_timeout=N <workdir>/share <workdir>/node-X`. That
//! models the two properties of the production mount (`nobrl,actimeo=30`): a `flock` taken
//! through one node does not block one through another (bindfs does not forward locks, so each
//! mount keeps its own), and a file appended through one node keeps its old size through another
//! until the attribute cache expires (`attr_timeout=0` models `actimeo=0`). Owns mounting,
//! checking that each mount really is FUSE, and unmounting — also mounts an interrupted run left
//! behind, before a workdir is cleared. It never falls back to fewer nodes: when bindfs or FUSE
//! is unavailable it fails and says how to fix it, and it never unmounts anything outside the
//! workdir it is given.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

/// Most nodes a ground can have (`node-a` … `node-z`).
pub const MAX_NODES: usize = 26;

/// What went wrong with the ground.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node count is outside `2..=MAX_NODES` (one node needs no mount).
    #[error("a multi-node ground has 2 to {MAX_NODES} nodes, not {0}")]
    NodeCount(usize),
    /// bindfs could not be run at all.
    #[error(
        "cannot run `{command}`: bindfs is not installed or not on PATH; install it with `make tools` (or `apt-get install bindfs`)"
    )]
    BindfsMissing {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// bindfs ran but the mount failed.
    #[error(
        "`{command}` failed ({status}): {stderr}; the two-node ground needs FUSE: /dev/fuse must exist and be usable (run as root, or a container with --device /dev/fuse --cap-add SYS_ADMIN), and bindfs installed (`make tools` or `apt-get install bindfs`)"
    )]
    MountFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        stderr: String,
    },
    /// The mount point is not a FUSE mount after bindfs returned.
    #[error(
        "`{command}` returned but {mountpoint} is not a FUSE mount (file system type: {fstype}); the ground would not model separate nodes"
    )]
    NotFuse {
        /// The command line.
        command: String,
        /// The mount point.
        mountpoint: PathBuf,
        /// What `/proc/self/mountinfo` says is mounted there (`none` when nothing is).
        fstype: String,
    },
    /// A mount point could not be unmounted, not even lazily.
    #[error(
        "cannot unmount {mountpoint} (tried fusermount -u, fusermount3 -u, umount and their lazy forms): {detail}"
    )]
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
        /// The last command's output.
        detail: String,
    },
    /// A file system operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { what, path, source }
}

/// The ground drills run on: one node (a plain directory) or several FUSE mounts of one share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ground {
    /// Nodes (1: no mounts, today's single store directory).
    pub nodes: usize,
    /// bindfs `attr_timeout` and `entry_timeout` in seconds (unused with one node).
    pub attr_timeout: u32,
}

impl Ground {
    /// One node: every replica uses the same plain directory.
    #[must_use]
    pub fn single() -> Self {
        Self {
            nodes: 1,
            attr_timeout: 0,
        }
    }

    /// True when replicas are spread over FUSE mounts.
    #[must_use]
    pub fn is_multi_node(&self) -> bool {
        self.nodes > 1
    }
}

impl Default for Ground {
    fn default() -> Self {
        Self::single()
    }
}

impl fmt::Display for Ground {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_multi_node() {
            write!(
                f,
                "{} nodes (bindfs attr_timeout={})",
                self.nodes, self.attr_timeout
            )
        } else {
            f.write_str("1 node")
        }
    }
}

/// The name of node `index`: `node-a`, `node-b`, …
#[must_use]
pub fn node_name(index: usize) -> String {
    let letter = u8::try_from(index % MAX_NODES).map_or('?', |i| char::from(b'a' + i));
    format!("node-{letter}")
}

/// Mounted nodes over `<workdir>/share`; dropping them unmounts them (lazily if busy).
#[derive(Debug)]
pub struct Nodes {
    share: PathBuf,
    mounts: Vec<PathBuf>,
    attr_timeout: u32,
}

impl Nodes {
    /// Creates `<workdir>/share` and mounts `count` nodes over it at `<workdir>/node-a`, ….
    ///
    /// # Errors
    /// Fails if `count` is not 2 to [`MAX_NODES`], bindfs is missing, FUSE cannot be mounted, or
    /// a mount point turns out not to be FUSE. Mounts made before the failure are undone.
    pub fn mount(workdir: &Path, count: usize, attr_timeout: u32) -> Result<Self> {
        if !(2..=MAX_NODES).contains(&count) {
            return Err(Error::NodeCount(count));
        }
        std::fs::create_dir_all(workdir).map_err(io("creating", workdir))?;
        let workdir = std::fs::canonicalize(workdir).map_err(io("resolving", workdir))?;
        let share = workdir.join("share");
        std::fs::create_dir_all(&share).map_err(io("creating", &share))?;
        let mut nodes = Self {
            share,
            mounts: Vec::new(),
            attr_timeout,
        };
        for index in 0..count {
            let mountpoint = workdir.join(node_name(index));
            std::fs::create_dir_all(&mountpoint).map_err(io("creating", &mountpoint))?;
            nodes.mount_one(&mountpoint)?;
            nodes.mounts.push(mountpoint);
        }
        Ok(nodes)
    }

    fn mount_one(&self, mountpoint: &Path) -> Result<()> {
        let timeouts = format!("attr_timeout={t},entry_timeout={t}", t = self.attr_timeout);
        // bindfs's defaults suit root: it adds allow_other and default_permissions, mirrors
        // owners and modes unchanged, creates files as the calling user, and does not forward
        // locks (so each mount keeps its own flocks, like `nobrl`). No kernel_cache: the page
        // cache is dropped on open, as on SMB without leases.
        let mut command = Command::new("bindfs");
        command
            .arg("-o")
            .arg(&timeouts)
            .arg(&self.share)
            .arg(mountpoint);
        let line = format!(
            "bindfs -o {timeouts} {} {}",
            self.share.display(),
            mountpoint.display()
        );
        let output = command.output().map_err(|source| Error::BindfsMissing {
            command: line.clone(),
            source,
        })?;
        if !output.status.success() {
            return Err(Error::MountFailed {
                command: line,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        match fstype_at(mountpoint)? {
            Some(fstype) if is_fuse(&fstype) => Ok(()),
            other => {
                // Whatever is there is not ours to keep mounted.
                if other.is_some() {
                    let _ = unmount(mountpoint);
                }
                Err(Error::NotFuse {
                    command: line,
                    mountpoint: mountpoint.to_owned(),
                    fstype: other.unwrap_or_else(|| "none".to_owned()),
                })
            }
        }
    }

    /// The shared directory itself (what the lab reads or makes read-only).
    #[must_use]
    pub fn share(&self) -> &Path {
        &self.share
    }

    /// The mount points, one per node, in node order.
    #[must_use]
    pub fn mounts(&self) -> &[PathBuf] {
        &self.mounts
    }

    /// `relative` under the node of each of `slots` replicas, placed round-robin (replica 0 on
    /// `node-a`, 1 on `node-b`, …): the same directory of the share, seen through each
    /// replica's node.
    #[must_use]
    pub fn round_robin(&self, relative: &Path, slots: usize) -> Vec<PathBuf> {
        (0..slots)
            .filter_map(|slot| {
                let node = slot.checked_rem(self.mounts.len())?;
                Some(self.mounts[node].join(relative))
            })
            .collect()
    }

    /// The node replica `slot` runs on (round-robin placement).
    #[must_use]
    pub fn node_of(&self, slot: usize) -> usize {
        slot.checked_rem(self.mounts.len()).unwrap_or(0)
    }

    /// The process id of the FUSE daemon serving node `index`: stopping it makes every call
    /// through that node's mount hang, as on a node whose SMB mount stopped answering.
    #[must_use]
    pub fn daemon_pid(&self, index: usize) -> Option<u32> {
        let mountpoint = self
            .mounts
            .get(index)?
            .as_os_str()
            .as_encoded_bytes()
            .to_vec();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            let is_bindfs = args.first().is_some_and(|a| a.ends_with(b"bindfs"));
            if is_bindfs && args.last() == Some(&mountpoint.as_slice()) {
                return Some(pid);
            }
        }
        None
    }

    /// Unmounts every node (lazily when busy).
    ///
    /// # Errors
    /// Fails if a node stays mounted; the others are still unmounted.
    pub fn unmount(&mut self) -> Result<()> {
        let mut first = None;
        for mountpoint in self.mounts.drain(..).rev() {
            if let Err(error) = unmount(&mountpoint) {
                first.get_or_insert(error);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if let Err(error) = self.unmount() {
            eprintln!("kevents-lab: {error}");
        }
    }
}

fn is_fuse(fstype: &str) -> bool {
    fstype == "fuse" || fstype.starts_with("fuse.")
}

/// `\040`-style escapes of `/proc/self/mountinfo` decoded.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(mount point, file system type)` of every mount, in mount order.
fn mounts() -> Result<Vec<(PathBuf, String)>> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(io("reading", path))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mountpoint = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some((PathBuf::from(unescape(mountpoint)), fstype.to_owned()))
        })
        .collect())
}

/// The file system type mounted at `mountpoint` (the last mount there), if any.
///
/// # Errors
/// Fails if `/proc/self/mountinfo` cannot be read.
pub fn fstype_at(mountpoint: &Path) -> Result<Option<String>> {
    Ok(mounts()?
        .into_iter()
        .rev()
        .find(|(at, _)| at == mountpoint)
        .map(|(_, fstype)| fstype))
}

fn unmount(mountpoint: &Path) -> Result<()> {
    const ATTEMPTS: &[&[&str]] = &[
        &["fusermount", "-u"],
        &["fusermount3", "-u"],
        &["umount"],
        &["fusermount", "-uz"],
        &["fusermount3", "-uz"],
        &["umount", "-l"],
    ];
    let mut detail = String::from("not tried");
    for attempt in ATTEMPTS {
        let output = Command::new(attempt[0])
            .args(&attempt[1..])
            .arg(mountpoint)
            .output();
        match output {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                detail = format!(
                    "{}: {}",
                    attempt.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            Err(error) => detail = format!("{}: {error}", attempt.join(" ")),
        }
        if fstype_at(mountpoint)?.is_none() {
            return Ok(());
        }
    }
    Err(Error::Unmount {
        mountpoint: mountpoint.to_owned(),
        detail,
    })
}

/// Unmounts whatever is mounted at or under `workdir` (deepest first) — mounts an interrupted
/// run left behind; returns how many.
///
/// # Errors
/// Fails if something there cannot be unmounted, not even lazily.
pub fn clear_stale_mounts(workdir: &Path) -> Result<usize> {
    let Ok(workdir) = std::fs::canonicalize(workdir) else {
        // No workdir, nothing mounted in it.
        return Ok(0);
    };
    let mut stale: Vec<PathBuf> = mounts()?
        .into_iter()
        .map(|(at, _)| at)
        .filter(|at| at.starts_with(&workdir))
        .collect();
    stale.sort();
    stale.dedup();
    for mountpoint in stale.iter().rev() {
        unmount(mountpoint)?;
    }
    Ok(stale.len())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn append(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    fn mount(dir: &Path, attr_timeout: u32) -> Nodes {
        Nodes::mount(dir, 2, attr_timeout).unwrap_or_else(|error| {
            panic!("the two-node ground needs bindfs and FUSE on this machine: {error}")
        })
    }

    #[test]
    fn flocks_conflict_within_a_node_but_not_across_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = mount(dir.path(), 30);
        let [a, b] = [&nodes.mounts()[0], &nodes.mounts()[1]];
        assert_eq!(fstype_at(a).unwrap().as_deref(), Some("fuse"));
        assert_eq!(fstype_at(b).unwrap().as_deref(), Some("fuse"));
        std::fs::write(nodes.share().join("lock"), b"").unwrap();

        let on_a = std::fs::File::open(a.join("lock")).unwrap();
        on_a.try_lock().unwrap();
        let on_b = std::fs::File::open(b.join("lock")).unwrap();
        assert!(
            on_b.try_lock().is_ok(),
            "a flock through node-b must not see node-a's"
        );
        let again_on_a = std::fs::File::open(a.join("lock")).unwrap();
        assert!(
            matches!(
                again_on_a.try_lock(),
                Err(std::fs::TryLockError::WouldBlock)
            ),
            "two flocks through node-a must conflict"
        );
        let again_on_b = std::fs::File::open(b.join("lock")).unwrap();
        assert!(matches!(
            again_on_b.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
    }

    #[test]
    fn an_append_through_one_node_keeps_its_old_size_through_the_other_until_attributes_expire() {
        for (attr_timeout, size_on_b) in [(30, 5), (0, 11)] {
            let dir = tempfile::tempdir().unwrap();
            let nodes = mount(dir.path(), attr_timeout);
            let [a, b] = [&nodes.mounts()[0], &nodes.mounts()[1]];
            std::fs::write(a.join("log"), b"hello").unwrap();
            assert_eq!(std::fs::metadata(b.join("log")).unwrap().len(), 5);
            append(&a.join("log"), b" world");
            assert_eq!(std::fs::metadata(a.join("log")).unwrap().len(), 11);
            assert_eq!(
                std::fs::metadata(b.join("log")).unwrap().len(),
                size_on_b,
                "size through node-b with attr_timeout={attr_timeout}"
            );
        }
    }

    #[test]
    fn mounts_an_interrupted_run_left_are_cleared_before_the_workdir_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let workdir = dir.path().join("drill");
        let nodes = mount(&workdir, 0);
        std::fs::write(nodes.share().join("kept"), b"x").unwrap();
        let mountpoints = nodes.mounts().to_vec();
        // An interrupted run never unmounts.
        std::mem::forget(nodes);
        assert_eq!(clear_stale_mounts(&workdir).unwrap(), 2);
        for mountpoint in &mountpoints {
            assert_eq!(fstype_at(mountpoint).unwrap(), None);
        }
        std::fs::remove_dir_all(&workdir).unwrap();
    }

    #[test]
    fn dropping_the_nodes_unmounts_them() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = mount(dir.path(), 0);
        let mountpoints = nodes.mounts().to_vec();
        drop(nodes);
        for mountpoint in &mountpoints {
            assert_eq!(fstype_at(mountpoint).unwrap(), None);
        }
    }

    #[test]
    fn replicas_are_placed_round_robin_and_the_ground_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = mount(dir.path(), 30);
        let stores = nodes.round_robin(Path::new("store"), 3);
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(
            stores,
            [
                root.join("node-a/store"),
                root.join("node-b/store"),
                root.join("node-a/store")
            ]
        );
        let two = Ground {
            nodes: 2,
            attr_timeout: 30,
        };
        assert_eq!(two.to_string(), "2 nodes (bindfs attr_timeout=30)");
        assert_eq!(Ground::single().to_string(), "1 node");
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/tmp/plain"), "/tmp/plain");
    }
}
