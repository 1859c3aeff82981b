//! The resources the emulator serves and their wire forms: core/v1 Events, events.k8s.io/v1
//! Events (a second view of the same stored object) and coordination.k8s.io/v1 Leases.
//!
//! Owns decoding request bodies into the stored representation, the core/v1 ⇄ events.k8s.io/v1
//! conversion, normalisation (timestamps to `Z`, Go `omitempty` rules) and the cached JSON of each
//! stored version. It must never touch storage or HTTP.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSeries as CoreSeries};
use k8s_openapi::api::events::v1::{Event as V1Event, EventSeries as V1Series};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use serde_json::{Map, Value};

use super::status::{ApiError, GroupKind, GroupResource};

/// A stored resource (one etcd prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Resource {
    Events,
    Leases,
}

impl Resource {
    pub fn index(self) -> usize {
        match self {
            Resource::Events => 0,
            Resource::Leases => 1,
        }
    }
}

/// An API group/version through which a resource is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum View {
    /// `/api/v1/.../events`
    CoreEvents,
    /// `/apis/events.k8s.io/v1/.../events`
    EventsV1,
    /// `/apis/coordination.k8s.io/v1/.../leases`
    Leases,
}

impl View {
    pub fn resource(self) -> Resource {
        match self {
            View::CoreEvents | View::EventsV1 => Resource::Events,
            View::Leases => Resource::Leases,
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            View::CoreEvents => "",
            View::EventsV1 => "events.k8s.io",
            View::Leases => "coordination.k8s.io",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            View::CoreEvents => "v1",
            View::EventsV1 => "events.k8s.io/v1",
            View::Leases => "coordination.k8s.io/v1",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            View::CoreEvents | View::EventsV1 => "Event",
            View::Leases => "Lease",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            View::CoreEvents | View::EventsV1 => "events",
            View::Leases => "leases",
        }
    }

    pub fn list_kind(self) -> &'static str {
        match self {
            View::CoreEvents | View::EventsV1 => "EventList",
            View::Leases => "LeaseList",
        }
    }

    pub fn group_resource(self) -> GroupResource {
        GroupResource {
            group: self.group(),
            resource: self.plural(),
        }
    }

    pub fn group_kind(self) -> GroupKind {
        GroupKind {
            group: self.group(),
            kind: self.kind(),
        }
    }

    /// Name used in request statistics: `resource[.group]`.
    pub fn stats_name(self) -> String {
        self.group_resource().to_string()
    }

    /// Index of this view's cached JSON in [`Stored`].
    fn cache_slot(self) -> usize {
        match self {
            View::CoreEvents | View::Leases => 0,
            View::EventsV1 => 1,
        }
    }
}

/// The stored (internal) form of an object: Events are kept in core/v1 shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Object {
    Event(Box<CoreEvent>),
    Lease(Box<Lease>),
}

impl Object {
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Event(e) => &e.metadata,
            Object::Lease(l) => &l.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Event(e) => &mut e.metadata,
            Object::Lease(l) => &mut l.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.meta().namespace.as_deref().unwrap_or_default()
    }

    pub fn uid(&self) -> &str {
        self.meta().uid.as_deref().unwrap_or_default()
    }

    pub fn as_event(&self) -> Option<&CoreEvent> {
        match self {
            Object::Event(e) => Some(e),
            Object::Lease(_) => None,
        }
    }

    /// Applies the apiserver's canonical form: times truncated to their wire precision and
    /// empty `omitempty` fields dropped, so that a write that changes nothing is a no-op.
    pub fn normalize(&mut self) {
        let meta = self.meta_mut();
        meta.creation_timestamp = meta.creation_timestamp.as_ref().map(trunc_time);
        meta.deletion_timestamp = meta.deletion_timestamp.as_ref().map(trunc_time);
        for map in [&mut meta.labels, &mut meta.annotations] {
            if map
                .as_ref()
                .is_some_and(std::collections::BTreeMap::is_empty)
            {
                *map = None;
            }
        }
        non_empty(&mut meta.generate_name);
        match self {
            Object::Event(e) => normalize_event(e),
            Object::Lease(l) => {
                if let Some(spec) = l.spec.as_mut() {
                    spec.acquire_time = spec.acquire_time.as_ref().map(trunc_micro);
                    spec.renew_time = spec.renew_time.as_ref().map(trunc_micro);
                }
            }
        }
    }

    /// The object as the given view serialises it, `kind`/`apiVersion` included.
    pub fn to_view_value(&self, view: View) -> Value {
        let value = match (self, view) {
            (Object::Event(e), View::EventsV1) => serde_json::to_value(core_to_v1(e)),
            (Object::Event(e), _) => serde_json::to_value(e.as_ref()),
            (Object::Lease(l), _) => serde_json::to_value(l.as_ref()),
        };
        let mut value = value.unwrap_or_else(|_| Value::Object(Map::new()));
        if let Value::Object(map) = &mut value {
            fill_go_zero_values(map, self, view);
        }
        value
    }
}

