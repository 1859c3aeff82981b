//! One API server for tests and the lab, either the in-repo emulator or a real kube-apiserver +
//! etcd, so one test body runs on both: clients, kubeconfigs, namespaces, the lab Lease's holder,
//! the count of Event LISTs, and compaction past a resourceVersion.
//!
//! Owns only the dispatch to the two; what differs between them is spelled out here and in
//! `tests/kube-apiserver/FIDELITY.md`. It never reaches into the emulator's state for anything a
//! real API server could not also answer, except where the real one answers through another
//! channel (the emulator's request stats stand in for the apiserver's `/metrics`, and the
//! emulator compacts on request where the real one compacts on a timer).

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures::{AsyncBufReadExt as _, TryStreamExt as _};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};

use crate::{
    apiserver::{RealApiServer, RealApiServerOptions},
    harness::{LEASE_NAME, LEASE_NAMESPACE, LeaseView},
    kube::{KubeEmulator, KubeEmulatorConfig},
};

/// Name of the Lease [`Backend::compact_past`] writes to move the resourceVersion on.
const MARKER_LEASE: &str = "kevents-compaction-marker";

/// The API server a test or the lab runs against.
pub enum Backend {
    /// The in-repo emulator.
    Emulator(KubeEmulator),
    /// A real kube-apiserver + etcd.
    Real(RealApiServer),
}

impl Backend {
    /// Starts the emulator on a free loopback port.
    ///
    /// # Errors
    /// Fails if it cannot listen.
    pub async fn emulator(config: KubeEmulatorConfig) -> anyhow::Result<Self> {
        let emulator = KubeEmulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
            .await
            .context("starting the Kubernetes API emulator")?;
        Ok(Self::Emulator(emulator))
    }

    /// Starts a real kube-apiserver + etcd, and creates the lab namespace.
    ///
    /// # Errors
    /// Fails if they cannot be started (see [`RealApiServer::start`]).
    pub async fn real(options: RealApiServerOptions) -> anyhow::Result<Self> {
        let server = RealApiServer::start(options).await?;
        server.ensure_namespace(LEASE_NAMESPACE).await?;
        Ok(Self::Real(server))
    }

