//! Blocking I/O on threads of its own, with deadlines.
//!
//! The store and the file sink live on network shares, and a share can hang (a node's mount stops
//! answering): a thread in a read or write on it then never returns. Such work runs here, on a
//! small pool of threads per kind of I/O, never on the runtime's blocking threads (which read
//! token files and resolve names) and never on the threads that renew the lease. Every call has a
//! deadline: the caller gets [`Stuck`] when it passes, and [`IoPool::stuck`] tells `/livez` and
//! the supervisor that a thread of the pool is still inside a call that overran. A hung thread
//! cannot be taken back; the process is restarted by its liveness probe instead.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender},
    },
    time::{Duration, Instant},
};

/// A call that did not return within its deadline (it may still be running).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{pool} I/O `{op}` did not finish within {after:?} (is the volume hanging?)")]
pub struct Stuck {
    /// The pool (`store`, `file-sink`).
    pub pool: &'static str,
    /// The operation.
    pub op: &'static str,
    /// The deadline it overran.
    pub after: Duration,
}

/// A call that overran its deadline and has not returned yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overrun {
    /// The pool.
    pub pool: &'static str,
    /// The operation.
    pub op: &'static str,
    /// How long it has been running.
    pub running_for: Duration,
}

type Job = Box<dyn FnOnce() + Send>;

/// Progress of a long call: each [`Progress::tick`] restarts its deadline, so a call that keeps
/// moving (a copy, file by file) is never taken for a hung one, and one that stops is.
#[derive(Debug, Clone)]
pub struct Progress {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Progress {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The call moved on.
    pub fn tick(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the start or the last tick.
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// What one worker thread is doing.
#[derive(Debug, Clone)]
struct Busy {
    op: &'static str,
    progress: Progress,
    deadline: Duration,
}

/// A fixed set of threads running blocking calls with deadlines.
#[derive(Debug, Clone)]
pub struct IoPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    deadline: Duration,
    jobs: SyncSender<Job>,
    workers: Vec<Arc<Mutex<Option<Busy>>>>,
}

/// Jobs waiting for a thread; more are refused as stuck rather than queued without bound.
const QUEUE: usize = 1024;

impl IoPool {
    /// Starts `threads` threads named `kevents-<name>-<n>`; calls get `deadline` unless they ask
    /// for another.
    ///
    /// # Errors
    /// Fails if a thread cannot be spawned.
    pub fn new(name: &'static str, threads: usize, deadline: Duration) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let workers = (0..threads.max(1))
            .map(|index| -> std::io::Result<_> {
                let busy = Arc::new(Mutex::new(None));
                let queue: Arc<Mutex<Receiver<Job>>> = Arc::clone(&queue);
                std::thread::Builder::new()
                    .name(format!("kevents-{name}-{index}"))
                    .spawn(move || {
                        loop {
                            // Hold the queue's lock only while taking a job, never while running it.
                            let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                            match job {
                                Ok(job) => job(),
                                Err(_) => return,
                            }
                        }
                    })?;
                Ok(busy)
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                deadline,
                jobs,
                workers,
            }),
        })
    }

    /// The default deadline of a call.
    #[must_use]
    pub fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    /// Runs `f` on a thread of the pool with the default deadline.
    ///
    /// # Errors
    /// [`Stuck`] when the deadline passes first (`f` may still complete later).
    pub async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stuck> {
        self.run_within(op, self.inner.deadline, f).await
    }

    /// Runs `f` on a thread of the pool; gives up waiting after `deadline`.
    ///
    /// # Errors
    /// [`Stuck`] when the deadline passes first, or the call panicked.
    pub async fn run_within<T: Send + 'static>(
        &self,
        op: &'static str,
        deadline: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stuck> {
        self.run_progressing(op, deadline, move |_| f()).await
    }

