//! The lab: orchestration of real `kevents` processes against the emulators, for the demo, the
//! drills and the benchmarks, plus the oracle that checks delivery against the API server's ground
//! truth.
//!
//! Owns process management (spawn, signal, restart), the per-replica config it writes, and the
//! comparison of delivered rows with stored event versions. It is never used by the `kevents`
//! binary itself.

pub mod adx;
pub mod bench;
pub mod demo;
pub mod drill;
pub mod oracle;
pub mod replica;
