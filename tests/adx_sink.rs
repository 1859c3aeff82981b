//! The ADX sink against the ADX emulator on real Azurite: queued, streaming and managed delivery,
//! re-sends, expired SAS, throttling, permanent rejections, the failed-ingestions poller, and the
//! three token flows.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod adx_common;

use std::time::Duration;

use adx_common::synthetic_batch;
use adx_common::{DB, TABLE, config, emulator, metric, sink, wait_until};
use kevents::{
    config::{AdxAuthConfig, AdxMode, Secret},
    sink::{OutgoingBatch, Sink as _},
};
use kevents_testkit::adx::{AdxEmulatorConfig, AuthSettings};

#[tokio::test]
async fn queued_batches_land_as_mapped_rows_through_azurite() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let (sink, metrics) = sink(&config(&adx, AdxMode::Queued));
    for i in 0..3 {
        sink.send(&synthetic_batch("s1", i * 100, 100))
            .await
            .unwrap();
    }
    assert_eq!(
        adx.wait_for_rows(DB, TABLE, 300, Duration::from_secs(20))
            .await,
        300
    );
    let rows = adx.state().rows(DB, TABLE);
    assert_eq!(rows[0]["Name"], "pod-0.18a2b3c4d5e6f708");
    assert_eq!(rows[0]["Uid"], "00000000-0000-4000-8000-000000000000");
    assert_eq!(rows[0]["TimeGenerated"], "2025-10-09T08:53:20Z");
    assert_eq!(rows[0].len(), 22, "every table column is present");
    let stats = adx.state().stats();
    assert_eq!(stats.queued_ingestions, 3);
    assert_eq!(stats.malformed_messages, 0);
    assert_eq!(stats.raw_size_mismatches, 0);
    assert_eq!(
        metric(&metrics, "kevents_adx_batches_total{stage=\"queued\"}"),
        3
    );
    // Two containers and two queues: rotation used both queues.
    assert_eq!(
        metric(
            &metrics,
            "kevents_adx_resource_refreshes_total{outcome=\"success\"}"
        ),
        1,
        "resources are cached"
    );
    adx.shutdown().await;
}

#[tokio::test]
async fn a_resent_batch_finds_its_blob_and_is_ingested_once_with_ingest_by_tags() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let mut cfg = config(&adx, AdxMode::Queued);
    cfg.ingest_by_tags = true;
    // Without status rows, the tag is what drops the repeat (with them, the row is followed
    // instead: `tests/adx_status.rs`).
    cfg.status.enabled = false;
    let (sink, metrics) = sink(&cfg);
    let batch = synthetic_batch("resend", 0, 50);
    sink.send(&batch).await.unwrap();
    assert_eq!(
        adx.wait_for_rows(DB, TABLE, 50, Duration::from_secs(20))
            .await,
        50
    );
    // The same batch again, as a new leader re-sends it after a failover.
    sink.send(&batch).await.unwrap();
    assert_eq!(
        metric(&metrics, "kevents_adx_blob_already_uploaded_total"),
        1
    );
    assert!(
        wait_until(Duration::from_secs(20), || adx
            .state()
            .stats()
            .skipped_existing
            == 1)
        .await,
        "the DM drops the second ingestion by its ingest-by tag"
    );
    assert_eq!(adx.state().row_count(DB, TABLE), 50);
    adx.shutdown().await;
}

#[tokio::test]
async fn an_expired_sas_is_refreshed_after_storage_answers_403() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    adx.state().set_sas_lifetime(Duration::from_secs(1));
    let (sink, metrics) = sink(&config(&adx, AdxMode::Queued));
    sink.send(&synthetic_batch("sas", 0, 10)).await.unwrap();
    adx.state().set_sas_lifetime(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    sink.send(&synthetic_batch("sas", 10, 10)).await.unwrap();
    assert_eq!(
        adx.wait_for_rows(DB, TABLE, 20, Duration::from_secs(20))
            .await,
        20
    );
    assert_eq!(
        metric(
            &metrics,
            "kevents_adx_resource_refreshes_total{outcome=\"success\"}"
        ),
        2
    );
    assert!(
        metric(
            &metrics,
            "kevents_adx_requests_total{operation=\"blob_upload\",outcome=\"retriable_error\"}"
        ) >= 1
    );
    adx.shutdown().await;
}