    /// Runs `f` on a thread of the pool; gives up waiting once `deadline` passed without a
    /// [`Progress::tick`] from `f`.
    ///
    /// # Errors
    /// [`Stuck`] when the deadline passes without progress, or the call panicked.
    pub async fn run_progressing<T: Send + 'static>(
        &self,
        op: &'static str,
        deadline: Duration,
        f: impl FnOnce(&Progress) -> T + Send + 'static,
    ) -> Result<T, Stuck> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let workers: Vec<_> = self.inner.workers.iter().map(Arc::clone).collect();
        let progress = Progress::new();
        let watched = progress.clone();
        let job: Job = Box::new(move || {
            // Queued time counts against the deadline, running time restarts it.
            progress.tick();
            let slot = claim(&workers, op, deadline, &progress);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&progress)));
            if let Some(slot) = slot {
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = None;
            }
            if let Ok(value) = result {
                let _ = tx.send(value);
            }
        });
        let stuck = Stuck {
            pool: self.inner.name,
            op,
            after: deadline,
        };
        if self.inner.jobs.try_send(job).is_err() {
            return Err(stuck);
        }
        loop {
            let left = deadline.saturating_sub(watched.idle());
            if left.is_zero() {
                return Err(stuck);
            }
            match tokio::time::timeout(left, &mut rx).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(_)) => return Err(stuck),
                Err(_) => {}
            }
        }
    }

    /// The calls still running past their deadline (since their last progress).
    #[must_use]
    pub fn stuck(&self) -> Vec<Overrun> {
        self.inner
            .workers
            .iter()
            .filter_map(|slot| slot.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .filter(|busy| busy.progress.idle() > busy.deadline)
            .map(|busy| Overrun {
                pool: self.inner.name,
                op: busy.op,
                running_for: busy.progress.idle(),
            })
            .collect()
    }
}

/// Marks a free worker slot busy with `op` (the thread running this is one of the pool's, and
/// some slot is free because this thread is not in a call).
fn claim(
    workers: &[Arc<Mutex<Option<Busy>>>],
    op: &'static str,
    deadline: Duration,
    progress: &Progress,
) -> Option<Arc<Mutex<Option<Busy>>>> {
    for slot in workers {
        let mut busy = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if busy.is_none() {
            *busy = Some(Busy {
                op,
                progress: progress.clone(),
                deadline,
            });
            return Some(Arc::clone(slot));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_returns_its_value_and_a_hung_call_is_reported_stuck() {
        let pool = IoPool::new("test", 2, Duration::from_millis(100)).unwrap();
        assert_eq!(pool.run("add", || 1 + 1).await.unwrap(), 2);
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hung = pool.run("hang", move || hold.recv().ok()).await;
        let error = hung.unwrap_err();
        assert_eq!(error.op, "hang");
        assert!(error.to_string().contains("hang"), "{error}");
        let stuck = pool.stuck();
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert_eq!(stuck[0].op, "hang");
        // The other thread still serves calls.
        assert_eq!(pool.run("add", || 2 + 2).await.unwrap(), 4);
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pool.stuck().is_empty() {
            assert!(
                Instant::now() < deadline,
                "a call that returned is still stuck"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn calls_queued_behind_hung_threads_time_out_and_a_panic_is_an_error() {
        let pool = IoPool::new("test", 1, Duration::from_millis(50)).unwrap();
        // A call that keeps ticking outlives its deadline.
        let long = pool
            .run_progressing("copy", Duration::from_millis(300), |progress| {
                for _ in 0..8 {
                    std::thread::sleep(Duration::from_millis(60));
                    progress.tick();
                }
                "copied"
            })
            .await;
        assert_eq!(long.unwrap(), "copied");
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let _ = pool.run("hang", move || hold.recv().ok()).await;
        assert!(pool.run("queued", || ()).await.is_err());
        release.send(()).unwrap();
        let panicked = pool
            .run_within("panic", Duration::from_secs(5), || -> () { panic!("boom") })
            .await;
        assert!(panicked.is_err());
        assert_eq!(pool.run("after", || 7).await.unwrap(), 7);
    }
}
