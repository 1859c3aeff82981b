//! Queued ingestion confirmed by ingestion status rows, against the ADX emulator on real
//! Azurite (its Table service holds the rows): a batch is only submitted when its message is
//! posted, and delivered when the data management service writes `Succeeded` into its row
//! minutes (here: a second or two) later; a re-send after a failover follows the row instead of
//! posting the message again; a row that stays `Pending` (a submission that never reached the
//! queue) is submitted again; a mapping error is a permanent failure with the service's reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod adx_common;

use std::time::Duration;

use adx_common::synthetic_batch;
use adx_common::{DB, TABLE, config, emulator, metric, sink};
use base64::Engine as _;
use kevents::{
    config::AdxMode,
    sink::{AdxSink, Confirmation, Receipt, Sink as _, adx::source_id},
};
use kevents_testkit::adx::AdxEmulatorConfig;

/// Asks until the batch's status is final (or `timeout`).
async fn confirm_until_final(
    sink: &AdxSink,
    batch_id: &str,
    timeout: Duration,
) -> kevents::sink::Result<Confirmation> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match sink.confirm(batch_id).await? {
            Confirmation::Pending { .. } if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return Ok(other),
        }
    }
}

/// The decoded JSON of every queue message the worker read.
fn messages(adx: &kevents_testkit::adx::AdxEmulator) -> Vec<serde_json::Value> {
    adx.state()
        .messages()
        .iter()
        .map(|text| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_queued_batch_is_submitted_then_confirmed_by_its_status_row_after_the_ingestion_delay() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    adx.state()
        .set_ingest_delay(Duration::from_millis(1500), Duration::from_millis(1500));
    let (sink, metrics) = sink(&config(&adx, AdxMode::Queued));
    let batch = synthetic_batch("st1", 0, 40);
    let receipt = sink.send(&batch).await.unwrap();
    assert!(
        matches!(receipt, Receipt::Submitted { .. }),
        "a posted message is not a delivery: {receipt:?}"
    );
    // Before the DM has processed it, the row says Pending and nothing is in the table.
    assert!(matches!(
        sink.confirm(&batch.id).await.unwrap(),
        Confirmation::Pending { .. }
    ));
    assert_eq!(adx.state().row_count(DB, TABLE), 0);
    assert_eq!(
        confirm_until_final(&sink, &batch.id, Duration::from_secs(20))
            .await
            .unwrap(),
        Confirmation::Delivered
    );
    assert_eq!(adx.state().row_count(DB, TABLE), 40);
    let message = &messages(&adx)[0];
    assert_eq!(message["ReportLevel"], 2);
    assert_eq!(message["ReportMethod"], 1);
    assert_eq!(
        message["IngestionStatusInTable"]["PartitionKey"],
        source_id(&batch.id).as_str()
    );
    let stats = adx.state().stats();
    assert_eq!(stats.status_rows_written, 1);
    assert_eq!(
        stats.status_rows_missing, 0,
        "the Pending row was not written before the message"
    );
    assert_eq!(
        metric(
            &metrics,
            "kevents_adx_ingestion_status_total{status=\"succeeded\"}"
        ),
        1
    );
    adx.shutdown().await;
}

#[tokio::test]
async fn a_batch_re_sent_after_a_failover_follows_its_row_and_is_ingested_once() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    adx.state()
        .set_ingest_delay(Duration::from_secs(1), Duration::from_secs(1));
    let cfg = config(&adx, AdxMode::Queued);
    let batch = synthetic_batch("st2", 0, 30);
    // The old leader submits the batch and dies before it hears the outcome.
    let (old, _) = sink(&cfg);
    old.send(&batch).await.unwrap();
    drop(old);
    // The new leader re-sends it while the DM still holds it, and again after it landed.
    let (new, metrics) = sink(&cfg);
    assert!(matches!(
        new.resend(&batch).await.unwrap(),
        Receipt::Submitted { .. }
    ));
    assert_eq!(
        confirm_until_final(&new, &batch.id, Duration::from_secs(20))
            .await
            .unwrap(),
        Confirmation::Delivered
    );
    assert_eq!(new.resend(&batch).await.unwrap(), Receipt::Delivered);
    // A retry of the first send in a term (its row exists) follows it too.
    assert_eq!(new.send(&batch).await.unwrap(), Receipt::Delivered);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(adx.state().row_count(DB, TABLE), 30, "ingested twice");
    assert_eq!(
        adx.state().messages().len(),
        1,
        "a message was posted again"
    );
    assert_eq!(
        metric(&metrics, "kevents_adx_batches_total{stage=\"queued\"}"),
        3
    );
    adx.shutdown().await;
}

