//! The transform: a pure function from one Kubernetes Event (a `serde_json::Value`, either the
//! core/v1 or the events.k8s.io/v1 view) to one output record, plus the event's dedupe key and
//! the instant used for lag metrics.
//!
//! Owns the record shapes (`flat`, the seed's `KubeEvents` row, and `fluent-bit`,
//! `{"TimeGenerated": …, "log": {…}}` for the seed's `FluentBitMappingEvents` mapping), their
//! column semantics, and `manifests/adx/kube-events.kql`, which creates the table and mappings
//! and is checked by this module's tests. It must never depend on `kube`, `k8s-openapi` or
//! `reqwest`, never do I/O, never copy `metadata.managedFields` (or any field not listed) into a
//! record, and never lose an event over a malformed optional field.
//!
//! # Column semantics, and the choices made
//!
//! * **Missing values.** A string column whose field is missing, `null` or of the wrong type is
//!   `""`; a datetime column is `null`. A time is never invented: `TimeGenerated` is `null` when
//!   the event carries no parseable timestamp at all. ADX stores `""` for a `null` string, so the
//!   choice only matters to readers of the raw record, and `""` keeps the flat record's string
//!   columns always strings.
//! * **Timestamps** are parsed with any offset and written in RFC 3339 UTC with `Z`: whole
//!   seconds as `2024-05-01T10:00:00Z` (what the seed wrote for legacy events), otherwise six
//!   fractional digits (`MicroTime` precision is kept), or nine when the input had nanoseconds.
//!   An unparseable timestamp, or one without an offset, reads as missing.
//! * **`Count`** is `series.count` when the event has a series (it is the newest count), else
//!   `count` / `deprecatedCount`. Only positive integers count: the API server omits a zero, so
//!   `0`, negative, fractional and non-numeric values read as missing. The flat record writes it
//!   as a **JSON string** (`"5"`, `""` when missing), matching the table's `Count: string`
//!   column: ADX would convert a number too, but a string keeps the record self-consistent for
//!   auto-created columns, `dynamic` copies and other consumers of the file sink. The fluent-bit
//!   shape writes a **number** (or `null`), exactly what the seed's Fluent Bit sent.
//! * **`Namespace`** is the involved object's namespace; when the involved object has none
//!   (cluster-scoped objects such as a `Node` or a `PersistentVolume`, or no involved object at
//!   all) it falls back to the event's own `metadata.namespace` — for `Node` events usually
//!   `default`. This is the namespace `kubectl get events -A` shows, so `Namespace == "x"` finds
//!   the events `kubectl get events -n x` lists. The seed wrote `""` there; query cluster-scoped
//!   objects by `Kind` instead.
//! * **`SourceComputer`** and **`SourceComponent`** are `""` when `source` is missing (the seed
//!   adds `source_host ""` for the same reason).
//! * **Bad input.** A field of the wrong JSON type (`count: "x"`, `involvedObject: 5`,
//!   `message: 7`) reads as missing and the record is still produced. Only a value that is not a
//!   JSON object, or one without a `metadata` object, is an [`Error`]: there is nothing to
//!   identify the event by.

mod view;

#[cfg(test)]
mod tests;

use std::fmt;

use jiff::Timestamp;
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::Value;

use view::{EventView, Object, Times};

/// The flat record's column names, in table order: the seed's `KubeEvents` columns, then the
/// optional `Uid` and `ResourceVersion` (written only when enabled in [`RecordOptions`]).
pub const FLAT_COLUMNS: &[&str] = &[
    "TimeGenerated",
    "Namespace",
    "Name",
    "Kind",
    "ApiVersion",
    "KubeEventType",
    "Action",
    "Reason",
    "Message",
    "Count",
    "CreationTimestamp",
    "FirstSeen",
    "LastSeen",
    "SourceComponent",
    "SourceComputer",
    "ReportingComponent",
    "ReportingComputer",
    "Cluster",
    "Region",
    "Environment",
    "Uid",
    "ResourceVersion",
];

