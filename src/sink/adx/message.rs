//! The queued-ingestion message (`reference/adx-ingestion.md` §1.5), its XML/base64 envelope, the
//! blob name and the ingestion source id, all derived from the batch id so that a re-send
//! produces the same blob name, the same `Id` and the same `ingest-by` tag.
//!
//! Owns these pure functions and nothing else: no I/O. It must never put anything but the
//! authorization context into the message that the DM did not ask for, and never exceed 64 KiB.

use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

use super::Error;
use crate::config::AdxFormat;

/// Put Message accepts at most 64 KiB of (encoded) message text.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// One queued ingestion request, as the data management service reads it from its queue.
#[derive(Debug)]
pub struct IngestionMessage<'a> {
    /// The ingestion source id (a GUID).
    pub id: &'a str,
    /// The blob URL including its SAS.
    pub blob_path: &'a str,
    /// Uncompressed size of the data.
    pub raw_data_size: u64,
    /// Target database.
    pub database: &'a str,
    /// Target table.
    pub table: &'a str,
    /// The ingestion mapping's name.
    pub mapping: &'a str,
    /// Data format.
    pub format: AdxFormat,
    /// `.get kusto identity token`'s `AuthorizationContext`, verbatim.
    pub authorization_context: &'a SecretString,
    /// `Some(batch id)`: add `tags=["ingest-by:<id>"]` and `ingestIfNotExists=["<id>"]`.
    pub ingest_by: Option<&'a str>,
    /// `SourceMessageCreationTime`.
    pub created: jiff::Timestamp,
    /// `Some(status table URL with its SAS)`: ask for a status row (`ReportLevel`
    /// `FailuresAndSuccesses`, `ReportMethod` Table) at `PartitionKey` = `RowKey` = `id`.
    pub status_table: Option<&'a str>,
}

impl IngestionMessage<'_> {
    /// The message JSON. `tags` and `ingestIfNotExists` are JSON arrays serialized as strings.
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut additional = json!({
            "authorizationContext": self.authorization_context.expose_secret(),
            "format": self.format.as_str(),
            "ingestionMappingReference": self.mapping,
            "ingestionMappingType": "Json",
        });
        if let (Some(key), Value::Object(map)) = (self.ingest_by, &mut additional) {
            map.insert(
                "tags".to_owned(),
                Value::String(json!([format!("ingest-by:{key}")]).to_string()),
            );
            map.insert(
                "ingestIfNotExists".to_owned(),
                Value::String(json!([key]).to_string()),
            );
        }
        let (report_level, report_method) = if self.status_table.is_some() {
            (2, 1)
        } else {
            (0, 0)
        };
        let mut message = json!({
            "Id": self.id,
            "BlobPath": self.blob_path,
            "RawDataSize": self.raw_data_size,
            "DatabaseName": self.database,
            "TableName": self.table,
            "RetainBlobOnSuccess": true,
            "FlushImmediately": false,
            "IgnoreSizeLimit": false,
            "ReportLevel": report_level,
            "ReportMethod": report_method,
            "SourceMessageCreationTime": self
                .created
                .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string(),
            "ApplicationForTracing": "kevents",
            "ClientVersionForTracing": concat!("kevents:", env!("CARGO_PKG_VERSION")),
            "AdditionalProperties": additional,
        });
        if let (Some(table), Value::Object(map)) = (self.status_table, &mut message) {
            map.insert(
                "IngestionStatusInTable".to_owned(),
                json!({
                    "TableConnectionString": table,
                    "PartitionKey": self.id,
                    "RowKey": self.id,
                }),
            );
        }
        message.to_string()
    }
}

/// The Put Message body: `<QueueMessage><MessageText>BASE64(json)</MessageText></QueueMessage>`.
///
/// # Errors
/// [`Error::MessageTooLarge`] above 64 KiB of message text.
pub fn envelope(json: &str) -> Result<String, Error> {
    let text = base64::engine::general_purpose::STANDARD.encode(json.as_bytes());
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(Error::MessageTooLarge { bytes: text.len() });
    }
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessage><MessageText>{text}</MessageText></QueueMessage>"
    ))
}

/// `{db}__{table}__{batch id}.json.gz` (or `.multijson.gz`); characters other than ASCII
/// letters, digits, `-` and `_` become `_`. ADX infers gzip from the `.gz` suffix.
#[must_use]
pub fn blob_name(database: &str, table: &str, batch_id: &str, format: AdxFormat) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!(
        "{}__{}__{}.{}.gz",
        clean(database),
        clean(table),
        clean(batch_id),
        format.as_str()
    )
}

