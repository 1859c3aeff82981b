//! The ADX sink's errors: which operation failed against which endpoint, and how each failure is
//! classified (permanent, throttled, ambiguous, streaming off, too large) for the shipper and for
//! managed mode.
//!
//! Owns [`Error`], [`Operation`] (also the `operation` metric label) and the mapping to the
//! shipper's sink errors. It never does I/O, and an error must never hold a token, a secret or a
//! URL's query string (a SAS): endpoints are stored without it.

use std::{fmt, time::Duration};

use crate::telemetry::error_chain;

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
    pub(super) fn status(&self) -> Option<u16> {
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

    pub(super) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The shipper's view: permanent errors go to the dead tree, everything else is retried.
    #[must_use]
    pub fn into_sink_error(self) -> crate::sink::Error {
        let message = error_chain(&self);
        if self.is_permanent() {
            crate::sink::Error::Permanent {
                message,
                source: Some(Box::new(self)),
            }
        } else {
            crate::sink::Error::Retriable {
                message,
                retry_after: self.retry_after(),
                source: Some(Box::new(self)),
            }
        }
    }
}

/// `type Result<T> = Result<T, sink::adx::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
