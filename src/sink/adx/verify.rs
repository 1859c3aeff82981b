//! Is a batch that may already be in ADX there? Streaming ingestion cannot carry `ingest-by`
//! tags (`reference/adx-ingestion.md` §2), so before a streamed batch is sent again after an
//! answer that never came (a leader killed or stopped mid-send, a timeout, a gateway error) the
//! sink asks the engine: `T | where Uid == "…" and ResourceVersion == "…" | count` for a record
//! of the batch. A streaming request is stored whole or not at all, capture gives each
//! `(Uid, ResourceVersion)` to exactly one batch, and the requests of a batch go out in record
//! order and stop at the first failure, so what ADX holds of a batch is always a prefix of its
//! records: its last record says whether a part is all there, its first whether any of it is.
//!
//! The key is read where the record shape puts it: top-level `Uid`/`ResourceVersion` (`flat`), or
//! under `log` (`fluent-bit`). For the fluent-bit shape the query finds the key in `Uid` and
//! `ResourceVersion` columns (the `FluentBitMappingEvents` mapping extended with `$.log.Uid` and
//! `$.log.ResourceVersion`) or else in a `dynamic` `log` column (Fluent Bit's own table layout).
//!
//! The query needs the Database Viewer role, which ingestion does not: a 403 is a configuration
//! error, reported once (an error log naming the role, `kevents_adx_requests_total{operation=
//! "query",outcome="permanent_error"}`), after which lookups are skipped for an hour and the
//! caller re-sends the batch the safe way it has.
//!
//! Owns the queries and their answers, the memory of a forbidden query, and the set of batches
//! whose streaming outcome is unknown in this process. It must never guess "delivered": without
//! the key fields, or when the table lacks the columns, the batch is sent again and a warning
//! says it may be duplicated.

use std::{
    collections::HashSet,
    sync::PoisonError,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::Value;

use super::{Error, Inner, Operation, Result, auth::endpoint_name, resources::join};
use crate::{sink::OutgoingBatch, telemetry::error_chain};

/// The record fields that identify an event version.
const KEY_FIELDS: [&str; 2] = ["Uid", "ResourceVersion"];
/// After a 403, lookups are skipped this long before the engine is asked again (a role granted
/// meanwhile takes effect without a restart).
const QUERY_FORBIDDEN_RECHECK: Duration = Duration::from_secs(3600);

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

/// Where a record shape keeps the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// Top-level fields, in columns of the same names.
    Flat,
    /// Under `log`: in `Uid`/`ResourceVersion` columns, or in a `dynamic` `log` column.
    FluentBit,
}

/// The key of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RecordKey {
    /// `Uid`.
    pub uid: String,
    /// `ResourceVersion`.
    pub resource_version: String,
    /// Where it was found.
    pub shape: Shape,
}

/// The key of one NDJSON record, if it has both fields (strings, or a number for the version).
pub(super) fn record_key(line: &[u8]) -> Option<RecordKey> {
    let record: Value = serde_json::from_slice(line).ok()?;
    let field = |object: &Value, name: &str| match object.get(name)? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    };
    let key = |object: &Value, shape| {
        Some(RecordKey {
            uid: field(object, KEY_FIELDS[0])?,
            resource_version: field(object, KEY_FIELDS[1])?,
            shape,
        })
    };
    key(&record, Shape::Flat).or_else(|| key(record.get("log")?, Shape::FluentBit))
}

/// The non-empty lines of an NDJSON part.
pub(super) fn records(part: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    part.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

/// The key of the first record of `part`.
pub(super) fn first_key(part: &[u8]) -> Option<RecordKey> {
    record_key(records(part).next()?)
}

/// The key of the last record of `part`.
pub(super) fn last_key(part: &[u8]) -> Option<RecordKey> {
    record_key(records(part).next_back()?)
}

/// The count query for one key. Values are KQL string literals (JSON escaping is valid KQL).
pub(super) fn count_query(table: &str, key: &RecordKey) -> String {
    let literal = |text: &str| serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
    let column = |name: &str| match key.shape {
        Shape::Flat => format!("['{name}']"),
        Shape::FluentBit => format!(
            "column_ifexists('{name}', tostring(column_ifexists('log', dynamic(null)).{name}))"
        ),
    };
    format!(
        "['{table}'] | where {} == {} and {} == {} | count",
        column(KEY_FIELDS[0]),
        literal(&key.uid),
        column(KEY_FIELDS[1]),
        literal(&key.resource_version),
    )
}

/// The answer for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
    /// It is in the table.
    Present,
    /// It is not.
    Absent,
    /// That cannot be told (no key fields, or the table cannot answer): send as if absent.
    Unknown,
    /// The identity may not query (403): the caller takes its safe path.
    Forbidden,
}

