//! One test body, two backends: the lease race, SIGTERM and kill -9 handover, watch resume without
//! relist, relist after 410, exactly-once capture and `kubectl`-made events run against the
//! in-repo emulator *and* a real kube-apiserver + etcd (built by `make kube-binaries`; the real
//! variants fail, never skip, when the binaries are missing). The ground truth is what the API
//! server confirmed to the event writer, the same for both. Also here: RBAC least privilege with
//! the `ServiceAccount` token, and the no-leftover-process check of the real control plane.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[macro_use]
mod dual;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use dual::{assert_no_overlap, race_once, release, winners};
use k8s_openapi::api::{
    coordination::v1::{Lease, LeaseSpec},
    core::v1::{Event, Secret},
};
use kevents::{
    config::LeaderConfig,
    leader::{Attempt, Elector},
};
use kevents_testkit::{
    apiserver::{RealApiServer, RealApiServerOptions},
    backend::Backend,
    harness::{
        LEASE_NAME, LEASE_NAMESPACE, admin_get, lab_pipeline_yaml, lab_pipeline_yaml_with,
        wait_for_new_leader, wait_leader_ready,
    },
    kube::KubeEmulatorConfig,
    oracle::{self, Key, Report},
    replica::{ReplicaOptions, Replicas},
    writer::{EventWriter, Pace, RunningWriter, WriterConfig},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};
use nix::sys::signal::Signal;

/// Namespaces the writer writes to.
const APP_NAMESPACES: [&str; 3] = ["shop", "payments", "batch"];
/// Namespace of the kubectl-made events.
const KUBECTL_NAMESPACE: &str = "tools";

/// True for a delivered row in a namespace these tests write to. A real kube-apiserver writes
/// Events of its own (e.g. `default/kubernetes.<hex>` from its `ipallocator-repair-controller`),
/// which kevents rightly delivers but no test wrote.
fn in_scope(row: &serde_json::Value) -> bool {
    let namespace = row["Namespace"].as_str().unwrap_or_default();
    APP_NAMESPACES.contains(&namespace) || namespace == KUBECTL_NAMESPACE
}
/// Lease timings of the lab replicas.
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RETRY_PERIOD: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// The lab: a backend, real `kevents run` replicas sharing one store and one file sink.

struct Lab {
    // Declared before `dir`, so it runs while the directory still exists.
    _keep: KeepOnPanic,
    dir: tempfile::TempDir,
    backend: Backend,
    replicas: Replicas,
}

/// Copies the lab directory (logs, sink, store) somewhere that outlives the test when the test
/// panics, and says where.
struct KeepOnPanic(PathBuf);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let kept = std::env::temp_dir().join(format!(
            "kevents-dual-failed-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&self.0)
            .arg(&kept)
            .status()
            .is_ok_and(|s| s.success());
        if copied {
            eprintln!("lab directory kept in {}", kept.display());
        }
    }
}

impl Lab {
    /// `count` replicas with the admin kubeconfig.
    fn start(backend: Backend, count: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        backend
            .write_kubeconfig(&kubeconfig, LEASE_NAMESPACE)
            .unwrap();
        let pipeline = lab_pipeline_yaml(dir.path(), "300ms");
        Self::start_with(backend, dir, count, kubeconfig, LEASE_NAMESPACE, pipeline)
    }

    /// `count` replicas with `kubeconfig` and `pipeline_yaml`, electing in `lease_namespace`.
    fn start_with(
        backend: Backend,
        dir: tempfile::TempDir,
        count: usize,
        kubeconfig: PathBuf,
        lease_namespace: &str,
        pipeline_yaml: String,
    ) -> Self {
        let replicas = Replicas::start(
            ReplicaOptions {
                kevents: PathBuf::from(env!("CARGO_BIN_EXE_kevents")),
                workdir: dir.path().to_owned(),
                kubeconfig,
                lease_namespace: lease_namespace.to_owned(),
                lease_duration: format!("{}ms", LEASE_DURATION.as_millis()),
                renew_deadline: "2s".to_owned(),
                retry_period: format!("{}ms", RETRY_PERIOD.as_millis()),
                pipeline_yaml,
                log_level: "info".to_owned(),
            },
            count,
        )
        .unwrap();
        Self {
            _keep: KeepOnPanic(dir.path().to_owned()),
            dir,
            backend,
            replicas,
        }
    }

