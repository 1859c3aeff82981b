//! Configuration of the leader pipeline: `source`, `store`, `shipper`, `record` and `sink`.
//!
//! Owns these sections' raw schema, defaults and validation, and their serialization in the
//! file's shape (the effective print). It never opens a file or a connection: it only describes
//! them.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize, Serializer};
use serde_yaml_ng::Value;

use super::{
    Environment, Error, EventApi, Result,
    adx::{AdxConfig, RawAdx},
    duration_field, scalar,
    units::{format_bytes, parse_bytes, serialize_bytes, serialize_duration},
};
use crate::transform::RecordShape;

/// What a leader does on its very first start, when the store holds no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialList {
    /// Ship every event the API server still holds.
    All,
    /// Ship only events that happen from now on.
    None,
    /// Ship held events whose own time is at most this old.
    MaxAge(Duration),
}

impl Serialize for InitialList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All => serializer.serialize_str("all"),
            Self::None => serializer.serialize_str("none"),
            Self::MaxAge(age) => serialize_duration(age, serializer),
        }
    }
}

/// Which events to keep. Empty lists keep everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// Keep only events in these namespaces.
    pub namespaces_include: Vec<String>,
    /// Drop events in these namespaces.
    pub namespaces_exclude: Vec<String>,
    /// Keep only these event types (`Normal`, `Warning`).
    pub types: Vec<String>,
    /// Keep only these reasons.
    pub reasons_include: Vec<String>,
    /// Drop these reasons.
    pub reasons_exclude: Vec<String>,
    /// Keep only events about these kinds of object.
    pub involved_kinds: Vec<String>,
}

/// The file nests the include/exclude pairs (`namespaces.include`) beside `types` and
/// `involved_kinds`, all directly in `source`.
impl Serialize for FilterConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct IncludeExclude<'a> {
            include: &'a [String],
            exclude: &'a [String],
        }
        #[derive(Serialize)]
        struct Filter<'a> {
            namespaces: IncludeExclude<'a>,
            types: &'a [String],
            reasons: IncludeExclude<'a>,
            involved_kinds: &'a [String],
        }
        let Self {
            namespaces_include,
            namespaces_exclude,
            types,
            reasons_include,
            reasons_exclude,
            involved_kinds,
        } = self;
        Filter {
            namespaces: IncludeExclude {
                include: namespaces_include,
                exclude: namespaces_exclude,
            },
            types,
            reasons: IncludeExclude {
                include: reasons_include,
                exclude: reasons_exclude,
            },
            involved_kinds,
        }
        .serialize(serializer)
    }
}

/// The list/watch source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceConfig {
    /// Which Event API to read.
    pub api: EventApi,
    /// First-start behaviour.
    pub initial_list: InitialList,
    /// `timeoutSeconds` of each watch request.
    #[serde(serialize_with = "serialize_duration")]
    pub watch_timeout: Duration,
    /// A watch that delivers nothing for this long after its timeout is treated as dead.
    #[serde(serialize_with = "serialize_duration")]
    pub watch_idle_grace: Duration,
    /// LIST page size.
    pub page_size: u32,
    /// Filters (their keys sit directly in `source`).
    #[serde(flatten)]
    pub filter: FilterConfig,
}

/// The durable store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreConfig {
    /// Store directory (the shared volume in production).
    pub path: PathBuf,
    /// sled page cache.
    #[serde(serialize_with = "serialize_bytes")]
    pub cache_capacity: u64,
    /// Capture pauses while the outbox and the dead tree together hold this many bytes.
    #[serde(serialize_with = "serialize_bytes")]
    pub max_outbox_bytes: u64,
    /// The dead tree holds at most this many payload bytes; the oldest dead batches are dropped
    /// first (the newest is always kept). Less than `max_outbox_bytes`.
    #[serde(serialize_with = "serialize_bytes")]
    pub max_dead_bytes: u64,
    /// Dedupe entries are kept this long after an event was last seen.
    #[serde(serialize_with = "serialize_duration")]
    pub seen_retention: Duration,
    /// The API server's `--event-ttl`: resuming from an older checkpoint is reported as a gap.
    #[serde(serialize_with = "serialize_duration")]
    pub event_ttl: Duration,
    /// How long a new leader retries while the store's file lock is held.
    #[serde(serialize_with = "serialize_duration")]
    pub lock_timeout: Duration,
    /// Deadline of one store call (and of one file-sink write): a call on the volume that takes
    /// longer counts as hung; the leader steps down and `/livez` fails while it lasts.
    #[serde(serialize_with = "serialize_duration")]
    pub io_timeout: Duration,
    /// Events captured per transaction at most (group commit).
    pub max_commit_events: usize,
}

