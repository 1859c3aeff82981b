//! The leader-only pipeline of one leadership term: take the store over for the term (a database
//! of this term's own, copied from the previous term's), resume (or start fresh), and run
//! source → capture → shipper → sink until told to stop; then flush and close the store.
//!
//! Owns the order of start-up and shutdown and the wiring between stages. It must never run a
//! stage before the store is taken over for this term, and never return before the store is
//! flushed and closed. The flush on stop is not fenced and needs not be: it writes only this
//! term's own directory, which a newer term copies with a verified read (`store::terms`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    blocking::{IoPool, Stuck},
    capture::Capture,
    config::{Config, SinkConfig},
    dead::{DeadHandle, DeadSlot},
    diagnostics,
    fence::Fence,
    ship::{Shipper, ShipperOptions},
    sink::{HealthError, Sink},
    source::{Source, Start},
    store::{self, EventStore, Guard, OpenOptions, SledStore, TermOwner},
    telemetry::error_chain,
    telemetry::{Metrics, PIPELINE_READY, SINK_READY, StatusBoard},
    transform::RecordOptions,
};

/// Decoded events in flight between the source and capture.
const SOURCE_CHANNEL_CAPACITY: usize = 256;

/// How often the sink's own `/status` section and readiness are refreshed.
const SINK_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Why a pipeline run ended early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be taken over.
    #[error("taking the store over failed")]
    Store(#[from] store::Error),
    /// The sink could not be set up.
    #[error("setting up the {sink} sink failed")]
    Sink {
        /// Which sink.
        sink: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stage failed.
    #[error("the {stage} stage failed")]
    Stage {
        /// `source`, `capture`, `shipper` or `maintenance`.
        stage: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stage task panicked.
    #[error("pipeline task failed")]
    Join(#[from] tokio::task::JoinError),
    /// A store call overran its deadline.
    #[error("a store call did not finish in time")]
    Stuck(#[from] Stuck),
}

/// What a failed run asks of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The store holds term `stored`, newer than (or indistinguishable from) this one, written
    /// through a Lease that was recreated or renamed: advance the epoch past it.
    BehindStore {
        /// The store's term.
        stored: i64,
    },
    /// A call on the store's volume hangs: this replica cannot lead.
    Stuck,
    /// A newer term took the store over while this one ran: another leader writes the store
    /// (two Leases lead it); this replica must not fight back.
    Superseded,
    /// Anything else: restart with back-off.
    Other,
}

impl Error {
    /// Classifies this error by its causes.
    #[must_use]
    pub fn failure(&self) -> Failure {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = current {
            match e.downcast_ref::<store::Error>() {
                Some(store::Error::StaleEpoch { stored, .. }) => {
                    return Failure::BehindStore { stored: *stored };
                }
                Some(store::Error::Superseded { .. }) => return Failure::Superseded,
                _ => {}
            }
            if e.downcast_ref::<Stuck>().is_some() {
                return Failure::Stuck;
            }
            current = e.source();
        }
        Failure::Other
    }
}

/// Everything a pipeline run needs.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// The configuration.
    pub config: Arc<Config>,
    /// Metrics.
    pub metrics: Metrics,
    /// Status board.
    pub board: Arc<StatusBoard>,
    /// Threads for store calls (they may hang with the volume).
    pub io: IoPool,
    /// Threads for file-sink writes.
    pub sink_io: IoPool,
    /// Where a running term publishes its dead tree for the admin server.
    pub dead: DeadSlot,
}

/// Runs the pipeline for the term of `fence` until `stop` is cancelled or a stage fails.
pub async fn run(context: Context, fence: Fence, stop: CancellationToken) -> Result<(), Error> {
    run_with_sink(context, fence, None, stop).await
}

/// [`run`] with a sink given by the caller instead of the configured one (tests, benchmarks).
pub async fn run_with_sink(
    context: Context,
    fence: Fence,
    sink: Option<Arc<dyn Sink>>,
    stop: CancellationToken,
) -> Result<(), Error> {
    let Context {
        client,
        config,
        metrics,
        board,
        io,
        sink_io,
        dead,
    } = context;
    board.set_not_ready(PIPELINE_READY, "leader is taking the store over");
    let guard: Arc<dyn Guard> = Arc::new(fence.clone());
    let lease = fence.leadership().map(|l| l.lease).unwrap_or_default();
    let owner = TermOwner {
        holder: config.leader.identity.clone(),
        lease_namespace: lease.namespace,
        lease_name: lease.name,
        lease_uid: lease.uid,
    };
    let store = open_store(&config, &metrics, &io, &owner, &guard, &stop).await?;
    let Some((store, generation)) = store else {
        board.set_ready(PIPELINE_READY);
        return Ok(());
    };
    let result = run_stages(
        &config, client, &metrics, &board, &store, generation, &io, &sink_io, &dead, fence, sink,
        &stop,
    )
    .await;
    // Flush and close before the lease may be released.
    let closing = Arc::clone(&store);
    match io.run("flush", move || closing.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(error = %error, "Flushing the store on stop failed"),
        Err(error) => tracing::error!(error = %error, "Flushing the store on stop did not finish"),
    }
    drop(store);
    board.set_ready(PIPELINE_READY);
    tracing::info!("Store closed");
    result
}

async fn open_store(
    config: &Config,
    metrics: &Metrics,
    io: &IoPool,
    owner: &TermOwner,
    guard: &Arc<dyn Guard>,
    stop: &CancellationToken,
) -> Result<Option<(Arc<SledStore>, u64)>, Error> {
    let options = OpenOptions {
        path: config.store.path.clone(),
        cache_capacity: config.store.cache_capacity,
        lock_timeout: config.store.lock_timeout,
    };
    let Some(handover) = take_over_until_stopped(options, io, owner, guard, stop).await? else {
        return Ok(None);
    };
    metrics
        .store_handover_seconds
        .observe(handover.copy_time.as_secs_f64());
    tracing::info!(
        epoch = guard.epoch(),
        dir = %handover.dir.display(),
        source = ?handover.source.as_ref().map(|p| p.display().to_string()),
        copied_bytes = handover.copied_bytes,
        copies = handover.attempts,
        copy_ms = u64::try_from(handover.copy_time.as_millis()).unwrap_or(u64::MAX),
        removed = handover.removed.len(),
        "Took the store over for this term"
    );
    if let Some((moved_to, reason)) = &handover.quarantined {
        metrics.store_quarantined.inc();
        tracing::error!(
            path = %config.store.path.display(),
            moved_to = %moved_to.display(),
            reason = %reason,
            "The store was unusable and has been moved aside; starting a fresh store with a full relist"
        );
    }
    handover
        .store
        .set_commit_stall(config.diagnostics.stall_store_commit);
    handover
        .store
        .set_max_dead_bytes(config.store.max_dead_bytes);
    Ok(Some((Arc::new(handover.store), handover.generation)))
}

/// Takes the store over in a blocking task; a stop ends the wait at once and tells the copy to
/// give up between files, so nothing holds a terminating process back for long (the runtime
/// waits for blocking tasks when it shuts down).
async fn take_over_until_stopped(
    options: OpenOptions,
    io: &IoPool,
    owner: &TermOwner,
    guard: &Arc<dyn Guard>,
    stop: &CancellationToken,
) -> Result<Option<store::Handover>, Error> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let taking = {
        let cancelled = Arc::clone(&cancelled);
        let guard = Arc::clone(guard);
        let owner = owner.clone();
        // A copy of a large store takes long, but moves: it is stuck only when a file or a
        // chunk takes longer than a store call's deadline.
        io.run_progressing("take_over", io.deadline(), move |progress| {
            store::take_over(&options, &owner, guard.as_ref(), &|| {
                progress.tick();
                cancelled.load(Ordering::Relaxed)
            })
        })
    };
    tokio::select! {
        biased;
        () = stop.cancelled() => {
            cancelled.store(true, Ordering::Relaxed);
            Ok(None)
        }
        taken = taking => Ok(Some(taken??)),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site, wiring the stages"
)]
async fn run_stages(
    config: &Config,
    client: kube::Client,
    metrics: &Metrics,
    board: &Arc<StatusBoard>,
    store: &Arc<SledStore>,
    generation: u64,
    io: &IoPool,
    sink_io: &IoPool,
    dead: &DeadSlot,
    fence: Fence,
    sink: Option<Arc<dyn Sink>>,
    stop: &CancellationToken,
) -> Result<(), Error> {
    // Every stage's side effects are fenced by this term.
    let guard: Arc<dyn Guard> = Arc::new(fence.clone());
    let meta = {
        let store = Arc::clone(store);
        io.run("meta", move || store.meta()).await??
    };
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let start = match (&meta.checkpoint, meta.checkpoint_time_ms) {
        (Some(rv), time) => {
            let age = time.map(|t| Duration::from_millis(u64::try_from(now_ms - t).unwrap_or(0)));
            if let Some(age) = age {
                metrics.checkpoint_age.set(age.as_secs_f64());
                if age > config.store.event_ttl {
                    metrics.capture_gaps.inc();
                    tracing::error!(
                        resource_version = %rv,
                        checkpoint_age = ?age,
                        event_ttl = ?config.store.event_ttl,
                        "The checkpoint is older than the event TTL: events that expired in between were never seen"
                    );
                }
            }
            tracing::info!(resource_version = %rv, epoch = fence.epoch(), "Resuming from the stored checkpoint");
            Start::Resume(rv.clone())
        }
        (None, _) => {
            tracing::info!(
                epoch = fence.epoch(),
                "No checkpoint in the store; starting with the initial list"
            );
            Start::Fresh
        }
    };
    let sink = match sink {
        Some(sink) => sink,
        None => crate::sink::build(config, metrics, sink_io).map_err(|e| Error::Sink {
            sink: e.sink(),
            source: Box::new(e),
        })?,
    };
    let healthcheck = match &config.sink {
        SinkConfig::Adx(adx) => adx.healthcheck,
        SinkConfig::Stdout | SinkConfig::File { .. } => crate::config::HealthcheckConfig::default(),
    };
    let stages = stop.child_token();
    let shipper_wake = Arc::new(Notify::new());
    // A short channel: the source waits (and stops reading the watch) while capture commits, so
    // memory holds a few hundred decoded events at most, whatever the event rate.
    let (tx, rx) = mpsc::channel(SOURCE_CHANNEL_CAPACITY);

    let (listed, mut listed_rx) = watch::channel(false);
    let source = Source::new(client, config.source.clone(), metrics.clone(), tx, listed);
    let capture = Capture {
        store: Arc::clone(store) as Arc<dyn EventStore>,
        io: io.clone(),
        guard: Arc::clone(&guard),
        record: record_options(config),
        max_commit_events: config.store.max_commit_events,
        commit_window: crate::capture::COMMIT_WINDOW,
        max_outbox_bytes: config.store.max_outbox_bytes,
        metrics: metrics.clone(),
        shipper_wake: Arc::clone(&shipper_wake),
    };
    let sink_watch = SinkWatch {
        sink: Arc::clone(&sink),
        board: Arc::clone(board),
        retry: healthcheck.enabled.then_some(healthcheck.retry_interval),
    };
    let shipper = Shipper {
        store: Arc::clone(store) as Arc<dyn EventStore>,
        io: io.clone(),
        sink,
        guard: Arc::clone(&guard),
        options: ShipperOptions {
            max_events: config.shipper.max_batch_events,
            max_bytes: config.shipper.max_batch_bytes,
            max_age: config.shipper.max_batch_age,
            retry_initial: config.shipper.retry_initial,
            retry_max: config.shipper.retry_max,
            max_awaiting: config.shipper.max_awaiting_batches,
        },
        metrics: metrics.clone(),
        board: Arc::clone(board),
        wake: shipper_wake,
    };
    // The admin server lists and replays dead batches through this term until its stages end
    // (the publication is withdrawn when this function returns, before the store closes).
    let _dead = dead.publish(DeadHandle::new(
        Arc::clone(store) as Arc<dyn EventStore>,
        Arc::clone(&guard),
        io.clone(),
        Arc::clone(&shipper.wake),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    {
        let stop = stages.clone();
        tasks.spawn(async move { ("source", source.run(start, stop).await.map_err(boxed)) });
    }
    {
        let stop = stages.clone();
        tasks.spawn(async move { ("capture", capture.run(rx, stop).await.map_err(boxed)) });
    }
    {
        let stop = stages.clone();
        tasks.spawn(async move { ("shipper", shipper.run(stop).await.map_err(boxed)) });
    }
    {
        let stop = stages.clone();
        let store = Arc::clone(store) as Arc<dyn EventStore>;
        let guard = Arc::clone(&guard);
        let metrics = metrics.clone();
        let retention = config.store.seen_retention;
        let io = io.clone();
        tasks.spawn(async move {
            (
                "maintenance",
                maintain(store, &io, guard, metrics, retention, stop)
                    .await
                    .map_err(boxed),
            )
        });
    }
    {
        // The source reports its first list or resume; readiness is written here, not there.
        let stop = stages.clone();
        let board = Arc::clone(board);
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    changed = listed_rx.changed() => {
                        if changed.is_err() {
                            // The source ended: the stage that failed reports why.
                            stop.cancelled().await;
                            break;
                        }
                        if *listed_rx.borrow_and_update() {
                            board.set_ready(PIPELINE_READY);
                        }
                    }
                }
            }
            ("readiness", Ok(()))
        });
    }
    {
        // Reports only: it never ends before the stop (a failing check is not a stage failure,
        // and must never stop capture or cost the leadership).
        let stop = stages.clone();
        tasks.spawn(async move {
            sink_watch.run(stop).await;
            ("sink watch", Ok(()))
        });
    }
    {
        let stop = stages.clone();
        let io = io.clone();
        let root = config.store.path.clone();
        tasks.spawn(async move { ("term watch", watch_term(root, generation, io, stop).await) });
    }
    if let Some(path) = config.diagnostics.fence_log.clone() {
        let stop = stages.clone();
        let interval = config.diagnostics.fence_log_interval;
        let identity = config.leader.identity.clone();
        tasks.spawn(async move {
            let result =
                diagnostics::fence_log(path, interval, identity, fence, stop.clone()).await;
            // The fence log stops on a stale fence; keep the slot until the pipeline stops.
            stop.cancelled().await;
            ("fence_log", result.map_err(boxed))
        });
    }

    let mut first_error: Option<Error> = None;
    while let Some(joined) = tasks.join_next().await {
        let (stage, result) = joined?;
        if let Err(source) = result
            && first_error.is_none()
        {
            if !stages.is_cancelled() || !is_fence_error(source.as_ref()) {
                tracing::error!(stage, error = %error_chain(source.as_ref()), "Pipeline stage failed; stopping the pipeline");
            }
            first_error = Some(Error::Stage { stage, source });
        }
        // Any stage ending stops the others.
        stages.cancel();
    }
    match first_error {
        Some(error) if !stop.is_cancelled() => Err(error),
        _ => Ok(()),
    }
}

