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
use futures::{StreamExt as _, TryStreamExt as _};
use http::{HeaderName, HeaderValue};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::WatchParams};
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, AdminState},
    config::Config,
    leader::{Elector, Fence, LeadershipWatch},
    pipeline,
    telemetry::{Metrics, StatusBoard, error_chain},
};

/// Header carrying this replica's identity on every Kubernetes API request, so API server audit
/// logs (and the test emulator's per-client fault injection) can tell replicas apart.
pub const CLIENT_ID_HEADER: &str = "x-client-id";

/// Share of the grace period given to the pipeline to stop; the rest is for releasing the lease.
const PIPELINE_SHARE_OF_GRACE: f64 = 0.6;
/// Server-side timeout of the follower's watch on the Lease.
const LEASE_WATCH_TIMEOUT_SECS: u32 = 120;

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

    let listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "Admin server listening");
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        listener,
        AdminState {
            metrics: metrics.clone(),
            board: Arc::clone(&board),
        },
        admin_stop.clone(),
    ));

    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let elector = Elector::new(leases.clone(), config.leader.clone())
        .with_telemetry(metrics.clone(), Arc::clone(&board));
    let leadership = elector.subscribe();
    let lease_watch_stop = CancellationToken::new();
    let lease_watch = tokio::spawn(watch_lease(
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
    };
    supervise(
        &context,
        leadership,
        &shutdown,
        grace.mul_f64(PIPELINE_SHARE_OF_GRACE),
    )
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

/// Delay before a pipeline that failed is started again while this replica still leads.
const PIPELINE_RESTART_DELAY: Duration = Duration::from_secs(2);

struct Running {
    epoch: i64,
    stop: CancellationToken,
    task: JoinHandle<Result<(), pipeline::Error>>,
}

/// Starts the pipeline whenever this replica gains the lease and stops it when it loses it, until
/// `shutdown`; then stops a running pipeline within `stop_budget`. A pipeline that fails while
/// this replica still leads is started again after a short delay.
async fn supervise(
    context: &pipeline::Context,
    mut leadership: LeadershipWatch,
    shutdown: &CancellationToken,
    stop_budget: Duration,
) {
    let mut running: Option<Running> = None;
    let mut restart_at: Option<tokio::time::Instant> = None;
    loop {
        let current = leadership.borrow_and_update().clone();
        match (&current, &running) {
            (Some(lead), None) if restart_at.is_none_or(|at| tokio::time::Instant::now() >= at) => {
                restart_at = None;
                running = Some(start_pipeline(context, &leadership, lead.epoch));
            }
            (Some(lead), Some(run)) if run.epoch != lead.epoch => {
                stop_pipeline(running.take(), stop_budget).await;
                running = Some(start_pipeline(context, &leadership, lead.epoch));
            }
            (None, Some(_)) => {
                stop_pipeline(running.take(), stop_budget).await;
                restart_at = None;
            }
            _ => {}
        }
        let finished = async {
            match running.as_mut() {
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
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = leadership.changed() => if changed.is_err() { break },
            outcome = finished => {
                let epoch = running.take().map_or(-1, |run| run.epoch);
                match outcome {
                    Ok(Ok(())) => tracing::info!(epoch, "Leader pipeline ended"),
                    Ok(Err(error)) => tracing::error!(epoch, error = %error_chain(&error), "Leader pipeline failed; restarting it while this replica leads"),
                    Err(join) => tracing::error!(epoch, error = %join, "Leader pipeline task failed"),
                }
                restart_at = Some(tokio::time::Instant::now() + PIPELINE_RESTART_DELAY);
            }
            () = restart => {}
        }
    }
    stop_pipeline(running.take(), stop_budget).await;
}

fn start_pipeline(
    context: &pipeline::Context,
    leadership: &LeadershipWatch,
    epoch: i64,
) -> Running {
    let stop = CancellationToken::new();
    let fence = Fence::new(leadership.clone(), epoch);
    // Not ready from this instant until the first list (or resume) is done.
    context
        .board
        .set_not_ready(pipeline::READY_CONDITION, "leader pipeline starting");
    tracing::info!(epoch, "Starting the leader pipeline");
    let task = tokio::spawn(pipeline::run(context.clone(), fence, stop.clone()));
    Running { epoch, stop, task }
}

async fn stop_pipeline(running: Option<Running>, budget: Duration) {
    let Some(Running { epoch, stop, task }) = running else {
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

/// Watches the Lease and wakes the elector on every change, so a follower observes a renewal or
/// a release at once instead of at its next poll. Best effort: errors only delay the wake-ups.
async fn watch_lease(
    leases: Api<Lease>,
    name: String,
    wake: Arc<Notify>,
    retry: Duration,
    stop: CancellationToken,
) {
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(LEASE_WATCH_TIMEOUT_SECS);
    loop {
        let session = async {
            let stream = leases.watch(&params, "0").await?;
            let mut stream = stream.boxed();
            while let Some(_event) = stream.try_next().await? {
                wake.notify_one();
            }
            Ok::<(), kube::Error>(())
        };
        tokio::select! {
            () = stop.cancelled() => return,
            result = session => {
                if let Err(error) = result {
                    tracing::debug!(%error, "Lease watch ended; polling continues");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }
}

/// Builds the Kubernetes client: an explicit kubeconfig, else in-cluster config or `KUBECONFIG`.
/// The client's own retries are off: the elector and the source retry on their own schedule.
async fn kube_client(config: &Config, kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let path = kubeconfig.or(config.kubernetes.kubeconfig.as_deref());
    let mut client_config = match path {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration: not in a cluster, and no kubeconfig found")?,
    };
    let identity = HeaderValue::from_str(&config.leader.identity)
        .context("leader.identity is not a valid HTTP header value")?;
    client_config
        .headers
        .push((HeaderName::from_static(CLIENT_ID_HEADER), identity));
    client_config.default_retry = false;
    client_config.connect_timeout = Some(config.leader.retry_period.max(Duration::from_secs(1)));
    kube::Client::try_from(client_config).context("building the Kubernetes client")
}
