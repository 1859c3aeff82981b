//! The emulated data management service's ingestion worker: reads the ingestion queues in
//! Azurite, holds each message for the configured ingestion delay (the DM's batching), checks it
//! against the §1.5 contract, fetches and gunzips its blob, applies the JSON mapping and stores
//! the rows, honouring `ingestIfNotExists`. As the DM does, it reports the outcome: a failure on
//! the failed-ingestions queue (queue reporting), and, for a message carrying
//! `IngestionStatusInTable`, by writing the status row the client inserted as `Pending`:
//! `Succeeded`, `Skipped` (an `ingestIfNotExists` tag existed) or `Failed` with `ErrorCode`,
//! `Details` and `FailureStatus`.
//!
//! Owns the poll loop. It must never drop a message it could not process because of a storage
//! hiccup (it stays in the queue and comes back), and never ingest a message whose
//! authorization context the emulator did not issue.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use reqwest::Url;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    Resources,
    server::{IngestFailure, gunzip, ingest_records},
    state::AdxState,
    storage::{QueueMessage, StorageAccount},
};

/// How long a dequeued message stays invisible: a crash of the worker makes it come back, and a
/// message not yet due is seen again this much later.
const VISIBILITY: Duration = Duration::from_secs(2);
/// Idle poll interval.
const IDLE: Duration = Duration::from_millis(25);

pub(super) async fn run(
    state: Arc<AdxState>,
    storage: StorageAccount,
    resources: Arc<Resources>,
    stop: CancellationToken,
) {
    // When each message seen is due (first sight + a drawn ingestion delay).
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let mut busy = false;
        if !state.worker_paused() {
            for queue in &resources.ingestion_queues {
                let messages = match storage.get_messages(queue, VISIBILITY).await {
                    Ok(messages) => messages,
                    Err(error) => {
                        tracing::debug!(%error, "ADX emulator worker: reading the queue failed");
                        continue;
                    }
                };
                busy |= !messages.is_empty();
                for message in messages {
                    let at = *due
                        .entry(message.id.clone())
                        .or_insert_with(|| Instant::now() + state.draw_ingest_delay());
                    if Instant::now() < at {
                        continue;
                    }
                    if process(&state, &storage, &resources, queue, &message).await {
                        due.remove(&message.id);
                        let _ = storage.delete_message(queue, &message).await;
                    }
                }
            }
        }
        if !busy {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(IDLE) => {}
            }
        }
    }
}

/// A JSON-array string (`"[\"a\"]"`) as its strings; `None` if it is not one.
fn string_array(value: Option<&Value>) -> Option<Vec<String>> {
    match value? {
        Value::String(text) => serde_json::from_str::<Vec<String>>(text).ok(),
        _ => None,
    }
}

