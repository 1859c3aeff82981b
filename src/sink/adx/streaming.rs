//! Streaming ingestion (`reference/adx-ingestion.md` §4): gzip POSTs of a batch to the engine's
//! `/v1/rest/ingest/{db}/{table}`. A batch above `streaming_max_bytes` is split by lines first
//! (streaming mode only; managed mode sends it queued instead), and a request ADX still refuses as
//! too large (413, or `Stream_InputStreamTooLarge`) is sent again as two halves by records, down
//! to a single record, which is a permanent error naming it: no body is retried as it was.
//!
//! Owns the requests, their order and their request ids (`kevents.stream;<batch id>;<part>`,
//! where a part is `3` or, halved, `3.1`, `3.2.1`: the same batch is split the same way on every
//! attempt). Errors are classified in `Http::send` by Kusto's rule (`@permanent`, 429
//! throttling, 5xx transient). Streaming cannot carry `ingest-by` tags, so a batch whose earlier
//! attempt may have landed (a lost answer, a re-send after a failover) is looked up first
//! (`verify`) and only its missing records are sent; when the identity may not query, it goes
//! queued with an `ingest-by` tag if a data management endpoint is configured. Requests go out
//! in record order and stop at the first failure, which is what lets `verify` find what landed.
//! When the table's streaming is off (a permanent 400 that says nothing about the batch), a batch
//! goes queued through the data management endpoint if one is configured, and streaming pauses
//! for 15 minutes; without one the batch waits (a retriable error naming the fix), reported once.
//! It must never send a token anywhere but the configured engine.

use std::{future::Future, pin::Pin};

use bytes::Bytes;

use super::{
    Attempt, Error, Inner, Operation, Result,
    auth::endpoint_name,
    gzip,
    resources::join,
    verify::{Known, Lookup, Presence, first_key, records},
};
use crate::{
    sink::{OutgoingBatch, Receipt},
    telemetry::error_chain,
};

/// How a part ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Its records are in ADX (sent now, or found there).
    Done,
    /// It had to be looked up and the identity may not query.
    Forbidden,
}

/// What a batch's requests did so far.
#[derive(Debug, Default)]
struct Progress {
    /// Requests that stored rows.
    sent: usize,
    /// Records in ADX so far, in batch order (sent or found).
    records: usize,
}

impl Inner {
    /// Streaming mode: the whole batch, split into parts under the limit when needed. A batch
    /// that may be in ADX already (`recovered`, or an earlier attempt without a clear answer)
    /// has each part looked up first, and only what is missing is sent. Returns the route for
    /// the metrics: `already_ingested` when nothing had to be sent.
    pub(super) async fn send_streaming_all(
        &self,
        batch: &OutgoingBatch,
        payload: &Bytes,
        compressed: &Bytes,
        recovered: bool,
    ) -> Result<(&'static str, Receipt)> {
        if self.streaming_suspension() == Some("policy_off")
            && self.config.ingest_endpoint.is_some()
        {
            return self
                .queued_while_streaming_off(batch, payload, compressed, recovered)
                .await;
        }
        let mut check = recovered || self.uncertain.contains(&batch.id);
        if check && self.queries_forbidden() {
            if let Some(sent) = self.resend_unchecked(batch, payload, compressed).await? {
                return Ok(sent);
            }
            check = false;
        }
        let mut progress = Progress::default();
        let limit = usize::try_from(self.config.streaming_max_bytes).unwrap_or(usize::MAX);
        let parts = if compressed.len() <= limit {
            vec![&payload[..]]
        } else {
            let parts = split_lines(payload, limit);
            tracing::debug!(batch_id = %batch.id, parts = parts.len(), "Splitting a large batch for streaming");
            parts
        };
        let whole = parts.len() == 1;
        for (index, part) in parts.iter().enumerate() {
            let label = (index + 1).to_string();
            // A compressed body is at hand for the whole batch only.
            let body = whole.then(|| compressed.clone());
            let mut result = self
                .stream_part(
                    batch,
                    part,
                    body,
                    label.clone(),
                    check.then_some(Known::Nothing),
                    &mut progress,
                )
                .await;
            if matches!(result, Ok(Part::Forbidden)) {
                if let Some(route) = self.resend_unchecked(batch, payload, compressed).await? {
                    return Ok(route);
                }
                // No data management endpoint: stream this part and the rest unchecked.
                check = false;
                result = self
                    .stream_part(batch, part, None, label, None, &mut progress)
                    .await;
            }
            if let Err(error) = result {
                // Requests that went through are in: a retry must look before sending.
                if progress.sent > 0 {
                    self.uncertain.mark(&batch.id);
                }
                if error.is_streaming_off() {
                    return self
                        .on_streaming_off(batch, payload, compressed, recovered, error)
                        .await;
                }
                return Err(error);
            }
            // Once a part was missing, the ones after it are too: ADX holds a prefix.
            if progress.sent > 0 {
                check = false;
            }
        }
        self.uncertain.settle(&batch.id);
        if self.forget("policy_off") {
            tracing::info!(
                table = %self.config.table,
                "ADX accepts streaming ingestion into this table again"
            );
            self.set_problem(None);
        }
        let route = if progress.sent == 0 {
            "already_ingested"
        } else {
            "streaming"
        };
        Ok((route, Receipt::Delivered))
    }