/// The transform options for `config`.
#[must_use]
pub fn record_options(config: &Config) -> RecordOptions {
    RecordOptions {
        shape: config.record.shape,
        include_uid: config.record.include_uid,
        include_resource_version: config.record.include_resource_version,
        cluster: config.cluster.name.clone(),
        region: config.cluster.region.clone(),
        environment: config.cluster.environment.clone(),
    }
}

/// Runs the sink's health check when the term starts and again every `retry` while it fails,
/// and keeps the sink's `/status` section and the [`SINK_READY`] current. A failure is
/// logged once per distinct failure, shown under `sink` in `/status` and as a readiness reason;
/// shipping goes on meanwhile (the check may be wrong, and a send that works proves more).
struct SinkWatch {
    sink: Arc<dyn Sink>,
    board: Arc<StatusBoard>,
    /// `None`: the check is off.
    retry: Option<Duration>,
}

impl SinkWatch {
    async fn run(self, stop: CancellationToken) {
        let name = self.sink.name();
        let mut next_check = self.retry.map(|_| tokio::time::Instant::now());
        let mut failure: Option<HealthError> = None;
        let mut warned = std::collections::HashSet::new();
        loop {
            if next_check.is_some_and(|at| at <= tokio::time::Instant::now()) {
                let result = tokio::select! {
                    () = stop.cancelled() => break,
                    result = self.sink.healthcheck() => result,
                };
                match result {
                    Ok(health) => {
                        if failure.take().is_some() {
                            tracing::info!(sink = name, "The sink health check passes now");
                            self.board.publish(
                                "sink",
                                serde_json::json!({"sink": name, "healthy": true}),
                            );
                        } else {
                            tracing::info!(sink = name, "The sink health check passed");
                        }
                        for warning in health.warnings {
                            if warned.insert(warning.clone()) {
                                tracing::warn!(sink = name, warning = %warning, "Sink health check warning");
                            }
                        }
                        next_check = None;
                    }
                    Err(error) => {
                        let retry = self.retry.unwrap_or(Duration::from_secs(30));
                        if failure.as_ref() == Some(&error) {
                            tracing::debug!(sink = name, check = error.check, error = %error.message, "The sink health check still fails");
                        } else {
                            tracing::error!(
                                sink = name,
                                check = error.check,
                                error = %error.message,
                                retry_in = ?retry,
                                "The sink health check failed; batches are still captured and shipping is attempted, and the check runs again until it passes"
                            );
                        }
                        self.board.publish(
                            "sink",
                            serde_json::json!({
                                "sink": name,
                                "healthy": false,
                                "check": error.check,
                                "error": error.message,
                            }),
                        );
                        failure = Some(error);
                        next_check = Some(tokio::time::Instant::now() + retry);
                    }
                }
            }
            let report = self.sink.report();
            let problem = report.as_ref().and_then(|r| r.problem.clone());
            if let Some(report) = report {
                self.board.publish(name, report.section);
            }
            match (&failure, problem) {
                (Some(error), _) => self.board.set_not_ready(
                    SINK_READY,
                    format!(
                        "{name} sink health check failed ({}): {}",
                        error.check, error.message
                    ),
                ),
                (None, Some(problem)) => self
                    .board
                    .set_not_ready(SINK_READY, format!("{name} sink: {problem}")),
                (None, None) => self.board.set_ready(SINK_READY),
            }
            let wake = tokio::time::Instant::now() + SINK_REPORT_INTERVAL;
            let wake = next_check.map_or(wake, |at| at.min(wake));
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        self.board.set_ready(SINK_READY);
    }
}

/// How often a running term checks that no newer term took the store over.
const TERM_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Ends with [`store::Error::Superseded`] when a newer term began in the store while this one
/// runs: a leader on another Lease (renamed during a rolling update, or a second installation on
/// the same store). Stepping down ends the double leadership within one check.
async fn watch_term(
    root: std::path::PathBuf,
    generation: u64,
    io: IoPool,
    stop: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut ticker = tokio::time::interval(TERM_CHECK_INTERVAL);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let root = root.clone();
        match io
            .run("newer_term", move || {
                store::terms::newer_term(&root, generation)
            })
            .await
        {
            Ok(Ok(Some(path))) => return Err(Box::new(store::Error::Superseded { path })),
            Ok(Ok(None)) => {}
            // A listing that fails here fails capture too; that stage reports it.
            Ok(Err(error)) => tracing::debug!(error = %error, "Listing the store's terms failed"),
            Err(stuck) => return Err(Box::new(stuck)),
        }
    }
}