impl Object {
    /// Serialises the object as `view` without `kind`/`apiVersion`, straight from the typed
    /// struct (k8s-openapi writes `apiVersion` and `kind` first, so they are cut off), then
    /// appends the Go zero values the typed struct omits. Much cheaper than going through a
    /// `serde_json::Value`; this is the hot path of lists and watches.
    fn item_bytes(&self, view: View) -> Vec<u8> {
        let typed = match (self, view) {
            (Object::Event(e), View::EventsV1) => serde_json::to_vec(&core_to_v1(e)),
            (Object::Event(e), _) => serde_json::to_vec(e.as_ref()),
            (Object::Lease(l), _) => serde_json::to_vec(l.as_ref()),
        };
        let prefix = format!(
            "{{\"apiVersion\":\"{}\",\"kind\":\"{}\",",
            view.api_version(),
            view.kind()
        );
        let mut out = match typed {
            Ok(out) if out.starts_with(prefix.as_bytes()) && out.ends_with(b"}") => out,
            _ => return self.item_bytes_slow(view),
        };
        out.drain(1..prefix.len());
        out.pop();
        let mut add = |key: &str, value: &str| {
            if out.len() > 1 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(value.as_bytes());
        };
        match (self, view) {
            (Object::Event(e), View::EventsV1) => {
                if e.source.is_none() {
                    add("deprecatedSource", "{}");
                }
                if e.first_timestamp.is_none() {
                    add("deprecatedFirstTimestamp", "null");
                }
                if e.last_timestamp.is_none() {
                    add("deprecatedLastTimestamp", "null");
                }
                if e.event_time.is_none() {
                    add("eventTime", "null");
                }
            }
            (Object::Event(e), _) => {
                if e.source.is_none() {
                    add("source", "{}");
                }
                if e.first_timestamp.is_none() {
                    add("firstTimestamp", "null");
                }
                if e.last_timestamp.is_none() {
                    add("lastTimestamp", "null");
                }
                if e.event_time.is_none() {
                    add("eventTime", "null");
                }
                if e.reporting_component.is_none() {
                    add("reportingComponent", "\"\"");
                }
                if e.reporting_instance.is_none() {
                    add("reportingInstance", "\"\"");
                }
            }
            (Object::Lease(l), _) => {
                if l.spec.is_none() {
                    add("spec", "{}");
                }
            }
        }
        out.push(b'}');
        out
    }

    /// The general (slower) path through a `serde_json::Value`.
    fn item_bytes_slow(&self, view: View) -> Vec<u8> {
        let mut value = self.to_view_value(view);
        if let Value::Object(map) = &mut value {
            map.remove("kind");
            map.remove("apiVersion");
        }
        serde_json::to_vec(&value).unwrap_or_else(|_| b"{}".to_vec())
    }
}

fn non_empty(s: &mut Option<String>) {
    if s.as_deref() == Some("") {
        *s = None;
    }
}

