//! `metadata.managedFields` as the real apiserver keeps them for ordinary (non-apply) writes: one
//! `operation: Update` entry per field manager and API version, whose `fieldsV1` holds the fields
//! that manager last changed; a write takes the fields it changes away from every other manager.
//!
//! Owns the field-set arithmetic only. The sets are computed from the object as the request's view
//! serialises it, with the Go zero values left out (a field counts once it differs from the zero
//! object, as in the real `managedfields`). `involvedObject`, `regarding` and `related` are atomic
//! (`+structType=atomic`); `metadata.labels` and `metadata.annotations` are maps (`"."` entry). It
//! must never decide whether a write happens, and never fail one: bad stored entries are dropped.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
use serde_json::{Map, Value};

use super::resources::{Object, View};

/// `validation.FieldManagerMaxLength`.
const MAX_MANAGER_LEN: usize = 128;

/// Fields that are one value to field management (`+structType=atomic`).
const ATOMIC: [&str; 3] = ["involvedObject", "regarding", "related"];

/// One field path, in `fieldsV1` keys (`f:spec`, `f:renewTime`, or `.` for the map itself).
type Path = Vec<String>;

/// The manager of a write: `?fieldManager=`, else the User-Agent up to its first `/` without
/// unprintable characters (`managerOrUserAgent`), `unknown` when that leaves nothing.
pub(crate) fn manager(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(m) = field_manager.filter(|m| !m.is_empty()) {
        return m.to_owned();
    }
    let head = user_agent
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default();
    let mut out = String::new();
    for c in head.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_MANAGER_LEN {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        "unknown".to_owned()
    } else {
        out
    }
}

/// Records that `manager` wrote `new` through `view`, replacing `old` (`None`: a create), and
/// sets `new`'s `managedFields` from `old`'s.
pub(crate) fn track(new: &mut Object, old: Option<&Object>, view: View, manager: &str) {
    let after = leaves(&new.to_view_value(view));
    let before = old
        .map(|o| leaves(&o.to_view_value(view)))
        .unwrap_or_default();
    let changed: BTreeSet<Path> = after
        .iter()
        .filter(|(path, value)| before.get(*path) != Some(*value))
        .map(|(path, _)| path.clone())
        .collect();
    let removed: BTreeSet<Path> = before
        .keys()
        .filter(|path| !after.contains_key(*path))
        .cloned()
        .collect();
    let api_version = view.api_version();
    let now =
        Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH));
    let mut entries = Vec::new();
    let mut mine = None;
    let previous = old
        .and_then(|o| o.meta().managed_fields.clone())
        .unwrap_or_default();
    for entry in previous {
        let is_mine = entry.manager.as_deref() == Some(manager)
            && entry.operation.as_deref() == Some("Update")
            && entry.api_version.as_deref() == Some(api_version)
            && entry.subresource.is_none();
        let mut set = entry
            .fields_v1
            .as_ref()
            .map(|f| paths(&f.0))
            .unwrap_or_default();
        set.retain(|p| !removed.contains(p));
        if is_mine {
            mine = Some((entry, set));
            continue;
        }
        set.retain(|p| !changed.contains(p));
        if !set.is_empty() {
            entries.push(ManagedFieldsEntry {
                fields_v1: Some(FieldsV1(fields_v1(&set))),
                ..entry
            });
        }
    }
    let (entry, mut set, touched) = match mine {
        Some((entry, set)) => (entry, set, !changed.is_empty()),
        None => (
            ManagedFieldsEntry {
                api_version: Some(api_version.to_owned()),
                fields_type: Some("FieldsV1".to_owned()),
                manager: Some(manager.to_owned()),
                operation: Some("Update".to_owned()),
                ..ManagedFieldsEntry::default()
            },
            BTreeSet::new(),
            true,
        ),
    };
    set.extend(changed);
    if !set.is_empty() {
        entries.push(ManagedFieldsEntry {
            fields_v1: Some(FieldsV1(fields_v1(&set))),
            time: if touched {
                Some(now)
            } else {
                entry.time.clone()
            },
            ..entry
        });
    }
    // `sortEncodedManagedFields`: by operation, time, manager, then API version.
    entries.sort_by(|a, b| {
        let key = |e: &ManagedFieldsEntry| {
            (
                e.operation.clone(),
                e.time.as_ref().map(|t| t.0.as_second()),
                e.manager.clone(),
                e.api_version.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    new.meta_mut().managed_fields = (!entries.is_empty()).then_some(entries);
}

/// The leaf fields of an object's wire form (Go zero values left out), with their values.
fn leaves(object: &Value) -> BTreeMap<Path, Value> {
    let mut out = BTreeMap::new();
    let Value::Object(map) = object else {
        return out;
    };
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for name in ["labels", "annotations"] {
                    if let Some(Value::Object(entries)) = value.get(name).filter(|m| !is_zero(m)) {
                        let base = vec!["f:metadata".to_owned(), format!("f:{name}")];
                        out.insert(with(&base, "."), Value::Bool(true));
                        for (k, v) in entries {
                            out.insert(with(&base, &format!("f:{k}")), v.clone());
                        }
                    }
                }
            }
            _ => walk(&mut out, vec![format!("f:{key}")], key, value),
        }
    }
    out
}

