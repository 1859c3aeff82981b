//! Helpers shared by the `adx_*` integration tests.

#![allow(dead_code, reason = "each test file uses a subset")]

use std::{net::SocketAddr, time::Duration};

use kevents::{
    config::{AdxConfig, AdxMode, Config, Environment, SinkConfig},
    sink::{AdxSink, OutgoingBatch},
    telemetry::Metrics,
};
use kevents_testkit::adx::{
    AdxEmulator, AdxEmulatorConfig, QUICK_POLLING, synthetic_batch_id, synthetic_payload,
};

pub const DB: &str = "k8s";
pub const TABLE: &str = "KubeEvents";

/// An ADX emulator on Azurite; fails (never skips) when Azurite is not installed.
pub async fn emulator(config: AdxEmulatorConfig) -> AdxEmulator {
    match AdxEmulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config).await {
        Ok(emulator) => emulator,
        Err(error) => panic!("the ADX emulator did not start: {error:#?}\n{error}"),
    }
}

pub fn sink(config: &AdxConfig) -> (AdxSink, Metrics) {
    let metrics = Metrics::new().unwrap();
    (AdxSink::new(config, metrics.clone()).unwrap(), metrics)
}

/// The sink config a test uses for `emulator`: the emulator's `sink:` text, with the quick
/// polling settings, parsed by the product's own config loader.
pub fn config(emulator: &AdxEmulator, mode: AdxMode) -> AdxConfig {
    let mode = match mode {
        AdxMode::Queued => "queued",
        AdxMode::Streaming => "streaming",
        AdxMode::Managed => "managed",
    };
    let text = format!(
        "cluster:\n  name: test\n{}",
        emulator.sink_yaml(DB, mode, QUICK_POLLING)
    );
    match Config::parse(&text, &Environment::process()).unwrap().sink {
        SinkConfig::Adx(config) => *config,
        other => panic!("not an ADX sink: {other:?}"),
    }
}

/// A batch of `count` synthetic `KubeEvents` records starting at record `first`.
pub fn synthetic_batch(prefix: &str, first: u64, count: u64) -> OutgoingBatch {
    OutgoingBatch {
        id: synthetic_batch_id(prefix, first, count),
        payload: synthetic_payload(first, count).into(),
        events: count,
    }
}

/// The value of a metric line (`name{labels} value`) in the text exposition.
pub fn metric(metrics: &Metrics, series: &str) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Log lines of the sink, captured on this thread (a `#[tokio::test]` runs the sink's futures
/// on its own thread, so parallel tests do not mix).
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures `kevents` events at info and above until the guard is dropped.
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("kevents=info"))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// How many captured lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A batch in the `fluent-bit` record shape (`{"TimeGenerated": …, "log": {…}}`, with `Uid` and
/// `ResourceVersion` under `log`), from the same synthetic records as `synthetic_batch`.
pub fn fluent_bit_batch(prefix: &str, first: u64, count: u64) -> kevents::sink::OutgoingBatch {
    let mut payload = Vec::new();
    for n in first..first + count {
        let mut log: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&kevents_testkit::adx::synthetic_record(n)).unwrap();
        let time = log.remove("TimeGenerated").unwrap();
        let record = serde_json::json!({"TimeGenerated": time, "log": log});
        payload.extend_from_slice(record.to_string().as_bytes());
        payload.push(b'\n');
    }
    kevents::sink::OutgoingBatch {
        id: format!("{prefix}-{first:012}-{:012}", first + count - 1),
        payload: payload.into(),
        events: count,
    }
}

pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

// === end to end: real `kevents run` processes ===

use kevents_testkit::{
    harness::{
        LEASE_NAMESPACE, ground_truth, lease_holder, wait_for_new_leader, wait_leader_ready,
    },
    kube::{GeneratorConfig, KubeEmulator, KubeEmulatorConfig},
    oracle::{self, Report},
    replica::{ReplicaOptions, Replicas},
};
use nix::sys::signal::Signal;

/// The Kubernetes API emulator, the ADX emulator and kevents replicas shipping to it.
pub struct Lab {
    pub kube: KubeEmulator,
    pub adx: AdxEmulator,
    pub replicas: Replicas,
    pub workdir: tempfile::TempDir,
}

/// Starts both emulators and `count` replicas with `sink.adx.mode: mode` (plus `extra` under
/// `sink.adx`, indented 4), waits for a ready leader, and starts the generator.
pub async fn start_lab(
    adx_config: AdxEmulatorConfig,
    mode: &str,
    extra: &str,
    count: usize,
    events_per_second: f64,
) -> Lab {
    let extra = extra.to_owned();
    start_lab_with(adx_config, mode, count, events_per_second, move |_| {
        extra.clone()
    })
    .await
}

