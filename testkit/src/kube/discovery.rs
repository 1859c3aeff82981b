//! Discovery documents (legacy per group-version, and aggregated `apidiscovery.k8s.io/v2` when
//! asked for), `/version` and a minimal `OpenAPI` v3, enough for
//! `kubectl` and for `kube::Discovery`: core v1 (events), events.k8s.io/v1 and
//! coordination.k8s.io/v1.
//!
//! Static documents only; must never advertise a resource or verb the emulator does not serve.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, header};
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

/// Does the `Accept` header ask for aggregated discovery (`apidiscovery.k8s.io/v2`)? Returns
/// the version asked for (`v2` or `v2beta1`).
fn aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())?;
    // The first acceptable media type wins, as in the apiserver's negotiation.
    let first = accept.split(',').next()?;
    let params: Vec<&str> = first.split(';').map(str::trim).collect();
    let has = |p: &str| params.contains(&p);
    if !(has("g=apidiscovery.k8s.io") && has("as=APIGroupDiscoveryList")) {
        return None;
    }
    if has("v=v2") {
        Some("v2")
    } else if has("v=v2beta1") {
        Some("v2beta1")
    } else {
        None
    }
}

fn resource_discovery(
    resource: &str,
    singular: &str,
    group: &str,
    kind: &str,
    short: &[&str],
) -> Value {
    json!({
        "resource": resource,
        "responseKind": {"group": group, "version": "v1", "kind": kind},
        "scope": "Namespaced",
        "singularResource": singular,
        "verbs": VERBS,
        "shortNames": short,
    })
}

/// An `APIGroupDiscoveryList` response (aggregated discovery, as kubectl ≥ 1.30 prefers).
fn aggregated_list(version: &str, groups: &[(&str, Value)]) -> Response {
    let items: Vec<Value> = groups
        .iter()
        .map(|(name, resources)| {
            let metadata = if name.is_empty() {
                json!({"creationTimestamp": null})
            } else {
                json!({"name": name, "creationTimestamp": null})
            };
            json!({
                "metadata": metadata,
                "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]
            })
        })
        .collect();
    let body = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    });
    let mut resp = Json(body).into_response();
    let ct = format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    if let Ok(v) = HeaderValue::from_str(&ct) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// `GET /api`.
pub(crate) async fn api_versions(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(version) = aggregated(&headers) {
        let mut namespaces =
            resource_discovery("namespaces", "namespace", "", "Namespace", &["ns"]);
        namespaces["scope"] = "Cluster".into();
        namespaces["verbs"] = json!(["get", "list"]);
        let core = json!([
            resource_discovery("events", "event", "", "Event", &["ev"]),
            namespaces
        ]);
        return aggregated_list(version, &[("", core)]);
    }
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
        "resources": [event_resource(), {
            "name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
            "verbs": ["get", "list"], "shortNames": ["ns"]
        }]
    }))
    .into_response()
}

fn group(name: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `GET /apis`.
pub(crate) async fn api_groups(headers: HeaderMap) -> Response {
    if let Some(version) = aggregated(&headers) {
        return aggregated_list(
            version,
            &[
                (
                    "events.k8s.io",
                    json!([resource_discovery(
                        "events",
                        "event",
                        "events.k8s.io",
                        "Event",
                        &["ev"]
                    )]),
                ),
                (
                    "coordination.k8s.io",
                    json!([resource_discovery(
                        "leases",
                        "lease",
                        "coordination.k8s.io",
                        "Lease",
                        &[]
                    )]),
                ),
            ],
        );
    }
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
