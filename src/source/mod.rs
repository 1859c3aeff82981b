//! The list/watch loop over Events: resume from the stored resourceVersion, relist (paged) on 410
//! Gone, back off on errors, and hand every event version downstream in order.
//!
//! Owns the Kubernetes wire protocol for Events (core/v1 or events.k8s.io/v1), the filters and
//! their field-selector push-down, and the bad-input rules: a watch line that is not JSON, an
//! unknown watch type, a Status object or an object without uid/resourceVersion is counted and
//! logged once, and the loop goes on. It never writes anything: capture decides what is new and
//! commits it. It must never hot-loop against a failing API server.

mod filter;
mod pace;

use std::time::{Duration, Instant};

use backon::BackoffBuilder as _;
use futures::StreamExt as _;
use kube::{
    api::{ListParams, WatchParams},
    core::{Request, WatchEvent},
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use filter::Filter;

use crate::{
    config::{EventApi, InitialList, SourceConfig},
    telemetry::Metrics,
    telemetry::error_chain,
};

/// Resets the backoff after a watch that stayed healthy this long.
const HEALTHY_PERIOD: Duration = Duration::from_secs(120);

/// What the source hands to capture, in API server order.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceItem {
    /// An event version to capture. `checkpoint` is set when capturing it may move the checkpoint
    /// to its resourceVersion (watch events); list items leave the checkpoint alone.
    Upsert {
        /// The Event object.
        object: Value,
        /// The checkpoint to store with it, if any.
        checkpoint: Option<String>,
        /// Set for an item of a LIST.
        listed: Option<Listed>,
    },
    /// Only moves the checkpoint (DELETED, BOOKMARK, filtered events, the end of a list).
    Checkpoint(String),
    /// A relist found resourceVersions lower than the stored checkpoint (the API server's data
    /// was restored, or this is another cluster): forget the checkpoint before the list's items.
    Rewound,
}

/// Where an item sits in a LIST. A paged LIST is a snapshot at its resourceVersion, returned in
/// storage key order (`namespace/name` as bytes): each continue token resumes after the last key
/// returned. Capture uses this to know how far an unfinished list got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The list's resourceVersion.
    pub resource_version: String,
    /// Random per LIST started, so a list restarted at the same resourceVersion is told apart.
    pub run: u64,
    /// The item's key, `namespace/name`.
    pub key: String,
}

impl Listed {
    /// `object`'s position in run `run` of the list at `resource_version`; `None` without a
    /// name.
    fn of(object: &Value, resource_version: &str, run: u64) -> Option<Self> {
        let metadata = object.get("metadata")?;
        let name = metadata.get("name")?.as_str()?;
        let namespace = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Some(Self {
            resource_version: resource_version.to_owned(),
            run,
            key: format!("{namespace}/{name}"),
        })
    }
}

/// True when a list's resourceVersion is numerically below the one held before it.
fn rewound(listed: &str, held: &str) -> bool {
    matches!((listed.parse::<u64>(), held.parse::<u64>()), (Ok(listed), Ok(held)) if listed < held)
}

/// Where the source starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Resume watching after this stored resourceVersion.
    Resume(String),
    /// No checkpoint: the first start, following `initial_list`.
    Fresh,
}

/// Why a watch session ended.
enum WatchEnd {
    /// The server closed it (timeoutSeconds) or the connection ended: re-watch.
    Closed,
    /// 410 Gone: the resourceVersion is compacted away; relist.
    Expired,
    /// Nothing arrived for longer than the timeout plus grace.
    Stalled,
    /// Capture stopped listening: the pipeline is stopping.
    Downstream,
    /// A request or stream error: back off, then re-watch.
    Failed(kube::Error),
}

/// The list/watch loop.
pub struct Source {
    client: kube::Client,
    config: SourceConfig,
    filter: Filter,
    metrics: Metrics,
    tx: mpsc::Sender<SourceItem>,
    /// Set each time a list or a resume is done; the pipeline turns it into readiness.
    listed: watch::Sender<bool>,
}

/// Source errors that end the loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Capture stopped receiving.
    #[error("capture stopped receiving events")]
    Downstream,
}

impl Source {
    /// A source sending to `tx`.
    #[must_use]
    pub fn new(
        client: kube::Client,
        config: SourceConfig,
        metrics: Metrics,
        tx: mpsc::Sender<SourceItem>,
        listed: watch::Sender<bool>,
    ) -> Self {
        let filter = Filter::new(&config.filter);
        Self {
            client,
            config,
            filter,
            metrics,
            tx,
            listed,
        }
    }

