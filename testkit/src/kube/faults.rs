//! Fault injection: injected error statuses, latency, watch stalls and drops, and per-client
//! network partitions, plus the connection plumbing that makes "the connection just died"
//! possible (every accepted socket can be killed from a handler).
//!
//! Faults apply to the Kubernetes API paths only; this module must never affect the
//! `/emulator/*` control endpoints, and never hold a lock across an `.await`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State, connect_info::Connected};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::state::KubeState;
use super::status::ApiError;

// ---------------------------------------------------------------------------------------------
// Connections that can be killed.

/// A TCP connection that fails every read and write once its token is cancelled, so the HTTP
/// server drops it without sending anything more.
pub(crate) struct ConnIo {
    tcp: TcpStream,
    token: CancellationToken,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl ConnIo {
    fn killed(&mut self, cx: &mut Context<'_>) -> bool {
        self.cancelled.as_mut().poll(cx).is_ready()
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection killed by the emulator",
    )
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The listener: accepts TCP connections as [`ConnIo`]s whose tokens are children of `root`
/// (cancelling `root` kills every connection at once).
pub(crate) struct EmuListener {
    pub inner: TcpListener,
    pub root: CancellationToken,
}

impl Listener for EmuListener {
    type Io = ConnIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => {
                    // Small watch lines must not wait for Nagle.
                    let _ = tcp.set_nodelay(true);
                    let token = self.root.child_token();
                    let cancelled = Box::pin(token.clone().cancelled_owned());
                    return (
                        ConnIo {
                            tcp,
                            token,
                            cancelled,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    tracing::warn!(%e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Per-connection handle a handler uses to kill its own connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle(CancellationToken);

impl ConnHandle {
    pub fn kill(&self) {
        self.0.cancel();
    }
}

impl Connected<IncomingStream<'_, EmuListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, EmuListener>) -> Self {
        ConnHandle(stream.io().token.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Client identity.

/// Who sent a request: `User-Agent` and the optional `X-Client-Id` header.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientIds {
    pub user_agent: String,
    pub client_id: Option<String>,
}

impl ClientIds {
    pub fn from_headers(h: &http::HeaderMap) -> Self {
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Self {
            user_agent: get("user-agent").unwrap_or_default(),
            client_id: get("x-client-id"),
        }
    }

    /// The identity used in statistics: `X-Client-Id`, else `User-Agent`, else `unknown`.
    pub fn identity(&self) -> String {
        match &self.client_id {
            Some(id) if !id.is_empty() => id.clone(),
            _ if !self.user_agent.is_empty() => self.user_agent.clone(),
            _ => "unknown".to_owned(),
        }
    }

    fn matches(&self, pattern: &str) -> bool {
        self.user_agent.contains(pattern)
            || self
                .client_id
                .as_deref()
                .is_some_and(|c| c.contains(pattern))
    }
}

// ---------------------------------------------------------------------------------------------
// Fault state.

/// `POST /emulator/faults/errors`: answer `status` for matching requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorFault {
    /// HTTP status to answer (400–599), e.g. 500, 429, 503.
    pub status: u16,
    /// Only the next `count` matching requests (with `seconds`, whichever ends first).
    #[serde(default)]
    pub count: Option<u64>,
    /// Only for this many seconds. Without `count` and `seconds` the fault stays until cleared.
    #[serde(default)]
    pub seconds: Option<f64>,
    /// `Retry-After` header value (429 and 503 default to 1).
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
    /// Only requests whose path and query contain this string.
    #[serde(default)]
    pub path_contains: Option<String>,
}

/// `POST /emulator/faults/latency`: delay matching requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LatencyFault {
    /// Delay before the request is handled.
    pub millis: u64,
    /// For this many seconds (until cleared when absent).
    #[serde(default)]
    pub seconds: Option<f64>,
    /// Only requests whose path and query contain this string.
    #[serde(default)]
    pub path_contains: Option<String>,
}

#[derive(Debug, Clone)]
struct ErrorRule {
    fault: ErrorFault,
    remaining: Option<u64>,
    until: Option<Instant>,
}

#[derive(Debug, Clone)]
struct LatencyRule {
    fault: LatencyFault,
    until: Option<Instant>,
}

#[derive(Debug, Clone)]
struct PartitionRule {
    client: String,
    until: Option<Instant>,
}

#[derive(Debug, Default)]
struct FaultState {
    errors: Vec<ErrorRule>,
    latency: Vec<LatencyRule>,
    partitions: Vec<PartitionRule>,
    stall_until: Option<Instant>,
    drop_generation: u64,
    /// Raw lines injected into Event watch streams, in order (append-only).
    raw_lines: Vec<String>,
}

/// A snapshot of the active faults (for `GET /emulator/faults` and stats).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultSummary {
    /// Active error rules.
    pub errors: Vec<ErrorFault>,
    /// Active latency rules.
    pub latency: Vec<LatencyFault>,
    /// Partitioned client patterns.
    pub partitions: Vec<String>,
    /// Seconds left in the current watch stall.
    pub stall_seconds_left: f64,
    /// How many times watches were dropped.
    pub drop_generation: u64,
}

fn until(seconds: Option<f64>) -> Option<Instant> {
    seconds.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)))
}

/// All injected faults. Every change bumps a version that open watches observe.
pub struct Faults {
    inner: Mutex<FaultState>,
    changed: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            inner: Mutex::new(FaultState::default()),
            changed: watch::Sender::new(0),
        }
    }
}

