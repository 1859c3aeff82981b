//! `kevents-lab bench capture`: events/s sustained from the emulator's watch through durable
//! capture to the file sink, RSS of the leader and a follower, and CPU per 1,000 events early
//! (about 10 k events retained) and late (about 1 M retained).
//!
//! Owns the measurement only; it prints figures and never asserts a timing.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use kevents_testkit::{
    harness::{LEASE_NAMESPACE, admin_get, lab_pipeline_yaml_with, wait_leader_ready},
    kube::{GeneratorConfig, KubeEmulator, KubeEmulatorConfig},
    replica::{ReplicaOptions, Replicas},
};

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Event versions to push through.
    pub events: u64,
    /// Generator writes per second (should exceed what the collector can take).
    pub rate: f64,
    /// Working directory (cleared first).
    pub workdir: PathBuf,
    /// The `kevents` binary.
    pub kevents: PathBuf,
}

/// What the benchmark measured.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// Event versions captured.
    pub captured: u64,
    /// Records shipped to the file sink.
    pub shipped: u64,
    /// Seconds from the first to the last capture.
    pub capture_seconds: f64,
    /// Captured events per second over that window.
    pub capture_rate: f64,
    /// Median of the per-second capture rates while the generator ran.
    pub median_rate: f64,
    /// Leader RSS at the end, MiB.
    pub leader_rss_mib: f64,
    /// Peak leader RSS seen, MiB.
    pub leader_peak_rss_mib: f64,
    /// Follower RSS at the end, MiB.
    pub follower_rss_mib: f64,
    /// Leader CPU seconds per 1,000 events between 10 k and 20 k captured.
    pub cpu_per_1000_early: f64,
    /// Leader CPU seconds per 1,000 events over the last 10 % of the run.
    pub cpu_per_1000_late: f64,
}

impl BenchReport {
    /// Prints the figures.
    pub fn print(&self) {
        println!("bench capture");
        println!("  captured {} shipped {}", self.captured, self.shipped);
        println!(
            "  capture: {:.0} events/s over {:.1}s (median of 1-s samples {:.0}/s)",
            self.capture_rate, self.capture_seconds, self.median_rate
        );
        println!(
            "  leader RSS {:.1} MiB (peak {:.1} MiB); follower RSS {:.1} MiB",
            self.leader_rss_mib, self.leader_peak_rss_mib, self.follower_rss_mib
        );
        println!(
            "  leader CPU per 1,000 events while capturing: {:.3}s with ~10k retained, {:.3}s with ~{}k retained ({:.2}x)",
            self.cpu_per_1000_early,
            self.cpu_per_1000_late,
            self.captured / 1000,
            self.cpu_per_1000_late / self.cpu_per_1000_early
        );
    }
}

/// Reads `metric` (a counter without labels) from Prometheus text.
/// CPU seconds per 1,000 events captured between two capture counts.
struct CpuWindow {
    from: f64,
    to: f64,
    start: Option<(f64, f64)>,
    done: bool,
}

impl CpuWindow {
    fn new(from: f64, to: f64) -> Self {
        Self {
            from,
            to,
            start: None,
            done: false,
        }
    }

    /// Feeds one sample; returns the cost once the window is complete.
    fn sample(&mut self, captured: f64, cpu: f64) -> Option<f64> {
        if self.done {
            return None;
        }
        match self.start {
            None if captured >= self.from => self.start = Some((captured, cpu)),
            Some((at, cpu_at)) if captured >= self.to && captured > at => {
                self.done = true;
                return Some((cpu - cpu_at) / (captured - at) * 1000.0);
            }
            _ => {}
        }
        None
    }
}

