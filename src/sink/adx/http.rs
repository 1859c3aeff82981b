//! The plumbing of every ADX request: the reqwest clients with their request metrics, the headers
//! each Kusto request carries, the bearer token on a request, and the reading of a Kusto or
//! storage error body into [`Error::Status`].
//!
//! Owns how a request is sent and how an answer becomes an error. It never decides what to do
//! about a failure (retry, fall back, dead-letter: the sink's modes do), and it must never log or
//! keep a token or a URL's query string: reqwest errors are stripped of their URL, and storage
//! error messages (which can echo request details) are dropped.

use std::time::{Duration, Instant};

use reqwest::{RequestBuilder, Response, StatusCode};

use super::{Error, Inner, Operation, Result};
use crate::telemetry::Metrics;

/// `x-ms-version` of storage requests (anything from 2019-12-12 works).
pub(super) const STORAGE_VERSION: &str = "2025-07-05";
/// `x-ms-version` of Kusto requests (the Python SDK's value).
const KUSTO_VERSION: &str = "2024-12-12";

/// The HTTP client with its metrics.
pub(crate) struct Http {
    pub(super) client: reqwest::Client,
    /// A client that never goes through a proxy, for the instance metadata endpoint (link-local:
    /// a proxy cannot reach it, and AKS's HTTP-proxy feature sets `HTTPS_PROXY` in every pod).
    /// Built for managed identity only.
    pub(super) direct: Option<reqwest::Client>,
    pub(super) metrics: Metrics,
}

impl Http {
    /// Sends `request`; a status outside 2xx and `accept` becomes [`Error::Status`] (its body is
    /// read for the service's error code). Records the request metrics.
    pub(super) async fn send(
        &self,
        operation: Operation,
        request: RequestBuilder,
        endpoint: &str,
        accept: &[StatusCode],
    ) -> Result<Response> {
        let started = Instant::now();
        let result = request.send().await;
        self.metrics
            .adx_request_duration
            .with_label_values(&[operation.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let outcome = |label: &str| {
            self.metrics
                .adx_requests
                .with_label_values(&[operation.as_str(), label])
                .inc();
        };
        let response = match result {
            Ok(response) => response,
            Err(source) => {
                outcome("retriable_error");
                return Err(Error::Http {
                    operation,
                    endpoint: endpoint.to_owned(),
                    source: source.without_url(),
                });
            }
        };
        let status = response.status();
        if status.is_success() || accept.contains(&status) {
            outcome("success");
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.unwrap_or_default();
        let (code, message, flag) = parse_error_body(&body);
        let permanent = operation == Operation::Streaming && streaming_is_permanent(status, flag);
        // A query refused for want of a role will not succeed by being retried either.
        let refused = operation == Operation::Query && status == StatusCode::FORBIDDEN;
        outcome(if status == StatusCode::TOO_MANY_REQUESTS {
            "throttled"
        } else if permanent || refused {
            "permanent_error"
        } else {
            "retriable_error"
        });
        Err(Error::Status {
            operation,
            endpoint: endpoint.to_owned(),
            status: status.as_u16(),
            code,
            message,
            permanent,
            retry_after,
        })
    }
}

/// Kusto's rule (`reference/adx-ingestion.md` §4): decide on `@permanent`; without the flag, a
/// client error other than auth, not-found, timeout and throttling is permanent.
pub(super) fn streaming_is_permanent(status: StatusCode, flag: Option<bool>) -> bool {
    if status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 404 | 408 | 413 | 429) {
        return false;
    }
    flag.unwrap_or(status.is_client_error())
}

/// `(code, message, @permanent)` from a Kusto JSON error or a storage XML error body. Storage
/// messages are dropped (only the code is kept): they can echo request details.
pub(super) fn parse_error_body(body: &[u8]) -> (Option<String>, String, Option<bool>) {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        // AAD: `{"error": "invalid_client", "error_description": "AADSTS…"}`.
        if let Some(code) = json.get("error").and_then(serde_json::Value::as_str) {
            let description = json
                .get("error_description")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            return (Some(code.to_owned()), shorten(description), None);
        }
        let error = json.get("error").unwrap_or(&json);
        let text = |key: &str| {
            error
                .get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let message = text("@message")
            .or_else(|| text("message"))
            .unwrap_or_default();
        return (
            text("code"),
            shorten(&message),
            error.get("@permanent").and_then(serde_json::Value::as_bool),
        );
    }
    let text = String::from_utf8_lossy(body);
    if let Some(code) = xml_text(&text, "Code") {
        return (Some(code.to_owned()), String::new(), None);
    }
    (None, shorten(&text), None)
}

fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The text of the first `<tag>…</tag>` in `xml`.
pub(super) fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(&xml[start..end])
}

impl Inner {
    /// The headers every Kusto request carries.
    pub(super) fn kusto_request(request: RequestBuilder, request_id: &str) -> RequestBuilder {
        request
            .header("Accept", "application/json")
            .header("x-ms-version", KUSTO_VERSION)
            .header("x-ms-client-request-id", request_id)
            .header("x-ms-app", "kevents")
            .header(
                "x-ms-client-version",
                concat!("kevents:", env!("CARGO_PKG_VERSION")),
            )
    }

    /// Adds the bearer token, if any.
    pub(super) async fn authorize(&self, request: RequestBuilder) -> Result<RequestBuilder> {
        use secrecy::ExposeSecret as _;
        Ok(match self.tokens.token(&self.http).await? {
            Some(token) => request.bearer_auth(token.expose_secret()),
            None => request,
        })
    }

    /// A 401 means the token is no good any more: fetch a new one next time.
    pub(super) async fn on_error(&self, error: &Error) {
        if error.status() == Some(401) {
            self.tokens.invalidate().await;
        }
    }
}
