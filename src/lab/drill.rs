//! `kevents-lab drill <scenario>`: failover drills with real `kevents run` processes against the
//! Kubernetes API emulator, each stating its property first and printing PASS/FAIL with figures.
//!
//! Owns the scenarios and their pass criteria. Every scenario ends with the oracle: every event
//! version the API server stored is delivered exactly once. It never weakens a property to pass.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::sys::signal::Signal;

use crate::{
    emulator::kube::{GeneratorConfig, KubeEmulator, KubeEmulatorConfig},
    lab::{
        demo::{
            LEASE_NAMESPACE, ground_truth, lab_pipeline_yaml, lease_holder, wait_for_new_leader,
            wait_leader_ready,
        },
        oracle::{self, Report},
        replica::{ReplicaOptions, Replicas},
    },
};

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
}

impl DrillOptions {
    /// Defaults for `workdir` and `kevents`: 3 replicas, 200 events/s, lease 6 s / 4 s / 1 s.
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
    /// Delivery against ground truth.
    pub delivery: Report,
    /// Failover times after a graceful stop.
    pub graceful: Vec<Duration>,
    /// Failover times after a crash, pause or partition.
    pub abrupt: Vec<Duration>,
    /// Violations found (empty when the drill passed).
    pub violations: Vec<String>,
}

