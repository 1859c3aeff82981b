//! Kubernetes API errors as the apiserver reports them: an HTTP status plus a `meta.k8s.io/v1`
//! `Status` body with the reason, message and details the real server uses.
//!
//! This module only builds errors and their wire form; it must never decide *when* an error
//! happens (that belongs to the handlers and the store) and never invent reasons the real
//! apiserver does not use.

use std::fmt::{self, Write as _};

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

/// The message the apiserver uses for an optimistic-concurrency conflict (`store.go`).
pub(crate) const OPTIMISTIC_LOCK_MSG: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// `group` + plural `resource`, e.g. `leases.coordination.k8s.io` (core group: just `events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupResource {
    pub group: &'static str,
    pub resource: &'static str,
}

impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// `group` + `Kind`, e.g. `Lease.coordination.k8s.io` (core group: just `Event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupKind {
    pub group: &'static str,
    pub kind: &'static str,
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// One field validation failure, formatted like apimachinery's `field.Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
    pub detail: String,
}

/// The `field.ErrorType` variants the emulator reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldErrorKind {
    /// `Required value`.
    Required,
    /// `Invalid value: <value>`; the value is already rendered the way Go's `%#v` would.
    Invalid(String),
    /// `Forbidden`.
    Forbidden,
    /// `Unsupported value: <value>`.
    NotSupported(String),
}

impl FieldError {
    pub fn required(field: &str, detail: &str) -> Self {
        Self {
            field: field.to_owned(),
            kind: FieldErrorKind::Required,
            detail: detail.to_owned(),
        }
    }

