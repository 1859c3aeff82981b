//! What the ADX sink finds out about ADX's setup, against the ADX emulator on real Azurite: the
//! health check (token, ingestion resources, identity token, table and mapping, engine), and
//! streaming mode when the table's streaming ingestion policy is off (queued fallback with a data
//! management endpoint, a retriable error naming the fix without one).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod adx_common;

use std::time::Duration;

use adx_common::synthetic_batch;
use adx_common::{DB, TABLE, config, emulator, metric};
use kevents::{
    config::{AdxAuthConfig, AdxMode, Secret},
    sink::Sink as _,
};
use kevents_testkit::adx::{AdxEmulatorConfig, AuthSettings};

#[tokio::test]
async fn the_health_check_passes_in_every_mode_against_a_complete_setup() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    for mode in [AdxMode::Queued, AdxMode::Streaming, AdxMode::Managed] {
        let (sink, _) = adx_common::sink(&config(&adx, mode));
        let health = sink.healthcheck().await.unwrap();
        assert!(health.warnings.is_empty(), "{mode:?}: {health:?}");
        let report = sink.report().unwrap();
        assert_eq!(report.section["healthy"], true, "{}", report.section);
        assert_eq!(report.section["healthcheck"]["passed"], true);
        assert_eq!(report.section["table"], TABLE);
        assert_eq!(report.section["status_rows"], true);
        assert!(report.problem.is_none());
    }
    assert!(adx.state().stats().show_commands >= 3);
    assert_eq!(adx.state().row_count(DB, TABLE), 0, "a check sends nothing");
    adx.shutdown().await;
}

#[tokio::test]
async fn a_missing_mapping_or_table_fails_the_check_naming_it() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let mut cfg = config(&adx, AdxMode::Queued);
    cfg.mapping = "NoSuchMapping".to_owned();
    let (sink, _) = adx_common::sink(&cfg);
    let error = sink.healthcheck().await.unwrap_err();
    assert_eq!(error.check, "mapping", "{error}");
    assert!(
        error.message.starts_with(
            "table KubeEvents has no json ingestion mapping NoSuchMapping in database k8s (it has "
        ),
        "{error}"
    );
    assert!(error.message.contains("KubeEventsFlatMapping"), "{error}");
    let report = sink.report().unwrap();
    assert_eq!(report.section["healthy"], false);
    assert_eq!(report.section["healthcheck"]["check"], "mapping");

    // A mapping dropped from the table (the emulator's broken mapping) fails it too.
    adx.state().set_mapping_broken(TABLE, true);
    let (sink, _) = adx_common::sink(&config(&adx, AdxMode::Streaming));
    let error = sink.healthcheck().await.unwrap_err();
    assert_eq!(error.check, "mapping", "{error}");
    assert!(error.message.contains("(it has none)"), "{error}");
    adx.state().set_mapping_broken(TABLE, false);

    let mut cfg = config(&adx, AdxMode::Managed);
    cfg.table = "NoSuchTable".to_owned();
    let (sink, _) = adx_common::sink(&cfg);
    let error = sink.healthcheck().await.unwrap_err();
    assert_eq!(error.check, "table", "{error}");
    assert!(
        error
            .message
            .starts_with("table NoSuchTable does not exist in database k8s"),
        "{error}"
    );
    adx.shutdown().await;
}

#[tokio::test]
async fn a_refused_mapping_check_is_a_warning_not_a_failure() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    adx.state().set_show_forbidden(true);
    // Database Ingestor without Viewer: the re-send lookup query is refused too; the check does
    // not use it.
    adx.state().set_query_forbidden(true);
    let (sink, _) = adx_common::sink(&config(&adx, AdxMode::Queued));
    let health = sink.healthcheck().await.unwrap();
    assert_eq!(health.warnings.len(), 1, "{health:?}");
    assert!(
        health.warnings[0].starts_with(
            "cannot verify table KubeEvents and its mapping KubeEventsFlatMapping in database k8s with this identity's roles"
        ),
        "{health:?}"
    );
    assert!(health.warnings[0].contains("403"), "{health:?}");
    adx.shutdown().await;
}

#[tokio::test]
async fn a_rejected_client_secret_fails_the_token_check_with_aad_s_error_code() {
    let adx = emulator(AdxEmulatorConfig {
        auth: AuthSettings {
            require_token: true,
            client_secrets: vec![("app".to_owned(), "the-secret".to_owned())],
            assertions: Vec::new(),
        },
        ..AdxEmulatorConfig::default()
    })
    .await;
    let mut cfg = config(&adx, AdxMode::Queued);
    cfg.auth = AdxAuthConfig::ClientSecret {
        tenant_id: "tenant".to_owned(),
        client_id: "app".to_owned(),
        client_secret: Secret::new("wrong-secret".to_owned()),
        authority_host: reqwest::Url::parse(&adx.url()).unwrap(),
    };
    let (sink, _) = adx_common::sink(&cfg);
    let error = sink.healthcheck().await.unwrap_err();
    assert_eq!(error.check, "token", "{error}");
    assert!(
        error.message.contains("answered 401 (invalid_client)"),
        "{error}"
    );
    assert!(!error.message.contains("wrong-secret"), "{error}");
    adx.shutdown().await;
}

