//! Wires the process together: the admin server, the Kubernetes client, the leader elector, and
//! the leader-only pipeline, which runs under a child cancellation token from gaining the lease to
//! losing it; then the graceful shutdown: stop the pipeline, wait for it (bounded), release the
//! lease.
//!
//! Owns task lifetimes and the shutdown budget. It holds no pipeline logic of its own and never
//! writes anything that is not fenced by the current leadership.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use http::{HeaderName, HeaderValue};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, AdminState},
    blocking::{IoPool, Stuck},
    config::Config,
    dead::DeadSlot,
    leader::{self, Elector, ElectorHandle, Fence, LeadershipWatch},
    pipeline::{self, Failure},
    store,
    telemetry::{Liveness, Metrics, PIPELINE_READY, StatusBoard, error_chain},
};

/// Header carrying this replica's identity on every Kubernetes API request, so API server audit
/// logs (and the test emulator's per-client fault injection) can tell replicas apart.
pub const CLIENT_ID_HEADER: &str = "x-client-id";

/// Share of the grace period given to the pipeline to stop; the rest is for releasing the lease.
const PIPELINE_SHARE_OF_GRACE: f64 = 0.6;
/// Options given on the command line rather than in the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--kubeconfig`: overrides `kubernetes.kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
}

/// Runs kevents until `shutdown` is cancelled (SIGTERM/SIGINT).
///
/// # Errors
/// Fails if the admin listener cannot be bound, the Kubernetes client cannot be configured, or the
/// graceful shutdown overruns its grace period.
pub async fn run(
    config: Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("registering metrics")?;
    let board = Arc::new(StatusBoard::new());
    let client = kube_client(&config, options.kubeconfig.as_deref()).await?;
    let namespace = config
        .leader
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    tracing::info!(
        holder = %config.leader.identity,
        namespace = %namespace,
        lease = %config.leader.lease_name,
        "Kubernetes client configured"
    );

    let liveness = Arc::new(Liveness::new(elector_stale_after(&config)));
    let io = IoPool::new("store", STORE_IO_THREADS, config.store.io_timeout)
        .context("starting the store I/O threads")?;
    let sink_io = IoPool::new("file-sink", 1, config.store.io_timeout)
        .context("starting the file-sink I/O threads")?;
    liveness.watch_pool(io.clone());
    liveness.watch_pool(sink_io.clone());
    // A follower's probe of the store volume is meant to hang with it: its thread is not a sign
    // of a wedged process, so liveness does not watch it.
    let probe_io = IoPool::new("store-probe", 1, config.store.io_timeout)
        .context("starting the store probe thread")?;

    let listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "Admin server listening");
    let admin_stop = CancellationToken::new();
    let dead = DeadSlot::default();
    let admin_task = tokio::spawn(admin::serve(
        listener,
        AdminState {
            metrics: metrics.clone(),
            board: Arc::clone(&board),
            liveness: Arc::clone(&liveness),
            dead: dead.clone(),
        },
        admin_stop.clone(),
    ));

    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let elector = Elector::new(leases.clone(), config.leader.clone())
        .with_telemetry(metrics.clone(), Arc::clone(&board))
        .with_liveness(Arc::clone(&liveness));
    let leadership = elector.subscribe();
    let elector_handle = elector.handle();
    let lease_watch_stop = CancellationToken::new();
    let lease_watch = tokio::spawn(leader::watch_lease(
        leases,
        config.leader.lease_name.clone(),
        elector.waker(),
        config.leader.retry_period,
        lease_watch_stop.clone(),
    ));
    let elector_stop = CancellationToken::new();
    let elector_task = tokio::spawn(elector.run(elector_stop.clone()));

    let grace = config.shutdown_grace_period;
    let context = pipeline::Context {
        client: client.clone(),
        config: Arc::new(config.clone()),
        metrics: metrics.clone(),
        board: Arc::clone(&board),
        io,
        sink_io,
        dead,
    };
    Supervisor::new(
        &context,
        elector_handle,
        probe_io,
        grace.mul_f64(PIPELINE_SHARE_OF_GRACE),
    )
    .run(leadership, &shutdown)
    .await;

    // The pipeline has stopped: now the lease may go.
    let released = tokio::time::timeout(grace.mul_f64(1.0 - PIPELINE_SHARE_OF_GRACE), async {
        elector_stop.cancel();
        lease_watch_stop.cancel();
        let _ = lease_watch.await;
        match elector_task.await {
            Ok(mut elector) => elector.release().await,
            Err(_) => false,
        }
    })
    .await;
    if released.is_err() {
        tracing::warn!("Releasing the lease timed out; followers take over when it expires");
    }
    admin_stop.cancel();
    match tokio::time::timeout(Duration::from_secs(2), admin_task).await {
        Ok(Ok(Err(error))) => return Err(error).context("admin server failed"),
        Ok(Err(join)) => return Err(join).context("admin server task failed"),
        Ok(Ok(Ok(()))) | Err(_) => {}
    }
    tracing::info!("Shut down");
    Ok(())
}