    pub fn invalid(field: &str, value: impl Into<String>, detail: &str) -> Self {
        Self {
            field: field.to_owned(),
            kind: FieldErrorKind::Invalid(value.into()),
            detail: detail.to_owned(),
        }
    }

    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self {
            field: field.to_owned(),
            kind: FieldErrorKind::Forbidden,
            detail: detail.to_owned(),
        }
    }

    pub fn not_supported(field: &str, value: impl Into<String>, detail: &str) -> Self {
        Self {
            field: field.to_owned(),
            kind: FieldErrorKind::NotSupported(value.into()),
            detail: detail.to_owned(),
        }
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::NotSupported(_) => "FieldValueNotSupported",
        }
    }

    /// The message without the field path (`ErrorBody()` in Go).
    fn body(&self) -> String {
        let head = match &self.kind {
            FieldErrorKind::Required => "Required value".to_owned(),
            FieldErrorKind::Invalid(v) => format!("Invalid value: {v}"),
            FieldErrorKind::Forbidden => "Forbidden".to_owned(),
            FieldErrorKind::NotSupported(v) => format!("Unsupported value: {v}"),
        };
        if self.detail.is_empty() {
            head
        } else {
            format!("{head}: {}", self.detail)
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// `Status.details` naming an object: Go omits an empty `group` (core resources), so no
/// `"group": ""` here either.
pub(crate) fn details(name: &str, group: &str, kind: &str) -> Value {
    if group.is_empty() {
        json!({"name": name, "kind": kind})
    } else {
        json!({"name": name, "group": group, "kind": kind})
    }
}

/// Renders a string the way Go's `%q` / `%#v` shows it inside field errors.
pub(crate) fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// An error answered by the emulated API server: HTTP status code + `Status` body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    /// HTTP status code, also `Status.code`.
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`, `Conflict`, `Invalid`, `Expired`.
    pub reason: String,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, when the real server sends them.
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// `Status.metadata.continue` (the inconsistent continuation an expired token offers).
    /// Boxed to keep the error small.
    pub continue_token: Option<Box<str>>,
}

impl ApiError {
    fn new(code: u16, reason: &str, message: String) -> Self {
        Self {
            code,
            reason: reason.to_owned(),
            message,
            details: None,
            retry_after: None,
            continue_token: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub(crate) fn not_found(gr: GroupResource, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{gr} {} not found", quoted(name)))
            .with_details(details(name, gr.group, gr.resource))
    }

    /// 404 for a path the API does not serve.
    pub(crate) fn no_such_resource() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".to_owned(),
        )
        .with_details(json!({}))
    }

    pub(crate) fn already_exists(gr: GroupResource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{gr} {} already exists", quoted(name)),
        )
        .with_details(details(name, gr.group, gr.resource))
    }

    pub(crate) fn conflict(gr: GroupResource, name: &str, detail: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {gr} {}: {detail}",
                quoted(name)
            ),
        )
        .with_details(details(name, gr.group, gr.resource))
    }

    pub(crate) fn invalid(gk: GroupKind, name: &str, errors: &[FieldError]) -> Self {
        Self::invalid_as(&gk.to_string(), gk.group, gk.kind, name, errors)
    }

    /// 422 raised by the storage layer rather than the strategy (e.g. an update without a
    /// resourceVersion): it names the group *resource* (`leases.coordination.k8s.io`,
    /// `details.kind: "leases"`) where validation names the kind.
    pub(crate) fn invalid_resource(gr: GroupResource, name: &str, errors: &[FieldError]) -> Self {
        Self::invalid_as(&gr.to_string(), gr.group, gr.resource, name, errors)
    }

    fn invalid_as(
        qualified: &str,
        group: &str,
        kind: &str,
        name: &str,
        errors: &[FieldError],
    ) -> Self {
        let aggregate = match errors {
            [one] => one.to_string(),
            many => format!(
                "[{}]",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason(), "message": e.body(), "field": e.field}))
            .collect();
        Self::new(
            422,
            "Invalid",
            format!("{qualified} {} is invalid: {aggregate}", quoted(name)),
        )
        .with_details({
            let mut d = details(name, group, kind);
            d["causes"] = Value::Array(causes);
            d
        })
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into())
    }

    pub(crate) fn unprocessable_patch(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message.into())
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message.into())
    }

    /// 410 for a continue token whose snapshot is compacted, offering `continue_token`: the rest
    /// of the list at the current state (`handleCompactedErrorForPaginatedList`).
    pub(crate) fn expired_continue(continue_token: String) -> Self {
        let mut e = Self::expired(
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter, or use the continue token \
             in this response to retrieve the remainder of the results. Continuing with the \
             provided token results in an inconsistent list - objects that were created, \
             modified, or deleted between the time the first chunk was returned and now may show \
             up in the list.",
        );
        e.continue_token = Some(continue_token.into_boxed_str());
        e
    }

    pub(crate) fn method_not_allowed(gr: GroupResource, action: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!(
                "{action} is not supported on resources of kind {}",
                quoted(&gr.to_string())
            ),
        )
        .with_details({
            let mut d = details("", gr.group, gr.resource);
            if let Some(m) = d.as_object_mut() {
                m.remove("name");
            }
            d
        })
    }

    pub(crate) fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message.into())
    }

    pub(crate) fn too_large_body() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728".into(),
        )
    }

    /// 504 for a LIST at a resourceVersion the server has not reached within its wait
    /// (`storage.NewTooLargeResourceVersionError`): no `Retry-After`, one cause.
    pub(crate) fn too_large_resource_version(wanted: u64, current: u64) -> Self {
        Self::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {wanted}, current: {current}"),
        )
        .with_details(json!({"causes": [
            {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
        ]}))
    }

    /// 500 for an error the apiserver does not classify (Go's `InternalError` without a
    /// reason), e.g. a resourceVersion that is not a number: `strconv.ParseUint: …`.
    pub(crate) fn unclassified(message: impl Into<String>) -> Self {
        Self::new(500, "", message.into())
    }

    /// The answer for an injected fault with status `code`.
    pub(crate) fn injected(code: u16, retry_after: Option<u64>) -> Self {
        let mut e = match code {
            429 => Self::new(429, "TooManyRequests", "Too many requests, please try again later.".into())
                .with_details(json!({"retryAfterSeconds": retry_after.unwrap_or(1)})),
            500 => Self::new(
                500,
                "InternalError",
                "Internal error occurred: injected by the emulator".into(),
            )
            .with_details(json!({"causes": [{"message": "injected by the emulator"}]})),
            503 => Self::new(503, "ServiceUnavailable", "The server is currently unable to handle the request (injected by the emulator)".into()),
            504 => Self::new(504, "Timeout", "The server was unable to return a response in the time allotted, but may still be processing the request (injected by the emulator)".into()),
            other => Self::new(other, "Unknown", format!("injected HTTP {other} by the emulator")),
        };
        e.retry_after = retry_after;
        e
    }

    /// The `Status` object (`kind: Status`) as JSON.
    #[must_use]
    pub fn status_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), "Status".into());
        m.insert("apiVersion".into(), "v1".into());
        m.insert("metadata".into(), self.metadata());
        m.insert("status".into(), "Failure".into());
        m.insert("message".into(), self.message.clone().into());
        if !self.reason.is_empty() {
            m.insert("reason".into(), self.reason.clone().into());
        }
        if let Some(d) = &self.details {
            m.insert("details".into(), d.clone());
        }
        m.insert("code".into(), self.code.into());
        Value::Object(m)
    }

    fn metadata(&self) -> Value {
        match &self.continue_token {
            Some(token) => json!({"continue": &**token}),
            None => json!({}),
        }
    }

    /// One watch-stream line `{"type":"ERROR","object":<Status>}\n`.
    pub(crate) fn watch_error_line(&self) -> Vec<u8> {
        let mut line = b"{\"type\":\"ERROR\",\"object\":".to_vec();
        line.extend_from_slice(&self.status_bytes());
        line.extend_from_slice(b"}\n");
        line
    }

    /// The `Status` serialised in the apiserver's field order (kind, apiVersion, metadata,
    /// status, message, reason, details, code).
    #[must_use]
    pub fn status_bytes(&self) -> Vec<u8> {
        let quote = |v: &str| serde_json::to_string(v).unwrap_or_default();
        let mut out = format!(
            "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":{}",
            self.metadata(),
            quote(&self.message),
        );
        // Go's `reason` is `omitempty`.
        if !self.reason.is_empty() {
            let _ = write!(out, ",\"reason\":{}", quote(&self.reason));
        }
        if let Some(d) = &self.details {
            out.push_str(",\"details\":");
            out.push_str(&serde_json::to_string(d).unwrap_or_default());
        }
        let _ = write!(out, ",\"code\":{}}}", self.code);
        out.into_bytes()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.status_bytes()).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn invalid_message_names_kind_name_and_field() {
        let gk = GroupKind {
            group: "coordination.k8s.io",
            kind: "Lease",
        };
        let e = ApiError::invalid(
            gk,
            "l1",
            &[FieldError::invalid(
                "metadata.resourceVersion",
                "0",
                "must be specified for an update",
            )],
        );
        assert_eq!(
            e.message,
            "Lease.coordination.k8s.io \"l1\" is invalid: metadata.resourceVersion: Invalid value: 0: must be specified for an update"
        );
        assert_eq!(e.code, 422);
    }

    #[test]
    fn status_bytes_are_valid_json_equal_to_status_json() {
        let e = ApiError::expired("too old");
        let parsed: Value = serde_json::from_slice(&e.status_bytes()).unwrap();
        assert_eq!(parsed, e.status_json());
        let gr = GroupResource {
            group: "",
            resource: "events",
        };
        let e = ApiError::not_found(gr, "x");
        let parsed: Value = serde_json::from_slice(&e.status_bytes()).unwrap();
        assert_eq!(parsed, e.status_json());
    }

    #[test]
    fn conflict_message_matches_the_apiserver() {
        let gr = GroupResource {
            group: "coordination.k8s.io",
            resource: "leases",
        };
        let e = ApiError::conflict(gr, "l1", OPTIMISTIC_LOCK_MSG);
        assert_eq!(
            e.message,
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"l1\": the object has been modified; please apply your changes to the latest version and try again"
        );
    }
}