fn metric_value(text: &str, metric: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(metric) && line[metric.len()..].starts_with(' '))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub(crate) fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User plus system CPU seconds of a process.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/pid/stat: 12 and 13 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs the capture benchmark.
///
/// # Errors
/// Fails if the lab cannot be set up.
pub async fn capture(options: BenchOptions) -> anyhow::Result<BenchReport> {
    if options.workdir.exists() {
        std::fs::remove_dir_all(&options.workdir)?;
    }
    std::fs::create_dir_all(&options.workdir)?;
    let emulator = KubeEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        KubeEmulatorConfig {
            compaction_interval: Some(Duration::from_secs(600)),
            ..KubeEmulatorConfig::default()
        },
    )
    .await
    .context("starting the Kubernetes API emulator")?;
    let kubeconfig = options.workdir.join("kubeconfig");
    emulator.write_kubeconfig(&kubeconfig, LEASE_NAMESPACE)?;
    let pipeline = lab_pipeline_yaml_with(&options.workdir, "1s", "  max_outbox_bytes: 4GiB\n");
    let mut replicas = Replicas::start(
        ReplicaOptions {
            kevents: options.kevents.clone(),
            workdir: options.workdir.clone(),
            kubeconfig,
            lease_namespace: LEASE_NAMESPACE.to_owned(),
            lease_duration: "15s".to_owned(),
            renew_deadline: "10s".to_owned(),
            retry_period: "2s".to_owned(),
            pipeline_yaml: pipeline,
            log_level: "warn".to_owned(),
        },
        2,
    )?;
    let leader = wait_leader_ready(&emulator, &replicas, Duration::from_secs(60))
        .await
        .context("no ready leader")?;
    let follower = 1 - leader;
    let leader_pid = replicas.replicas[leader]
        .pid()
        .context("leader not running")?;
    let follower_pid = replicas.replicas[follower]
        .pid()
        .context("follower not running")?;
    let admin = replicas.replicas[leader].admin;

    emulator.state().set_generator(Some(GeneratorConfig {
        events_per_second: options.rate,
        update_ratio: 0.3,
        seed: 5,
        namespaces: 20,
    }));
    let mut report = BenchReport::default();
    let mut samples: Vec<f64> = Vec::new();
    let mut last = (Instant::now(), 0.0f64);
    let mut first_capture: Option<Instant> = None;
    let mut last_capture = Instant::now();
    #[expect(clippy::cast_precision_loss, reason = "event counts far below 2^52")]
    let target = options.events as f64;
    // Two equal windows of steady capture while the generator runs: one with ~10 k events
    // retained, one near the end with nearly all of them retained.
    let width = (target / 10.0).max(10_000.0);
    let mut early = CpuWindow::new(10_000.0, 10_000.0 + width);
    let mut late = CpuWindow::new(target - 10_000.0 - width, target - 10_000.0);
    let mut generating = true;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(metrics) = admin_get(admin, "/metrics").await else {
            continue;
        };
        let captured = metric_value(&metrics, "kevents_events_captured_total").unwrap_or(0.0);
        let shipped = metric_value(&metrics, "kevents_events_shipped_total").unwrap_or(0.0);
        let now = Instant::now();
        if captured > last.1 {
            first_capture.get_or_insert(last.0);
            last_capture = now;
            if generating {
                samples.push((captured - last.1) / (now - last.0).as_secs_f64());
            }
        }
        last = (now, captured);
        report.leader_peak_rss_mib = report.leader_peak_rss_mib.max(rss_mib(leader_pid));
        let cpu = cpu_seconds(leader_pid);
        if let Some(cost) = early.sample(captured, cpu) {
            report.cpu_per_1000_early = cost;
        }
        if let Some(cost) = late.sample(captured, cpu) {
            report.cpu_per_1000_late = cost;
        }
        let stored = emulator.state().stats().ground_truth_versions as u64;
        if generating && stored >= options.events {
            emulator.state().set_generator(None);
            generating = false;
        }
        #[expect(clippy::cast_precision_loss, reason = "event counts far below 2^52")]
        let all_stored = stored as f64;
        if !generating && captured >= all_stored && shipped >= all_stored {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "counters of events"
            )]
            {
                report.captured = captured as u64;
                report.shipped = shipped as u64;
            }
            break;
        }
        if now >= deadline {
            anyhow::bail!("benchmark did not finish in 30 minutes (captured {captured})");
        }
    }
    let window = last_capture - first_capture.unwrap_or(last_capture);
    report.capture_seconds = window.as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "event counts far below 2^52")]
    if report.capture_seconds > 0.0 {
        report.capture_rate = report.captured as f64 / report.capture_seconds;
    }
    samples.sort_by(f64::total_cmp);
    report.median_rate = samples.get(samples.len() / 2).copied().unwrap_or(0.0);
    // Let allocations settle, then read resident memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    report.leader_rss_mib = rss_mib(leader_pid);
    report.follower_rss_mib = rss_mib(follower_pid);
    replicas.stop_all(Duration::from_secs(20));
    emulator.shutdown().await;
    Ok(report)
}
