//! Shared set-up for process-level tests: the in-process Kubernetes API emulator, real `kevents`
//! replicas sharing one store and one file sink, and the delivery oracle.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use kevents_testkit::{
    harness::{LEASE_NAMESPACE, ground_truth, lab_pipeline_yaml, wait_leader_ready},
    kube::{KubeEmulator, KubeEmulatorConfig},
    oracle::{self, Report},
    replica::{ReplicaOptions, Replicas},
};

pub struct TestLab {
    pub dir: tempfile::TempDir,
    pub emulator: KubeEmulator,
    pub replicas: Replicas,
}

pub fn workdir_of(lab: &TestLab) -> PathBuf {
    lab.dir.path().to_owned()
}

impl TestLab {
    /// Emulator plus `count` replicas with a 3 s lease and the given extra pipeline config.
    pub async fn start(config: KubeEmulatorConfig, count: usize, extra_yaml: &str) -> Self {
        Self::start_with_age(config, count, "300ms", extra_yaml).await
    }

    /// As [`TestLab::start`], with the shipper's `max_batch_age`.
    pub async fn start_with_age(
        config: KubeEmulatorConfig,
        count: usize,
        max_batch_age: &str,
        extra_yaml: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let emulator = KubeEmulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
            .await
            .unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        emulator
            .write_kubeconfig(&kubeconfig, LEASE_NAMESPACE)
            .unwrap();
        let replicas = Replicas::start(
            ReplicaOptions {
                kevents: PathBuf::from(env!("CARGO_BIN_EXE_kevents")),
                workdir: dir.path().to_owned(),
                kubeconfig,
                lease_namespace: LEASE_NAMESPACE.to_owned(),
                lease_duration: "3s".to_owned(),
                renew_deadline: "2s".to_owned(),
                retry_period: "500ms".to_owned(),
                pipeline_yaml: format!(
                    "{}{extra_yaml}",
                    lab_pipeline_yaml(dir.path(), max_batch_age)
                ),
                log_level: "info".to_owned(),
            },
            count,
        )
        .unwrap();
        Self {
            dir,
            emulator,
            replicas,
        }
    }

    pub async fn leader_ready(&self) -> usize {
        wait_leader_ready(&self.emulator, &self.replicas, Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("no ready leader; logs in {}", self.dir.path().display()))
    }

    pub fn sink(&self) -> PathBuf {
        self.dir.path().join("out/events.ndjson")
    }

    pub fn report(&self) -> Report {
        let truth = ground_truth(&self.emulator);
        let (delivered, unkeyed) =
            oracle::read_delivered(&oracle::sink_files(&self.sink())).unwrap();
        oracle::compare(&truth, &delivered, unkeyed)
    }

    /// Waits until every stored version is delivered (or the deadline), then returns the report.
    pub async fn settle(&self, timeout: Duration) -> Report {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.report();
            if report.missing == 0 || Instant::now() >= deadline {
                // A duplicate would arrive with the same batch: look once more after a beat.
                tokio::time::sleep(Duration::from_millis(700)).await;
                return self.report();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.file_name().to_string_lossy().ends_with(".log") {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    }

    pub async fn stop(mut self) {
        self.replicas.stop_all(Duration::from_secs(15));
        self.emulator.shutdown().await;
    }
}

/// Total LIST requests for core/v1 events.
pub fn event_lists(emulator: &KubeEmulator) -> u64 {
    emulator
        .state()
        .stats()
        .requests
        .lists
        .get("events")
        .copied()
        .unwrap_or(0)
}
