//! A tiny HTTP proxy on 127.0.0.1 for the egress proxy tests: it answers `CONNECT host:port` with a
//! tunnel and forwards absolute-form requests (`GET http://host:port/path`), and records every
//! target it was asked for.
//!
//! Whatever host a client names, the proxy connects to that port on 127.0.0.1: it stands for a
//! proxy that can resolve names the test machine cannot, and it never reaches beyond loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// Requests a head may have before the proxy gives up on it.
const MAX_HEAD: usize = 64 * 1024;

/// What a client asked the proxy for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// `CONNECT authority`: a tunnel (what kube's hyper-util `Tunnel` sends, for http and https).
    Connect(String),
    /// An absolute-form request to `authority` (what reqwest sends for a plain-http URL).
    Forward(String),
}

/// A running proxy; stops when dropped.
pub struct TestProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl TestProxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                // A broken connection only ends that connection.
                tokio::spawn(async move { drop(serve(stream, log).await) });
            }
        });
        Self { addr, seen, task }
    }

    /// `http://127.0.0.1:PORT`, the value for `HTTPS_PROXY`/`HTTP_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything asked for so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// `CONNECT`s so far.
    pub fn connects(&self) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| matches!(s, Seen::Connect(_)))
            .count()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut client: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) -> io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        if client.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_HEAD {
            return client.write_all(b"HTTP/1.1 431 Too Large\r\n\r\n").await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (authority, tunnel) = if method.eq_ignore_ascii_case("CONNECT") {
        (target.to_owned(), true)
    } else if let Some(rest) = target.strip_prefix("http://") {
        (rest.split('/').next().unwrap_or("").to_owned(), false)
    } else {
        return client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    };
    seen.lock().unwrap().push(if tunnel {
        Seen::Connect(authority.clone())
    } else {
        Seen::Forward(authority.clone())
    });
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .unwrap_or(if tunnel { 443 } else { 80 });
    let Ok(mut upstream) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await
    else {
        return client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
    };
    if tunnel {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        // Bytes the client sent after the CONNECT head belong to the tunnel.
        upstream.write_all(&buf[head_end..]).await?;
    } else {
        // Sent on as is: an HTTP/1.1 server must accept the absolute form (RFC 9112 §3.2.2).
        upstream.write_all(&buf).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
