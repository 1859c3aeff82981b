//! Server-side printing: `meta.k8s.io/v1` `Table` responses for kubectl, with the columns and
//! cells of kubernetes `pkg/printers/internalversion/printers.go` (`printEvent`, `printLease`,
//! always `Wide`, as the apiserver's table convertor does) and `duration.HumanDuration`.
//!
//! Pure rendering; must never read storage.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::resources::{Object, Stored, View};

/// What a Table row carries in `object` (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

/// A Table request: `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableRequest {
    /// `v1` or `v1beta1`.
    pub v1beta1: bool,
    pub include: IncludeObject,
}

impl TableRequest {
    /// Parses the `Accept` header and `includeObject`; `None` when plain JSON is wanted.
    pub fn from_request(accept: &str, include_object: Option<&str>) -> Option<Self> {
        for media in accept.split(',') {
            let mut parts = media.split(';').map(str::trim);
            let base = parts.next().unwrap_or_default();
            if base != "application/json" && base != "*/*" {
                continue;
            }
            let (mut as_, mut g, mut v) = ("", "", "");
            for p in parts {
                if let Some((k, val)) = p.split_once('=') {
                    match k.trim() {
                        "as" => as_ = val.trim(),
                        "g" => g = val.trim(),
                        "v" => v = val.trim(),
                        _ => {}
                    }
                }
            }
            if as_.is_empty() {
                return None;
            }
            if as_ == "Table" && g == "meta.k8s.io" && (v == "v1" || v == "v1beta1") {
                let include = match include_object {
                    Some("None") => IncludeObject::None,
                    Some("Object") => IncludeObject::Object,
                    _ => IncludeObject::Metadata,
                };
                return Some(Self {
                    v1beta1: v == "v1beta1",
                    include,
                });
            }
        }
        None
    }

    pub fn api_version(self) -> &'static str {
        if self.v1beta1 {
            "meta.k8s.io/v1beta1"
        } else {
            "meta.k8s.io/v1"
        }
    }
}

/// `duration.HumanDuration` from k8s.io/apimachinery.
pub(crate) fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn since(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        Some(t) => human_duration(now.duration_since(t).as_secs()),
        None => "<unknown>".into(),
    }
}

fn column(name: &str, format: &str, description: &str, priority: i32) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": description, "priority": priority})
}

fn columns(view: View) -> Value {
    match view {
        View::CoreEvents | View::EventsV1 => json!([
            column(
                "Last Seen",
                "",
                "The time at which the most recent occurrence of this event was recorded.",
                0
            ),
            column(
                "Type",
                "",
                "Type of this event (Normal, Warning), new types could be added in the future",
                0
            ),
            column(
                "Reason",
                "",
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
                0
            ),
            column("Object", "", "The object that this event is about.", 0),
            column(
                "Subobject",
                "",
                "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2].",
                1
            ),
            column(
                "Source",
                "",
                "The component reporting this event. Should be a short machine understandable string.",
                1
            ),
            column(
                "Message",
                "",
                "A human-readable description of the status of this operation.",
                0
            ),
            column(
                "First Seen",
                "",
                "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
                1
            ),
            column(
                "Count",
                "",
                "The number of times this event has occurred.",
                1
            ),
            column(
                "Name",
                "name",
                "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
                1
            ),
        ]),
        View::Leases => json!([
            column(
                "Name",
                "name",
                "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
                0
            ),
            column(
                "Holder",
                "",
                "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.",
                0
            ),
            column(
                "Age",
                "",
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
                0
            ),
        ]),
    }
}