#[tokio::test]
async fn a_row_left_pending_by_a_submission_that_never_reached_the_queue_is_submitted_again() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let mut cfg = config(&adx, AdxMode::Queued);
    cfg.status.pending_timeout = Duration::from_secs(2);
    let batch = synthetic_batch("st3", 0, 25);
    // An earlier leader wrote the Pending row and died before posting the message.
    let id = source_id(&batch.id);
    let mut row = serde_json::Map::new();
    row.insert("Status".to_owned(), "Pending".into());
    adx.storage()
        .upsert_row(&adx.resources().status_table, &id, &row)
        .await
        .unwrap();
    let (sink, metrics) = sink(&cfg);
    assert!(
        matches!(
            sink.resend(&batch).await.unwrap(),
            Receipt::Submitted { .. }
        ),
        "a Pending row must be followed, not answered by a second message"
    );
    assert!(adx.state().messages().is_empty());
    let answer = confirm_until_final(&sink, &batch.id, Duration::from_secs(20))
        .await
        .unwrap();
    let Confirmation::Resubmit { reason } = answer else {
        panic!("{answer:?}");
    };
    assert!(reason.contains("pending_timeout"), "{reason}");
    assert!(matches!(
        sink.resubmit(&batch).await.unwrap(),
        Receipt::Submitted { .. }
    ));
    assert_eq!(
        confirm_until_final(&sink, &batch.id, Duration::from_secs(20))
            .await
            .unwrap(),
        Confirmation::Delivered
    );
    assert_eq!(adx.state().row_count(DB, TABLE), 25);
    assert_eq!(
        metric(
            &metrics,
            "kevents_adx_ingestion_status_total{status=\"pending_timeout\"}"
        ),
        1
    );
    adx.shutdown().await;
}

#[tokio::test]
async fn a_mapping_error_is_a_permanent_failure_carrying_the_services_reason() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    adx.state().set_mapping_broken(TABLE, true);
    let (sink, _) = sink(&config(&adx, AdxMode::Queued));
    let batch = synthetic_batch("st4", 0, 10);
    sink.send(&batch).await.unwrap();
    let error = confirm_until_final(&sink, &batch.id, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(!error.is_retriable());
    assert!(
        error
            .to_string()
            .contains("BadRequest_MappingReferenceWasNotFound"),
        "{error}"
    );
    // After the fix, the same records as a new batch land.
    adx.state().set_mapping_broken(TABLE, false);
    let again = synthetic_batch("st4-replay", 0, 10);
    sink.send(&again).await.unwrap();
    assert_eq!(
        confirm_until_final(&sink, &again.id, Duration::from_secs(20))
            .await
            .unwrap(),
        Confirmation::Delivered
    );
    assert_eq!(adx.state().row_count(DB, TABLE), 10);
    adx.shutdown().await;
}

#[tokio::test]
async fn with_status_rows_off_a_posted_message_counts_as_delivered() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let mut cfg = config(&adx, AdxMode::Queued);
    cfg.status.enabled = false;
    let (sink, _) = sink(&cfg);
    let batch = synthetic_batch("st5", 0, 5);
    assert_eq!(sink.send(&batch).await.unwrap(), Receipt::Delivered);
    assert_eq!(
        adx.wait_for_rows(DB, TABLE, 5, Duration::from_secs(20))
            .await,
        5
    );
    let message = &messages(&adx)[0];
    assert_eq!(message["ReportMethod"], 0);
    assert!(message.get("IngestionStatusInTable").is_none());
    adx.shutdown().await;
}

#[tokio::test]
async fn managed_mode_follows_a_queued_fallback_through_its_row_after_a_failover() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    adx.state()
        .set_ingest_delay(Duration::from_millis(500), Duration::from_millis(500));
    adx.state().set_streaming_policy(TABLE, false);
    let cfg = config(&adx, AdxMode::Managed);
    let batch = synthetic_batch("st6", 0, 20);
    let (old, _) = sink(&cfg);
    assert!(matches!(
        old.send(&batch).await.unwrap(),
        Receipt::Submitted { .. }
    ));
    drop(old);
    let (new, _) = sink(&cfg);
    let receipt = new.resend(&batch).await.unwrap();
    if let Receipt::Submitted { .. } = receipt {
        assert_eq!(
            confirm_until_final(&new, &batch.id, Duration::from_secs(20))
                .await
                .unwrap(),
            Confirmation::Delivered
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(adx.state().row_count(DB, TABLE), 20);
    assert_eq!(adx.state().messages().len(), 1);
    assert_eq!(
        adx.state().stats().queries,
        0,
        "the row answered; no query needed"
    );
    adx.shutdown().await;
}