/// What a caller already knows of a part, from looking at the part it was halved from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Known {
    /// Nothing.
    Nothing,
    /// Its first record is in the table (the first half of a partial part).
    FirstPresent,
    /// Its last record is not (the second half of a partial part).
    LastAbsent,
}

/// What the table holds of a part (a run of consecutive records of a batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    /// Every record.
    All,
    /// None.
    Nothing,
    /// A prefix: an earlier attempt sent the part in pieces and stopped.
    Partial,
    /// That cannot be told: send it as if absent.
    Unknown,
    /// The identity may not query.
    Forbidden,
}

impl Inner {
    /// Whether the first record of `part` is in the table.
    ///
    /// # Errors
    /// A failed or throttled query, retriable like a failed send.
    pub(super) async fn lookup_first(&self, batch: &OutgoingBatch, part: &[u8]) -> Result<Lookup> {
        self.lookup(batch, first_key(part).as_ref()).await
    }

    /// What the table holds of `part`: its last record answers "all", then its first "nothing".
    /// `known` saves the query whose answer the caller already has.
    ///
    /// # Errors
    /// A failed or throttled query.
    pub(super) async fn presence(
        &self,
        batch: &OutgoingBatch,
        part: &[u8],
        known: Known,
    ) -> Result<Presence> {
        let (Some(first), Some(last)) = (first_key(part), last_key(part)) else {
            return Ok(match self.lookup(batch, None).await? {
                Lookup::Forbidden => Presence::Forbidden,
                _ => Presence::Unknown,
            });
        };
        let ask = async |key| {
            Ok(match self.lookup(batch, Some(key)).await? {
                Lookup::Present => Some(true),
                Lookup::Absent => Some(false),
                Lookup::Unknown | Lookup::Forbidden => None,
            })
        };
        let last_present = if known == Known::LastAbsent {
            false
        } else {
            match ask(&last).await? {
                Some(present) => present,
                None => return Ok(self.unanswered()),
            }
        };
        if last_present {
            return Ok(Presence::All);
        }
        if first == last {
            return Ok(Presence::Nothing);
        }
        let first_present = if known == Known::FirstPresent {
            true
        } else {
            match ask(&first).await? {
                Some(present) => present,
                None => return Ok(self.unanswered()),
            }
        };
        Ok(if first_present {
            Presence::Partial
        } else {
            Presence::Nothing
        })
    }

    /// A lookup without a yes or no: forbidden, or the table could not tell.
    fn unanswered(&self) -> Presence {
        if self.queries_forbidden() {
            Presence::Forbidden
        } else {
            Presence::Unknown
        }
    }

