//! `kevents-lab bench capture`: events/s sustained from the emulator's watch through durable
//! capture to the file sink, RSS of the leader and a follower, and CPU per 1,000 events early
//! (about 10 k events retained) and late (about 1 M retained).
//!
//! With `--rates`, the cost at the rates real clusters produce instead: for each rate, CPU
//! seconds per 1,000 events and RSS of the leader and the follower over a fixed window, and the
//! idle CPU of both with no events; with `--backlog`, a cold start over a retained backlog (CPU,
//! wall time, peak RSS).
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
    status_mib(pid, "VmRSS:")
}

/// The highest resident memory of a process so far (`VmHWM`), MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// The median of the finite `values` (the upper one for an even count); `None` for none.
pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
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
    let (lab, _) = start_lab(&options.workdir, &options.kevents, "1s", None, None).await?;
    let Lab {
        emulator,
        mut replicas,
        leader_pid,
        follower_pid,
        admin,
    } = lab;

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

/// A running lab: the emulator and two replicas, one of them leading.
struct Lab {
    emulator: KubeEmulator,
    replicas: Replicas,
    leader_pid: u32,
    follower_pid: u32,
    admin: SocketAddr,
}

/// Starts the emulator (empty unless `fill` events are generated first) and two replicas.
async fn start_lab(
    workdir: &std::path::Path,
    kevents: &std::path::Path,
    max_batch_age: &str,
    cache_capacity: Option<&str>,
    fill: Option<(u64, f64)>,
) -> anyhow::Result<(Lab, Instant)> {
    if workdir.exists() {
        std::fs::remove_dir_all(workdir)?;
    }
    std::fs::create_dir_all(workdir)?;
    let emulator = KubeEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        KubeEmulatorConfig {
            compaction_interval: Some(Duration::from_secs(3600)),
            ..KubeEmulatorConfig::default()
        },
    )
    .await
    .context("starting the Kubernetes API emulator")?;
    if let Some((events, rate)) = fill {
        // Creates only: every version is a retained event the first list returns.
        emulator.state().set_generator(Some(GeneratorConfig {
            events_per_second: rate,
            update_ratio: 0.0,
            seed: 7,
            namespaces: 20,
        }));
        let deadline = Instant::now() + Duration::from_secs(3600);
        while (emulator.state().stats().ground_truth_versions as u64) < events {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the generator did not fill {events} events in an hour"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        emulator.state().set_generator(None);
    }
    let kubeconfig = workdir.join("kubeconfig");
    emulator.write_kubeconfig(&kubeconfig, LEASE_NAMESPACE)?;
    let store_extra = match cache_capacity {
        Some(capacity) => format!("  max_outbox_bytes: 4GiB\n  cache_capacity: {capacity}\n"),
        None => "  max_outbox_bytes: 4GiB\n".to_owned(),
    };
    let pipeline = lab_pipeline_yaml_with(workdir, max_batch_age, &store_extra);
    let started = Instant::now();
    let replicas = Replicas::start(
        ReplicaOptions {
            kevents: kevents.to_owned(),
            workdir: workdir.to_owned(),
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
    let leader = wait_leader_ready(&emulator, &replicas, Duration::from_secs(3600))
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
    Ok((
        Lab {
            emulator,
            replicas,
            leader_pid,
            follower_pid,
            admin,
        },
        started,
    ))
}

impl Lab {
    /// Captured and shipped counts from the leader's metrics.
    async fn counts(&self) -> Option<(f64, f64)> {
        let metrics = admin_get(self.admin, "/metrics").await?;
        Some((
            metric_value(&metrics, "kevents_events_captured_total").unwrap_or(0.0),
            metric_value(&metrics, "kevents_events_shipped_total").unwrap_or(0.0),
        ))
    }

    /// Waits until everything the emulator stored is captured and shipped.
    async fn drained(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            #[expect(clippy::cast_precision_loss, reason = "event counts far below 2^52")]
            let stored = self.emulator.state().stats().ground_truth_versions as f64;
            if let Some((captured, shipped)) = self.counts().await
                && captured >= stored
                && shipped >= stored
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the leader did not capture and ship the {stored} stored events in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// CPU seconds per minute of leader and follower over `window` with nothing to do. Nothing
    /// is polled meanwhile, so the figure is the processes' own.
    async fn idle(&self, window: Duration) -> IdleFigure {
        let before = (cpu_seconds(self.leader_pid), cpu_seconds(self.follower_pid));
        tokio::time::sleep(window).await;
        let after = (cpu_seconds(self.leader_pid), cpu_seconds(self.follower_pid));
        let per_minute = 60.0 / window.as_secs_f64();
        IdleFigure {
            leader_cpu_per_minute: (after.0 - before.0) * per_minute,
            follower_cpu_per_minute: (after.1 - before.1) * per_minute,
            leader_rss_mib: rss_mib(self.leader_pid),
            follower_rss_mib: rss_mib(self.follower_pid),
        }
    }

    async fn stop(mut self) {
        self.replicas.stop_all(Duration::from_secs(20));
        self.emulator.shutdown().await;
    }
}

/// Settings of `bench capture --rates`.
#[derive(Debug, Clone)]
pub struct RatesOptions {
    /// Generator writes per second, one window each.
    pub rates: Vec<f64>,
    /// Length of each measured window.
    pub duration: Duration,
    /// Length of each idle window (no events).
    pub idle: Duration,
    /// The shipper's `max_batch_age`, as config text.
    pub max_batch_age: String,
    /// The store's `cache_capacity`, as config text (the product default when `None`).
    pub cache_capacity: Option<String>,
    /// Working directory (cleared first).
    pub workdir: PathBuf,
    /// The `kevents` binary.
    pub kevents: PathBuf,
}

/// CPU and memory with no events.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleFigure {
    /// Leader CPU seconds per minute.
    pub leader_cpu_per_minute: f64,
    /// Follower CPU seconds per minute.
    pub follower_cpu_per_minute: f64,
    /// Leader RSS at the end, MiB.
    pub leader_rss_mib: f64,
    /// Follower RSS at the end, MiB.
    pub follower_rss_mib: f64,
}

/// The figures of one rate.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateFigure {
    /// Generator writes per second asked for.
    pub rate: f64,
    /// Events captured in the window.
    pub events: f64,
    /// Seconds of the window.
    pub seconds: f64,
    /// Leader CPU seconds per 1,000 events.
    pub leader_cpu_per_1000: f64,
    /// Follower CPU seconds per minute.
    pub follower_cpu_per_minute: f64,
    /// Leader RSS at the end of the window, MiB.
    pub leader_rss_mib: f64,
    /// Median of the leader's RSS sampled every second of the window, MiB: one sample can fall
    /// while a batch is being sent, or just after.
    pub leader_median_rss_mib: f64,
    /// Median of the file-backed part of those samples (`RssFile`: the executable's pages), MiB.
    pub leader_median_file_mib: f64,
    /// Highest leader RSS seen in the window, MiB.
    pub leader_peak_rss_mib: f64,
    /// Follower RSS at the end of the window, MiB.
    pub follower_rss_mib: f64,
}

/// What `bench capture --rates` measured.
#[derive(Debug, Clone, Default)]
pub struct RatesReport {
    /// Idle before any event.
    pub idle_empty: IdleFigure,
    /// One entry per rate.
    pub rates: Vec<RateFigure>,
    /// Idle after the last rate, everything shipped.
    pub idle_after: IdleFigure,
    /// The shipper's batch age used.
    pub max_batch_age: String,
}

impl RatesReport {
    /// Prints the figures.
    pub fn print(&self) {
        println!(
            "bench capture --rates (30 % updates, shipper max_batch_age {})",
            self.max_batch_age
        );
        println!(
            "  {:>8} {:>8} {:>6} {:>16} {:>12} {:>12} {:>12} {:>12} {:>14} {:>14}",
            "rate/s",
            "events",
            "secs",
            "leader cpu/1k",
            "leader RSS",
            "(file)",
            "leader end",
            "leader peak",
            "follower RSS",
            "follower cpu/m"
        );
        for r in &self.rates {
            println!(
                "  {:>8.0} {:>8.0} {:>6.1} {:>15.3}s {:>8.1} MiB {:>8.1} MiB {:>8.1} MiB {:>8.1} MiB {:>10.1} MiB {:>13.3}s",
                r.rate,
                r.events,
                r.seconds,
                r.leader_cpu_per_1000,
                r.leader_median_rss_mib,
                r.leader_median_file_mib,
                r.leader_rss_mib,
                r.leader_peak_rss_mib,
                r.follower_rss_mib,
                r.follower_cpu_per_minute
            );
        }
        for (name, idle) in [
            ("idle, empty store", &self.idle_empty),
            ("idle, after the rates", &self.idle_after),
        ] {
            println!(
                "  {name}: leader {:.3} CPU s/min ({:.1} MiB), follower {:.3} CPU s/min ({:.1} MiB)",
                idle.leader_cpu_per_minute,
                idle.leader_rss_mib,
                idle.follower_cpu_per_minute,
                idle.follower_rss_mib
            );
        }
        if let (Some(low), Some(high)) = (
            self.rates
                .iter()
                .find(|r| (r.rate - 500.0).abs() < f64::EPSILON),
            self.rates
                .iter()
                .find(|r| (r.rate - 2000.0).abs() < f64::EPSILON),
        ) && high.leader_cpu_per_1000 > 0.0
        {
            println!(
                "  leader CPU per event at 500/s vs 2,000/s: {:.2}x",
                low.leader_cpu_per_1000 / high.leader_cpu_per_1000
            );
        }
    }
}

/// Runs `bench capture --rates`: idle, then each rate for a window, then idle again.
///
/// # Errors
/// Fails if the lab cannot be set up or the leader falls behind for good.
pub async fn rates(options: RatesOptions) -> anyhow::Result<RatesReport> {
    let (lab, _) = start_lab(
        &options.workdir,
        &options.kevents,
        &options.max_batch_age,
        options.cache_capacity.as_deref(),
        None,
    )
    .await?;
    let result = measure_rates(&lab, &options).await;
    lab.stop().await;
    result
}

async fn measure_rates(lab: &Lab, options: &RatesOptions) -> anyhow::Result<RatesReport> {
    let mut report = RatesReport {
        max_batch_age: options.max_batch_age.clone(),
        ..RatesReport::default()
    };
    // Let start-up (first list, store take-over) settle before the idle window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    report.idle_empty = lab.idle(options.idle).await;
    for (index, &rate) in options.rates.iter().enumerate() {
        lab.emulator.state().set_generator(Some(GeneratorConfig {
            events_per_second: rate,
            update_ratio: 0.3,
            seed: 5 + index as u64,
            namespaces: 20,
        }));
        // Warm up: a steady pipeline, not its first commit.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (from_captured, _) = lab.counts().await.context("leader metrics")?;
        let started = Instant::now();
        let cpu_from = (cpu_seconds(lab.leader_pid), cpu_seconds(lab.follower_pid));
        let (mut samples, mut file_samples) = (Vec::new(), Vec::new());
        while started.elapsed() < options.duration {
            tokio::time::sleep(Duration::from_secs(1).min(options.duration)).await;
            samples.push(rss_mib(lab.leader_pid));
            file_samples.push(status_mib(lab.leader_pid, "RssFile:"));
        }
        let peak = samples.iter().copied().fold(0.0f64, f64::max);
        let cpu_to = (cpu_seconds(lab.leader_pid), cpu_seconds(lab.follower_pid));
        let seconds = started.elapsed().as_secs_f64();
        let leader_rss_mib = rss_mib(lab.leader_pid);
        let follower_rss_mib = rss_mib(lab.follower_pid);
        let (to_captured, _) = lab.counts().await.context("leader metrics")?;
        lab.emulator.state().set_generator(None);
        let events = to_captured - from_captured;
        report.rates.push(RateFigure {
            rate,
            events,
            seconds,
            leader_cpu_per_1000: if events > 0.0 {
                (cpu_to.0 - cpu_from.0) / events * 1000.0
            } else {
                0.0
            },
            follower_cpu_per_minute: (cpu_to.1 - cpu_from.1) * 60.0 / seconds,
            leader_rss_mib,
            leader_median_rss_mib: median(samples).unwrap_or(leader_rss_mib),
            leader_median_file_mib: median(file_samples).unwrap_or(0.0),
            leader_peak_rss_mib: peak.max(leader_rss_mib),
            follower_rss_mib,
        });
        lab.drained(Duration::from_secs(300)).await?;
    }
    report.idle_after = lab.idle(options.idle).await;
    Ok(report)
}

/// Settings of `bench capture --backlog`.
#[derive(Debug, Clone)]
pub struct BacklogOptions {
    /// Retained events the generator creates before kevents starts.
    pub events: u64,
    /// Generator writes per second while filling.
    pub fill_rate: f64,
    /// The shipper's `max_batch_age`, as config text.
    pub max_batch_age: String,
    /// The store's `cache_capacity`, as config text (the product default when `None`).
    pub cache_capacity: Option<String>,
    /// Working directory (cleared first).
    pub workdir: PathBuf,
    /// The `kevents` binary.
    pub kevents: PathBuf,
}

/// What `bench capture --backlog` measured.
#[derive(Debug, Clone, Default)]
pub struct BacklogReport {
    /// Retained events.
    pub events: u64,
    /// Seconds from starting the replicas until every event was captured and shipped.
    pub wall_seconds: f64,
    /// Leader CPU seconds (user + system) over that time.
    pub leader_cpu_seconds: f64,
    /// Peak leader RSS (the kernel's high-water mark, `VmHWM`), MiB.
    pub leader_peak_rss_mib: f64,
    /// Leader RSS at the end, MiB.
    pub leader_rss_mib: f64,
    /// Follower RSS at the end, MiB.
    pub follower_rss_mib: f64,
}

impl BacklogReport {
    /// Prints the figures.
    pub fn print(&self) {
        #[expect(clippy::cast_precision_loss, reason = "event counts far below 2^52")]
        let per_1000 = self.leader_cpu_seconds / self.events.max(1) as f64 * 1000.0;
        println!("bench capture --backlog {}", self.events);
        println!(
            "  cold start over {} retained events: all captured and shipped in {:.1}s wall",
            self.events, self.wall_seconds
        );
        println!(
            "  leader CPU {:.1}s ({per_1000:.3}s per 1,000 events); leader RSS peak {:.1} MiB, end {:.1} MiB; follower {:.1} MiB",
            self.leader_cpu_seconds,
            self.leader_peak_rss_mib,
            self.leader_rss_mib,
            self.follower_rss_mib
        );
    }
}

/// Runs `bench capture --backlog`: fills the emulator, then starts kevents and measures the
/// cold start until everything is shipped.
///
/// # Errors
/// Fails if the lab cannot be set up or the backlog is not shipped within an hour.
pub async fn backlog(options: BacklogOptions) -> anyhow::Result<BacklogReport> {
    let (lab, started) = start_lab(
        &options.workdir,
        &options.kevents,
        &options.max_batch_age,
        options.cache_capacity.as_deref(),
        Some((options.events, options.fill_rate)),
    )
    .await?;
    let result = measure_backlog(&lab, started, options.events).await;
    lab.stop().await;
    result
}

async fn measure_backlog(
    lab: &Lab,
    started: Instant,
    events: u64,
) -> anyhow::Result<BacklogReport> {
    let mut report = BacklogReport {
        events,
        ..BacklogReport::default()
    };
    #[expect(clippy::cast_precision_loss, reason = "event counts far below 2^52")]
    let stored = lab.emulator.state().stats().ground_truth_versions as f64;
    let deadline = started + Duration::from_secs(3600);
    loop {
        if let Some((captured, shipped)) = lab.counts().await
            && captured >= stored
            && shipped >= stored
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the backlog was not shipped within an hour"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    report.wall_seconds = started.elapsed().as_secs_f64();
    report.leader_cpu_seconds = cpu_seconds(lab.leader_pid);
    report.leader_peak_rss_mib = peak_rss_mib(lab.leader_pid);
    report.leader_rss_mib = rss_mib(lab.leader_pid);
    report.follower_rss_mib = rss_mib(lab.follower_pid);
    Ok(report)
}
