//! The kevents configuration: one YAML file, parsed into raw structs, then validated into a typed
//! [`Config`] before anything starts. `kevents check-config` runs exactly this.
//!
//! Owns the schema, `${VAR}` expansion, defaults and validation, and the redacted print of the
//! effective configuration. This is the only module that reads the process environment for
//! configuration. It must never log or print a secret value.

mod adx;
mod expand;
mod pipeline;
mod raw;
mod scalar;
pub mod units;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde_yaml_ng::{Mapping, Value};

pub use adx::{
    AdxAuthConfig, AdxConfig, AdxFormat, AdxMode, DEFAULT_AUTHORITY_HOST, DEFAULT_IMDS_ENDPOINT,
    DEFAULT_SCOPE, DEFAULT_STREAMING_MAX_BYTES, FailedIngestionsConfig, HealthcheckConfig, Secret,
    StatusConfig, WORKLOAD_IDENTITY_ENV,
};
pub use expand::ExpandError;
pub use pipeline::{
    FilterConfig, InitialList, RecordConfig, ShipperConfig, SinkConfig, SourceConfig, StoreConfig,
};
use units::{format_duration, parse_duration};

/// Where a pod's own namespace is found in-cluster.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// A configuration error. `Display` names the offending key (dotted path) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("config file is not valid YAML: {0}")]
    Yaml(String),
    /// `${VAR}` expansion failed.
    #[error(transparent)]
    Expand(#[from] ExpandError),
    /// A key is unknown, missing, of the wrong type, or has an invalid value.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted path of the offending key (`.` for the whole document).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `type Result<T> = Result<T, config::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for cluster log pipelines.
    Json,
}

/// Which Event API the source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventApi {
    /// `core/v1` Events (`/api/v1/events`), the default.
    CoreV1,
    /// `events.k8s.io/v1` Events.
    EventsV1,
}

/// Identity of this cluster, written into every record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTags {
    /// `Cluster` column.
    pub name: String,
    /// `Region` column.
    pub region: String,
    /// `Environment` column.
    pub environment: String,
}

/// How to reach the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// An explicit kubeconfig file; `None` means in-cluster config or `KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
}

/// Lease-based leader election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Lease object name.
    pub lease_name: String,
    /// Lease namespace; `None` means the client's default namespace.
    pub lease_namespace: Option<String>,
    /// This replica's identity (holderIdentity).
    pub identity: String,
    /// How long a lease is valid after it was last observed to change.
    pub lease_duration: Duration,
    /// A leader that has not renewed within this demotes itself.
    pub renew_deadline: Duration,
    /// Interval between acquire/renew attempts (jittered).
    pub retry_period: Duration,
}

/// The admin HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Listen address of `/livez`, `/readyz`, `/metrics`, `/status`.
    pub listen: SocketAddr,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `kevents=debug,info`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Drill aids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagnosticsConfig {
    /// While its lease is current, the leader appends `<unix_ms> <identity> <epoch>` lines to this
    /// file (fenced exactly like every other side effect); drills read it to prove the fence.
    pub fence_log: Option<PathBuf>,
    /// How often a fence-log line is written.
    pub fence_log_interval: Duration,
    /// Drills only: a store capture waits this long between its fence check and its write, so a
    /// pause can land inside the check-then-act window (zero: never).
    pub stall_store_commit: Duration,
    /// Drills only: the file sink waits this long between journaling a batch and writing it.
    pub stall_sink_write: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Cluster tags.
    pub cluster: ClusterTags,
    /// Kubernetes API access.
    pub kubernetes: KubernetesConfig,
    /// Leader election.
    pub leader: LeaderConfig,
    /// Admin server.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// Time allowed for a graceful shutdown after SIGTERM/SIGINT.
    pub shutdown_grace_period: Duration,
    /// Drill aids.
    pub diagnostics: DiagnosticsConfig,
    /// The list/watch source.
    pub source: SourceConfig,
    /// The durable store.
    pub store: StoreConfig,
    /// The shipper.
    pub shipper: ShipperConfig,
    /// Output records.
    pub record: RecordConfig,
    /// Where batches go.
    pub sink: SinkConfig,
}

/// Where configuration values not in the file come from: the environment and the pod's files.
pub struct Environment<'a> {
    /// Looks up an environment variable.
    pub var: &'a dyn Fn(&str) -> Option<String>,
    /// Reads the service-account namespace file, if present.
    pub pod_namespace: &'a dyn Fn() -> Option<String>,
    /// A short random suffix that makes this process's identity unique.
    pub identity_suffix: String,
}

