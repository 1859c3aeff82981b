//! `fieldSelector` and `labelSelector` parsing and matching, with the field labels the real
//! apiserver supports for each resource (kubernetes `pkg/registry/core/event/strategy.go`,
//! `pkg/apis/core/v1/conversion.go`).
//!
//! Pure functions over stored objects; must never read storage or HTTP state.

use std::collections::BTreeMap;

use super::resources::{Object, View};
use super::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldOp {
    Eq,
    NotEq,
}

/// A parsed field selector: a conjunction of `label (=|==|!=) value`.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector {
    terms: Vec<(String, FieldOp, String)>,
}

impl FieldSelector {
    /// Parses `s` and maps the labels of `view` to core field names; unknown labels → 400.
    pub fn parse(s: &str, view: View) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for part in split_unescaped(s, ',') {
            if part.is_empty() {
                continue;
            }
            let (label, op, value) = if let Some((l, v)) = split_once_unescaped(&part, "!=") {
                (l, FieldOp::NotEq, v)
            } else if let Some((l, v)) = split_once_unescaped(&part, "==") {
                (l, FieldOp::Eq, v)
            } else if let Some((l, v)) = split_once_unescaped(&part, "=") {
                (l, FieldOp::Eq, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            let label = map_label(view, label.trim())?;
            terms.push((label, op, unescape(&value)));
        }
        Ok(Self { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, obj: &Object) -> bool {
        self.terms.iter().all(|(label, op, want)| {
            let got = field_value(obj, label);
            match op {
                FieldOp::Eq => got == *want,
                FieldOp::NotEq => got != *want,
            }
        })
    }
}

/// Maps a view's field label to the internal (core/v1) label, rejecting unsupported ones.
fn map_label(view: View, label: &str) -> Result<String, ApiError> {
    let unsupported = || ApiError::bad_request(format!("field label not supported: {label}"));
    let meta = ["metadata.name", "metadata.namespace"];
    match view {
        // Leases have no field-label conversion of their own; the generic check answers.
        View::Leases => {
            if meta.contains(&label) {
                Ok(label.to_owned())
            } else {
                Err(ApiError::bad_request(format!(
                    "{} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
                    serde_json::to_string(label).unwrap_or_default()
                )))
            }
        }
        View::CoreEvents => {
            const CORE: [&str; 13] = [
                "metadata.name",
                "metadata.namespace",
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ];
            if CORE.contains(&label) {
                Ok(label.to_owned())
            } else {
                Err(unsupported())
            }
        }
        View::EventsV1 => {
            if meta.contains(&label) || ["reason", "type"].contains(&label) {
                return Ok(label.to_owned());
            }
            if let Some(rest) = label.strip_prefix("regarding.") {
                let mapped = format!("involvedObject.{rest}");
                return map_label(View::CoreEvents, &mapped).map_err(|_| unsupported());
            }
            match label {
                "reportingController" => Ok("reportingComponent".to_owned()),
                "deprecatedSource" => Ok("source".to_owned()),
                _ => Err(unsupported()),
            }
        }
    }
}

fn field_value(obj: &Object, label: &str) -> String {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    match label {
        "metadata.name" => return obj.name().to_owned(),
        "metadata.namespace" => return obj.namespace().to_owned(),
        _ => {}
    }
    let Some(e) = obj.as_event() else {
        return String::new();
    };
    let io = &e.involved_object;
    match label {
        "involvedObject.kind" => s(&io.kind),
        "involvedObject.namespace" => s(&io.namespace),
        "involvedObject.name" => s(&io.name),
        "involvedObject.uid" => s(&io.uid),
        "involvedObject.apiVersion" => s(&io.api_version),
        "involvedObject.resourceVersion" => s(&io.resource_version),
        "involvedObject.fieldPath" => s(&io.field_path),
        "reason" => s(&e.reason),
        "reportingComponent" => s(&e.reporting_component),
        "type" => s(&e.type_),
        "source" => {
            let component = e
                .source
                .as_ref()
                .and_then(|src| src.component.clone())
                .unwrap_or_default();
            if component.is_empty() {
                s(&e.reporting_component)
            } else {
                component
            }
        }
        _ => String::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (equality, set-based and existence requirements).
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelSelector {
    reqs: Vec<LabelReq>,
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| ApiError::bad_request(format!("unable to parse requirement: {why}"));
        let mut reqs = Vec::new();
        for part in split_outside_parens(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                LabelReq::NotExists(k.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelReq::NotEq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelReq::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelReq::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, set)) = split_set(part, " notin ") {
                LabelReq::NotIn(k, set)
            } else if let Some((k, set)) = split_set(part, " in ") {
                LabelReq::In(k, set)
            } else if part.contains([' ', '(', ')']) {
                return Err(bad(part));
            } else {
                LabelReq::Exists(part.to_owned())
            };
            reqs.push(req);
        }
        Ok(Self { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, obj: &Object) -> bool {
        let empty = BTreeMap::new();
        let labels = obj.meta().labels.as_ref().unwrap_or(&empty);
        self.reqs.iter().all(|r| match r {
            LabelReq::Eq(k, v) => labels.get(k) == Some(v),
            LabelReq::NotEq(k, v) => labels.get(k) != Some(v),
            LabelReq::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            LabelReq::NotIn(k, set) => labels.get(k).is_none_or(|v| !set.contains(v)),
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::NotExists(k) => !labels.contains_key(k),
        })
    }
}

fn split_set(part: &str, op: &str) -> Option<(String, Vec<String>)> {
    let (k, rest) = part.split_once(op)?;
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some((
        k.trim().to_owned(),
        inner.split(',').map(|v| v.trim().to_owned()).collect(),
    ))
}

fn split_outside_parens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0_i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

/// Splits on `sep` not preceded by a backslash (field selector escaping).
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn split_once_unescaped(s: &str, op: &str) -> Option<(String, String)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i + op.len() <= bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i..].starts_with(op) {
            return Some((s[..i].to_owned(), s[i + op.len()..].to_owned()));
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

/// Both selectors of a list or watch request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub fields: FieldSelector,
    pub labels: LabelSelector,
}

impl Filter {
    pub fn matches(&self, obj: &Object) -> bool {
        self.fields.matches(obj) && self.labels.matches(obj)
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.labels.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Event, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn event() -> Object {
        Object::Event(Box::new(Event {
            metadata: ObjectMeta {
                name: Some("e1".into()),
                namespace: Some("ns-1".into()),
                labels: Some([("app".to_owned(), "web".to_owned())].into()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                kind: Some("Pod".into()),
                ..Default::default()
            },
            type_: Some("Warning".into()),
            reporting_component: Some("kubelet".into()),
            ..Event::default()
        }))
    }

    #[test]
    fn field_selectors_match_core_and_v1_labels() {
        let e = event();
        let f = FieldSelector::parse("type=Warning,involvedObject.kind==Pod", View::CoreEvents)
            .unwrap();
        assert!(f.matches(&e));
        let f = FieldSelector::parse("type!=Warning", View::CoreEvents).unwrap();
        assert!(!f.matches(&e));
        let f = FieldSelector::parse("regarding.kind=Pod", View::EventsV1).unwrap();
        assert!(f.matches(&e));
        let f = FieldSelector::parse("source=kubelet", View::CoreEvents).unwrap();
        assert!(f.matches(&e));
    }

    #[test]
    fn unknown_field_label_is_a_bad_request() {
        let err = FieldSelector::parse("spec.foo=bar", View::CoreEvents).unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(err.message, "field label not supported: spec.foo");
    }

    #[test]
    fn label_selectors_support_equality_sets_and_existence() {
        let e = event();
        assert!(LabelSelector::parse("app=web").unwrap().matches(&e));
        assert!(
            LabelSelector::parse("app in (web,db),!tier")
                .unwrap()
                .matches(&e)
        );
        assert!(!LabelSelector::parse("app notin (web)").unwrap().matches(&e));
        assert!(!LabelSelector::parse("tier").unwrap().matches(&e));
    }
}
