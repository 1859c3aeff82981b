//! `kevents-lab drill <scenario>`: failover drills with real `kevents run` processes against the
//! Kubernetes API emulator, each stating its property first and printing PASS/FAIL with figures.
//!
//! Owns the lab a drill runs in (the API server emulator, the ADX emulator when asked, the
//! replicas placed on the test ground, the generator and the observers), the report and the
//! dispatch; `scenarios` owns the
//! faults and their bounds, `observe` the latency and failover-gap figures, `faults` the faults
//! made outside the emulators. Every scenario ends with the oracle: every event version the API
//! server stored is delivered exactly once. It never weakens a property to pass.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;

pub use kevents_testkit::harness::admin_get;
use kevents_testkit::{
    adx::{AdxEmulator, AdxEmulatorConfig},
    harness::{
        LEASE_NAMESPACE, NamedLease, ground_truth, lab_pipeline_yaml_at, lease_holder_named,
        wait_for_new_leader, wait_leader_ready,
    },
    kube::{GeneratorConfig, KubeEmulator, KubeEmulatorConfig},
    nodes::{self, Ground, Nodes},
    oracle::{self, Report},
    replica::{ReplicaOptions, Replicas, STORE_PLACEHOLDER},
};

pub mod faults;
pub mod observe;
mod scenarios;

use observe::{CaptureLog, Captures, Deliveries, SinkView};

/// Drill settings.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Repetitions of the fault within one drill.
    pub runs: usize,
    /// Working directory (cleared first).
    pub workdir: PathBuf,
    /// The `kevents` binary.
    pub kevents: PathBuf,
    /// Replicas.
    pub replicas: usize,
    /// Generator writes per second.
    pub events_per_second: f64,
    /// Lease duration (whole seconds).
    pub lease_duration: Duration,
    /// Renew deadline.
    pub renew_deadline: Duration,
    /// Retry period.
    pub retry_period: Duration,
    /// The ground the replicas run on: one node (one store directory), or several FUSE mounts
    /// of one share with replicas placed round-robin.
    pub ground: Ground,
    /// Where the replicas ship, for scenarios that do not choose a sink themselves.
    pub sink: LabSink,
}

impl DrillOptions {
    /// Defaults for `workdir` and `kevents`: 3 replicas, 200 events/s, lease 6 s / 4 s / 1 s,
    /// one node.
    #[must_use]
    pub fn new(workdir: PathBuf, kevents: PathBuf) -> Self {
        Self {
            runs: 20,
            workdir,
            kevents,
            replicas: 3,
            events_per_second: 200.0,
            lease_duration: Duration::from_secs(6),
            renew_deadline: Duration::from_secs(4),
            retry_period: Duration::from_secs(1),
            ground: Ground::single(),
            sink: LabSink::File,
        }
    }
}

/// What a drill measured.
#[derive(Debug, Clone, Default)]
pub struct DrillReport {
    /// Scenario name.
    pub name: String,
    /// The property, stated before running.
    pub property: String,
    /// Fault repetitions.
    pub runs: usize,
    /// The ground the figures come from (`1 node`, `2 nodes (bindfs attr_timeout=30)`).
    pub ground: String,
    /// Delivery against ground truth.
    pub delivery: Report,
    /// Failover times after a graceful stop.
    pub graceful: Vec<Duration>,
    /// Failover times after a crash, pause or partition.
    pub abrupt: Vec<Duration>,
    /// Failover gaps by fault kind: last capture before a fault → first capture after it.
    pub gaps: Vec<(&'static str, Duration)>,
    /// End-to-end latency of each delivered version: stored by the API server → in the sink.
    pub latency: Vec<Duration>,
    /// Other figures, one line each.
    pub figures: Vec<String>,
    /// Violations found (empty when the drill passed).
    pub violations: Vec<String>,
}

impl DrillReport {
    /// A report for `name` stating `property`.
    #[must_use]
    pub fn new(name: &str, property: String, runs: usize) -> Self {
        println!("drill {name} — property: {property}");
        Self {
            name: name.to_owned(),
            property,
            runs,
            ..Self::default()
        }
    }

    /// True when delivery is exact and no violation was found.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.delivery.is_exact() && self.violations.is_empty()
    }

