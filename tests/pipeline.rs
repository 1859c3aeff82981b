//! The capture pipeline end to end with real `kevents` processes against the Kubernetes API
//! emulator: resume without relisting, relist after 410 without duplicates or gaps, every count++
//! delivered once, a slow watch read in rounds keeps up, a backlog left by a killed leader shipped
//! once, and an interrupted send re-sent with the same batch id.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{TestLab, event_lists};
use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kevents::{
    blocking::IoPool,
    config::{Config, Environment},
    leader::{Fence, Leadership, LeaseId},
    pipeline,
    sink::{OutgoingBatch, SendFuture, Sink},
    telemetry::{Metrics, StatusBoard},
};
use kevents_testkit::kube::{GeneratorConfig, KubeEmulator, KubeEmulatorConfig};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

#[allow(clippy::unnecessary_wraps, reason = "read where an Option is set")]
fn generator(rate: f64, update_ratio: f64) -> Option<GeneratorConfig> {
    Some(GeneratorConfig {
        events_per_second: rate,
        update_ratio,
        seed: 3,
        namespaces: 3,
    })
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_collector_resumes_from_its_checkpoint_without_relisting() {
    let mut lab = TestLab::start(KubeEmulatorConfig::default(), 1, "").await;
    lab.leader_ready().await;
    lab.emulator.state().set_generator(generator(100.0, 0.4));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(event_lists(&lab.emulator), 1, "the first start lists once");
    lab.replicas.signal(0, Signal::SIGTERM).unwrap();
    assert!(lab.replicas.wait_exit(0, Duration::from_secs(15)).is_some());
    // Events keep coming while nobody collects.
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.replicas.restart(0).unwrap();
    lab.leader_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.emulator.state().set_generator(None);
    let report = lab.settle(Duration::from_secs(30)).await;
    assert_eq!(
        event_lists(&lab.emulator),
        1,
        "a resume must watch from the checkpoint, not relist"
    );
    assert!(report.is_exact(), "{report:?}");
    assert!(report.stored > 300, "{report:?}");
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_after_410_delivers_no_duplicate_and_no_gap() {
    let lab = TestLab::start(KubeEmulatorConfig::default(), 1, "").await;
    lab.leader_ready().await;
    lab.emulator.state().set_generator(generator(200.0, 0.3));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Freeze the collector's watch, keep creating (no updates, so a list shows every version),
    // compact past its position, then break the watch: it must resume, get 410, and relist.
    lab.emulator.state().set_generator(generator(200.0, 0.0));
    lab.emulator
        .state()
        .faults()
        .stall_watches(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.emulator.state().compact_now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    lab.emulator.state().faults().drop_watches();
    let before = event_lists(&lab.emulator);
    wait_until("a relist after 410", Duration::from_secs(20), || {
        event_lists(&lab.emulator) > before
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.emulator.state().set_generator(None);
    let report = lab.settle(Duration::from_secs(30)).await;
    assert!(report.is_exact(), "{report:?}");
    assert!(lab.logs().contains("410 Gone"), "the relist must be logged");
    lab.stop().await;
}

/// A watch below ~1,000 events a second is read in rounds (`source::pace`): with real processes,
/// capture keeps up while the stream runs and every version is delivered once. (The unit tests
/// of `source::pace` check that a round reads everything that arrived during its pause.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watch_read_in_rounds_keeps_up_with_the_stream() {
    let lab = TestLab::start(KubeEmulatorConfig::default(), 1, "").await;
    lab.leader_ready().await;
    lab.emulator.state().set_generator(generator(300.0, 0.3));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Still streaming: the sink trails by a round, a commit window and a batch age (~0.7 s,
    // ~200 versions), not by most of what was written.
    let during = lab.report();
    lab.emulator.state().set_generator(None);
    assert!(during.stored > 900, "{during:?}");
    assert!(
        during.missing < 450,
        "capture fell behind a 300/s watch: {during:?}"
    );
    let report = lab.settle(Duration::from_secs(15)).await;
    assert!(report.is_exact(), "{report:?}");
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_count_update_of_an_event_is_delivered_once() {
    let lab = TestLab::start(KubeEmulatorConfig::default(), 2, "").await;
    lab.leader_ready().await;
    let api: Api<Event> = Api::namespaced(lab.emulator.client(), "default");
    let mut event = Event {
        involved_object: ObjectReference {
            kind: Some("Pod".into()),
            name: Some("web-0".into()),
            namespace: Some("default".into()),
            ..ObjectReference::default()
        },
        reason: Some("BackOff".into()),
        message: Some("Back-off restarting failed container".into()),
        type_: Some("Warning".into()),
        count: Some(1),
        ..Event::default()
    };
    event.metadata.name = Some("web-0.backoff".into());
    let created = api.create(&PostParams::default(), &event).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    for count in 2..=6 {
        let patch = serde_json::json!({"count": count});
        api.patch(
            "web-0.backoff",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    }
    let report = lab.settle(Duration::from_secs(30)).await;
    assert!(report.is_exact(), "{report:?}");
    let rows = std::fs::read_to_string(lab.sink()).unwrap();
    let counts: Vec<String> = rows
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|row| row["Uid"] == uid.as_str())
        .map(|row| row["Count"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(counts, vec!["1", "2", "3", "4", "5", "6"]);
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_captured_by_a_killed_leader_is_shipped_once_by_the_next() {
    // Batches wait 6 s: the leader captures for a while but ships nothing before it dies.
    let lab = TestLab::start_with_age(KubeEmulatorConfig::default(), 2, "6s", "").await;
    let first = lab.leader_ready().await;
    lab.emulator.state().set_generator(generator(100.0, 0.3));
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.emulator.state().set_generator(None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    lab.replicas.signal(first, Signal::SIGKILL).unwrap();
    let shipped_before = lab.report().delivered;
    assert_eq!(
        shipped_before, 0,
        "the killed leader must not have shipped yet"
    );
    let report = lab.settle(Duration::from_secs(40)).await;
    assert!(report.is_exact(), "{report:?}");
    assert!(report.stored > 100, "{report:?}");
    let mut lab = lab;
    let _ = lab.replicas.wait_exit(first, Duration::from_secs(5));
    lab.stop().await;
}

/// A sink that records every batch it is given and never answers the first one.
#[derive(Default)]
struct HangingSink {
    seen: Mutex<Vec<OutgoingBatch>>,
    hang_first: bool,
}

impl Sink for HangingSink {
    fn name(&self) -> &'static str {
        "hanging"
    }
    fn send<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        Box::pin(async move {
            let first = {
                let mut seen = self.seen.lock().unwrap();
                seen.push(batch.clone());
                seen.len() == 1
            };
            if self.hang_first && first {
                std::future::pending::<()>().await;
            }
            Ok(kevents::sink::Receipt::Delivered)
        })
    }
}

fn leadership(epoch: i64) -> (tokio::sync::watch::Sender<Option<Leadership>>, Fence) {
    let (tx, rx) = tokio::sync::watch::channel(Some(Leadership {
        holder: "test".into(),
        epoch,
        valid_until: Instant::now() + Duration::from_secs(600),
        lease: LeaseId::default(),
    }));
    (tx, Fence::new(rx, epoch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_send_was_cut_short_is_resent_first_with_the_same_id() {
    let emulator = KubeEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        KubeEmulatorConfig {
            generator: generator(200.0, 0.2),
            ..KubeEmulatorConfig::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "cluster:\n  name: t\nstore:\n  path: {}\nshipper:\n  max_batch_age: 200ms\nsink:\n  type: stdout\nrecord:\n  extra_columns: [Uid, ResourceVersion]\n",
        dir.path().join("store").display()
    );
    let config = Config::parse(&text, &Environment::process()).unwrap();
    let context = pipeline::Context {
        client: emulator.client(),
        config: Arc::new(config),
        metrics: Metrics::new().unwrap(),
        board: Arc::new(StatusBoard::new()),
        io: IoPool::new("store", 4, Duration::from_secs(30)).unwrap(),
        sink_io: IoPool::new("file-sink", 1, Duration::from_secs(30)).unwrap(),
        dead: kevents::dead::DeadSlot::default(),
    };
    // Term 1: the first send never completes; the term ends (the leader "dies") mid-send.
    let hanging = Arc::new(HangingSink {
        hang_first: true,
        ..HangingSink::default()
    });
    let (_tx1, fence1) = leadership(1);
    let stop = CancellationToken::new();
    let term1 = tokio::spawn(pipeline::run_with_sink(
        context.clone(),
        fence1,
        Some(hanging.clone()),
        stop.clone(),
    ));
    wait_until("the first send", Duration::from_secs(20), || {
        !hanging.seen.lock().unwrap().is_empty()
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), term1)
        .await
        .expect("a hanging send must not block the stop")
        .unwrap()
        .unwrap();
    let interrupted = hanging.seen.lock().unwrap()[0].clone();

    // Term 2: the next leader re-sends that batch first, with the same id and the same rows.
    let recording = Arc::new(HangingSink::default());
    let (_tx2, fence2) = leadership(2);
    let stop = CancellationToken::new();
    let term2 = tokio::spawn(pipeline::run_with_sink(
        context.clone(),
        fence2,
        Some(recording.clone()),
        stop.clone(),
    ));
    wait_until("the re-send", Duration::from_secs(20), || {
        !recording.seen.lock().unwrap().is_empty()
    })
    .await;
    let resent = recording.seen.lock().unwrap()[0].clone();
    assert_eq!(resent.id, interrupted.id);
    assert_eq!(resent.payload, interrupted.payload);
    // And nothing is sent twice after that.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    term2.await.unwrap().unwrap();
    let batches = recording.seen.lock().unwrap().clone();
    let mut ids = BTreeMap::new();
    for batch in &batches {
        *ids.entry(batch.id.clone()).or_insert(0) += 1;
    }
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");
    emulator.shutdown().await;
}

/// The stored term, for editing the store of a stopped collector.
struct EditGuard(i64);

impl kevents::store::Guard for EditGuard {
    fn is_current(&self) -> bool {
        true
    }
    fn epoch(&self) -> i64 {
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_behind_the_checkpoint_is_relisted_and_nothing_is_dropped() {
    use kevents::store::{EventStore as _, OpenOptions, SledStore};
    // As a real API server does, the emulator accepts a watch from a position it has not
    // reached and keeps it open and quiet: short watches make the collector ask sooner.
    let mut lab = TestLab::start(
        KubeEmulatorConfig::default(),
        1,
        "source:\n  watch_timeout: 2s\n",
    )
    .await;
    lab.leader_ready().await;
    lab.replicas.signal(0, Signal::SIGTERM).unwrap();
    assert!(lab.replicas.wait_exit(0, Duration::from_secs(15)).is_some());
    // The API server's data went backwards (restored from a backup): the stored checkpoint is
    // far ahead of anything it will serve.
    {
        // The database of the term that just ended (the next term copies it).
        let root = common::workdir_of(&lab).join("store");
        let store = SledStore::open(&OpenOptions {
            path: kevents::store::terms::current_dir(&root).unwrap().unwrap(),
            cache_capacity: 1 << 20,
            lock_timeout: Duration::from_secs(10),
        })
        .unwrap()
        .store;
        let term = EditGuard(store.meta().unwrap().epoch);
        store.capture(&[], Some("900000000"), 0, &term).unwrap();
    }
    // Events created while nobody collects (no updates, so the relist shows every version),
    // then more while the restarted collector watches.
    lab.emulator.state().set_generator(generator(100.0, 0.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.emulator.state().set_generator(None);
    let while_down = lab.report().stored;
    assert!(while_down > 50, "{while_down}");
    lab.replicas.restart(0).unwrap();
    lab.leader_ready().await;
    // Its first watch session moves nothing; it asks where the server is, and relists.
    wait_until(
        "a relist of the restored server",
        Duration::from_secs(30),
        || {
            lab.logs().contains("Listed events resource_version")
                && lab.logs().contains("went backwards")
        },
    )
    .await;
    let before = event_lists(&lab.emulator);
    assert!(before >= 2, "{before}");
    lab.emulator.state().set_generator(generator(100.0, 0.3));
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.emulator.state().set_generator(None);
    let report = lab.settle(Duration::from_secs(30)).await;
    let logs = lab.logs();
    assert!(report.is_exact(), "{report:?}\n{logs}");
    assert!(report.stored > while_down + 100, "{report:?}");
    assert!(logs.contains("behind the checkpoint"), "{logs}");
    assert!(logs.contains("went backwards"), "{logs}");
    lab.stop().await;
}
