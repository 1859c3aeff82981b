//! The emulated data management service's ingestion worker: reads the ingestion queues in
//! Azurite, checks each message against the §1.5 contract, fetches and gunzips its blob, applies
//! the JSON mapping and stores the rows, honouring `ingestIfNotExists`; a failed ingestion is
//! reported on the failed-ingestions queue in the DM's format.
//!
//! Owns the poll loop. It must never drop a message it could not process because of a storage
//! hiccup (it stays in the queue and comes back), and never ingest a message whose
//! authorization context the emulator did not issue.

use std::{sync::Arc, time::Duration};

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

/// How long a dequeued message stays invisible: a crash of the worker makes it come back.
const VISIBILITY: Duration = Duration::from_secs(10);
/// Idle poll interval.
const IDLE: Duration = Duration::from_millis(25);

pub(super) async fn run(
    state: Arc<AdxState>,
    storage: StorageAccount,
    resources: Arc<Resources>,
    stop: CancellationToken,
) {
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
                    if process(&state, &storage, &resources, queue, &message).await {
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
    let result: Result<(), IngestFailure> = async {
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
        } else {
            state.count(|s| s.skipped_existing += 1);
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => true,
        Err(failure) if failure.code == "Download_SourceNotFound" => {
            tracing::debug!(error = %failure.message, "ADX emulator: blob not readable yet; retrying later");
            false
        }
        Err(failure) => {
            state.count(|s| s.failed_ingestions += 1);
            let mut path = Url::parse(text("BlobPath")).ok();
            if let Some(url) = path.as_mut() {
                url.set_query(None);
            }
            let report = json!({
                "OperationId": format!("{:032x}", rand::random::<u128>()),
                "Database": database,
                "Table": table,
                "FailedOn": jiff::Timestamp::now().to_string(),
                "IngestionSourceId": text("Id"),
                "IngestionSourcePath": path.map(|u| u.to_string()).unwrap_or_default(),
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