    /// Adds a violation when the p99 of `samples` is above `bound`.
    pub fn bound_p99(&mut self, what: &str, samples: &[Duration], bound: Duration) {
        let p99 = percentile(samples, 0.99);
        if p99 > bound {
            self.violations.push(format!(
                "{what} p99 {:.2}s above {:.2}s",
                p99.as_secs_f64(),
                bound.as_secs_f64()
            ));
        }
    }

    /// Prints the figures and PASS/FAIL.
    pub fn print(&self) {
        let d = &self.delivery;
        println!("drill {}: {} run(s)", self.name, self.runs);
        println!("  ground: {}", self.ground);
        println!("  property: {}", self.property);
        println!(
            "  delivery: stored {} delivered {} missing {} duplicated {} unexpected {} unkeyed {}",
            d.stored, d.delivered, d.missing, d.duplicated, d.unexpected, d.unkeyed
        );
        if !d.missing_sample.is_empty() {
            println!("  missing (sample): {:?}", d.missing_sample);
        }
        if !self.graceful.is_empty() {
            println!("  graceful failover: {}", summary(&self.graceful));
        }
        if !self.abrupt.is_empty() {
            println!("  abrupt failover:   {}", summary(&self.abrupt));
        }
        let mut kinds: Vec<&str> = self.gaps.iter().map(|(kind, _)| *kind).collect();
        kinds.dedup();
        kinds.sort_unstable();
        kinds.dedup();
        for kind in kinds {
            let gaps: Vec<Duration> = self
                .gaps
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, gap)| *gap)
                .collect();
            println!("  failover gap ({kind}): {}", summary(&gaps));
        }
        if !self.latency.is_empty() {
            println!("  end-to-end latency: {}", summary(&self.latency));
        }
        for figure in &self.figures {
            println!("  {figure}");
        }
        for violation in &self.violations {
            println!("  violation: {violation}");
        }
        println!("  {}", if self.passed() { "PASS" } else { "FAIL" });
    }
}

/// `p50 … p99 … max … (n)` of durations, in seconds.
#[must_use]
pub fn summary(samples: &[Duration]) -> String {
    format!(
        "p50 {:.2}s  p99 {:.2}s  max {:.2}s  (n={})",
        percentile(samples, 0.50).as_secs_f64(),
        percentile(samples, 0.99).as_secs_f64(),
        samples
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .as_secs_f64(),
        samples.len()
    )
}

/// Nearest-rank percentile.
#[must_use]
pub fn percentile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank among samples"
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The sink the replicas ship to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LabSink {
    /// The file sink (`out/events.ndjson`).
    #[default]
    File,
    /// The ADX emulator (on Azurite) with queued ingestion and the sink's defaults (status rows,
    /// no `ingest-by` tags), as the AKS overlay ships it; the emulated DM ingests each message
    /// [`ADX_INGEST_DELAY`] after it was posted.
    AdxQueued,
    /// The ADX emulator with streaming ingestion.
    AdxStreaming,
    /// The ADX emulator with managed ingestion (streaming, falling back to queued).
    AdxManaged,
}

impl LabSink {
    /// The `--sink` names.
    pub const NAMES: &[&str] = &["file", "adx-queued", "adx-streaming", "adx-managed"];

    /// The sink named `name` (one of [`LabSink::NAMES`]).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "file" => Self::File,
            "adx-queued" => Self::AdxQueued,
            "adx-streaming" => Self::AdxStreaming,
            "adx-managed" => Self::AdxManaged,
            _ => return None,
        })
    }

    /// Its `--sink` name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::AdxQueued => "adx-queued",
            Self::AdxStreaming => "adx-streaming",
            Self::AdxManaged => "adx-managed",
        }
    }
}

/// The emulated data management service ingests a queued message this long after it was posted
/// (drawn per message): real ADX takes 30 s to 5 min, scaled down so a drill's backlog drains
/// in its time bounds while confirmations still arrive long after the send, out of order.
pub const ADX_INGEST_DELAY: (Duration, Duration) =
    (Duration::from_secs(2), Duration::from_secs(10));

