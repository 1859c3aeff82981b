//! The Azure Data Explorer sink: queued ingestion (gzip blob + queue message through the data
//! management service), streaming ingestion to the engine, and managed mode (streaming, falling
//! back to queued). Wire formats: `reference/adx-ingestion.md`.
//!
//! Owns the HTTP conversation with ADX and its storage: request plumbing and error bodies
//! (`http`), the classification of every failure as retriable or permanent (`error`), AAD tokens
//! (`auth`), ingestion resources and the identity token (`resources`), blob names and queue
//! messages (`message`), queued ingestion and status rows (`queued`, `status`), streaming
//! (`streaming`), the lookup of a streamed batch that may already be in the table before it is
//! sent again (`verify`), what managed mode does with each failure (`managed`), the optional
//! failed-ingestions poller (`failures`), the health check of the setup (`health`), and, here,
//! the sink itself: building it, dispatching each batch to its mode, and what `/status` shows of
//! it (`Sink::report`: configuration without secrets, the last check, send errors, streaming's
//! state). A refusal that is a configuration problem is logged once per cause, not per batch. It
//! must never log a token, a secret, an authorization context or a SAS signature: URLs are logged
//! and put in errors without their query string, and reqwest errors are stripped of their URL.

mod auth;
mod error;
mod failures;
mod health;
mod http;
mod managed;
mod message;
mod queued;
mod resources;
mod status;
mod streaming;
mod verify;

use std::{
    collections::HashSet,
    fmt,
    io::Write as _,
    sync::{Arc, Mutex, PoisonError, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use bytes::Bytes;
use flate2::{Compression, write::GzEncoder};
use reqwest::Url;
use tokio::task::JoinHandle;

pub use error::{Error, Operation, Result};
pub use message::{IngestionMessage, blob_name, envelope, source_id};

use self::{
    auth::{TokenProvider, endpoint_name},
    failures::RecentIds,
    http::Http,
    resources::ResourceCache,
};
use super::{
    ConfirmFuture, HealthError, HealthFuture, OutgoingBatch, Receipt, SendFuture, Sink, SinkReport,
};
use crate::{
    config::{AdxConfig, AdxMode},
    telemetry::{Metrics, error_chain},
};

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

#[cfg(test)]
mod tests;