#[tokio::test]
async fn streaming_batches_land_and_a_permanent_rejection_is_a_permanent_error() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let (sink, metrics) = sink(&config(&adx, AdxMode::Streaming));
    sink.send(&synthetic_batch("st", 0, 40)).await.unwrap();
    assert_eq!(
        adx.state().row_count(DB, TABLE),
        40,
        "streaming stores before it answers"
    );
    adx.state().reject_next_permanently(1);
    let error = sink.send(&synthetic_batch("st", 40, 40)).await.unwrap_err();
    assert!(!error.is_retriable(), "{error}");
    assert!(error.to_string().contains("400"), "{error}");
    // A mapping the table does not have is permanent too.
    let mut bad = config(&adx, AdxMode::Streaming);
    bad.mapping = "NoSuchMapping".to_owned();
    let (bad_sink, _) = sink_of(&bad);
    let error = bad_sink
        .send(&synthetic_batch("st", 80, 5))
        .await
        .unwrap_err();
    assert!(!error.is_retriable(), "{error}");
    assert!(
        error
            .to_string()
            .contains("BadRequest_MappingReferenceWasNotFound"),
        "{error}"
    );
    // 503 is transient.
    adx.state().fail_next(1, 503);
    let error = sink.send(&synthetic_batch("st", 90, 5)).await.unwrap_err();
    assert!(error.is_retriable(), "{error}");
    assert_eq!(adx.state().row_count(DB, TABLE), 40);
    assert_eq!(
        metric(
            &metrics,
            "kevents_adx_requests_total{operation=\"streaming\",outcome=\"permanent_error\"}"
        ),
        1
    );
    adx.shutdown().await;
}

fn sink_of(
    cfg: &kevents::config::AdxConfig,
) -> (kevents::sink::AdxSink, kevents::telemetry::Metrics) {
    sink(cfg)
}

/// Sends `batch` until the sink confirms it, as the shipper does (at most `tries`).
async fn send_until_confirmed(sink: &kevents::sink::AdxSink, batch: &OutgoingBatch, tries: u32) {
    for attempt in 1..=tries {
        match sink.send(batch).await {
            Ok(_) => return,
            Err(error) if error.is_retriable() && attempt < tries => {
                println!("attempt {attempt}: {error}");
            }
            Err(error) => panic!("{error}"),
        }
    }
}

#[tokio::test]
async fn a_streamed_batch_whose_answer_was_lost_is_stored_once() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let mut cfg = config(&adx, AdxMode::Streaming);
    cfg.streaming_max_bytes = 16 * 1024;
    let (sink, metrics) = sink(&cfg);
    // One request: ADX stores the rows, the gateway answers 504.
    adx.state().lose_next_answers(1);
    send_until_confirmed(&sink, &synthetic_batch("lost", 0, 50), 5).await;
    assert_eq!(adx.state().row_count(DB, TABLE), 50, "stored once");
    // A batch split into parts: the first part's answer is lost, the rest go through.
    adx.state().lose_next_answers(1);
    let large = synthetic_batch("lost", 50, 2000);
    send_until_confirmed(&sink, &large, 5).await;
    assert_eq!(adx.state().row_count(DB, TABLE), 2050, "every part once");
    let stats = adx.state().stats();
    assert!(stats.queries >= 2, "{stats:?}");
    assert_eq!(
        metric(
            &metrics,
            "kevents_adx_requests_total{operation=\"query\",outcome=\"success\"}"
        ),
        stats.queries
    );
    // A later batch goes straight through, without a lookup.
    let queries = stats.queries;
    sink.send(&synthetic_batch("lost", 2050, 10)).await.unwrap();
    assert_eq!(adx.state().row_count(DB, TABLE), 2060);
    assert_eq!(adx.state().stats().queries, queries);
    adx.shutdown().await;
}

