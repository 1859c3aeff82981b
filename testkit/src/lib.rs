//! kevents-testkit: what kevents is checked against.
//!
//! - `kube`: the Kubernetes API emulator (Events, Leases, watch, faults, the event generator) and
//!   `apiserver`: a real kube-apiserver on etcd, with `backend` to run one test against either.
//! - `adx`: the Azure Data Explorer emulator on Azurite (engine, data management, queued
//!   ingestion with its delay, status rows, refusals).
//! - `oracle`: compares delivered rows with every event version the API server stored.
//! - `harness`, `replica`, `writer`, `nodes`: drive real `kevents` processes from outside — their
//!   config text, signals, admin HTTP, the Lease — on one directory or one share seen through
//!   several FUSE "nodes"; write events through the API.
//!
//! It must never depend on the `kevents` crate: an emulator or an oracle that shares code with
//! what it checks cannot catch that code's bugs. Integration tests and the lab link it; the
//! product never does.

use std::path::{Path, PathBuf};

pub mod adx;
pub mod apiserver;
pub mod backend;
pub mod harness;
pub mod kube;
pub mod nodes;
pub mod oracle;
pub mod replica;
pub mod writer;

/// The repository's root (the workspace, one above this crate): where `scripts/`, `.tools/` and
/// `.cache/` are.
#[must_use]
pub fn repo_root() -> PathBuf {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.parent().unwrap_or(kit).to_path_buf()
}