    fn collection_path(&self) -> String {
        let namespace = self.filter.single_namespace();
        match (self.config.api, namespace) {
            (EventApi::CoreV1, None) => "/api/v1/events".to_owned(),
            (EventApi::CoreV1, Some(ns)) => format!("/api/v1/namespaces/{ns}/events"),
            (EventApi::EventsV1, None) => "/apis/events.k8s.io/v1/events".to_owned(),
            (EventApi::EventsV1, Some(ns)) => {
                format!("/apis/events.k8s.io/v1/namespaces/{ns}/events")
            }
        }
    }

    fn field_selector(&self) -> Option<String> {
        self.filter.field_selector(self.config.api)
    }

    fn backoff() -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(800))
            .with_max_delay(Duration::from_secs(30))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Runs until `stop` is cancelled or capture stops receiving.
    pub async fn run(self, start: Start, stop: CancellationToken) -> Result<(), Error> {
        let mut position = match start {
            Start::Resume(rv) => Some(rv),
            Start::Fresh => None,
        };
        let mut fresh = position.is_none();
        // The last position held, to notice a relist whose resourceVersions went backwards.
        let mut last_held = position.clone();
        let mut backoff = Self::backoff();
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            if position.is_none() {
                let mode = if fresh {
                    self.config.initial_list
                } else {
                    InitialList::All
                };
                let listed = tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    listed = self.list(mode, last_held.as_deref()) => listed,
                };
                match listed {
                    Ok(Some(rv)) => {
                        last_held = Some(rv.clone());
                        position = Some(rv);
                        fresh = false;
                        self.listed.send_replace(true);
                    }
                    Ok(None) => return Err(Error::Downstream),
                    Err(error) => {
                        let wait = backoff.next().unwrap_or(Duration::from_secs(30));
                        tracing::warn!(error = %error_chain(&error), retry_in = ?wait, "Listing events failed");
                        tokio::select! {
                            () = stop.cancelled() => return Ok(()),
                            () = tokio::time::sleep(wait) => {}
                        }
                        continue;
                    }
                }
            }
            let Some(from) = position.clone() else {
                continue;
            };
            let started = Instant::now();
            let (end, delivered) = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                end = self.watch(&from, &mut position) => end,
            };
            last_held.clone_from(&position);
            if delivered > 0 || started.elapsed() >= HEALTHY_PERIOD {
                backoff = Self::backoff();
            }
            // A server behind our position (restored data, or a lagging replica) accepts the
            // watch and stays quiet: after a session that moved nothing, ask where it is.
            if delivered == 0
                && matches!(end, WatchEnd::Closed | WatchEnd::Stalled)
                && position.as_deref() == Some(from.as_str())
                && self.server_behind(&from).await
            {
                self.restart(if matches!(end, WatchEnd::Closed) {
                    "closed"
                } else {
                    "stalled"
                });
                tracing::warn!(resource_version = %from, "The API server is behind the checkpoint; relisting");
                position = None;
                continue;
            }
            match end {
                WatchEnd::Closed => {
                    self.restart("closed");
                    // A stream that ends at once without delivering anything is not healthy.
                    if delivered == 0 && started.elapsed() < Duration::from_secs(1) {
                        let wait = backoff.next().unwrap_or(Duration::from_secs(30));
                        tokio::select! {
                            () = stop.cancelled() => return Ok(()),
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                }
                WatchEnd::Expired => {
                    self.metrics.watch_expired.inc();
                    self.restart("expired");
                    tracing::info!(resource_version = %from, "Watch position expired (410 Gone); relisting");
                    position = None;
                }
                WatchEnd::Stalled => {
                    self.restart("stalled");
                    tracing::warn!(resource_version = ?position, "Watch stalled; restarting it");
                }
                WatchEnd::Downstream => return Err(Error::Downstream),
                WatchEnd::Failed(error) => {
                    self.restart("error");
                    if is_gone(&error) {
                        self.metrics.watch_expired.inc();
                        position = None;
                        continue;
                    }
                    if is_too_large(&error) {
                        // The server is behind our checkpoint: a lagging replica, or data that
                        // went backwards. A consistent relist tells which.
                        tracing::warn!(resource_version = %from, "The API server is behind the checkpoint; relisting");
                        position = None;
                        continue;
                    }
                    let wait = backoff.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(error = %error_chain(&error), retry_in = ?wait, "Watch failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    fn restart(&self, reason: &str) {
        self.metrics
            .watch_restarts
            .with_label_values(&[reason])
            .inc();
    }

    /// True when a consistent one-item LIST shows the API server's resourceVersion below
    /// `position` (both numbers). Errors answer false: the watch loop retries as usual.
    async fn server_behind(&self, position: &str) -> bool {
        let Ok(position) = position.parse::<u64>() else {
            return false;
        };
        let Ok(http) = Request::new(self.collection_path()).list(&ListParams::default().limit(1))
        else {
            return false;
        };
        match self.client.request::<Value>(http).await {
            Ok(page) => page
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|rv| rv.parse::<u64>().ok())
                .is_some_and(|current| current < position),
            Err(error) => {
                tracing::debug!(error = %error_chain(&error), "Probing the API server's resourceVersion failed");
                false
            }
        }
    }

    /// A paged LIST: sends every kept item, then the list's resourceVersion as checkpoint.
    /// Returns that resourceVersion, or `None` when capture stopped receiving.
    async fn list(
        &self,
        mode: InitialList,
        previous: Option<&str>,
    ) -> Result<Option<String>, kube::Error> {
        self.metrics.relists.inc();
        let request = Request::new(self.collection_path());
        let mut continue_token: Option<String> = None;
        let mut list_rv: Option<String> = None;
        let mut items_total = 0u64;
        let mut run = 0u64;
        let cutoff = match mode {
            InitialList::MaxAge(age) => Some(
                jiff::Timestamp::now()
                    .checked_sub(
                        jiff::SignedDuration::try_from(age).unwrap_or(jiff::SignedDuration::MAX),
                    )
                    .unwrap_or(jiff::Timestamp::MIN),
            ),
            _ => None,
        };
        loop {
            let mut params = ListParams::default().limit(self.config.page_size);
            if let Some(fields) = self.field_selector() {
                params = params.fields(&fields);
            }
            if let Some(token) = &continue_token {
                params = params.continue_token(token);
            } else {
                run = rand::random();
            }
            let http = request.list(&params).map_err(kube::Error::BuildRequest)?;
            let mut page: Value = match self.client.request(http).await {
                Ok(page) => page,
                Err(error) if is_gone(&error) && continue_token.is_some() => {
                    // The continue token expired mid-list: start the list again.
                    tracing::info!("List continue token expired (410); restarting the list");
                    self.metrics.watch_expired.inc();
                    continue_token = None;
                    list_rv = None;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if list_rv.is_none() {
                list_rv = page
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some((listed, held)) = list_rv.as_deref().zip(previous)
                    && rewound(listed, held)
                {
                    tracing::error!(
                        resource_version = listed,
                        checkpoint = held,
                        "The API server's resourceVersion went backwards (restored data or another cluster?); forgetting the checkpoint and deduping this relist by uid"
                    );
                    self.metrics.rv_rewinds.inc();
                    if self.tx.send(SourceItem::Rewound).await.is_err() {
                        return Ok(None);
                    }
                }
            }
            // The items move downstream one by one (no copy); the page goes when its last item
            // is sent, so a relist holds one page, whatever the number of retained events.
            continue_token = page
                .pointer("/metadata/continue")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            let items = match page.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            drop(page);
            for item in items {
                if mode == InitialList::None {
                    continue;
                }
                if !self.filter.matches(&item) {
                    self.metrics.events_filtered.inc();
                    continue;
                }
                if let Some(cutoff) = cutoff
                    && crate::transform::event_time(&item).is_some_and(|t| t < cutoff)
                {
                    self.metrics.events_filtered.inc();
                    continue;
                }
                items_total += 1;
                self.metrics.events_received.inc();
                let listed = list_rv.as_deref().and_then(|rv| Listed::of(&item, rv, run));
                let sent = self
                    .tx
                    .send(SourceItem::Upsert {
                        object: item,
                        checkpoint: None,
                        listed,
                    })
                    .await;
                if sent.is_err() {
                    return Ok(None);
                }
            }
            if continue_token.is_none() {
                break;
            }
        }
        let Some(rv) = list_rv else {
            return Err(kube::Error::Api(
                kube::core::Status::failure(
                    "list response has no metadata.resourceVersion",
                    "BadResponse",
                )
                .with_code(500)
                .boxed(),
            ));
        };
        tracing::info!(resource_version = %rv, events = items_total, "Listed events");
        if self
            .tx
            .send(SourceItem::Checkpoint(rv.clone()))
            .await
            .is_err()
        {
            return Ok(None);
        }
        Ok(Some(rv))
    }

    /// One watch session from `from`; `position` follows the last resourceVersion handed on.
    /// Returns how it ended and how many items it delivered.
    async fn watch(&self, from: &str, position: &mut Option<String>) -> (WatchEnd, u64) {
        // Bookmarks are asked for (they only move the checkpoint); real servers send none for
        // Events, which is why a quiet watch can fall behind compaction and get 410.
        let mut params = WatchParams::default()
            .timeout(u32::try_from(self.config.watch_timeout.as_secs()).unwrap_or(u32::MAX));
        if let Some(fields) = self.field_selector() {
            params = params.fields(&fields);
        }
        let request = match Request::new(self.collection_path()).watch(&params, from) {
            Ok(request) => request,
            Err(error) => return (WatchEnd::Failed(kube::Error::BuildRequest(error)), 0),
        };
        let stream = match self.client.request_events::<Value>(request).await {
            Ok(stream) => stream,
            Err(error) => return (WatchEnd::Failed(error), 0),
        };
        self.listed.send_replace(true);
        let mut stream = stream.boxed();
        let idle = self.config.watch_timeout + self.config.watch_idle_grace;
        let mut delivered = 0u64;
        let mut pace = pace::Pace::new(tokio::time::Instant::now());
        loop {
            let Some(next) = pace::next(&mut stream, &mut pace, idle).await else {
                return (WatchEnd::Stalled, delivered);
            };
            let next = next.transpose();
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => return (WatchEnd::Closed, delivered),
                Err(kube::Error::Api(status)) if status.code == 410 => {
                    return (WatchEnd::Expired, delivered);
                }
                Err(kube::Error::Api(status)) => {
                    // A line that is JSON but no watch event (unknown type, a bare Status).
                    let reason = if status.code == 0 {
                        "unknown_type"
                    } else {
                        "status_object"
                    };
                    self.malformed(reason, &format!("{}: {}", status.reason, status.message));
                    continue;
                }
                Err(kube::Error::SerdeError(error)) => {
                    self.malformed("not_json", &error.to_string());
                    continue;
                }
                Err(error) => return (WatchEnd::Failed(error), delivered),
            };
            let item = match event {
                WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                    let Some(rv) = resource_version(&object) else {
                        self.malformed("missing_key", "object without metadata.resourceVersion");
                        continue;
                    };
                    *position = Some(rv.clone());
                    if self.filter.matches(&object) {
                        self.metrics.events_received.inc();
                        SourceItem::Upsert {
                            object,
                            checkpoint: Some(rv),
                            listed: None,
                        }
                    } else {
                        self.metrics.events_filtered.inc();
                        SourceItem::Checkpoint(rv)
                    }
                }
                WatchEvent::Deleted(object) => {
                    let Some(rv) = resource_version(&object) else {
                        continue;
                    };
                    *position = Some(rv.clone());
                    SourceItem::Checkpoint(rv)
                }
                WatchEvent::Bookmark(bookmark) => {
                    let rv = bookmark.metadata.resource_version;
                    *position = Some(rv.clone());
                    SourceItem::Checkpoint(rv)
                }
                WatchEvent::Error(status) if status.code == 410 => {
                    return (WatchEnd::Expired, delivered);
                }
                WatchEvent::Error(status) => {
                    self.malformed(
                        "status_object",
                        &format!("{}: {}", status.reason, status.message),
                    );
                    return (WatchEnd::Failed(kube::Error::Api(status)), delivered);
                }
            };
            if self.tx.send(item).await.is_err() {
                return (WatchEnd::Downstream, delivered);
            }
            delivered += 1;
        }
    }

    fn malformed(&self, reason: &'static str, detail: &str) {
        self.metrics
            .events_malformed
            .with_label_values(&[reason])
            .inc();
        let detail: String = detail.chars().take(200).collect();
        tracing::warn!(reason, detail = %detail, "Skipped an unusable watch line");
    }
}

fn resource_version(object: &Value) -> Option<String> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|rv| !rv.is_empty())
        .map(str::to_owned)
}

fn is_gone(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 410)
}

/// The watch position is ahead of the API server ("Too large resource version", 504).
fn is_too_large(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 504 && status.message.contains("Too large resource version"))
}