/// Batching and retries of the shipper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShipperConfig {
    /// Records per batch at most.
    pub max_batch_events: usize,
    /// Uncompressed bytes per batch at most.
    #[serde(serialize_with = "serialize_bytes")]
    pub max_batch_bytes: u64,
    /// A record waits at most this long before its batch is cut.
    #[serde(serialize_with = "serialize_duration")]
    pub max_batch_age: Duration,
    /// First retry delay.
    #[serde(serialize_with = "serialize_duration")]
    pub retry_initial: Duration,
    /// Longest retry delay.
    #[serde(serialize_with = "serialize_duration")]
    pub retry_max: Duration,
    /// Batches the sink accepted for later processing (ADX queued ingestion) whose outcome is
    /// not known yet, at most; more wait before being cut.
    pub max_awaiting_batches: usize,
}

/// Output records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordConfig {
    /// Shape (`flat` or `fluent-bit`), read straight into the transform's own type.
    pub shape: RecordShape,
    /// Add the `Uid` column.
    pub include_uid: bool,
    /// Add the `ResourceVersion` column.
    pub include_resource_version: bool,
}

/// The file lists the optional columns by name (`extra_columns: [Uid]`).
impl Serialize for RecordConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Record {
            shape: RecordShape,
            extra_columns: Vec<&'static str>,
        }
        let Self {
            shape,
            include_uid,
            include_resource_version,
        } = *self;
        Record {
            shape,
            extra_columns: [
                (include_uid, "Uid"),
                (include_resource_version, "ResourceVersion"),
            ]
            .into_iter()
            .filter_map(|(on, column)| on.then_some(column))
            .collect(),
        }
        .serialize(serializer)
    }
}

/// Where batches go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// Standard output (debugging; a re-sent batch may appear twice).
    Stdout,
    /// NDJSON files.
    File {
        /// Active file.
        path: PathBuf,
        /// Rotate at this size.
        max_bytes: u64,
        /// Rotated files kept.
        max_files: usize,
    },
    /// Azure Data Explorer.
    Adx(Box<AdxConfig>),
}

/// The file names the sink in `type` and holds its settings in a section of that name.
impl Serialize for SinkConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct FileSection<'a> {
            path: &'a Path,
            #[serde(serialize_with = "serialize_bytes")]
            max_bytes: u64,
            max_files: usize,
        }
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "lowercase")]
        enum Sink<'a> {
            Stdout,
            File { file: FileSection<'a> },
            Adx { adx: &'a AdxConfig },
        }
        match self {
            Self::Stdout => Sink::Stdout,
            Self::File {
                path,
                max_bytes,
                max_files,
            } => Sink::File {
                file: FileSection {
                    path,
                    max_bytes: *max_bytes,
                    max_files: *max_files,
                },
            },
            Self::Adx(adx) => Sink::Adx { adx },
        }
        .serialize(serializer)
    }
}