    /// ADX refused a streaming request because streaming is off for the table (its streaming
    /// ingestion policy) or the cluster. With a data management endpoint the batch goes queued
    /// (as managed mode does) and streaming pauses for 15 minutes; without one the error is
    /// retriable (the batch is fine; the table is not) and names the fix. Either is logged once.
    async fn on_streaming_off(
        &self,
        batch: &OutgoingBatch,
        payload: &Bytes,
        compressed: &Bytes,
        recovered: bool,
        error: Error,
    ) -> Result<(&'static str, Receipt)> {
        let (database, table) = (&self.config.database, &self.config.table);
        if self.config.ingest_endpoint.is_some() {
            self.suspend_streaming(super::managed::UNAVAILABLE_SUSPENSION, "policy_off");
            if self.note_once("policy_off") {
                tracing::warn!(
                    batch_id = %batch.id,
                    table = %table,
                    error = %error_chain(&error),
                    "Streaming ingestion is not enabled for this table (its streaming ingestion policy, or the cluster's): sending batches queued and trying streaming again every 15 minutes. Enable it (`.alter table … policy streamingingestion enable`) or use mode queued"
                );
            }
            return self
                .queued_while_streaming_off(batch, payload, compressed, recovered)
                .await;
        }
        let error = Error::StreamingOff {
            database: database.clone(),
            table: table.clone(),
            source: Box::new(error),
        };
        if self.note_once("policy_off") {
            tracing::error!(
                batch_id = %batch.id,
                error = %error_chain(&error),
                "ADX refuses streaming ingestion into this table; batches wait in the outbox until it is enabled"
            );
        }
        self.set_problem(Some(error.to_string()));
        Err(error)
    }

    /// Streaming mode while the table's streaming is off: the batch goes queued, counted as a
    /// `policy_off` fallback. A batch that may be partly in ADX already (an earlier attempt
    /// streamed some of it) is looked up first: all there is delivered, none there goes queued
    /// with its `ingest-by` tag, part of it waits for streaming to come back (queued ingestion
    /// cannot send just the rest under the batch's id).
    async fn queued_while_streaming_off(
        &self,
        batch: &OutgoingBatch,
        payload: &Bytes,
        compressed: &Bytes,
        recovered: bool,
    ) -> Result<(&'static str, Receipt)> {
        let mut dedup = false;
        if recovered || self.uncertain.contains(&batch.id) {
            match self.presence(batch, payload, Known::Nothing).await? {
                Presence::All => {
                    self.uncertain.settle(&batch.id);
                    return Ok(("already_ingested", Receipt::Delivered));
                }
                Presence::Partial => {
                    return Err(Error::StreamingOffMidBatch {
                        table: self.config.table.clone(),
                    });
                }
                Presence::Nothing | Presence::Unknown | Presence::Forbidden => dedup = true,
            }
        }
        self.http
            .metrics
            .adx_managed_fallbacks
            .with_label_values(&["policy_off"])
            .inc();
        let attempt = if recovered {
            Attempt::Recovered
        } else {
            Attempt::First
        };
        let receipt = self
            .send_queued(batch, compressed, payload.len(), attempt, dedup)
            .await?;
        self.uncertain.settle(&batch.id);
        Ok(("queued", receipt))
    }