/// How a lab differs from the default one.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// The API server's settings (event TTL, compaction period).
    pub emulator: KubeEmulatorConfig,
    /// Where rows go ([`LabSink::File`]: the drill options' sink).
    pub sink: LabSink,
    /// Share of generator writes that update an event.
    pub update_ratio: f64,
    /// How long `finish` waits for the backlog to drain.
    pub drain_timeout: Duration,
    /// Waits inside a store commit and inside a file-sink write (after their fence checks), so
    /// a pause can land in those windows (`diagnostics.stall_*`).
    pub stalls: Option<(Duration, Duration)>,
    /// Lines added to the replicas' `store:` section (two-space indented).
    pub store_extra: String,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            emulator: KubeEmulatorConfig::default(),
            sink: LabSink::File,
            update_ratio: 0.3,
            drain_timeout: Duration::from_secs(90),
            stalls: None,
            store_extra: String::new(),
        }
    }
}

/// Database the ADX lab ships to.
const ADX_DATABASE: &str = "lab";

/// What [`Lab::finish`] measured.
#[derive(Debug, Clone, Default)]
pub struct Finish {
    /// Delivery against ground truth.
    pub delivery: Report,
    /// End-to-end latencies.
    pub latency: Vec<Duration>,
    /// Failover gaps, one per [`Lab::fault`], with its kind.
    pub gaps: Vec<(&'static str, Duration)>,
    /// Captures seen.
    pub captures: CaptureLog,
    /// The fresh-replica audit of a multi-node ground: figures, and violations.
    pub audit: (Vec<String>, Vec<String>),
}

/// A running lab: emulator, replicas, generator, observers.
pub struct Lab {
    /// The API server.
    pub emulator: KubeEmulator,
    /// The ADX emulator, for the ADX sinks.
    pub adx: Option<AdxEmulator>,
    /// The replicas.
    pub replicas: Replicas,
    /// Settings.
    pub options: DrillOptions,
    spec: LabSpec,
    fence_log: PathBuf,
    sink: SinkView,
    deliveries: Deliveries,
    captures: Captures,
    faults: Vec<(i64, &'static str)>,
    /// The node mounts on a multi-node ground; last, so the replicas are gone before they are
    /// unmounted.
    nodes: Option<Nodes>,
}

impl Lab {
    /// A default lab (file sink, default API server).
    ///
    /// # Errors
    /// Fails if any part cannot be started.
    pub async fn start(options: DrillOptions) -> anyhow::Result<Self> {
        Self::start_with(options, LabSpec::default()).await
    }

