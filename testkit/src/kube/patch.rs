//! PATCH bodies: JSON merge patch (RFC 7386; strategic merge patch is treated the same, which is
//! exact for Events and Leases, whose only lists are metadata lists) and JSON patch (RFC 6902).
//!
//! Pure JSON transformations; must never look at storage or decide preconditions.

use serde_json::{Map, Value};

use super::status::ApiError;

/// The patch flavours the emulator accepts, from the request `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    StrategicMerge,
    Json,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let media = ct.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::StrategicMerge),
            "application/json-patch+json" => Ok(PatchType::Json),
            other => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?}; server-side apply is not emulated)"
            ))),
        }
    }
}

/// Applies `patch` (raw body) of type `kind` to `target`.
pub(crate) fn apply(kind: PatchType, target: Value, patch: &[u8]) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(patch)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    match kind {
        PatchType::Merge | PatchType::StrategicMerge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "json: cannot unmarshal into Go value of type map[string]interface {}",
                ));
            }
            Ok(merge(target, patch))
        }
        PatchType::Json => json_patch(target, &patch),
    }
}

/// RFC 7386 merge: objects merge recursively, `null` deletes, anything else replaces.
pub(crate) fn merge(target: Value, patch: Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut t = match target {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            for (k, v) in p {
                if k.starts_with('$') {
                    continue; // strategic-merge directives
                }
                if v.is_null() {
                    t.remove(&k);
                } else {
                    let cur = t.remove(&k).unwrap_or(Value::Null);
                    t.insert(k, merge(cur, v));
                }
            }
            Value::Object(t)
        }
        other => other,
    }
}

fn json_patch(mut doc: Value, operations: &Value) -> Result<Value, ApiError> {
    let ops = operations
        .as_array()
        .ok_or_else(|| ApiError::bad_request("json patch must be an array of operations"))?;
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                ApiError::bad_request(format!("{name} operation does not have a value"))
            })
        };
        let from = || {
            op.get("from").and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad_request(format!("{name} operation does not have a from"))
            })
        };
        match name {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(ApiError::unprocessable_patch(format!(
                        "testing value {path} failed"
                    )));
                }
            }
            "move" => {
                let v = remove(&mut doc, from()?)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = doc.pointer(from()?).cloned().ok_or_else(|| {
                    ApiError::unprocessable_patch(format!("copy from {path}: missing"))
                })?;
                add(&mut doc, path, v)?;
            }
            other => return Err(ApiError::bad_request(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(doc)
}

fn split_pointer(path: &str) -> Result<(String, String), ApiError> {
    let idx = path
        .rfind('/')
        .ok_or_else(|| ApiError::bad_request(format!("invalid JSON pointer {path:?}")))?;
    let last = path[idx + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..idx].to_owned(), last))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let missing = || {
        ApiError::unprocessable_patch(format!(
            "add operation does not apply: doc is missing path: {path:?}"
        ))
    };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last.parse().map_err(|_| missing())?;
                if i > a.len() {
                    return Err(missing());
                }
                a.insert(i, value);
            }
        }
        _ => return Err(missing()),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split_pointer(path)?;
    let missing = || {
        ApiError::unprocessable_patch(format!(
            "remove operation does not apply: doc is missing path: {path:?}"
        ))
    };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i >= a.len() {
                return Err(missing());
            }
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_replaces_merges_and_deletes() {
        let t = json!({"a": {"b": 1, "c": 2}, "d": 3});
        let out = merge(t, json!({"a": {"b": 5, "c": null}, "e": [1]}));
        assert_eq!(out, json!({"a": {"b": 5}, "d": 3, "e": [1]}));
    }

    #[test]
    fn json_patch_ops() {
        let t = json!({"spec": {"holderIdentity": "a"}, "list": [1, 2]});
        let p = br#"[{"op":"test","path":"/spec/holderIdentity","value":"a"},
                     {"op":"replace","path":"/spec/holderIdentity","value":"b"},
                     {"op":"add","path":"/list/-","value":3},
                     {"op":"remove","path":"/list/0"}]"#;
        let out = apply(PatchType::Json, t, p).unwrap();
        assert_eq!(
            out,
            json!({"spec": {"holderIdentity": "b"}, "list": [2, 3]})
        );
    }
}
