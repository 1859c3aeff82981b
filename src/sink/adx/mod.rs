//! The Azure Data Explorer sink: queued ingestion (gzip blob + queue message through the data
//! management service), streaming ingestion to the engine, and managed mode (streaming, falling
//! back to queued). Wire formats: `reference/adx-ingestion.md`.
//!
//! Owns the HTTP conversation with ADX and its storage: AAD tokens (`auth`), ingestion resources
//! and the identity token (`resources`), blob names, queue messages (`message`), streaming
//! (`streaming`), the lookup of a streamed batch that may already be in the table before it is
//! sent again (`verify`), the classification of every failure as retriable or permanent, what
//! managed mode does with each (queued for a too-large batch, a table whose streaming policy is
//! off, throttling and transient errors, or a re-send the identity may not look up; the batch
//! fails only for a permanent error of the batch itself), and the optional failed-ingestions
//! poller (`failures`), the health check of the setup (`health`), and what `/status` shows of the
//! sink (`Sink::report`: configuration without secrets, the last check, send errors, streaming's
//! state). A refusal that is a configuration problem is logged once per cause, not per batch. It must never log a token, a secret, an authorization context or a SAS signature:
//! URLs are logged and put in errors without their query string, and reqwest errors are stripped
//! of their URL.

mod auth;
mod failures;
mod health;
mod message;
mod resources;
mod status;
mod streaming;
mod verify;

use std::{
    collections::HashSet,
    fmt,
    io::Write as _,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use flate2::{Compression, write::GzEncoder};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use tokio::task::JoinHandle;

pub use message::{IngestionMessage, blob_name, envelope, source_id};

use self::status::RowStatus;
use self::{
    auth::{TokenProvider, endpoint_name},
    failures::RecentIds,
    resources::{ResourceCache, Resources},
};
use super::{
    ConfirmFuture, Confirmation, HealthError, HealthFuture, OutgoingBatch, Receipt, SendFuture,
    Sink, SinkReport,
};
use crate::{
    config::{AdxConfig, AdxMode},
    telemetry::{Metrics, error_chain},
};

/// `x-ms-version` of storage requests (anything from 2019-12-12 works).
const STORAGE_VERSION: &str = "2025-07-05";
/// `x-ms-version` of Kusto requests (the Python SDK's value).
const KUSTO_VERSION: &str = "2024-12-12";
/// Blob and queue attempts per batch at most, each on another resource (as the SDKs do).
const MAX_STORAGE_TRIES: usize = 3;
/// A 429 pauses streaming (managed mode) for this long.
const THROTTLE_SUSPENSION: Duration = Duration::from_secs(10);
/// Streaming switched off on the cluster (404) or the table (its policy) pauses it for this long.
const UNAVAILABLE_SUSPENSION: Duration = Duration::from_secs(15 * 60);

/// The ADX operations, for errors and the `operation` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// An AAD or IMDS token request.
    Token,
    /// A management command to the data management service.
    Mgmt,
    /// Put Blob.
    BlobUpload,
    /// Put Message.
    Enqueue,
    /// A streaming ingestion request.
    Streaming,
    /// A query to the engine (whether a batch is already in the table).
    Query,
    /// Peek of the failed-ingestions queue.
    FailedIngestionsPoll,
    /// A read or write of an ingestion status row.
    StatusTable,
}

impl Operation {
    /// The metric label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Mgmt => "mgmt",
            Self::BlobUpload => "blob_upload",
            Self::Enqueue => "enqueue",
            Self::Streaming => "streaming",
            Self::Query => "query",
            Self::FailedIngestionsPoll => "failed_ingestions_poll",
            Self::StatusTable => "status_table",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Token => "token request",
            Self::Mgmt => "management command",
            Self::BlobUpload => "blob upload",
            Self::Enqueue => "queue message",
            Self::Streaming => "streaming ingestion",
            Self::Query => "query",
            Self::FailedIngestionsPoll => "failed-ingestions poll",
            Self::StatusTable => "status table request",
        })
    }
}