    /// Starts the emulator(s) and the replicas, waits for a ready leader, starts the generator
    /// and the observers.
    ///
    /// # Errors
    /// Fails if any part cannot be started.
    pub async fn start_with(options: DrillOptions, spec: LabSpec) -> anyhow::Result<Self> {
        if options.workdir.exists() {
            // Node mounts an interrupted run left: remove_dir_all would descend into them.
            nodes::clear_stale_mounts(&options.workdir)
                .context("unmounting the node mounts an earlier run left")?;
            // A store left immutable by an interrupted read-only drill.
            for store in [
                options.workdir.join("store"),
                options.workdir.join("share/store"),
            ] {
                if store.exists() {
                    let _ = faults::set_immutable(&store, false);
                }
            }
            std::fs::remove_dir_all(&options.workdir)
                .with_context(|| format!("clearing {}", options.workdir.display()))?;
        }
        std::fs::create_dir_all(&options.workdir)?;
        let ground = options.ground;
        let nodes = if ground.is_multi_node() {
            Some(
                Nodes::mount(&options.workdir, ground.nodes, ground.attr_timeout)
                    .with_context(|| format!("setting up the ground: {ground}"))?,
            )
        } else {
            None
        };
        // Each replica's store: the one directory, or the share's `store` through its node.
        let stores = match &nodes {
            Some(nodes) => nodes.round_robin(Path::new("store"), options.replicas),
            None => vec![options.workdir.join("store"); options.replicas],
        };
        let emulator =
            KubeEmulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), spec.emulator.clone())
                .await
                .context("starting the Kubernetes API emulator")?;
        let kubeconfig = options.workdir.join("kubeconfig");
        emulator.write_kubeconfig(&kubeconfig, LEASE_NAMESPACE)?;
        let fence_log = options.workdir.join("fence.log");
        let secs = |d: Duration| format!("{}ms", d.as_millis());
        let kind = if spec.sink == LabSink::File {
            options.sink
        } else {
            spec.sink
        };
        let (adx, pipeline, sink) = match kind {
            LabSink::File => (
                None,
                lab_pipeline_yaml_at(
                    STORE_PLACEHOLDER,
                    &options.workdir,
                    "500ms",
                    &spec.store_extra,
                ),
                SinkView::File(options.workdir.join("out/events.ndjson")),
            ),
            LabSink::AdxQueued | LabSink::AdxStreaming | LabSink::AdxManaged => {
                let adx = AdxEmulator::start(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    AdxEmulatorConfig::default(),
                )
                .await
                .context("starting the ADX emulator (run `make azurite` first)")?;
                let mode = match kind {
                    LabSink::AdxQueued => "queued",
                    LabSink::AdxManaged => "managed",
                    _ => "streaming",
                };
                if kind != LabSink::AdxStreaming {
                    adx.state()
                        .set_ingest_delay(ADX_INGEST_DELAY.0, ADX_INGEST_DELAY.1);
                }
                // Status rows are read every second, and a row left Pending by a leader that
                // died between writing it and posting the message is submitted again after a
                // minute (defaults: 10 s and 1 h).
                let extra = "    status:\n      poll_interval: 1s\n      pending_timeout: 60s\n";
                let yaml = format!(
                    "store:\n  path: {store}\n  lock_timeout: 30s\n{store_extra}\
                     shipper:\n  max_batch_age: 500ms\n  retry_initial: 200ms\n  retry_max: 5s\n\
                     record:\n  extra_columns: [Uid, ResourceVersion]\n{sink}",
                    store = STORE_PLACEHOLDER,
                    store_extra = spec.store_extra,
                    sink = adx.sink_yaml(ADX_DATABASE, mode, extra),
                );
                let view = SinkView::Adx {
                    state: adx.state().clone(),
                    database: ADX_DATABASE.to_owned(),
                    table: "KubeEvents".to_owned(),
                };
                (Some(adx), yaml, view)
            }
        };
        let mut pipeline = format!(
            "{pipeline}diagnostics:\n  fence_log: {}\n  fence_log_interval: 50ms\n",
            fence_log.display()
        );
        if let Some((commit, write)) = spec.stalls {
            pipeline = format!(
                "{pipeline}  stall_store_commit: {}\n  stall_sink_write: {}\n",
                secs(commit),
                secs(write)
            );
        }
        let replicas = Replicas::start_placed(
            ReplicaOptions {
                kevents: options.kevents.clone(),
                workdir: options.workdir.clone(),
                kubeconfig,
                lease_namespace: LEASE_NAMESPACE.to_owned(),
                lease_duration: secs(options.lease_duration),
                renew_deadline: secs(options.renew_deadline),
                retry_period: secs(options.retry_period),
                pipeline_yaml: pipeline,
                log_level: "info".to_owned(),
            },
            stores,
        )?;
        let lab = Self {
            emulator,
            adx,
            replicas,
            options,
            spec,
            fence_log,
            deliveries: Deliveries::start(sink.clone()),
            sink,
            captures: Captures::start(),
            faults: Vec::new(),
            nodes,
        };
        lab.refresh_targets();
        wait_leader_ready(&lab.lease(), &lab.replicas, Duration::from_secs(60))
            .await
            .context("no replica became a ready leader")?;
        lab.generate(lab.options.events_per_second, lab.spec.update_ratio);
        // Warm up: the first fault must find a leader that is capturing.
        let deadline = Instant::now() + Duration::from_secs(20);
        while lab.captures.log().captures.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(lab)
    }

    /// Sets the generator's rate and update share (a zero rate stops it).
    pub fn generate(&self, events_per_second: f64, update_ratio: f64) {
        self.emulator.state().set_generator(Some(GeneratorConfig {
            events_per_second,
            update_ratio,
            seed: 11,
            namespaces: 5,
        }));
    }

    /// Creates only, at the drill's rate: every version stays the current one of its event until
    /// its TTL, so a relist can still return it.
    pub fn generate_creates_only(&self) {
        self.generate(self.options.events_per_second, 0.0);
    }

    /// Back to the lab's normal write mix.
    pub fn generate_normally(&self) {
        self.generate(self.options.events_per_second, self.spec.update_ratio);
    }

    fn refresh_targets(&self) {
        let targets = self
            .replicas
            .replicas
            .iter()
            .filter(|r| r.pid().is_some())
            .map(|r| (r.identity.clone(), r.admin))
            .collect();
        *self
            .captures
            .targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = targets;
    }