#[tokio::test]
async fn a_recovered_batch_already_in_adx_is_not_sent_again_by_streaming_or_managed_mode() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    // Each mode its own records: the lookup is by Uid and ResourceVersion.
    for (mode, prefix, first) in [
        (AdxMode::Streaming, "rs", 0),
        (AdxMode::Managed, "rm", 1000),
    ] {
        let mut cfg = config(&adx, mode);
        cfg.ingest_by_tags = true;
        let (sink, metrics) = sink(&cfg);
        let before = adx.state().row_count(DB, TABLE);
        let delivered = synthetic_batch(prefix, first, 30);
        sink.send(&delivered).await.unwrap();
        assert_eq!(adx.state().row_count(DB, TABLE), before + 30, "{mode:?}");
        let streamed = adx.state().stats().streaming_requests;
        // A new leader re-sends what the old one recorded: one batch ADX stored, one it never saw.
        sink.resend(&delivered).await.unwrap();
        let never_sent = synthetic_batch(prefix, first + 30, 20);
        sink.resend(&never_sent).await.unwrap();
        assert_eq!(
            adx.wait_for_rows(DB, TABLE, before + 50, Duration::from_secs(20))
                .await,
            before + 50,
            "{mode:?}"
        );
        assert_eq!(
            metric(
                &metrics,
                "kevents_adx_batches_total{stage=\"already_ingested\"}"
            ),
            1,
            "{mode:?}"
        );
        let stats = adx.state().stats();
        match mode {
            // Streaming sends the missing batch by streaming.
            AdxMode::Streaming => assert_eq!(stats.streaming_requests, streamed + 1),
            // Managed mode sends it queued, where an earlier queued attempt would be dropped.
            _ => {
                assert_eq!(stats.streaming_requests, streamed);
                assert_eq!(
                    metric(
                        &metrics,
                        "kevents_adx_managed_fallbacks_total{reason=\"resend\"}"
                    ),
                    1
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(adx.state().row_count(DB, TABLE), before + 50, "{mode:?}");
    }
    adx.shutdown().await;
}

#[tokio::test]
async fn a_throttled_request_is_retriable_after_its_retry_after() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let (sink, metrics) = sink(&config(&adx, AdxMode::Streaming));
    adx.state().throttle_next(1, Duration::from_secs(7));
    let error = sink.send(&synthetic_batch("th", 0, 5)).await.unwrap_err();
    assert!(error.is_retriable());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(
        metric(
            &metrics,
            "kevents_adx_requests_total{operation=\"streaming\",outcome=\"throttled\"}"
        ),
        1
    );
    adx.shutdown().await;
}

#[tokio::test]
async fn managed_mode_falls_back_to_queued_on_transient_errors_throttling_and_large_batches() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let mut cfg = config(&adx, AdxMode::Managed);
    cfg.streaming_max_bytes = 16 * 1024;
    let (sink, metrics) = sink(&cfg);
    sink.send(&synthetic_batch("m", 0, 10)).await.unwrap();
    adx.state().fail_next(1, 503);
    sink.send(&synthetic_batch("m", 10, 10)).await.unwrap();
    sink.send(&synthetic_batch("m", 20, 2000)).await.unwrap();
    adx.state().throttle_next(1, Duration::from_secs(1));
    sink.send(&synthetic_batch("m", 2020, 10)).await.unwrap();
    // Throttling pauses streaming for a while: the next batch goes queued without trying.
    sink.send(&synthetic_batch("m", 2030, 10)).await.unwrap();
    assert_eq!(
        adx.wait_for_rows(DB, TABLE, 2040, Duration::from_secs(30))
            .await,
        2040
    );
    assert_eq!(
        metric(&metrics, "kevents_adx_batches_total{stage=\"streaming\"}"),
        1
    );
    assert_eq!(
        metric(&metrics, "kevents_adx_batches_total{stage=\"queued\"}"),
        4
    );
    for (reason, n) in [
        ("transient", 1),
        ("too_large", 1),
        ("throttled", 1),
        ("suspended", 1),
    ] {
        assert_eq!(
            metric(
                &metrics,
                &format!("kevents_adx_managed_fallbacks_total{{reason=\"{reason}\"}}")
            ),
            n,
            "{reason}"
        );
    }
    // A permanent streaming error is not retried queued: it fails the batch.
    let mut fresh_cfg = config(&adx, AdxMode::Managed);
    fresh_cfg.mapping = "NoSuchMapping".to_owned();
    let (fresh, _) = sink_of(&fresh_cfg);
    assert!(
        !fresh
            .send(&synthetic_batch("m", 9000, 3))
            .await
            .unwrap_err()
            .is_retriable()
    );
    adx.shutdown().await;
}

