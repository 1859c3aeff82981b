//! The lab: orchestration of real `kevents` processes against the emulators or a real
//! kube-apiserver, for the demo, the drills, the benchmarks and the dual-backend tests, plus the
//! event writer that records ground truth through the API and the oracle that checks delivery
//! against it.
//!
//! Owns process management (spawn, signal, restart), the per-replica config it writes, the test
//! ground the replicas run on (one directory, or one share seen through several FUSE "nodes"), and
//! the comparison of delivered rows with stored event versions. It is never used by the `kevents`
//! binary itself.

pub mod adx;
pub mod apiserver;
pub mod backend;
pub mod bench;
pub mod demo;
pub mod drill;
pub mod nodes;
pub mod oracle;
pub mod peers;
pub mod replica;
pub mod writer;
