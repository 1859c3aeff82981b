//! In-repo emulators used by tests, drills, benchmarks and the demo.
//!
//! They serve loopback HTTP with the wire contracts of the real services. The `kevents` product
//! code must never depend on anything in this module.

pub mod adx;
pub mod kube;
