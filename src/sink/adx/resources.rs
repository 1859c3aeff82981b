//! Ingestion resources: `.get ingestion resources` (blob containers and queues, with SAS) and
//! `.get kusto identity token` (the authorization context) from the data management service.
//!
//! Owns their cache: fetched together, kept for `resources_refresh` (1 h by default), dropped
//! early when storage refuses a SAS (403). The lock is held across the fetch, so concurrent
//! sends wait for one fetch. It must never log a SAS URL with its query or the authorization
//! context.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::Url;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{Error, Inner, Operation, Result, auth::endpoint_name};

/// The resources of one fetch.
pub(super) struct Resources {
    /// `TempStorage`: blob containers, with SAS.
    pub containers: Vec<Url>,
    /// `SecuredReadyForAggregationQueue`: ingestion queues, with SAS.
    pub queues: Vec<Url>,
    /// `FailedIngestionsQueue`.
    pub failed_queues: Vec<Url>,
    /// `IngestionsStatusTable`: status tables, with SAS (sorted, so a batch's row is looked for
    /// in the table it was written to).
    pub status_tables: Vec<Url>,
    /// `AuthorizationContext`, verbatim.
    pub authorization_context: SecretString,
    /// Increases with every fetch; an invalidation names the fetch it saw fail.
    pub generation: u64,
    fetched: Instant,
}

/// The storage roots `.get ingestion resources` names, by kind.
#[derive(Debug, Default)]
pub(super) struct StorageRoots {
    /// `TempStorage`.
    pub containers: Vec<Url>,
    /// `SecuredReadyForAggregationQueue`.
    pub queues: Vec<Url>,
    /// `FailedIngestionsQueue`.
    pub failed_queues: Vec<Url>,
    /// `IngestionsStatusTable`.
    pub status_tables: Vec<Url>,
}

/// The cache.
pub(super) struct ResourceCache {
    refresh: Duration,
    state: Mutex<(Option<Arc<Resources>>, u64)>,
}

impl ResourceCache {
    pub(super) fn new(refresh: Duration) -> Self {
        Self {
            refresh,
            state: Mutex::new((None, 0)),
        }
    }

    /// Drops the cached resources if they are still those of `generation`.
    pub(super) async fn invalidate(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state.0.as_ref().is_some_and(|r| r.generation == generation) {
            state.0 = None;
        }
    }
}

impl Inner {
    /// The current resources, fetching them when absent or older than the refresh interval.
    pub(super) async fn resources(&self) -> Result<Arc<Resources>> {
        let mut state = self.resources.state.lock().await;
        if let Some(current) = &state.0
            && current.fetched.elapsed() < self.resources.refresh
        {
            return Ok(Arc::clone(current));
        }
        let generation = state.1 + 1;
        match self.fetch_resources(generation).await {
            Ok(fresh) => {
                self.http
                    .metrics
                    .adx_resource_refreshes
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(
                    containers = fresh.containers.len(),
                    queues = fresh.queues.len(),
                    failed_queues = fresh.failed_queues.len(),
                    status_tables = fresh.status_tables.len(),
                    "Fetched ADX ingestion resources"
                );
                let fresh = Arc::new(fresh);
                *state = (Some(Arc::clone(&fresh)), generation);
                Ok(fresh)
            }
            Err(error) => {
                self.http
                    .metrics
                    .adx_resource_refreshes
                    .with_label_values(&["error"])
                    .inc();
                // Keep serving the old resources for a while if there are any: a DM hiccup
                // should not stop ingestion while the SAS is still valid.
                match &state.0 {
                    Some(old) if old.fetched.elapsed() < self.resources.refresh * 2 => {
                        tracing::warn!(error = %crate::telemetry::error_chain(&error), "Refreshing ADX ingestion resources failed; using the previous ones");
                        Ok(Arc::clone(old))
                    }
                    _ => Err(error),
                }
            }
        }
    }

    async fn fetch_resources(&self, generation: u64) -> Result<Resources> {
        let StorageRoots {
            containers,
            queues,
            failed_queues,
            mut status_tables,
        } = self.fetch_storage().await?;
        let context = self.fetch_identity().await?;
        status_tables.sort_by(|a, b| a.path().cmp(b.path()).then(a.host_str().cmp(&b.host_str())));
        Ok(Resources {
            containers,
            queues,
            failed_queues,
            status_tables,
            authorization_context: context,
            generation,
            fetched: Instant::now(),
        })
    }

    /// `.get ingestion resources`: the storage roots, with at least one container and one
    /// ingestion queue (an error names the kind that is missing).
    pub(super) async fn fetch_storage(&self) -> Result<StorageRoots> {
        let table = self.mgmt(".get ingestion resources").await?;
        let mut roots = StorageRoots::default();
        for (kind, root) in table.rows("ResourceTypeName", "StorageRoot") {
            let Ok(url) = Url::parse(root) else {
                continue;
            };
            match kind {
                "TempStorage" => roots.containers.push(url),
                "SecuredReadyForAggregationQueue" => roots.queues.push(url),
                "FailedIngestionsQueue" => roots.failed_queues.push(url),
                "IngestionsStatusTable" => roots.status_tables.push(url),
                _ => {}
            }
        }
        let missing = match (roots.containers.is_empty(), roots.queues.is_empty()) {
            (true, true) => Some("no TempStorage container and no SecuredReadyForAggregationQueue"),
            (true, false) => Some("no TempStorage container"),
            (false, true) => Some("no SecuredReadyForAggregationQueue"),
            (false, false) => None,
        };
        if let Some(missing) = missing {
            return Err(Error::Resources {
                endpoint: self.dm_endpoint(),
                message: format!("the DM named {missing}"),
            });
        }
        Ok(roots)
    }

