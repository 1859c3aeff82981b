//! Is a batch that may already be in ADX there? Streaming ingestion cannot carry `ingest-by`
//! tags (`reference/adx-ingestion.md` §2), so before a streamed batch is sent again after an
//! answer that never came (a leader killed or stopped mid-send, a timeout, a gateway error) the
//! sink asks the engine: `T | where Uid == "…" and ResourceVersion == "…" | count` for the first
//! record of the batch (or of each part). A streaming request is stored whole or not at all, and
//! capture gives each `(Uid, ResourceVersion)` to exactly one batch, so one record answers for
//! its request.
//!
//! Owns the query and its answer, and the set of batches whose streaming outcome is unknown in
//! this process. It must never guess "delivered": without the key columns, or when the table
//! lacks them, the batch is sent again and a warning says it may be duplicated.

use std::{collections::HashSet, sync::PoisonError};

use reqwest::StatusCode;
use serde_json::Value;

use super::{Error, Inner, Operation, Result, auth::endpoint_name, resources::join};
use crate::{sink::OutgoingBatch, telemetry::error_chain};

/// The record fields (and table columns) that identify an event version.
const KEY_COLUMNS: [&str; 2] = ["Uid", "ResourceVersion"];

/// Batches whose last streaming attempt ended without a clear answer.
#[derive(Debug, Default)]
pub(super) struct Uncertain(std::sync::Mutex<HashSet<String>>);

impl Uncertain {
    pub(super) fn mark(&self, batch_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(batch_id.to_owned());
    }

    pub(super) fn contains(&self, batch_id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(batch_id)
    }

    pub(super) fn settle(&self, batch_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(batch_id);
    }
}

/// `(Uid, ResourceVersion)` of the first record of `part`, if it has both as strings.
pub(super) fn first_key(part: &[u8]) -> Option<(String, String)> {
    let line = part.split(|b| *b == b'\n').find(|l| !l.is_empty())?;
    let record: Value = serde_json::from_slice(line).ok()?;
    let field = |name: &str| record.get(name)?.as_str().map(str::to_owned);
    Some((field(KEY_COLUMNS[0])?, field(KEY_COLUMNS[1])?))
}

/// The count query for one key. Values are KQL string literals (JSON escaping is valid KQL).
pub(super) fn count_query(table: &str, (uid, resource_version): &(String, String)) -> String {
    let literal = |text: &str| serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
    format!(
        "['{table}'] | where ['{}'] == {} and ['{}'] == {} | count",
        KEY_COLUMNS[0],
        literal(uid),
        KEY_COLUMNS[1],
        literal(resource_version),
    )
}

impl Inner {
    /// Whether the records of `part` (NDJSON) are in the table: `Some(true)` or `Some(false)`,
    /// or `None` when that cannot be told (no key fields, or the table has no key columns).
    ///
    /// # Errors
    /// A failed or throttled query, retriable like a failed send.
    pub(super) async fn already_ingested(
        &self,
        batch: &OutgoingBatch,
        part: &[u8],
    ) -> Result<Option<bool>> {
        let Some(key) = first_key(part) else {
            tracing::warn!(
                batch_id = %batch.id,
                "Cannot check whether this batch already reached ADX: its records carry no Uid and ResourceVersion (add both to record.extra_columns); sending it again may duplicate rows"
            );
            return Ok(None);
        };
        let engine = self.engine.as_ref().ok_or(Error::NoEndpoint("engine"))?;
        let url = join(engine, "v1/rest/query");
        let endpoint = endpoint_name(&url);
        let body = serde_json::json!({
            "db": self.config.database,
            "csl": count_query(&self.config.table, &key),
        });
        let request = Self::kusto_request(
            self.http.client.post(url),
            &format!("kevents.check;{}", batch.id),
        )
        .header("Content-Type", "application/json; charset=utf-8")
        .json(&body);
        let request = self.authorize(request).await?;
        let response = match self
            .http
            .send(Operation::Query, request, &endpoint, &[])
            .await
        {
            Ok(response) => response,
            Err(error) => {
                self.on_error(&error).await;
                let status = error.status().unwrap_or(0);
                if StatusCode::from_u16(status).is_ok_and(|s| s.is_client_error())
                    && !matches!(status, 401 | 403 | 408 | 429)
                {
                    // The table cannot answer (no such column, queries not allowed): retrying
                    // the query cannot help, so do what a sink without the check would do.
                    tracing::warn!(
                        batch_id = %batch.id,
                        error = %error_chain(&error),
                        "Cannot check whether this batch already reached ADX; sending it again may duplicate rows"
                    );
                    return Ok(None);
                }
                return Err(error);
            }
        };
        let answer: Value = response.json().await.map_err(|source| Error::Http {
            operation: Operation::Query,
            endpoint: endpoint.clone(),
            source: source.without_url(),
        })?;
        let count = answer
            .pointer("/Tables/0/Rows/0/0")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::Query {
                endpoint,
                message: "no count in Tables[0].Rows[0][0]".to_owned(),
            })?;
        tracing::debug!(batch_id = %batch.id, rows = count, "Checked whether the batch is in ADX");
        Ok(Some(count > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_record_gives_the_key_and_the_query_quotes_it() {
        let part = b"{\"Uid\":\"u-1\",\"ResourceVersion\":\"7\",\"Name\":\"x\"}\n{\"Uid\":\"u-2\",\"ResourceVersion\":\"8\"}\n";
        let key = first_key(part).unwrap();
        assert_eq!(key, ("u-1".to_owned(), "7".to_owned()));
        assert_eq!(
            count_query("KubeEvents", &("a\"b".to_owned(), "7".to_owned())),
            r#"['KubeEvents'] | where ['Uid'] == "a\"b" and ['ResourceVersion'] == "7" | count"#
        );
        assert_eq!(first_key(b"{\"Name\":\"no key\"}\n"), None);
        assert_eq!(first_key(b"{\"log\":{\"metadata\":{}}}\n"), None);
        assert_eq!(first_key(b""), None);
    }

    #[test]
    fn the_emulator_parses_the_query_the_sink_sends() {
        let query = count_query("KubeEvents", &("u \\ \"1\"".to_owned(), "42".to_owned()));
        let parsed = crate::emulator::adx::kql::parse_count_query(&query).unwrap();
        assert_eq!(parsed.table, "KubeEvents");
        assert_eq!(
            parsed.conditions,
            vec![
                ("Uid".to_owned(), "u \\ \"1\"".to_owned()),
                ("ResourceVersion".to_owned(), "42".to_owned()),
            ]
        );
    }
}
