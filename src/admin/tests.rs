use std::time::Duration;

use tokio::sync::Notify;

use super::*;
use crate::{
    blocking::IoPool,
    dead::{DeadHandle, DeadListing},
    store::{BatchRecord, CaptureItem, EventStore, Guard, OpenOptions, SledStore},
};

struct Current;

impl Guard for Current {
    fn is_current(&self) -> bool {
        true
    }
    fn epoch(&self) -> i64 {
        3
    }
}

/// A store holding one dead batch of two records; returns its id.
fn store_with_a_dead_batch(dir: &std::path::Path) -> (Arc<SledStore>, String) {
    let store = SledStore::open(&OpenOptions {
        path: dir.join("store"),
        cache_capacity: 1 << 20,
        lock_timeout: Duration::from_secs(5),
    })
    .unwrap()
    .store;
    store.begin_term(&Current).unwrap();
    let items: Vec<CaptureItem> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, uid)| CaptureItem {
            uid: (*uid).to_owned(),
            resource_version: (i + 1).to_string(),
            record: format!("{{\"uid\":\"{uid}\"}}").into_bytes(),
            listed: None,
        })
        .collect();
    store.capture(&items, None, 0, &Current).unwrap();
    let batch = BatchRecord {
        id: BatchRecord::id_for("s", 0, 1),
        first: 0,
        last: 1,
        events: 2,
        bytes: 0,
        epoch: 3,
        created_ms: 0,
    };
    store.record_batch(&batch, &Current).unwrap();
    store
        .dead_batch(
            &batch,
            "400 Bad Request: mapping",
            1_700_000_000_000,
            &Current,
        )
        .unwrap();
    (Arc::new(store), batch.id)
}

/// Serves the admin router on loopback; returns its base URL and the stop token.
async fn serve_admin(dead: DeadSlot) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let state = AdminState {
        metrics: Metrics::new().unwrap(),
        board: Arc::new(StatusBoard::new()),
        liveness: Arc::new(Liveness::new(Duration::from_secs(60))),
        dead,
    };
    tokio::spawn(serve(listener, state, stop.clone()));
    (base, stop)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn a_replica_that_is_not_leading_answers_503_and_names_the_leader_lookup() {
    let (base, stop) = serve_admin(DeadSlot::default()).await;
    let listed = http().get(format!("{base}/dead")).send().await.unwrap();
    assert_eq!(listed.status(), 503);
    let body: serde_json::Value = listed.json().await.unwrap();
    assert_eq!(body["error"], dead::NOT_LEADER);
    let replayed = http()
        .post(format!("{base}/dead/replay"))
        .json(&serde_json::json!({ "all": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 503);
    stop.cancel();
}

#[tokio::test]
async fn the_leader_lists_and_replays_its_dead_batches_and_wakes_the_shipper() {
    let dir = tempfile::tempdir().unwrap();
    let (store, id) = store_with_a_dead_batch(dir.path());
    let slot = DeadSlot::default();
    let wake = Arc::new(Notify::new());
    let publication = slot.publish(DeadHandle::new(
        Arc::clone(&store) as Arc<dyn EventStore>,
        Arc::new(Current),
        IoPool::new("store", 1, Duration::from_secs(5)).unwrap(),
        Arc::clone(&wake),
    ));
    let (base, stop) = serve_admin(slot.clone()).await;

    let listing: DeadListing = http()
        .get(format!("{base}/dead"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing.epoch, Some(3));
    assert_eq!(listing.dead_events, 2);
    assert_eq!(listing.batches.len(), 1);
    let entry = &listing.batches[0];
    assert_eq!(entry.id, id);
    assert_eq!((entry.events, entry.epoch), (2, 3));
    assert_eq!(entry.reason, "400 Bad Request: mapping");
    assert_eq!(entry.dead_at, "2023-11-14T22:13:20Z");
    assert_eq!(entry.payload, None, "no payload unless asked");
    let with_payload: DeadListing = http()
        .get(format!("{base}/dead?payload=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        with_payload.batches[0].payload.as_deref(),
        Some("{\"uid\":\"a\"}\n{\"uid\":\"b\"}\n")
    );

    let empty = http()
        .post(format!("{base}/dead/replay"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 400);

    let answer = http()
        .post(format!("{base}/dead/replay"))
        .json(&serde_json::json!({ "ids": [id, "nope"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let report: ReplayReport = answer.json().await.unwrap();
    assert_eq!(report.unknown, vec!["nope".to_owned()]);
    assert_eq!(report.events, 2);
    assert_eq!(report.replayed[0].id, id);
    assert_eq!(
        (report.replayed[0].first_seq, report.replayed[0].last_seq),
        (2, 3)
    );
    tokio::time::timeout(Duration::from_secs(5), wake.notified())
        .await
        .expect("the shipper was not woken");
    let meta = store.meta().unwrap();
    assert_eq!((meta.outbox_events, meta.dead_events), (2, 0));

    // The term ends: the handle is withdrawn and the replica answers as a follower.
    drop(publication);
    let after = http().get(format!("{base}/dead")).send().await.unwrap();
    assert_eq!(after.status(), 503);
    stop.cancel();
}
