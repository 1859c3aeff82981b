//! The kevents configuration: one YAML file, parsed into raw structs, then validated into a typed
//! [`Config`] before anything starts. `kevents check-config` runs exactly this.
//!
//! Owns the schema, `${VAR}` expansion, defaults and validation, and the redacted print of the
//! effective configuration: serde `Serialize` of the typed [`Config`] itself (durations and sizes
//! in the file's units, secrets as `<redacted>`), so the print cannot drift from the schema and
//! parses back into the same configuration. This is the only module that reads the process
//! environment for configuration. It must never log or print a secret value.

mod adx;
mod expand;
mod pipeline;
mod raw;
mod scalar;
pub mod units;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Serialize, Serializer};
use serde_yaml_ng::{Mapping, Value};

pub use adx::{
    AdxAuthConfig, AdxConfig, AdxFormat, AdxMode, DEFAULT_AUTHORITY_HOST, DEFAULT_IMDS_ENDPOINT,
    DEFAULT_SCOPE, DEFAULT_STREAMING_MAX_BYTES, FailedIngestionsConfig, HealthcheckConfig,
    REDACTED, Secret, StatusConfig, WORKLOAD_IDENTITY_ENV,
};
pub use expand::ExpandError;
pub use pipeline::{
    FilterConfig, InitialList, RecordConfig, ShipperConfig, SinkConfig, SourceConfig, StoreConfig,
};
use units::{parse_duration, serialize_duration};

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
    /// The effective configuration could not be written as YAML.
    #[error("cannot print the effective config")]
    Print(#[source] serde_yaml_ng::Error),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for cluster log pipelines.
    Json,
}

/// Which Event API the source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventApi {
    /// `core/v1` Events (`/api/v1/events`), the default.
    #[serde(rename = "core/v1")]
    CoreV1,
    /// `events.k8s.io/v1` Events.
    #[serde(rename = "events.k8s.io/v1")]
    EventsV1,
}

/// Identity of this cluster, written into every record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterTags {
    /// `Cluster` column.
    pub name: String,
    /// `Region` column.
    pub region: String,
    /// `Environment` column.
    pub environment: String,
}

/// How to reach the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubernetesConfig {
    /// An explicit kubeconfig file; `None` means in-cluster config or `KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
}

/// Lease-based leader election.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderConfig {
    /// Lease object name.
    pub lease_name: String,
    /// Lease namespace; `None` means the client's default namespace.
    pub lease_namespace: Option<String>,
    /// This replica's identity (holderIdentity).
    pub identity: String,
    /// How long a lease is valid after it was last observed to change.
    #[serde(serialize_with = "serialize_duration")]
    pub lease_duration: Duration,
    /// A leader that has not renewed within this demotes itself.
    #[serde(serialize_with = "serialize_duration")]
    pub renew_deadline: Duration,
    /// Interval between acquire/renew attempts (jittered).
    #[serde(serialize_with = "serialize_duration")]
    pub retry_period: Duration,
}

/// The admin HTTP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminConfig {
    /// Listen address of `/livez`, `/readyz`, `/metrics`, `/status`.
    pub listen: SocketAddr,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `kevents=debug,info`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Drill aids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiagnosticsConfig {
    /// While its lease is current, the leader appends `<unix_ms> <identity> <epoch>` lines to this
    /// file (fenced exactly like every other side effect); drills read it to prove the fence.
    pub fence_log: Option<PathBuf>,
    /// How often a fence-log line is written.
    #[serde(serialize_with = "serialize_duration")]
    pub fence_log_interval: Duration,
    /// Drills only: a store capture waits this long between its fence check and its write, so a
    /// pause can land inside the check-then-act window (zero: never).
    #[serde(serialize_with = "serialize_duration")]
    pub stall_store_commit: Duration,
    /// Drills only: the file sink waits this long between journaling a batch and writing it.
    #[serde(serialize_with = "serialize_duration")]
    pub stall_sink_write: Duration,
}

/// The validated configuration. It serializes in the file's shape and field order (see
/// [`Config::to_redacted_yaml`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Cluster tags.
    pub cluster: ClusterTags,
    /// Kubernetes API access.
    pub kubernetes: KubernetesConfig,
    /// Leader election.
    pub leader: LeaderConfig,
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
    /// Admin server.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// Time allowed for a graceful shutdown after SIGTERM/SIGINT (`shutdown.grace_period`).
    #[serde(rename = "shutdown", serialize_with = "serialize_shutdown")]
    pub shutdown_grace_period: Duration,
    /// Drill aids.
    pub diagnostics: DiagnosticsConfig,
}

/// `shutdown_grace_period` as the file's `shutdown` section.
fn serialize_shutdown<S: Serializer>(
    grace_period: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Shutdown {
        #[serde(serialize_with = "serialize_duration")]
        grace_period: Duration,
    }
    Shutdown {
        grace_period: *grace_period,
    }
    .serialize(serializer)
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

    /// The effective configuration as YAML: every default filled in, durations and sizes in the
    /// units the file takes, every secret as `<redacted>`, and `$` written `$$`. Parsed again
    /// (in the same environment) it gives this same configuration, but for the redacted secrets.
    pub fn to_redacted_yaml(&self) -> Result<String> {
        let mut tree = serde_yaml_ng::to_value(self).map_err(Error::Print)?;
        expand::escape_tree(&mut tree);
        serde_yaml_ng::to_string(&tree).map_err(Error::Print)
    }
}

pub(crate) fn duration_field(key: &str, text: Option<&str>, default: Duration) -> Result<Duration> {
    text.map_or(Ok(default), |t| {
        parse_duration(t).map_err(|message| Error::invalid(key, message))
    })
}

#[cfg(test)]
mod tests;
