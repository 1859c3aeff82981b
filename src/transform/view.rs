//! Reading one Kubernetes Event, in either API view, into borrowed column values.
//!
//! Owns the core/v1 ↔ events.k8s.io/v1 field mapping (`reference/kubernetes-api.md` §2.1), the
//! choice of timestamps and count, and the leniency rules: a field of the wrong JSON type reads as
//! missing. It borrows from the input and must never copy a string, allocate per field, or read
//! `metadata.managedFields`.

use jiff::Timestamp;
use serde_json::{Map, Value};

/// A JSON object, as `serde_json` holds it.
pub(super) type Object = Map<String, Value>;

/// Where one API view keeps the fields whose names differ between the two views.
pub(super) struct Flavour {
    /// The object the event is about: `involvedObject` / `regarding`.
    involved: &'static str,
    /// Free text: `message` / `note`.
    message: &'static str,
    /// `{component, host}`: `source` / `deprecatedSource`.
    source: &'static str,
    /// Legacy occurrence count: `count` / `deprecatedCount`.
    count: &'static str,
    /// Legacy first occurrence: `firstTimestamp` / `deprecatedFirstTimestamp`.
    first: &'static str,
    /// Legacy last occurrence: `lastTimestamp` / `deprecatedLastTimestamp`.
    last: &'static str,
    /// The reporting controller: `reportingComponent` / `reportingController`.
    reporting: &'static str,
}

/// The core/v1 view (`/api/v1/events`).
pub(super) const CORE_V1: Flavour = Flavour {
    involved: "involvedObject",
    message: "message",
    source: "source",
    count: "count",
    first: "firstTimestamp",
    last: "lastTimestamp",
    reporting: "reportingComponent",
};

/// The events.k8s.io/v1 (and v1beta1) view.
pub(super) const EVENTS_V1: Flavour = Flavour {
    involved: "regarding",
    message: "note",
    source: "deprecatedSource",
    count: "deprecatedCount",
    first: "deprecatedFirstTimestamp",
    last: "deprecatedLastTimestamp",
    reporting: "reportingController",
};

/// Fields that exist only in the events.k8s.io view; any of them decides the view when
/// `apiVersion` is absent or unknown.
const EVENTS_V1_ONLY: &[&str] = &[
    "regarding",
    "note",
    "deprecatedSource",
    "deprecatedCount",
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "reportingController",
];

/// Which view `event` is: by `apiVersion` when it names one (`v1`, `events.k8s.io/*`), else by
/// the presence of an events.k8s.io-only field. Anything else reads as core/v1, the view every
/// legacy tool emits.
pub(super) fn flavour(event: &Object) -> &'static Flavour {
    match event.get("apiVersion").and_then(Value::as_str) {
        Some("v1") => &CORE_V1,
        Some(v) if v.starts_with("events.k8s.io/") => &EVENTS_V1,
        _ if EVENTS_V1_ONLY.iter().any(|k| event.contains_key(*k)) => &EVENTS_V1,
        _ => &CORE_V1,
    }
}

/// The four instants of an event, each `None` when absent or unparseable (never invented).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Times {
    /// `metadata.creationTimestamp`.
    pub creation: Option<Timestamp>,
    /// `firstTimestamp` / `deprecatedFirstTimestamp`, else `eventTime`.
    pub first_seen: Option<Timestamp>,
    /// The newer of `lastTimestamp` / `deprecatedLastTimestamp` and `series.lastObservedTime`,
    /// else `eventTime`.
    pub last_seen: Option<Timestamp>,
    /// The newest of `series.lastObservedTime`, `lastTimestamp` (or `deprecatedLastTimestamp`),
    /// `eventTime` and `metadata.creationTimestamp` (`DESIGN.md`, "Output records").
    pub generated: Option<Timestamp>,
}