/// Why maintenance stopped.
#[derive(Debug, thiserror::Error)]
enum MaintenanceError {
    #[error("pruning the dedupe set failed")]
    Store(#[source] store::Error),
    #[error("pruning the dedupe set did not finish")]
    Stuck(#[source] Stuck),
}

/// Prunes the dedupe set and refreshes store gauges, once a minute.
async fn maintain(
    store: Arc<dyn EventStore>,
    io: &IoPool,
    guard: Arc<dyn Guard>,
    metrics: Metrics,
    retention: Duration,
    stop: CancellationToken,
) -> Result<(), MaintenanceError> {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let store = Arc::clone(&store);
        let guard = Arc::clone(&guard);
        let cutoff = jiff::Timestamp::now().as_millisecond()
            - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let (pruned, seen, meta) = io
            .run("prune_seen", move || {
                let pruned = store.prune_seen(cutoff, guard.as_ref())?;
                Ok::<_, store::Error>((pruned, store.seen_len(), store.meta()?))
            })
            .await
            .map_err(MaintenanceError::Stuck)?
            .map_err(MaintenanceError::Store)?;
        metrics.seen_pruned.inc_by(pruned);
        metrics
            .seen_entries
            .set(i64::try_from(seen).unwrap_or(i64::MAX));
        if let Some(time) = meta.checkpoint_time_ms {
            let age = (jiff::Timestamp::now().as_millisecond() - time).max(0);
            #[expect(
                clippy::cast_precision_loss,
                reason = "an age in ms fits f64 exactly enough"
            )]
            metrics.checkpoint_age.set(age as f64 / 1000.0);
        }
    }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    error: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(error)
}

