//! `kevents-lab bench peers`: kevents against the OpenTelemetry Collector's two Kubernetes event
//! receivers (`k8sobjects` watching core/v1 `events`, and `k8s_events`), each gated by the
//! `k8s_leader_elector` extension and written by the `file` exporter. Every tool gets a fresh real
//! kube-apiserver (client-go writes Leases as protobuf, which the emulator does not take), three
//! replicas, the same written stream (the lab's event writer, whose record of confirmed versions
//! is the ground truth), and the same two failovers: SIGTERM of the leader at a third of the run,
//! kill -9 of the next leader at two thirds, each restarted as a Deployment would, all with lease
//! 15 s / renew deadline 10 s / retry period 2 s.
//!
//! Owns the collector's config and processes, the reading of its OTLP JSON lines, and the
//! per-tool figures: versions missing and duplicated, failover gap (signal → another replica
//! holds the Lease), CPU seconds per 1,000 versions, RSS. It prints figures and never asserts a
//! timing; a delivered record it cannot key counts as unkeyed, never as delivered.

use std::{
    collections::HashMap,
    fs::OpenOptions,
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use k8s_openapi::{
    api::core::v1::{Event, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{Api, api::PostParams};
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::Value;

use kevents_testkit::{
    apiserver::RealApiServerOptions,
    backend::Backend,
    harness::{LEASE_NAME, LEASE_NAMESPACE, lab_pipeline_yaml},
    oracle::{self, Key, Report},
    replica::{ReplicaOptions, Replicas},
    writer::{EventWriter, Pace, WriterConfig, WriterStats},
};

use crate::bench::{cpu_seconds, median, rss_mib};

/// OpenTelemetry's leader-election defaults, used for both tools.
const LEASE_DURATION: &str = "15s";
const RENEW_DEADLINE: &str = "10s";
const RETRY_PERIOD: &str = "2s";
/// The collector's Lease (in [`LEASE_NAMESPACE`]).
const OTEL_LEASE: &str = "otelcol";
/// Namespaces the writer writes to; only their events are compared.
const NAMESPACES: [&str; 3] = ["peers-a", "peers-b", "peers-c"];
/// Namespace of the readiness probes (never compared).
const PROBE_NAMESPACE: &str = "peers-probe";
/// How often CPU and peak RSS are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// A tool under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tool {
    /// `kevents run`.
    Kevents,
    /// The collector with the `k8sobjects` receiver, watch mode, core/v1 `events`.
    OtelObjects,
    /// The collector with the `k8s_events` receiver.
    OtelEvents,
}

impl Tool {
    /// Its name in the table.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Kevents => "kevents",
            Self::OtelObjects => "otelcol k8sobjects",
            Self::OtelEvents => "otelcol k8s_events",
        }
    }

    fn receiver(self) -> Option<&'static str> {
        match self {
            Self::Kevents => None,
            Self::OtelObjects => Some("k8sobjects"),
            Self::OtelEvents => Some("k8s_events"),
        }
    }
}

impl std::str::FromStr for Tool {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        match text {
            "kevents" => Ok(Self::Kevents),
            "k8sobjects" => Ok(Self::OtelObjects),
            "k8s_events" => Ok(Self::OtelEvents),
            other => bail!("unknown tool {other:?} (kevents, k8sobjects or k8s_events)"),
        }
    }
}

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct PeersOptions {
    /// Writing time per run (SIGTERM at one third, kill -9 at two thirds).
    pub duration: Duration,
    /// Writes per second.
    pub rate: f64,
    /// Share of writes that bump the count of a recent event.
    pub update_ratio: f64,
    /// Runs per tool.
    pub runs: usize,
    /// Replicas per tool.
    pub replicas: usize,
    /// Tools, in order.
    pub tools: Vec<Tool>,
    /// Working directory (cleared first).
    pub workdir: PathBuf,
    /// The `kevents` binary.
    pub kevents: PathBuf,
    /// The collector built by `scripts/otelcol.sh` (needed for the collector tools only).
    pub otelcol: Option<PathBuf>,
}

