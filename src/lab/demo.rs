//! `kevents-lab demo`: the main job on an embedded default, end to end on one machine.
//!
//! Starts the Kubernetes API emulator, three real `kevents run` replicas sharing one store
//! directory and one file sink, and the event generator; SIGTERMs the leader at ~20 s and
//! kill -9s the next leader at ~40 s (restarting each, as a Deployment would); at ~60 s stops the
//! generator, lets the pipeline drain, and prints what the API server stored against what was
//! delivered. It owns nothing the product uses.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::sys::signal::Signal;

use crate::{
    emulator::kube::{GeneratorConfig, KubeEmulator, KubeEmulatorConfig},
    lab::{
        oracle::{self, Key, Report},
        replica::{ReplicaOptions, Replicas},
    },
};

/// Namespace of the Lease in the lab.
pub const LEASE_NAMESPACE: &str = "kevents";
/// Name of the Lease in the lab.
pub const LEASE_NAME: &str = "kevents";

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Total generation time (the failovers happen at one third and two thirds).
    pub duration: Duration,
    /// Number of replicas.
    pub replicas: usize,
    /// Generator writes per second.
    pub events_per_second: f64,
    /// Share of writes that update an existing event (count++).
    pub update_ratio: f64,
    /// Generator seed.
    pub seed: u64,
    /// Working directory (store, sink, logs).
    pub workdir: PathBuf,
    /// The `kevents` binary.
    pub kevents: PathBuf,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// Delivery against ground truth.
    pub report: Report,
    /// SIGTERM of the leader → another replica leads.
    pub graceful_failover: Option<Duration>,
    /// kill -9 of the leader → another replica leads.
    pub kill_failover: Option<Duration>,
}

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
/// [`crate::lab::backend::Backend`] (through the API).
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
            && let Some(status) =
                crate::lab::drill::admin_get(replicas.replicas[slot].admin, "/status").await
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
/// [`crate::lab::replica::STORE_PLACEHOLDER`] for a store per replica); the file sink stays at
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

/// Runs the demo.
///
/// # Errors
/// Fails if the emulator, a replica or the sink output cannot be set up or read.
pub async fn run(options: DemoOptions) -> anyhow::Result<DemoOutcome> {
    let DemoOptions {
        duration,
        replicas: count,
        events_per_second,
        update_ratio,
        seed,
        workdir,
        kevents,
    } = options;
    if workdir.exists() {
        std::fs::remove_dir_all(&workdir)
            .with_context(|| format!("clearing {}", workdir.display()))?;
    }
    std::fs::create_dir_all(&workdir)?;
    let emulator = KubeEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        KubeEmulatorConfig::default(),
    )
    .await
    .context("starting the Kubernetes API emulator")?;
    let kubeconfig = workdir.join("kubeconfig");
    emulator.write_kubeconfig(&kubeconfig, LEASE_NAMESPACE)?;
    println!(
        "API server emulator on {}  (kubeconfig: {})",
        emulator.url(),
        kubeconfig.display()
    );

    let mut replicas = Replicas::start(
        ReplicaOptions {
            kevents,
            workdir: workdir.clone(),
            kubeconfig,
            lease_namespace: LEASE_NAMESPACE.to_owned(),
            lease_duration: "6s".to_owned(),
            renew_deadline: "4s".to_owned(),
            retry_period: "1s".to_owned(),
            pipeline_yaml: lab_pipeline_yaml(&workdir, "1s"),
            log_level: "info".to_owned(),
        },
        count,
    )
    .context("starting kevents replicas")?;
    println!(
        "Started {count} kevents replicas (logs in {})",
        workdir.display()
    );

    let first = wait_leader_ready(&emulator, &replicas, Duration::from_secs(60))
        .await
        .context("no replica became a ready leader within 60 s")?;
    println!("Leader: {}", replicas.replicas[first].identity);

    emulator.state().set_generator(Some(GeneratorConfig {
        events_per_second,
        update_ratio,
        seed,
        namespaces: 5,
    }));
    let started = Instant::now();
    println!(
        "Generating {events_per_second} events/s ({}% updates of existing events) for {}s",
        (update_ratio * 100.0).round(),
        duration.as_secs()
    );

    let graceful_failover = failover_at(
        &emulator,
        &mut replicas,
        started + duration / 3,
        Signal::SIGTERM,
    )
    .await?;
    let kill_failover = failover_at(
        &emulator,
        &mut replicas,
        started + duration * 2 / 3,
        Signal::SIGKILL,
    )
    .await?;

    tokio::time::sleep_until((started + duration).into()).await;
    emulator.state().set_generator(None);
    println!("Generator stopped; waiting for the pipeline to drain");
    let sink = workdir.join("out/events.ndjson");
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let truth = ground_truth(&emulator);
        let (delivered, unkeyed) = oracle::read_delivered(&oracle::sink_files(&sink))?;
        let report = oracle::compare(&truth, &delivered, unkeyed);
        if report.missing == 0 || Instant::now() >= drain_deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    replicas.stop_all(Duration::from_secs(15));
    emulator.shutdown().await;
    Ok(DemoOutcome {
        report,
        graceful_failover,
        kill_failover,
    })
}

async fn failover_at(
    emulator: &KubeEmulator,
    replicas: &mut Replicas,
    at: Instant,
    signal: Signal,
) -> anyhow::Result<Option<Duration>> {
    tokio::time::sleep_until(at.into()).await;
    let holder = lease_holder(emulator).context("no leader to fail over from")?;
    let slot = replicas
        .slot_of(&holder)
        .with_context(|| format!("the leader {holder} is not a lab replica"))?;
    let signalled = Instant::now();
    replicas.signal(slot, signal)?;
    println!("{signal:?} → leader {holder}");
    let next =
        wait_for_new_leader(emulator, replicas, Some(&holder), Duration::from_secs(60)).await;
    let failover = next.map(|_| signalled.elapsed());
    match (next, failover) {
        (Some(next), Some(took)) => println!(
            "  {} leads after {:.2}s",
            replicas.replicas[next].identity,
            took.as_secs_f64()
        ),
        _ => println!("  no new leader within 60s"),
    }
    let _ = replicas.wait_exit(slot, Duration::from_secs(20));
    replicas.restart(slot)?;
    Ok(failover)
}

/// Prints the outcome table.
pub fn print_outcome(outcome: &DemoOutcome) {
    let r = &outcome.report;
    let secs = |d: Option<Duration>| {
        d.map_or_else(
            || "none".to_owned(),
            |d| format!("{:.2} s", d.as_secs_f64()),
        )
    };
    println!();
    println!("  event versions the API server stored   {:>8}", r.stored);
    println!(
        "  rows delivered to the file sink        {:>8}",
        r.delivered
    );
    println!("  missing                                {:>8}", r.missing);
    println!(
        "  duplicated                             {:>8}",
        r.duplicated
    );
    println!(
        "  failover after SIGTERM of the leader   {:>8}",
        secs(outcome.graceful_failover)
    );
    println!(
        "  failover after kill -9 of the leader   {:>8}",
        secs(outcome.kill_failover)
    );
    if r.unexpected > 0 || r.unkeyed > 0 {
        println!(
            "  unexpected rows {}  unkeyed rows {}",
            r.unexpected, r.unkeyed
        );
    }
    if !r.missing_sample.is_empty() {
        println!("  first missing versions: {:?}", r.missing_sample);
    }
    println!();
    println!(
        "  {}",
        if r.is_exact() {
            "PASS: every stored version delivered exactly once"
        } else {
            "FAIL: delivery differs from what the API server stored"
        }
    );
}
