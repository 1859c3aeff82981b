//! End to end on emulators: the generator writes Events, real `kevents run` replicas elect a
//! leader and ship through the ADX sink (queued through Azurite, streaming, managed), and the rows
//! in the ADX emulator equal the API server's ground truth: nothing missing, nothing duplicated,
//! across a SIGTERM failover and a kill -9 failover, in each of the three modes.
//!
//! One body runs every mode. Where batches are streamed, each failover strikes while ADX has
//! stored a batch and holds back its answer, so the leader that goes away never learns that it
//! landed: the next leader must find it in the table instead of streaming it twice (streaming
//! has no `ingest-by` tags). Queued ingestion drops such a repeat by its `ingest-by` tag.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod adx_common;

use std::time::Duration;

use adx_common::{Lab, start_lab, wait_until};
use kevents_testkit::adx::{AdxEmulatorConfig, AdxStats};
use nix::sys::signal::Signal;

/// How a mode is disturbed before its failovers, and what it must have used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Queued,
    Streaming,
    Managed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Streaming => "streaming",
            Self::Managed => "managed",
        }
    }

    fn streams(self) -> bool {
        self != Self::Queued
    }
}

/// Fails the leader over with `signal`; where batches are streamed, at a moment when ADX has
/// stored a batch the leader has not heard back about. Returns the failover time.
async fn fail_over_mid_batch(lab: &mut Lab, mode: Mode, signal: Signal) -> Duration {
    if mode.streams() {
        lab.adx.state().set_answer_delay(Duration::from_secs(1));
        let held = wait_until(Duration::from_secs(20), || {
            lab.adx.state().answers_held() > 0
        })
        .await;
        assert!(held, "no streaming request while answers were held");
    }
    let took = lab.fail_over(signal).await;
    lab.adx.state().set_answer_delay(Duration::ZERO);
    took
}

/// The property, for `mode`: across a SIGTERM and a kill -9 failover, the rows equal the API
/// server's ground truth.
async fn delivery_equals_ground_truth_across_sigterm_and_kill_9(mode: Mode) -> AdxStats {
    let mut lab = start_lab(
        AdxEmulatorConfig::default(),
        mode.name(),
        "    ingest_by_tags: true\n",
        2,
        80.0,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    if mode == Mode::Managed {
        // Transient errors and throttling send some batches the queued way.
        lab.adx.state().fail_next(2, 503);
        tokio::time::sleep(Duration::from_secs(2)).await;
        lab.adx.state().throttle_next(1, Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let graceful = fail_over_mid_batch(&mut lab, mode, Signal::SIGTERM).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let killed = fail_over_mid_batch(&mut lab, mode, Signal::SIGKILL).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = lab.drain(Duration::from_secs(40)).await;
    let stats = lab.adx.state().stats();
    let found = lab
        .logs()
        .matches("The batch is in ADX already; not sending it again")
        .count();
    println!(
        "{}: stored {} delivered {} missing {} duplicated {}; failover after SIGTERM {:.2}s, after kill -9 {:.2}s; re-sent batches found in ADX {found}, dropped by ingest-by tag {}; {stats:?}",
        mode.name(),
        report.stored,
        report.delivered,
        report.missing,
        report.duplicated,
        graceful.as_secs_f64(),
        killed.as_secs_f64(),
        stats.skipped_existing,
    );
    assert!(report.stored > 500, "{report:?}");
    assert!(report.is_exact(), "{report:?}\n{}", lab.logs());
    assert_eq!(
        (
            stats.malformed_messages,
            stats.raw_size_mismatches,
            stats.failed_ingestions
        ),
        (0, 0, 0)
    );
    if mode.streams() {
        // The leader after the kill -9 looked up what its predecessor had left unconfirmed (a
        // SIGTERMed leader finishes its send in flight and acknowledges it: nothing to look up).
        assert!(stats.queries >= 1, "{stats:?}");
    }
    lab.stop().await;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_delivery_equals_ground_truth_across_sigterm_and_kill_9_failovers() {
    let stats = delivery_equals_ground_truth_across_sigterm_and_kill_9(Mode::Queued).await;
    assert!(
        stats.queued_ingestions > 0 && stats.streaming_requests == 0,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_delivery_equals_ground_truth_across_sigterm_and_kill_9_failovers() {
    let stats = delivery_equals_ground_truth_across_sigterm_and_kill_9(Mode::Streaming).await;
    assert!(
        stats.streaming_requests > 0 && stats.queued_ingestions == 0,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_delivery_equals_ground_truth_across_sigterm_and_kill_9_failovers() {
    let stats = delivery_equals_ground_truth_across_sigterm_and_kill_9(Mode::Managed).await;
    assert!(stats.streaming_requests > 0, "{stats:?}");
    assert!(
        stats.queued_ingestions >= 1,
        "fell back to queued: {stats:?}"
    );
}