/// Threads for store calls: capture, shipper and maintenance can each have one in flight.
const STORE_IO_THREADS: usize = 4;
/// First delay before a failed pipeline is started again; it doubles with every failure in a row.
const RESTART_INITIAL: Duration = Duration::from_secs(1);
/// Longest delay before a failed pipeline is started again.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// Failures in a row after which a leader steps down so another replica can lead.
const STEP_DOWN_AFTER_FAILURES: u32 = 5;
/// A run that stayed ready this long clears the failure count.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// After stepping down, stay follower for this many lease durations, doubling with each step-down
/// in a row (no pipeline of this replica reached ready in between) up to [`HOLD_OFF_MAX_LEASES`].
/// Short on purpose: a hold-off only has to let another replica win the next term; a long one
/// would leave nobody leading once every replica has stepped down in turn.
const HOLD_OFF_LEASES: u32 = 2;
const HOLD_OFF_MAX_LEASES: u32 = 4;
/// How often the supervisor looks at a running pipeline's progress.
const PROGRESS_TICK: Duration = Duration::from_secs(1);
/// How often a follower checks that the store's volume answers from its node.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A probe unanswered for `store.io_timeout` / this (at least 1 s) counts as not answering.
const PROBE_PATIENCE_DIVISOR: u32 = 5;

/// The elector loop counts as wedged when it has not turned for this long: every turn takes at
/// most a few API calls bounded by the retry period, plus a wait of at most a few retry periods.
fn elector_stale_after(config: &Config) -> Duration {
    (config.leader.retry_period * 15).max(Duration::from_secs(30))
}

struct Running {
    epoch: i64,
    stop: CancellationToken,
    task: JoinHandle<Result<(), pipeline::Error>>,
    started: tokio::time::Instant,
    ready_since: Option<tokio::time::Instant>,
}

/// Starts the pipeline whenever this replica gains the lease and stops it when it loses it. A
/// pipeline that fails while this replica leads is started again with exponential back-off; after
/// [`STEP_DOWN_AFTER_FAILURES`] failures in a row, or at once when a store call hangs, the leader
/// steps down so a replica whose node can reach the store leads. A store that holds a newer term
/// from a recreated or renamed Lease makes the elector advance its epoch past it.
struct Supervisor<'a> {
    context: &'a pipeline::Context,
    elector: ElectorHandle,
    probe_io: IoPool,
    stop_budget: Duration,
    running: Option<Running>,
    restart_at: Option<tokio::time::Instant>,
    failed_epoch: Option<i64>,
    failures: u32,
    step_downs: u32,
    stepping_down: bool,
    last_error: Option<String>,
    probe: Option<JoinHandle<Result<std::io::Result<()>, Stuck>>>,
    probe_started: tokio::time::Instant,
    probe_due: tokio::time::Instant,
    store_reachable: bool,
    restart_initial: Duration,
    restart_max: Duration,
}

