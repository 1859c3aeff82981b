//! The `/emulator/*` control endpoints (a path the Kubernetes API never uses): compaction,
//! settings, statistics, the generator, the ground-truth record and fault injection. JSON in,
//! JSON out; errors are `{"error": "..."}` with a 4xx status.
//!
//! Thin adapters over `KubeState`; they must never be subject to injected faults (the fault
//! middleware skips this prefix) and never implement behaviour themselves.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::faults::{ErrorFault, LatencyFault};
use super::generator::GeneratorConfig;
use super::server::AppState;
use super::state::Settings;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/emulator/compact", post(compact))
        .route("/emulator/settings", get(get_settings).put(put_settings))
        .route("/emulator/stats", get(stats))
        .route("/emulator/generator", get(get_generator).put(put_generator))
        .route("/emulator/ground-truth", get(ground_truth))
        .route("/emulator/faults", get(faults))
        .route("/emulator/faults/drop-watches", post(drop_watches))
        .route("/emulator/faults/stall-watches", post(stall_watches))
        .route("/emulator/faults/errors", post(errors))
        .route("/emulator/faults/latency", post(latency))
        .route("/emulator/faults/partition", post(partition).delete(heal))
        .route("/emulator/faults/clear", post(clear))
}

/// A rejected control request (400 with `{"error": …}`).
struct Bad(String);

impl IntoResponse for Bad {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, Json(json!({"error": self.0}))).into_response()
    }
}

fn bad(msg: impl std::fmt::Display) -> Bad {
    Bad(msg.to_string())
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Bad> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid request body: {e}")))
}

fn seconds(s: f64) -> Result<Duration, Bad> {
    Duration::try_from_secs_f64(s).map_err(|_| bad(format!("invalid number of seconds: {s}")))
}

async fn compact(State(app): State<AppState>) -> Response {
    let compacted = app.state.compact_now();
    Json(json!({
        "compactedResourceVersion": compacted.to_string(),
        "resourceVersion": app.state.resource_version().to_string(),
    }))
    .into_response()
}

fn settings_json(s: &Settings) -> Value {
    json!({
        "eventTtlSeconds": s.event_ttl.as_secs_f64(),
        "compactionIntervalSeconds": s.compaction_interval.map(|d| d.as_secs_f64()),
        "eventBookmarks": s.event_bookmarks,
        "bookmarkIntervalSeconds": s.bookmark_interval.as_secs_f64(),
    })
}

async fn get_settings(State(app): State<AppState>) -> Response {
    Json(settings_json(&app.state.settings())).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SettingsBody {
    /// 0 disables automatic compaction.
    compaction_interval_seconds: Option<f64>,
    event_ttl_seconds: Option<f64>,
    event_bookmarks: Option<bool>,
    bookmark_interval_seconds: Option<f64>,
}

async fn put_settings(State(app): State<AppState>, body: Bytes) -> Response {
    let run = || -> Result<Response, Bad> {
        let b: SettingsBody = parse(&body)?;
        let ttl = b.event_ttl_seconds.map(seconds).transpose()?;
        let compaction = b.compaction_interval_seconds.map(seconds).transpose()?;
        let bookmark = b.bookmark_interval_seconds.map(seconds).transpose()?;
        if let Some(ttl) = ttl {
            app.state.set_event_ttl(ttl);
        }
        if let Some(c) = compaction {
            app.state
                .set_compaction_interval((!c.is_zero()).then_some(c));
        }
        if let Some(on) = b.event_bookmarks {
            app.state.set_event_bookmarks(on);
        }
        if let Some(every) = bookmark.filter(|d| !d.is_zero()) {
            app.state.set_bookmark_interval(every);
        }
        Ok(Json(settings_json(&app.state.settings())).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

async fn stats(State(app): State<AppState>) -> Response {
    Json(app.state.stats()).into_response()
}

async fn get_generator(State(app): State<AppState>) -> Response {
    Json(json!({"generator": app.state.generator()})).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GeneratorBody {
    events_per_second: f64,
    update_ratio: Option<f64>,
    seed: Option<u64>,
    namespaces: Option<usize>,
}

async fn put_generator(State(app): State<AppState>, body: Bytes) -> Response {
    let b: GeneratorBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if !b.events_per_second.is_finite() || b.events_per_second < 0.0 {
        return bad("eventsPerSecond must be a finite number >= 0").into_response();
    }
    if b.update_ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        return bad("updateRatio must be within 0..1").into_response();
    }
    let base = app.state.generator().unwrap_or_default();
    let config = GeneratorConfig {
        events_per_second: b.events_per_second,
        update_ratio: b.update_ratio.unwrap_or(base.update_ratio),
        seed: b.seed.unwrap_or(base.seed),
        namespaces: b.namespaces.unwrap_or(base.namespaces),
    };
    app.state.set_generator(Some(config));
    Json(json!({"generator": app.state.generator()})).into_response()
}

#[derive(Deserialize)]
struct SinceQuery {
    since: Option<u64>,
}

async fn ground_truth(State(app): State<AppState>, Query(q): Query<SinceQuery>) -> Response {
    let versions = app.state.ground_truth(q.since);
    Json(json!({"resourceVersion": app.state.resource_version().to_string(), "versions": versions}))
        .into_response()
}

async fn faults(State(app): State<AppState>) -> Response {
    Json(app.state.faults().summary()).into_response()
}

async fn drop_watches(State(app): State<AppState>) -> Response {
    let open = app.state.stats().open_watches;
    let generation = app.state.faults().drop_watches();
    Json(json!({"dropGeneration": generation, "openWatches": open})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StallBody {
    seconds: f64,
}

async fn stall_watches(State(app): State<AppState>, body: Bytes) -> Response {
    let run = || -> Result<Response, Bad> {
        let b: StallBody = parse(&body)?;
        app.state.faults().stall_watches(seconds(b.seconds)?);
        Ok(Json(app.state.faults().summary()).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

async fn errors(State(app): State<AppState>, body: Bytes) -> Response {
    let fault: ErrorFault = match parse(&body) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    match app.state.faults().inject_errors(fault) {
        Ok(()) => Json(app.state.faults().summary()).into_response(),
        Err(e) => bad(e.message).into_response(),
    }
}

async fn latency(State(app): State<AppState>, body: Bytes) -> Response {
    let fault: LatencyFault = match parse(&body) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    app.state.faults().inject_latency(fault);
    Json(app.state.faults().summary()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionBody {
    client: String,
    seconds: Option<f64>,
}

async fn partition(State(app): State<AppState>, body: Bytes) -> Response {
    let run = || -> Result<Response, Bad> {
        let b: PartitionBody = parse(&body)?;
        if b.client.is_empty() {
            return Err(bad("client must not be empty"));
        }
        let d = b.seconds.map(seconds).transpose()?;
        app.state.faults().partition(&b.client, d);
        Ok(Json(app.state.faults().summary()).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
struct HealQuery {
    client: Option<String>,
}

async fn heal(State(app): State<AppState>, Query(q): Query<HealQuery>) -> Response {
    app.state.faults().heal(q.client.as_deref());
    Json(app.state.faults().summary()).into_response()
}

async fn clear(State(app): State<AppState>) -> Response {
    app.state.faults().clear();
    Json(app.state.faults().summary()).into_response()
}