impl Environment<'_> {
    /// The real process environment.
    #[must_use]
    pub fn process() -> Environment<'static> {
        Environment {
            var: &|name| std::env::var(name).ok(),
            pod_namespace: &|| {
                std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
            },
            identity_suffix: random_suffix(),
        }
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

impl Config {
    /// Reads, expands and validates a config file.
    pub fn load(path: &std::path::Path, env: &Environment<'_>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, env)
    }

    /// Expands and validates config text.
    pub fn parse(text: &str, env: &Environment<'_>) -> Result<Self> {
        let mut tree: Value = if text.trim().is_empty() {
            Value::Mapping(Mapping::new())
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| Error::Yaml(e.to_string()))?
        };
        if tree.is_null() {
            tree = Value::Mapping(Mapping::new());
        }
        expand::expand_tree(&mut tree, env.var)?;
        let raw: raw::RawConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            Error::invalid(
                if key.is_empty() { ".".to_owned() } else { key },
                e.into_inner().to_string(),
            )
        })?;
        raw.validate(env)
    }

    /// The effective configuration as YAML, with every default filled in and secrets redacted.
    #[must_use]
    pub fn to_redacted_yaml(&self) -> String {
        let Self {
            cluster,
            kubernetes,
            leader,
            admin,
            log,
            shutdown_grace_period,
            diagnostics,
            source,
            store,
            shipper,
            record,
            sink,
        } = self;
        let mut root = Mapping::new();
        root.insert(
            "cluster".into(),
            map([
                ("name", cluster.name.clone().into()),
                ("region", cluster.region.clone().into()),
                ("environment", cluster.environment.clone().into()),
            ]),
        );
        root.insert(
            "kubernetes".into(),
            map([(
                "kubeconfig",
                kubernetes
                    .kubeconfig
                    .as_ref()
                    .map_or(Value::Null, |p| p.display().to_string().into()),
            )]),
        );
        root.insert(
            "leader".into(),
            map([
                ("lease_name", leader.lease_name.clone().into()),
                (
                    "lease_namespace",
                    leader
                        .lease_namespace
                        .clone()
                        .map_or(Value::Null, Value::from),
                ),
                ("identity", leader.identity.clone().into()),
                (
                    "lease_duration",
                    format_duration(leader.lease_duration).into(),
                ),
                (
                    "renew_deadline",
                    format_duration(leader.renew_deadline).into(),
                ),
                ("retry_period", format_duration(leader.retry_period).into()),
            ]),
        );
        root.insert("source".into(), pipeline::print_source(source));
        root.insert("store".into(), pipeline::print_store(store));
        root.insert("shipper".into(), pipeline::print_shipper(shipper));
        root.insert("record".into(), pipeline::print_record(record));
        root.insert("sink".into(), pipeline::print_sink(sink));
        root.insert(
            "admin".into(),
            map([("listen", admin.listen.to_string().into())]),
        );
        root.insert(
            "log".into(),
            map([
                ("level", log.level.clone().into()),
                (
                    "format",
                    match log.format {
                        LogFormat::Text => "text",
                        LogFormat::Json => "json",
                    }
                    .into(),
                ),
            ]),
        );
        root.insert(
            "shutdown".into(),
            map([(
                "grace_period",
                format_duration(*shutdown_grace_period).into(),
            )]),
        );
        root.insert(
            "diagnostics".into(),
            map([
                (
                    "fence_log",
                    diagnostics
                        .fence_log
                        .as_ref()
                        .map_or(Value::Null, |p| p.display().to_string().into()),
                ),
                (
                    "fence_log_interval",
                    format_duration(diagnostics.fence_log_interval).into(),
                ),
                (
                    "stall_store_commit",
                    format_duration(diagnostics.stall_store_commit).into(),
                ),
                (
                    "stall_sink_write",
                    format_duration(diagnostics.stall_sink_write).into(),
                ),
            ]),
        );
        serde_yaml_ng::to_string(&Value::Mapping(root)).unwrap_or_default()
    }
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

pub(crate) fn duration_field(key: &str, text: Option<&str>, default: Duration) -> Result<Duration> {
    text.map_or(Ok(default), |t| {
        parse_duration(t).map_err(|message| Error::invalid(key, message))
    })
}

#[cfg(test)]
mod tests;