impl<'a> Supervisor<'a> {
    fn new(
        context: &'a pipeline::Context,
        elector: ElectorHandle,
        probe_io: IoPool,
        stop_budget: Duration,
    ) -> Self {
        Self {
            context,
            elector,
            probe_io,
            stop_budget,
            running: None,
            restart_at: None,
            failed_epoch: None,
            failures: 0,
            step_downs: 0,
            stepping_down: false,
            last_error: None,
            probe: None,
            probe_started: tokio::time::Instant::now(),
            probe_due: tokio::time::Instant::now(),
            store_reachable: true,
            restart_initial: RESTART_INITIAL,
            restart_max: RESTART_MAX,
        }
    }

    /// Runs until `shutdown`; then stops a running pipeline within the stop budget.
    async fn run(mut self, mut leadership: LeadershipWatch, shutdown: &CancellationToken) {
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let current = leadership.borrow_and_update().clone();
            let now = tokio::time::Instant::now();
            match (&current, &self.running) {
                (Some(lead), None)
                    if self.restart_at.is_none_or(|at| now >= at)
                        || self.failed_epoch != Some(lead.epoch) =>
                {
                    self.restart_at = None;
                    self.running = Some(start_pipeline(self.context, &leadership, lead.epoch));
                }
                (Some(lead), Some(run)) if run.epoch != lead.epoch => {
                    stop_pipeline(self.running.take(), self.stop_budget).await;
                    self.running = Some(start_pipeline(self.context, &leadership, lead.epoch));
                }
                (None, Some(_)) => {
                    stop_pipeline(self.running.take(), self.stop_budget).await;
                    self.follow();
                }
                (None, None) if self.restart_at.is_some() || self.failures > 0 => self.follow(),
                _ => {}
            }
            self.publish(current.is_some());
            let has_run = self.running.is_some();
            let restart_at = self.restart_at;
            let finished = async {
                match self.running.as_mut() {
                    Some(run) => (&mut run.task).await,
                    None => std::future::pending().await,
                }
            };
            let restart = async {
                match restart_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                changed = leadership.changed() => if changed.is_err() { break } else { None },
                outcome = finished => Some(outcome),
                () = restart => None,
                _ = tick.tick() => None,
            };
            match event {
                Some(outcome) => {
                    let run = self.running.take();
                    self.ended(run, outcome);
                }
                None if has_run => self.check_progress(),
                None => self.probe_store(current.is_some()),
            }
        }
        stop_pipeline(self.running.take(), self.stop_budget).await;
        self.context.metrics.capture_stalled.set(0);
    }

    /// Not leading: forget failures, the next term starts afresh.
    fn follow(&mut self) {
        self.restart_at = None;
        self.failed_epoch = None;
        self.failures = 0;
        self.last_error = None;
        self.stepping_down = false;
        self.context.board.set_ready(PIPELINE_READY);
    }

    fn check_progress(&mut self) {
        let Some(run) = self.running.as_mut() else {
            return;
        };
        let ready = self.context.board.is_ready(PIPELINE_READY);
        let now = tokio::time::Instant::now();
        match (ready, run.ready_since) {
            (true, None) => {
                run.ready_since = Some(now);
                // This replica can serve a term again: the next step-down starts short.
                self.step_downs = 0;
            }
            (false, Some(_)) => run.ready_since = None,
            _ => {}
        }
        if run
            .ready_since
            .is_some_and(|since| now.duration_since(since) >= STABLE_RUN)
            && self.failures > 0
        {
            tracing::info!(epoch = run.epoch, "The leader pipeline runs steadily again");
            self.failures = 0;
            self.last_error = None;
        }
        let stuck = self.context.io.stuck();
        if let Some(overrun) = stuck.first() {
            let reason = format!(
                "store call `{}` stuck for {}s",
                overrun.op,
                overrun.running_for.as_secs()
            );
            self.step_down(&reason);
        }
    }

    /// A follower checks every [`PROBE_INTERVAL`] that the store's volume answers from its node,
    /// and stays out of the election while it does not: winning a term it cannot serve would
    /// only delay the replica that can.
    fn probe_store(&mut self, leading: bool) {
        if leading {
            return;
        }
        if let Some(task) = self.probe.take_if(|task| task.is_finished()) {
            let answer = match futures::FutureExt::now_or_never(task) {
                Some(Ok(Ok(Ok(())))) => Ok(()),
                Some(Ok(Ok(Err(error)))) => {
                    Err(format!("the store volume answers with an error: {error}"))
                }
                Some(Ok(Err(stuck))) => Err(stuck.to_string()),
                Some(Err(join)) => Err(format!("the store probe failed: {join}")),
                None => return,
            };
            self.store_answers(answer);
        }
        let now = tokio::time::Instant::now();
        if self.probe.is_some() {
            // A healthy share answers a stat in milliseconds: one that has not answered for a
            // fifth of the call deadline is not one to lead on (the leader on a hung node steps
            // down after the whole deadline; this replica must be out of the race by then).
            let patience = (self.context.config.store.io_timeout / PROBE_PATIENCE_DIVISOR)
                .max(Duration::from_secs(1));
            let waited = now.duration_since(self.probe_started);
            if waited > patience {
                self.store_answers(Err(format!(
                    "the store probe has not answered for {}s",
                    waited.as_secs()
                )));
            }
            return;
        }
        if now < self.probe_due {
            return;
        }
        self.probe_due = now + PROBE_INTERVAL;
        if let Some(overrun) = self.context.io.stuck().first() {
            // Do not send another call into a volume that already holds one.
            let reason = format!(
                "store call `{}` stuck for {}s",
                overrun.op,
                overrun.running_for.as_secs()
            );
            self.store_answers(Err(reason));
            return;
        }
        let io = self.probe_io.clone();
        let root = self.context.config.store.path.clone();
        self.probe_started = now;
        self.probe = Some(tokio::spawn(async move {
            io.run("probe", move || store::probe(&root)).await
        }));
    }

    fn store_answers(&mut self, answer: Result<(), String>) {
        let reachable = answer.is_ok();
        if reachable == self.store_reachable {
            return;
        }
        self.store_reachable = reachable;
        self.elector.campaign(reachable);
        match answer {
            Ok(()) => tracing::info!(
                path = %self.context.config.store.path.display(),
                "The store volume answers again; competing for the lease"
            ),
            Err(reason) => tracing::warn!(
                path = %self.context.config.store.path.display(),
                reason,
                "The store volume does not answer from this node; not competing for the lease until it does"
            ),
        }
    }

    fn ended(
        &mut self,
        run: Option<Running>,
        outcome: Result<Result<(), pipeline::Error>, tokio::task::JoinError>,
    ) {
        let Some(run) = run else {
            return;
        };
        let error = match outcome {
            Ok(Ok(())) => {
                tracing::info!(epoch = run.epoch, "Leader pipeline ended");
                self.restart_at = Some(tokio::time::Instant::now() + RESTART_INITIAL);
                self.failed_epoch = Some(run.epoch);
                return;
            }
            Ok(Err(error)) => error,
            Err(join) => {
                tracing::error!(epoch = run.epoch, error = %join, "Leader pipeline task failed");
                pipeline::Error::Join(join)
            }
        };
        self.context.metrics.pipeline_failures.inc();
        self.failures = self.failures.saturating_add(1);
        self.failed_epoch = Some(run.epoch);
        let text = error_chain(&error);
        self.last_error = Some(text.clone());
        let lived = run.started.elapsed();
        match error.failure() {
            Failure::BehindStore { stored } => {
                tracing::warn!(
                    epoch = run.epoch,
                    store_epoch = stored,
                    "The store holds a term at or past this one, from another Lease (deleted and recreated, renamed, or restored); advancing the lease epoch past it"
                );
                self.elector.advance_epoch(run.epoch, stored);
                self.restart_at = Some(tokio::time::Instant::now() + self.restart_initial);
            }
            Failure::Stuck => {
                tracing::error!(epoch = run.epoch, error = %text, "A store call hangs");
                self.step_down(&text);
            }
            Failure::Superseded => {
                tracing::error!(
                    epoch = run.epoch,
                    error = %text,
                    "Another leader took the store over while this one led: two Leases lead one store (leader.lease_name changed during a rolling update, or two installations share the store); stepping down"
                );
                self.step_down(&text);
            }
            Failure::Other if self.failures >= STEP_DOWN_AFTER_FAILURES => {
                tracing::error!(epoch = run.epoch, failures = self.failures, error = %text, "Leader pipeline failed");
                let reason = format!(
                    "{} pipeline failures in a row, the last: {text}",
                    self.failures
                );
                self.step_down(&reason);
            }
            Failure::Other => {
                let delay = self.restart_delay();
                tracing::error!(
                    epoch = run.epoch,
                    failures = self.failures,
                    ran_for = ?lived,
                    restart_in = ?delay,
                    error = %text,
                    "Leader pipeline failed; restarting it while this replica leads"
                );
                self.restart_at = Some(tokio::time::Instant::now() + delay);
            }
        }
    }

    /// Back-off before the restart after the current run of failures: 1 s, 2 s, 4 s … up to
    /// [`RESTART_MAX`].
    fn restart_delay(&self) -> Duration {
        self.restart_initial
            .saturating_mul(2u32.saturating_pow(self.failures.saturating_sub(1)))
            .min(self.restart_max)
    }

    fn step_down(&mut self, reason: &str) {
        if self.stepping_down {
            return;
        }
        self.stepping_down = true;
        self.step_downs = self.step_downs.saturating_add(1);
        let lease = self.context.config.leader.lease_duration;
        let hold_off = (lease * HOLD_OFF_LEASES)
            .saturating_mul(2u32.saturating_pow(self.step_downs - 1))
            .min(lease * HOLD_OFF_MAX_LEASES);
        self.elector.step_down(hold_off, reason);
        self.restart_at = Some(tokio::time::Instant::now() + hold_off);
    }

    fn publish(&self, leading: bool) {
        let board = &self.context.board;
        // Stalled: leading without a pipeline, or with one restarted after failures that has not
        // reached ready yet.
        let stalled = leading
            && self
                .running
                .as_ref()
                .is_none_or(|run| self.failures > 0 && run.ready_since.is_none());
        self.context.metrics.capture_stalled.set(i64::from(stalled));
        let state = match (leading, &self.running) {
            (false, _) => "follower",
            (true, Some(_)) if self.failures == 0 => "running",
            (true, Some(_)) => "restarted after failures",
            (true, None) => "failed, waiting to restart",
        };
        let restart_in = self.restart_at.map(|at| {
            at.saturating_duration_since(tokio::time::Instant::now())
                .as_secs_f64()
        });
        if leading && self.failures > 0 && self.running.is_none() {
            board.set_not_ready(
                PIPELINE_READY,
                format!(
                    "leading but not capturing: {} failure(s) in a row ({} steps down), last: {}",
                    self.failures,
                    STEP_DOWN_AFTER_FAILURES,
                    self.last_error.as_deref().unwrap_or("unknown")
                ),
            );
        }
        board.publish(
            "pipeline",
            serde_json::json!({
                "state": state,
                "capturing": leading && !stalled,
                "failures_in_a_row": self.failures,
                "step_downs_in_a_row": self.step_downs,
                "last_error": self.last_error,
                "restart_in_seconds": restart_in,
                "store_reachable": self.store_reachable,
            }),
        );
    }
}