    /// The Lease the replicas compete for now.
    #[must_use]
    pub fn lease(&self) -> NamedLease<'_> {
        NamedLease {
            emulator: &self.emulator,
            name: self.replicas.lease_name(),
        }
    }

    /// The node mounts of a multi-node ground.
    #[must_use]
    pub fn nodes(&self) -> Option<&Nodes> {
        self.nodes.as_ref()
    }

    /// Marks a fault of `kind` now: a failover gap is measured around it.
    pub fn fault(&mut self, kind: &'static str) {
        self.faults.push((now_ms(), kind));
    }

    /// The store directory all replicas share: on a multi-node ground the share's `store`
    /// itself, not a node's view of it.
    #[must_use]
    pub fn store_dir(&self) -> PathBuf {
        match &self.nodes {
            Some(nodes) => nodes.share().join("store"),
            None => self.options.workdir.join("store"),
        }
    }

    /// The leader's slot and identity.
    ///
    /// # Errors
    /// Fails if no lab replica holds the lease.
    pub fn leader(&self) -> anyhow::Result<(usize, String)> {
        let holder = lease_holder_named(&self.emulator, self.replicas.lease_name())
            .context("nobody holds the lease")?;
        let slot = self
            .replicas
            .slot_of(&holder)
            .with_context(|| format!("{holder} is not a running lab replica"))?;
        Ok((slot, holder))
    }

    /// Waits for a leader other than `previous`; returns how long it took from `since`.
    pub async fn next_leader(&self, previous: &str, since: Instant) -> Option<Duration> {
        wait_for_new_leader(
            &self.lease(),
            &self.replicas,
            Some(previous),
            self.options.lease_duration * 4 + Duration::from_secs(10),
        )
        .await
        .map(|_| since.elapsed())
    }

    /// Waits for a ready leader (any); returns how long it took from `since`.
    pub async fn ready_leader(&self, since: Instant, timeout: Duration) -> Option<Duration> {
        wait_leader_ready(&self.lease(), &self.replicas, timeout)
            .await
            .map(|_| since.elapsed())
    }

    /// Restarts a slot and waits until the new process serves `/livez`.
    ///
    /// # Errors
    /// Fails if the process cannot be started.
    pub async fn restart(&mut self, slot: usize) -> anyhow::Result<()> {
        let _ = self.replicas.wait_exit(slot, Duration::from_secs(20));
        self.replicas.restart(slot)?;
        self.refresh_targets();
        let admin = self.replicas.replicas[slot].admin;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if admin_get(admin, "/livez").await.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("restarted replica {slot} never served /livez")
    }

    /// Starts again every replica whose process exited on its own (as a Deployment would);
    /// returns how many.
    ///
    /// # Errors
    /// Fails if a process cannot be started.
    pub async fn revive(&mut self) -> anyhow::Result<usize> {
        let exited = self.replicas.exited();
        for slot in &exited {
            self.restart(*slot).await?;
        }
        Ok(exited.len())
    }

    /// Waits until every version stored so far (resourceVersion up to now) reached the sink;
    /// `None` when `timeout` passes first.
    pub async fn wait_delivered(&self, timeout: Duration) -> Option<()> {
        let up_to = self.emulator.state().resource_version();
        let wanted: Vec<(String, String)> = self
            .emulator
            .state()
            .ground_truth(None)
            .into_iter()
            .filter(|v| {
                v.resource_version
                    .parse::<u64>()
                    .is_ok_and(|rv| rv <= up_to)
            })
            .map(|v| (v.uid, v.resource_version))
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            if self.deliveries.all_seen(&wanted) {
                return Some(());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Fence-log lines of `identity` written at or after `after_ms` (Unix ms).
    #[must_use]
    pub fn fence_writes_after(&self, identity: &str, after_ms: i64) -> usize {
        fence_lines(&self.fence_log)
            .into_iter()
            .filter(|(ms, who)| who == identity && *ms >= after_ms)
            .count()
    }

    /// Delivery against ground truth, now.
    ///
    /// # Errors
    /// Fails if the sink cannot be read.
    pub fn compare(&self) -> anyhow::Result<Report> {
        let truth = ground_truth(&self.emulator);
        let (delivered, unkeyed) = self.sink.delivered()?;
        Ok(oracle::compare(&truth, &delivered, unkeyed))
    }

    /// After a drill on several nodes: stops every replica, then starts one fresh replica on
    /// each of the first two nodes in turn. Each must open the store without quarantine, lead,
    /// and ship nothing again (everything was delivered).
    async fn audit_fresh_replicas(
        &mut self,
        delivered: &Report,
    ) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let mut figures = Vec::new();
        let mut violations = Vec::new();
        self.replicas.stop_all(Duration::from_secs(15));
        for slot in 0..self.replicas.replicas.len().min(2) {
            let node = nodes::node_name(slot);
            let log = self.options.workdir.join(format!("replica-{slot}.log"));
            let quarantined_before = count_in(&log, "quarantined");
            self.restart(slot).await?;
            let ready = wait_leader_ready(&self.lease(), &self.replicas, Duration::from_secs(60))
                .await
                .is_some();
            // Long enough for a re-send of anything in flight (batch age 500 ms).
            tokio::time::sleep(Duration::from_secs(3)).await;
            let after = self.compare()?;
            if !ready {
                violations.push(format!(
                    "fresh replica on {node}: no ready leader within 60s"
                ));
            }
            if after.delivered != delivered.delivered || after.duplicated > 0 {
                violations.push(format!(
                    "fresh replica on {node}: delivered {} → {}, duplicated {}",
                    delivered.delivered, after.delivered, after.duplicated
                ));
            }
            if count_in(&log, "quarantined") > quarantined_before {
                violations.push(format!(
                    "fresh replica on {node}: the store was quarantined"
                ));
            }
            let _ = self
                .replicas
                .signal(slot, nix::sys::signal::Signal::SIGTERM);
            let _ = self.replicas.wait_exit(slot, Duration::from_secs(15));
        }
        if violations.is_empty() {
            figures.push(
                "fresh replica on node-a, then on node-b: opened the store without quarantine, led, re-shipped nothing".to_owned(),
            );
        }
        Ok((figures, violations))
    }

    /// Stops the generator, waits for the pipeline to drain, stops everything, and compares.
    ///
    /// # Errors
    /// Fails if the sink output cannot be read.
    pub async fn finish(mut self) -> anyhow::Result<Finish> {
        self.emulator.state().set_generator(None);
        let stopped = Instant::now();
        let deadline = stopped + self.spec.drain_timeout;
        let report = loop {
            let report = self.compare()?;
            if report.missing == 0 || Instant::now() >= deadline {
                break report;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        // Give a straggling duplicate the chance to show up before judging.
        tokio::time::sleep(self.options.retry_period * 2).await;
        let report = if report.missing == 0 {
            self.compare()?
        } else {
            report
        };
        let mut audit = if self.nodes.is_some() && report.is_exact() {
            self.audit_fresh_replicas(&report).await?
        } else {
            (Vec::new(), Vec::new())
        };
        if let Some(adx) = &self.adx {
            let stats = adx.state().stats();
            audit.0.push(format!(
                "ADX: {} queue messages ingested ({} rows), {} skipped by an ingest-by tag, {} failed; {} status rows written by the DM; {} streaming requests ({} rows)",
                stats.queued_ingestions,
                stats.queued_rows,
                stats.skipped_existing,
                stats.failed_ingestions,
                stats.status_rows_written,
                stats.streaming_requests,
                stats.streaming_rows
            ));
            if stats.status_rows_missing > 0 {
                audit.1.push(format!(
                    "{} queue message(s) asked for a status row the client had not written first",
                    stats.status_rows_missing
                ));
            }
        }
        let end_ms = now_ms();
        self.deliveries.stop();
        self.captures.stop();
        let first_seen = self.deliveries.first_seen();
        let captures = self.captures.log();
        // For a post-mortem: who captured when, and the faults.
        let mut timeline: Vec<String> = captures
            .captures
            .iter()
            .map(|(ms, who)| format!("{ms} capture {who}"))
            .chain(
                self.faults
                    .iter()
                    .map(|(ms, kind)| format!("{ms} fault {kind}")),
            )
            .collect();
        timeline.sort();
        let _ = std::fs::write(
            self.options.workdir.join("timeline.txt"),
            timeline.join("\n") + "\n",
        );
        let latency = self
            .emulator
            .state()
            .ground_truth(None)
            .into_iter()
            .filter_map(|v| {
                let seen = first_seen.get(&(v.uid, v.resource_version))?;
                u64::try_from(seen - v.stored_at.as_millisecond())
                    .ok()
                    .map(Duration::from_millis)
            })
            .collect();
        let gaps = self
            .faults
            .iter()
            .enumerate()
            .filter_map(|(i, (fault, kind))| {
                let until = self.faults.get(i + 1).map_or(end_ms, |(ms, _)| *ms);
                captures.gap(*fault, until).map(|gap| (*kind, gap))
            })
            .collect();
        self.replicas.stop_all(Duration::from_secs(15));
        self.emulator.shutdown().await;
        if let Some(adx) = self.adx.take() {
            adx.shutdown().await;
        }
        Ok(Finish {
            delivery: report,
            latency,
            gaps,
            audit,
            captures,
        })
    }
}

impl DrillReport {
    /// Adds the figures of a finished lab (a scenario may run several labs one after another).
    pub fn record(&mut self, finish: Finish) {
        self.delivery.add(finish.delivery);
        self.latency.extend(finish.latency);
        self.gaps.extend(finish.gaps);
        let (figures, violations) = finish.audit;
        self.figures.extend(figures);
        self.violations.extend(violations);
    }
}

/// Lines of the file at `path` that contain `needle` (0 when it cannot be read).
fn count_in(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| {
        text.lines().filter(|l| l.contains(needle)).count()
    })
}

fn fence_lines(path: &Path) -> Vec<(i64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some((parts.next()?.parse().ok()?, parts.next()?.to_owned()))
        })
        .collect()
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The short scenarios (`kevents-lab drill all`, `make drill`).
pub const SCENARIOS: &[&str] = &[
    "handover",
    "pause",
    "partition",
    "rolling",
    "apiserver-down",
    "compaction",
    "adx-429",
    "read-only-store",
    "long-outage",
    "storm",
    "lease-deleted",
    "lease-renamed",
    "mapping-error",
];

