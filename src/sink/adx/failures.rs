//! The optional failed-ingestions poller: peeks the data management service's
//! `FailedIngestionsQueue`, and counts and logs the failures of this collector's own ingestions
//! (matched by `IngestionSourceId` against the ids it recently enqueued).
//!
//! Owns the recent-id memory and the poll loop. The queue is shared by every client of the DM:
//! it only peeks, so it never deletes, hides or dequeues anyone's message (a peek sees the 32
//! oldest messages; a failure behind 32 others' is not seen until those expire). Each message is
//! counted once.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use base64::Engine as _;
use serde_json::Value;

use super::{
    Inner, Operation,
    auth::endpoint_name,
    http::{STORAGE_VERSION, xml_text},
};
use crate::telemetry::error_chain;

/// Ingestion ids remembered (about a day of batches at one per 15 s is 5760).
const REMEMBERED: usize = 65_536;

/// Recently enqueued ingestion source ids and their batch ids, plus the failure messages already
/// counted.
#[derive(Default)]
pub(super) struct RecentIds {
    state: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    batches: HashMap<String, String>,
    order: VecDeque<String>,
    counted: HashSet<String>,
    counted_order: VecDeque<String>,
}

impl RecentIds {
    pub(super) fn remember(&self, source_id: &str, batch_id: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state
            .batches
            .insert(source_id.to_owned(), batch_id.to_owned())
            .is_none()
        {
            state.order.push_back(source_id.to_owned());
            if state.order.len() > REMEMBERED
                && let Some(old) = state.order.pop_front()
            {
                state.batches.remove(&old);
            }
        }
    }

    /// The batch id of one of our ingestions whose failure `message_id` was not counted yet.
    fn claim(&self, source_id: &str, message_id: &str) -> Option<String> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let batch = state.batches.get(source_id)?.clone();
        if !state.counted.insert(message_id.to_owned()) {
            return None;
        }
        state.counted_order.push_back(message_id.to_owned());
        if state.counted_order.len() > REMEMBERED
            && let Some(old) = state.counted_order.pop_front()
        {
            state.counted.remove(&old);
        }
        Some(batch)
    }
}

/// Polls until the sink is dropped (the task is aborted then).
pub(super) async fn poll(inner: Arc<Inner>) {
    let mut ticker = tokio::time::interval(inner.config.failed_ingestions.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let resources = match inner.resources().await {
            Ok(resources) => resources,
            Err(error) => {
                tracing::debug!(error = %error_chain(&error), "Failed-ingestions poll: no resources");
                continue;
            }
        };
        for queue in &resources.failed_queues {
            let mut url = queue.clone();
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.pop_if_empty().push("messages");
            }
            url.query_pairs_mut()
                .append_pair("peekonly", "true")
                .append_pair("numofmessages", "32");
            let endpoint = endpoint_name(&url);
            let request = inner
                .http
                .client
                .get(url)
                .header("x-ms-version", STORAGE_VERSION);
            let body = match inner
                .http
                .send(Operation::FailedIngestionsPoll, request, &endpoint, &[])
                .await
            {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(error) => {
                    tracing::debug!(error = %error_chain(&error), "Failed-ingestions poll failed");
                    continue;
                }
            };
            for (message_id, text) in peeked_messages(&body) {
                inspect(&inner, &message_id, &text);
            }
        }
    }
}

fn inspect(inner: &Inner, message_id: &str, text: &str) {
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(text.trim()) else {
        return;
    };
    let Ok(failure) = serde_json::from_slice::<Value>(&decoded) else {
        return;
    };
    let field = |key: &str| failure.get(key).and_then(Value::as_str).unwrap_or("");
    let Some(batch_id) = inner.recent.claim(field("IngestionSourceId"), message_id) else {
        return;
    };
    let reason = match field("FailureStatus").to_ascii_lowercase().as_str() {
        "permanent" => "permanent",
        "transient" => "transient",
        "exhausted" => "exhausted",
        _ => "unknown",
    };
    inner
        .http
        .metrics
        .adx_ingestion_failures
        .with_label_values(&[reason])
        .inc();
    let details: String = field("Details").chars().take(500).collect();
    tracing::error!(
        batch_id = %batch_id,
        reason,
        error_code = field("ErrorCode"),
        operation_id = field("OperationId"),
        details = %details,
        "ADX reports that a queued ingestion of this collector failed"
    );
}

/// `(MessageId, MessageText)` of each `<QueueMessage>` in a Get/Peek Messages answer.
pub(super) fn peeked_messages(xml: &str) -> Vec<(String, String)> {
    xml.split("<QueueMessage>")
        .skip(1)
        .filter_map(|part| {
            Some((
                xml_text(part, "MessageId")?.to_owned(),
                xml_text(part, "MessageText")?.to_owned(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_ids_are_claimed_and_each_failure_counts_once() {
        let recent = RecentIds::default();
        recent.remember("id-1", "batch-1");
        assert_eq!(recent.claim("id-1", "m1"), Some("batch-1".to_owned()));
        assert_eq!(recent.claim("id-1", "m1"), None);
        assert_eq!(recent.claim("id-2", "m2"), None);
        let xml = "<?xml version=\"1.0\"?><QueueMessagesList><QueueMessage><MessageId>a</MessageId><DequeueCount>0</DequeueCount><MessageText>eyJ9</MessageText></QueueMessage><QueueMessage><MessageId>b</MessageId><MessageText>e30=</MessageText></QueueMessage></QueueMessagesList>";
        assert_eq!(
            peeked_messages(xml),
            vec![
                ("a".to_owned(), "eyJ9".to_owned()),
                ("b".to_owned(), "e30=".to_owned())
            ]
        );
    }
}