/// An ADX sink failure. Endpoints never include query strings (SAS); messages never include
/// tokens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request did not complete (connection, timeout, body).
    #[error("{operation} to {endpoint} failed")]
    Http {
        /// What was attempted.
        operation: Operation,
        /// Where (no query string).
        endpoint: String,
        /// The cause, stripped of its URL.
        #[source]
        source: reqwest::Error,
    },
    /// The service answered with an error status.
    #[error("{operation} to {endpoint} answered {status}{}: {message}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        /// What was attempted.
        operation: Operation,
        /// Where (no query string).
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The service's error code (`error.code`, or storage's `<Code>`).
        code: Option<String>,
        /// The service's message, shortened.
        message: String,
        /// The service says retrying cannot help (`@permanent`).
        permanent: bool,
        /// The service's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// A token could not be obtained.
    #[error("getting an AAD token from {endpoint} failed: {message}")]
    Auth {
        /// The token endpoint (no query string).
        endpoint: String,
        /// What went wrong (never the token).
        message: String,
    },
    /// The workload identity token file could not be read.
    #[error("reading the federated token file {path} failed")]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The data management service's answer was unusable.
    #[error("the ingestion resources from {endpoint} are unusable: {message}")]
    Resources {
        /// The DM endpoint.
        endpoint: String,
        /// What is wrong.
        message: String,
    },
    /// The engine's answer to a query was unusable.
    #[error("the answer of {endpoint} to a query is unusable: {message}")]
    Query {
        /// The engine endpoint.
        endpoint: String,
        /// What is wrong.
        message: String,
    },
    /// The queue message would exceed the 64 KiB limit.
    #[error("the queue message is {bytes} bytes encoded, above the 64 KiB limit")]
    MessageTooLarge {
        /// Its encoded size.
        bytes: usize,
    },
    /// One record is too large for a streaming request on its own. The records before it in the
    /// batch were delivered (requests go in order), it and the ones after it were not.
    #[error(
        "record {record} of the batch ({key}) is too large for streaming ingestion even alone \
         ({bytes} bytes gzip): the records before it were delivered, it and the rest were not"
    )]
    RecordTooLarge {
        /// Its position in the batch, from 1.
        record: usize,
        /// Its `Uid` and `ResourceVersion`.
        key: String,
        /// The gzip body ADX refused.
        bytes: usize,
        /// ADX's answer.
        #[source]
        source: Box<Error>,
    },
    /// ADX reported through the batch's status row that its queued ingestion failed for good
    /// (or ingested part of it, which a re-send would duplicate).
    #[error("ADX reported the queued ingestion {outcome}: {reason}")]
    IngestionFailed {
        /// `failed permanently` or `partially succeeded`.
        outcome: &'static str,
        /// The row's `ErrorCode` and `Details`.
        reason: String,
    },
    /// Compressing the batch failed.
    #[error("compressing the batch failed")]
    Compress(#[source] std::io::Error),
    /// The endpoint needed for this mode is not configured.
    #[error("no {0} endpoint is configured")]
    NoEndpoint(&'static str),
    /// Streaming mode, the table's (or the cluster's) streaming ingestion is off, and there is no
    /// data management endpoint to send the batch queued instead: retried until an operator
    /// enables it or changes the mode.
    #[error(
        "streaming ingestion is not enabled for table {table} in database {database}, and without sink.adx.ingest_endpoint the batch cannot go queued instead: run `.alter table {table} policy streamingingestion enable` (and enable streaming on the cluster), or set sink.adx.mode to queued with an ingest_endpoint"
    )]
    StreamingOff {
        /// The database.
        database: String,
        /// The table.
        table: String,
        /// ADX's refusal.
        #[source]
        source: Box<Error>,
    },
    /// Part of the batch was streamed before streaming was switched off for the table: sending
    /// the rest queued needs a batch of its own, so the batch waits for streaming to come back.
    #[error(
        "streaming ingestion was switched off for table {table} after part of this batch was streamed; the rest is sent once streaming is enabled again"
    )]
    StreamingOffMidBatch {
        /// The table.
        table: String,
    },
}

impl Error {
    fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The service says the entity (table, mapping) does not exist (`…EntityNotFound…`).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { code: Some(code), .. } if code.to_ascii_lowercase().contains("entitynotfound"))
    }

    /// ADX throttled the request (429).
    #[must_use]
    pub fn is_throttled(&self) -> bool {
        self.status() == Some(429)
    }

    /// Retrying the same batch cannot help.
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Status {
                permanent: true,
                ..
            } | Self::MessageTooLarge { .. }
                | Self::RecordTooLarge { .. }
                | Self::IngestionFailed { .. }
        )
    }

    /// Streaming ingestion is off for the table (its streaming ingestion policy) or the cluster:
    /// a permanent 400 that says nothing about the batch.
    #[must_use]
    pub fn is_streaming_off(&self) -> bool {
        match self {
            Self::Status {
                operation: Operation::Streaming,
                code: Some(code),
                ..
            } => {
                let code = code.to_ascii_lowercase();
                code.contains("streamingingestionpolicynotenabled")
                    || code.contains("streamingingestiondisabledforcluster")
            }
            _ => false,
        }
    }

    /// The request may have been carried out although no answer said so: the connection failed
    /// after it was made (a timeout, a reset), or a gateway gave up (500, 502, 504). A refusal
    /// (429, 503, 4xx) or a failed connect is not ambiguous.
    #[must_use]
    pub fn is_ambiguous(&self) -> bool {
        match self {
            Self::Http { source, .. } => !source.is_connect(),
            Self::Status { status, .. } => matches!(status, 500 | 502 | 504),
            _ => false,
        }
    }

    /// The request body was too large for streaming.
    #[must_use]
    pub fn is_too_large(&self) -> bool {
        match self {
            Self::Status { status: 413, .. } => true,
            Self::Status {
                code: Some(code), ..
            } => {
                let code = code.to_ascii_lowercase();
                code.contains("toolarge") || code.contains("sizelimit")
            }
            _ => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The shipper's view: permanent errors go to the dead tree, everything else is retried.
    #[must_use]
    pub fn into_sink_error(self) -> super::Error {
        let message = error_chain(&self);
        if self.is_permanent() {
            super::Error::Permanent {
                message,
                source: Some(Box::new(self)),
            }
        } else {
            super::Error::Retriable {
                message,
                retry_after: self.retry_after(),
                source: Some(Box::new(self)),
            }
        }
    }
}

/// `type Result<T> = Result<T, sink::adx::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The HTTP client with its metrics.
pub(crate) struct Http {
    client: reqwest::Client,
    /// A client that never goes through a proxy, for the instance metadata endpoint (link-local:
    /// a proxy cannot reach it, and AKS's HTTP-proxy feature sets `HTTPS_PROXY` in every pod).
    /// Built for managed identity only.
    direct: Option<reqwest::Client>,
    metrics: Metrics,
}

impl Http {
    /// Sends `request`; a status outside 2xx and `accept` becomes [`Error::Status`] (its body is
    /// read for the service's error code). Records the request metrics.
    async fn send(
        &self,
        operation: Operation,
        request: RequestBuilder,
        endpoint: &str,
        accept: &[StatusCode],
    ) -> Result<Response> {
        let started = Instant::now();
        let result = request.send().await;
        self.metrics
            .adx_request_duration
            .with_label_values(&[operation.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let outcome = |label: &str| {
            self.metrics
                .adx_requests
                .with_label_values(&[operation.as_str(), label])
                .inc();
        };
        let response = match result {
            Ok(response) => response,
            Err(source) => {
                outcome("retriable_error");
                return Err(Error::Http {
                    operation,
                    endpoint: endpoint.to_owned(),
                    source: source.without_url(),
                });
            }
        };
        let status = response.status();
        if status.is_success() || accept.contains(&status) {
            outcome("success");
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.unwrap_or_default();
        let (code, message, flag) = parse_error_body(&body);
        let permanent = operation == Operation::Streaming && streaming_is_permanent(status, flag);
        // A query refused for want of a role will not succeed by being retried either.
        let refused = operation == Operation::Query && status == StatusCode::FORBIDDEN;
        outcome(if status == StatusCode::TOO_MANY_REQUESTS {
            "throttled"
        } else if permanent || refused {
            "permanent_error"
        } else {
            "retriable_error"
        });
        Err(Error::Status {
            operation,
            endpoint: endpoint.to_owned(),
            status: status.as_u16(),
            code,
            message,
            permanent,
            retry_after,
        })
    }
}

/// Kusto's rule (`reference/adx-ingestion.md` §4): decide on `@permanent`; without the flag, a
/// client error other than auth, not-found, timeout and throttling is permanent.
fn streaming_is_permanent(status: StatusCode, flag: Option<bool>) -> bool {
    if status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 404 | 408 | 413 | 429) {
        return false;
    }
    flag.unwrap_or(status.is_client_error())
}

/// `(code, message, @permanent)` from a Kusto JSON error or a storage XML error body. Storage
/// messages are dropped (only the code is kept): they can echo request details.
fn parse_error_body(body: &[u8]) -> (Option<String>, String, Option<bool>) {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        // AAD: `{"error": "invalid_client", "error_description": "AADSTS…"}`.
        if let Some(code) = json.get("error").and_then(serde_json::Value::as_str) {
            let description = json
                .get("error_description")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            return (Some(code.to_owned()), shorten(description), None);
        }
        let error = json.get("error").unwrap_or(&json);
        let text = |key: &str| {
            error
                .get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let message = text("@message")
            .or_else(|| text("message"))
            .unwrap_or_default();
        return (
            text("code"),
            shorten(&message),
            error.get("@permanent").and_then(serde_json::Value::as_bool),
        );
    }
    let text = String::from_utf8_lossy(body);
    if let Some(code) = xml_text(&text, "Code") {
        return (Some(code.to_owned()), String::new(), None);
    }
    (None, shorten(&text), None)
}

fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The text of the first `<tag>…</tag>` in `xml`.
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(&xml[start..end])
}

/// Gzips `data`.
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 8 + 64), Compression::new(3));
    encoder.write_all(data)?;
    encoder.finish()
}