fn start_pipeline(
    context: &pipeline::Context,
    leadership: &LeadershipWatch,
    epoch: i64,
) -> Running {
    let stop = CancellationToken::new();
    let fence = Fence::new(leadership.clone(), epoch);
    // Readiness: the elector raised the condition when it published the term; the pipeline
    // keeps it raised while it takes the store over and clears it once the source has listed.
    tracing::info!(epoch, "Starting the leader pipeline");
    let task = tokio::spawn(pipeline::run(context.clone(), fence, stop.clone()));
    Running {
        epoch,
        stop,
        task,
        started: tokio::time::Instant::now(),
        ready_since: None,
    }
}

async fn stop_pipeline(running: Option<Running>, budget: Duration) {
    let Some(Running {
        epoch, stop, task, ..
    }) = running
    else {
        return;
    };
    stop.cancel();
    match tokio::time::timeout(budget, task).await {
        Ok(Ok(Ok(()))) => tracing::info!(epoch, "Leader pipeline stopped"),
        Ok(Ok(Err(error))) => {
            tracing::info!(epoch, error = %error_chain(&error), "Leader pipeline stopped with an error");
        }
        Ok(Err(join)) => tracing::error!(epoch, error = %join, "Leader pipeline task failed"),
        Err(_) => tracing::error!(epoch, ?budget, "Leader pipeline did not stop in time"),
    }
}