    /// `emulator` or `kube-apiserver`, for messages.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Emulator(_) => "emulator",
            Self::Real(_) => "kube-apiserver",
        }
    }

    /// True for a real kube-apiserver.
    #[must_use]
    pub fn is_real(&self) -> bool {
        matches!(self, Self::Real(_))
    }

    /// The emulator, when it is one.
    #[must_use]
    pub fn as_emulator(&self) -> Option<&KubeEmulator> {
        match self {
            Self::Emulator(emulator) => Some(emulator),
            Self::Real(_) => None,
        }
    }

    /// The real API server, when it is one.
    #[must_use]
    pub fn as_real(&self) -> Option<&RealApiServer> {
        match self {
            Self::Real(server) => Some(server),
            Self::Emulator(_) => None,
        }
    }

    /// An admin client (default namespace `default`).
    #[must_use]
    pub fn client(&self) -> kube::Client {
        match self {
            Self::Emulator(emulator) => emulator.client(),
            Self::Real(server) => server.client(),
        }
    }

    /// Writes an admin kubeconfig with `namespace` as the context namespace (for `kevents run`
    /// and `kubectl`).
    ///
    /// # Errors
    /// Fails if the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> anyhow::Result<()> {
        match self {
            Self::Emulator(emulator) => Ok(emulator.write_kubeconfig(path, namespace)?),
            Self::Real(server) => server.write_kubeconfig(path, namespace),
        }
    }

    /// Makes sure `name` exists (a real API server refuses objects in a missing namespace; the
    /// emulator has no Namespace objects and accepts any).
    ///
    /// # Errors
    /// Fails if the namespace cannot be created.
    pub async fn ensure_namespace(&self, name: &str) -> anyhow::Result<()> {
        match self {
            Self::Emulator(_) => Ok(()),
            Self::Real(server) => server.ensure_namespace(name).await,
        }
    }

    /// The holder of the Lease `namespace/name`, read through the API (`None` when absent or
    /// released).
    ///
    /// # Errors
    /// Fails if the GET fails.
    pub async fn lease_holder_of(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Option<String>> {
        let api: Api<Lease> = Api::namespaced(self.client(), namespace);
        let lease = api.get_opt(name).await?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }

    /// LIST requests for Events served so far (the emulator's request stats; the real one's
    /// `apiserver_request_total{verb="LIST",resource="events"}`).
    ///
    /// # Errors
    /// Fails if the real API server's `/metrics` cannot be read.
    pub async fn event_lists(&self) -> anyhow::Result<u64> {
        match self {
            Self::Emulator(emulator) => Ok(emulator
                .state()
                .stats()
                .requests
                .lists
                .get("events")
                .copied()
                .unwrap_or(0)),
            Self::Real(server) => server.event_lists().await,
        }
    }

    /// Makes sure a watch of Events from `resource_version` is answered with 410 Gone: moves the
    /// resourceVersion on (a write to a marker Lease), then compacts (emulator) or waits until the
    /// real API server's periodic compaction has passed it — checked by watching from it, so with
    /// the watch cache on, that may never happen within `timeout`.
    ///
    /// # Errors
    /// Fails if the marker cannot be written or the position is still watchable at `timeout`.
    pub async fn compact_past(
        &self,
        resource_version: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        self.bump_resource_version().await?;
        if let Self::Emulator(emulator) = self {
            emulator.state().compact_now();
        }
        loop {
            if self.watch_is_gone(resource_version).await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: a watch from resourceVersion {resource_version} still works after {timeout:?}",
                    self.name()
                );
            }
            // Each compaction goes to the revision of the previous tick: keep moving on.
            self.bump_resource_version().await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn bump_resource_version(&self) -> anyhow::Result<()> {
        let api: Api<Lease> = Api::namespaced(self.client(), "default");
        let mut lease = Lease {
            metadata: ObjectMeta {
                name: Some(MARKER_LEASE.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(format!("marker-{}", rand::random::<u32>())),
                lease_duration_seconds: Some(1),
                ..LeaseSpec::default()
            }),
        };
        match api.get_opt(MARKER_LEASE).await? {
            Some(current) => {
                lease.metadata.resource_version = current.metadata.resource_version;
                api.replace(MARKER_LEASE, &PostParams::default(), &lease)
                    .await?;
            }
            None => {
                api.create(&PostParams::default(), &lease).await?;
            }
        }
        Ok(())
    }

    /// True when a watch of core/v1 Events from `resource_version` starts with an ERROR 410.
    async fn watch_is_gone(&self, resource_version: &str) -> anyhow::Result<bool> {
        let request = http::Request::get(format!(
            "/api/v1/events?watch=true&timeoutSeconds=1&resourceVersion={resource_version}"
        ))
        .body(Vec::new())?;
        let lines = self.client().request_stream(request).await?;
        let mut lines = lines.lines();
        let first = tokio::time::timeout(Duration::from_secs(3), lines.try_next()).await;
        let Ok(Ok(Some(line))) = first else {
            return Ok(false);
        };
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        Ok(
            value.get("type").and_then(serde_json::Value::as_str) == Some("ERROR")
                && value
                    .pointer("/object/code")
                    .and_then(serde_json::Value::as_u64)
                    == Some(410),
        )
    }

    /// Stops the API server.
    pub async fn shutdown(self) {
        match self {
            Self::Emulator(emulator) => emulator.shutdown().await,
            Self::Real(mut server) => server.stop(),
        }
    }
}

impl LeaseView for Backend {
    async fn lab_lease_holder(&self) -> Option<String> {
        self.lease_holder_of(LEASE_NAMESPACE, LEASE_NAME)
            .await
            .ok()
            .flatten()
    }
}