fn cells(obj: &Object, now: Timestamp) -> Value {
    match obj {
        Object::Event(e) => {
            let mut first = since(e.first_timestamp.as_ref().map(|t| t.0), now);
            if e.first_timestamp.is_none() {
                first = since(e.event_time.as_ref().map(|t| t.0), now);
            }
            let mut last = match &e.last_timestamp {
                Some(t) => since(Some(t.0), now),
                None => first.clone(),
            };
            let mut count = i64::from(e.count.unwrap_or_default());
            if let Some(s) = &e.series {
                last = since(s.last_observed_time.as_ref().map(|t| t.0), now);
                count = i64::from(s.count.unwrap_or_default());
            } else if count == 0 {
                count = 1;
            }
            let io = &e.involved_object;
            let kind = io.kind.as_deref().unwrap_or_default().to_lowercase();
            let target = match io.name.as_deref() {
                Some(n) if !n.is_empty() => format!("{kind}/{n}"),
                _ => kind,
            };
            let first_non_empty = |a: Option<&str>, b: Option<&str>| {
                a.filter(|s| !s.is_empty())
                    .or(b)
                    .unwrap_or_default()
                    .to_owned()
            };
            let src = e.source.as_ref();
            let component = first_non_empty(
                src.and_then(|s| s.component.as_deref()),
                e.reporting_component.as_deref(),
            );
            let instance = first_non_empty(
                src.and_then(|s| s.host.as_deref()),
                e.reporting_instance.as_deref(),
            );
            let source = if instance.is_empty() {
                component
            } else {
                format!("{component}, {instance}")
            };
            json!([
                last,
                e.type_.as_deref().unwrap_or_default(),
                e.reason.as_deref().unwrap_or_default(),
                target,
                io.field_path.as_deref().unwrap_or_default(),
                source,
                e.message.as_deref().unwrap_or_default().trim(),
                first,
                count,
                obj.name(),
            ])
        }
        Object::Lease(l) => json!([
            obj.name(),
            l.spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                .unwrap_or_default(),
            since(obj.meta().creation_timestamp.as_ref().map(|t| t.0), now),
        ]),
    }
}

fn row(view: View, stored: &Stored, req: TableRequest, now: Timestamp) -> Value {
    let mut row = serde_json::Map::new();
    row.insert("cells".into(), cells(&stored.object, now));
    match req.include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            let meta = serde_json::to_value(stored.object.meta()).unwrap_or_else(|_| json!({}));
            row.insert(
                "object".into(),
                json!({"kind": "PartialObjectMetadata", "apiVersion": req.api_version(), "metadata": meta}),
            );
        }
        IncludeObject::Object => {
            let full: Value =
                serde_json::from_slice(&stored.full_json(view)).unwrap_or_else(|_| json!({}));
            row.insert("object".into(), full);
        }
    }
    Value::Object(row)
}

/// List metadata of a Table (`resourceVersion`, `continue`, `remainingItemCount`).
pub(crate) struct TableListMeta {
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

/// A Table of `items`, with column definitions unless `no_headers` (watch events after the first).
pub(crate) fn table(
    view: View,
    items: &[&Stored],
    req: TableRequest,
    meta: Option<&TableListMeta>,
    no_headers: bool,
) -> Value {
    let now = Timestamp::now();
    let mut list_meta = serde_json::Map::new();
    if let Some(m) = meta {
        list_meta.insert(
            "resourceVersion".into(),
            m.resource_version.to_string().into(),
        );
        if let Some(c) = &m.continue_token {
            list_meta.insert("continue".into(), c.clone().into());
        }
        if let Some(r) = m.remaining {
            list_meta.insert("remainingItemCount".into(), r.into());
        }
    }
    json!({
        "kind": "Table",
        "apiVersion": req.api_version(),
        "metadata": list_meta,
        "columnDefinitions": if no_headers { Value::Null } else { columns(view) },
        "rows": items.iter().map(|s| row(view, s, req, now)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn human_duration_matches_apimachinery() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 5 * 60), "3h5m");
        assert_eq!(human_duration(10 * 3600), "10h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
    }

    #[test]
    fn accept_header_selects_table() {
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        let t = TableRequest::from_request(accept, None).unwrap();
        assert!(!t.v1beta1);
        assert_eq!(t.include, IncludeObject::Metadata);
        assert!(TableRequest::from_request("application/json", None).is_none());
    }
}
