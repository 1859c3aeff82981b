//! kevents: a highly available Kubernetes events collector.
//!
//! Several replicas compete for a `coordination.k8s.io/v1` Lease; only the leader lists and
//! watches Events, captures each event version exactly once into a durable store on a shared
//! volume, and ships it to a sink (Azure Data Explorer, a file, stdout). See `DESIGN.md`.
//!
//! The library holds the product (`config`, `leader`, `admin`, `telemetry`, `shutdown`, `app`)
//! and the emulators that tests, drills, benchmarks and the demo use (`emulator`). The product
//! never depends on the emulators.

pub mod admin;
pub mod app;
pub mod blocking;
pub mod capture;
pub mod config;
pub mod dead;
pub mod diagnostics;
pub mod emulator;
pub mod lab;
pub mod leader;
pub mod pipeline;
pub mod ship;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod transform;