    /// Waits until the collectors have finished `lists` LISTs in all (their "Listed events" log
    /// line comes after the list), then for a ready leader. `wait_leader_ready` alone is not
    /// enough before writing: for a moment after winning the lease a replica shows
    /// `role: leader` with its follower readiness, before its pipeline marks it not ready; an
    /// event created and updated in that moment is listed at its latest version only.
    async fn listed(&self, lists: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.logs().matches("Listed events").count() < lists {
            assert!(
                Instant::now() < deadline,
                "{}: fewer than {lists} completed list(s); logs in {}",
                self.backend.name(),
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.leader_ready().await
    }

    async fn leader_ready(&self) -> usize {
        wait_leader_ready(&self.backend, &self.replicas, Duration::from_secs(60))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{}: no ready leader; logs in {}",
                    self.backend.name(),
                    self.dir.path().display()
                )
            })
    }

    /// A writer over the admin client, its namespaces created.
    async fn writer(&self, seed: u64) -> EventWriter {
        for ns in APP_NAMESPACES {
            self.backend.ensure_namespace(ns).await.unwrap();
        }
        EventWriter::new(
            self.backend.client(),
            WriterConfig {
                namespaces: APP_NAMESPACES.iter().map(|s| (*s).to_owned()).collect(),
                seed,
            },
        )
    }

    fn sink(&self) -> PathBuf {
        self.dir.path().join("out/events.ndjson")
    }

    fn report(&self, truth: &[Key]) -> Report {
        let (delivered, unkeyed) =
            oracle::read_delivered_where(&oracle::sink_files(&self.sink()), in_scope).unwrap();
        oracle::compare(truth, &delivered, unkeyed)
    }

    /// Waits until every version in `truth` is delivered (or the deadline), then looks once more
    /// after a beat: a duplicate would come with the same batch.
    async fn settle(&self, truth: &[Key], timeout: Duration) -> Report {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.report(truth);
            if report.missing == 0 || Instant::now() >= deadline {
                tokio::time::sleep(Duration::from_millis(700)).await;
                return self.report(truth);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Settles (see `settle`) and fails unless every version in `truth` was delivered exactly once.
    async fn assert_delivered_exactly_once(&self, truth: &[Key], timeout: Duration) -> Report {
        let report = self.settle(truth, timeout).await;
        assert_exact(
            self.backend.name(),
            &report,
            truth,
            &self.sink(),
            self.dir.path(),
        );
        report
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.file_name().to_string_lossy().ends_with(".log") {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    }

    fn identity(&self, slot: usize) -> String {
        self.replicas.replicas[slot].identity.clone()
    }

    async fn stop(mut self) {
        self.replicas.stop_all(Duration::from_secs(15));
        self.backend.shutdown().await;
    }
}

async fn stop_writer(writer: RunningWriter) -> Vec<Key> {
    let writer = writer.stop().await.unwrap();
    let stats = writer.stats();
    assert_eq!(
        stats.failed, 0,
        "a failed write makes the truth uncertain: {stats:?}"
    );
    writer.ground_truth()
}

fn assert_exact(backend: &str, report: &Report, truth: &[Key], sink: &Path, logs_in: &Path) {
    if report.is_exact() {
        return;
    }
    // Show the rows no confirmed write accounts for.
    let truth: std::collections::HashSet<&Key> = truth.iter().collect();
    let mut unexpected = Vec::new();
    for file in oracle::sink_files(sink) {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            if in_scope(&row) && oracle::key_of(&row).is_none_or(|k| !truth.contains(&k)) {
                unexpected.push(line.to_owned());
            }
        }
    }
    panic!(
        "{backend}: {report:?} (logs in {}); rows outside the truth: {unexpected:#?}",
        logs_in.display()
    );
}

// ---------------------------------------------------------------------------------------------
// The lease race.

fn race_config(identity: &str) -> LeaderConfig {
    LeaderConfig {
        lease_name: "race".to_owned(),
        lease_namespace: Some("default".to_owned()),
        identity: identity.to_owned(),
        lease_duration: Duration::from_secs(10),
        renew_deadline: Duration::from_secs(8),
        retry_period: Duration::from_millis(2500),
    }
}

async fn release_race_lease(api: &Api<Lease>) {
    let mut lease = Lease {
        metadata: ObjectMeta {
            name: Some("race".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }),
    };
    match api.get_opt("race").await.unwrap() {
        Some(current) => {
            lease.metadata.resource_version = current.metadata.resource_version;
            api.replace("race", &PostParams::default(), &lease)
                .await
                .unwrap();
        }
        None => {
            api.create(&PostParams::default(), &lease).await.unwrap();
        }
    }
}

async fn ten_candidates_race_for_a_released_lease(backend: Backend) {
    let rounds = 200;
    let admin: Api<Lease> = Api::namespaced(backend.client(), "default");
    // One client per candidate, as ten processes would have.
    let clients: Vec<kube::Client> = (0..10).map(|_| backend.client()).collect();
    let mut terms = Vec::new();
    for round in 0..rounds {
        release_race_lease(&admin).await;
        let mut candidates: Vec<Elector> = clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                Elector::new(
                    Api::namespaced(client.clone(), "default"),
                    race_config(&format!("c{i}")),
                )
            })
            .collect();
        let outcomes = race_once(&mut candidates).await;
        let winners = winners(&outcomes);
        assert_eq!(
            winners.len(),
            1,
            "{}: round {round}: {outcomes:?}",
            backend.name()
        );
        assert!(
            outcomes.iter().all(|(o, _)| *o != Attempt::Failed),
            "{}: round {round}: a candidate saw an API error: {outcomes:?}",
            backend.name()
        );
        let winner = &mut candidates[winners[0]];
        let holder = backend.lease_holder_of("default", "race").await.unwrap();
        assert_eq!(holder.as_deref(), Some(winner.identity()));
        terms.push(release(winner, outcomes[winners[0]].1).await);
    }
    assert_no_overlap(&mut terms);
    backend.shutdown().await;
}