fn walk(out: &mut BTreeMap<Path, Value>, path: Path, key: &str, value: &Value) {
    if is_zero(value) {
        return;
    }
    match value {
        Value::Object(map) if !ATOMIC.contains(&key) => {
            for (k, v) in map {
                walk(out, with(&path, &format!("f:{k}")), k, v);
            }
        }
        _ => {
            out.insert(path, value.clone());
        }
    }
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn with(path: &[String], key: &str) -> Path {
    let mut p = path.to_vec();
    p.push(key.to_owned());
    p
}

/// The paths of a `fieldsV1` document: every key whose value is `{}` ends one.
fn paths(fields: &Value) -> BTreeSet<Path> {
    fn go(out: &mut BTreeSet<Path>, prefix: &[String], value: &Value) {
        let Value::Object(map) = value else { return };
        for (k, v) in map {
            let path = with(prefix, k);
            if v.as_object().is_some_and(Map::is_empty) {
                out.insert(path);
            } else {
                go(out, &path, v);
            }
        }
    }
    let mut out = BTreeSet::new();
    go(&mut out, &[], fields);
    out
}

/// The `fieldsV1` document of a set of paths.
fn fields_v1(set: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for key in path {
            let entry = node
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else { break };
            node = next;
        }
    }
    Value::Object(root)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kube::resources::decode_value;

    fn event(body: Value) -> Object {
        decode_value(View::CoreEvents, body).unwrap()
    }

    #[test]
    fn the_manager_is_the_field_manager_or_the_user_agent_product() {
        assert_eq!(manager(Some("pins"), Some("curl/8.0")), "pins");
        assert_eq!(
            manager(None, Some("kubectl-create/v1.32.4 (linux/amd64)")),
            "kubectl-create"
        );
        assert_eq!(manager(Some(""), None), "unknown");
    }

    #[test]
    fn a_create_owns_every_non_zero_field_and_an_update_moves_what_it_changes() {
        let mut created = event(json!({
            "metadata": {"name": "a", "namespace": "pins", "labels": {"x": "y"}},
            "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "pins"},
            "reason": "BackOff", "message": "m", "type": "Warning", "count": 1,
            "source": {"component": "kubelet"}}));
        track(&mut created, None, View::CoreEvents, "curl");
        let entries = created.meta().managed_fields.clone().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].manager.as_deref(), Some("curl"));
        assert_eq!(
            entries[0].fields_v1.as_ref().unwrap().0,
            json!({"f:count": {}, "f:involvedObject": {}, "f:message": {},
                "f:metadata": {"f:labels": {".": {}, "f:x": {}}}, "f:reason": {},
                "f:source": {"f:component": {}}, "f:type": {}})
        );
        let mut patched = created.clone();
        if let Object::Event(e) = &mut patched {
            e.count = Some(2);
        }
        track(
            &mut patched,
            Some(&created),
            View::CoreEvents,
            "kubectl-patch",
        );
        let entries = patched.meta().managed_fields.clone().unwrap();
        let by = |m: &str| {
            entries
                .iter()
                .find(|e| e.manager.as_deref() == Some(m))
                .unwrap()
                .fields_v1
                .clone()
                .unwrap()
                .0
        };
        assert_eq!(by("kubectl-patch"), json!({"f:count": {}}));
        assert!(by("curl").get("f:count").is_none());
        assert!(by("curl").get("f:reason").is_some());
    }
}
