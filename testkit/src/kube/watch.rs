//! WATCH streams: HTTP 200 + chunked JSON lines (`{"type":…,"object":…}\n`) fed from the
//! store's change log, with synthetic ADDED for `resourceVersion` unset/"0", selector
//! transitions (ADDED/DELETED when an object starts/stops matching), BOOKMARKs, in-stream 410
//! ERROR when the position is compacted, `timeoutSeconds`, and the stall/drop/partition faults.
//!
//! A watch delivers exactly the changes after its position, in order, without gaps: it reads
//! the log under the store lock and waits on a notify, never on a lossy broadcast. It must never
//! hold the store lock across an `.await`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use http::{HeaderValue, header};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::faults::{ClientIds, ConnHandle};
use super::resources::{Object, Stored, View};
use super::selectors::Filter;
use super::state::{KubeState, OpenWatch};
use super::status::ApiError;
use super::store::{Change, ChangeType};
use super::table::{TableListMeta, TableRequest, table};

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchStart {
    /// `resourceVersion` unset or "0": current state (as ADDED unless `sendInitialEvents=false`).
    Current { send_initial: bool },
    /// Changes after this resourceVersion.
    From(u64),
}

/// A parsed watch request.
pub(crate) struct WatchSpec {
    pub view: View,
    pub namespace: Option<String>,
    pub filter: Filter,
    pub start: WatchStart,
    /// `sendInitialEvents=true` + `allowWatchBookmarks=true`: end the initial events with the
    /// `k8s.io/initial-events-end` bookmark.
    pub end_bookmark: bool,
    /// Periodic bookmarks.
    pub bookmarks: bool,
    pub bookmark_interval: Duration,
    pub timeout: Duration,
    pub table: Option<TableRequest>,
    pub conn: Option<ConnHandle>,
    pub client: ClientIds,
}

const BATCH: usize = 1024;

/// The response body: chunks from the watch task; an error at the end if the watch was aborted
/// (so the client sees a broken chunked stream, not a clean end).
struct WatchBody {
    rx: mpsc::Receiver<Bytes>,
    aborted: Arc<AtomicBool>,
    finished: bool,
}

impl Stream for WatchBody {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(b))),
            Poll::Ready(None) => {
                self.finished = true;
                if self.aborted.load(Ordering::SeqCst) {
                    Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "watch dropped by the emulator",
                    ))))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Starts a watch and returns its streaming response.
pub(crate) fn serve(state: &Arc<KubeState>, spec: WatchSpec) -> Response {
    let (cursor, initial, expired) = {
        let store = state.lock();
        match spec.start {
            WatchStart::Current { send_initial: true } => {
                let (rv, items) = store.snapshot(spec.view.resource(), spec.namespace.as_deref());
                (rv, items, false)
            }
            WatchStart::Current {
                send_initial: false,
            } => (store.rv(), Vec::new(), false),
            WatchStart::From(rv) => (rv, Vec::new(), rv < store.compacted()),
        }
    };
    let (tx, rx) = mpsc::channel(4);
    let aborted = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + spec.timeout;
    let run = Run {
        guard: OpenWatch::new(state),
        state: state.clone(),
        tx,
        aborted: aborted.clone(),
        writes_rx: state.subscribe_writes(),
        faults_rx: state.faults.subscribe(),
        drop_gen: state.faults.drop_generation(),
        raw_cursor: state.faults.raw_lines_len(),
        cursor,
        deadline,
        next_bookmark: deadline,
        encoder: Encoder {
            view: spec.view,
            namespace: spec.namespace.clone(),
            filter: spec.filter.clone(),
            table: spec.table,
            headers_sent: false,
        },
        spec,
    };
    tokio::spawn(run.run(initial, expired));
    let mut resp = Response::new(Body::from_stream(WatchBody {
        rx,
        aborted,
        finished: false,
    }));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}

/// Turns changes into watch lines for one request.
struct Encoder {
    view: View,
    namespace: Option<String>,
    filter: Filter,
    table: Option<TableRequest>,
    headers_sent: bool,
}

