//! The harness around `kevents` processes in tests, drills and benchmarks: the lab Lease and who
//! holds it, waiting for a leader that is ready, the pipeline config the replicas run with, the
//! ground truth of the Kubernetes emulator, and a GET on a replica's admin server.
//!
//! It drives the `kevents` binary from outside (config text, HTTP, the API server) and never
//! links the product: what it checks is what an operator would see.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{kube::KubeEmulator, oracle::Key, replica::Replicas};

/// Namespace of the Lease in the lab.
pub const LEASE_NAMESPACE: &str = "kevents";
/// Name of the Lease in the lab.
pub const LEASE_NAME: &str = "kevents";

/// The current holder of the lab Lease.
#[must_use]
pub fn lease_holder(emulator: &KubeEmulator) -> Option<String> {
    emulator
        .state()
        .lease(LEASE_NAMESPACE, LEASE_NAME)
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// The holder of the Lease `name` in the lab namespace, if any.
#[must_use]
pub fn lease_holder_named(emulator: &KubeEmulator, name: &str) -> Option<String> {
    emulator
        .state()
        .lease(LEASE_NAMESPACE, name)
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// A Lease of the lab namespace other than the default one, seen through the emulator.
pub struct NamedLease<'a> {
    /// The API server.
    pub emulator: &'a KubeEmulator,
    /// The Lease's name.
    pub name: &'a str,
}

impl LeaseView for NamedLease<'_> {
    fn lab_lease_holder(&self) -> impl Future<Output = Option<String>> + Send {
        std::future::ready(lease_holder_named(self.emulator, self.name))
    }
}

/// Something that can tell who holds the lab Lease: the emulator (from its state) or a
/// [`crate::backend::Backend`] (through the API).
pub trait LeaseView {
    /// The holder of `LEASE_NAMESPACE/LEASE_NAME`, if any.
    fn lab_lease_holder(&self) -> impl Future<Output = Option<String>> + Send;
}

impl LeaseView for KubeEmulator {
    fn lab_lease_holder(&self) -> impl Future<Output = Option<String>> + Send {
        std::future::ready(lease_holder(self))
    }
}

/// Waits until a running replica other than `previous` holds the lease; returns its slot.
pub async fn wait_for_new_leader(
    emulator: &(impl LeaseView + Sync),
    replicas: &Replicas,
    previous: Option<&str>,
    timeout: Duration,
) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(holder) = emulator.lab_lease_holder().await
            && Some(holder.as_str()) != previous
            && let Some(slot) = replicas.slot_of(&holder)
        {
            return Some(slot);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the lease holder reports itself leader and ready (its first list or resume is
/// done); returns its slot.
pub async fn wait_leader_ready(
    emulator: &(impl LeaseView + Sync),
    replicas: &Replicas,
    timeout: Duration,
) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(holder) = emulator.lab_lease_holder().await
            && let Some(slot) = replicas.slot_of(&holder)
            && let Some(status) = admin_get(replicas.replicas[slot].admin, "/status").await
            && let Ok(status) = serde_json::from_str::<serde_json::Value>(&status)
            && status
                .pointer("/leader/role")
                .and_then(serde_json::Value::as_str)
                == Some("leader")
            && status.get("ready").and_then(serde_json::Value::as_bool) == Some(true)
        {
            return Some(slot);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The pipeline config the lab replicas use: shared store, one file sink, keyed rows.
#[must_use]
pub fn lab_pipeline_yaml(workdir: &std::path::Path, max_batch_age: &str) -> String {
    lab_pipeline_yaml_with(workdir, max_batch_age, "")
}

/// [`lab_pipeline_yaml`] with extra `store` keys (each line indented by two spaces).
#[must_use]
pub fn lab_pipeline_yaml_with(
    workdir: &std::path::Path,
    max_batch_age: &str,
    store_extra: &str,
) -> String {
    lab_pipeline_yaml_at(
        &workdir.join("store").display().to_string(),
        workdir,
        max_batch_age,
        store_extra,
    )
}

/// [`lab_pipeline_yaml_with`] with `store.path` given as text (a path, or
/// [`crate::replica::STORE_PLACEHOLDER`] for a store per replica); the file sink stays at
/// `<workdir>/out/events.ndjson`, outside any shared store.
#[must_use]
pub fn lab_pipeline_yaml_at(
    store: &str,
    workdir: &std::path::Path,
    max_batch_age: &str,
    store_extra: &str,
) -> String {
    format!(
        "store:\n  path: {store}\n  lock_timeout: 30s\n{store_extra}\
         shipper:\n  max_batch_age: {max_batch_age}\n  retry_initial: 200ms\n  retry_max: 5s\n\
         record:\n  extra_columns: [Uid, ResourceVersion]\n\
         sink:\n  type: file\n  file:\n    path: {sink}\n    max_bytes: 64MiB\n    max_files: 1000\n",
        sink = workdir.join("out/events.ndjson").display(),
    )
}

/// Ground truth: every event version the emulator stored.
#[must_use]
pub fn ground_truth(emulator: &KubeEmulator) -> Vec<Key> {
    emulator
        .state()
        .ground_truth(None)
        .into_iter()
        .map(|v| (v.uid, v.resource_version))
        .collect()
}

/// GET on a replica's admin server; the body on 200.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut text))
        .await
        .ok()?
        .ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}