// === raw schema ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    api: Option<String>,
    initial_list: Option<String>,
    watch_timeout: Option<String>,
    watch_idle_grace: Option<String>,
    #[serde(default, deserialize_with = "scalar::whole")]
    page_size: Option<u32>,
    #[serde(default)]
    namespaces: RawIncludeExclude,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    reasons: RawIncludeExclude,
    #[serde(default)]
    involved_kinds: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIncludeExclude {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    path: Option<PathBuf>,
    cache_capacity: Option<Value>,
    max_outbox_bytes: Option<Value>,
    max_dead_bytes: Option<Value>,
    seen_retention: Option<String>,
    event_ttl: Option<String>,
    lock_timeout: Option<String>,
    io_timeout: Option<String>,
    #[serde(default, deserialize_with = "scalar::whole")]
    max_commit_events: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShipper {
    #[serde(default, deserialize_with = "scalar::whole")]
    max_batch_events: Option<usize>,
    max_batch_bytes: Option<Value>,
    max_batch_age: Option<String>,
    retry_initial: Option<String>,
    retry_max: Option<String>,
    #[serde(default, deserialize_with = "scalar::whole")]
    max_awaiting_batches: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecord {
    shape: Option<RecordShape>,
    #[serde(default)]
    extra_columns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    #[serde(rename = "type")]
    kind: String,
    file: Option<RawFileSink>,
    adx: Option<RawAdx>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSink {
    path: Option<PathBuf>,
    max_bytes: Option<Value>,
    #[serde(default, deserialize_with = "scalar::whole")]
    max_files: Option<usize>,
}

/// Default store directory.
pub const DEFAULT_STORE_PATH: &str = "/var/lib/kevents/store";
/// The API server's default `--event-ttl`.
pub const DEFAULT_EVENT_TTL: Duration = Duration::from_secs(3600);

/// A size: a YAML integer (bytes) or a string such as `64MiB` (or `${VAR}` holding one). An empty
/// string is unset, like a missing key, so `${VAR:-}` of an unset variable means the default.
fn bytes_field(key: &str, value: Option<&Value>, default: u64) -> Result<u64> {
    match value {
        None => Ok(default),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| Error::invalid(key, format!("`{n}` is not a positive size"))),
        Some(Value::String(text)) => parse_bytes(text).map_err(|m| Error::invalid(key, m)),
        Some(_) => Err(Error::invalid(
            key,
            "must be a size like 64MiB or a number of bytes",
        )),
    }
}

fn positive<T: PartialOrd + Default + std::fmt::Display>(key: &str, value: T) -> Result<T> {
    if value > T::default() {
        Ok(value)
    } else {
        Err(Error::invalid(
            key,
            format!("must be greater than 0, not {value}"),
        ))
    }
}

impl RawSource {
    pub(super) fn validate(self) -> Result<SourceConfig> {
        let api = match self.api.as_deref() {
            None | Some("core/v1" | "v1") => EventApi::CoreV1,
            Some("events.k8s.io/v1") => EventApi::EventsV1,
            Some(other) => {
                return Err(Error::invalid(
                    "source.api",
                    format!("`{other}` is not one of `core/v1`, `events.k8s.io/v1`"),
                ));
            }
        };
        let initial_list = match self.initial_list.as_deref() {
            None | Some("all") => InitialList::All,
            Some("none") => InitialList::None,
            Some(age) => InitialList::MaxAge(super::units::parse_duration(age).map_err(|m| {
                Error::invalid(
                    "source.initial_list",
                    format!("must be `all`, `none` or a max age such as 30m: {m}"),
                )
            })?),
        };
        let watch_timeout = duration_field(
            "source.watch_timeout",
            self.watch_timeout.as_deref(),
            Duration::from_secs(290),
        )?;
        if watch_timeout < Duration::from_secs(1) {
            return Err(Error::invalid(
                "source.watch_timeout",
                "must be at least 1s",
            ));
        }
        for (key, types) in [("source.types", &self.types)] {
            for t in types {
                if t != "Normal" && t != "Warning" {
                    return Err(Error::invalid(
                        key,
                        format!("`{t}` is not an event type (Normal or Warning)"),
                    ));
                }
            }
        }
        Ok(SourceConfig {
            api,
            initial_list,
            watch_timeout,
            watch_idle_grace: duration_field(
                "source.watch_idle_grace",
                self.watch_idle_grace.as_deref(),
                Duration::from_secs(30),
            )?,
            page_size: positive("source.page_size", self.page_size.unwrap_or(500))?,
            filter: FilterConfig {
                namespaces_include: self.namespaces.include,
                namespaces_exclude: self.namespaces.exclude,
                types: self.types,
                reasons_include: self.reasons.include,
                reasons_exclude: self.reasons.exclude,
                involved_kinds: self.involved_kinds,
            },
        })
    }
}

impl RawStore {
    pub(super) fn validate(self) -> Result<StoreConfig> {
        let event_ttl = duration_field(
            "store.event_ttl",
            self.event_ttl.as_deref(),
            DEFAULT_EVENT_TTL,
        )?;
        let seen_retention = duration_field(
            "store.seen_retention",
            self.seen_retention.as_deref(),
            Duration::from_secs(7200),
        )?;
        if seen_retention < event_ttl {
            return Err(Error::invalid(
                "store.seen_retention",
                "must be at least store.event_ttl (an event can be updated until it expires)",
            ));
        }
        let max_outbox_bytes = positive(
            "store.max_outbox_bytes",
            bytes_field(
                "store.max_outbox_bytes",
                self.max_outbox_bytes.as_ref(),
                1 << 30,
            )?,
        )?;
        let max_dead_bytes = positive(
            "store.max_dead_bytes",
            bytes_field(
                "store.max_dead_bytes",
                self.max_dead_bytes.as_ref(),
                // A small outbox gets a dead tree in proportion.
                crate::store::DEFAULT_MAX_DEAD_BYTES.min(max_outbox_bytes / 4),
            )?,
        )?;
        if max_dead_bytes >= max_outbox_bytes {
            return Err(Error::invalid(
                "store.max_dead_bytes",
                format!(
                    "must be less than store.max_outbox_bytes ({}): dead batches count against it, \
                     and a dead tree that could fill it would stop capture for good",
                    format_bytes(max_outbox_bytes)
                ),
            ));
        }
        Ok(StoreConfig {
            path: self
                .path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_PATH)),
            cache_capacity: positive(
                "store.cache_capacity",
                bytes_field(
                    "store.cache_capacity",
                    self.cache_capacity.as_ref(),
                    16 << 20,
                )?,
            )?,
            max_outbox_bytes,
            max_dead_bytes,
            seen_retention,
            event_ttl,
            lock_timeout: duration_field(
                "store.lock_timeout",
                self.lock_timeout.as_deref(),
                Duration::from_secs(60),
            )?,
            io_timeout: io_timeout(self.io_timeout.as_deref())?,
            max_commit_events: positive(
                "store.max_commit_events",
                self.max_commit_events.unwrap_or(2000),
            )?,
        })
    }
}