#[tokio::test]
async fn the_failed_ingestions_poller_counts_failures_of_our_own_batches() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    // A failure of someone else's ingestion is already in the shared queue.
    let foreign = base64_json(
        &serde_json::json!({"IngestionSourceId": "11111111-1111-4111-8111-111111111111", "FailureStatus": "Permanent"}),
    );
    adx.storage()
        .put_message(&adx.resources().failed_queue, &foreign)
        .await
        .unwrap();
    let mut cfg = config(&adx, AdxMode::Queued);
    cfg.mapping = "NoSuchMapping".to_owned();
    // Queue reporting: with status rows (the default), the DM reports into the row instead.
    cfg.status.enabled = false;
    cfg.failed_ingestions.enabled = true;
    cfg.failed_ingestions.interval = Duration::from_millis(100);
    let (sink, metrics) = sink(&cfg);
    sink.send(&synthetic_batch("fail", 0, 5)).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            metric(
                &metrics,
                "kevents_adx_ingestion_failures_total{reason=\"permanent\"}",
            ) == 1
        })
        .await,
        "{}",
        metrics.render()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric(
            &metrics,
            "kevents_adx_ingestion_failures_total{reason=\"permanent\"}"
        ),
        1,
        "each failure counts once"
    );
    // Nothing was deleted: both reports are still in the queue.
    let left = adx
        .storage()
        .peek_messages(&adx.resources().failed_queue)
        .await
        .unwrap();
    assert_eq!(left.len(), 2);
    adx.shutdown().await;
}

fn base64_json(value: &serde_json::Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(value.to_string())
}

#[tokio::test]
async fn client_secret_workload_identity_and_managed_identity_tokens_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "assertion-1\n").unwrap();
    let adx = emulator(AdxEmulatorConfig {
        auth: AuthSettings {
            require_token: true,
            client_secrets: vec![("app".to_owned(), "the-secret".to_owned())],
            assertions: vec![
                ("wi-app".to_owned(), "assertion-1".to_owned()),
                ("wi-app".to_owned(), "assertion-2".to_owned()),
            ],
        },
        ..AdxEmulatorConfig::default()
    })
    .await;
    let authority = reqwest::Url::parse(&adx.url()).unwrap();
    let modes = [
        AdxAuthConfig::ClientSecret {
            tenant_id: "tenant".to_owned(),
            client_id: "app".to_owned(),
            client_secret: Secret::new("the-secret".to_owned()),
            authority_host: authority.clone(),
        },
        AdxAuthConfig::WorkloadIdentity {
            tenant_id: "tenant".to_owned(),
            client_id: "wi-app".to_owned(),
            token_file: token_file.clone(),
            authority_host: authority.clone(),
        },
        AdxAuthConfig::ManagedIdentity {
            client_id: Some("uami".to_owned()),
            imds_endpoint: authority.join("metadata/identity/oauth2/token").unwrap(),
        },
    ];
    let mut sent = 0;
    for auth in modes {
        let mut cfg = config(&adx, AdxMode::Streaming);
        cfg.auth = auth.clone();
        let (sink, _) = sink(&cfg);
        sink.send(&synthetic_batch(auth.mode(), sent, 5))
            .await
            .unwrap();
        sent += 5;
        if auth.mode() == "workload_identity" {
            // The kubelet rotates the file; the next fetch must read the new assertion.
            std::fs::write(&token_file, "assertion-2").unwrap();
            adx.state().expire_tokens_now();
            sink.send(&synthetic_batch("wi-rotated", sent, 5))
                .await
                .unwrap_err();
            sink.send(&synthetic_batch("wi-rotated", sent, 5))
                .await
                .unwrap();
            sent += 5;
        }
    }
    assert_eq!(adx.state().row_count(DB, TABLE), 20);
    // A wrong secret is a retriable error (the batch is not at fault) naming the endpoint only.
    let mut cfg = config(&adx, AdxMode::Queued);
    cfg.auth = AdxAuthConfig::ClientSecret {
        tenant_id: "tenant".to_owned(),
        client_id: "app".to_owned(),
        client_secret: Secret::new("wrong-secret".to_owned()),
        authority_host: authority,
    };
    let (sink, _) = sink(&cfg);
    let error = sink
        .send(&synthetic_batch("bad", 100, 1))
        .await
        .unwrap_err();
    assert!(error.is_retriable());
    assert!(!format!("{error:?}").contains("wrong-secret"));
    adx.shutdown().await;
}

