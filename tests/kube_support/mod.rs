//! Shared helpers for the Kubernetes emulator tests: starting an emulator, kube clients with a
//! client identity, a raw HTTP/1.1 client over `TcpStream` (to see status lines, headers,
//! chunk framing and dead connections exactly), and polling with a deadline.
//!
//! Test-only; must never sleep a fixed time to wait for something (poll with a deadline).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kevents_testkit::kube::{KubeEmulator, KubeEmulatorConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Starts an emulator on a random loopback port without automatic compaction.
pub async fn start() -> KubeEmulator {
    start_with(KubeEmulatorConfig {
        compaction_interval: None,
        ..KubeEmulatorConfig::default()
    })
    .await
}

pub async fn start_with(config: KubeEmulatorConfig) -> KubeEmulator {
    KubeEmulator::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("emulator starts")
}

/// A kube client that identifies itself with `X-Client-Id: id`.
pub fn client_with_id(emu: &KubeEmulator, id: &str) -> kube::Client {
    let mut cfg = kube::Config::new(emu.url().parse().unwrap());
    cfg.headers.push((
        http::HeaderName::from_static("x-client-id"),
        http::HeaderValue::from_str(id).unwrap(),
    ));
    kube::Client::try_from(cfg).unwrap()
}

/// A kube client without the default 429/503/504 retries.
pub fn client_without_retry(emu: &KubeEmulator) -> kube::Client {
    let mut cfg = kube::Config::new(emu.url().parse().unwrap());
    cfg.default_retry = false;
    kube::Client::try_from(cfg).unwrap()
}

/// A legacy-style (core/v1, count/firstTimestamp) Event about a Pod.
pub fn legacy_event(ns: &str, name: &str) -> Event {
    let now = Time(jiff::Timestamp::now());
    Event {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(format!("{name}-pod")),
            namespace: Some(ns.into()),
            ..ObjectReference::default()
        },
        reason: Some("Started".into()),
        message: Some(format!("Started container for {name}")),
        type_: Some("Normal".into()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some("node-1".into()),
        }),
        ..Event::default()
    }
}

/// Polls `f` every 20 ms until it yields `Some`, failing after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A complete raw HTTP response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    if let Some(b) = body {
        let _ = write!(req, "Content-Length: {}\r\n", b.len());
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

async fn read_head(
    reader: &mut BufReader<TcpStream>,
) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).await?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok((status, headers))
}

/// One request on a fresh connection; `Err` when the server closes it without answering.
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(&request_bytes(method, path, headers, body))
        .await?;
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader).await?;
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        let mut chunks = ChunkReader {
            reader,
            done: false,
        };
        while let Some(c) = chunks.next_chunk().await? {
            body.extend_from_slice(&c);
        }
    } else {
        reader.read_to_end(&mut body).await?;
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

struct ChunkReader {
    reader: BufReader<TcpStream>,
    done: bool,
}

impl ChunkReader {
    /// The next chunk; `Ok(None)` at the terminating chunk; `Err` if the stream breaks.
    async fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let broken = || {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "chunked body ended without its last chunk",
            )
        };
        let mut size = String::new();
        if self
            .reader
            .read_line(&mut size)
            .await
            .map_err(|_| broken())?
            == 0
        {
            return Err(broken());
        }
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or_default(), 16)
            .map_err(|_| broken())?;
        let mut data = vec![0; n + 2];
        self.reader
            .read_exact(&mut data)
            .await
            .map_err(|_| broken())?;
        data.truncate(n);
        if n == 0 {
            self.done = true;
            return Ok(None);
        }
        Ok(Some(data))
    }
}

/// How reading a watch line ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Line(String),
    /// The server ended the body properly (terminating chunk).
    CleanEnd,
    /// The connection died mid-body.
    Broken,
    /// Nothing arrived in time.
    Timeout,
}

/// A raw watch stream read line by line.
pub struct RawWatch {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    chunks: ChunkReader,
    pending: Vec<u8>,
    /// Start of the unread part of `pending`.
    pos: usize,
    ended: Option<Next>,
}

impl RawWatch {
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(&request_bytes("GET", path, headers, None))
            .await?;
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader).await?;
        Ok(Self {
            status,
            headers,
            chunks: ChunkReader {
                reader,
                done: false,
            },
            pending: Vec::new(),
            pos: 0,
            ended: None,
        })
    }

    pub async fn next(&mut self, timeout: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.pending[self.pos..].iter().position(|b| *b == b'\n') {
                let line =
                    String::from_utf8_lossy(&self.pending[self.pos..self.pos + i]).into_owned();
                self.pos += i + 1;
                if self.pos == self.pending.len() {
                    self.pending.clear();
                    self.pos = 0;
                }
                return Next::Line(line);
            }
            if let Some(end) = &self.ended {
                return match end {
                    Next::CleanEnd => Next::CleanEnd,
                    _ => Next::Broken,
                };
            }
            match tokio::time::timeout_at(deadline, self.chunks.next_chunk()).await {
                Err(_) => return Next::Timeout,
                Ok(Ok(Some(c))) => self.pending.extend_from_slice(&c),
                Ok(Ok(None)) => self.ended = Some(Next::CleanEnd),
                Ok(Err(_)) => self.ended = Some(Next::Broken),
            }
        }
    }

    /// The next line parsed as JSON (panics on anything else).
    pub async fn next_json(&mut self, timeout: Duration) -> serde_json::Value {
        match self.next(timeout).await {
            Next::Line(l) => {
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad watch line {l:?}: {e}"))
            }
            other => panic!("expected a watch line, got {other:?}"),
        }
    }
}