fn is_fence_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(store_error) = e.downcast_ref::<store::Error>()
            && matches!(
                store_error,
                store::Error::Fenced | store::Error::StaleEpoch { .. }
            )
        {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Current;

    impl Guard for Current {
        fn is_current(&self) -> bool {
            true
        }
        fn epoch(&self) -> i64 {
            2
        }
    }

    /// Fails the health check `failures` times, then passes.
    struct FlakySink {
        failures: std::sync::atomic::AtomicUsize,
        checks: std::sync::atomic::AtomicUsize,
    }

    impl Sink for FlakySink {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn send<'a>(&'a self, _: &'a crate::sink::OutgoingBatch) -> crate::sink::SendFuture<'a> {
            Box::pin(async { Ok(crate::sink::Receipt::Delivered) })
        }
        fn healthcheck(&self) -> crate::sink::HealthFuture<'_> {
            Box::pin(async {
                self.checks.fetch_add(1, Ordering::SeqCst);
                let left = self.failures.load(Ordering::SeqCst);
                if left == 0 {
                    return Ok(crate::sink::Health::default());
                }
                self.failures.store(left - 1, Ordering::SeqCst);
                Err(HealthError {
                    check: "mapping",
                    message: "table T has no json ingestion mapping M in database D".to_owned(),
                })
            })
        }
    }

    async fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_failing_sink_health_check_is_reported_retried_and_cleared_without_ending() {
        let sink = Arc::new(FlakySink {
            failures: 2.into(),
            checks: 0.into(),
        });
        let board = Arc::new(StatusBoard::new());
        let stop = CancellationToken::new();
        let watch = SinkWatch {
            sink: Arc::clone(&sink) as Arc<dyn Sink>,
            board: Arc::clone(&board),
            retry: Some(Duration::from_millis(200)),
        };
        let task = tokio::spawn(watch.run(stop.clone()));
        wait_for("the first failure", || !board.is_ready(SINK_READY)).await;
        let snapshot = board.snapshot();
        assert_eq!(snapshot["sink"]["healthy"], false, "{snapshot}");
        assert_eq!(snapshot["sink"]["check"], "mapping", "{snapshot}");
        let reasons = board.readiness().unwrap_err();
        assert!(
            reasons[0].starts_with("sink: flaky sink health check failed (mapping): table T"),
            "{reasons:?}"
        );
        // Retried until it passes, then reported healthy and ready again.
        wait_for("the check to pass", || board.is_ready(SINK_READY)).await;
        assert_eq!(sink.checks.load(Ordering::SeqCst), 3);
        assert_eq!(board.snapshot()["sink"]["healthy"], true);
        assert!(!task.is_finished(), "the watch runs until the term stops");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_end_of_a_term_clears_the_sink_readiness_condition() {
        let sink = Arc::new(FlakySink {
            failures: usize::MAX.into(),
            checks: 0.into(),
        });
        let board = Arc::new(StatusBoard::new());
        let stop = CancellationToken::new();
        let watch = SinkWatch {
            sink: sink as Arc<dyn Sink>,
            board: Arc::clone(&board),
            retry: Some(Duration::from_secs(30)),
        };
        let task = tokio::spawn(watch.run(stop.clone()));
        wait_for("the failure", || !board.is_ready(SINK_READY)).await;
        stop.cancel();
        task.await.unwrap();
        assert!(board.is_ready(SINK_READY), "a follower is ready");
    }

    #[test]
    fn a_stopped_take_over_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let options = OpenOptions {
            path: dir.path().join("store"),
            cache_capacity: 1 << 20,
            lock_timeout: Duration::from_secs(10),
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let stop = CancellationToken::new();
        stop.cancel();
        let guard: Arc<dyn Guard> = Arc::new(Current);
        let io = IoPool::new("store", 1, Duration::from_secs(10)).unwrap();
        let taken = runtime.block_on(take_over_until_stopped(
            options,
            &io,
            &"a".into(),
            &guard,
            &stop,
        ));
        assert!(matches!(taken, Ok(None)), "{taken:?}");
    }
}
