//! Queued ingestion (`reference/adx-ingestion.md` §3): the gzip blob upload, the batch's
//! ingestion status row, the queue message to the data management service, and what a status row
//! says about a submitted batch ([`Sink::confirm`](crate::sink::Sink::confirm)).
//!
//! Owns the order blob → `Pending` row → message that lets a re-sent batch be followed through
//! its row instead of being ingested twice, and the choice of container and queue. It must never
//! post a message for a blob that was not uploaded, never post a batch again while its row says
//! it is on its way, and never log a SAS: blob and queue URLs are logged without their query
//! string.

use std::sync::{PoisonError, atomic::Ordering};

use bytes::Bytes;
use reqwest::{StatusCode, Url};

use super::{
    Attempt, Error, IngestionMessage, Inner, Operation, Result, auth::endpoint_name, blob_name,
    envelope, http::STORAGE_VERSION, resources::Resources, source_id, status::RowStatus,
};
use crate::{
    sink::{Confirmation, OutgoingBatch, Receipt},
    telemetry::error_chain,
};

/// Blob and queue attempts per batch at most, each on another resource (as the SDKs do).
const MAX_STORAGE_TRIES: usize = 3;

/// What a status row means for sending the batch.
pub(super) enum Verdict {
    /// Nothing to send: delivered, or on its way.
    Done(Receipt),
    /// Submit it (again).
    Submit,
}

impl Inner {
    /// What became of a batch submitted queued: its status row says.
    pub(super) async fn confirm(&self, batch_id: &str) -> Result<Confirmation> {
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
    pub(super) fn tracking_table<'r>(
        &self,
        resources: &'r Resources,
        batch_id: &str,
    ) -> Option<&'r Url> {
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
    pub(super) fn verdict(&self, batch: &OutgoingBatch, status: RowStatus) -> Result<Verdict> {
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

    /// Queued ingestion: upload the blob, write the batch's `Pending` status row (when status rows
    /// are on), then post its message, tagged `ingest-by` when configured or when `dedup` asks
    /// for it. With a status row the batch is [`Receipt::Submitted`]: its row tells later whether
    /// it landed. A recovered batch whose row exists is not sent again but followed through the
    /// row; a row found on a first attempt is an earlier attempt's. A 403 from storage (an expired
    /// SAS) refreshes the resources and tries once more.
    pub(super) async fn send_queued(
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
}

/// `hash(key) % len`, stable across processes (FNV-1a).
pub(super) fn stable_index(key: &str, len: usize) -> usize {
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
