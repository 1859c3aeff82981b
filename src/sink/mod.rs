//! Where batches go: one trait for every destination (file, stdout, and Azure Data Explorer).
//!
//! Owns the sink contract: `send` delivers a whole batch or fails; a failure says whether a retry
//! can help (`is_retriable`). A destination that processes batches later (ADX queued ingestion)
//! answers [`Receipt::Submitted`] instead, and [`Sink::confirm`] later says whether the batch
//! landed, is still pending, must be submitted again, or failed for good. [`Sink::healthcheck`]
//! checks the destination's setup without sending anything. A sink must accept the
//! same batch id twice and deliver it once where its destination allows (the file sink does;
//! stdout cannot). Sinks never touch the store: the shipper acknowledges a batch once the sink
//! says it was delivered. [`build`] turns the `sink` configuration into the sink it describes, so
//! the pipeline only wires it in.

pub mod adx;
mod file;

use std::{pin::Pin, sync::Arc, time::Duration};

pub use adx::AdxSink;
pub use file::{FileSink, FileSinkOptions};

use crate::{
    blocking::IoPool,
    config::{Config, SinkConfig},
    telemetry::Metrics,
};

/// A batch handed to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingBatch {
    /// Deterministic id; the same on every re-send.
    pub id: String,
    /// Newline-delimited JSON records, each line ending in `\n` (cheap to clone).
    pub payload: bytes::Bytes,
    /// Number of records.
    pub events: u64,
}

/// A failed send.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Transient: retry the same batch later.
    #[error("{message}")]
    Retriable {
        /// What failed.
        message: String,
        /// When the destination asked to be retried, if it did.
        retry_after: Option<Duration>,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Permanent: retrying cannot help; the batch goes to the dead tree.
    #[error("{message}")]
    Permanent {
        /// What failed.
        message: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// True when retrying the same batch can succeed.
    #[must_use]
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Retriable { .. })
    }

    /// The delay the destination asked for, if any.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retriable { retry_after, .. } => *retry_after,
            Self::Permanent { .. } => None,
        }
    }

    /// A transient failure caused by an I/O error.
    #[must_use]
    pub fn io(message: impl Into<String>, source: std::io::Error) -> Self {
        Self::Retriable {
            message: message.into(),
            retry_after: None,
            source: Some(Box::new(source)),
        }
    }
}

/// `type Result<T> = Result<T, sink::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A sink its configuration describes could not be set up. Shows the cause itself: the caller
/// names the sink ([`BuildError::sink`]).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The file sink's file could not be opened.
    #[error(transparent)]
    File(std::io::Error),
    /// The ADX sink could not be built (its HTTP client, or an endpoint its mode needs).
    #[error(transparent)]
    Adx(adx::Error),
}

impl BuildError {
    /// Which sink failed (`file`, `adx`).
    #[must_use]
    pub fn sink(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Adx(_) => "adx",
        }
    }
}

/// The sink `config.sink` describes. Call from within a tokio runtime (the ADX sink may start its
/// failed-ingestions poller).
///
/// # Errors
/// Fails if the sink cannot be opened or built.
pub fn build(
    config: &Config,
    metrics: &Metrics,
    io: &IoPool,
) -> std::result::Result<Arc<dyn Sink>, BuildError> {
    Ok(match &config.sink {
        SinkConfig::Stdout => Arc::new(StdoutSink),
        SinkConfig::File {
            path,
            max_bytes,
            max_files,
        } => Arc::new(
            FileSink::open(FileSinkOptions {
                path: path.clone(),
                max_bytes: *max_bytes,
                max_files: *max_files,
            })
            .map_err(BuildError::File)?
            .with_write_stall(config.diagnostics.stall_sink_write)
            .with_io(io.clone()),
        ),
        SinkConfig::Adx(adx) => {
            Arc::new(AdxSink::new(adx, metrics.clone()).map_err(BuildError::Adx)?)
        }
    })
}