    /// A batch that may be in ADX, whose lookup the identity may not make: queued with an
    /// `ingest-by` tag when a data management endpoint is configured (`Some(route)`), else
    /// `None` and the caller streams it unchecked.
    async fn resend_unchecked(
        &self,
        batch: &OutgoingBatch,
        payload: &Bytes,
        compressed: &Bytes,
    ) -> Result<Option<(&'static str, Receipt)>> {
        if self.config.ingest_endpoint.is_none() {
            if self.note_once("query_forbidden_no_dm") {
                tracing::warn!(
                    batch_id = %batch.id,
                    "No sink.adx.ingest_endpoint to re-send unverifiable batches queued: streaming them again, which may duplicate rows"
                );
            }
            return Ok(None);
        }
        self.http
            .metrics
            .adx_managed_fallbacks
            .with_label_values(&["query_forbidden"])
            .inc();
        tracing::debug!(batch_id = %batch.id, "Re-sending an unverifiable batch queued with its ingest-by tag");
        let receipt = self
            .send_queued(batch, compressed, payload.len(), Attempt::First, true)
            .await?;
        self.uncertain.settle(&batch.id);
        Ok(Some(("queued", receipt)))
    }

    /// One part (consecutive records of the batch; `body` is its gzip when already made) whose
    /// first record is record `progress.records + 1`. With `check` (and what is known of it),
    /// what ADX holds of it is looked up first. A too-large answer halves it; an answer that
    /// leaves open whether it was stored is resolved by looking it up, and the batch stays
    /// uncertain until a send settles it.
    fn stream_part<'a>(
        &'a self,
        batch: &'a OutgoingBatch,
        part: &'a [u8],
        body: Option<Bytes>,
        label: String,
        check: Option<Known>,
        progress: &'a mut Progress,
    ) -> Pin<Box<dyn Future<Output = Result<Part>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(known) = check {
                match self.presence(batch, part, known).await? {
                    Presence::All => {
                        tracing::info!(
                            batch_id = %batch.id,
                            part = %label,
                            "The batch is in ADX already; not sending it again"
                        );
                        progress.records += records(part).count();
                        return Ok(Part::Done);
                    }
                    Presence::Forbidden => return Ok(Part::Forbidden),
                    Presence::Partial => {
                        // An earlier attempt sent it in pieces and stopped: look at each half,
                        // until one had to be sent (what follows it is missing too).
                        let (first, second) = halves(part);
                        let sent = progress.sent;
                        for (index, (half, known)) in
                            [(first, Known::FirstPresent), (second, Known::LastAbsent)]
                                .into_iter()
                                .enumerate()
                        {
                            let label = format!("{label}.{}", index + 1);
                            let check = (progress.sent == sent).then_some(known);
                            if self
                                .stream_part(batch, half, None, label, check, progress)
                                .await?
                                == Part::Forbidden
                            {
                                return Ok(Part::Forbidden);
                            }
                        }
                        return Ok(Part::Done);
                    }
                    Presence::Nothing | Presence::Unknown => {}
                }
            }
            let body = match body {
                Some(body) => body,
                None => Bytes::from(gzip(part).map_err(Error::Compress)?),
            };
            match self.send_streaming(batch, &body, &label).await {
                Ok(()) => {}
                Err(error) if error.is_too_large() => {
                    let count = records(part).count();
                    if count <= 1 {
                        return Err(Error::RecordTooLarge {
                            record: progress.records + 1,
                            key: first_key(part).map_or_else(
                                || "no Uid and ResourceVersion".to_owned(),
                                |k| {
                                    format!("Uid {}, ResourceVersion {}", k.uid, k.resource_version)
                                },
                            ),
                            bytes: body.len(),
                            source: Box::new(error),
                        });
                    }
                    if self.note_once("streaming_split") {
                        tracing::warn!(
                            batch_id = %batch.id,
                            part = %label,
                            batch_size = count,
                            error = %error_chain(&error),
                            "ADX refused a streaming request as too large; sending such requests again in halves (a lower sink.adx.streaming_max_bytes avoids the extra requests)"
                        );
                    }
                    tracing::debug!(batch_id = %batch.id, part = %label, batch_size = count, "Halving a streaming request ADX found too large");
                    let (first, second) = halves(part);
                    for (index, half) in [first, second].into_iter().enumerate() {
                        let label = format!("{label}.{}", index + 1);
                        self.stream_part(batch, half, None, label, None, progress)
                            .await?;
                    }
                    return Ok(Part::Done);
                }
                Err(error) if error.is_ambiguous() => {
                    self.uncertain.mark(&batch.id);
                    if let Ok(Lookup::Present) = self.lookup_first(batch, part).await {
                        tracing::info!(
                            batch_id = %batch.id,
                            part = %label,
                            error = %error_chain(&error),
                            "Streaming ingestion answered with an error but stored the batch"
                        );
                    } else {
                        return Err(error);
                    }
                }
                Err(error) => return Err(error),
            }
            progress.sent += 1;
            progress.records += records(part).count();
            Ok(Part::Done)
        })
    }

    /// One streaming request with a gzip body; `part` goes into the request id.
    pub(super) async fn send_streaming(
        &self,
        batch: &OutgoingBatch,
        compressed: &Bytes,
        part: &str,
    ) -> Result<()> {
        let engine = self.engine.as_ref().ok_or(Error::NoEndpoint("engine"))?;
        let mut url = join(
            engine,
            &format!(
                "v1/rest/ingest/{}/{}",
                self.config.database, self.config.table
            ),
        );
        url.query_pairs_mut()
            .append_pair("streamFormat", self.config.format.as_str())
            .append_pair("mappingName", &self.config.mapping);
        let endpoint = endpoint_name(&url);
        let request = Self::kusto_request(
            self.http.client.post(url),
            &format!("kevents.stream;{};{part}", batch.id),
        );
        let request = self
            .authorize(request)
            .await?
            .header("Content-Encoding", "gzip")
            .body(compressed.clone());
        match self
            .http
            .send(Operation::Streaming, request, &endpoint, &[])
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => {
                self.on_error(&error).await;
                Err(error)
            }
        }
    }
}