fn normalize_event(e: &mut CoreEvent) {
    e.first_timestamp = e.first_timestamp.as_ref().map(trunc_time);
    e.last_timestamp = e.last_timestamp.as_ref().map(trunc_time);
    e.event_time = e.event_time.as_ref().map(trunc_micro);
    if let Some(series) = e.series.as_mut() {
        series.last_observed_time = series.last_observed_time.as_ref().map(trunc_micro);
    }
    for s in [
        &mut e.action,
        &mut e.message,
        &mut e.reason,
        &mut e.type_,
        &mut e.reporting_component,
        &mut e.reporting_instance,
    ] {
        non_empty(s);
    }
    if e.count == Some(0) {
        e.count = None;
    }
    if let Some(src) = e.source.as_mut() {
        non_empty(&mut src.component);
        non_empty(&mut src.host);
        if src.component.is_none() && src.host.is_none() {
            e.source = None;
        }
    }
}

/// Go serialises non-pointer structs and non-`omitempty` strings even when empty; the real
/// server therefore sends `"source":{}`, `"firstTimestamp":null`, `"reportingComponent":""`…
fn fill_go_zero_values(map: &mut Map<String, Value>, obj: &Object, view: View) {
    let mut ensure = |key: &str, v: Value| {
        map.entry(key.to_owned()).or_insert(v);
    };
    match (obj, view) {
        (Object::Event(_), View::EventsV1) => {
            ensure("regarding", Value::Object(Map::new()));
            ensure("deprecatedSource", Value::Object(Map::new()));
            ensure("deprecatedFirstTimestamp", Value::Null);
            ensure("deprecatedLastTimestamp", Value::Null);
            ensure("eventTime", Value::Null);
        }
        (Object::Event(_), _) => {
            ensure("involvedObject", Value::Object(Map::new()));
            ensure("source", Value::Object(Map::new()));
            ensure("firstTimestamp", Value::Null);
            ensure("lastTimestamp", Value::Null);
            ensure("eventTime", Value::Null);
            ensure("reportingComponent", Value::String(String::new()));
            ensure("reportingInstance", Value::String(String::new()));
        }
        (Object::Lease(_), _) => {
            ensure("spec", Value::Object(Map::new()));
        }
    }
}

/// Truncates a `Time` to whole seconds (its wire precision).
pub(crate) fn trunc_time(t: &Time) -> Time {
    Time(Timestamp::from_second(t.0.as_second()).unwrap_or(t.0))
}

/// Truncates a `MicroTime` to whole microseconds (its wire precision).
pub(crate) fn trunc_micro(t: &MicroTime) -> MicroTime {
    MicroTime(Timestamp::from_microsecond(t.0.as_microsecond()).unwrap_or(t.0))
}

/// core/v1 → events.k8s.io/v1 (kubernetes `pkg/apis/events/v1/conversion.go`).
pub(crate) fn core_to_v1(e: &CoreEvent) -> V1Event {
    V1Event {
        metadata: e.metadata.clone(),
        action: e.action.clone(),
        deprecated_count: e.count,
        deprecated_first_timestamp: e.first_timestamp.clone(),
        deprecated_last_timestamp: e.last_timestamp.clone(),
        deprecated_source: e.source.clone(),
        event_time: e.event_time.clone(),
        note: e.message.clone(),
        reason: e.reason.clone(),
        regarding: Some(e.involved_object.clone()),
        related: e.related.clone(),
        reporting_controller: e.reporting_component.clone(),
        reporting_instance: e.reporting_instance.clone(),
        series: e.series.as_ref().map(|s| V1Series {
            count: s.count.unwrap_or_default(),
            last_observed_time: s
                .last_observed_time
                .clone()
                .unwrap_or(MicroTime(Timestamp::UNIX_EPOCH)),
        }),
        type_: e.type_.clone(),
    }
}

/// events.k8s.io/v1 → core/v1.
pub(crate) fn v1_to_core(e: V1Event) -> CoreEvent {
    CoreEvent {
        metadata: e.metadata,
        action: e.action,
        count: e.deprecated_count,
        event_time: e.event_time,
        first_timestamp: e.deprecated_first_timestamp,
        involved_object: e.regarding.unwrap_or_default(),
        last_timestamp: e.deprecated_last_timestamp,
        message: e.note,
        reason: e.reason,
        related: e.related,
        reporting_component: e.reporting_controller,
        reporting_instance: e.reporting_instance,
        series: e.series.map(|s| CoreSeries {
            count: Some(s.count),
            last_observed_time: Some(s.last_observed_time),
        }),
        source: e.deprecated_source,
        type_: e.type_,
    }
}

