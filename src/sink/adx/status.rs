//! Ingestion status rows (table reporting, `reference/adx-ingestion.md` §3): how a queued batch
//! is known to have landed before it leaves the outbox.
//!
//! Before a batch's queue message is posted, its row is inserted as `Pending` into the status
//! table `.get ingestion resources` names (`PartitionKey` = `RowKey` = the batch's source id, a
//! GUID derived from the batch id); the message asks the data management service to report into
//! that row (`ReportLevel` `FailuresAndSuccesses`, `ReportMethod` Table, `IngestionStatusInTable`),
//! and the service rewrites it to `Succeeded`, `Skipped`, `PartiallySucceeded` or `Failed` when it
//! is done, minutes later. Because the row is written before the message, a batch without a row
//! was never submitted, and sending it cannot ingest it twice.
//!
//! Owns the three Table service calls (insert, replace, read) and the reading of a row into a
//! [`RowStatus`]. It must never log the table's SAS (URLs are logged without their query).

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde_json::{Map, Value, json};

use super::{Error, Inner, Operation, Result, auth::endpoint_name, queued::stable_index};

/// `x-ms-version` of Table service requests.
const TABLE_VERSION: &str = "2019-02-02";

/// What a status row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RowStatus {
    /// Not processed yet; `age` since the row was last written (the service's `Timestamp`).
    Pending {
        /// How long ago the row was written, when the service's timestamp could be read.
        age: Option<Duration>,
    },
    /// Ingested.
    Succeeded,
    /// Not ingested because an `ingestIfNotExists` tag existed: the data is in the table.
    Skipped,
    /// Failed; `permanent` when the service says retrying cannot help.
    Failed {
        /// `FailureStatus` is `Permanent` (or the row says nothing else).
        permanent: bool,
        /// `ErrorCode` and `Details`.
        reason: String,
    },
    /// Part of the data was ingested: sending it again would duplicate that part.
    PartiallySucceeded {
        /// `ErrorCode` and `Details`.
        reason: String,
    },
}

impl RowStatus {
    /// Reads a row's JSON (`odata=nometadata`).
    pub(super) fn from_row(row: &Map<String, Value>) -> Self {
        let text = |key: &str| row.get(key).and_then(Value::as_str).unwrap_or("");
        let reason = || {
            let (code, details) = (text("ErrorCode"), text("Details"));
            match (code.is_empty(), details.is_empty()) {
                (false, false) => format!("{code}: {details}"),
                (false, true) => code.to_owned(),
                (true, false) => details.to_owned(),
                (true, true) => "no reason given".to_owned(),
            }
        };
        match text("Status") {
            "Succeeded" => Self::Succeeded,
            "Skipped" => Self::Skipped,
            "PartiallySucceeded" => Self::PartiallySucceeded { reason: reason() },
            "Failed" => Self::Failed {
                permanent: !matches!(text("FailureStatus"), "Transient" | "Exhausted"),
                reason: reason(),
            },
            // `Pending`, `Queued` or anything newer: not final.
            _ => Self::Pending {
                age: text("Timestamp")
                    .parse::<jiff::Timestamp>()
                    .ok()
                    .and_then(|at| jiff::Timestamp::now().duration_since(at).try_into().ok()),
            },
        }
    }
}

/// The status row's address: the table URL with the entity key in its last path segment.
fn entity_url(table: &Url, key: &str) -> Url {
    let mut url = table.clone();
    let name = url
        .path_segments()
        .and_then(|mut segments| segments.next_back().map(str::to_owned))
        .unwrap_or_default();
    let key = key.replace('\'', "''");
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop()
            .push(&format!("{name}(PartitionKey='{key}',RowKey='{key}')"));
    }
    url
}

