//! Shared by the Kubernetes tests: `dual!`, which runs one test body against the emulator and a
//! real kube-apiserver, and the pieces of a lease race (start everyone at once, check that no two
//! terms overlap).
//!
//! Test-only; holds no state between tests.

#![allow(
    dead_code,
    unused_macros,
    reason = "test code; each test binary uses a subset"
)]

use std::{sync::Arc, time::Instant};

use futures::future::join_all;
use kevents::leader::{Attempt, Elector};
use tokio::sync::Barrier;

/// Runs `$body(backend)` as two tests, `$name::emulator` and `$name::real_apiserver`.
macro_rules! dual {
    ($name:ident, $body:ident, emulator: $emu:expr, real: $real:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn emulator() {
                $body(::kevents_testkit::backend::Backend::emulator($emu).await.unwrap()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real_apiserver() {
                $body(::kevents_testkit::backend::Backend::real($real).await.unwrap()).await;
            }
        }
    };
    ($name:ident, $body:ident) => {
        dual!(
            $name,
            $body,
            emulator: ::kevents_testkit::kube::KubeEmulatorConfig::default(),
            real: ::kevents_testkit::apiserver::RealApiServerOptions::default()
        );
    };
}

/// `[became_leader, end]` of one leadership term, on this process's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Term {
    pub start: Instant,
    pub end: Instant,
}

/// Fails if any two `terms` overlap.
pub fn assert_no_overlap(terms: &mut [Term]) {
    terms.sort_by_key(|t| t.start);
    for pair in terms.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "two leaders at once: {:?} overlaps {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// Lets every candidate try once to take the lease, all released at the same moment; each
/// outcome comes with when it arrived.
pub async fn race_once(candidates: &mut [Elector]) -> Vec<(Attempt, Instant)> {
    let barrier = Arc::new(Barrier::new(candidates.len()));
    join_all(candidates.iter_mut().map(|c| {
        let barrier = Arc::clone(&barrier);
        async move {
            barrier.wait().await;
            let outcome = c.try_acquire_once().await;
            (outcome, Instant::now())
        }
    }))
    .await
}

/// The indices of the candidates whose outcome is `Acquired`.
pub fn winners(outcomes: &[(Attempt, Instant)]) -> Vec<usize> {
    (0..outcomes.len())
        .filter(|i| outcomes[*i].0 == Attempt::Acquired)
        .collect()
}

/// Releases the lease `winner` took at `start`. The term ends at the release, or earlier if the
/// lease would have run out first.
pub async fn release(winner: &mut Elector, start: Instant) -> Term {
    let leadership = winner.subscribe().borrow().clone().unwrap();
    let released_at = Instant::now();
    assert!(winner.release().await);
    Term {
        start,
        end: leadership.valid_until.min(released_at),
    }
}