/// [`start_lab`] with `extra` computed from the ADX emulator's URL.
pub async fn start_lab_with(
    adx_config: AdxEmulatorConfig,
    mode: &str,
    count: usize,
    events_per_second: f64,
    extra: impl Fn(&str) -> String,
) -> Lab {
    let workdir = tempfile::tempdir().unwrap();
    let kube = KubeEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        KubeEmulatorConfig::default(),
    )
    .await
    .unwrap();
    let kubeconfig = workdir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, LEASE_NAMESPACE).unwrap();
    let adx = emulator(adx_config).await;
    let pipeline_yaml = format!(
        "store:\n  path: {store}\n  lock_timeout: 30s\n\
         shipper:\n  max_batch_age: 300ms\n  retry_initial: 200ms\n  retry_max: 2s\n\
         record:\n  extra_columns: [Uid, ResourceVersion]\n{sink}",
        store = workdir.path().join("store").display(),
        sink = adx.sink_yaml(DB, mode, &extra(&adx.url())),
    );
    let replicas = Replicas::start(
        ReplicaOptions {
            kevents: env!("CARGO_BIN_EXE_kevents").into(),
            workdir: workdir.path().to_owned(),
            kubeconfig,
            lease_namespace: LEASE_NAMESPACE.to_owned(),
            lease_duration: "4s".to_owned(),
            renew_deadline: "3s".to_owned(),
            retry_period: "500ms".to_owned(),
            pipeline_yaml,
            log_level: "info,kevents=debug".to_owned(),
        },
        count,
    )
    .unwrap();
    let lab = Lab {
        kube,
        adx,
        replicas,
        workdir,
    };
    // The holder must report itself leader and ready: its first list is done.
    wait_leader_ready(&lab.kube, &lab.replicas, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("no ready leader; logs:\n{}", lab.logs()));
    // Let the leader's first watch settle before the first write: a write racing the very first
    // LIST/WATCH was seen to go missing (about 1 run in 10, outside the ADX path: the sink
    // delivered every row kevents shipped); that race belongs to the source/Kubernetes emulator
    // tests, not to these.
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.kube.state().set_generator(Some(GeneratorConfig {
        events_per_second,
        update_ratio: 0.3,
        seed: 11,
        namespaces: 4,
    }));
    lab
}

impl Lab {
    /// Every replica's log.
    pub fn logs(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for index in 0..self.replicas.replicas.len() {
            let path = self.workdir.path().join(format!("replica-{index}.log"));
            let _ = writeln!(out, "--- {}", path.display());
            out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
        out
    }

    /// The slot of the current leader.
    pub fn leader(&self) -> usize {
        let holder = lease_holder(&self.kube).expect("a leader");
        self.replicas.slot_of(&holder).expect("a lab replica")
    }

    /// Sends `signal` to the leader, waits for another replica to lead, restarts the slot.
    pub async fn fail_over(&mut self, signal: Signal) -> Duration {
        let holder = lease_holder(&self.kube).expect("a leader");
        let slot = self.replicas.slot_of(&holder).expect("a lab replica");
        let started = std::time::Instant::now();
        self.replicas.signal(slot, signal).unwrap();
        let next = wait_for_new_leader(
            &self.kube,
            &self.replicas,
            Some(&holder),
            Duration::from_secs(30),
        )
        .await;
        assert!(
            next.is_some(),
            "no new leader after {signal:?}; logs:\n{}",
            self.logs()
        );
        let took = started.elapsed();
        let _ = self.replicas.wait_exit(slot, Duration::from_secs(15));
        self.replicas.restart(slot).unwrap();
        took
    }

    /// Stops the generator and waits (up to `timeout`) until every stored version arrived;
    /// returns the comparison.
    pub async fn drain(&self, timeout: Duration) -> Report {
        self.kube.state().set_generator(None);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let report = self.report();
            if report.missing == 0 || tokio::time::Instant::now() >= deadline {
                // A little longer, so a late duplicate would show.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return self.report();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Delivered rows against the API server's ground truth.
    pub fn report(&self) -> Report {
        let truth = ground_truth(&self.kube);
        let mut delivered = Vec::new();
        let mut unkeyed = 0;
        for row in self.adx.state().rows(DB, TABLE) {
            match oracle::key_of(&serde_json::Value::Object(row)) {
                Some(key) if !key.0.is_empty() => delivered.push(key),
                _ => unkeyed += 1,
            }
        }
        oracle::compare(&truth, &delivered, unkeyed)
    }

    /// GET `path` on the admin server of `slot`.
    pub async fn admin(&self, slot: usize, path: &str) -> String {
        let url = format!("http://{}{path}", self.replicas.replicas[slot].admin);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    pub async fn stop(mut self) {
        self.replicas.stop_all(Duration::from_secs(15));
        let Lab { kube, adx, .. } = self;
        adx.shutdown().await;
        kube.shutdown().await;
    }
}

/// A metric's value in a Prometheus text exposition.
pub fn metric_in(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}