/// Handles one message; `true` when it is done with (delete it), `false` to see it again.
async fn process(
    state: &AdxState,
    storage: &StorageAccount,
    resources: &Resources,
    queue: &str,
    message: &QueueMessage,
) -> bool {
    state.keep_message(&message.text);
    let Some(ingestion) = base64::engine::general_purpose::STANDARD
        .decode(message.text.trim())
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
    else {
        state.count(|s| s.malformed_messages += 1);
        tracing::warn!(
            queue,
            "ADX emulator: a queue message is not base64 JSON; dropped"
        );
        return true;
    };
    let text = |key: &str| ingestion.get(key).and_then(Value::as_str).unwrap_or("");
    let extra = ingestion
        .get("AdditionalProperties")
        .cloned()
        .unwrap_or(Value::Null);
    let extra_text = |key: &str| {
        extra
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (database, table) = (
        text("DatabaseName").to_owned(),
        text("TableName").to_owned(),
    );
    let fail = |code: &'static str, message: String| IngestFailure { code, message };
    let result: Result<bool, IngestFailure> = async {
        if text("Id").len() != 36 || database.is_empty() || table.is_empty() {
            state.count(|s| s.malformed_messages += 1);
            return Err(fail(
                "BadRequest_InvalidMessage",
                "Id, DatabaseName and TableName are required".to_owned(),
            ));
        }
        if !state.context_is_valid(&extra_text("authorizationContext")) {
            return Err(fail(
                "Unauthorized",
                "the message's authorizationContext was not issued by this DM".to_owned(),
            ));
        }
        let malformed_arrays = ["tags", "ingestIfNotExists"]
            .iter()
            .any(|k| extra.get(*k).is_some() && string_array(extra.get(*k)).is_none());
        if malformed_arrays {
            state.count(|s| s.malformed_messages += 1);
            return Err(fail(
                "BadRequest_InvalidTags",
                "tags and ingestIfNotExists must be JSON arrays serialized as strings".to_owned(),
            ));
        }
        let blob = Url::parse(text("BlobPath")).map_err(|_| {
            fail(
                "BadRequest_InvalidBlobPath",
                "BlobPath is not a URL".to_owned(),
            )
        })?;
        let raw = storage
            .get_blob(&blob)
            .await
            .map_err(|e| fail("Download_SourceNotFound", e.to_string()))?;
        let data = if blob.path().to_ascii_lowercase().ends_with(".gz") {
            gunzip(&raw).map_err(|e| fail("BadRequest_InvalidCompression", e.to_string()))?
        } else {
            raw
        };
        if ingestion.get("RawDataSize").and_then(Value::as_u64) != Some(data.len() as u64) {
            state.count(|s| s.raw_size_mismatches += 1);
        }
        let mapping = {
            let reference = extra_text("ingestionMappingReference");
            if reference.is_empty() {
                extra_text("jsonMappingReference")
            } else {
                reference
            }
        };
        let (rows, bad_lines) = ingest_records(
            state,
            &database,
            &table,
            &extra_text("format").to_ascii_lowercase(),
            &mapping,
            &data,
        )?;
        let tags = string_array(extra.get("tags")).unwrap_or_default();
        let if_not_exists = string_array(extra.get("ingestIfNotExists")).unwrap_or_default();
        let count = rows.len() as u64;
        if state.ingest(&database, &table, rows, &tags, &if_not_exists) {
            state.count(|s| {
                s.queued_ingestions += 1;
                s.queued_rows += count;
                s.bad_lines += bad_lines;
            });
            Ok(true)
        } else {
            state.count(|s| s.skipped_existing += 1);
            Ok(false)
        }
    }
    .await;
    let mut path = Url::parse(text("BlobPath")).ok();
    if let Some(url) = path.as_mut() {
        url.set_query(None);
    }
    let path = path.map(|u| u.to_string()).unwrap_or_default();
    let report_level = ingestion
        .get("ReportLevel")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let report_method = ingestion
        .get("ReportMethod")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let status_row = ingestion
        .get("IngestionStatusInTable")
        .filter(|_| matches!(report_method, 1 | 2) && report_level != 1);
    let mut row = serde_json::Map::new();
    row.insert("IngestionSourceId".to_owned(), text("Id").into());
    row.insert("IngestionSourcePath".to_owned(), path.clone().into());
    row.insert("Database".to_owned(), database.clone().into());
    row.insert("Table".to_owned(), table.clone().into());
    row.insert(
        "UpdatedOn".to_owned(),
        jiff::Timestamp::now().to_string().into(),
    );
    row.insert(
        "OperationId".to_owned(),
        format!("{:032x}", rand::random::<u128>()).into(),
    );
    match result {
        Ok(ingested) => {
            if let Some(target) = status_row.filter(|_| report_level == 2) {
                row.insert(
                    "Status".to_owned(),
                    if ingested { "Succeeded" } else { "Skipped" }.into(),
                );
                write_status(state, storage, resources, target, row).await;
            }
            true
        }
        Err(failure) if failure.code == "Download_SourceNotFound" => {
            tracing::debug!(error = %failure.message, "ADX emulator: blob not readable yet; retrying later");
            false
        }
        Err(failure) => {
            state.count(|s| s.failed_ingestions += 1);
            if let Some(target) = status_row {
                row.insert("Status".to_owned(), "Failed".into());
                row.insert("ErrorCode".to_owned(), failure.code.into());
                row.insert("FailureStatus".to_owned(), "Permanent".into());
                row.insert("Details".to_owned(), failure.message.clone().into());
                row.insert("OriginatesFromUpdatePolicy".to_owned(), false.into());
                write_status(state, storage, resources, target, row).await;
            }
            if report_method == 1 || report_level == 1 {
                tracing::info!(code = failure.code, table = %table, "ADX emulator: queued ingestion failed");
                return true;
            }
            let report = json!({
                "OperationId": format!("{:032x}", rand::random::<u128>()),
                "Database": database,
                "Table": table,
                "FailedOn": jiff::Timestamp::now().to_string(),
                "IngestionSourceId": text("Id"),
                "IngestionSourcePath": path,
                "Details": failure.message,
                "ErrorCode": failure.code,
                "FailureStatus": "Permanent",
                "RootActivityId": format!("{:032x}", rand::random::<u128>()),
                "OriginatesFromUpdatePolicy": false,
                "ShouldRetry": false,
            });
            let encoded = base64::engine::general_purpose::STANDARD.encode(report.to_string());
            if let Err(error) = storage.put_message(&resources.failed_queue, &encoded).await {
                tracing::warn!(%error, "ADX emulator: posting a failed-ingestion report failed");
            }
            tracing::info!(code = failure.code, table = %table, "ADX emulator: queued ingestion failed");
            true
        }
    }
}

/// Writes the status row `IngestionStatusInTable` names, when it is the emulator's own table.
async fn write_status(
    state: &AdxState,
    storage: &StorageAccount,
    resources: &Resources,
    target: &Value,
    row: serde_json::Map<String, Value>,
) {
    let key = target
        .get("PartitionKey")
        .and_then(Value::as_str)
        .unwrap_or("");
    let same_key = target.get("RowKey").and_then(Value::as_str) == Some(key);
    let ours = target
        .get("TableConnectionString")
        .and_then(Value::as_str)
        .and_then(|text| Url::parse(text).ok())
        .and_then(|url| {
            url.path_segments()
                .and_then(|mut s| s.next_back().map(str::to_owned))
        })
        .is_some_and(|name| name == resources.status_table);
    if key.is_empty() || !same_key || !ours {
        state.count(|s| s.malformed_messages += 1);
        tracing::warn!(
            "ADX emulator: IngestionStatusInTable does not name a status row of this DM"
        );
        return;
    }
    match storage.upsert_row(&resources.status_table, key, &row).await {
        Ok(existed) => state.count(|s| {
            s.status_rows_written += 1;
            if !existed {
                s.status_rows_missing += 1;
            }
        }),
        Err(error) => tracing::warn!(%error, "ADX emulator: writing a status row failed"),
    }
}