/// What one run of one tool measured.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The tool.
    pub tool: Tool,
    /// Delivery against the writer's record.
    pub report: Report,
    /// What the writer wrote.
    pub writer: WriterStats,
    /// SIGTERM of the leader → another replica holds the Lease.
    pub sigterm_gap: Option<Duration>,
    /// kill -9 of the leader → another replica holds the Lease.
    pub kill_gap: Option<Duration>,
    /// CPU s per 1,000 versions of the first leader while it led (start of writing to SIGTERM).
    pub leader_cpu_per_1000: Option<f64>,
    /// CPU s per 1,000 versions of every replica process of the run, start to end.
    pub all_cpu_per_1000: f64,
    /// `VmRSS` of the first leader just before its SIGTERM, MiB.
    pub leader_rss_mib: f64,
    /// Highest `VmHWM` of any replica process, MiB.
    pub peak_rss_mib: f64,
}

/// The collector binary: `$OTELCOL_BIN`, else what `scripts/otelcol.sh` prints (it builds the
/// pinned version into `.tools/otelcol` when missing, ~5 min cold).
///
/// # Errors
/// Fails if the script fails (its stderr names the failing step) or prints no existing path.
pub fn otelcol_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("OTELCOL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let script = kevents_testkit::repo_root().join("scripts/otelcol.sh");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): the OpenTelemetry Collector could not be built",
            script.display(),
            out.status
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(text.lines().last().unwrap_or_default().trim());
    anyhow::ensure!(
        path.is_file(),
        "{} printed no collector binary: {text}",
        script.display()
    );
    Ok(path)
}