    /// `.get kusto identity token`: the authorization context.
    pub(super) async fn fetch_identity(&self) -> Result<SecretString> {
        let identity = self.mgmt(".get kusto identity token").await?;
        identity
            .column("AuthorizationContext")
            .into_iter()
            .next()
            .filter(|c| !c.is_empty())
            .map(|c| SecretString::from(c.to_owned()))
            .ok_or_else(|| Error::Resources {
                endpoint: self.dm_endpoint(),
                message: "`.get kusto identity token` returned no AuthorizationContext".to_owned(),
            })
    }

    pub(super) fn dm_endpoint(&self) -> String {
        self.config
            .ingest_endpoint
            .as_ref()
            .map(endpoint_name)
            .unwrap_or_default()
    }

    /// Runs a management command against the DM and returns its V1 response.
    async fn mgmt(&self, command: &str) -> Result<V1Response> {
        let base = self
            .config
            .ingest_endpoint
            .as_ref()
            .ok_or(Error::NoEndpoint("ingest (data management)"))?;
        self.kusto_mgmt(base, "NetDefaultDB", command).await
    }

    /// Runs a management command against `base` (the DM or the engine) in database `db` and
    /// returns its V1 response.
    pub(super) async fn kusto_mgmt(
        &self,
        base: &Url,
        db: &str,
        command: &str,
    ) -> Result<V1Response> {
        let url = join(base, "v1/rest/mgmt");
        let endpoint = endpoint_name(&url);
        let request = Self::kusto_request(
            self.http.client.post(url),
            &format!("kevents.mgmt;{}", rand::random::<u64>()),
        );
        let request = self
            .authorize(request)
            .await?
            .header("Content-Type", "application/json; charset=utf-8")
            .body(json!({"db": db, "csl": command}).to_string());
        let response = match self
            .http
            .send(Operation::Mgmt, request, &endpoint, &[])
            .await
        {
            Ok(response) => response,
            Err(error) => {
                self.on_error(&error).await;
                return Err(error);
            }
        };
        let body: Value = response.json().await.map_err(|e| Error::Http {
            operation: Operation::Mgmt,
            endpoint: endpoint.clone(),
            source: e.without_url(),
        })?;
        Ok(V1Response(body))
    }
}

/// `base` + `/` + `path`, keeping any path prefix of `base`.
pub(super) fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty();
        for segment in path.split('/') {
            segments.push(segment);
        }
    }
    url
}

/// A Kusto V1 response: `{"Tables":[{"Columns":[{"ColumnName":…}],"Rows":[[…]]}]}`.
pub(super) struct V1Response(Value);

impl V1Response {
    /// Every table's rows that have both columns, looked up by name.
    fn rows<'a>(&'a self, a: &str, b: &str) -> Vec<(&'a str, &'a str)> {
        let mut out = Vec::new();
        for table in self.tables() {
            let (Some(ia), Some(ib)) = (column_index(table, a), column_index(table, b)) else {
                continue;
            };
            for row in table
                .get("Rows")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let (Some(x), Some(y)) = (
                    row.get(ia).and_then(Value::as_str),
                    row.get(ib).and_then(Value::as_str),
                ) {
                    out.push((x, y));
                }
            }
        }
        out
    }

    /// Every value of one column.
    pub(super) fn column<'a>(&'a self, name: &str) -> Vec<&'a str> {
        let mut out = Vec::new();
        for table in self.tables() {
            let Some(index) = column_index(table, name) else {
                continue;
            };
            for row in table
                .get("Rows")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(v) = row.get(index).and_then(Value::as_str) {
                    out.push(v);
                }
            }
        }
        out
    }

    fn tables(&self) -> impl Iterator<Item = &Value> {
        self.0
            .get("Tables")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }
}

fn column_index(table: &Value, name: &str) -> Option<usize> {
    table
        .get("Columns")?
        .as_array()?
        .iter()
        .position(|c| c.get("ColumnName").and_then(Value::as_str) == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_rows_are_read_by_column_name_not_position() {
        let body = json!({"Tables": [{"TableName": "Table_0",
            "Columns": [{"ColumnName": "StorageRoot"}, {"ColumnName": "ResourceTypeName"}],
            "Rows": [["https://a/c?sig=1", "TempStorage"], ["https://a/q?sig=2", "SecuredReadyForAggregationQueue"]]}]});
        let response = V1Response(body);
        assert_eq!(
            response.rows("ResourceTypeName", "StorageRoot"),
            vec![
                ("TempStorage", "https://a/c?sig=1"),
                ("SecuredReadyForAggregationQueue", "https://a/q?sig=2")
            ]
        );
        assert!(response.column("AuthorizationContext").is_empty());
    }

    #[test]
    fn join_keeps_the_base_path_and_drops_the_query() {
        let base = Url::parse("http://h:1/prefix/?x=1").unwrap();
        assert_eq!(
            join(&base, "v1/rest/mgmt").as_str(),
            "http://h:1/prefix/v1/rest/mgmt"
        );
        let bare = Url::parse("https://ingest-c.k.windows.net").unwrap();
        assert_eq!(
            join(&bare, "v1/rest/mgmt").as_str(),
            "https://ingest-c.k.windows.net/v1/rest/mgmt"
        );
    }
}