#[tokio::test]
async fn a_token_that_expires_is_refreshed_ahead_of_expiry_and_after_a_401() {
    let adx = emulator(AdxEmulatorConfig {
        auth: AuthSettings {
            require_token: true,
            client_secrets: vec![("app".to_owned(), "s".to_owned())],
            assertions: Vec::new(),
        },
        ..AdxEmulatorConfig::default()
    })
    .await;
    adx.state().set_token_lifetime(Duration::from_secs(2));
    let mut cfg = config(&adx, AdxMode::Streaming);
    cfg.auth = AdxAuthConfig::ClientSecret {
        tenant_id: "t".to_owned(),
        client_id: "app".to_owned(),
        client_secret: Secret::new("s".to_owned()),
        authority_host: reqwest::Url::parse(&adx.url()).unwrap(),
    };
    let (sink, metrics) = sink(&cfg);
    for i in 0..6 {
        sink.send(&synthetic_batch("exp", i * 5, 5)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(
        adx.state().stats().unauthorized,
        0,
        "refreshed before it expired"
    );
    assert!(adx.state().stats().tokens_issued >= 3);
    // A long-lived token, then revoked early: one 401, then a new token.
    adx.state().set_token_lifetime(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sink.send(&synthetic_batch("exp", 100, 5)).await.unwrap();
    adx.state().expire_tokens_now();
    assert!(
        sink.send(&synthetic_batch("exp", 105, 5))
            .await
            .unwrap_err()
            .is_retriable()
    );
    sink.send(&synthetic_batch("exp", 105, 5)).await.unwrap();
    assert_eq!(adx.state().stats().unauthorized, 1);
    assert_eq!(adx.state().row_count(DB, TABLE), 40);
    assert!(
        metric(
            &metrics,
            "kevents_adx_token_refreshes_total{outcome=\"success\"}"
        ) >= 4
    );
    adx.shutdown().await;
}

/// A refused lookup (403: the identity has Database Ingestor, not Database Viewer) is a
/// configuration error reported once; the batch is re-sent queued with its `ingest-by` tag
/// instead of the lookup being retried forever, and later re-sends skip the lookup.
#[tokio::test]
async fn a_re_send_the_identity_may_not_look_up_goes_queued_with_its_tag_and_is_reported_once() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    adx.state().set_query_forbidden(true);
    let (logs, _guard) = adx_common::Logs::capture();
    let mut expected = 0;
    for (mode, prefix, first) in [
        (AdxMode::Managed, "qf-m", 0),
        (AdxMode::Streaming, "qf-s", 1000),
    ] {
        // No `ingest_by_tags`: a re-send is tagged anyway. Without status rows, the tag is what
        // drops a repeat (with them, the row is followed: `tests/adx_status.rs`).
        let mut cfg = config(&adx, mode);
        cfg.status.enabled = false;
        let (sink, metrics) = sink(&cfg);
        let streamed = adx.state().stats().streaming_requests;
        let skipped = adx.state().stats().skipped_existing;
        // A new leader re-sends a batch its predecessor recorded; it goes queued.
        let batch = synthetic_batch(prefix, first, 20);
        sink.resend(&batch).await.unwrap();
        expected += 20;
        assert_eq!(
            adx.wait_for_rows(DB, TABLE, expected, Duration::from_secs(20))
                .await,
            expected,
            "{mode:?}"
        );
        // Another failover re-sends it again: no lookup this time, and the DM drops the repeat
        // by its tag.
        sink.resend(&batch).await.unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || adx
                .state()
                .stats()
                .skipped_existing
                == skipped + 1)
            .await,
            "{mode:?}: the second copy is dropped by its ingest-by tag"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(adx.state().row_count(DB, TABLE), expected, "{mode:?}");
        assert_eq!(
            adx.state().stats().streaming_requests,
            streamed,
            "{mode:?}: nothing streamed"
        );
        let tagged = adx
            .state()
            .messages()
            .iter()
            .filter(|text| {
                use base64::Engine as _;
                let json = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .unwrap();
                String::from_utf8_lossy(&json).contains(&format!("ingest-by:{}", batch.id))
            })
            .count();
        assert_eq!(tagged, 2, "{mode:?}: both copies carry the tag");
        assert_eq!(
            metric(
                &metrics,
                "kevents_adx_managed_fallbacks_total{reason=\"query_forbidden\"}"
            ),
            2,
            "{mode:?}"
        );
        assert_eq!(
            metric(
                &metrics,
                "kevents_adx_requests_total{operation=\"query\",outcome=\"permanent_error\"}"
            ),
            1,
            "{mode:?}: one refused query, then none"
        );
        assert_eq!(
            metric(&metrics, "kevents_adx_batches_total{stage=\"queued\"}"),
            2,
            "{mode:?}"
        );
    }
    // Once per sink (two sinks here), not per batch.
    assert_eq!(logs.count("Database Viewer"), 2, "{}", logs.text());
    assert_eq!(adx.state().stats().queries, 0);
    adx.shutdown().await;
}

/// A table without a streaming ingestion policy, and a body ADX finds too large (413, or 400
/// `Stream_InputStreamTooLarge`): permanent refusals of streaming, not of the batch, so managed
/// mode sends such batches queued instead of dead-lettering them, logging each cause once.
#[tokio::test]
async fn managed_mode_sends_queued_when_streaming_is_off_for_the_table_or_a_body_is_too_large() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let (logs, _guard) = adx_common::Logs::capture();
    adx.state().set_streaming_policy(TABLE, false);
    let (sink, metrics) = sink(&config(&adx, AdxMode::Managed));
    for i in 0..3 {
        sink.send(&synthetic_batch("off", i * 10, 10))
            .await
            .unwrap();
    }
    assert_eq!(
        adx.wait_for_rows(DB, TABLE, 30, Duration::from_secs(20))
            .await,
        30
    );
    let refused: Vec<_> = adx
        .state()
        .requests()
        .into_iter()
        .filter(|r| r.streaming)
        .collect();
    assert_eq!(
        refused.len(),
        1,
        "streaming paused after the refusal: {refused:?}"
    );
    assert_eq!(refused[0].status, 400);
    assert_eq!(
        metric(
            &metrics,
            "kevents_adx_managed_fallbacks_total{reason=\"policy_off\"}"
        ),
        3
    );
    assert_eq!(
        logs.count("Streaming ingestion is not enabled"),
        1,
        "{}",
        logs.text()
    );
    // Too large, as a 400 and as a 413; the sink's own limit (4 MiB) would have let them through.
    adx.state().set_streaming_policy(TABLE, true);
    let (sink, metrics) = sink_of(&config(&adx, AdxMode::Managed));
    adx.state().set_streaming_limit(700, 400);
    sink.send(&synthetic_batch("big", 100, 64)).await.unwrap();
    sink.send(&synthetic_batch("big", 200, 64)).await.unwrap();
    adx.state().set_streaming_limit(700, 413);
    sink.send(&synthetic_batch("big", 300, 64)).await.unwrap();
    // A small batch still streams.
    sink.send(&synthetic_batch("big", 400, 2)).await.unwrap();
    assert_eq!(
        adx.wait_for_rows(DB, TABLE, 30 + 3 * 64 + 2, Duration::from_secs(20))
            .await,
        30 + 3 * 64 + 2
    );
    assert_eq!(
        metric(
            &metrics,
            "kevents_adx_managed_fallbacks_total{reason=\"too_large\"}"
        ),
        3
    );
    assert_eq!(
        metric(&metrics, "kevents_adx_batches_total{stage=\"streaming\"}"),
        1
    );
    assert_eq!(
        logs.count("refused a streaming request as too large"),
        1,
        "{}",
        logs.text()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        adx.state().row_count(DB, TABLE),
        30 + 3 * 64 + 2,
        "each batch once"
    );
    adx.shutdown().await;
}