/// Delivers batches to Azure Data Explorer.
pub struct AdxSink {
    inner: Arc<Inner>,
    poller: Option<JoinHandle<()>>,
}

struct Inner {
    config: AdxConfig,
    http: Http,
    tokens: TokenProvider,
    resources: ResourceCache,
    engine: Option<Url>,
    queue_cursor: AtomicUsize,
    /// Until when streaming is paused (managed mode), and the fallback reason meanwhile.
    streaming_suspended_until: Mutex<Option<(Instant, &'static str)>>,
    recent: Arc<RecentIds>,
    uncertain: verify::Uncertain,
    /// Set by a 403 on the lookup query: lookups are skipped until then.
    query_forbidden: Mutex<Option<Instant>>,
    /// Batches whose `Pending` status row was written but whose queue message surely was not
    /// posted (the post failed before reaching the queue): the next attempt posts it.
    unposted: Mutex<HashSet<String>>,
    /// Causes already logged (configuration problems are logged once, not per batch).
    noted: Mutex<HashSet<&'static str>>,
    /// What `/status` shows of the health check and of sends.
    outcomes: Mutex<Outcomes>,
}

/// The latest health check and send results, for [`Sink::report`].
#[derive(Debug, Default)]
struct Outcomes {
    /// When the last check ran and what it found.
    check: Option<(
        jiff::Timestamp,
        std::result::Result<Vec<String>, HealthError>,
    )>,
    /// The last failed send: when, and the error.
    last_error: Option<(jiff::Timestamp, String)>,
    /// The last batch handed over.
    last_delivery: Option<jiff::Timestamp>,
    /// A configuration problem sends ran into that an operator must fix (streaming off without a
    /// data management endpoint), until a send shows it fixed.
    problem: Option<String>,
}

impl fmt::Debug for AdxSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdxSink")
            .field("mode", &self.inner.config.mode)
            .field("database", &self.inner.config.database)
            .field("table", &self.inner.config.table)
            .finish_non_exhaustive()
    }
}

