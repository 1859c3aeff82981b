//! The admin HTTP server: `/livez`, `/readyz`, `/metrics`, `/status`, and the dead tree
//! (`GET /dead`, `POST /dead/replay`).
//!
//! Owns routing and rendering only; it reads the status board and the metrics registry. Its one
//! write, a replay of dead batches, goes through the running leader's [`DeadSlot`] and so under
//! that term's fence; a replica that is not leading answers 503 and writes nothing. It must stay
//! cheap: probes hit it every few seconds.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    dead::{self, DeadSlot, ReplayReport, ReplayRequest},
    telemetry::{Liveness, Metrics, StatusBoard, error_chain},
};

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
    /// The running leader's dead tree; empty while this replica does not lead.
    pub dead: DeadSlot,
}

/// The router, for serving or for in-process tests.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/dead", get(dead_list))
        .route("/dead/replay", post(dead_replay))
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

#[derive(Debug, Default, serde::Deserialize)]
struct DeadListQuery {
    #[serde(default)]
    payload: bool,
}

async fn dead_list(
    State(state): State<AdminState>,
    Query(query): Query<DeadListQuery>,
) -> Response {
    let Some(handle) = state.dead.current() else {
        return not_leader();
    };
    match handle.list(query.payload).await {
        Ok(listing) => Json(listing).into_response(),
        Err(error) => dead_error(&error),
    }
}

async fn dead_replay(
    State(state): State<AdminState>,
    Json(request): Json<ReplayRequest>,
) -> Response {
    let selection = match request.selection() {
        Ok(selection) => selection,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, message),
    };
    let Some(handle) = state.dead.current() else {
        return not_leader();
    };
    match handle.replay(selection).await {
        Ok(outcome) => Json(ReplayReport::from(outcome)).into_response(),
        Err(error) => dead_error(&error),
    }
}

fn not_leader() -> Response {
    json_error(StatusCode::SERVICE_UNAVAILABLE, dead::NOT_LEADER)
}

fn dead_error(error: &dead::Error) -> Response {
    let status = if error.is_fenced() || matches!(error, dead::Error::Stuck(_)) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    json_error(status, &error_chain(error))
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests;