/// A GUID derived from the batch id (SHA-256, RFC 4122 version 8 layout), so a re-sent batch
/// keeps its ingestion source id.
#[must_use]
pub fn source_id(batch_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, batch_id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = b.iter().fold(String::with_capacity(32), |mut out, x| {
        use std::fmt::Write as _;
        let _ = write!(out, "{x:02x}");
        out
    });
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message<'a>(context: &'a SecretString, ingest_by: Option<&'a str>) -> IngestionMessage<'a> {
        IngestionMessage {
            id: "3f2b6c1e-0000-4000-8000-000000000001",
            blob_path: "http://127.0.0.1:10000/devstoreaccount1/c/b.json.gz?sv=x&sig=y",
            raw_data_size: 106,
            database: "k8s",
            table: "KubeEvents",
            mapping: "KubeEventsFlatMapping",
            format: AdxFormat::Json,
            authorization_context: context,
            ingest_by,
            created: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            status_table: None,
        }
    }

    #[test]
    fn a_status_row_is_asked_for_with_report_level_2_method_table_and_its_address() {
        let context = SecretString::from("CTX");
        let plain: Value = serde_json::from_str(&message(&context, None).to_json()).unwrap();
        assert_eq!(
            (
                plain["ReportLevel"].as_u64(),
                plain["ReportMethod"].as_u64()
            ),
            (Some(0), Some(0))
        );
        assert!(plain.get("IngestionStatusInTable").is_none());
        let mut tracked = message(&context, None);
        tracked.status_table = Some("http://127.0.0.1:1/acct/ingestionsstatus?sig=s");
        let json: Value = serde_json::from_str(&tracked.to_json()).unwrap();
        assert_eq!(
            (json["ReportLevel"].as_u64(), json["ReportMethod"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(
            json["IngestionStatusInTable"],
            serde_json::json!({
                "TableConnectionString": "http://127.0.0.1:1/acct/ingestionsstatus?sig=s",
                "PartitionKey": "3f2b6c1e-0000-4000-8000-000000000001",
                "RowKey": "3f2b6c1e-0000-4000-8000-000000000001",
            })
        );
    }

    #[test]
    fn tags_and_ingest_if_not_exists_are_json_arrays_encoded_as_strings() {
        let context = SecretString::from("CTX");
        let json: Value = serde_json::from_str(&message(&context, Some("b-1")).to_json()).unwrap();
        let extra = &json["AdditionalProperties"];
        assert_eq!(extra["tags"], Value::String("[\"ingest-by:b-1\"]".into()));
        assert_eq!(
            extra["ingestIfNotExists"],
            Value::String("[\"b-1\"]".into())
        );
        assert_eq!(extra["authorizationContext"], "CTX");
        assert_eq!(
            json["SourceMessageCreationTime"],
            "2023-11-14T22:13:20.000000Z"
        );
        let plain: Value = serde_json::from_str(&message(&context, None).to_json()).unwrap();
        assert!(plain["AdditionalProperties"].get("tags").is_none());
        assert!(
            plain["AdditionalProperties"]
                .get("ingestIfNotExists")
                .is_none()
        );
    }

    #[test]
    fn the_envelope_is_base64_json_in_queue_message_xml_and_capped_at_64_kib() {
        let body = envelope("{\"a\":1}").unwrap();
        assert_eq!(
            body,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessage><MessageText>eyJhIjoxfQ==</MessageText></QueueMessage>"
        );
        let huge = "x".repeat(50_000);
        assert!(matches!(
            envelope(&huge),
            Err(Error::MessageTooLarge { bytes }) if bytes > MAX_MESSAGE_BYTES
        ));
    }

    #[test]
    fn blob_names_and_source_ids_are_derived_from_the_batch_id() {
        assert_eq!(
            blob_name(
                "k8s",
                "KubeEvents",
                "s1-000000000001-000000000009",
                AdxFormat::Json
            ),
            "k8s__KubeEvents__s1-000000000001-000000000009.json.gz"
        );
        assert_eq!(
            blob_name("my db", "T", "a/b", AdxFormat::MultiJson),
            "my_db__T__a_b.multijson.gz"
        );
        let id = source_id("batch-1");
        assert_eq!(id, source_id("batch-1"));
        assert_ne!(id, source_id("batch-2"));
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "8");
    }
}