/// Streaming mode halves a request ADX finds too large, by records, until the pieces fit: each
/// refused body is followed by two smaller requests, never sent again as it was. A record too
/// large on its own is a permanent error naming it; the records before it are in ADX.
#[tokio::test]
async fn streaming_mode_halves_a_request_adx_finds_too_large_and_fails_a_record_too_large_alone() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    // About 560 bytes of gzip hold 8 synthetic records; 64 records are about 1.8 KiB.
    adx.state().set_streaming_limit(700, 413);
    let (sink, metrics) = sink(&config(&adx, AdxMode::Streaming));
    sink.send(&synthetic_batch("half", 0, 64)).await.unwrap();
    assert_eq!(adx.state().row_count(DB, TABLE), 64);
    let statuses: Vec<u16> = adx.state().requests().iter().map(|r| r.status).collect();
    let refused = statuses.iter().filter(|s| **s == 413).count();
    let stored = statuses.iter().filter(|s| **s == 200).count();
    assert!(refused >= 3, "{statuses:?}");
    assert_eq!(stored, refused + 1, "a binary split: {statuses:?}");
    assert_eq!(adx.state().stats().streaming_rows, 64, "each record once");
    assert_eq!(
        metric(&metrics, "kevents_adx_batches_total{stage=\"streaming\"}"),
        1
    );
    // Ten records, one too large alone (an incompressible message), ten more.
    let mut payload = synthetic_batch("giant", 100, 10).payload.to_vec();
    let mut giant: serde_json::Value =
        serde_json::from_str(&kevents_testkit::adx::synthetic_record(110)).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    giant["Message"] = serde_json::Value::String(
        (0..3000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'a' + u8::try_from(state % 26).unwrap())
            })
            .collect(),
    );
    payload.extend_from_slice(format!("{giant}\n").as_bytes());
    payload.extend_from_slice(&synthetic_batch("giant", 111, 10).payload);
    let batch = OutgoingBatch {
        id: "giant-000000000100-000000000120".to_owned(),
        payload: payload.into(),
        events: 21,
    };
    let before = adx.state().requests().len();
    let error = sink.send(&batch).await.unwrap_err();
    assert!(!error.is_retriable(), "{error}");
    let text = error.to_string();
    assert!(text.contains("record 11 of the batch"), "{text}");
    assert!(
        text.contains("00000000-0000-4000-8000-000000000110"),
        "{text}"
    );
    assert!(text.contains("Stream_InputStreamTooLarge"), "{text}");
    // The records before it landed, it and the ones after it did not.
    let rows = adx.state().rows(DB, TABLE);
    assert_eq!(rows.len(), 64 + 10);
    assert_eq!(rows[64]["Uid"], "00000000-0000-4000-8000-000000000100");
    assert_eq!(rows[73]["Uid"], "00000000-0000-4000-8000-000000000109");
    // Log2 steps down to the record, not a retry loop.
    assert!(adx.state().requests().len() - before <= 8);
    adx.shutdown().await;
}