impl Encoder {
    fn matches(&self, obj: &Object) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj.namespace() == ns)
            && self.filter.matches(obj)
    }

    fn push(&mut self, out: &mut Vec<u8>, kind: &str, stored: &Stored) {
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        match self.table {
            Some(req) => {
                let meta = TableListMeta {
                    resource_version: stored.rv,
                    continue_token: None,
                    remaining: None,
                };
                let t = table(self.view, &[stored], req, Some(&meta), self.headers_sent);
                self.headers_sent = true;
                out.extend_from_slice(&serde_json::to_vec(&t).unwrap_or_else(|_| b"{}".to_vec()));
            }
            None => stored.write_full_json(self.view, out),
        }
        out.extend_from_slice(b"}\n");
    }

    fn push_change(&mut self, out: &mut Vec<u8>, change: &Change) {
        if change.resource != self.view.resource() {
            return;
        }
        match change.kind {
            ChangeType::Added | ChangeType::Deleted => {
                if self.matches(&change.object.object) {
                    self.push(out, change.kind.as_str(), &change.object);
                }
            }
            ChangeType::Modified => {
                let now = self.matches(&change.object.object);
                let before = change
                    .prev
                    .as_ref()
                    .is_some_and(|p| self.matches(&p.object));
                match (now, before) {
                    (true, true) => self.push(out, "MODIFIED", &change.object),
                    (true, false) => self.push(out, "ADDED", &change.object),
                    (false, true) => {
                        if let Some(prev) = &change.prev {
                            let gone = prev.at_rv(change.rv);
                            self.push(out, "DELETED", &gone);
                        }
                    }
                    (false, false) => {}
                }
            }
        }
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Vec<u8> {
        let annotations = if initial_events_end {
            ",\"annotations\":{\"k8s.io/initial-events-end\":\"true\"}"
        } else {
            ""
        };
        // The object is the Go zero value of the kind with only a resourceVersion (and the
        // annotation): Go writes its non-`omitempty` fields.
        let zero = match self.view {
            View::CoreEvents => {
                ",\"involvedObject\":{},\"source\":{},\"firstTimestamp\":null,\"lastTimestamp\":null,\"eventTime\":null,\"reportingComponent\":\"\",\"reportingInstance\":\"\""
            }
            View::EventsV1 => {
                ",\"eventTime\":null,\"regarding\":{},\"deprecatedSource\":{},\"deprecatedFirstTimestamp\":null,\"deprecatedLastTimestamp\":null"
            }
            View::Leases => ",\"spec\":{}",
        };
        format!(
            "{{\"type\":\"BOOKMARK\",\"object\":{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{rv}\"{annotations}}}{zero}}}}}\n",
            self.view.kind(),
            self.view.api_version()
        )
        .into_bytes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    /// End with a broken stream (drop or partition fault).
    Abort,
    /// End cleanly (timeout, client gone, shutdown, after an ERROR event).
    Stop,
}

struct Run {
    #[expect(
        dead_code,
        reason = "held for its Drop, which counts the watch as closed"
    )]
    guard: OpenWatch,
    state: Arc<KubeState>,
    tx: mpsc::Sender<Bytes>,
    aborted: Arc<AtomicBool>,
    writes_rx: watch::Receiver<u64>,
    faults_rx: watch::Receiver<u64>,
    drop_gen: u64,
    raw_cursor: usize,
    cursor: u64,
    deadline: Instant,
    next_bookmark: Instant,
    encoder: Encoder,
    spec: WatchSpec,
}

fn expired_error() -> ApiError {
    ApiError::expired("The resourceVersion for the provided watch is too old.")
}

impl Run {
    async fn run(mut self, initial: Vec<Arc<Stored>>, expired: bool) {
        if self.stream(initial, expired).await == Flow::Abort {
            self.aborted.store(true, Ordering::SeqCst);
            if let Some(conn) = &self.spec.conn {
                conn.kill();
            }
        }
    }

    /// Is a drop or partition fault aimed at this watch?
    fn faulted(&self) -> bool {
        self.state.faults.drop_generation() != self.drop_gen
            || self.state.faults.is_partitioned(&self.spec.client)
    }