/// Splits NDJSON into parts of at most `limit` bytes, at line ends (a longer line is its own
/// part).
pub(super) fn split_lines(payload: &[u8], limit: usize) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for line in payload.split_inclusive(|b| *b == b'\n') {
        if end > start && end - start + line.len() > limit {
            parts.push(&payload[start..end]);
            start = end;
        }
        end += line.len();
    }
    if end > start {
        parts.push(&payload[start..end]);
    }
    parts
}

/// Two halves by records (the first gets the smaller half of an odd count), at a line end.
pub(super) fn halves(part: &[u8]) -> (&[u8], &[u8]) {
    let lines: Vec<&[u8]> = part.split_inclusive(|b| *b == b'\n').collect();
    let at: usize = lines[..lines.len() / 2].iter().map(|l| l.len()).sum();
    part.split_at(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_payloads_split_at_line_ends_under_the_limit() {
        let payload = b"aaaa\nbbbb\ncccc\ndddddddddddd\ne\n";
        let parts = split_lines(payload, 10);
        assert_eq!(
            parts,
            vec![&b"aaaa\nbbbb\n"[..], b"cccc\n", b"dddddddddddd\n", b"e\n"]
        );
        assert_eq!(parts.concat(), payload);
        assert_eq!(split_lines(b"", 10).len(), 0);
    }

    #[test]
    fn halves_split_by_records_at_line_ends() {
        assert_eq!(halves(b"a\nbb\nccc\n"), (&b"a\n"[..], &b"bb\nccc\n"[..]));
        assert_eq!(halves(b"a\nbb\n"), (&b"a\n"[..], &b"bb\n"[..]));
        assert_eq!(halves(b"a\n"), (&b""[..], &b"a\n"[..]));
    }
}