impl AdxSink {
    /// Builds the sink; with `failed_ingestions.enabled` it also starts the poller (call from
    /// within a tokio runtime).
    ///
    /// # Errors
    /// Fails if the HTTP client cannot be built or the mode lacks its endpoint.
    pub fn new(config: &AdxConfig, metrics: Metrics) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .map_err(|source| Error::Http {
                operation: Operation::Mgmt,
                endpoint: String::new(),
                source: source.without_url(),
            })?;
        let direct = matches!(
            config.auth,
            crate::config::AdxAuthConfig::ManagedIdentity { .. }
        )
        .then(|| {
            reqwest::Client::builder()
                .no_proxy()
                .timeout(config.request_timeout)
                .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
                .build()
        })
        .transpose()
        .map_err(|source| Error::Http {
            operation: Operation::Token,
            endpoint: String::new(),
            source: source.without_url(),
        })?;
        let engine = config.engine();
        match config.mode {
            AdxMode::Queued | AdxMode::Managed if config.ingest_endpoint.is_none() => {
                return Err(Error::NoEndpoint("ingest (data management)"));
            }
            AdxMode::Streaming | AdxMode::Managed if engine.is_none() => {
                return Err(Error::NoEndpoint("engine"));
            }
            _ => {}
        }
        let inner = Arc::new(Inner {
            config: config.clone(),
            http: Http {
                client,
                direct,
                metrics,
            },
            tokens: TokenProvider::new(config),
            resources: ResourceCache::new(config.resources_refresh),
            engine,
            queue_cursor: AtomicUsize::new(0),
            streaming_suspended_until: Mutex::new(None),
            recent: Arc::new(RecentIds::default()),
            uncertain: verify::Uncertain::default(),
            query_forbidden: Mutex::new(None),
            unposted: Mutex::new(HashSet::new()),
            noted: Mutex::new(HashSet::new()),
            outcomes: Mutex::new(Outcomes::default()),
        });
        let poller = (config.failed_ingestions.enabled && config.mode != AdxMode::Streaming)
            .then(|| tokio::spawn(failures::poll(Arc::clone(&inner))));
        tracing::info!(
            mode = ?config.mode,
            database = %config.database,
            table = %config.table,
            mapping = %config.mapping,
            auth = config.auth.mode(),
            ingest_endpoint = config.ingest_endpoint.as_ref().map(endpoint_name).as_deref().unwrap_or(""),
            "ADX sink ready"
        );
        Ok(Self { inner, poller })
    }
}

impl Drop for AdxSink {
    fn drop(&mut self) {
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
    }
}

impl Sink for AdxSink {
    fn name(&self) -> &'static str {
        "adx"
    }

    fn send<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        Box::pin(async move {
            self.inner
                .send(batch, Attempt::First)
                .await
                .map_err(Error::into_sink_error)
        })
    }

    /// A batch an earlier term may have delivered: queued ingestion reads its status row first
    /// (or relies on `ingest-by` tags without status rows); streaming and managed mode also ask
    /// the engine whether the batch is already in the table.
    fn resend<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        Box::pin(async move {
            self.inner
                .send(batch, Attempt::Recovered)
                .await
                .map_err(Error::into_sink_error)
        })
    }

    fn confirm<'a>(&'a self, batch_id: &'a str) -> ConfirmFuture<'a> {
        Box::pin(async move {
            self.inner
                .confirm(batch_id)
                .await
                .map_err(Error::into_sink_error)
        })
    }

    fn resubmit<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        Box::pin(async move {
            self.inner
                .send(batch, Attempt::Resubmit)
                .await
                .map_err(Error::into_sink_error)
        })
    }

    /// See `health`: token, ingestion resources, identity token, table and mapping, engine.
    fn healthcheck(&self) -> HealthFuture<'_> {
        Box::pin(async move {
            let result = self.inner.healthcheck().await;
            self.inner.outcomes().check = Some((
                jiff::Timestamp::now(),
                result
                    .as_ref()
                    .map(|h| h.warnings.clone())
                    .map_err(Clone::clone),
            ));
            result
        })
    }

    /// The `adx` section: the configuration that decides where batches go (endpoints without
    /// query strings, never credentials), the last health check, the last send error and
    /// delivery, and streaming's state.
    fn report(&self) -> Option<SinkReport> {
        Some(self.inner.report())
    }
}

/// Which send of a batch this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Cut by this term (retries included).
    First,
    /// Recorded by an earlier term, which may have sent it.
    Recovered,
    /// Its status row said it will not land as submitted.
    Resubmit,
}

/// What a status row means for sending the batch.
enum Verdict {
    /// Nothing to send: delivered, or on its way.
    Done(Receipt),
    /// Submit it (again).
    Submit,
}

impl Inner {
    /// Sends `batch`.
    async fn send(&self, batch: &OutgoingBatch, attempt: Attempt) -> Result<Receipt> {
        let recovered = attempt == Attempt::Recovered;
        let payload = batch.payload.clone();
        let compressed = {
            let data = payload.clone();
            tokio::task::spawn_blocking(move || gzip(&data))
                .await
                .map_err(|e| Error::Compress(std::io::Error::other(e)))?
                .map_err(Error::Compress)?
        };
        let compressed = Bytes::from(compressed);
        let metrics = &self.http.metrics;
        let result = match self.config.mode {
            AdxMode::Queued => self
                .send_queued(
                    batch,
                    &compressed,
                    payload.len(),
                    attempt,
                    attempt == Attempt::Resubmit,
                )
                .await
                .map(|receipt| ("queued", receipt)),
            // Only a batch sent queued (the fallback while streaming is off) is resubmitted.
            AdxMode::Streaming
                if attempt == Attempt::Resubmit && self.config.ingest_endpoint.is_some() =>
            {
                self.send_queued(batch, &compressed, payload.len(), Attempt::Resubmit, true)
                    .await
                    .map(|receipt| ("queued", receipt))
            }
            AdxMode::Streaming => {
                self.send_streaming_all(batch, &payload, &compressed, recovered)
                    .await
            }
            AdxMode::Managed => {
                self.send_managed(batch, &payload, &compressed, attempt)
                    .await
            }
        };
        let (route, receipt) = match result {
            Ok(sent) => sent,
            Err(error) => {
                if error.is_permanent() {
                    // The batch goes to the dead tree: nothing more to settle about it.
                    self.uncertain.settle(&batch.id);
                }
                self.outcomes().last_error = Some((jiff::Timestamp::now(), error_chain(&error)));
                return Err(error);
            }
        };
        self.outcomes().last_delivery = Some(jiff::Timestamp::now());
        metrics.adx_batches.with_label_values(&[route]).inc();
        metrics.adx_raw_bytes.inc_by(payload.len() as u64);
        metrics.adx_compressed_bytes.inc_by(compressed.len() as u64);
        tracing::debug!(
            batch_id = %batch.id,
            batch_size = batch.events,
            route,
            raw_bytes = payload.len(),
            compressed_bytes = compressed.len(),
            submitted = matches!(receipt, Receipt::Submitted { .. }),
            "Batch handed to ADX"
        );
        Ok(receipt)
    }