    /// Waits out a stall; `Go` when the watch may deliver.
    async fn gate(&mut self) -> Flow {
        loop {
            if self.faulted() {
                return Flow::Abort;
            }
            let Some(until) = self.state.faults.stalled_until() else {
                return Flow::Go;
            };
            tokio::select! {
                () = sleep_until(until.into()) => {}
                _ = self.faults_rx.changed() => {}
                () = self.tx.closed() => return Flow::Stop,
                () = self.state.shutdown.cancelled() => return Flow::Stop,
            }
        }
    }

    async fn send(&mut self, buf: Vec<u8>) -> Flow {
        let bytes = Bytes::from(buf);
        loop {
            let flow = self.gate().await;
            if flow != Flow::Go {
                return flow;
            }
            tokio::select! {
                permit = self.tx.reserve() => {
                    return match permit {
                        Ok(p) => { p.send(bytes); Flow::Go }
                        Err(_) => Flow::Stop,
                    };
                }
                _ = self.faults_rx.changed() => {}
                () = self.state.shutdown.cancelled() => return Flow::Stop,
            }
        }
    }

    fn schedule_bookmark(&mut self, now: Instant) {
        let periodic = now + self.spec.bookmark_interval;
        self.next_bookmark = match self.deadline.checked_sub(Duration::from_secs(2)) {
            Some(before_end) if before_end > now && before_end < periodic => before_end,
            _ => periodic,
        };
    }

    async fn stream(&mut self, initial: Vec<Arc<Stored>>, expired: bool) -> Flow {
        if expired {
            return match self.send(expired_error().watch_error_line()).await {
                Flow::Go => Flow::Stop,
                other => other,
            };
        }
        for chunk in initial.chunks(BATCH) {
            let mut buf = Vec::new();
            for stored in chunk {
                if self.encoder.matches(&stored.object) {
                    self.encoder.push(&mut buf, "ADDED", stored);
                }
            }
            if !buf.is_empty() {
                let flow = self.send(buf).await;
                if flow != Flow::Go {
                    return flow;
                }
            }
        }
        if self.spec.end_bookmark {
            let flow = self.send(self.encoder.bookmark(self.cursor, true)).await;
            if flow != Flow::Go {
                return flow;
            }
        }
        self.schedule_bookmark(Instant::now());
        loop {
            let flow = self.gate().await;
            if flow != Flow::Go {
                return flow;
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Flow::Stop;
            }
            if self.spec.bookmarks && now >= self.next_bookmark {
                self.schedule_bookmark(now);
                let flow = self.send(self.encoder.bookmark(self.cursor, false)).await;
                if flow != Flow::Go {
                    return flow;
                }
            }
            if self.spec.view != View::Leases {
                let raw = self.state.faults.raw_lines_from(self.raw_cursor);
                if !raw.is_empty() {
                    self.raw_cursor += raw.len();
                    let mut buf = Vec::new();
                    for line in raw {
                        buf.extend_from_slice(line.as_bytes());
                        buf.push(b'\n');
                    }
                    let flow = self.send(buf).await;
                    if flow != Flow::Go {
                        return flow;
                    }
                }
            }
            self.writes_rx.borrow_and_update();
            let batch = self.state.lock().changes_after(self.cursor, BATCH);
            match batch {
                Err(_) => {
                    return match self.send(expired_error().watch_error_line()).await {
                        Flow::Go => Flow::Stop,
                        other => other,
                    };
                }
                Ok(changes) if !changes.is_empty() => {
                    let mut buf = Vec::new();
                    for c in &changes {
                        self.encoder.push_change(&mut buf, c);
                    }
                    if let Some(last) = changes.last() {
                        self.cursor = last.rv;
                    }
                    if !buf.is_empty() {
                        let flow = self.send(buf).await;
                        if flow != Flow::Go {
                            return flow;
                        }
                    }
                    continue;
                }
                Ok(_) => {}
            }
            let bookmark_at = self.next_bookmark;
            let bookmarks = self.spec.bookmarks;
            tokio::select! {
                r = self.writes_rx.changed() => if r.is_err() { return Flow::Stop },
                _ = self.faults_rx.changed() => {}
                () = sleep_until(self.deadline) => return Flow::Stop,
                () = sleep_until(bookmark_at), if bookmarks => {}
                () = self.tx.closed() => return Flow::Stop,
                () = self.state.shutdown.cancelled() => return Flow::Stop,
            }
        }
    }
}