/// A transform error. `Display` names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The value is not a JSON object, so it cannot be an Event.
    #[error("event: not a JSON object")]
    NotAnObject,
    /// A required field is absent, `null` or empty.
    #[error("event field {field} is missing or empty")]
    Missing {
        /// Dotted path of the field (`metadata`, `metadata.uid`, `metadata.resourceVersion`).
        field: &'static str,
    },
    /// A required field has the wrong JSON type.
    #[error("event field {field} is not {expected}")]
    WrongType {
        /// Dotted path of the field.
        field: &'static str,
        /// The JSON type it must have, with its article (`a string`).
        expected: &'static str,
    },
    /// Writing the record failed (cannot happen for the values this module writes; kept so a
    /// serializer error is reported instead of hidden).
    #[error("cannot write the output record")]
    Write(#[source] serde_json::Error),
}

/// `type Result<T> = Result<T, transform::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which record shape [`to_record`] writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordShape {
    /// One flat `KubeEvents` row, columns as in [`FLAT_COLUMNS`] (mapping `KubeEventsFlatMapping`).
    #[default]
    Flat,
    /// `{"TimeGenerated": …, "log": {…}}` as the seed's Fluent Bit sent it, so the existing
    /// `FluentBitMappingEvents` mapping works unchanged.
    FluentBit,
}

/// How records are shaped, and the constant columns they carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordOptions {
    /// Flat (default) or fluent-bit.
    pub shape: RecordShape,
    /// Adds the column `Uid` (`metadata.uid`).
    pub include_uid: bool,
    /// Adds the column `ResourceVersion` (`metadata.resourceVersion`).
    pub include_resource_version: bool,
    /// The `Cluster` column.
    pub cluster: String,
    /// The `Region` column.
    pub region: String,
    /// The `Environment` column.
    pub environment: String,
}

/// The dedupe key of one event version: (`metadata.uid`, `metadata.resourceVersion`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion` (opaque; never compared as a number).
    pub resource_version: String,
}

/// The dedupe key of `object`. Both fields must be non-empty strings; the error names the first
/// one that is not.
pub fn event_key(object: &Value) -> Result<EventKey> {
    let metadata = metadata(object)?;
    Ok(EventKey {
        uid: required_string(metadata, "uid", "metadata.uid")?.to_owned(),
        resource_version: required_string(metadata, "resourceVersion", "metadata.resourceVersion")?
            .to_owned(),
    })
}

/// `object` as one compact JSON record in the shape `options` asks for, without a trailing
/// newline. See the module documentation for each column's rules.
///
/// Fails only when `object` is not a JSON object or has no `metadata` object.
pub fn to_record(object: &Value, options: &RecordOptions) -> Result<Vec<u8>> {
    let event = object.as_object().ok_or(Error::NotAnObject)?;
    let metadata = metadata(object)?;
    let view = EventView::read(event, metadata);
    let mut out = Vec::with_capacity(RECORD_BASE_CAPACITY + view.message.len());
    let written = match options.shape {
        RecordShape::Flat => serde_json::to_writer(&mut out, &Flat { view, options }),
        RecordShape::FluentBit => serde_json::to_writer(&mut out, &FluentBit { view, options }),
    };
    written.map_err(Error::Write)?;
    Ok(out)
}

/// The record's `TimeGenerated` instant: the newest of `series.lastObservedTime`,
/// `lastTimestamp` (`deprecatedLastTimestamp`), `eventTime` and `metadata.creationTimestamp`.
/// `None` when `object` is not an object or carries none of them in a parseable form.
#[must_use]
pub fn event_time(object: &Value) -> Option<Timestamp> {
    let event = object.as_object()?;
    let metadata = view::object(event.get("metadata"));
    Times::read(event, metadata, view::flavour(event)).generated
}

/// Bytes reserved for everything but the message; a typical record is 600–900 bytes.
const RECORD_BASE_CAPACITY: usize = 1024;

fn metadata(object: &Value) -> Result<&Object> {
    let event = object.as_object().ok_or(Error::NotAnObject)?;
    match event.get("metadata") {
        None | Some(Value::Null) => Err(Error::Missing { field: "metadata" }),
        Some(Value::Object(metadata)) => Ok(metadata),
        Some(_) => Err(Error::WrongType {
            field: "metadata",
            expected: "an object",
        }),
    }
}