impl Inner {
    /// The status table of a batch: chosen by its id, so every term looks in the same one.
    pub(super) fn status_table<'r>(tables: &'r [Url], batch_id: &str) -> Option<&'r Url> {
        tables.get(stable_index(batch_id, tables.len()))
    }

    fn table_request(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request
            .header("x-ms-version", TABLE_VERSION)
            .header("Accept", "application/json;odata=nometadata")
            .header("DataServiceVersion", "3.0")
            .header("MaxDataServiceVersion", "3.0;NetFx")
    }

    /// The `Pending` row the service will update: the fields the SDKs write.
    fn pending_row(&self, source_id: &str, blob: &Url) -> Value {
        let mut path = blob.clone();
        path.set_query(None);
        json!({
            "PartitionKey": source_id,
            "RowKey": source_id,
            "Status": "Pending",
            "IngestionSourceId": source_id,
            "IngestionSourcePath": path.as_str(),
            "Database": self.config.database,
            "Table": self.config.table,
            "UpdatedOn": jiff::Timestamp::now().to_string(),
            "UpdatedOn@odata.type": "Edm.DateTime",
        })
    }

    /// Inserts the batch's `Pending` row; `false` when a row is there already.
    pub(super) async fn insert_pending_row(
        &self,
        table: &Url,
        source_id: &str,
        blob: &Url,
    ) -> Result<bool> {
        let endpoint = endpoint_name(table);
        let request = Self::table_request(self.http.client.post(table.clone()))
            .header("Content-Type", "application/json")
            .header("Prefer", "return-no-content")
            .body(self.pending_row(source_id, blob).to_string());
        let response = self
            .http
            .send(
                Operation::StatusTable,
                request,
                &endpoint,
                &[StatusCode::CONFLICT],
            )
            .await?;
        Ok(response.status() != StatusCode::CONFLICT)
    }

    /// Writes the batch's row as `Pending` whatever it said (a resubmission).
    pub(super) async fn replace_pending_row(
        &self,
        table: &Url,
        source_id: &str,
        blob: &Url,
    ) -> Result<()> {
        let url = entity_url(table, source_id);
        let endpoint = endpoint_name(&url);
        let request = Self::table_request(self.http.client.put(url))
            .header("Content-Type", "application/json")
            .body(self.pending_row(source_id, blob).to_string());
        self.http
            .send(Operation::StatusTable, request, &endpoint, &[])
            .await
            .map(drop)
    }

    /// The batch's row, if there is one.
    pub(super) async fn read_status_row(
        &self,
        table: &Url,
        source_id: &str,
    ) -> Result<Option<RowStatus>> {
        let url = entity_url(table, source_id);
        let endpoint = endpoint_name(&url);
        let request = Self::table_request(self.http.client.get(url));
        let response = self
            .http
            .send(
                Operation::StatusTable,
                request,
                &endpoint,
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let row: Map<String, Value> = response.json().await.map_err(|e| Error::Http {
            operation: Operation::StatusTable,
            endpoint: endpoint.clone(),
            source: e.without_url(),
        })?;
        Ok(Some(RowStatus::from_row(&row)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn rows_read_as_the_service_writes_them() {
        assert_eq!(
            RowStatus::from_row(&row(json!({"Status": "Succeeded"}))),
            RowStatus::Succeeded
        );
        assert_eq!(
            RowStatus::from_row(&row(json!({"Status": "Skipped"}))),
            RowStatus::Skipped
        );
        assert_eq!(
            RowStatus::from_row(&row(json!({
                "Status": "Failed",
                "FailureStatus": "Permanent",
                "ErrorCode": "BadRequest_MappingReferenceWasNotFound",
                "Details": "Mapping reference 'M' could not be found",
            }))),
            RowStatus::Failed {
                permanent: true,
                reason: "BadRequest_MappingReferenceWasNotFound: Mapping reference 'M' could not be found".to_owned(),
            }
        );
        assert_eq!(
            RowStatus::from_row(&row(
                json!({"Status": "Failed", "FailureStatus": "Transient", "ErrorCode": "X"})
            )),
            RowStatus::Failed {
                permanent: false,
                reason: "X".to_owned()
            }
        );
        assert!(matches!(
            RowStatus::from_row(&row(json!({"Status": "PartiallySucceeded"}))),
            RowStatus::PartiallySucceeded { .. }
        ));
        let pending = RowStatus::from_row(&row(json!({
            "Status": "Pending",
            "Timestamp": "2020-01-01T00:00:00.1234567Z",
        })));
        match pending {
            RowStatus::Pending { age: Some(age) } => {
                assert!(age > Duration::from_secs(86_400 * 365), "{age:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            RowStatus::from_row(&row(json!({"Status": "Queued"}))),
            RowStatus::Pending { age: None }
        );
    }

    #[test]
    fn the_entity_address_keeps_the_sas_and_quotes_the_key() {
        let table = Url::parse("https://acct.table.core.windows.net/ingestionsstatus20190101?sv=1&tn=ingestionsstatus20190101&sig=abc").unwrap();
        let url = entity_url(&table, "a'b");
        assert_eq!(
            url.path(),
            "/ingestionsstatus20190101(PartitionKey='a''b',RowKey='a''b')"
        );
        assert_eq!(url.query(), table.query());
    }
}
