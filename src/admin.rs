//! The admin HTTP server: `/livez`, `/readyz`, `/metrics`, `/status`.
//!
//! Owns routing and rendering only; it reads the status board and the metrics registry and never
//! changes pipeline state. It must stay cheap: probes hit it every few seconds.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{Liveness, Metrics, StatusBoard};

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Metrics registry.
    pub metrics: Metrics,
    /// Status and readiness.
    pub board: Arc<StatusBoard>,
    /// Whether the process is wedged.
    pub liveness: Arc<Liveness>,
}

/// The router, for serving or for in-process tests.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state)
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// Fails if accepting connections fails.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn livez(State(state): State<AdminState>) -> Response {
    match state.liveness.check() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("wedged\n{}\n", reasons.join("\n")),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.board.readiness() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", reasons.join("\n")),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.metrics.render(),
    )
        .into_response()
}

async fn status(State(state): State<AdminState>) -> Response {
    axum::Json(state.board.snapshot()).into_response()
}