    /// What became of a batch submitted queued: its status row says.
    async fn confirm(&self, batch_id: &str) -> Result<Confirmation> {
        let resources = self.resources().await?;
        let Some(table) = self.tracking_table(&resources, batch_id) else {
            // Status rows are off or unavailable: a posted message is all there is to know.
            return Ok(Confirmation::Delivered);
        };
        let id = source_id(batch_id);
        let status = self.read_status_row(table, &id).await?;
        let outcome = match &status {
            None => "row_missing",
            Some(RowStatus::Succeeded) => "succeeded",
            Some(RowStatus::Skipped) => "skipped",
            Some(RowStatus::Pending { age }) => {
                if age.is_some_and(|age| age >= self.config.status.pending_timeout) {
                    "pending_timeout"
                } else {
                    return Ok(Confirmation::Pending {
                        check_after: self.config.status.poll_interval,
                    });
                }
            }
            Some(RowStatus::Failed {
                permanent: false, ..
            }) => "failed_transient",
            Some(RowStatus::Failed {
                permanent: true, ..
            }) => "failed_permanent",
            Some(RowStatus::PartiallySucceeded { .. }) => "partially_succeeded",
        };
        self.http
            .metrics
            .adx_ingestion_status
            .with_label_values(&[outcome])
            .inc();
        match status {
            Some(RowStatus::Succeeded | RowStatus::Skipped) => Ok(Confirmation::Delivered),
            None => Ok(Confirmation::Resubmit {
                reason: "its ingestion status row is gone (the status table was cleaned up or recreated)".to_owned(),
            }),
            Some(RowStatus::Pending { age }) => Ok(Confirmation::Resubmit {
                reason: format!(
                    "its status row still says Pending {}s after it was written (sink.adx.status.pending_timeout): the queue message is taken as lost",
                    age.unwrap_or_default().as_secs()
                ),
            }),
            Some(RowStatus::Failed {
                permanent: false,
                reason,
            }) => Ok(Confirmation::Resubmit {
                reason: format!("ADX reported a transient ingestion failure: {reason}"),
            }),
            Some(RowStatus::Failed { reason, .. }) => Err(Error::IngestionFailed {
                outcome: "failed permanently",
                reason,
            }),
            Some(RowStatus::PartiallySucceeded { reason }) => Err(Error::IngestionFailed {
                outcome: "partially succeeded",
                reason,
            }),
        }
    }