/// What a sink did with a batch it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// The destination holds the batch: the shipper may delete it.
    Delivered,
    /// The destination accepted the batch for processing later: the shipper keeps it and asks
    /// [`Sink::confirm`] after `check_after`.
    Submitted {
        /// When to ask first.
        check_after: Duration,
    },
}

/// What became of a submitted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// It landed: the shipper may delete it.
    Delivered,
    /// Not final yet: ask again after `check_after`.
    Pending {
        /// When to ask again.
        check_after: Duration,
    },
    /// It will not land as submitted (it failed in a way that may pass, or its submission was
    /// lost): hand it to [`Sink::resubmit`].
    Resubmit {
        /// Why, for the log.
        reason: String,
    },
}

/// A boxed future returned by [`Sink::send`].
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Receipt>> + Send + 'a>>;

/// A boxed future returned by [`Sink::confirm`]; a permanent error means the batch failed for
/// good (it goes to the dead tree), a retriable one that the answer could not be read.
pub type ConfirmFuture<'a> = Pin<Box<dyn Future<Output = Result<Confirmation>> + Send + 'a>>;

/// What a passed health check noticed without failing: something it could not verify, or
/// something that works in a degraded way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// One sentence each, naming what to do about it.
    pub warnings: Vec<String>,
}

/// A failed health check: the sink cannot deliver as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{check} check failed: {message}")]
pub struct HealthError {
    /// Which check failed (`token`, `ingestion_resources`, `identity_token`, `table`,
    /// `engine`…), for `/status`.
    pub check: &'static str,
    /// What is missing or wrong, naming it (never a secret or a SAS).
    pub message: String,
}

/// A boxed future returned by [`Sink::healthcheck`].
pub type HealthFuture<'a> = Pin<Box<dyn Future<Output = Result<Health, HealthError>> + Send + 'a>>;

/// What a sink shows in `/status` beyond send results.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkReport {
    /// The sink's own section (configuration without secrets, recent errors, degraded modes).
    pub section: serde_json::Value,
    /// A configuration problem found while sending that only an operator can fix, for the
    /// readiness reasons; `None` when there is none.
    pub problem: Option<String>,
}

/// A destination for batches.
pub trait Sink: Send + Sync {
    /// A short name for logs and metrics (`file`, `stdout`, `adx`).
    fn name(&self) -> &'static str;
    /// Delivers the whole batch, or fails.
    fn send<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a>;
    /// Delivers a batch that a previous term recorded and may already have delivered (it died
    /// or stopped before the answer was recorded). A sink whose destination cannot drop a repeat
    /// by the batch id checks the destination first; by default this is [`Sink::send`].
    fn resend<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        self.send(batch)
    }
    /// What became of a batch this sink answered [`Receipt::Submitted`] for (in this term or an
    /// earlier one). Sinks that never submit need not implement it.
    fn confirm<'a>(&'a self, batch_id: &'a str) -> ConfirmFuture<'a> {
        let _ = batch_id;
        Box::pin(async { Ok(Confirmation::Delivered) })
    }
    /// Submits a batch again after [`Confirmation::Resubmit`]; by default [`Sink::send`].
    fn resubmit<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        self.send(batch)
    }
    /// Checks, without sending a batch, that the destination is reachable and set up as
    /// configured (credentials, endpoints, the target's schema). The pipeline runs it when a term
    /// starts and again after a failure until it passes; it only reports, it never holds batches
    /// back. By default every sink is healthy.
    fn healthcheck(&self) -> HealthFuture<'_> {
        Box::pin(async { Ok(Health::default()) })
    }
    /// The sink's own `/status` section, if it has one (published under [`Sink::name`]).
    fn report(&self) -> Option<SinkReport> {
        None
    }
}

/// Writes batches to standard output. It cannot recognise a re-sent batch, so a batch re-sent
/// after a failover may appear twice; use it for debugging, not delivery.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn send<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut out = tokio::io::stdout();
            out.write_all(&batch.payload)
                .await
                .map_err(|e| Error::io("writing to stdout", e))?;
            out.flush()
                .await
                .map_err(|e| Error::io("flushing stdout", e))?;
            Ok(Receipt::Delivered)
        })
    }
}