/// The schema of a cluster that keeps the fluent-bit shape: the seed's table with a mapping that
/// also takes `$.log.Uid` and `$.log.ResourceVersion` (the manifest's advice), and Fluent Bit's
/// own layout, the whole record in a `dynamic` `log` column.
const FLUENT_BIT_KQL: &str = r#"
.create-or-alter table KubeEvents ingestion json mapping "FluentBitKeyed"
    ```[
    {"column": "TimeGenerated", "Properties": {"Path": "$.TimeGenerated"}},
    {"column": "Name", "Properties": {"Path": "$.log.Name"}},
    {"column": "Uid", "Properties": {"Path": "$.log.Uid"}},
    {"column": "ResourceVersion", "Properties": {"Path": "$.log.ResourceVersion"}}
    ]```
.create table FluentBitLogs (TimeGenerated: datetime, log: dynamic)
.create-or-alter table FluentBitLogs ingestion json mapping "FluentBitLog"
    ```[
    {"column": "TimeGenerated", "Properties": {"Path": "$.TimeGenerated"}},
    {"column": "log", "Properties": {"Path": "$.log"}}
    ]```
"#;

/// With `record.shape: fluent-bit` the key sits under `log`: the lookup finds a re-sent batch
/// that is already in the table, whether the table keeps the key in columns or in `log`.
#[tokio::test]
async fn a_recovered_fluent_bit_batch_already_in_adx_is_found_by_its_key_under_log() {
    let adx = emulator(AdxEmulatorConfig {
        kql: format!(
            "{}\n{FLUENT_BIT_KQL}",
            kevents_testkit::adx::kql::KUBE_EVENTS_KQL
        ),
        ..AdxEmulatorConfig::default()
    })
    .await;
    for (table, mapping, first) in [
        (TABLE, "FluentBitKeyed", 0),
        ("FluentBitLogs", "FluentBitLog", 100),
    ] {
        let mut cfg = config(&adx, AdxMode::Streaming);
        cfg.table = table.to_owned();
        cfg.mapping = mapping.to_owned();
        let (sink, metrics) = sink(&cfg);
        let delivered = adx_common::fluent_bit_batch(table, first, 30);
        sink.send(&delivered).await.unwrap();
        assert_eq!(adx.state().row_count(DB, table), 30, "{table}");
        let streamed = adx.state().stats().streaming_requests;
        // A new leader re-sends what the old one recorded: one batch ADX stored, one it never saw.
        sink.resend(&delivered).await.unwrap();
        sink.resend(&adx_common::fluent_bit_batch(table, first + 30, 20))
            .await
            .unwrap();
        assert_eq!(
            adx.state().row_count(DB, table),
            50,
            "{table}: nothing twice"
        );
        assert_eq!(
            adx.state().stats().streaming_requests,
            streamed + 1,
            "{table}"
        );
        assert_eq!(
            metric(
                &metrics,
                "kevents_adx_batches_total{stage=\"already_ingested\"}"
            ),
            1,
            "{table}"
        );
    }
    let logs = adx.state().rows(DB, "FluentBitLogs");
    assert_eq!(
        logs[0]["log"]["Uid"],
        "00000000-0000-4000-8000-000000000100"
    );
    adx.shutdown().await;
}

/// What ADX holds of a batch is a prefix of its records (requests go in order and stop at the
/// first failure): an earlier attempt that split the batch and stopped midway left its first
/// records there. A re-send finds where that prefix ends and sends only the rest.
#[tokio::test]
async fn a_re_sent_batch_whose_first_records_adx_holds_sends_only_the_rest() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let (sink, metrics) = sink(&config(&adx, AdxMode::Streaming));
    // The earlier attempt: its first 13 records landed.
    sink.send(&synthetic_batch("prefix", 0, 13)).await.unwrap();
    let full = synthetic_batch("prefix", 0, 40);
    sink.resend(&full).await.unwrap();
    let rows = adx.state().rows(DB, TABLE);
    let mut uids: Vec<&str> = rows.iter().map(|r| r["Uid"].as_str().unwrap()).collect();
    uids.sort_unstable();
    uids.dedup();
    assert_eq!((rows.len(), uids.len()), (40, 40), "each record once");
    assert_eq!(
        metric(&metrics, "kevents_adx_batches_total{stage=\"streaming\"}"),
        2
    );
    // A binary search over the prefix: a handful of queries, not one per record.
    let queries = adx.state().stats().queries;
    assert!(queries <= 10, "{queries}");
    adx.shutdown().await;
}
