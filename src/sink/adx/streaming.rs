//! Streaming ingestion (`reference/adx-ingestion.md` §4): one gzip POST per batch to the engine's
//! `/v1/rest/ingest/{db}/{table}`; a batch above the size limit is split by lines (streaming
//! mode only; managed mode sends it queued instead).
//!
//! Owns the request and its request id. Errors are classified in `Http::send` by Kusto's rule
//! (`@permanent`, 429 throttling, 5xx transient). Streaming cannot carry `ingest-by` tags, so a
//! batch whose earlier attempt may have landed (a lost answer, a re-send after a failover) is
//! looked up first (`verify`) and only its missing parts are sent. It must never send a token
//! anywhere but the configured engine.

use bytes::Bytes;

use super::{Error, Inner, Operation, Result, auth::endpoint_name, gzip, resources::join};
use crate::sink::OutgoingBatch;

impl Inner {
    /// Streaming mode: the whole batch, split into parts under the limit when needed. A batch
    /// that may be in ADX already (`recovered`, or an earlier attempt without a clear answer)
    /// has each part looked up first, and only the missing parts are sent. Returns the route
    /// for the metrics: `already_ingested` when nothing had to be sent.
    pub(super) async fn send_streaming_all(
        &self,
        batch: &OutgoingBatch,
        payload: &Bytes,
        compressed: &Bytes,
        recovered: bool,
    ) -> Result<&'static str> {
        let check = recovered || self.uncertain.contains(&batch.id);
        let mut sent = 0;
        if compressed.len() as u64 <= self.config.streaming_max_bytes {
            sent += usize::from(
                self.stream_part(batch, payload, compressed, 1, check)
                    .await?,
            );
        } else {
            let limit = usize::try_from(self.config.streaming_max_bytes).unwrap_or(usize::MAX);
            let parts = split_lines(payload, limit);
            tracing::debug!(batch_id = %batch.id, parts = parts.len(), "Splitting a large batch for streaming");
            for (index, part) in parts.iter().enumerate() {
                let body = Bytes::from(gzip(part).map_err(Error::Compress)?);
                match self.stream_part(batch, part, &body, index + 1, check).await {
                    Ok(was_sent) => sent += usize::from(was_sent),
                    Err(error) => {
                        // Earlier parts are in: a retry must not send them again.
                        if index > 0 {
                            self.uncertain.mark(&batch.id);
                        }
                        return Err(error);
                    }
                }
            }
        }
        self.uncertain.settle(&batch.id);
        Ok(if sent == 0 {
            "already_ingested"
        } else {
            "streaming"
        })
    }

    /// One part; `check` looks it up first. An answer that leaves open whether it was stored
    /// is resolved by looking it up; the batch stays uncertain until a send settles it.
    /// Returns whether the part was sent (false: it was there already).
    async fn stream_part(
        &self,
        batch: &OutgoingBatch,
        part: &[u8],
        body: &Bytes,
        index: usize,
        check: bool,
    ) -> Result<bool> {
        if check && self.already_ingested(batch, part).await? == Some(true) {
            tracing::info!(
                batch_id = %batch.id,
                part = index,
                "The batch is in ADX already; not sending it again"
            );
            return Ok(false);
        }
        match self.send_streaming(batch, body, index).await {
            Ok(()) => Ok(true),
            Err(error) if error.is_ambiguous() => {
                self.uncertain.mark(&batch.id);
                if let Ok(Some(true)) = self.already_ingested(batch, part).await {
                    tracing::info!(
                        batch_id = %batch.id,
                        part = index,
                        error = %crate::telemetry::error_chain(&error),
                        "Streaming ingestion answered with an error but stored the batch"
                    );
                    return Ok(true);
                }
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// One streaming request with a gzip body.
    pub(super) async fn send_streaming(
        &self,
        batch: &OutgoingBatch,
        compressed: &Bytes,
        part: usize,
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
}
