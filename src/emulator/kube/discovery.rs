//! Legacy (unaggregated) discovery documents and `/version`, enough for kubectl and for
//! `kube::Discovery`: core v1 (events), events.k8s.io/v1 and coordination.k8s.io/v1.
//!
//! Static documents only; must never advertise a resource or verb the emulator does not serve.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::server::AppState;

const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

fn event_resource() -> Value {
    json!({
        "name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
        "verbs": VERBS, "shortNames": ["ev"]
    })
}

/// `GET /version`.
pub(crate) async fn version() -> Response {
    Json(json!({
        "major": "1",
        "minor": "34",
        "emulationMajor": "1",
        "emulationMinor": "34",
        "gitVersion": "v1.34.0-kevents-emulator",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    }))
    .into_response()
}

/// `GET /api`.
pub(crate) async fn api_versions(State(app): State<AppState>) -> Response {
    let addr: SocketAddr = app.addr;
    Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}]
    }))
    .into_response()
}

/// `GET /api/v1`.
pub(crate) async fn core_v1() -> Response {
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "v1",
        "resources": [event_resource()]
    }))
    .into_response()
}

fn group(name: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `GET /apis`.
pub(crate) async fn api_groups() -> Response {
    Json(json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [group("events.k8s.io"), group("coordination.k8s.io")]
    }))
    .into_response()
}

/// `GET /apis/events.k8s.io`.
pub(crate) async fn events_group() -> Response {
    let mut g = group("events.k8s.io");
    g["kind"] = "APIGroup".into();
    g["apiVersion"] = "v1".into();
    Json(g).into_response()
}

/// `GET /apis/coordination.k8s.io`.
pub(crate) async fn coordination_group() -> Response {
    let mut g = group("coordination.k8s.io");
    g["kind"] = "APIGroup".into();
    g["apiVersion"] = "v1".into();
    Json(g).into_response()
}

/// `GET /apis/events.k8s.io/v1`.
pub(crate) async fn events_v1() -> Response {
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "events.k8s.io/v1",
        "resources": [event_resource()]
    }))
    .into_response()
}

/// `GET /apis/coordination.k8s.io/v1`.
pub(crate) async fn coordination_v1() -> Response {
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "coordination.k8s.io/v1",
        "resources": [{
            "name": "leases", "singularName": "lease", "namespaced": true, "kind": "Lease",
            "verbs": VERBS
        }]
    }))
    .into_response()
}

/// `GET /healthz`, `/livez`, `/readyz`.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}