#[tokio::test]
async fn a_data_management_service_down_fails_queued_mode_and_warns_in_streaming_mode() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let mut cfg = config(&adx, AdxMode::Queued);
    // A DM that does not answer; the engine does.
    cfg.ingest_endpoint = Some(reqwest::Url::parse("http://127.0.0.1:9").unwrap());
    cfg.request_timeout = Duration::from_secs(2);
    let (sink, _) = adx_common::sink(&cfg);
    let error = sink.healthcheck().await.unwrap_err();
    assert_eq!(error.check, "ingestion_resources", "{error}");
    assert!(
        error.message.contains("http://127.0.0.1:9/v1/rest/mgmt"),
        "{error}"
    );
    cfg.mode = AdxMode::Streaming;
    let (sink, _) = adx_common::sink(&cfg);
    let health = sink.healthcheck().await.unwrap();
    assert_eq!(health.warnings.len(), 1, "{health:?}");
    assert!(health.warnings[0].contains("queued fallback"), "{health:?}");
    adx.shutdown().await;
}

#[tokio::test]
async fn streaming_mode_sends_queued_while_the_table_s_streaming_policy_is_off() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let (logs, _guard) = adx_common::Logs::capture();
    adx.state().set_streaming_policy(TABLE, false);
    let (sink, metrics) = adx_common::sink(&config(&adx, AdxMode::Streaming));
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
    let streamed: Vec<_> = adx
        .state()
        .requests()
        .into_iter()
        .filter(|r| r.streaming)
        .collect();
    assert_eq!(
        streamed.len(),
        1,
        "streaming paused after the refusal: {streamed:?}"
    );
    assert_eq!(streamed[0].status, 400);
    assert_eq!(
        metric(
            &metrics,
            "kevents_adx_managed_fallbacks_total{reason=\"policy_off\"}"
        ),
        3
    );
    assert_eq!(
        metric(&metrics, "kevents_adx_batches_total{stage=\"queued\"}"),
        3
    );
    assert_eq!(adx.state().stats().queued_ingestions, 3);
    assert_eq!(
        logs.count("Streaming ingestion is not enabled"),
        1,
        "{}",
        logs.text()
    );
    let report = sink.report().unwrap();
    assert_eq!(
        report.section["streaming"]["suspended"], true,
        "{}",
        report.section
    );
    assert_eq!(report.section["streaming"]["reason"], "policy_off");
    assert!(
        report.problem.is_none(),
        "the fallback works: not a readiness problem"
    );
    adx.shutdown().await;
}

#[tokio::test]
async fn streaming_mode_without_a_data_management_endpoint_retries_a_table_with_streaming_off() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let (logs, _guard) = adx_common::Logs::capture();
    adx.state().set_streaming_policy(TABLE, false);
    let mut cfg = config(&adx, AdxMode::Streaming);
    cfg.ingest_endpoint = None;
    let (sink, _) = adx_common::sink(&cfg);
    let batch = synthetic_batch("off", 0, 10);
    for _ in 0..3 {
        let error = sink.send(&batch).await.unwrap_err();
        assert!(error.is_retriable(), "never the dead tree: {error}");
        let text = error.to_string();
        assert!(
            text.contains(
                "streaming ingestion is not enabled for table KubeEvents in database k8s"
            ),
            "{text}"
        );
        assert!(
            text.contains(".alter table KubeEvents policy streamingingestion enable"),
            "{text}"
        );
    }
    assert_eq!(
        logs.count("ADX refuses streaming ingestion into this table"),
        1,
        "once, not per batch: {}",
        logs.text()
    );
    let report = sink.report().unwrap();
    assert_eq!(report.section["healthy"], false);
    assert!(
        report
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("policy streamingingestion enable")),
        "{report:?}"
    );
    // Enabled again: the batch goes through and the problem clears.
    adx.state().set_streaming_policy(TABLE, true);
    sink.send(&batch).await.unwrap();
    assert_eq!(adx.state().row_count(DB, TABLE), 10);
    let report = sink.report().unwrap();
    assert!(report.problem.is_none(), "{report:?}");
    assert_eq!(report.section["healthy"], true, "{}", report.section);
    assert_eq!(
        logs.count("accepts streaming ingestion into this table again"),
        1
    );
    adx.shutdown().await;
}