    /// True while an earlier 403 says the identity may not query.
    pub(super) fn queries_forbidden(&self) -> bool {
        self.query_forbidden
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|recheck| Instant::now() < recheck)
    }

    /// Whether the record with `key` is in the table.
    async fn lookup(&self, batch: &OutgoingBatch, key: Option<&RecordKey>) -> Result<Lookup> {
        if self.queries_forbidden() {
            return Ok(Lookup::Forbidden);
        }
        let Some(key) = key else {
            tracing::warn!(
                batch_id = %batch.id,
                "Cannot check whether this batch already reached ADX: its records carry no Uid and ResourceVersion (add both to record.extra_columns); sending it again may duplicate rows"
            );
            return Ok(Lookup::Unknown);
        };
        let engine = self.engine.as_ref().ok_or(Error::NoEndpoint("engine"))?;
        let url = join(engine, "v1/rest/query");
        let endpoint = endpoint_name(&url);
        let body = serde_json::json!({
            "db": self.config.database,
            "csl": count_query(&self.config.table, key),
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
            Err(error) if error.status() == Some(403) => {
                self.on_query_forbidden(batch, &error);
                return Ok(Lookup::Forbidden);
            }
            Err(error) => {
                self.on_error(&error).await;
                let status = error.status().unwrap_or(0);
                if StatusCode::from_u16(status).is_ok_and(|s| s.is_client_error())
                    && !matches!(status, 401 | 408 | 429)
                {
                    // The table cannot answer (no such column): retrying the query cannot help,
                    // so do what a sink without the check would do.
                    tracing::warn!(
                        batch_id = %batch.id,
                        error = %error_chain(&error),
                        "Cannot check whether this batch already reached ADX; sending it again may duplicate rows"
                    );
                    return Ok(Lookup::Unknown);
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
        self.on_query_allowed();
        tracing::debug!(batch_id = %batch.id, rows = count, "Checked whether the batch is in ADX");
        Ok(if count > 0 {
            Lookup::Present
        } else {
            Lookup::Absent
        })
    }

    /// A 403: remember it (lookups are skipped until the recheck), and say so once.
    fn on_query_forbidden(&self, batch: &OutgoingBatch, error: &Error) {
        let earlier = self
            .query_forbidden
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(Instant::now() + QUERY_FORBIDDEN_RECHECK);
        if earlier.is_none() {
            tracing::error!(
                batch_id = %batch.id,
                database = %self.config.database,
                error = %error_chain(error),
                "ADX refuses the query that checks whether a re-sent batch is already in the table: the identity needs the Database Viewer role on this database (ingestion needs only Database Ingestor). Until then such batches are re-sent by queued ingestion with an ingest-by tag, which drops an earlier queued copy but not rows an earlier streaming request stored; the query is tried again hourly"
            );
        }
    }

    /// A query went through: a role granted since a 403 is noticed.
    fn on_query_allowed(&self) {
        let earlier = self
            .query_forbidden
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if earlier.is_some() {
            tracing::info!(
                database = %self.config.database,
                "ADX answers the re-send check query again (Database Viewer granted)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uid: &str, rv: &str, shape: Shape) -> RecordKey {
        RecordKey {
            uid: uid.to_owned(),
            resource_version: rv.to_owned(),
            shape,
        }
    }

    #[test]
    fn the_first_and_last_records_give_the_key_and_the_query_quotes_it() {
        let part = b"{\"Uid\":\"u-1\",\"ResourceVersion\":\"7\",\"Name\":\"x\"}\n{\"Uid\":\"u-2\",\"ResourceVersion\":\"8\"}\n";
        assert_eq!(first_key(part), Some(key("u-1", "7", Shape::Flat)));
        assert_eq!(last_key(part), Some(key("u-2", "8", Shape::Flat)));
        assert_eq!(
            count_query("KubeEvents", &key("a\"b", "7", Shape::Flat)),
            r#"['KubeEvents'] | where ['Uid'] == "a\"b" and ['ResourceVersion'] == "7" | count"#
        );
        assert_eq!(first_key(b"{\"Name\":\"no key\"}\n"), None);
        assert_eq!(first_key(b"{\"log\":{\"metadata\":{}}}\n"), None);
        assert_eq!(first_key(b""), None);
    }

    #[test]
    fn the_fluent_bit_shape_keeps_the_key_under_log() {
        let part = b"{\"TimeGenerated\":\"2024-05-01T10:00:00Z\",\"log\":{\"Name\":\"x\",\"Uid\":\"u-1\",\"ResourceVersion\":\"7\"}}\n";
        let found = first_key(part).unwrap();
        assert_eq!(found, key("u-1", "7", Shape::FluentBit));
        assert_eq!(
            count_query("KubeEvents", &found),
            "['KubeEvents'] | where column_ifexists('Uid', tostring(column_ifexists('log', dynamic(null)).Uid)) == \"u-1\" and column_ifexists('ResourceVersion', tostring(column_ifexists('log', dynamic(null)).ResourceVersion)) == \"7\" | count"
        );
    }

    #[test]
    fn the_emulator_parses_the_queries_the_sink_sends() {
        use kevents_testkit::adx::kql::{Expr, parse_count_query};
        let query = count_query("KubeEvents", &key("u \\ \"1\"", "42", Shape::Flat));
        let parsed = parse_count_query(&query).unwrap();
        assert_eq!(parsed.table, "KubeEvents");
        assert_eq!(
            parsed.conditions,
            vec![
                (Expr::Column("Uid".to_owned()), "u \\ \"1\"".to_owned()),
                (Expr::Column("ResourceVersion".to_owned()), "42".to_owned()),
            ]
        );
        let query = count_query("KubeEvents", &key("u-1", "42", Shape::FluentBit));
        let parsed = parse_count_query(&query).unwrap();
        assert_eq!(parsed.conditions.len(), 2);
        assert_eq!(parsed.conditions[1].1, "42");
    }
}
