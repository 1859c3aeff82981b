//! A read-only `namespaces` resource: the cluster's default namespaces plus every namespace that
//! holds an Event or Lease, so that `kubectl`'s namespace look-ups (after a `NotFound`, `get ns`)
//! behave as on a real cluster.
//!
//! GET and LIST only; it must never create, store or delete anything (objects may be written to
//! any namespace, as if it existed).

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use http::StatusCode;
use jiff::Timestamp;
use serde_json::{Value, json};

use super::state::{KubeState, uid_from_bytes};
use super::status::{ApiError, GroupResource};
use super::table::{TableRequest, human_duration};

/// `namespaces` in the core group.
pub(crate) const NAMESPACES: GroupResource = GroupResource {
    group: "",
    resource: "namespaces",
};

const DEFAULTS: [&str; 4] = ["default", "kube-node-lease", "kube-public", "kube-system"];

/// Every namespace that exists: the defaults and those in use.
fn names(state: &KubeState) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = DEFAULTS.iter().map(|s| (*s).to_owned()).collect();
    names.extend(state.lock().namespaces());
    names
}

/// A stable uid per name.
fn uid(name: &str) -> String {
    let mut bytes = [0_u8; 16];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let mut h = DefaultHasher::new();
        (i, name).hash(&mut h);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    uid_from_bytes(bytes)
}

fn namespace(name: &str, created: Timestamp) -> Value {
    json!({
        "metadata": {
            "name": name,
            "uid": uid(name),
            "resourceVersion": "1",
            "creationTimestamp": Timestamp::from_second(created.as_second()).unwrap_or(created).to_string(),
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

fn with_type_meta(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.insert("kind".into(), "Namespace".into());
        m.insert("apiVersion".into(), "v1".into());
    }
    v
}

fn table(req: TableRequest, items: &[Value], rv: u64, created: Timestamp) -> Value {
    let age = human_duration(Timestamp::now().duration_since(created).as_secs());
    let rows: Vec<Value> = items
        .iter()
        .map(|ns| {
            json!({
                "cells": [ns["metadata"]["name"], "Active", age],
                "object": {"kind": "PartialObjectMetadata", "apiVersion": req.api_version(), "metadata": ns["metadata"]},
            })
        })
        .collect();
    let col = |name: &str, format: &str| json!({"name": name, "type": "string", "format": format, "description": "", "priority": 0});
    json!({
        "kind": "Table",
        "apiVersion": req.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": [col("Name", "name"), col("Status", ""), col("Age", "")],
        "rows": rows,
    })
}

/// `GET /api/v1/namespaces[/{name}]`: the status code and JSON body.
pub(crate) fn get(
    state: &KubeState,
    name: Option<&str>,
    table_req: Option<TableRequest>,
) -> Result<(StatusCode, Value), ApiError> {
    let created = state.started;
    let all = names(state);
    let items: Vec<Value> = match name {
        Some(n) if all.contains(n) => vec![namespace(n, created)],
        Some(n) => return Err(ApiError::not_found(NAMESPACES, n)),
        None => all.iter().map(|n| namespace(n, created)).collect(),
    };
    let rv = state.resource_version();
    if let Some(req) = table_req {
        return Ok((StatusCode::OK, table(req, &items, rv, created)));
    }
    let body = match name {
        Some(_) => items
            .into_iter()
            .next()
            .map(with_type_meta)
            .unwrap_or_default(),
        None => json!({
            "kind": "NamespaceList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    };
    Ok((StatusCode::OK, body))
}