impl Faults {
    fn with<R>(&self, f: impl FnOnce(&mut FaultState) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut g)
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Ends every open watch stream abruptly (broken chunked body). Returns the new generation.
    pub fn drop_watches(&self) -> u64 {
        let g = self.with(|s| {
            s.drop_generation += 1;
            s.drop_generation
        });
        self.bump();
        g
    }

    /// Open and new watches deliver nothing for `d`.
    pub fn stall_watches(&self, d: Duration) {
        self.with(|s| s.stall_until = Some(Instant::now() + d));
        self.bump();
    }

    /// Adds an error rule. Fails for a status outside 400–599.
    pub fn inject_errors(&self, fault: ErrorFault) -> Result<(), ApiError> {
        if !(400..=599).contains(&fault.status) {
            return Err(ApiError::bad_request("status must be 400-599"));
        }
        let rule = ErrorRule {
            remaining: fault.count,
            until: until(fault.seconds),
            fault,
        };
        self.with(|s| s.errors.push(rule));
        self.bump();
        Ok(())
    }

    /// Sends these lines verbatim (each followed by `\n`) on every Event watch open now, as if
    /// the server had written them: malformed JSON, unknown watch types, bare Status objects or
    /// objects with missing fields, to test how clients cope with bad input.
    pub fn inject_watch_lines(&self, lines: Vec<String>) {
        self.with(|s| s.raw_lines.extend(lines));
        self.bump();
    }

    /// How many raw lines were injected so far.
    pub(crate) fn raw_lines_len(&self) -> usize {
        self.with(|s| s.raw_lines.len())
    }

    /// The raw lines injected after the first `from`.
    pub(crate) fn raw_lines_from(&self, from: usize) -> Vec<String> {
        self.with(|s| {
            s.raw_lines
                .get(from..)
                .map(<[String]>::to_vec)
                .unwrap_or_default()
        })
    }

    /// Adds a latency rule.
    pub fn inject_latency(&self, fault: LatencyFault) {
        let rule = LatencyRule {
            until: until(fault.seconds),
            fault,
        };
        self.with(|s| s.latency.push(rule));
        self.bump();
    }

    /// Partitions clients whose `User-Agent` or `X-Client-Id` contains `client`.
    pub fn partition(&self, client: &str, duration: Option<Duration>) {
        let rule = PartitionRule {
            client: client.to_owned(),
            until: duration.map(|d| Instant::now() + d),
        };
        self.with(|s| s.partitions.push(rule));
        self.bump();
    }