/// Scenarios that need the multi-node ground (`--nodes 2`): a fault on one node only.
pub const MULTI_NODE_SCENARIOS: &[&str] = &["sick-leader"];

/// The long scenarios (`make drill-long`).
pub const LONG_SCENARIOS: &[&str] = &["adx-outage"];

/// Runs one scenario.
///
/// # Errors
/// Fails if the lab cannot be set up; property violations are reported, not returned.
pub async fn run(name: &str, options: DrillOptions) -> anyhow::Result<DrillReport> {
    let ground = match options.sink {
        LabSink::File => options.ground.to_string(),
        LabSink::AdxStreaming => format!("{}; sink {}", options.ground, options.sink.name()),
        sink => format!(
            "{}; sink {} (ingestion {}-{} s after the post)",
            options.ground,
            sink.name(),
            ADX_INGEST_DELAY.0.as_secs(),
            ADX_INGEST_DELAY.1.as_secs()
        ),
    };
    println!("drill {name} — ground: {ground}");
    let mut report = match name {
        "handover" => scenarios::handover(options).await,
        "pause" => scenarios::pause(options).await,
        "partition" => scenarios::partition(options).await,
        "rolling" => scenarios::rolling(options).await,
        "apiserver-down" => scenarios::apiserver_down(options).await,
        "compaction" => scenarios::compaction(options).await,
        "adx-429" => scenarios::adx_throttle(options).await,
        "read-only-store" => scenarios::read_only_store(options).await,
        "long-outage" => scenarios::long_outage(options).await,
        "storm" => scenarios::storm(options).await,
        "adx-outage" => scenarios::adx_outage(options).await,
        "lease-deleted" => scenarios::lease_deleted(options).await,
        "lease-renamed" => scenarios::lease_renamed(options).await,
        "sick-leader" => scenarios::sick_leader(options).await,
        "mapping-error" => scenarios::mapping_error(options).await,
        other => anyhow::bail!(
            "unknown drill `{other}`; known: {}, {} (two nodes), {} (long)",
            SCENARIOS.join(", "),
            MULTI_NODE_SCENARIOS.join(", "),
            LONG_SCENARIOS.join(", ")
        ),
    }?;
    report.ground = ground;
    Ok(report)
}