dual!(
    ten_candidates_racing_for_a_released_lease_have_exactly_one_winner_per_round,
    ten_candidates_race_for_a_released_lease
);

// ---------------------------------------------------------------------------------------------
// Handover and exactly-once capture.

async fn handover_under_writes(backend: Backend) {
    let mut lab = Lab::start(backend, 3);
    let first = lab.listed(1).await;
    let writer = lab.writer(7).await.spawn(Pace {
        events_per_second: 50.0,
        update_ratio: 0.3,
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // SIGTERM: the leader releases the lease; another replica leads within 3 s.
    let holder = lab.identity(first);
    let signalled = Instant::now();
    lab.replicas.signal(first, Signal::SIGTERM).unwrap();
    let second = wait_for_new_leader(
        &lab.backend,
        &lab.replicas,
        Some(&holder),
        Duration::from_secs(15),
    )
    .await
    .unwrap_or_else(|| panic!("{}: no new leader after SIGTERM", lab.backend.name()));
    let graceful = signalled.elapsed();
    assert!(
        graceful <= Duration::from_secs(3),
        "{}: SIGTERM handover took {graceful:?}",
        lab.backend.name()
    );
    assert!(
        lab.replicas
            .wait_exit(first, Duration::from_secs(15))
            .is_some()
    );
    lab.replicas.restart(first).unwrap();
    assert_eq!(lab.leader_ready().await, second);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // kill -9: nobody releases; another replica leads within lease_duration + 2 × retry_period.
    let holder = lab.identity(second);
    let signalled = Instant::now();
    lab.replicas.signal(second, Signal::SIGKILL).unwrap();
    let third = wait_for_new_leader(
        &lab.backend,
        &lab.replicas,
        Some(&holder),
        Duration::from_secs(15),
    )
    .await
    .unwrap_or_else(|| panic!("{}: no new leader after kill -9", lab.backend.name()));
    let abrupt = signalled.elapsed();
    assert!(
        abrupt <= LEASE_DURATION + RETRY_PERIOD * 2,
        "{}: kill -9 handover took {abrupt:?}",
        lab.backend.name()
    );
    assert!(
        lab.replicas
            .wait_exit(second, Duration::from_secs(5))
            .is_some()
    );
    lab.replicas.restart(second).unwrap();
    assert_eq!(lab.leader_ready().await, third);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let truth = stop_writer(writer).await;
    let report = lab
        .assert_delivered_exactly_once(&truth, Duration::from_secs(40))
        .await;
    assert!(report.stored > 150, "{}: {report:?}", lab.backend.name());
    println!(
        "{}: SIGTERM handover {graceful:?}, kill -9 handover {abrupt:?}, {report:?}",
        lab.backend.name()
    );
    lab.stop().await;
}

dual!(
    every_written_version_is_delivered_exactly_once_across_a_sigterm_and_a_kill_9_handover,
    handover_under_writes
);

// ---------------------------------------------------------------------------------------------
// Watch resume and relist.

async fn resume_without_relist(backend: Backend) {
    let mut lab = Lab::start(backend, 1);
    lab.listed(1).await;
    let writer = lab.writer(11).await.spawn(Pace {
        events_per_second: 100.0,
        update_ratio: 0.4,
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        lab.backend.event_lists().await.unwrap(),
        1,
        "the first start lists once"
    );
    lab.replicas.signal(0, Signal::SIGTERM).unwrap();
    assert!(lab.replicas.wait_exit(0, Duration::from_secs(15)).is_some());
    // Events keep coming while nobody collects.
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.replicas.restart(0).unwrap();
    lab.leader_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let truth = stop_writer(writer).await;
    let report = lab
        .assert_delivered_exactly_once(&truth, Duration::from_secs(30))
        .await;
    assert_eq!(
        lab.backend.event_lists().await.unwrap(),
        1,
        "{}: a resume must watch from the checkpoint, not relist",
        lab.backend.name()
    );
    assert!(report.stored > 250, "{}: {report:?}", lab.backend.name());
    lab.stop().await;
}

dual!(
    a_restarted_collector_resumes_from_its_checkpoint_without_relisting,
    resume_without_relist
);

async fn relist_after_410(backend: Backend) {
    let mut lab = Lab::start(backend, 1);
    lab.listed(1).await;
    let writer = lab.writer(13).await.spawn(Pace {
        events_per_second: 100.0,
        update_ratio: 0.3,
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    writer.pause().await;
    let lists_before = lab.backend.event_lists().await.unwrap();
    lab.replicas.signal(0, Signal::SIGTERM).unwrap();
    assert!(lab.replicas.wait_exit(0, Duration::from_secs(15)).is_some());
    // While nobody collects: creates only, so the relist shows every version written now.
    writer
        .pace(Pace {
            events_per_second: 100.0,
            update_ratio: 0.0,
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gap = writer.pause().await;
    let last = gap.last_resource_version.unwrap();
    // The collector's checkpoint is at or before `last`: once a watch from `last` is gone, so is
    // one from the checkpoint.
    lab.backend
        .compact_past(&last, Duration::from_secs(30))
        .await
        .unwrap();
    lab.replicas.restart(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.backend.event_lists().await.unwrap() <= lists_before {
        assert!(
            Instant::now() < deadline,
            "{}: no relist after 410",
            lab.backend.name()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Resume the writes (updates of events made in the gap included) only after the relist.
    lab.listed(2).await;
    writer
        .pace(Pace {
            events_per_second: 100.0,
            update_ratio: 0.3,
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let truth = stop_writer(writer).await;
    lab.assert_delivered_exactly_once(&truth, Duration::from_secs(30))
        .await;
    assert!(
        lab.logs().contains("410 Gone"),
        "{}: the relist must be logged",
        lab.backend.name()
    );
    lab.stop().await;
}

dual!(
    a_collector_restarted_after_compaction_relists_and_delivers_no_duplicate,
    relist_after_410,
    emulator: KubeEmulatorConfig::default(),
    // The watch cache would keep serving old events; without it a compacted position is 410.
    real: RealApiServerOptions {
        watch_cache: false,
        etcd_compaction_interval: Duration::from_secs(2),
        ..RealApiServerOptions::default()
    }
);

/// The value of `series` in a Prometheus text page (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn killed_mid_first_list(backend: Backend) {
    // Events retained before any collector runs: the first list returns all of them.
    for ns in APP_NAMESPACES {
        backend.ensure_namespace(ns).await.unwrap();
    }
    let writer = EventWriter::new(
        backend.client(),
        WriterConfig {
            namespaces: APP_NAMESPACES.iter().map(|s| (*s).to_owned()).collect(),
            seed: 17,
        },
    )
    // Creates only: a list shows the latest version of each event, so an update made before it
    // would hide the version it replaced from every collector.
    .spawn(Pace {
        events_per_second: 400.0,
        update_ratio: 0.0,
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while writer.stats().created < 1_200 {
        assert!(
            Instant::now() < deadline,
            "the writer did not create 1,200 events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.pause().await;
    // One replica that lists slowly: pages of 50, groups of at most 100, each commit held 300 ms.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    backend
        .write_kubeconfig(&kubeconfig, LEASE_NAMESPACE)
        .unwrap();
    let pipeline = format!(
        "{}source:\n  page_size: 50\ndiagnostics:\n  stall_store_commit: 300ms\n",
        lab_pipeline_yaml_with(dir.path(), "300ms", "  max_commit_events: 100\n"),
    );
    let mut lab = Lab::start_with(backend, dir, 1, kubeconfig, LEASE_NAMESPACE, pipeline);
    let admin = lab.replicas.replicas[0].admin;
    let deadline = Instant::now() + Duration::from_secs(60);
    let captured_before_kill = loop {
        let metrics = admin_get(admin, "/metrics").await.unwrap_or_default();
        let captured = metric(&metrics, "kevents_events_captured_total");
        if captured >= 300.0 {
            break captured;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the first list captured nothing in 60 s",
            lab.backend.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    lab.replicas.signal(0, Signal::SIGKILL).unwrap();
    assert!(lab.replicas.wait_exit(0, Duration::from_secs(15)).is_some());
    assert!(
        !lab.logs().contains("Listed events"),
        "{}: the list ended before the kill ({captured_before_kill} captured): nothing was tested",
        lab.backend.name()
    );
    // The next leader lists again; the writes go on once it has.
    lab.replicas.restart(0).unwrap();
    lab.listed(1).await;
    let admin = lab.replicas.replicas[0].admin;
    let metrics = admin_get(admin, "/metrics").await.unwrap_or_default();
    let duplicates = metric(&metrics, "kevents_events_duplicate_total");
    assert!(
        duplicates >= captured_before_kill,
        "{}: the second list must drop the {captured_before_kill} events the first captured; it dropped {duplicates}",
        lab.backend.name()
    );
    writer
        .pace(Pace {
            events_per_second: 100.0,
            update_ratio: 0.3,
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let truth = stop_writer(writer).await;
    lab.assert_delivered_exactly_once(&truth, Duration::from_secs(60))
        .await;
    assert!(
        !lab.logs().contains("out of key order"),
        "{}: the API server's list was not in key order",
        lab.backend.name()
    );
    lab.stop().await;
}

dual!(
    a_leader_killed_in_its_first_list_is_followed_by_a_list_that_drops_what_it_captured,
    killed_mid_first_list
);

// ---------------------------------------------------------------------------------------------
// kubectl.

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl is required by these tests (make tools)");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn key_of_json(text: &str) -> Key {
    let object: serde_json::Value = serde_json::from_str(text).unwrap();
    (
        object["metadata"]["uid"].as_str().unwrap().to_owned(),
        object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

async fn kubectl_events_are_delivered(backend: Backend) {
    let lab = Lab::start(backend, 1);
    lab.backend
        .ensure_namespace(KUBECTL_NAMESPACE)
        .await
        .unwrap();
    lab.listed(1).await;
    let kubeconfig = lab.dir.path().join("kubeconfig");
    let manifest = lab.dir.path().join("event.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: web-0.kubectl\n  namespace: tools\n\
         involvedObject:\n  apiVersion: v1\n  kind: Pod\n  name: web-0\n  namespace: tools\n\
         reason: BackOff\nmessage: Back-off restarting failed container\ntype: Warning\ncount: 1\n\
         firstTimestamp: \"2026-01-01T00:00:00Z\"\nlastTimestamp: \"2026-01-01T00:00:00Z\"\n\
         source:\n  component: kubelet\n  host: node-1\n",
    )
    .unwrap();
    let file = manifest.to_str().unwrap();
    // kubectl's client-side validation reads /openapi/v3 on both backends.
    let created = kubectl(
        &kubeconfig,
        &["create", "-f", file, "-o", "json", "--show-managed-fields"],
    );
    let patched = kubectl(
        &kubeconfig,
        &[
            "-n",
            KUBECTL_NAMESPACE,
            "patch",
            "event",
            "web-0.kubectl",
            "--type",
            "merge",
            "-p",
            r#"{"count":2,"lastTimestamp":"2026-01-01T00:00:10Z"}"#,
            "-o",
            "json",
            "--show-managed-fields",
        ],
    );
    // Each kubectl verb is its own field manager, on both backends.
    let managers = |text: &str| -> Vec<String> {
        let object: serde_json::Value = serde_json::from_str(text).unwrap();
        object["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(managers(&created), vec!["kubectl-create"]);
    assert_eq!(managers(&patched), vec!["kubectl-create", "kubectl-patch"]);
    let truth = vec![key_of_json(&created), key_of_json(&patched)];
    assert_eq!(truth[0].0, truth[1].0, "a PATCH keeps the uid");
    lab.assert_delivered_exactly_once(&truth, Duration::from_secs(30))
        .await;
    let rows = std::fs::read_to_string(lab.sink()).unwrap();
    let counts: Vec<String> = rows
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|row| row["Uid"] == truth[0].0.as_str())
        .map(|row| row["Count"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(counts, vec!["1", "2"], "{}", lab.backend.name());
    lab.stop().await;
}

dual!(
    an_event_created_and_patched_with_kubectl_is_delivered_once_per_version,
    kubectl_events_are_delivered
);

// ---------------------------------------------------------------------------------------------
// RBAC: the ServiceAccount of the manifests runs kevents end to end, and can do nothing more.

/// The identity and RBAC objects of the base kustomization, rendered by `kubectl kustomize` (which
/// puts them in kevents' namespace) and written to `dir`: the `ServiceAccount` and the roles and
/// bindings of `manifests/base/rbac.yaml`, nothing else. Returns the file and the
/// `ServiceAccount`'s (namespace, name).
fn rbac_of_the_manifests(dir: &Path) -> (PathBuf, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join("manifests/base"))
        .output()
        .expect("kubectl is required by these tests (make tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut kept = Vec::new();
    let mut accounts = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc).unwrap();
        let kind = value["kind"].as_str().unwrap_or_default();
        if kind == "ServiceAccount" {
            accounts.push((
                value["metadata"]["namespace"].as_str().unwrap().to_owned(),
                value["metadata"]["name"].as_str().unwrap().to_owned(),
            ));
        }
        if matches!(
            kind,
            "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
        ) {
            kept.push(serde_yaml_ng::to_string(&value).unwrap());
        }
    }
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(
        kept.len(),
        5,
        "a ServiceAccount, two roles, two bindings: {kept:?}"
    );
    let file = dir.join("rbac.yaml");
    std::fs::write(&file, kept.join("---\n")).unwrap();
    let (namespace, name) = accounts.remove(0);
    (file, namespace, name)
}

fn is_forbidden<T: std::fmt::Debug>(result: &Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kevents_runs_end_to_end_with_the_rbac_of_its_manifests_and_can_do_nothing_more() {
    let backend = Backend::real(RealApiServerOptions::default())
        .await
        .unwrap();
    let server = backend.as_real().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (manifest, sa_namespace, sa_name) = rbac_of_the_manifests(dir.path());
    server.ensure_namespace(&sa_namespace).await.unwrap();
    kubectl(
        server.kubeconfig(),
        &["apply", "-f", manifest.to_str().unwrap()],
    );
    let sa_kubeconfig = dir.path().join("kubeconfig-sa");
    server
        .write_service_account_kubeconfig(&sa_namespace, &sa_name, &sa_kubeconfig)
        .await
        .unwrap();
    let sa = server
        .service_account_client(&sa_namespace, &sa_name)
        .await
        .unwrap();

    // Least privilege, asked of the API server itself (403s) …
    server.ensure_namespace(APP_NAMESPACES[0]).await.unwrap();
    let events: Api<Event> = Api::namespaced(sa.clone(), APP_NAMESPACES[0]);
    assert!(
        Api::<Event>::all(sa.clone())
            .list(&ListParams::default())
            .await
            .is_ok()
    );
    let admin_events: Api<Event> = Api::namespaced(server.client(), APP_NAMESPACES[0]);
    let mut probe = Event::default();
    probe.metadata.name = Some("rbac-probe".to_owned());
    probe.involved_object.kind = Some("Pod".to_owned());
    probe.involved_object.name = Some("p".to_owned());
    probe.involved_object.namespace = Some(APP_NAMESPACES[0].to_owned());
    admin_events
        .create(&PostParams::default(), &probe)
        .await
        .unwrap();
    assert!(is_forbidden(
        &events.delete("rbac-probe", &DeleteParams::default()).await
    ));
    assert!(is_forbidden(
        &events.create(&PostParams::default(), &probe).await
    ));
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), &sa_namespace);
    assert!(is_forbidden(&secrets.list(&ListParams::default()).await));
    assert!(is_forbidden(
        &Api::<Secret>::all(sa.clone())
            .list(&ListParams::default())
            .await
    ));
    let foreign: Api<Lease> = Api::namespaced(sa.clone(), "default");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("kevents".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec::default()),
    };
    assert!(is_forbidden(
        &foreign.create(&PostParams::default(), &lease).await
    ));
    assert!(is_forbidden(&foreign.list(&ListParams::default()).await));
    assert!(is_forbidden(
        &Api::<Lease>::namespaced(sa.clone(), "kube-system")
            .get("kube-controller-manager")
            .await
    ));
    // … and by `kubectl auth can-i` with the token's kubeconfig.
    let can_i = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&sa_kubeconfig)
            .args(["auth", "can-i"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(can_i(&["watch", "events", "-A"]), "yes");
    assert_eq!(can_i(&["list", "events.events.k8s.io", "-A"]), "yes");
    // Its own Lease only: created by any name (create cannot be limited by name), then read,
    // updated and watched by name; another Lease in its namespace is out of reach.
    let own = format!("leases/{LEASE_NAME}");
    assert_eq!(can_i(&["update", &own, "-n", &sa_namespace]), "yes");
    assert_eq!(can_i(&["watch", &own, "-n", &sa_namespace]), "yes");
    assert_eq!(can_i(&["create", "leases", "-n", &sa_namespace]), "yes");
    assert_eq!(
        can_i(&["update", "leases/someone-else", "-n", &sa_namespace]),
        "no"
    );
    assert_eq!(can_i(&["patch", &own, "-n", &sa_namespace]), "no");
    assert_eq!(can_i(&["delete", "events", "-n", "default"]), "no");
    assert_eq!(can_i(&["get", "secrets", "-n", &sa_namespace]), "no");
    assert_eq!(can_i(&["update", "leases", "-n", "default"]), "no");
    assert_eq!(can_i(&["delete", "leases", "-n", &sa_namespace]), "no");

    // End to end with that token.
    let pipeline = lab_pipeline_yaml(dir.path(), "300ms");
    let lab = Lab::start_with(backend, dir, 1, sa_kubeconfig, &sa_namespace, pipeline);
    lab.listed(1).await;
    let writer = lab.writer(17).await.spawn(Pace {
        events_per_second: 50.0,
        update_ratio: 0.3,
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut truth = stop_writer(writer).await;
    // The probe event made above is captured as well.
    let probe = admin_events.get("rbac-probe").await.unwrap();
    truth.push((
        probe.metadata.uid.unwrap(),
        probe.metadata.resource_version.unwrap(),
    ));
    lab.assert_delivered_exactly_once(&truth, Duration::from_secs(30))
        .await;
    // A status code 403 (not the digits inside a timestamp such as `…54.934036Z`).
    let forbidden = |line: &str| {
        line.contains("Forbidden")
            || line.match_indices("403").any(|(at, _)| {
                let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
                !digit(line[..at].chars().next_back()) && !digit(line[at + 3..].chars().next())
            })
    };
    assert!(
        !lab.logs().lines().any(forbidden),
        "kevents hit a 403 with its own ServiceAccount: {}",
        lab.logs()
    );
    lab.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The real control plane itself.

fn alive(pid: u32) -> bool {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, None).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_real_apiserver_leaves_no_process_and_no_directory_behind() {
    let server = RealApiServer::start(RealApiServerOptions::default())
        .await
        .unwrap();
    let pids = server.pids();
    let dir = server.dir().to_owned();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");
    let version = server.client().apiserver_version().await.unwrap();
    let pins = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kube-binaries.env"),
    )
    .unwrap();
    let pinned = pins
        .lines()
        .find_map(|l| l.strip_prefix("KUBE_VERSION="))
        .unwrap();
    assert_eq!(
        version.git_version, pinned,
        "the binary is the pinned release"
    );
    drop(server);
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived its RealApiServer");
    }
    assert!(!dir.exists(), "{} was left behind", dir.display());
}
