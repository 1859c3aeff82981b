//! The queue message kevents sends, checked field by field against the table in
//! `reference/adx-ingestion.md` §1.5 (names, JSON types, arrays encoded as strings, the
//! uncompressed `RawDataSize`), and its envelope: standard padded base64 of UTF-8 JSON inside
//! `<QueueMessage><MessageText>`, as Azurite stored it and the emulated DM read it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod adx_common;

use std::{collections::BTreeSet, io::Read as _, time::Duration};

use adx_common::synthetic_batch;
use adx_common::{DB, TABLE, config, emulator, sink};
use base64::Engine as _;
use kevents::{
    config::{AdxFormat, AdxMode},
    sink::{Sink as _, adx::source_id},
};
use kevents_testkit::adx::AdxEmulatorConfig;
use serde_json::Value;

#[tokio::test]
async fn the_queue_message_has_exactly_the_documented_fields_types_and_envelope() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let mut cfg = config(&adx, AdxMode::Queued);
    cfg.ingest_by_tags = true;
    cfg.format = AdxFormat::MultiJson;
    let (sink, _) = sink(&cfg);
    let batch = synthetic_batch("conf", 0, 25);
    sink.send(&batch).await.unwrap();
    assert_eq!(
        adx.wait_for_rows(DB, TABLE, 25, Duration::from_secs(20))
            .await,
        25
    );

    let texts = adx.state().messages();
    assert_eq!(texts.len(), 1);
    let text = &texts[0];
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='),
        "standard base64 alphabet"
    );
    assert_eq!(text.len() % 4, 0, "padded");
    let json = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    let message: Value = serde_json::from_slice(&json).unwrap();

    let names: BTreeSet<&str> = message
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "Id",
        "BlobPath",
        "RawDataSize",
        "DatabaseName",
        "TableName",
        "RetainBlobOnSuccess",
        "FlushImmediately",
        "IgnoreSizeLimit",
        "ReportLevel",
        "ReportMethod",
        "SourceMessageCreationTime",
        "ApplicationForTracing",
        "ClientVersionForTracing",
        "AdditionalProperties",
        "IngestionStatusInTable",
    ]
    .into();
    assert_eq!(names, expected);

    // Id: a GUID, the same for every send of the batch.
    let id = message["Id"].as_str().unwrap();
    assert_eq!(id, source_id(&batch.id));
    assert_eq!(
        id.split('-').map(str::len).collect::<Vec<_>>(),
        vec![8, 4, 4, 4, 12]
    );
    // BlobPath: the blob's URL with its SAS; name derived from the batch id.
    let blob = reqwest::Url::parse(message["BlobPath"].as_str().unwrap()).unwrap();
    assert!(blob.query().unwrap().contains("sig="));
    assert!(
        blob.path()
            .ends_with(&format!("/{DB}__{TABLE}__{}.multijson.gz", batch.id)),
        "{}",
        blob.path()
    );
    // RawDataSize: the uncompressed size (Fluent Bit sent the compressed one).
    assert_eq!(
        message["RawDataSize"].as_u64(),
        Some(batch.payload.len() as u64)
    );
    let stored = adx.storage().get_blob(&blob).await.unwrap();
    assert!(stored.len() < batch.payload.len(), "the blob is compressed");
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&stored[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, batch.payload);

    assert_eq!(message["DatabaseName"], DB);
    assert_eq!(message["TableName"], TABLE);
    assert_eq!(message["RetainBlobOnSuccess"], Value::Bool(true));
    assert_eq!(message["FlushImmediately"], Value::Bool(false));
    assert_eq!(message["IgnoreSizeLimit"], Value::Bool(false));
    // Status rows (the default): FailuresAndSuccesses into the table, at the row the client
    // inserted as Pending before posting (PartitionKey = RowKey = Id), in the DM's status table.
    assert_eq!(
        message["ReportLevel"],
        Value::from(2),
        "FailuresAndSuccesses"
    );
    assert_eq!(message["ReportMethod"], Value::from(1), "Table");
    let status = message["IngestionStatusInTable"].as_object().unwrap();
    assert_eq!(
        status.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        ["TableConnectionString", "PartitionKey", "RowKey"].into()
    );
    assert_eq!(status["PartitionKey"], id);
    assert_eq!(status["RowKey"], id);
    let table = reqwest::Url::parse(status["TableConnectionString"].as_str().unwrap()).unwrap();
    assert!(table.path().ends_with("/ingestionsstatus"), "{table}");
    assert!(table.query().unwrap().contains("sig="));
    let created = message["SourceMessageCreationTime"].as_str().unwrap();
    assert!(created.ends_with('Z'), "{created}");
    created.parse::<jiff::Timestamp>().unwrap();
    assert!(message["ApplicationForTracing"].is_string());
    assert!(
        message["ClientVersionForTracing"]
            .as_str()
            .unwrap()
            .starts_with("kevents:")
    );

    let extra = message["AdditionalProperties"].as_object().unwrap();
    let extra_names: BTreeSet<&str> = extra.keys().map(String::as_str).collect();
    assert_eq!(
        extra_names,
        [
            "authorizationContext",
            "format",
            "ingestionMappingReference",
            "ingestionMappingType",
            "tags",
            "ingestIfNotExists"
        ]
        .into()
    );
    assert!(
        extra["authorizationContext"]
            .as_str()
            .unwrap()
            .starts_with("emu-authctx-")
    );
    assert_eq!(extra["format"], "multijson");
    assert_eq!(extra["ingestionMappingReference"], "KubeEventsFlatMapping");
    assert_eq!(extra["ingestionMappingType"], "Json");
    // Arrays serialized as strings.
    let tags: Vec<String> = serde_json::from_str(extra["tags"].as_str().unwrap()).unwrap();
    assert_eq!(tags, vec![format!("ingest-by:{}", batch.id)]);
    let if_not: Vec<String> =
        serde_json::from_str(extra["ingestIfNotExists"].as_str().unwrap()).unwrap();
    assert_eq!(if_not, vec![batch.id.clone()]);

    let stats = adx.state().stats();
    assert_eq!(
        (stats.malformed_messages, stats.raw_size_mismatches),
        (0, 0)
    );
    adx.shutdown().await;
}

#[tokio::test]
async fn without_ingest_by_tags_the_message_carries_no_tags_and_json_format() {
    let adx = emulator(AdxEmulatorConfig::default()).await;
    let (sink, _) = sink(&config(&adx, AdxMode::Queued));
    let batch = synthetic_batch("plain", 0, 3);
    sink.send(&batch).await.unwrap();
    assert_eq!(
        adx.wait_for_rows(DB, TABLE, 3, Duration::from_secs(20))
            .await,
        3
    );
    let text = &adx.state().messages()[0];
    let message: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap(),
    )
    .unwrap();
    let extra = &message["AdditionalProperties"];
    assert!(extra.get("tags").is_none() && extra.get("ingestIfNotExists").is_none());
    assert_eq!(extra["format"], "json");
    assert!(message["BlobPath"].as_str().unwrap().contains(".json.gz?"));
    adx.shutdown().await;
}