    /// The status table a queued batch is tracked in, when status rows are on and the DM hands
    /// one out (a DM without one is logged once, and batches count as delivered when posted).
    fn tracking_table<'r>(&self, resources: &'r Resources, batch_id: &str) -> Option<&'r Url> {
        if !self.config.status.enabled {
            return None;
        }
        let table = Self::status_table(&resources.status_tables, batch_id);
        if table.is_none() && self.note_once("no_status_table") {
            tracing::warn!(
                "The data management service named no IngestionsStatusTable: queued batches count as delivered once their queue message is posted, and a batch re-sent after a failover may be ingested twice unless sink.adx.ingest_by_tags is on"
            );
        }
        table
    }

    /// What a batch's status row means for sending it.
    fn verdict(&self, batch: &OutgoingBatch, status: RowStatus) -> Result<Verdict> {
        let poll = self.config.status.poll_interval;
        match status {
            RowStatus::Succeeded | RowStatus::Skipped => {
                tracing::info!(
                    batch_id = %batch.id,
                    "ADX reports the batch ingested already; not sending it again"
                );
                Ok(Verdict::Done(Receipt::Delivered))
            }
            RowStatus::Pending { .. } => {
                Ok(Verdict::Done(Receipt::Submitted { check_after: poll }))
            }
            RowStatus::Failed {
                permanent: false, ..
            } => Ok(Verdict::Submit),
            RowStatus::Failed { reason, .. } => Err(Error::IngestionFailed {
                outcome: "failed permanently",
                reason,
            }),
            RowStatus::PartiallySucceeded { reason } => Err(Error::IngestionFailed {
                outcome: "partially succeeded",
                reason,
            }),
        }
    }

    /// Managed mode: streaming unless the body is too large or streaming is paused. Too large,
    /// a table whose streaming policy is off, throttling and transient errors fall back to
    /// queued; only a permanent error of the batch itself fails it. A batch that may be in ADX
    /// already (`recovered`, or an earlier attempt without a clear answer) is looked up first
    /// and, when absent, or when the identity may not look it up, sent queued with its `ingest-by`
    /// tag: an earlier queued attempt may still be on its way, and the tag drops the repeat. With
    /// status rows on, a recovered batch's row is read first: a batch an earlier term sent queued
    /// is followed through its row, not looked up.
    async fn send_managed(
        &self,
        batch: &OutgoingBatch,
        payload: &Bytes,
        compressed: &Bytes,
        attempt: Attempt,
    ) -> Result<(&'static str, Receipt)> {
        if attempt == Attempt::Resubmit {
            // Only a batch sent queued is ever resubmitted.
            let receipt = self
                .send_queued(batch, compressed, payload.len(), Attempt::Resubmit, true)
                .await?;
            return Ok(("queued", receipt));
        }
        let recovered = attempt == Attempt::Recovered;
        if recovered {
            let resources = self.resources().await?;
            if let Some(table) = self.tracking_table(&resources, &batch.id)
                && let Some(status) = self.read_status_row(table, &source_id(&batch.id)).await?
            {
                let receipt = match self.verdict(batch, status)? {
                    Verdict::Done(receipt) => receipt,
                    Verdict::Submit => {
                        self.send_queued(batch, compressed, payload.len(), Attempt::Resubmit, true)
                            .await?
                    }
                };
                self.uncertain.settle(&batch.id);
                return Ok(("queued", receipt));
            }
        }
        let metrics = &self.http.metrics.adx_managed_fallbacks;
        let fallback_reason = if recovered || self.uncertain.contains(&batch.id) {
            match self.lookup_first(batch, payload).await? {
                verify::Lookup::Present => {
                    tracing::info!(
                        batch_id = %batch.id,
                        "The batch is in ADX already; not sending it again"
                    );
                    self.uncertain.settle(&batch.id);
                    return Ok(("already_ingested", Receipt::Delivered));
                }
                verify::Lookup::Forbidden => "query_forbidden",
                verify::Lookup::Absent | verify::Lookup::Unknown => "resend",
            }
        } else if compressed.len() as u64 > self.config.streaming_max_bytes {
            "too_large"
        } else if let Some(reason) = self.streaming_suspension() {
            reason
        } else {
            match self.send_streaming(batch, compressed, "1").await {
                Ok(()) => {
                    if self.forget("policy_off") {
                        tracing::info!(
                            table = %self.config.table,
                            "ADX accepts streaming ingestion into this table again"
                        );
                    }
                    return Ok(("streaming", Receipt::Delivered));
                }
                // Refusals of the request, not of the batch: checked before `is_permanent`, as
                // ADX marks them permanent.
                Err(error) if error.is_too_large() => {
                    if self.note_once("too_large") {
                        tracing::warn!(
                            batch_id = %batch.id,
                            error = %error_chain(&error),
                            "ADX refused a streaming request as too large; sending such batches queued (a lower sink.adx.streaming_max_bytes sends them queued without trying)"
                        );
                    }
                    "too_large"
                }
                Err(error) if error.is_streaming_off() => {
                    self.suspend_streaming(UNAVAILABLE_SUSPENSION, "policy_off");
                    if self.note_once("policy_off") {
                        tracing::warn!(
                            batch_id = %batch.id,
                            table = %self.config.table,
                            error = %error_chain(&error),
                            "Streaming ingestion is not enabled for this table (its streaming ingestion policy, or the cluster's): sending batches queued and trying streaming again every 15 minutes. Enable it (`.alter table … policy streamingingestion enable`) or use mode queued"
                        );
                    }
                    "policy_off"
                }
                Err(error) if error.is_permanent() => return Err(error),
                Err(error) if error.is_ambiguous() => {
                    // It may have landed: look before sending it another way.
                    self.uncertain.mark(&batch.id);
                    match self.lookup_first(batch, payload).await? {
                        verify::Lookup::Present => {
                            tracing::info!(
                                batch_id = %batch.id,
                                error = %error_chain(&error),
                                "Streaming ingestion answered with an error but stored the batch"
                            );
                            self.uncertain.settle(&batch.id);
                            return Ok(("streaming", Receipt::Delivered));
                        }
                        verify::Lookup::Forbidden => "query_forbidden",
                        verify::Lookup::Absent | verify::Lookup::Unknown => {
                            tracing::info!(
                                batch_id = %batch.id,
                                error = %error_chain(&error),
                                "Streaming ingestion failed and the batch is not in ADX; sending it queued"
                            );
                            "transient"
                        }
                    }
                }
                Err(error) => {
                    let reason = if error.is_throttled() {
                        self.suspend_streaming(THROTTLE_SUSPENSION, "suspended");
                        "throttled"
                    } else {
                        if error.status() == Some(404) {
                            self.suspend_streaming(UNAVAILABLE_SUSPENSION, "suspended");
                        }
                        "transient"
                    };
                    tracing::info!(
                        batch_id = %batch.id,
                        reason,
                        error = %error_chain(&error),
                        "Streaming ingestion failed; sending the batch queued"
                    );
                    reason
                }
            }
        };
        metrics.with_label_values(&[fallback_reason]).inc();
        // A batch that may be in ADX goes with its tag, whatever `ingest_by_tags` says.
        let dedup = matches!(fallback_reason, "resend" | "query_forbidden");
        let receipt = self
            .send_queued(batch, compressed, payload.len(), Attempt::First, dedup)
            .await?;
        self.uncertain.settle(&batch.id);
        Ok(("queued", receipt))
    }

    /// The fallback reason while streaming is paused (`suspended`, or `policy_off`).
    fn streaming_suspension(&self) -> Option<&'static str> {
        let until = self
            .streaming_suspended_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        until
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, reason)| reason)
    }

    fn suspend_streaming(&self, period: Duration, reason: &'static str) {
        *self
            .streaming_suspended_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((Instant::now() + period, reason));
    }

    /// True the first time `cause` is noted (until it is forgotten).
    fn note_once(&self, cause: &'static str) -> bool {
        self.noted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cause)
    }

    /// Forgets `cause`; true if it had been noted.
    fn forget(&self, cause: &'static str) -> bool {
        self.noted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(cause)
    }

    /// Queued ingestion: upload the blob, write the batch's `Pending` status row (when status rows
    /// are on), then post its message, tagged `ingest-by` when configured or when `dedup` asks
    /// for it. With a status row the batch is [`Receipt::Submitted`]: its row tells later whether
    /// it landed. A recovered batch whose row exists is not sent again but followed through the
    /// row; a row found on a first attempt is an earlier attempt's. A 403 from storage (an expired
    /// SAS) refreshes the resources and tries once more.
    async fn send_queued(
        &self,
        batch: &OutgoingBatch,
        compressed: &Bytes,
        raw_size: usize,
        attempt: Attempt,
        dedup: bool,
    ) -> Result<Receipt> {
        let mut refreshed = false;
        loop {
            let resources = self.resources().await?;
            let result = self
                .submit(&resources, batch, compressed, raw_size, attempt, dedup)
                .await;
            match result {
                Err(error) if error.status() == Some(403) && !refreshed => {
                    tracing::info!(
                        batch_id = %batch.id,
                        error = %error_chain(&error),
                        "Storage refused the SAS; refreshing the ingestion resources"
                    );
                    self.resources.invalidate(resources.generation).await;
                    refreshed = true;
                }
                Err(error) => {
                    if error.status() == Some(403) {
                        self.resources.invalidate(resources.generation).await;
                    }
                    return Err(error);
                }
                Ok(receipt) => return Ok(receipt),
            }
        }
    }

    async fn submit(
        &self,
        resources: &Resources,
        batch: &OutgoingBatch,
        compressed: &Bytes,
        raw_size: usize,
        attempt: Attempt,
        dedup: bool,
    ) -> Result<Receipt> {
        let Some(table) = self.tracking_table(resources, &batch.id) else {
            let blob = self.upload(resources, batch, compressed).await?;
            self.enqueue(resources, batch, &blob, raw_size, dedup, None)
                .await?;
            return Ok(Receipt::Delivered);
        };
        let id = source_id(&batch.id);
        let mut attempt = attempt;
        if attempt == Attempt::Recovered {
            match self.read_status_row(table, &id).await? {
                None => attempt = Attempt::First,
                Some(status) => match self.verdict(batch, status)? {
                    Verdict::Done(receipt) => return Ok(receipt),
                    Verdict::Submit => attempt = Attempt::Resubmit,
                },
            }
        }
        let blob = self.upload(resources, batch, compressed).await?;
        let unposted = self
            .unposted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&batch.id);
        if attempt == Attempt::Resubmit || unposted {
            self.replace_pending_row(table, &id, &blob).await?;
        } else if !self.insert_pending_row(table, &id, &blob).await? {
            // An earlier attempt wrote the row: it may have posted the message too.
            match self.read_status_row(table, &id).await? {
                Some(status) => match self.verdict(batch, status)? {
                    Verdict::Done(receipt) => return Ok(receipt),
                    Verdict::Submit => self.replace_pending_row(table, &id, &blob).await?,
                },
                None => self.replace_pending_row(table, &id, &blob).await?,
            }
        }
        let dedup = dedup || attempt == Attempt::Resubmit;
        match self
            .enqueue(resources, batch, &blob, raw_size, dedup, Some(table))
            .await
        {
            Ok(()) => {
                self.unposted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&batch.id);
                if attempt == Attempt::Resubmit {
                    tracing::info!(batch_id = %batch.id, "Batch submitted to ADX again");
                }
                Ok(Receipt::Submitted {
                    check_after: self.config.status.poll_interval,
                })
            }
            Err(error) if error.is_ambiguous() => {
                // It may be in the queue: posting it again could ingest it twice. Its status row
                // will say; a row still Pending after `pending_timeout` is submitted again.
                tracing::info!(
                    batch_id = %batch.id,
                    error = %error_chain(&error),
                    "Posting the queue message had no clear answer; following the batch through its status row"
                );
                Ok(Receipt::Submitted {
                    check_after: self.config.status.poll_interval,
                })
            }
            Err(error) => {
                self.unposted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(batch.id.clone());
                Err(error)
            }
        }
    }

    /// Uploads the gzip blob; returns its URL with the SAS. The first container is chosen from
    /// the batch id so that a re-sent batch meets its earlier upload (409) instead of creating a
    /// second blob.
    async fn upload(
        &self,
        resources: &Resources,
        batch: &OutgoingBatch,
        compressed: &Bytes,
    ) -> Result<Url> {
        let name = blob_name(
            &self.config.database,
            &self.config.table,
            &batch.id,
            self.config.format,
        );
        let containers = &resources.containers;
        let first = stable_index(&batch.id, containers.len());
        let mut last_error = None;
        for offset in 0..containers.len().min(MAX_STORAGE_TRIES) {
            let container = &containers[(first + offset) % containers.len()];
            let mut url = container.clone();
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.pop_if_empty().push(&name);
            }
            let endpoint = endpoint_name(&url);
            let request = self
                .http
                .client
                .put(url.clone())
                .header("x-ms-blob-type", "BlockBlob")
                .header("x-ms-version", STORAGE_VERSION)
                .header("Content-Type", "application/octet-stream")
                .header("If-None-Match", "*")
                .body(compressed.clone());
            match self
                .http
                .send(
                    Operation::BlobUpload,
                    request,
                    &endpoint,
                    &[StatusCode::CONFLICT, StatusCode::PRECONDITION_FAILED],
                )
                .await
            {
                Ok(response) => {
                    if matches!(
                        response.status(),
                        StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED
                    ) {
                        self.http.metrics.adx_blob_already_uploaded.inc();
                        tracing::info!(
                            batch_id = %batch.id,
                            blob = %endpoint,
                            "The blob exists from an earlier attempt; enqueueing it"
                        );
                    }
                    return Ok(url);
                }
                Err(error) if error.status() == Some(403) => return Err(error),
                Err(error) => {
                    tracing::debug!(batch_id = %batch.id, error = %error_chain(&error), "Blob upload failed; trying another container");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Resources {
            endpoint: String::new(),
            message: "no TempStorage container".to_owned(),
        }))
    }

    async fn enqueue(
        &self,
        resources: &Resources,
        batch: &OutgoingBatch,
        blob: &Url,
        raw_size: usize,
        dedup: bool,
        status_table: Option<&Url>,
    ) -> Result<()> {
        let id = source_id(&batch.id);
        let message = IngestionMessage {
            id: &id,
            blob_path: blob.as_str(),
            raw_data_size: raw_size as u64,
            database: &self.config.database,
            table: &self.config.table,
            mapping: &self.config.mapping,
            format: self.config.format,
            authorization_context: &resources.authorization_context,
            ingest_by: (self.config.ingest_by_tags || dedup).then_some(batch.id.as_str()),
            created: jiff::Timestamp::now(),
            status_table: status_table.map(Url::as_str),
        };
        let body = envelope(&message.to_json())?;
        self.recent.remember(&id, &batch.id);
        let queues = &resources.queues;
        let first = self.queue_cursor.fetch_add(1, Ordering::Relaxed);
        let mut last_error = None;
        for offset in 0..queues.len().min(MAX_STORAGE_TRIES) {
            let queue = &queues[(first + offset) % queues.len()];
            let mut url = queue.clone();
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.pop_if_empty().push("messages");
            }
            let endpoint = endpoint_name(&url);
            let request = self
                .http
                .client
                .post(url)
                .header("x-ms-version", STORAGE_VERSION)
                .header("Content-Type", "application/xml")
                .body(body.clone());
            match self
                .http
                .send(Operation::Enqueue, request, &endpoint, &[])
                .await
            {
                Ok(_) => return Ok(()),
                Err(error) if error.status() == Some(403) => return Err(error),
                Err(error) => {
                    tracing::debug!(batch_id = %batch.id, error = %error_chain(&error), "Enqueue failed; trying another queue");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Resources {
            endpoint: String::new(),
            message: "no SecuredReadyForAggregationQueue".to_owned(),
        }))
    }

    /// The headers every Kusto request carries.
    fn kusto_request(request: RequestBuilder, request_id: &str) -> RequestBuilder {
        request
            .header("Accept", "application/json")
            .header("x-ms-version", KUSTO_VERSION)
            .header("x-ms-client-request-id", request_id)
            .header("x-ms-app", "kevents")
            .header(
                "x-ms-client-version",
                concat!("kevents:", env!("CARGO_PKG_VERSION")),
            )
    }

    /// Adds the bearer token, if any.
    async fn authorize(&self, request: RequestBuilder) -> Result<RequestBuilder> {
        use secrecy::ExposeSecret as _;
        Ok(match self.tokens.token(&self.http).await? {
            Some(token) => request.bearer_auth(token.expose_secret()),
            None => request,
        })
    }

    /// A 401 means the token is no good any more: fetch a new one next time.
    async fn on_error(&self, error: &Error) {
        if error.status() == Some(401) {
            self.tokens.invalidate().await;
        }
    }
}