/// Builds the Kubernetes client: an explicit kubeconfig, else in-cluster config or `KUBECONFIG`.
/// The client's own retries are off: the elector and the source retry on their own schedule.
async fn kube_client(config: &Config, kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    use std::net::IpAddr;

    use kube::config::{KubeConfigOptions, Kubeconfig};

    /// The `proxy-url` of the current context's cluster: an explicit choice, used as kubectl uses
    /// it (before the environment, whatever `NO_PROXY` says).
    fn kubeconfig_proxy(file: &Kubeconfig) -> Option<String> {
        let context = file.current_context.as_deref()?;
        let named = file.contexts.iter().find(|c| c.name == context)?;
        let cluster = &named.context.as_ref()?.cluster;
        let named = file.clusters.iter().find(|c| &c.name == cluster)?;
        named
            .cluster
            .as_ref()?
            .proxy_url
            .clone()
            .filter(|url| !url.trim().is_empty())
    }

    /// The first of `names` that is set and not blank, with its name. Upper case first, as
    /// reqwest (the ADX client) reads them, so both clients of this process pick the same value.
    fn env(names: [&'static str; 2]) -> Option<(&'static str, String)> {
        names.into_iter().find_map(|name| {
            let value = std::env::var(name).ok()?;
            (!value.trim().is_empty()).then(|| (name, value.trim().to_owned()))
        })
    }

    /// Whether a `NO_PROXY` list covers `host`, as curl reads it: entries separated by commas or
    /// blanks; `*` covers every host; an IP address or a CIDR block covers the addresses in it; a
    /// name covers itself and its subdomains, case-insensitively, with or without a leading `.`
    /// (or `*.`). Entries carry no port.
    fn no_proxy_covers(list: &str, host: &str) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.');
        let ip = host.parse::<IpAddr>().ok();
        let in_block = |entry: &str, ip: IpAddr| {
            let Some((net, bits)) = entry.split_once('/') else {
                return false;
            };
            let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
                return false;
            };
            match (net, ip) {
                (IpAddr::V4(net), IpAddr::V4(ip)) if bits <= 32 => {
                    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                    u32::from(net) & mask == u32::from(ip) & mask
                }
                (IpAddr::V6(net), IpAddr::V6(ip)) if bits <= 128 => {
                    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                    u128::from(net) & mask == u128::from(ip) & mask
                }
                _ => false,
            }
        };
        list.split([',', ' ', '\t'])
            .map(|entry| entry.trim().trim_start_matches('[').trim_end_matches(']'))
            .filter(|entry| !entry.is_empty())
            .any(|entry| {
                if entry == "*" {
                    return true;
                }
                if let Some(ip) = ip {
                    return entry.parse::<IpAddr>().is_ok_and(|e| e == ip) || in_block(entry, ip);
                }
                let name = entry.strip_prefix("*.").or_else(|| entry.strip_prefix('.'));
                let name = name.unwrap_or(entry).trim_end_matches('.');
                if name.is_empty() || name.len() > host.len() {
                    return false;
                }
                let (head, tail) = host.split_at(host.len() - name.len());
                tail.eq_ignore_ascii_case(name) && (head.is_empty() || head.ends_with('.'))
            })
    }

    let path = kubeconfig.or(config.kubernetes.kubeconfig.as_deref());
    let (mut client_config, explicit_proxy) = match path {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let proxy = kubeconfig_proxy(&file);
            let loaded = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?;
            (loaded, proxy)
        }
        None => {
            let loaded = kube::Config::infer().await.context(
                "no Kubernetes configuration: not in a cluster, and no kubeconfig found",
            )?;
            // `infer` takes `$KUBECONFIG` or `~/.kube/config` when it can; in a pod there is none.
            let proxy = Kubeconfig::read().ok().as_ref().and_then(kubeconfig_proxy);
            (loaded, proxy)
        }
    };

    // kube 5 would take HTTPS_PROXY for any API server from a kubeconfig (never HTTP_PROXY),
    // none in a pod, and tests NO_PROXY against the proxy's own address: decide here instead.
    let api_server = client_config.cluster_url.clone();
    let host = api_server.host().unwrap_or_default();
    let from_env = match api_server.scheme_str() {
        Some("https") => env(["HTTPS_PROXY", "https_proxy"]),
        Some("http") => env(["HTTP_PROXY", "http_proxy"]),
        _ => None,
    };
    let proxy = match (explicit_proxy, from_env) {
        (Some(url), _) => Some(("the kubeconfig's proxy-url", url)),
        (None, Some((name, url))) => match env(["NO_PROXY", "no_proxy"]) {
            Some((no_proxy, list)) if no_proxy_covers(&list, host) => {
                tracing::info!(api_server = %host, "{no_proxy} covers the Kubernetes API server");
                None
            }
            _ => Some((name, url)),
        },
        (None, None) => None,
    };
    if let Some((source, url)) = proxy {
        // curl reads a proxy without a scheme as `http://`. The value is never logged nor put in
        // an error (it may carry credentials): only the proxy's host and port are.
        let url = if url.contains("://") {
            url
        } else {
            format!("http://{url}")
        };
        let uri = url
            .parse::<http::Uri>()
            .with_context(|| format!("{source} is not a valid proxy URL"))?;
        let port = match uri.scheme_str() {
            Some("http") => uri.port_u16().unwrap_or(80),
            Some("https") => uri.port_u16().unwrap_or(443),
            _ => {
                anyhow::bail!("{source}: the Kubernetes client takes http:// and https:// proxies")
            }
        };
        let address = format!("{}:{port}", uri.host().unwrap_or_default());
        tracing::info!(
            api_server = %host,
            proxy = %address,
            "Kubernetes API through the proxy in {source}"
        );
        client_config.proxy_url = Some(uri);
    } else {
        client_config.proxy_url = None;
    }

    let identity = HeaderValue::from_str(&config.leader.identity)
        .context("leader.identity is not a valid HTTP header value")?;
    client_config
        .headers
        .push((HeaderName::from_static(CLIENT_ID_HEADER), identity));
    client_config.default_retry = false;
    client_config.connect_timeout = Some(config.leader.retry_period.max(Duration::from_secs(1)));
    kube::Client::try_from(client_config).context("building the Kubernetes client")
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::sync::watch;

    use super::*;
    use crate::{
        config::Environment,
        leader::{Leadership, LeaseId, Request},
    };

    fn context(store: &Path) -> pipeline::Context {
        let text = format!(
            "cluster:\n  name: t\nleader:\n  lease_duration: 15s\nstore:\n  path: {}\nsink:\n  type: stdout\n",
            store.display()
        );
        let config = Config::parse(&text, &Environment::process()).unwrap();
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        pipeline::Context {
            client,
            config: Arc::new(config),
            metrics: Metrics::new().unwrap(),
            board: Arc::new(StatusBoard::new()),
            io: IoPool::new("store", 2, Duration::from_secs(5)).unwrap(),
            sink_io: IoPool::new("file-sink", 1, Duration::from_secs(5)).unwrap(),
            dead: DeadSlot::default(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_pipeline_restarts_with_growing_back_off_then_the_leader_steps_down() {
        let dir = tempfile::tempdir().unwrap();
        // A store path under a plain file: every take-over fails.
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let context = context(&dir.path().join("file/store"));
        let (handle, mut requests) = ElectorHandle::channel();
        let (_tx, leadership) = watch::channel(Some(Leadership {
            holder: "t".into(),
            epoch: 1,
            valid_until: Instant::now() + Duration::from_secs(600),
            lease: LeaseId::default(),
        }));
        let mut supervisor = Supervisor::new(
            &context,
            handle,
            IoPool::new("store-probe", 1, Duration::from_secs(5)).unwrap(),
            Duration::from_secs(5),
        );
        supervisor.restart_initial = Duration::from_millis(40);
        supervisor.restart_max = Duration::from_millis(160);
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let run = supervisor.run(leadership, &shutdown);
        tokio::pin!(run);
        let request = tokio::select! {
            () = &mut run => panic!("the supervisor ended"),
            request = requests.recv() => request.unwrap(),
        };
        let took = started.elapsed();
        assert!(
            matches!(&request, Request::StepDown { hold_off, .. } if *hold_off == Duration::from_secs(30)),
            "{request:?}"
        );
        assert_eq!(context.metrics.pipeline_failures.get(), 5);
        // Back-off 40 + 80 + 160 + 160 ms between the five runs.
        assert!(
            took >= Duration::from_millis(440),
            "stepped down after {took:?}"
        );
        assert_eq!(context.metrics.capture_stalled.get(), 1);
        let status = context.board.snapshot();
        assert_eq!(status["pipeline"]["failures_in_a_row"], 5, "{status}");
        assert!(
            context.board.readiness().is_err(),
            "a leader that cannot capture is not ready"
        );
        // No more runs while stepping down, though the (test) elector never released.
        tokio::select! {
            () = &mut run => panic!("the supervisor ended"),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        assert_eq!(context.metrics.pipeline_failures.get(), 5);
        shutdown.cancel();
        run.await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_holds_a_newer_term_makes_the_leader_advance_its_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        // A term 7 began in the store (a Lease that was deleted since).
        let term = store.join("terms/g0000000001-e7-0000abcd");
        std::fs::create_dir_all(&term).unwrap();
        std::fs::write(term.join("BEGUN"), br#"{"holder":"old","epoch":7}"#).unwrap();
        let context = context(&store);
        let (handle, mut requests) = ElectorHandle::channel();
        let (_tx, leadership) = watch::channel(Some(Leadership {
            holder: "t".into(),
            epoch: 0,
            valid_until: Instant::now() + Duration::from_secs(600),
            lease: LeaseId::default(),
        }));
        let supervisor = Supervisor::new(
            &context,
            handle,
            IoPool::new("store-probe", 1, Duration::from_secs(5)).unwrap(),
            Duration::from_secs(5),
        );
        let shutdown = CancellationToken::new();
        let run = supervisor.run(leadership, &shutdown);
        tokio::pin!(run);
        let request = tokio::select! {
            () = &mut run => panic!("the supervisor ended"),
            request = requests.recv() => request.unwrap(),
        };
        assert_eq!(request, Request::AdvanceEpoch { from: 0, past: 7 });
        shutdown.cancel();
        run.await;
    }
}
