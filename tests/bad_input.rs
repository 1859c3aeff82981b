//! Bad input from the API server never crashes the leader or loses other events, and each case is
//! counted and logged once: a watch line that is not JSON, an unknown watch type, a Status object
//! in the stream, an object without a uid, an event missing every optional field, and an event
//! with a 1 MiB message.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::time::{Duration, Instant};

use common::TestLab;
use kevents_testkit::{
    harness::admin_get,
    kube::{GeneratorConfig, KubeEmulatorConfig},
};

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_watch_lines_and_odd_events_are_counted_logged_once_and_lose_nothing_else() {
    let lab = TestLab::start(KubeEmulatorConfig::default(), 1, "").await;
    let leader = lab.leader_ready().await;
    let state = lab.emulator.state();
    state.set_generator(Some(GeneratorConfig {
        events_per_second: 100.0,
        update_ratio: 0.3,
        seed: 9,
        namespaces: 2,
    }));
    tokio::time::sleep(Duration::from_secs(1)).await;
    state.set_generator(None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Real watches never repeat a resourceVersion another object had: take three fresh ones
    // from Lease writes (not on the events watch) for the injected events.
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(lab.emulator.client(), "default");
    let mut fresh = Vec::new();
    for name in ["rv-a", "rv-b", "rv-c"] {
        let lease =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        let created = leases
            .create(&kube::api::PostParams::default(), &lease)
            .await
            .unwrap();
        fresh.push(created.metadata.resource_version.unwrap());
    }
    let [rv, rv_bare, rv_huge] = [&fresh[0], &fresh[1], &fresh[2]];
    let huge = "x".repeat(1 << 20);
    state.faults().inject_watch_lines(vec![
        "this is not json".to_owned(),
        r#"{"type":"FOO","object":{}}"#.to_owned(),
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"boom","reason":"InternalError","code":500}"#.to_owned(),
        format!(r#"{{"type":"ADDED","object":{{"apiVersion":"v1","kind":"Event","metadata":{{"name":"no-uid","namespace":"default","resourceVersion":"{rv}"}}}}}}"#),
        format!(r#"{{"type":"ADDED","object":{{"apiVersion":"v1","kind":"Event","metadata":{{"name":"bare","namespace":"default","uid":"bare-uid","resourceVersion":"{rv_bare}"}}}}}}"#),
        format!(
            r#"{{"type":"ADDED","object":{{"apiVersion":"v1","kind":"Event","metadata":{{"name":"huge","namespace":"default","uid":"huge-uid","resourceVersion":"{rv_huge}"}},"involvedObject":{{"kind":"Pod","name":"p","namespace":"default"}},"reason":"Big","message":"{huge}","type":"Normal"}}}}"#
        ),
    ]);
    // Life goes on after the bad lines.
    state.set_generator(Some(GeneratorConfig {
        events_per_second: 100.0,
        update_ratio: 0.3,
        seed: 10,
        namespaces: 2,
    }));
    tokio::time::sleep(Duration::from_secs(2)).await;
    state.set_generator(None);
    let report = lab.settle(Duration::from_secs(30)).await;
    assert_eq!(report.missing, 0, "{report:?}");
    assert_eq!(report.duplicated, 0, "{report:?}");
    // The two odd but usable events were captured (they are not in the generator's truth).
    assert_eq!(report.unexpected, 2, "{report:?}");
    let rows = std::fs::read_to_string(lab.sink()).unwrap();
    let bare = rows
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["Uid"] == "bare-uid")
        .expect("the event without optional fields is delivered");
    assert_eq!(bare["Kind"], "");
    assert!(bare["LastSeen"].is_null());
    let big = rows
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["Uid"] == "huge-uid")
        .expect("the 1 MiB event is delivered");
    assert_eq!(big["Message"].as_str().unwrap().len(), 1 << 20);

    let admin = lab.replicas.replicas[leader].admin;
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let text = admin_get(admin, "/metrics")
            .await
            .expect("the leader is alive");
        if metric(
            &text,
            "kevents_events_malformed_total{reason=\"missing_key\"}",
        ) >= 1.0
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "malformed events never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for reason in ["not_json", "unknown_type", "status_object", "missing_key"] {
        let series = format!("kevents_events_malformed_total{{reason=\"{reason}\"}}");
        let count = metric(&metrics, &series);
        assert!(
            (count - 1.0).abs() < f64::EPSILON,
            "{series} = {count}, want 1"
        );
    }
    let logs = lab.logs();
    assert_eq!(
        logs.matches("Skipped an unusable watch line").count(),
        3,
        "{logs}"
    );
    assert_eq!(
        logs.matches("Skipped an event that cannot be captured")
            .count(),
        1,
        "{logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
    lab.stop().await;
}
