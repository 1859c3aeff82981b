//! Managed mode: streaming ingestion, falling back to queued for a batch too large to stream, a
//! table whose streaming policy is off, throttling and transient errors, and for a re-send the
//! identity may not look up; the batch fails only for a permanent error of the batch itself.
//!
//! Owns the choice between streaming and queued for each batch, and the pause of streaming after
//! throttling or while it is off. It must never send a batch that may already be in ADX a second
//! way without looking it up first or tagging it `ingest-by`, and never fail a batch for a
//! refusal of streaming itself.

use std::{
    sync::PoisonError,
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{Attempt, Inner, Result, queued::Verdict, source_id, verify};
use crate::{
    sink::{OutgoingBatch, Receipt},
    telemetry::error_chain,
};

/// A 429 pauses streaming (managed mode) for this long.
const THROTTLE_SUSPENSION: Duration = Duration::from_secs(10);
/// Streaming switched off on the cluster (404) or the table (its policy) pauses it for this long.
pub(super) const UNAVAILABLE_SUSPENSION: Duration = Duration::from_secs(15 * 60);

impl Inner {
    /// Managed mode: streaming unless the body is too large or streaming is paused. Too large,
    /// a table whose streaming policy is off, throttling and transient errors fall back to
    /// queued; only a permanent error of the batch itself fails it. A batch that may be in ADX
    /// already (`recovered`, or an earlier attempt without a clear answer) is looked up first
    /// and, when absent, or when the identity may not look it up, sent queued with its `ingest-by`
    /// tag: an earlier queued attempt may still be on its way, and the tag drops the repeat. With
    /// status rows on, a recovered batch's row is read first: a batch an earlier term sent queued
    /// is followed through its row, not looked up.
    pub(super) async fn send_managed(
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
    pub(super) fn streaming_suspension(&self) -> Option<&'static str> {
        let until = self
            .streaming_suspended_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        until
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, reason)| reason)
    }

    pub(super) fn suspend_streaming(&self, period: Duration, reason: &'static str) {
        *self
            .streaming_suspended_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((Instant::now() + period, reason));
    }
}
