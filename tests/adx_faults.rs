//! ADX misbehaving while real `kevents run` replicas ship to it: an outage (503) for a while,
//! throttling with `Retry-After`, a permanent 400, and tokens expiring mid-run. Each states its
//! property: nothing lost and nothing duplicated, except the one batch ADX rejected for good,
//! which is in the dead tree.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod adx_common;

use std::time::Duration;

use adx_common::{DB, TABLE, metric_in, start_lab};
use kevents_testkit::adx::{AdxEmulatorConfig, AuthSettings};

/// What the leader's `/metrics` and `/status` say at one moment.
#[derive(Debug)]
struct Sample {
    at: Duration,
    send_retries: u64,
    streaming_errors: u64,
    outbox_events: u64,
    status_outbox_events: u64,
    healthy: serde_json::Value,
    last_error: String,
}

async fn sample(lab: &adx_common::Lab, leader: usize, since: std::time::Instant) -> Sample {
    let metrics = lab.admin(leader, "/metrics").await;
    let status: serde_json::Value =
        serde_json::from_str(&lab.admin(leader, "/status").await).unwrap();
    Sample {
        at: since.elapsed(),
        send_retries: metric_in(
            &metrics,
            "kevents_batch_sends_total{outcome=\"retriable_error\"}",
        ),
        streaming_errors: metric_in(
            &metrics,
            "kevents_adx_requests_total{operation=\"streaming\",outcome=\"retriable_error\"}",
        ),
        outbox_events: metric_in(&metrics, "kevents_outbox_events"),
        status_outbox_events: status["outbox"]["events"].as_u64().unwrap_or(0),
        healthy: status["sink"]["healthy"].clone(),
        last_error: status["sink"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adx_unavailable_for_2_minutes_loses_nothing_and_the_backlog_drains() {
    let lab = start_lab(AdxEmulatorConfig::default(), "streaming", "", 1, 100.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = lab.leader();
    let outage = Duration::from_secs(120);
    let started = std::time::Instant::now();
    lab.adx.state().outage_for(outage);
    // A request that arrived just before may still store its rows.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows_at_start = lab.adx.state().row_count(DB, TABLE);
    // While it lasts: nothing arrives, sends keep failing and are retried, the backlog grows,
    // and `/status` says the sink is unhealthy and why.
    let mut during = Vec::new();
    while started.elapsed() + Duration::from_secs(5) < outage {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if started.elapsed() + Duration::from_secs(2) >= outage {
            break;
        }
        let now = sample(&lab, leader, started).await;
        assert!(lab.adx.state().in_outage());
        assert_eq!(
            lab.adx.state().row_count(DB, TABLE),
            rows_at_start,
            "nothing lands during the outage"
        );
        assert_eq!(now.healthy, false, "{now:?}");
        assert!(now.last_error.contains("503"), "{now:?}");
        during.push(now);
    }
    for sample in &during {
        println!("during the outage: {sample:?}");
    }
    let (first, last) = (&during[0], &during[during.len() - 1]);
    assert!(during.len() >= 8, "{during:?}");
    assert!(last.at >= Duration::from_secs(100), "{last:?}");
    for pair in during.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(after.send_retries > before.send_retries, "{pair:?}");
        assert!(after.streaming_errors > before.streaming_errors, "{pair:?}");
        assert!(after.outbox_events > before.outbox_events, "{pair:?}");
        assert!(
            after.status_outbox_events > before.status_outbox_events,
            "{pair:?}"
        );
    }
    // About 100 events/s (nominal; a loaded machine lags) were captured meanwhile and wait in
    // the outbox.
    assert!(
        last.outbox_events > first.outbox_events + 4_000,
        "{first:?} {last:?}"
    );
    // Back: the backlog drains.
    while lab.adx.state().in_outage() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = std::time::Instant::now();
    let report = lab.drain(Duration::from_secs(90)).await;
    println!(
        "outage {outage:?}: {report:?}; caught up {:.1}s after ADX came back",
        back.elapsed().as_secs_f64()
    );
    assert!(report.stored > 6_000, "{report:?}");
    assert!(report.is_exact(), "{report:?}\n{}", lab.logs());
    let mut after = sample(&lab, leader, started).await;
    for _ in 0..100 {
        if after.outbox_events == 0 && after.status_outbox_events == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = sample(&lab, leader, started).await;
    }
    println!("after the outage: {after:?}");
    assert_eq!(after.outbox_events, 0, "{after:?}");
    assert_eq!(after.status_outbox_events, 0, "{after:?}");
    assert_eq!(after.healthy, true, "{after:?}");
    // The retries stopped with the outage.
    let settled = sample(&lab, leader, started).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sample(&lab, leader, started).await.send_retries,
        settled.send_retries
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_ingestion_waits_out_a_data_management_outage_at_start() {
    let lab = start_lab(AdxEmulatorConfig::default(), "queued", "", 1, 100.0).await;
    lab.adx.state().outage_for(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        lab.adx.state().row_count(DB, TABLE),
        0,
        "no resources, nothing shipped"
    );
    let report = lab.drain(Duration::from_secs(30)).await;
    assert!(
        report.stored > 300 && report.is_exact(),
        "{report:?}\n{}",
        lab.logs()
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_with_retry_after_is_honoured() {
    let lab = start_lab(AdxEmulatorConfig::default(), "streaming", "", 1, 50.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let retry_after = Duration::from_secs(2);
    lab.adx.state().throttle_next(2, retry_after);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let report = lab.drain(Duration::from_secs(30)).await;
    assert!(report.is_exact(), "{report:?}\n{}", lab.logs());
    let requests: Vec<_> = lab
        .adx
        .state()
        .requests()
        .into_iter()
        .filter(|r| r.streaming)
        .collect();
    let throttled: Vec<_> = requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == 429)
        .collect();
    assert_eq!(throttled.len(), 2, "{requests:?}");
    for (index, answer) in throttled {
        let next = &requests[index + 1];
        let waited = next.at - answer.at;
        println!("429 with Retry-After {retry_after:?}: the next request came {waited:?} later");
        // The shipper's own backoff starts at 200ms: only Retry-After explains a 2s wait.
        assert!(
            waited + Duration::from_millis(50) >= retry_after,
            "{waited:?}"
        );
    }
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_400_moves_that_batch_to_dead_and_later_batches_still_arrive() {
    let lab = start_lab(AdxEmulatorConfig::default(), "streaming", "", 1, 60.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.adx.state().reject_next_permanently(1);
    let rows_at_rejection = lab.adx.state().row_count(DB, TABLE);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = lab.drain(Duration::from_secs(15)).await;
    let leader = lab.leader();
    let metrics = lab.admin(leader, "/metrics").await;
    let dead_events = metric_in(&metrics, "kevents_events_dead_total");
    println!("permanent 400: {report:?}, dead events {dead_events}");
    assert_eq!(
        metric_in(&metrics, "kevents_dead_batches_total"),
        1,
        "{metrics}"
    );
    assert!(dead_events > 0);
    let missing = report.missing as u64;
    assert_eq!(
        missing, dead_events,
        "exactly the dead batch is missing: {report:?}"
    );
    assert_eq!(report.duplicated, 0);
    assert!(
        lab.adx.state().row_count(DB, TABLE) > rows_at_rejection + 50,
        "later batches arrived"
    );
    let status: serde_json::Value =
        serde_json::from_str(&lab.admin(leader, "/status").await).unwrap();
    assert!(
        status["outbox"]["dead_events"].as_u64().unwrap() > 0,
        "{status}"
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_mid_run_is_refreshed() {
    let adx_config = AdxEmulatorConfig {
        auth: AuthSettings {
            require_token: true,
            client_secrets: vec![("kevents-app".to_owned(), "lab-secret-value".to_owned())],
            assertions: Vec::new(),
        },
        ..AdxEmulatorConfig::default()
    };
    // The emulator's URL is only known once it runs: the authority is filled in below.
    let lab = start_lab_with_secret(adx_config).await;
    lab.adx.state().set_token_lifetime(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(5)).await;
    lab.adx.state().expire_tokens_now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let report = lab.drain(Duration::from_secs(20)).await;
    let stats = lab.adx.state().stats();
    println!("expiring tokens: {report:?} {stats:?}");
    assert!(
        report.stored > 300 && report.is_exact(),
        "{report:?}\n{}",
        lab.logs()
    );
    assert!(stats.tokens_issued >= 4, "{stats:?}");
    assert!(
        stats.unauthorized <= 2,
        "refreshed ahead of expiry, once after revocation: {stats:?}"
    );
    lab.stop().await;
}

async fn start_lab_with_secret(adx_config: AdxEmulatorConfig) -> adx_common::Lab {
    // The authority host is the emulator itself; start_lab builds the sink from `extra`, which
    // must name it, so reserve the emulator's port by starting it through a placeholder first.
    adx_common::start_lab_with(adx_config, "streaming", 1, 80.0, |url| {
        format!(
            "    auth:\n      mode: client_secret\n      tenant_id: lab-tenant\n      client_id: kevents-app\n      client_secret: lab-secret-value\n      authority_host: {url}\n"
        )
    })
    .await
}

/// The identity holds Database Ingestor only, so the engine answers the re-send check
/// query 403. A new leader that takes over while ADX holds a stored batch it never confirmed must
/// not retry that query forever (the shipper sends one batch at a time, so everything would
/// stall): it reports the missing role once and re-sends the batch queued with its `ingest-by`
/// tag. Property: nothing is missing; the only repeat is the batch whose streamed copy could not
/// be looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_that_may_not_query_re_sends_queued_and_delivery_goes_on() {
    let mut lab = start_lab(AdxEmulatorConfig::default(), "streaming", "", 2, 60.0).await;
    lab.adx.state().set_query_forbidden(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Kill the leader while ADX has stored a batch and holds back its answer.
    lab.adx.state().set_answer_delay(Duration::from_secs(1));
    assert!(
        adx_common::wait_until(Duration::from_secs(20), || lab.adx.state().answers_held()
            > 0)
        .await,
        "no streaming request while answers were held"
    );
    lab.fail_over(nix::sys::signal::Signal::SIGKILL).await;
    lab.adx.state().set_answer_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let report = lab.drain(Duration::from_secs(30)).await;
    let leader = lab.leader();
    let metrics = lab.admin(leader, "/metrics").await;
    let logs = lab.logs();
    let stats = lab.adx.state().stats();
    println!("query forbidden after a failover: {report:?} {stats:?}");
    assert!(report.stored > 300, "{report:?}");
    assert_eq!(report.missing, 0, "{report:?}\n{logs}");
    assert!(
        report.duplicated <= 300,
        "at most the one batch: {report:?}"
    );
    assert!(
        metric_in(
            &metrics,
            "kevents_adx_managed_fallbacks_total{reason=\"query_forbidden\"}"
        ) >= 1,
        "{metrics}"
    );
    assert_eq!(
        metric_in(
            &metrics,
            "kevents_adx_requests_total{operation=\"query\",outcome=\"permanent_error\"}"
        ),
        1,
        "one refused query, then none: {metrics}"
    );
    assert!(stats.queued_ingestions >= 1, "{stats:?}");
    assert_eq!(stats.queries, 0, "{stats:?}");
    assert_eq!(
        logs.matches("needs the Database Viewer role").count(),
        1,
        "{logs}"
    );
    lab.stop().await;
}

/// ADX refuses streaming requests as too large (413) below the sink's own limit. Streaming
/// mode halves them until they fit, so delivery goes on exactly; when a single record is too
/// large alone, its batch goes to the dead tree with that reason and later batches still arrive.
/// Nothing is retried forever with the same body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_streaming_requests_are_halved_and_a_record_too_large_alone_goes_to_dead() {
    let lab = start_lab(AdxEmulatorConfig::default(), "streaming", "", 1, 60.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = lab.leader();
    // A single record (about 350 bytes of gzip) fits under 600 bytes; a batch of 15 does not.
    let rows_before = lab.adx.state().row_count(DB, TABLE);
    lab.adx.state().set_streaming_limit(600, 413);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let metrics = lab.admin(leader, "/metrics").await;
    let refused = lab
        .adx
        .state()
        .requests()
        .iter()
        .filter(|r| r.streaming && r.status == 413)
        .count();
    assert!(refused > 0, "the limit bit");
    assert!(
        lab.adx.state().row_count(DB, TABLE) > rows_before + 100,
        "halved batches arrived"
    );
    assert_eq!(metric_in(&metrics, "kevents_dead_batches_total"), 0);
    // Now no record fits alone.
    lab.adx.state().set_streaming_limit(200, 413);
    tokio::time::sleep(Duration::from_secs(3)).await;
    lab.adx.state().set_streaming_limit(4 << 20, 413);
    let rows_at_reset = lab.adx.state().row_count(DB, TABLE);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = lab.drain(Duration::from_secs(20)).await;
    let metrics = lab.admin(leader, "/metrics").await;
    let dead_events = metric_in(&metrics, "kevents_events_dead_total");
    println!("413 halving: {report:?}, refused {refused}, dead events {dead_events}");
    assert!(
        metric_in(&metrics, "kevents_dead_batches_total") >= 1,
        "{metrics}"
    );
    assert_eq!(report.duplicated, 0, "{report:?}");
    assert!(report.missing > 0, "{report:?}");
    // A batch in flight when the limit dropped may have delivered a prefix before going dead.
    assert!(report.missing as u64 <= dead_events, "{report:?}");
    assert!(
        lab.adx.state().row_count(DB, TABLE) > rows_at_reset + 50,
        "later batches arrived"
    );
    let logs = lab.logs();
    assert!(
        logs.contains("too large for streaming ingestion even alone"),
        "the dead tree's reason names it:\n{logs}"
    );
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        status = serde_json::from_str(&lab.admin(leader, "/status").await).unwrap();
        if status["outbox"]["events"].as_u64() == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["outbox"]["events"].as_u64(), Some(0), "{status}");
    assert_eq!(
        status["outbox"]["dead_events"].as_u64(),
        Some(dead_events),
        "{status}"
    );
    lab.stop().await;
}