/// Runs every tool `runs` times, in turns (kevents, collector, …, kevents, collector, …), so
/// load from elsewhere on the machine spreads over all of them.
///
/// # Errors
/// Fails if an API server, a replica or an output cannot be set up or read.
pub async fn run(options: &PeersOptions) -> anyhow::Result<Vec<RunOutcome>> {
    anyhow::ensure!(
        options.rate > 0.0 && options.runs > 0 && options.replicas >= 2,
        "--rate and --runs must be positive and --replicas at least 2"
    );
    if options.workdir.exists() {
        std::fs::remove_dir_all(&options.workdir)
            .with_context(|| format!("clearing {}", options.workdir.display()))?;
    }
    let mut outcomes = Vec::new();
    for run in 0..options.runs {
        for &tool in &options.tools {
            let dir = options
                .workdir
                .join(format!("{}-{run}", tool.name().replace(' ', "-")));
            println!("run {} of {}: {}", run + 1, options.runs, tool.name());
            let outcome = run_tool(options, tool, &dir, run).await.with_context(|| {
                format!("{} (run {}, in {})", tool.name(), run + 1, dir.display())
            })?;
            print_row(&outcome_cells(&outcome));
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

async fn run_tool(
    options: &PeersOptions,
    tool: Tool,
    dir: &Path,
    run: usize,
) -> anyhow::Result<RunOutcome> {
    std::fs::create_dir_all(dir.join("out"))?;
    let backend = Backend::real(RealApiServerOptions {
        // Nothing expires during a run: every version written stays comparable.
        event_ttl: Duration::from_secs(3600),
        ..RealApiServerOptions::default()
    })
    .await?;
    for namespace in NAMESPACES.iter().chain([&PROBE_NAMESPACE]) {
        backend.ensure_namespace(namespace).await?;
    }
    let kubeconfig = dir.join("kubeconfig");
    backend.write_kubeconfig(&kubeconfig, LEASE_NAMESPACE)?;
    let mut fleet = match tool.receiver() {
        None => Fleet::Kevents(Replicas::start(
            ReplicaOptions {
                kevents: options.kevents.clone(),
                workdir: dir.to_owned(),
                kubeconfig,
                lease_namespace: LEASE_NAMESPACE.to_owned(),
                lease_duration: LEASE_DURATION.to_owned(),
                renew_deadline: RENEW_DEADLINE.to_owned(),
                retry_period: RETRY_PERIOD.to_owned(),
                pipeline_yaml: lab_pipeline_yaml(dir, "1s"),
                log_level: "warn".to_owned(),
            },
            options.replicas,
        )?),
        Some(receiver) => Fleet::Otel(Collectors::start(
            options
                .otelcol
                .clone()
                .context("no collector binary (scripts/otelcol.sh builds it)")?,
            dir.to_owned(),
            kubeconfig,
            receiver,
            options.replicas,
        )?),
    };
    let mut meter = Meter::default();
    wait_ready(&backend, tool, dir, &fleet, &mut meter).await?;

    let holder = backend
        .lease_holder_of(LEASE_NAMESPACE, fleet.lease_name())
        .await?
        .context("no Lease holder after the probe arrived")?;
    let first_leader = fleet
        .slot_of(&holder)
        .and_then(|slot| fleet.pid(slot))
        .with_context(|| format!("the holder {holder} is not a replica of this run"))?;

    let writer = EventWriter::new(
        backend.client(),
        WriterConfig {
            namespaces: NAMESPACES.iter().map(|&n| n.to_owned()).collect(),
            seed: 11 + run as u64,
        },
    )
    .spawn(Pace {
        events_per_second: options.rate,
        update_ratio: options.update_ratio,
    });
    let started = Instant::now();
    let leader_cpu_start = cpu_seconds(first_leader);

    idle_until(started + options.duration / 3, &fleet, &mut meter).await;
    let stats = writer.stats();
    #[expect(clippy::cast_precision_loss, reason = "event counts far below 2^52")]
    let written = (stats.created + stats.updated) as f64;
    let leader_cpu = cpu_seconds(first_leader) - leader_cpu_start;
    let leader_cpu_per_1000 = (written > 0.0).then(|| leader_cpu / written * 1000.0);
    let leader_rss_mib = rss_mib(first_leader);
    let sigterm_gap = failover(&backend, &mut fleet, &mut meter, Signal::SIGTERM).await?;

    idle_until(started + options.duration * 2 / 3, &fleet, &mut meter).await;
    let kill_gap = failover(&backend, &mut fleet, &mut meter, Signal::SIGKILL).await?;

    idle_until(started + options.duration, &fleet, &mut meter).await;
    let writer = writer.stop().await.context("the event writer failed")?;
    let truth = writer.ground_truth();
    let stats = writer.stats();
    drain(tool, dir, &truth, &fleet, &mut meter).await?;
    meter.sample(&fleet.pids());
    fleet.stop_all(Duration::from_secs(20));
    backend.shutdown().await;

    let (delivered, unkeyed) = delivered(tool, dir, &truth)?;
    let report = oracle::compare(&truth, &delivered, unkeyed);
    #[expect(clippy::cast_precision_loss, reason = "event counts far below 2^52")]
    let all_cpu_per_1000 = meter.total_cpu() / (truth.len().max(1) as f64) * 1000.0;
    Ok(RunOutcome {
        tool,
        report,
        writer: stats,
        sigterm_gap,
        kill_gap,
        leader_cpu_per_1000,
        all_cpu_per_1000,
        leader_rss_mib,
        peak_rss_mib: meter.peak_rss_mib,
    })
}

/// Creates a probe Event every few seconds until one shows up in the tool's output: the leader
/// is elected and its watch is running (the collector's `k8s_events` drops events stamped
/// before the process started, so a probe may need a second try).
async fn wait_ready(
    backend: &Backend,
    tool: Tool,
    dir: &Path,
    fleet: &Fleet,
    meter: &mut Meter,
) -> anyhow::Result<()> {
    let api: Api<Event> = Api::namespaced(backend.client(), PROBE_NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut probes: Vec<String> = Vec::new();
    let mut next_probe = Instant::now();
    loop {
        if Instant::now() >= next_probe {
            let token = format!("peers-probe-{:08x}", rand::random::<u32>());
            api.create(&PostParams::default(), &probe_event(&token))
                .await
                .context("creating a probe Event")?;
            probes.push(token);
            next_probe = Instant::now() + Duration::from_secs(5);
        }
        let text = output_text(tool, dir);
        if probes.iter().any(|token| text.contains(token.as_str())) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "no probe Event reached the output of {} within 120 s (logs in {})",
                tool.name(),
                dir.display()
            );
        }
        meter.sample(&fleet.pids());
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

fn probe_event(token: &str) -> Event {
    let now = Time(jiff::Timestamp::now());
    Event {
        metadata: ObjectMeta {
            name: Some(token.to_owned()),
            namespace: Some(PROBE_NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some("probe".to_owned()),
            namespace: Some(PROBE_NAMESPACE.to_owned()),
            ..ObjectReference::default()
        },
        reason: Some("Probe".to_owned()),
        message: Some(token.to_owned()),
        type_: Some("Normal".to_owned()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Event::default()
    }
}

/// Everything the tool wrote so far, as text (for the probe search).
fn output_text(tool: Tool, dir: &Path) -> String {
    output_files(tool, dir)
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .collect()
}

fn output_files(tool: Tool, dir: &Path) -> Vec<PathBuf> {
    match tool {
        Tool::Kevents => oracle::sink_files(&dir.join("out/events.ndjson")),
        Tool::OtelObjects | Tool::OtelEvents => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("out"))
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            files
        }
    }
}

/// Sends `signal` to the Lease holder, waits until another replica holds the Lease (the gap),
/// then restarts the signalled slot.
async fn failover(
    backend: &Backend,
    fleet: &mut Fleet,
    meter: &mut Meter,
    signal: Signal,
) -> anyhow::Result<Option<Duration>> {
    let holder = backend
        .lease_holder_of(LEASE_NAMESPACE, fleet.lease_name())
        .await?
        .context("no leader to fail over from")?;
    let slot = fleet
        .slot_of(&holder)
        .with_context(|| format!("the leader {holder} is not a replica of this run"))?;
    meter.sample(&fleet.pids());
    let signalled = Instant::now();
    fleet.signal(slot, signal)?;
    let deadline = signalled + Duration::from_secs(90);
    let mut last_sample = Instant::now();
    let gap = loop {
        if let Ok(Some(now)) = backend
            .lease_holder_of(LEASE_NAMESPACE, fleet.lease_name())
            .await
            && now != holder
        {
            break Some(signalled.elapsed());
        }
        if Instant::now() >= deadline {
            break None;
        }
        if last_sample.elapsed() >= SAMPLE_EVERY {
            meter.sample(&fleet.pids());
            last_sample = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    match gap {
        Some(gap) => println!(
            "  {signal:?} → another replica leads after {:.2} s",
            gap.as_secs_f64()
        ),
        None => println!("  {signal:?} → no other replica led within 90 s"),
    }
    fleet.wait_exit(slot, Duration::from_secs(30));
    fleet.restart(slot)?;
    Ok(gap)
}

/// Waits until every written version is delivered, or nothing new arrived for 10 s (a tool that
/// lost versions never delivers them), at most 2 min.
async fn drain(
    tool: Tool,
    dir: &Path,
    truth: &[Key],
    fleet: &Fleet,
    meter: &mut Meter,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (usize::MAX, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        meter.sample(&fleet.pids());
        let (keys, _) = delivered(tool, dir, truth)?;
        let report = oracle::compare(truth, &keys, 0);
        if report.missing == 0 {
            // A straggling duplicate would show within a batch age or a flush.
            tokio::time::sleep(Duration::from_secs(3)).await;
            return Ok(());
        }
        if keys.len() != last.0 {
            last = (keys.len(), Instant::now());
        }
        if last.1.elapsed() >= Duration::from_secs(10) || Instant::now() >= deadline {
            return Ok(());
        }
    }
}

/// The delivered keys of the writer's namespaces, and the records there that have none.
fn delivered(tool: Tool, dir: &Path, truth: &[Key]) -> anyhow::Result<(Vec<Key>, usize)> {
    let files = output_files(tool, dir);
    let ours = |namespace: Option<&str>| namespace.is_some_and(|ns| NAMESPACES.contains(&ns));
    match tool {
        Tool::Kevents => Ok(oracle::read_delivered_where(&files, |row| {
            ours(row.get("Namespace").and_then(Value::as_str))
        })?),
        Tool::OtelObjects | Tool::OtelEvents => {
            let by_count = versions_by_count(truth);
            let mut keys = Vec::new();
            let mut unkeyed = 0;
            for file in &files {
                let reader = std::io::BufReader::new(std::fs::File::open(file)?);
                for line in reader.lines() {
                    let line = line?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let Ok(request) = serde_json::from_str::<Value>(&line) else {
                        unkeyed += 1;
                        continue;
                    };
                    for record in log_records(&request) {
                        let (namespace, key) = if tool == Tool::OtelObjects {
                            object_key(&record)
                        } else {
                            event_key(&record, &by_count)
                        };
                        if !ours(namespace.as_deref()) {
                            continue;
                        }
                        match key {
                            Some(key) => keys.push(key),
                            None => unkeyed += 1,
                        }
                    }
                }
            }
            Ok((keys, unkeyed))
        }
    }
}

/// The log records of one OTLP JSON line, each as `{"body": …, "attributes": {…}}` with OTLP
/// `AnyValue`s turned into plain JSON.
fn log_records(request: &Value) -> Vec<Value> {
    let list = |value: &Value, key: &str| -> Vec<Value> {
        value
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut records = Vec::new();
    for resource in list(request, "resourceLogs") {
        for scope in list(&resource, "scopeLogs") {
            for record in list(&scope, "logRecords") {
                let attributes = key_values(record.get("attributes"));
                let body = record.get("body").map_or(Value::Null, any_value);
                records.push(serde_json::json!({"body": body, "attributes": attributes}));
            }
        }
    }
    records
}

/// OTLP JSON `AnyValue` → plain JSON (`intValue`s, which OTLP JSON writes as strings, become
/// numbers).
fn any_value(value: &Value) -> Value {
    if let Some(text) = value.get("stringValue") {
        return text.clone();
    }
    if let Some(int) = value.get("intValue") {
        return match int {
            Value::String(text) => text.parse::<i64>().map_or(Value::Null, Value::from),
            other => other.clone(),
        };
    }
    if let Some(kv) = value.get("kvlistValue") {
        return key_values(kv.get("values"));
    }
    if let Some(array) = value.get("arrayValue") {
        return Value::Array(
            array
                .get("values")
                .and_then(Value::as_array)
                .map(|values| values.iter().map(any_value).collect())
                .unwrap_or_default(),
        );
    }
    ["boolValue", "doubleValue", "bytesValue"]
        .iter()
        .find_map(|key| value.get(*key).cloned())
        .unwrap_or(Value::Null)
}

/// OTLP JSON `[{"key": …, "value": AnyValue}]` → a JSON object.
fn key_values(list: Option<&Value>) -> Value {
    let mut map = serde_json::Map::new();
    for entry in list.and_then(Value::as_array).into_iter().flatten() {
        if let Some(key) = entry.get("key").and_then(Value::as_str) {
            let value = entry.get("value").map_or(Value::Null, any_value);
            map.insert(key.to_owned(), value);
        }
    }
    Value::Object(map)
}

/// `k8sobjects` in watch mode: the body is the watch event, `{"type": …, "object": Event}`.
fn object_key(record: &Value) -> (Option<String>, Option<Key>) {
    let metadata = record.pointer("/body/object/metadata");
    let field = |name: &str| {
        metadata
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let key = field("uid").zip(field("resourceVersion"));
    (field("namespace"), key)
}

/// `k8s_events`: the body is the message; the Event's uid and count are attributes, and its
/// resourceVersion is not exported at all. The writer's versions of one uid carry counts 1, 2, 3,
/// … in order, so (uid, count) names one version; a count the writer never wrote keys as
/// `count=N`, which no stored version matches (unexpected).
fn event_key(
    record: &Value,
    by_count: &HashMap<(String, i64), String>,
) -> (Option<String>, Option<Key>) {
    let attributes = record.get("attributes");
    let get = |name: &str| attributes.and_then(|a| a.get(name));
    let namespace = get("k8s.namespace.name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let uid = get("k8s.event.uid").and_then(Value::as_str);
    // client-go's recorder leaves count at 0 on series events; the writer always sets it.
    let count = get("k8s.event.count").and_then(Value::as_i64).unwrap_or(0);
    let key = uid.map(|uid| {
        let rv = by_count
            .get(&(uid.to_owned(), count))
            .cloned()
            .unwrap_or_else(|| format!("count={count}"));
        (uid.to_owned(), rv)
    });
    (namespace, key)
}

/// (uid, count) → resourceVersion of the writer's record (its n-th version of a uid has count n).
fn versions_by_count(truth: &[Key]) -> HashMap<(String, i64), String> {
    let mut seen: HashMap<&str, i64> = HashMap::new();
    let mut map = HashMap::new();
    for (uid, rv) in truth {
        let count = seen.entry(uid.as_str()).or_default();
        *count += 1;
        map.insert((uid.clone(), *count), rv.clone());
    }
    map
}

/// CPU of every process seen, and the highest peak RSS.
#[derive(Debug, Default)]
struct Meter {
    cpu: HashMap<u32, f64>,
    peak_rss_mib: f64,
}

impl Meter {
    fn sample(&mut self, pids: &[u32]) {
        for &pid in pids {
            let cpu = cpu_seconds(pid);
            let entry = self.cpu.entry(pid).or_default();
            *entry = entry.max(cpu);
            self.peak_rss_mib = self.peak_rss_mib.max(hwm_mib(pid));
        }
    }

    fn total_cpu(&self) -> f64 {
        self.cpu.values().sum()
    }
}

/// `VmHWM` (peak resident set) of a process, MiB; 0 when it is gone.
fn hwm_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn idle_until(at: Instant, fleet: &Fleet, meter: &mut Meter) {
    loop {
        meter.sample(&fleet.pids());
        let now = Instant::now();
        if now >= at {
            return;
        }
        tokio::time::sleep(SAMPLE_EVERY.min(at - now)).await;
    }
}

/// The replicas of one tool.
enum Fleet {
    Kevents(Replicas),
    Otel(Collectors),
}

impl Fleet {
    fn lease_name(&self) -> &str {
        match self {
            Self::Kevents(_) => LEASE_NAME,
            Self::Otel(_) => OTEL_LEASE,
        }
    }

    fn slot_of(&self, holder: &str) -> Option<usize> {
        match self {
            Self::Kevents(replicas) => replicas.slot_of(holder),
            Self::Otel(collectors) => collectors.slot_of(holder),
        }
    }

    fn pid(&self, slot: usize) -> Option<u32> {
        match self {
            Self::Kevents(replicas) => replicas
                .replicas
                .get(slot)
                .and_then(kevents_testkit::replica::Replica::pid),
            Self::Otel(collectors) => collectors.members.get(slot).and_then(Member::pid),
        }
    }

    fn pids(&self) -> Vec<u32> {
        let slots = match self {
            Self::Kevents(replicas) => replicas.replicas.len(),
            Self::Otel(collectors) => collectors.members.len(),
        };
        (0..slots).filter_map(|slot| self.pid(slot)).collect()
    }

    fn signal(&self, slot: usize, signal: Signal) -> std::io::Result<()> {
        match self {
            Self::Kevents(replicas) => replicas.signal(slot, signal),
            Self::Otel(_) => {
                let pid = self.pid(slot).ok_or_else(|| {
                    std::io::Error::other(format!("collector {slot} is not running"))
                })?;
                let pid = i32::try_from(pid).map_err(std::io::Error::other)?;
                nix::sys::signal::kill(Pid::from_raw(pid), signal).map_err(std::io::Error::other)
            }
        }
    }

    fn wait_exit(&mut self, slot: usize, timeout: Duration) {
        match self {
            Self::Kevents(replicas) => {
                let _ = replicas.wait_exit(slot, timeout);
            }
            Self::Otel(collectors) => collectors.wait_exit(slot, timeout),
        }
    }

    fn restart(&mut self, slot: usize) -> std::io::Result<()> {
        match self {
            Self::Kevents(replicas) => replicas.restart(slot),
            Self::Otel(collectors) => collectors.restart(slot),
        }
    }

    fn stop_all(&mut self, timeout: Duration) {
        match self {
            Self::Kevents(replicas) => replicas.stop_all(timeout),
            Self::Otel(collectors) => collectors.stop_all(timeout),
        }
    }
}

/// Collector processes, one config, log and output file per process.
struct Collectors {
    binary: PathBuf,
    dir: PathBuf,
    kubeconfig: PathBuf,
    receiver: &'static str,
    members: Vec<Member>,
}

struct Member {
    generation: u32,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Collectors {
    fn start(
        binary: PathBuf,
        dir: PathBuf,
        kubeconfig: PathBuf,
        receiver: &'static str,
        count: usize,
    ) -> std::io::Result<Self> {
        let mut set = Self {
            binary,
            dir,
            kubeconfig,
            receiver,
            members: Vec::new(),
        };
        for slot in 0..count {
            let member = set.spawn(slot, 0)?;
            set.members.push(member);
        }
        Ok(set)
    }

    fn spawn(&self, slot: usize, generation: u32) -> std::io::Result<Member> {
        let name = format!("otelcol-{slot}-g{generation}");
        let out = self.dir.join("out").join(format!("{name}.jsonl"));
        let config = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&config, collector_config(self.receiver, &out))?;
        let log = self.dir.join(format!("{name}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&log)?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&config)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(Member {
            generation,
            log,
            child: Some(child),
        })
    }

    /// The running slot whose log names `holder` (the extension logs its random lease-holder
    /// UUID when it starts).
    fn slot_of(&self, holder: &str) -> Option<usize> {
        self.members.iter().position(|m| {
            m.child.is_some()
                && std::fs::read_to_string(&m.log).is_ok_and(|text| text.contains(holder))
        })
    }

    fn wait_exit(&mut self, slot: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let Some(child) = self.members.get_mut(slot).and_then(|m| m.child.as_mut()) else {
            return;
        };
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                self.members[slot].child = None;
                return;
            }
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn restart(&mut self, slot: usize) -> std::io::Result<()> {
        let generation = self.members.get(slot).map_or(0, |m| m.generation + 1);
        if let Some(mut child) = self.members.get_mut(slot).and_then(|m| m.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let member = self.spawn(slot, generation)?;
        self.members[slot] = member;
        Ok(())
    }

    fn stop_all(&mut self, timeout: Duration) {
        for member in &self.members {
            if let Some(pid) = member.pid().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        for slot in 0..self.members.len() {
            self.wait_exit(slot, timeout);
        }
    }
}

impl Drop for Collectors {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// One collector's config: the receiver gated by `k8s_leader_elector` (OpenTelemetry's lease
/// defaults spelled out), the file exporter (OTLP JSON lines, flushed every second), and no
/// telemetry listener (three replicas share one host).
fn collector_config(receiver: &str, out: &Path) -> String {
    let receiver_yaml = match receiver {
        "k8sobjects" => {
            "  k8sobjects:\n    auth_type: kubeConfig\n    k8s_leader_elector: k8s_leader_elector\n    \
             objects:\n      - name: events\n        group: \"\"\n        mode: watch\n"
        }
        _ => {
            "  k8s_events:\n    auth_type: kubeConfig\n    k8s_leader_elector: k8s_leader_elector\n"
        }
    };
    format!(
        "extensions:\n  k8s_leader_elector:\n    auth_type: kubeConfig\n    lease_name: {OTEL_LEASE}\n    \
         lease_namespace: {LEASE_NAMESPACE}\n    lease_duration: {LEASE_DURATION}\n    \
         renew_deadline: {RENEW_DEADLINE}\n    retry_period: {RETRY_PERIOD}\n\
         receivers:\n{receiver_yaml}\
         exporters:\n  file:\n    path: {out}\n    format: json\n    flush_interval: 1s\n\
         service:\n  extensions: [k8s_leader_elector]\n  telemetry:\n    metrics:\n      level: none\n  \
         pipelines:\n    logs:\n      receivers: [{receiver}]\n      exporters: [file]\n",
        out = out.display(),
    )
}

const HEADER: [&str; 9] = [
    "tool",
    "stored",
    "missing",
    "duplicated",
    "gap SIGTERM",
    "gap kill -9",
    "CPU s/1k leader",
    "CPU s/1k all",
    "RSS MiB leader/peak",
];

fn seconds(d: Option<Duration>) -> String {
    d.map_or_else(
        || "none".to_owned(),
        |d| format!("{:.1} s", d.as_secs_f64()),
    )
}

fn outcome_cells(o: &RunOutcome) -> Vec<String> {
    vec![
        o.tool.name().to_owned(),
        o.report.stored.to_string(),
        o.report.missing.to_string(),
        o.report.duplicated.to_string(),
        seconds(o.sigterm_gap),
        seconds(o.kill_gap),
        o.leader_cpu_per_1000
            .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.3}")),
        format!("{:.3}", o.all_cpu_per_1000),
        format!("{:.0}/{:.0}", o.leader_rss_mib, o.peak_rss_mib),
    ]
}

fn print_row(cells: &[String]) {
    const WIDTHS: [usize; 9] = [20, 7, 8, 11, 12, 12, 16, 13, 20];
    let line: Vec<String> = cells
        .iter()
        .zip(WIDTHS)
        .enumerate()
        .map(|(i, (cell, width))| {
            if i == 0 {
                format!("{cell:<width$}")
            } else {
                format!("{cell:>width$}")
            }
        })
        .collect();
    println!("  {}", line.join(" ").trim_end());
}

#[expect(clippy::cast_precision_loss, reason = "event counts far below 2^52")]
fn as_f64(count: usize) -> f64 {
    count as f64
}

/// Prints every run, then the median per tool (upper median for an even count).
pub fn print_table(options: &PeersOptions, outcomes: &[RunOutcome]) {
    println!();
    println!(
        "bench peers: {} replicas per tool on a real kube-apiserver; {:.0} writes/s ({:.0} % count++ updates) for {} s; \
         SIGTERM of the leader at {} s, kill -9 of the next at {} s; lease {LEASE_DURATION}/{RENEW_DEADLINE}/{RETRY_PERIOD}",
        options.replicas,
        options.rate,
        options.update_ratio * 100.0,
        options.duration.as_secs(),
        (options.duration / 3).as_secs(),
        (options.duration * 2 / 3).as_secs(),
    );
    println!();
    println!("  every run:");
    print_row(&HEADER.map(str::to_owned));
    for outcome in outcomes {
        print_row(&outcome_cells(outcome));
        let r = &outcome.report;
        if r.unexpected > 0 || r.unkeyed > 0 || outcome.writer.failed > 0 {
            println!(
                "    ({} unexpected, {} unkeyed records; {} writes failed)",
                r.unexpected, r.unkeyed, outcome.writer.failed
            );
        }
    }
    println!();
    println!("  median of {} run(s) per tool:", options.runs);
    print_row(&HEADER.map(str::to_owned));
    for tool in &options.tools {
        let runs: Vec<&RunOutcome> = outcomes.iter().filter(|o| o.tool == *tool).collect();
        if runs.is_empty() {
            continue;
        }
        let of = |f: &dyn Fn(&RunOutcome) -> f64| median(runs.iter().map(|o| f(o)).collect());
        let num = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
        };
        let gap = |f: &dyn Fn(&RunOutcome) -> Option<Duration>| {
            median(
                runs.iter()
                    .filter_map(|o| f(o))
                    .map(|d| d.as_secs_f64())
                    .collect(),
            )
            .map_or_else(|| "none".to_owned(), |s| format!("{s:.1} s"))
        };
        print_row(&[
            tool.name().to_owned(),
            num(of(&|o| as_f64(o.report.stored)), 0),
            num(of(&|o| as_f64(o.report.missing)), 0),
            num(of(&|o| as_f64(o.report.duplicated)), 0),
            gap(&|o| o.sigterm_gap),
            gap(&|o| o.kill_gap),
            num(
                median(runs.iter().filter_map(|o| o.leader_cpu_per_1000).collect()),
                3,
            ),
            num(of(&|o| o.all_cpu_per_1000), 3),
            format!(
                "{}/{}",
                num(of(&|o| o.leader_rss_mib), 0),
                num(of(&|o| o.peak_rss_mib), 0)
            ),
        ]);
    }
    println!();
    println!(
        "  missing/duplicated: event versions (uid, resourceVersion) the API server confirmed to the writer, \
         against the tool's output; gap: signal → another replica holds the Lease; \
         CPU s/1k leader: the first leader from the start of writing to its SIGTERM; \
         CPU s/1k all: every replica process of the run, start to end; RSS: the first leader's VmRSS \
         before its SIGTERM / the highest VmHWM of any replica"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_json_lines_of_both_receivers_are_keyed_as_stored_versions() {
        let objects = serde_json::json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{
            "body": {"kvlistValue": {"values": [
                {"key": "type", "value": {"stringValue": "MODIFIED"}},
                {"key": "object", "value": {"kvlistValue": {"values": [
                    {"key": "metadata", "value": {"kvlistValue": {"values": [
                        {"key": "uid", "value": {"stringValue": "u1"}},
                        {"key": "namespace", "value": {"stringValue": "peers-a"}},
                        {"key": "resourceVersion", "value": {"stringValue": "42"}}
                    ]}}}
                ]}}}
            ]}}
        }]}]}]});
        let records = log_records(&objects);
        assert_eq!(records.len(), 1);
        assert_eq!(
            object_key(&records[0]),
            (
                Some("peers-a".to_owned()),
                Some(("u1".to_owned(), "42".to_owned()))
            )
        );

        let truth = vec![
            ("u1".to_owned(), "40".to_owned()),
            ("u2".to_owned(), "41".to_owned()),
            ("u1".to_owned(), "45".to_owned()),
        ];
        let by_count = versions_by_count(&truth);
        let event = |count: &str| {
            serde_json::json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{
                "body": {"stringValue": "Started container app"},
                "attributes": [
                    {"key": "k8s.event.uid", "value": {"stringValue": "u1"}},
                    {"key": "k8s.namespace.name", "value": {"stringValue": "peers-b"}},
                    {"key": "k8s.event.count", "value": {"intValue": count}}
                ]
            }]}]}]})
        };
        let second = log_records(&event("2"));
        assert_eq!(
            event_key(&second[0], &by_count).1,
            Some(("u1".to_owned(), "45".to_owned()))
        );
        let unknown = log_records(&event("7"));
        assert_eq!(
            event_key(&unknown[0], &by_count).1,
            Some(("u1".to_owned(), "count=7".to_owned()))
        );
    }
}