impl Times {
    /// Reads the instants of `event` in view `flavour`; `metadata` is `event.metadata`.
    pub(super) fn read(event: &Object, metadata: Option<&Object>, flavour: &Flavour) -> Self {
        let series = object(event.get("series"));
        let creation = time(metadata.and_then(|m| m.get("creationTimestamp")));
        let event_time = time(event.get("eventTime"));
        let first = time(event.get(flavour.first));
        let last = time(event.get(flavour.last));
        let observed = time(series.and_then(|s| s.get("lastObservedTime")));
        // `Option`'s order puts `None` below every `Some`, so `max` is "the newest one present".
        Self {
            creation,
            first_seen: first.or(event_time),
            last_seen: last.max(observed).or(event_time),
            generated: observed.max(last).max(event_time).max(creation),
        }
    }
}

/// One Event read into column values, borrowed from the input. String columns are `""` when the
/// field is missing or not a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EventView<'a> {
    /// The involved object's namespace, else the event's own `metadata.namespace`.
    pub namespace: &'a str,
    /// `involvedObject.name` / `regarding.name`.
    pub name: &'a str,
    /// `involvedObject.kind` / `regarding.kind`.
    pub kind: &'a str,
    /// `involvedObject.apiVersion` / `regarding.apiVersion`.
    pub api_version: &'a str,
    /// `type` (`Normal`, `Warning`).
    pub event_type: &'a str,
    /// `action`.
    pub action: &'a str,
    /// `reason`.
    pub reason: &'a str,
    /// `message` / `note`.
    pub message: &'a str,
    /// `series.count`, else `count` / `deprecatedCount`; only positive integers count.
    pub count: Option<u64>,
    /// The event's instants.
    pub times: Times,
    /// `source.component` / `deprecatedSource.component`.
    pub source_component: &'a str,
    /// `source.host` / `deprecatedSource.host`.
    pub source_host: &'a str,
    /// `reportingComponent` / `reportingController`.
    pub reporting_component: &'a str,
    /// `reportingInstance`.
    pub reporting_instance: &'a str,
    /// `metadata.uid`.
    pub uid: &'a str,
    /// `metadata.resourceVersion`.
    pub resource_version: &'a str,
}

impl<'a> EventView<'a> {
    /// Reads `event`, whose `metadata` object is `metadata`.
    pub(super) fn read(event: &'a Object, metadata: &'a Object) -> Self {
        let flavour = flavour(event);
        let involved = object(event.get(flavour.involved));
        let source = object(event.get(flavour.source));
        let series = object(event.get("series"));
        let involved_namespace = string(involved, "namespace");
        Self {
            namespace: if involved_namespace.is_empty() {
                string(Some(metadata), "namespace")
            } else {
                involved_namespace
            },
            name: string(involved, "name"),
            kind: string(involved, "kind"),
            api_version: string(involved, "apiVersion"),
            event_type: string(Some(event), "type"),
            action: string(Some(event), "action"),
            reason: string(Some(event), "reason"),
            message: string(Some(event), flavour.message),
            count: count(series, "count").or_else(|| count(Some(event), flavour.count)),
            times: Times::read(event, Some(metadata), flavour),
            source_component: string(source, "component"),
            source_host: string(source, "host"),
            reporting_component: string(Some(event), flavour.reporting),
            reporting_instance: string(Some(event), "reportingInstance"),
            uid: string(Some(metadata), "uid"),
            resource_version: string(Some(metadata), "resourceVersion"),
        }
    }
}

/// `value` as an object, `None` when missing or of another type.
pub(super) fn object(value: Option<&Value>) -> Option<&Object> {
    value.and_then(Value::as_object)
}

/// `parent[key]` as a string, `""` when missing or of another type.
fn string<'a>(parent: Option<&'a Object>, key: &str) -> &'a str {
    parent
        .and_then(|p| p.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `parent[key]` as a positive integer. Zero is what the API server omits (`omitempty`), so it
/// means "no count"; negative, fractional and non-numeric values are ignored.
fn count(parent: Option<&Object>, key: &str) -> Option<u64> {
    parent
        .and_then(|p| p.get(key))
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
}

/// `value` parsed as an RFC 3339 instant (any offset), `None` when missing, not a string, or
/// unparseable (a timestamp without an offset is not assumed to be UTC).
fn time(value: Option<&Value>) -> Option<Timestamp> {
    value.and_then(Value::as_str).and_then(|s| s.parse().ok())
}
