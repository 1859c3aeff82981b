//! What `/livez` decides from: is this process wedged?
//!
//! Wedged means it cannot heal by itself: the elector loop stopped turning (so the lease is
//! neither renewed nor released), or a call on a volume has hung past its deadline (a thread
//! that cannot be taken back). A dependency that is merely down (the API server, ADX) is not a
//! liveness failure: restarting the process would not bring it back.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::blocking::IoPool;

/// Liveness signals of one process.
#[derive(Debug)]
pub struct Liveness {
    started: Instant,
    elector_beat_ms: AtomicU64,
    elector_stale_after: Duration,
    pools: Mutex<Vec<IoPool>>,
}

impl Liveness {
    /// The elector loop counts as stopped when it has not turned for `elector_stale_after`.
    #[must_use]
    pub fn new(elector_stale_after: Duration) -> Self {
        Self {
            started: Instant::now(),
            elector_beat_ms: AtomicU64::new(0),
            elector_stale_after,
            pools: Mutex::new(Vec::new()),
        }
    }

    /// Called by the elector on every turn of its loop.
    pub fn elector_beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.elector_beat_ms.store(ms, Ordering::Relaxed);
    }

    /// Watches the calls of `pool`.
    pub fn watch_pool(&self, pool: IoPool) {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(pool);
    }

    /// `Ok` while live, otherwise why not.
    ///
    /// # Errors
    /// The reasons this process is wedged.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        let beat = Duration::from_millis(self.elector_beat_ms.load(Ordering::Relaxed));
        let since_beat = self.started.elapsed().saturating_sub(beat);
        if since_beat > self.elector_stale_after {
            reasons.push(format!(
                "the leader election loop has not run for {}s",
                since_beat.as_secs()
            ));
        }
        for pool in self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for overrun in pool.stuck() {
                reasons.push(format!(
                    "{} I/O `{}` has been stuck for {}s (deadline {}s): the volume hangs",
                    overrun.pool,
                    overrun.op,
                    overrun.running_for.as_secs(),
                    pool.deadline().as_secs()
                ));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stopped_elector_and_a_hung_call_fail_liveness() {
        let live = Liveness::new(Duration::from_millis(500));
        live.elector_beat();
        assert!(live.check().is_ok());
        tokio::time::sleep(Duration::from_millis(800)).await;
        let reasons = live.check().unwrap_err();
        assert!(reasons[0].contains("leader election loop"), "{reasons:?}");
        live.elector_beat();
        assert!(live.check().is_ok());

        let pool = IoPool::new("store", 1, Duration::from_millis(20)).unwrap();
        live.watch_pool(pool.clone());
        let (release, hold) = std::sync::mpsc::channel::<()>();
        assert!(pool.run("capture", move || hold.recv().ok()).await.is_err());
        live.elector_beat();
        let reasons = live.check().unwrap_err();
        assert!(
            reasons.iter().any(|r| r.contains("`capture`")),
            "{reasons:?}"
        );
        release.send(()).unwrap();
        // The call returns once released; allow a loaded machine some time for that.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            live.elector_beat();
            if live.check().is_ok() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{:?}", live.check());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