/// Decodes a request body for `view` into the stored form (400 on malformed input).
pub(crate) fn decode(view: View, body: &[u8]) -> Result<Object, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    decode_value(view, value)
}

/// Decodes a JSON value for `view` into the stored form (400 on a type mismatch).
pub(crate) fn decode_value(view: View, value: Value) -> Result<Object, ApiError> {
    let cannot = |e: serde_json::Error| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            view.kind(),
            view.api_version().rsplit('/').next().unwrap_or("v1"),
            view.kind()
        ))
    };
    strict_micro_times(view, &value).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            view.kind(),
            view.api_version().rsplit('/').next().unwrap_or("v1"),
            view.kind()
        ))
    })?;
    let mut obj = match view {
        View::CoreEvents => Object::Event(Box::new(serde_json::from_value(value).map_err(cannot)?)),
        View::EventsV1 => {
            let v1: V1Event = serde_json::from_value(value).map_err(cannot)?;
            Object::Event(Box::new(v1_to_core(v1)))
        }
        View::Leases => Object::Lease(Box::new(serde_json::from_value(value).map_err(cannot)?)),
    };
    obj.normalize();
    Ok(obj)
}

/// The Go layout of a `metav1.MicroTime` on the wire (`RFC3339Micro`).
const MICRO_LAYOUT: &str = "2006-01-02T15:04:05.000000Z07:00";

/// The real apiserver decodes a `MicroTime` with `time.Parse(RFC3339Micro, …)`, which demands
/// exactly six fractional digits (k8s-openapi and the emulator's own decoding accept any RFC 3339
/// time). Checks the `MicroTime` fields of `view` and answers Go's error text for the first bad
/// one.
fn strict_micro_times(view: View, value: &Value) -> Result<(), String> {
    let paths: &[&[&str]] = match view {
        View::CoreEvents | View::EventsV1 => &[&["eventTime"], &["series", "lastObservedTime"]],
        View::Leases => &[&["spec", "acquireTime"], &["spec", "renewTime"]],
    };
    for path in paths {
        let field = path.iter().try_fold(value, |v, k| v.get(*k));
        if let Some(Value::String(text)) = field {
            check_micro_time(text).map_err(|e| {
                format!(
                    "parsing time {}{e}",
                    serde_json::to_string(text).unwrap_or_default()
                )
            })?;
        }
    }
    Ok(())
}

/// The tail of Go's `time.ParseError` for `text` against [`MICRO_LAYOUT`] (` as "…": cannot
/// parse "…" as "…"` or `: extra text: "…"`), or `Ok` when Go accepts it. The date and clock part
/// is left to the typed decoding; only the fraction and the zone are Go-exact.
fn check_micro_time(text: &str) -> Result<(), String> {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let bad = |rest: &str, elem: &str| {
        Err(format!(
            " as {}: cannot parse {} as {}",
            quote(MICRO_LAYOUT),
            quote(rest),
            quote(elem)
        ))
    };
    let Some(rest) = text.get(19..) else {
        return Ok(());
    };
    // `.000000` needs seven bytes, a dot (or comma) and six digits.
    let frac = rest.as_bytes();
    if frac.len() < 7
        || !matches!(frac[0], b'.' | b',')
        || !frac[1..7].iter().all(u8::is_ascii_digit)
    {
        return bad(rest, ".000000");
    }
    let zone = &rest[7..];
    let tail = if let Some(tail) = zone.strip_prefix('Z') {
        tail
    } else {
        let z = zone.as_bytes();
        let ok = z.len() >= 6
            && matches!(z[0], b'+' | b'-')
            && z[1..3].iter().all(u8::is_ascii_digit)
            && z[3] == b':'
            && z[4..6].iter().all(u8::is_ascii_digit);
        if !ok {
            return bad(zone, "Z07:00");
        }
        &zone[6..]
    };
    if tail.is_empty() {
        Ok(())
    } else {
        Err(format!(": extra text: {}", quote(tail)))
    }
}

/// One immutable stored version of an object, with its serialised forms cached lazily.
#[derive(Debug)]
pub(crate) struct Stored {
    pub object: Object,
    pub rv: u64,
    json: [OnceLock<Bytes>; 2],
}