impl DrillReport {
    /// True when delivery is exact and no violation was found.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.delivery.is_exact() && self.violations.is_empty()
    }

    /// Prints the figures and PASS/FAIL.
    pub fn print(&self) {
        let d = &self.delivery;
        println!("drill {}: {} run(s)", self.name, self.runs);
        println!(
            "  delivery: stored {} delivered {} missing {} duplicated {}",
            d.stored, d.delivered, d.missing, d.duplicated
        );
        if !self.graceful.is_empty() {
            println!("  graceful failover: {}", summary(&self.graceful));
        }
        if !self.abrupt.is_empty() {
            println!("  abrupt failover:   {}", summary(&self.abrupt));
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
        reason = "a rank among a few samples"
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A running lab: emulator, replicas, generator.
pub struct Lab {
    /// The API server.
    pub emulator: KubeEmulator,
    /// The replicas.
    pub replicas: Replicas,
    /// Settings.
    pub options: DrillOptions,
    fence_log: PathBuf,
}

impl Lab {
    /// Starts the emulator and the replicas, waits for a ready leader, starts the generator.
    ///
    /// # Errors
    /// Fails if any part cannot be started.
    pub async fn start(options: DrillOptions, extra_yaml: &str) -> anyhow::Result<Self> {
        if options.workdir.exists() {
            std::fs::remove_dir_all(&options.workdir)?;
        }
        std::fs::create_dir_all(&options.workdir)?;
        let emulator = KubeEmulator::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            KubeEmulatorConfig::default(),
        )
        .await
        .context("starting the Kubernetes API emulator")?;
        let kubeconfig = options.workdir.join("kubeconfig");
        emulator.write_kubeconfig(&kubeconfig, LEASE_NAMESPACE)?;
        let fence_log = options.workdir.join("fence.log");
        let secs = |d: Duration| format!("{}ms", d.as_millis());
        let pipeline = format!(
            "{}diagnostics:\n  fence_log: {}\n  fence_log_interval: 50ms\n{extra_yaml}",
            lab_pipeline_yaml(&options.workdir, "500ms"),
            fence_log.display()
        );
        let replicas = Replicas::start(
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
            options.replicas,
        )?;
        let lab = Self {
            emulator,
            replicas,
            options,
            fence_log,
        };
        wait_leader_ready(&lab.emulator, &lab.replicas, Duration::from_secs(60))
            .await
            .context("no replica became a ready leader")?;
        lab.emulator.state().set_generator(Some(GeneratorConfig {
            events_per_second: lab.options.events_per_second,
            update_ratio: 0.3,
            seed: 11,
            namespaces: 5,
        }));
        Ok(lab)
    }

    /// The leader's slot and identity.
    ///
    /// # Errors
    /// Fails if no lab replica holds the lease.
    pub fn leader(&self) -> anyhow::Result<(usize, String)> {
        let holder = lease_holder(&self.emulator).context("nobody holds the lease")?;
        let slot = self
            .replicas
            .slot_of(&holder)
            .with_context(|| format!("{holder} is not a running lab replica"))?;
        Ok((slot, holder))
    }

    /// Waits for a leader other than `previous`; returns how long it took from `since`.
    pub async fn next_leader(&self, previous: &str, since: Instant) -> Option<Duration> {
        wait_for_new_leader(
            &self.emulator,
            &self.replicas,
            Some(previous),
            self.options.lease_duration * 4 + Duration::from_secs(10),
        )
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

    /// Fence-log lines of `identity` written at or after `after_ms` (Unix ms).
    #[must_use]
    pub fn fence_writes_after(&self, identity: &str, after_ms: i64) -> usize {
        fence_lines(&self.fence_log)
            .into_iter()
            .filter(|(ms, who)| who == identity && *ms >= after_ms)
            .count()
    }

    /// Stops the generator, waits for the pipeline to drain, stops everything, and compares.
    ///
    /// # Errors
    /// Fails if the sink output cannot be read.
    pub async fn finish(mut self) -> anyhow::Result<Report> {
        self.emulator.state().set_generator(None);
        let sink = self.options.workdir.join("out/events.ndjson");
        let deadline = Instant::now() + Duration::from_secs(90);
        let report = loop {
            let truth = ground_truth(&self.emulator);
            let (delivered, unkeyed) = oracle::read_delivered(&oracle::sink_files(&sink))?;
            let report = oracle::compare(&truth, &delivered, unkeyed);
            if report.missing == 0 || Instant::now() >= deadline {
                break report;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        // Give a straggling duplicate the chance to show up before judging.
        tokio::time::sleep(self.options.retry_period).await;
        let truth = ground_truth(&self.emulator);
        let (delivered, unkeyed) = oracle::read_delivered(&oracle::sink_files(&sink))?;
        let report = if report.missing == 0 {
            oracle::compare(&truth, &delivered, unkeyed)
        } else {
            report
        };
        self.replicas.stop_all(Duration::from_secs(15));
        self.emulator.shutdown().await;
        Ok(report)
    }
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

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The scenarios `kevents-lab drill` knows.
pub const SCENARIOS: &[&str] = &["handover", "pause", "partition"];

/// Runs one scenario.
///
/// # Errors
/// Fails if the lab cannot be set up; property violations are reported, not returned.
pub async fn run(name: &str, options: DrillOptions) -> anyhow::Result<DrillReport> {
    match name {
        "handover" => handover(options).await,
        "pause" => pause(options).await,
        "partition" => partition(options).await,
        other => anyhow::bail!("unknown drill `{other}`; known: {}", SCENARIOS.join(", ")),
    }
}

/// SIGTERM the leader, then kill -9 the next one, `runs` times each.
async fn handover(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let graceful_bound = Duration::from_secs(3);
    let kill_bound = options.lease_duration + options.retry_period * 2;
    let mut report = DrillReport {
        name: "handover".to_owned(),
        property: format!(
            "SIGTERM of the leader: another leads within {}s (p99); kill -9: within lease_duration + 2 x retry_period = {}s (p99); nothing lost, nothing duplicated",
            graceful_bound.as_secs(),
            kill_bound.as_secs()
        ),
        runs: options.runs,
        ..DrillReport::default()
    };
    println!("drill handover — property: {}", report.property);
    let mut lab = Lab::start(options.clone(), "").await?;
    for run in 0..options.runs {
        for signal in [Signal::SIGTERM, Signal::SIGKILL] {
            let (slot, holder) = lab.leader()?;
            let signalled = Instant::now();
            lab.replicas.signal(slot, signal)?;
            let Some(took) = lab.next_leader(&holder, signalled).await else {
                report
                    .violations
                    .push(format!("run {run}: no new leader after {signal:?}"));
                continue;
            };
            if signal == Signal::SIGTERM {
                report.graceful.push(took);
            } else {
                report.abrupt.push(took);
            }
            lab.restart(slot).await?;
        }
        // Let the new leader settle before the next fault.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if percentile(&report.graceful, 0.99) > graceful_bound {
        report
            .violations
            .push(format!("graceful failover p99 above {graceful_bound:?}"));
    }
    if percentile(&report.abrupt, 0.99) > kill_bound {
        report
            .violations
            .push(format!("kill -9 failover p99 above {kill_bound:?}"));
    }
    report.delivery = lab.finish().await?;
    Ok(report)
}

/// SIGSTOP the leader longer than the lease, then SIGCONT: it must write nothing after waking
/// and must demote.
async fn pause(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let mut report = DrillReport {
        name: "pause".to_owned(),
        property: "a leader paused (SIGSTOP) longer than its lease performs no write after SIGCONT and demotes; another replica leads; nothing lost, nothing duplicated".to_owned(),
        runs: options.runs,
        ..DrillReport::default()
    };
    println!("drill pause — property: {}", report.property);
    let mut lab = Lab::start(options.clone(), "").await?;
    for run in 0..options.runs {
        let (slot, holder) = lab.leader()?;
        let stopped = Instant::now();
        lab.replicas.signal(slot, Signal::SIGSTOP)?;
        match lab.next_leader(&holder, stopped).await {
            Some(took) => report.abrupt.push(took),
            None => report.violations.push(format!(
                "run {run}: nobody took over from the paused leader"
            )),
        }
        // Stay paused past the lease, so the wake-up finds the term long gone.
        tokio::time::sleep_until(
            (stopped + options.lease_duration + Duration::from_secs(2)).into(),
        )
        .await;
        let woke_ms = now_ms();
        lab.replicas.signal(slot, Signal::SIGCONT)?;
        // Give it time to notice and to (not) write.
        let admin = lab.replicas.replicas[slot].admin;
        let deadline = Instant::now() + options.renew_deadline + Duration::from_secs(5);
        let mut demoted = false;
        while Instant::now() < deadline {
            if let Some(status) = admin_get(admin, "/status").await
                && status.contains("\"role\":\"follower\"")
            {
                demoted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let writes = lab.fence_writes_after(&holder, woke_ms);
        if writes > 0 {
            report.violations.push(format!(
                "run {run}: {holder} wrote {writes} time(s) after waking"
            ));
        }
        if !demoted {
            report
                .violations
                .push(format!("run {run}: {holder} did not demote after waking"));
        }
        lab.replicas.signal(slot, Signal::SIGTERM)?;
        lab.restart(slot).await?;
    }
    report.delivery = lab.finish().await?;
    Ok(report)
}

/// Cut the leader off from the API server: within the renew deadline it stops writing; nobody
/// else leads before the lease ran out; after healing it follows.
async fn partition(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let mut report = DrillReport {
        name: "partition".to_owned(),
        property: "a leader cut off from the API server stops writing within renew_deadline; no other replica leads before lease_duration - retry_period after the cut; nothing lost, nothing duplicated".to_owned(),
        runs: options.runs,
        ..DrillReport::default()
    };
    println!("drill partition — property: {}", report.property);
    let mut lab = Lab::start(options.clone(), "").await?;
    for run in 0..options.runs {
        let (slot, holder) = lab.leader()?;
        let cut = Instant::now();
        let cut_ms = now_ms();
        lab.emulator.state().faults().partition(&holder, None);
        match lab.next_leader(&holder, cut).await {
            Some(took) => {
                report.abrupt.push(took);
                let earliest = options.lease_duration.saturating_sub(options.retry_period);
                if took < earliest {
                    report.violations.push(format!(
                        "run {run}: a new leader after {took:?}, before {earliest:?}"
                    ));
                }
            }
            None => report.violations.push(format!(
                "run {run}: nobody took over from the cut-off leader"
            )),
        }
        // The fence must have stopped the old leader's writes by the renew deadline.
        let stop_by = cut_ms
            + i64::try_from((options.renew_deadline + Duration::from_millis(200)).as_millis())
                .unwrap_or(i64::MAX);
        let late = lab.fence_writes_after(&holder, stop_by);
        if late > 0 {
            report.violations.push(format!(
                "run {run}: {holder} wrote {late} time(s) after its renew deadline"
            ));
        }
        lab.emulator.state().faults().heal(Some(&holder));
        tokio::time::sleep(Duration::from_secs(1)).await;
        lab.replicas.signal(slot, Signal::SIGTERM)?;
        lab.restart(slot).await?;
    }
    report.delivery = lab.finish().await?;
    Ok(report)
}
