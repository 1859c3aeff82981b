//! End to end on emulators: the generator writes Events, real `kevents run` replicas elect a
//! leader and ship through the ADX sink (queued through Azurite, streaming, managed), and the rows
//! in the ADX emulator equal the API server's ground truth: nothing missing, nothing duplicated,
//! across a SIGTERM failover and, for queued ingestion with `ingest-by` tags, a kill -9.
//!
//! Streaming is checked across a graceful failover only: ADX cannot dedupe streaming ingestion
//! (no extent tags), so a leader killed after ADX stored a batch but before it recorded the
//! answer re-sends it. The queued path closes that gap with `ingest-by` tags.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod adx_common;

use std::time::Duration;

use adx_common::start_lab;
use kevents::emulator::adx::AdxEmulatorConfig;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_delivery_equals_ground_truth_across_sigterm_and_kill_9_failovers() {
    let mut lab = start_lab(
        AdxEmulatorConfig::default(),
        "queued",
        "    ingest_by_tags: true\n",
        2,
        80.0,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let graceful = lab.fail_over(Signal::SIGTERM).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let killed = lab.fail_over(Signal::SIGKILL).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = lab.drain(Duration::from_secs(30)).await;
    println!(
        "queued: stored {} delivered {} missing {} duplicated {}; failover after SIGTERM {:.2}s, after kill -9 {:.2}s; skipped re-sends {}",
        report.stored,
        report.delivered,
        report.missing,
        report.duplicated,
        graceful.as_secs_f64(),
        killed.as_secs_f64(),
        lab.adx.state().stats().skipped_existing
    );
    assert!(report.stored > 500, "{report:?}");
    assert!(report.is_exact(), "{report:?}\n{}", lab.logs());
    let stats = lab.adx.state().stats();
    assert_eq!(
        (
            stats.malformed_messages,
            stats.raw_size_mismatches,
            stats.failed_ingestions
        ),
        (0, 0, 0)
    );
    assert!(stats.queued_ingestions > 0 && stats.streaming_requests == 0);
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_delivery_equals_ground_truth_across_a_sigterm_failover() {
    let mut lab = start_lab(AdxEmulatorConfig::default(), "streaming", "", 2, 80.0).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    lab.fail_over(Signal::SIGTERM).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = lab.drain(Duration::from_secs(30)).await;
    println!("streaming: {report:?}");
    assert!(report.stored > 300, "{report:?}");
    assert!(report.is_exact(), "{report:?}\n{}", lab.logs());
    let stats = lab.adx.state().stats();
    assert!(
        stats.streaming_requests > 0 && stats.queued_ingestions == 0,
        "{stats:?}"
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_delivery_equals_ground_truth_with_fallbacks_to_queued() {
    let mut lab = start_lab(
        AdxEmulatorConfig::default(),
        "managed",
        "    ingest_by_tags: true\n",
        2,
        80.0,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Transient errors and throttling send some batches the queued way.
    lab.adx.state().fail_next(2, 503);
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.adx.state().throttle_next(1, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.fail_over(Signal::SIGTERM).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = lab.drain(Duration::from_secs(30)).await;
    let stats = lab.adx.state().stats();
    println!("managed: {report:?} {stats:?}");
    assert!(report.stored > 300, "{report:?}");
    assert!(report.is_exact(), "{report:?}\n{}", lab.logs());
    assert!(stats.streaming_requests > 0, "{stats:?}");
    assert!(
        stats.queued_ingestions >= 1,
        "fell back to queued: {stats:?}"
    );
    lab.stop().await;
}