impl Inner {
    fn outcomes(&self) -> std::sync::MutexGuard<'_, Outcomes> {
        self.outcomes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records (or, with `None`, clears) a configuration problem sends ran into.
    fn set_problem(&self, problem: Option<String>) {
        self.outcomes().problem = problem;
    }

    fn report(&self) -> SinkReport {
        use serde_json::{Value, json};
        let config = &self.config;
        let time = |t: &jiff::Timestamp| Value::String(t.to_string());
        let outcomes = self.outcomes();
        let check = match &outcomes.check {
            None => Value::Null,
            Some((at, Ok(warnings))) => {
                json!({"at": time(at), "passed": true, "warnings": warnings})
            }
            Some((at, Err(error))) => json!({
                "at": time(at),
                "passed": false,
                "check": error.check,
                "error": error.message,
            }),
        };
        let check_failed = matches!(outcomes.check, Some((_, Err(_))));
        // Sends decide once they ran: an error after the last delivery means unhealthy.
        let send_failing = match (&outcomes.last_error, &outcomes.last_delivery) {
            (Some((failed, _)), Some(delivered)) => failed > delivered,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let healthy = !check_failed && !send_failing && outcomes.problem.is_none();
        let streaming = {
            let until = self
                .streaming_suspended_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match *until {
                Some((until, reason)) if Instant::now() < until => {
                    let left = until.saturating_duration_since(Instant::now());
                    let at = jiff::Timestamp::now()
                        .checked_add(jiff::SignedDuration::try_from(left).unwrap_or_default())
                        .ok();
                    json!({"suspended": true, "reason": reason, "until": at.as_ref().map(time)})
                }
                _ => json!({"suspended": false}),
            }
        };
        let section = json!({
            "healthy": healthy,
            "mode": match config.mode {
                AdxMode::Queued => "queued",
                AdxMode::Streaming => "streaming",
                AdxMode::Managed => "managed",
            },
            "ingest_endpoint": config.ingest_endpoint.as_ref().map(endpoint_name),
            "engine_endpoint": self.engine.as_ref().map(endpoint_name),
            "database": config.database,
            "table": config.table,
            "mapping": config.mapping,
            "format": config.format.as_str(),
            "auth": config.auth.mode(),
            "status_rows": config.status.enabled,
            "healthcheck": check,
            "last_error": outcomes.last_error.as_ref().map(|(at, error)| json!({"at": time(at), "error": error})),
            "last_delivery_at": outcomes.last_delivery.as_ref().map(time),
            "problem": outcomes.problem,
            "streaming": if config.mode == AdxMode::Queued { Value::Null } else { streaming },
        });
        SinkReport {
            section,
            problem: outcomes.problem.clone(),
        }
    }
}

/// `hash(key) % len`, stable across processes (FNV-1a).
fn stable_index(key: &str, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(hash % len as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests;
