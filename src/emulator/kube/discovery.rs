//! Legacy (unaggregated) discovery documents, `/version` and a minimal `OpenAPI` v3, enough for
//! `kubectl` and for `kube::Discovery`: core v1 (events), events.k8s.io/v1 and
//! coordination.k8s.io/v1.
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

/// The group-versions served, as `OpenAPI` v3 path keys, with their kinds and resource paths.
const OPENAPI_GROUPS: [(&str, &str, &str, &str); 3] = [
    (
        "api/v1",
        "",
        "Event",
        "/api/v1/namespaces/{namespace}/events/{name}",
    ),
    (
        "apis/events.k8s.io/v1",
        "events.k8s.io",
        "Event",
        "/apis/events.k8s.io/v1/namespaces/{namespace}/events/{name}",
    ),
    (
        "apis/coordination.k8s.io/v1",
        "coordination.k8s.io",
        "Lease",
        "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}",
    ),
];

/// `GET /openapi/v3`: the index kubectl reads before `create`/`apply`.
pub(crate) async fn openapi_v3_root() -> Response {
    let mut paths = serde_json::Map::new();
    for (gv, ..) in OPENAPI_GROUPS {
        paths.insert(
            gv.to_owned(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash=kevents-emulator-1")}),
        );
    }
    Json(json!({"paths": paths})).into_response()
}

/// `GET /openapi/v3/{group-version}`: a minimal document whose only content is what kubectl's
/// `QueryParamVerifierV3` looks for: PATCH operations with `x-kubernetes-group-version-kind` and a
/// `fieldValidation` query parameter. kubectl then validates on the server (`fieldValidation=
/// Strict`) instead of downloading full schemas.
fn openapi_v3_doc(gv: &str) -> Response {
    let Some((_, group, kind, path)) = OPENAPI_GROUPS.iter().find(|(g, ..)| *g == gv) else {
        return super::status::ApiError::no_such_resource().into_response();
    };
    let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let doc = json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (kevents emulator)", "version": "v1.34.0"},
        "paths": {
            *path: {
                "patch": {
                    "operationId": format!("patch{kind}"),
                    "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation"), param("force")],
                    "responses": {"200": {"description": "OK"}},
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": {"group": group, "kind": kind, "version": "v1"}
                }
            }
        }
    });
    Json(doc).into_response()
}

/// `GET /openapi/v3/api/v1`.
pub(crate) async fn openapi_v3_core() -> Response {
    openapi_v3_doc("api/v1")
}

/// `GET /openapi/v3/apis/events.k8s.io/v1`.
pub(crate) async fn openapi_v3_events() -> Response {
    openapi_v3_doc("apis/events.k8s.io/v1")
}

/// `GET /openapi/v3/apis/coordination.k8s.io/v1`.
pub(crate) async fn openapi_v3_coordination() -> Response {
    openapi_v3_doc("apis/coordination.k8s.io/v1")
}