fn required_string<'a>(metadata: &'a Object, key: &str, field: &'static str) -> Result<&'a str> {
    match metadata.get(key) {
        None | Some(Value::Null) => Err(Error::Missing { field }),
        Some(Value::String(s)) if s.is_empty() => Err(Error::Missing { field }),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Error::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// An instant written as RFC 3339 UTC with `Z` (see the module documentation for precision).
#[derive(Debug, Clone, Copy)]
struct Rfc3339(Timestamp);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.subsec_nanosecond() {
            0 => write!(f, "{}", self.0),
            n if n % 1000 == 0 => write!(f, "{:.6}", self.0),
            _ => write!(f, "{:.9}", self.0),
        }
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // serde_json writes `collect_str` straight into the output, without a temporary String.
        serializer.collect_str(self)
    }
}

/// The flat record's `Count`: a JSON string, `""` when missing.
struct CountString(Option<u64>);

impl Serialize for CountString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(n) => serializer.collect_str(&n),
            None => serializer.serialize_str(""),
        }
    }
}

/// The flat record.
struct Flat<'a> {
    view: EventView<'a>,
    options: &'a RecordOptions,
}

impl Serialize for Flat<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("TimeGenerated", &self.view.times.generated.map(Rfc3339))?;
        write_columns(&mut map, &self.view, self.options, CountAs::String)?;
        map.end()
    }
}

/// The fluent-bit record: `TimeGenerated` beside a `log` object with the renamed keys.
struct FluentBit<'a> {
    view: EventView<'a>,
    options: &'a RecordOptions,
}

impl Serialize for FluentBit<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("TimeGenerated", &self.view.times.generated.map(Rfc3339))?;
        map.serialize_entry("log", &Log(self))?;
        map.end()
    }
}

/// The fluent-bit record's `log` object.
struct Log<'r, 'a>(&'r FluentBit<'a>);

impl Serialize for Log<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        write_columns(&mut map, &self.0.view, self.0.options, CountAs::Number)?;
        map.end()
    }
}

#[derive(Debug, Clone, Copy)]
enum CountAs {
    String,
    Number,
}

/// Every column after `TimeGenerated`, in [`FLAT_COLUMNS`] order.
fn write_columns<M: SerializeMap>(
    map: &mut M,
    view: &EventView<'_>,
    options: &RecordOptions,
    count_as: CountAs,
) -> Result<(), M::Error> {
    map.serialize_entry("Namespace", view.namespace)?;
    map.serialize_entry("Name", view.name)?;
    map.serialize_entry("Kind", view.kind)?;
    map.serialize_entry("ApiVersion", view.api_version)?;
    map.serialize_entry("KubeEventType", view.event_type)?;
    map.serialize_entry("Action", view.action)?;
    map.serialize_entry("Reason", view.reason)?;
    map.serialize_entry("Message", view.message)?;
    match count_as {
        CountAs::String => map.serialize_entry("Count", &CountString(view.count))?,
        CountAs::Number => map.serialize_entry("Count", &view.count)?,
    }
    map.serialize_entry("CreationTimestamp", &view.times.creation.map(Rfc3339))?;
    map.serialize_entry("FirstSeen", &view.times.first_seen.map(Rfc3339))?;
    map.serialize_entry("LastSeen", &view.times.last_seen.map(Rfc3339))?;
    map.serialize_entry("SourceComponent", view.source_component)?;
    map.serialize_entry("SourceComputer", view.source_host)?;
    map.serialize_entry("ReportingComponent", view.reporting_component)?;
    map.serialize_entry("ReportingComputer", view.reporting_instance)?;
    map.serialize_entry("Cluster", &options.cluster)?;
    map.serialize_entry("Region", &options.region)?;
    map.serialize_entry("Environment", &options.environment)?;
    if options.include_uid {
        map.serialize_entry("Uid", view.uid)?;
    }
    if options.include_resource_version {
        map.serialize_entry("ResourceVersion", view.resource_version)?;
    }
    Ok(())
}