impl RawShipper {
    pub(super) fn validate(self) -> Result<ShipperConfig> {
        let retry_initial = duration_field(
            "shipper.retry_initial",
            self.retry_initial.as_deref(),
            Duration::from_secs(1),
        )?;
        let retry_max = duration_field(
            "shipper.retry_max",
            self.retry_max.as_deref(),
            Duration::from_secs(60),
        )?;
        if retry_max < retry_initial || retry_initial.is_zero() {
            return Err(Error::invalid(
                "shipper.retry_max",
                "must be at least shipper.retry_initial, which must be positive",
            ));
        }
        Ok(ShipperConfig {
            max_batch_events: positive(
                "shipper.max_batch_events",
                self.max_batch_events.unwrap_or(10_000),
            )?,
            max_batch_bytes: positive(
                "shipper.max_batch_bytes",
                bytes_field(
                    "shipper.max_batch_bytes",
                    self.max_batch_bytes.as_ref(),
                    16 << 20,
                )?,
            )?,
            max_batch_age: duration_field(
                "shipper.max_batch_age",
                self.max_batch_age.as_deref(),
                Duration::from_secs(15),
            )?,
            retry_initial,
            retry_max,
            max_awaiting_batches: positive(
                "shipper.max_awaiting_batches",
                self.max_awaiting_batches.unwrap_or(64),
            )?,
        })
    }
}

impl RawRecord {
    pub(super) fn validate(self) -> Result<RecordConfig> {
        let mut record = RecordConfig {
            shape: self.shape.unwrap_or_default(),
            include_uid: false,
            include_resource_version: false,
        };
        for column in self.extra_columns {
            match column.as_str() {
                "Uid" => record.include_uid = true,
                "ResourceVersion" => record.include_resource_version = true,
                other => {
                    return Err(Error::invalid(
                        "record.extra_columns",
                        format!("`{other}` is not one of `Uid`, `ResourceVersion`"),
                    ));
                }
            }
        }
        Ok(record)
    }
}

pub(super) fn validate_sink(
    raw: Option<RawSink>,
    shape: RecordShape,
    env: &Environment<'_>,
) -> Result<SinkConfig> {
    let Some(raw) = raw else {
        return Err(Error::invalid(
            "sink",
            "is required: `type: file` (with `file.path`), `stdout`, or `adx`",
        ));
    };
    match raw.kind.as_str() {
        "stdout" => Ok(SinkConfig::Stdout),
        "file" => {
            let file = raw.file.ok_or_else(|| {
                Error::invalid("sink.file", "is required when sink.type is `file`")
            })?;
            let path = file
                .path
                .ok_or_else(|| Error::invalid("sink.file.path", "is required"))?;
            Ok(SinkConfig::File {
                path,
                max_bytes: positive(
                    "sink.file.max_bytes",
                    bytes_field("sink.file.max_bytes", file.max_bytes.as_ref(), 100 << 20)?,
                )?,
                max_files: file.max_files.unwrap_or(5),
            })
        }
        "adx" => {
            let adx = raw
                .adx
                .ok_or_else(|| Error::invalid("sink.adx", "is required when sink.type is `adx`"))?;
            Ok(SinkConfig::Adx(Box::new(adx.validate(shape, env)?)))
        }
        other => Err(Error::invalid(
            "sink.type",
            format!("`{other}` is not one of `file`, `stdout`, `adx`"),
        )),
    }
}

/// Default deadline of a store call: far above a healthy share's worst commit (a few hundred ms
/// on Azure Files), well below what an operator would wait before calling the mount hung.
const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

fn io_timeout(text: Option<&str>) -> Result<Duration> {
    let timeout = duration_field("store.io_timeout", text, DEFAULT_IO_TIMEOUT)?;
    if timeout < Duration::from_secs(1) {
        return Err(Error::invalid(
            "store.io_timeout",
            "must be at least 1s: a healthy share can take hundreds of milliseconds per commit",
        ));
    }
    Ok(timeout)
}
