//! Wires the process together: telemetry, the admin server, the Kubernetes client, and (from the
//! leader election release on) the leader-only pipeline; then waits for shutdown.
//!
//! Owns task lifetimes and the graceful-shutdown budget. It holds no pipeline logic of its own.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use http::{HeaderName, HeaderValue};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, AdminState},
    config::Config,
    telemetry::{Metrics, StatusBoard},
};

/// Header carrying this replica's identity on every Kubernetes API request, so API server audit
/// logs (and the test emulator's per-client fault injection) can tell replicas apart.
pub const CLIENT_ID_HEADER: &str = "x-client-id";

/// Options given on the command line rather than in the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--kubeconfig`: overrides `kubernetes.kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
}

/// Runs kevents until SIGTERM/SIGINT (or `shutdown` is cancelled).
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
    tracing::info!(
        identity = %config.leader.identity,
        api = %client.default_namespace(),
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

    board.publish(
        "leader",
        serde_json::json!({ "role": "follower", "identity": config.leader.identity }),
    );

    shutdown.cancelled().await;
    let grace = config.shutdown_grace_period;
    let stopped = tokio::time::timeout(grace, async {
        admin_stop.cancel();
        admin_task.await
    })
    .await;
    match stopped {
        Ok(Ok(Ok(()))) => {
            tracing::info!("Shut down cleanly");
            Ok(())
        }
        Ok(Ok(Err(error))) => Err(error).context("admin server failed"),
        Ok(Err(join)) => Err(join).context("admin server task failed"),
        Err(_) => anyhow::bail!("graceful shutdown did not finish within {grace:?}"),
    }
}

/// Builds the Kubernetes client: an explicit kubeconfig, else in-cluster config or `KUBECONFIG`.
async fn kube_client(
    config: &Config,
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<kube::Client> {
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
    kube::Client::try_from(client_config).context("building the Kubernetes client")
}
