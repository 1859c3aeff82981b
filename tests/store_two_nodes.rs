//! The store hand-over on the two-node ground: one directory seen through two FUSE mounts with
//! a 30 s attribute cache, like two AKS nodes on one Azure Files share mounted `actimeo=30`.
//! A new leader on node B takes over while the old leader on node A still has its store open,
//! and node B cached the old sizes of the old leader's files before they grew.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use kevents::store::{CaptureItem, EventStore as _, Guard, OpenOptions, take_over};
use kevents_testkit::nodes::Nodes;

struct Term {
    epoch: i64,
    current: AtomicBool,
}

impl Term {
    fn new(epoch: i64) -> Self {
        Self {
            epoch,
            current: AtomicBool::new(true),
        }
    }
}

impl Guard for Term {
    fn is_current(&self) -> bool {
        self.current.load(Ordering::SeqCst)
    }
    fn epoch(&self) -> i64 {
        self.epoch
    }
}

fn options(node: &Path) -> OpenOptions {
    OpenOptions {
        path: node.join("store"),
        cache_capacity: 8 << 20,
        lock_timeout: Duration::from_secs(1),
    }
}

fn items(from: usize, count: usize) -> Vec<CaptureItem> {
    (from..from + count)
        .map(|n| CaptureItem {
            uid: format!("uid-{n}"),
            resource_version: (n + 1).to_string(),
            record: format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(900)).into_bytes(),
            listed: None,
        })
        .collect()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Total size of the files under `dir` as this node's attribute cache has them.
fn cached_size(dir: &Path) -> u64 {
    files(dir)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

#[test]
fn a_leader_on_another_node_takes_over_everything_despite_cached_sizes() {
    let work = tempfile::tempdir().unwrap();
    let mut nodes = Nodes::mount(work.path(), 2, 30).expect("the two-node ground (make tools)");
    let (a, b) = (nodes.mounts()[0].clone(), nodes.mounts()[1].clone());

    let old_term = Term::new(1);
    let old = take_over(&options(&a), &"a".into(), &old_term, &|| false).unwrap();
    old.store
        .capture(&items(0, 10), Some("10"), 0, &old_term)
        .unwrap();
    let old_dir_name = old.dir.file_name().unwrap().to_owned();
    let old_dir_on_b = b.join("store/terms").join(&old_dir_name);
    // Node B looks at the old term's files now: its cache keeps these sizes for 30 s.
    let before = cached_size(&old_dir_on_b);
    old.store
        .capture(&items(10, 3000), Some("3010"), 0, &old_term)
        .unwrap();
    old.store.flush().unwrap();
    let grown = cached_size(&old.dir);
    assert!(
        cached_size(&old_dir_on_b) < grown,
        "the premise: node B still sees the old sizes ({before} bytes, node A {grown})"
    );

    // The old leader's lease is gone (it is paused, its store still open); node B takes over.
    old_term.current.store(false, Ordering::SeqCst);
    let new_term = Term::new(2);
    let new = take_over(&options(&b), &"b".into(), &new_term, &|| false).unwrap();
    assert_eq!(
        new.source.as_deref().and_then(Path::file_name),
        Some(old_dir_name.as_os_str())
    );
    let meta = new.store.meta().unwrap();
    assert_eq!(
        (
            meta.checkpoint.as_deref(),
            meta.outbox_events,
            meta.next_seq
        ),
        (Some("3010"), 3010, 3010),
        "node B took over every capture of the old term"
    );
    drop(new);
    drop(old);
    nodes.unmount().unwrap();
}