impl Stored {
    /// Wraps `object`, setting `metadata.resourceVersion` to `rv`.
    pub fn new(mut object: Object, rv: u64) -> Self {
        object.meta_mut().resource_version = Some(rv.to_string());
        Self {
            object,
            rv,
            json: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// The same object at another resourceVersion (a DELETED event carries the deletion rv).
    pub fn at_rv(&self, rv: u64) -> Arc<Stored> {
        Arc::new(Stored::new(self.object.clone(), rv))
    }

    /// JSON of this version in `view` **without** `kind`/`apiVersion` (list items).
    pub fn item_json(&self, view: View) -> &Bytes {
        self.json[view.cache_slot()].get_or_init(|| Bytes::from(self.object.item_bytes(view)))
    }

    /// Appends the JSON of this version in `view` **with** `kind`/`apiVersion` (GET, watch).
    pub fn write_full_json(&self, view: View, out: &mut Vec<u8>) {
        let item = self.item_json(view);
        out.extend_from_slice(b"{\"kind\":\"");
        out.extend_from_slice(view.kind().as_bytes());
        out.extend_from_slice(b"\",\"apiVersion\":\"");
        out.extend_from_slice(view.api_version().as_bytes());
        out.push(b'"');
        if item.len() > 2 {
            out.push(b',');
            out.extend_from_slice(&item[1..]);
        } else {
            out.push(b'}');
        }
    }

    pub fn full_json(&self, view: View) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.item_json(view).len() + 48);
        self.write_full_json(view, &mut out);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EventSource, ObjectReference};

    fn legacy_event() -> CoreEvent {
        CoreEvent {
            metadata: ObjectMeta {
                name: Some("web-1.abc".into()),
                namespace: Some("ns-0".into()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                kind: Some("Pod".into()),
                name: Some("web-1".into()),
                namespace: Some("ns-0".into()),
                ..ObjectReference::default()
            },
            message: Some("Started container web".into()),
            reason: Some("Started".into()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some("node-1".into()),
            }),
            count: Some(3),
            first_timestamp: Some(Time("2024-05-01T10:00:00.5+00:00".parse().unwrap())),
            ..CoreEvent::default()
        }
    }

    #[test]
    fn fast_serialisation_equals_the_value_path() {
        let mut legacy = Object::Event(Box::new(legacy_event()));
        legacy.normalize();
        let lease = Object::Lease(Box::default());
        for (obj, view) in [
            (&legacy, View::CoreEvents),
            (&legacy, View::EventsV1),
            (&lease, View::Leases),
        ] {
            let fast: Value = serde_json::from_slice(&obj.item_bytes(view)).unwrap();
            let slow: Value = serde_json::from_slice(&obj.item_bytes_slow(view)).unwrap();
            assert_eq!(fast, slow, "{view:?}");
        }
    }

    #[test]
    fn conversion_round_trips_and_renames_fields() {
        let e = legacy_event();
        let v1 = core_to_v1(&e);
        assert_eq!(v1.note.as_deref(), Some("Started container web"));
        assert_eq!(v1.deprecated_count, Some(3));
        assert_eq!(
            v1.regarding.as_ref().and_then(|r| r.name.as_deref()),
            Some("web-1")
        );
        assert_eq!(v1_to_core(v1), e);
    }

    #[test]
    fn serialised_event_has_go_zero_values_and_z_timestamps() {
        let mut obj = Object::Event(Box::new(legacy_event()));
        obj.normalize();
        let stored = Stored::new(obj, 7);
        let v: Value = serde_json::from_slice(stored.item_json(View::CoreEvents)).unwrap();
        assert_eq!(v["firstTimestamp"], "2024-05-01T10:00:00Z");
        assert_eq!(v["lastTimestamp"], Value::Null);
        assert_eq!(v["reportingComponent"], "");
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        assert!(v.get("kind").is_none());
        let full: Value = serde_json::from_slice(&stored.full_json(View::EventsV1)).unwrap();
        assert_eq!(full["kind"], "Event");
        assert_eq!(full["apiVersion"], "events.k8s.io/v1");
        assert_eq!(full["deprecatedSource"]["component"], "kubelet");
    }
}
