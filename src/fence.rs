//! Leadership terms and the fence every side effect checks: [`Leadership`] (what the elector
//! publishes), [`Fence`] (one term, read from the published value) and [`Guard`] (what a store
//! write or a sink call is fenced by).
//!
//! Owns only these values and the check "this term is still current by the local monotonic
//! clock". It must never talk to the API server (the `leader` module wins and renews terms) or
//! depend on `kube`, so the store and the shipper can be fenced without knowing where terms
//! come from, and tested with plain values.

use std::time::Instant;

use tokio::sync::watch;

/// The leadership term this replica holds, as published to the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// `holderIdentity` (this replica).
    pub holder: String,
    /// `leaseTransitions` when the lease was acquired: it grows with every acquisition, and is
    /// advanced past the store's term when the Lease was recreated
    /// (`leader::ElectorHandle::advance_epoch`).
    pub epoch: i64,
    /// Start of the last successful renew plus the renew deadline (monotonic clock).
    pub valid_until: Instant,
    /// The Lease object this term was won on.
    pub lease: LeaseId,
}

/// Which Lease object a term was won on: a recreated Lease has the same name and another uid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseId {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its `metadata.uid`.
    pub uid: String,
}

/// The receiving side of the leadership channel: `None` while not leading.
pub type LeadershipWatch = watch::Receiver<Option<Leadership>>;

/// A fence for one leadership term: side effects check [`Fence::is_current`] right before acting.
#[derive(Debug, Clone)]
pub struct Fence {
    rx: LeadershipWatch,
    epoch: i64,
}

impl Fence {
    /// A fence for the term with `epoch`, read from `rx`.
    #[must_use]
    pub fn new(rx: LeadershipWatch, epoch: i64) -> Self {
        Self { rx, epoch }
    }

    /// The term's epoch.
    #[must_use]
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The leadership of this fence's term, if it is still the published one.
    #[must_use]
    pub fn leadership(&self) -> Option<Leadership> {
        self.rx.borrow().clone().filter(|l| l.epoch == self.epoch)
    }

    /// True only while this replica leads in the same term and its lease is still valid by the
    /// local monotonic clock.
    #[must_use]
    pub fn is_current(&self) -> bool {
        self.rx
            .borrow()
            .as_ref()
            .is_some_and(|l| l.epoch == self.epoch && Instant::now() < l.valid_until)
    }
}

/// What a store write is fenced by: the current leadership term.
pub trait Guard: Send + Sync {
    /// True only while the caller's leadership term is current.
    fn is_current(&self) -> bool;
    /// The caller's term.
    fn epoch(&self) -> i64;
}

impl Guard for Fence {
    fn is_current(&self) -> bool {
        Fence::is_current(self)
    }
    fn epoch(&self) -> i64 {
        Fence::epoch(self)
    }
}