    /// Heals the partition of `client` (every partition when `None`).
    pub fn heal(&self, client: Option<&str>) {
        self.with(|s| {
            s.partitions
                .retain(|p| client.is_some_and(|c| c != p.client));
        });
        self.bump();
    }

    /// Clears every fault (errors, latency, partitions, stall).
    pub fn clear(&self) {
        self.with(|s| {
            s.errors.clear();
            s.latency.clear();
            s.partitions.clear();
            s.stall_until = None;
        });
        self.bump();
    }

    /// The active faults.
    pub fn summary(&self) -> FaultSummary {
        let now = Instant::now();
        self.with(|s| FaultSummary {
            errors: s
                .errors
                .iter()
                .filter(|r| r.until.is_none_or(|u| u > now) && r.remaining != Some(0))
                .map(|r| ErrorFault {
                    count: r.remaining,
                    ..r.fault.clone()
                })
                .collect(),
            latency: s
                .latency
                .iter()
                .filter(|r| r.until.is_none_or(|u| u > now))
                .map(|r| r.fault.clone())
                .collect(),
            partitions: s
                .partitions
                .iter()
                .filter(|p| p.until.is_none_or(|u| u > now))
                .map(|p| p.client.clone())
                .collect(),
            stall_seconds_left: s
                .stall_until
                .map_or(0.0, |u| u.saturating_duration_since(now).as_secs_f64()),
            drop_generation: s.drop_generation,
        })
    }

    pub(crate) fn is_partitioned(&self, ids: &ClientIds) -> bool {
        let now = Instant::now();
        self.with(|s| {
            s.partitions.retain(|p| p.until.is_none_or(|u| u > now));
            s.partitions.iter().any(|p| ids.matches(&p.client))
        })
    }

    pub(crate) fn stalled_until(&self) -> Option<Instant> {
        let now = Instant::now();
        self.with(|s| s.stall_until.filter(|u| *u > now))
    }

    pub(crate) fn drop_generation(&self) -> u64 {
        self.with(|s| s.drop_generation)
    }

    fn latency_for(&self, path: &str) -> Option<Duration> {
        let now = Instant::now();
        self.with(|s| {
            s.latency.retain(|r| r.until.is_none_or(|u| u > now));
            s.latency
                .iter()
                .find(|r| {
                    r.fault
                        .path_contains
                        .as_deref()
                        .is_none_or(|p| path.contains(p))
                })
                .map(|r| Duration::from_millis(r.fault.millis))
        })
    }

    fn take_error(&self, path: &str) -> Option<ApiError> {
        let now = Instant::now();
        self.with(|s| {
            s.errors
                .retain(|r| r.until.is_none_or(|u| u > now) && r.remaining != Some(0));
            let rule = s.errors.iter_mut().find(|r| {
                r.fault
                    .path_contains
                    .as_deref()
                    .is_none_or(|p| path.contains(p))
            })?;
            if let Some(n) = rule.remaining.as_mut() {
                *n -= 1;
            }
            let retry = rule
                .fault
                .retry_after_seconds
                .or(matches!(rule.fault.status, 429 | 503).then_some(1));
            Some(ApiError::injected(rule.fault.status, retry))
        })
    }
}

/// Middleware applying partitions, latency and injected errors to Kubernetes API requests.
pub(crate) async fn middleware(
    State(state): State<Arc<KubeState>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if path == "/emulator" || path.starts_with("/emulator/") {
        return next.run(req).await;
    }
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.to_owned(), ToString::to_string);
    let ids = ClientIds::from_headers(req.headers());
    let faults = &state.faults;
    if faults.is_partitioned(&ids) {
        state.stats.count_faulted(&ids);
        if let Some(ConnectInfo(conn)) = req.extensions().get::<ConnectInfo<ConnHandle>>() {
            conn.kill();
        }
        // Never written: the connection is already dead.
        return ApiError::injected(503, None).into_response();
    }
    if let Some(delay) = faults.latency_for(&target) {
        tokio::time::sleep(delay).await;
    }
    if let Some(err) = faults.take_error(&target) {
        state.stats.count_faulted(&ids);
        return err.into_response();
    }
    next.run(req).await
}
