//! kevents: a highly available Kubernetes events collector.
//!
//! Several replicas compete for a `coordination.k8s.io/v1` Lease; only the leader lists and
//! watches Events, captures each event version exactly once into a durable store on a shared
//! volume, and ships it to a sink (Azure Data Explorer, a file, stdout). See `DESIGN.md`.
//!
//! The library is the product only; the modules in data-flow order are mapped in
//! `docs/architecture.md`. The emulators and the oracle it is checked against live in the
//! `kevents-testkit` crate, the drills and benchmarks in `kevents-lab`; neither is a dependency.

pub mod admin;
pub mod app;
pub mod blocking;
pub mod capture;
pub mod config;
pub mod dead;
pub mod diagnostics;
pub mod fence;
pub mod leader;
pub mod pipeline;
pub mod ship;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod transform;
