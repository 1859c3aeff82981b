//! The `sink.adx` section: Azure Data Explorer endpoints, database/table/mapping, ingestion mode,
//! and authentication (client secret, workload identity, managed identity, none).
//!
//! Owns this section's raw schema, defaults, validation (errors name the dotted key) and its
//! serialization in the file's shape (the redacted print). Workload identity reads the variables
//! the AKS webhook injects through the config [`Environment`], never `std::env` directly. It must
//! never print a secret: a [`Secret`] serializes as `<redacted>`, whatever it holds.

use std::{fmt, path::PathBuf, time::Duration};

use reqwest::Url;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use serde_yaml_ng::Value;

use super::{
    Environment, Error, Result, duration_field, scalar,
    units::{parse_bytes, serialize_bytes, serialize_duration},
};
use crate::transform::RecordShape;

/// The default AAD authority (public cloud).
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The default token scope: valid for every public-cloud cluster, engine and DM alike.
pub const DEFAULT_SCOPE: &str = "https://kusto.kusto.windows.net/.default";
/// The Azure instance metadata token endpoint.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// Where the workload identity webhook mounts the federated token.
pub const WORKLOAD_IDENTITY_ENV: [&str; 4] = [
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
];
/// The documented streaming ingestion limit per request.
pub const DEFAULT_STREAMING_MAX_BYTES: u64 = 4 << 20;

/// What a secret prints as, in `Debug` and in the effective config.
pub const REDACTED: &str = "<redacted>";

/// A secret configuration value. Compares by value (config equality in tests) and never prints:
/// `Debug` and `Serialize` both write [`REDACTED`].
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value.
    #[must_use]
    pub fn new(value: String) -> Self {
        Self(SecretString::from(value))
    }

    /// The secret itself, for the one place that sends it.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The redacting serializer: the printed effective config shows `<redacted>`, never the value.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

/// How the sink delivers a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdxMode {
    /// Blob upload + queue message to the data management service (every cluster accepts it).
    Queued,
    /// One streaming ingestion request per batch to the engine.
    Streaming,
    /// Streaming, falling back to queued on transient errors, throttling and large batches.
    Managed,
}

/// The ingestion data format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdxFormat {
    /// JSON Lines (`format: json`, blob suffix `.json.gz`): a bad line does not fail the blob.
    Json,
    /// `multijson` (blob suffix `.multijson.gz`), as the Fluent Bit output sent.
    MultiJson,
}

impl AdxFormat {
    /// The Kusto format name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::MultiJson => "multijson",
        }
    }
}

/// How the sink obtains AAD tokens. Serializes as the file's `auth` section without `scope` and
/// `refresh_margin` (kept in [`AdxConfig`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum AdxAuthConfig {
    /// No token (the emulator, or a cluster behind an authenticating proxy).
    None,
    /// AAD v2 client credentials with a secret.
    ClientSecret {
        /// Tenant.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// The secret.
        client_secret: Secret,
        /// AAD authority, e.g. `https://login.microsoftonline.com`.
        #[serde(serialize_with = "serialize_url")]
        authority_host: Url,
    },
    /// AKS workload identity: a federated service-account token exchanged for an AAD token.
    WorkloadIdentity {
        /// Tenant.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// The projected token file, re-read on every token fetch (the kubelet rotates it).
        token_file: PathBuf,
        /// AAD authority.
        #[serde(serialize_with = "serialize_url")]
        authority_host: Url,
    },
    /// Managed identity through the instance metadata service.
    ManagedIdentity {
        /// A user-assigned identity's client id; `None` = system-assigned.
        client_id: Option<String>,
        /// The IMDS token endpoint.
        #[serde(serialize_with = "serialize_url")]
        imds_endpoint: Url,
    },
}

impl AdxAuthConfig {
    /// The config name of this mode.
    #[must_use]
    pub fn mode(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecret { .. } => "client_secret",
            Self::WorkloadIdentity { .. } => "workload_identity",
            Self::ManagedIdentity { .. } => "managed_identity",
        }
    }
}

/// Polling of the data management service's failed-ingestions queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FailedIngestionsConfig {
    /// Poll at all.
    pub enabled: bool,
    /// How often.
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
}

/// Ingestion status reporting for queued ingestion: how kevents learns that a queued batch
/// landed (or failed) before it deletes it from the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatusConfig {
    /// Ask the data management service for a status row per batch (`ReportLevel`
    /// `FailuresAndSuccesses`, `ReportMethod` Table) and keep each queued batch until its row is
    /// final. Off: a batch counts as delivered once its queue message is posted.
    pub enabled: bool,
    /// How often the rows of batches awaiting confirmation are read (the first read waits this
    /// long too; later ones back off to 4×).
    #[serde(serialize_with = "serialize_duration")]
    pub poll_interval: Duration,
    /// A row still `Pending` this long after it was written is taken as a submission that never
    /// reached the queue, and the batch is submitted again.
    #[serde(serialize_with = "serialize_duration")]
    pub pending_timeout: Duration,
}

/// The sink's health check (`sink.adx.healthcheck`): run when a leader's pipeline starts, and
/// again every `retry_interval` while it fails. It reports only; shipping is attempted anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HealthcheckConfig {
    /// Run it at all.
    pub enabled: bool,
    /// How long after a failed check it runs again.
    #[serde(serialize_with = "serialize_duration")]
    pub retry_interval: Duration,
}

impl Default for HealthcheckConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retry_interval: DEFAULT_HEALTHCHECK_RETRY,
        }
    }
}

/// How long after a failed health check it runs again, by default.
pub const DEFAULT_HEALTHCHECK_RETRY: Duration = Duration::from_secs(30);

/// The validated `sink.adx` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdxConfig {
    /// The data management endpoint (`https://ingest-<cluster>.<region>.kusto.windows.net`).
    pub ingest_endpoint: Option<Url>,
    /// The engine endpoint for streaming (validation fills in the default: `ingest_endpoint`
    /// without `ingest-`).
    pub engine_endpoint: Option<Url>,
    /// Target database.
    pub database: String,
    /// Target table.
    pub table: String,
    /// Ingestion mapping name.
    pub mapping: String,
    /// Data format.
    pub format: AdxFormat,
    /// Delivery mode.
    pub mode: AdxMode,
    /// Tag each queued ingestion `ingest-by:<batch id>` with `ingestIfNotExists`, so ADX drops a
    /// batch re-sent after a failover. Off by default: ADX warns it costs ingestion performance.
    pub ingest_by_tags: bool,
    /// Streaming requests above this (compressed) size go queued (managed) or are split
    /// (streaming).
    pub streaming_max_bytes: u64,
    /// Timeout of every HTTP request.
    pub request_timeout: Duration,
    /// Ingestion resources and the identity token are re-fetched this often.
    pub resources_refresh: Duration,
    /// AAD token scope (`https://kusto.kusto.windows.net/.default`; other clouds differ).
    pub scope: String,
    /// Tokens are refreshed this long before they expire.
    pub token_refresh_margin: Duration,
    /// Authentication.
    pub auth: AdxAuthConfig,
    /// The failed-ingestions poller.
    pub failed_ingestions: FailedIngestionsConfig,
    /// Ingestion status rows for queued batches.
    pub status: StatusConfig,
    /// The health check at the start of each leadership term.
    pub healthcheck: HealthcheckConfig,
}

impl AdxConfig {
    /// The engine endpoint streaming goes to: the configured one, or the DM endpoint with its
    /// `ingest-` host prefix removed.
    #[must_use]
    pub fn engine(&self) -> Option<Url> {
        self.engine_endpoint
            .clone()
            .or_else(|| engine_of(self.ingest_endpoint.as_ref()?))
    }
}

/// The engine endpoint of a data management endpoint: its host without the `ingest-` prefix.
fn engine_of(ingest_endpoint: &Url) -> Option<Url> {
    let mut url = ingest_endpoint.clone();
    if let Some(host) = url.host_str().and_then(|h| h.strip_prefix("ingest-")) {
        let host = host.to_owned();
        if url.set_host(Some(&host)).is_err() {
            return None;
        }
    }
    Some(url)
}

/// A URL as the file writes it: without the trailing `/` the parser adds to a bare host.
fn trimmed(url: &Url) -> &str {
    url.as_str().trim_end_matches('/')
}

fn serialize_url<S: Serializer>(url: &Url, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(trimmed(url))
}

/// The file's shape of `sink.adx`: the typed config keeps the token scope and refresh margin
/// beside `auth` (the sink needs them whatever the mode), the file nests them under `auth`.
impl Serialize for AdxConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Auth<'a> {
            #[serde(flatten)]
            mode: &'a AdxAuthConfig,
            scope: &'a str,
            #[serde(serialize_with = "serialize_duration")]
            refresh_margin: Duration,
        }
        #[derive(Serialize)]
        struct Adx<'a> {
            ingest_endpoint: Option<&'a str>,
            engine_endpoint: Option<String>,
            database: &'a str,
            table: &'a str,
            mapping: &'a str,
            format: AdxFormat,
            mode: AdxMode,
            ingest_by_tags: bool,
            #[serde(serialize_with = "serialize_bytes")]
            streaming_max_bytes: u64,
            #[serde(serialize_with = "serialize_duration")]
            request_timeout: Duration,
            #[serde(serialize_with = "serialize_duration")]
            resources_refresh: Duration,
            auth: Auth<'a>,
            failed_ingestions: FailedIngestionsConfig,
            status: StatusConfig,
            healthcheck: HealthcheckConfig,
        }
        let Self {
            ingest_endpoint,
            engine_endpoint: _,
            database,
            table,
            mapping,
            format,
            mode,
            ingest_by_tags,
            streaming_max_bytes,
            request_timeout,
            resources_refresh,
            scope,
            token_refresh_margin,
            auth,
            failed_ingestions,
            status,
            healthcheck,
        } = self;
        Adx {
            ingest_endpoint: ingest_endpoint.as_ref().map(trimmed),
            engine_endpoint: self.engine().as_ref().map(|url| trimmed(url).to_owned()),
            database,
            table,
            mapping,
            format: *format,
            mode: *mode,
            ingest_by_tags: *ingest_by_tags,
            streaming_max_bytes: *streaming_max_bytes,
            request_timeout: *request_timeout,
            resources_refresh: *resources_refresh,
            auth: Auth {
                mode: auth,
                scope,
                refresh_margin: *token_refresh_margin,
            },
            failed_ingestions: *failed_ingestions,
            status: *status,
            healthcheck: *healthcheck,
        }
        .serialize(serializer)
    }
}

// === raw schema ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdx {
    ingest_endpoint: Option<String>,
    engine_endpoint: Option<String>,
    database: Option<String>,
    table: Option<String>,
    mapping: Option<String>,
    format: Option<String>,
    mode: Option<String>,
    #[serde(default, deserialize_with = "scalar::boolean")]
    ingest_by_tags: Option<bool>,
    streaming_max_bytes: Option<Value>,
    request_timeout: Option<String>,
    resources_refresh: Option<String>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    failed_ingestions: RawFailedIngestions,
    #[serde(default)]
    status: RawStatus,
    #[serde(default)]
    healthcheck: RawHealthcheck,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthcheck {
    #[serde(default, deserialize_with = "scalar::boolean")]
    enabled: Option<bool>,
    retry_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    #[serde(default, deserialize_with = "scalar::boolean")]
    enabled: Option<bool>,
    poll_interval: Option<String>,
    pending_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    mode: Option<String>,
    tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    token_file: Option<PathBuf>,
    authority_host: Option<String>,
    imds_endpoint: Option<String>,
    scope: Option<String>,
    refresh_margin: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailedIngestions {
    #[serde(default, deserialize_with = "scalar::boolean")]
    enabled: Option<bool>,
    interval: Option<String>,
}

fn url_field(key: &str, text: &str) -> Result<Url> {
    let url = Url::parse(text).map_err(|e| {
        Error::invalid(key, format!("`{text}` is not a URL like https://host: {e}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::invalid(
            key,
            format!("`{text}` must be an http(s) URL with a host"),
        ));
    }
    Ok(url)
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl RawAdx {
    pub(super) fn validate(self, shape: RecordShape, env: &Environment<'_>) -> Result<AdxConfig> {
        let mode = match self.mode.as_deref() {
            None | Some("queued") => AdxMode::Queued,
            Some("streaming") => AdxMode::Streaming,
            Some("managed") => AdxMode::Managed,
            Some(other) => {
                return Err(Error::invalid(
                    "sink.adx.mode",
                    format!("`{other}` is not one of `queued`, `streaming`, `managed`"),
                ));
            }
        };
        let ingest_endpoint = non_empty(self.ingest_endpoint)
            .map(|t| url_field("sink.adx.ingest_endpoint", &t))
            .transpose()?;
        let engine_endpoint = non_empty(self.engine_endpoint)
            .map(|t| url_field("sink.adx.engine_endpoint", &t))
            .transpose()?;
        if ingest_endpoint.is_none() && (mode != AdxMode::Streaming || engine_endpoint.is_none()) {
            return Err(Error::invalid(
                "sink.adx.ingest_endpoint",
                "is required: the data management endpoint, such as \
                 https://ingest-mycluster.westeurope.kusto.windows.net \
                 (streaming mode accepts sink.adx.engine_endpoint instead)",
            ));
        }
        // The effective engine endpoint, so the typed (and printed) config holds what is used.
        let engine_endpoint = engine_endpoint.or_else(|| engine_of(ingest_endpoint.as_ref()?));
        let database = non_empty(self.database)
            .ok_or_else(|| Error::invalid("sink.adx.database", "is required"))?;
        let format = match self.format.as_deref() {
            None | Some("json") => AdxFormat::Json,
            Some("multijson") => AdxFormat::MultiJson,
            Some(other) => {
                return Err(Error::invalid(
                    "sink.adx.format",
                    format!("`{other}` is not one of `json`, `multijson`"),
                ));
            }
        };
        let mapping = non_empty(self.mapping).unwrap_or_else(|| {
            match shape {
                RecordShape::Flat => "KubeEventsFlatMapping",
                RecordShape::FluentBit => "FluentBitMappingEvents",
            }
            .to_owned()
        });
        // An empty string (`${VAR:-}` of an unset variable) is unset, as for every size key.
        let streaming_max_bytes = match &self.streaming_max_bytes {
            None => DEFAULT_STREAMING_MAX_BYTES,
            Some(Value::String(text)) if text.trim().is_empty() => DEFAULT_STREAMING_MAX_BYTES,
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(Value::String(text)) => {
                parse_bytes(text).map_err(|m| Error::invalid("sink.adx.streaming_max_bytes", m))?
            }
            Some(_) => {
                return Err(Error::invalid(
                    "sink.adx.streaming_max_bytes",
                    "must be a size like 4MiB",
                ));
            }
        };
        if streaming_max_bytes < 1024 {
            return Err(Error::invalid(
                "sink.adx.streaming_max_bytes",
                "must be at least 1KiB",
            ));
        }
        let request_timeout = duration_field(
            "sink.adx.request_timeout",
            self.request_timeout.as_deref(),
            Duration::from_secs(60),
        )?;
        if request_timeout < Duration::from_millis(100) {
            return Err(Error::invalid(
                "sink.adx.request_timeout",
                "must be at least 100ms",
            ));
        }
        let resources_refresh = duration_field(
            "sink.adx.resources_refresh",
            self.resources_refresh.as_deref(),
            Duration::from_secs(3600),
        )?;
        if resources_refresh < Duration::from_secs(1) {
            return Err(Error::invalid(
                "sink.adx.resources_refresh",
                "must be at least 1s",
            ));
        }
        let scope = non_empty(self.auth.scope.clone()).unwrap_or_else(|| DEFAULT_SCOPE.to_owned());
        let token_refresh_margin = duration_field(
            "sink.adx.auth.refresh_margin",
            self.auth.refresh_margin.as_deref(),
            Duration::from_secs(300),
        )?;
        let auth = self.auth.validate(env)?;
        let failed_ingestions = FailedIngestionsConfig {
            enabled: self.failed_ingestions.enabled.unwrap_or(false),
            interval: duration_field(
                "sink.adx.failed_ingestions.interval",
                self.failed_ingestions.interval.as_deref(),
                Duration::from_secs(60),
            )?,
        };
        if failed_ingestions.enabled && failed_ingestions.interval < Duration::from_millis(100) {
            return Err(Error::invalid(
                "sink.adx.failed_ingestions.interval",
                "must be at least 100ms",
            ));
        }
        let status = StatusConfig {
            enabled: self.status.enabled.unwrap_or(true),
            poll_interval: duration_field(
                "sink.adx.status.poll_interval",
                self.status.poll_interval.as_deref(),
                Duration::from_secs(10),
            )?,
            pending_timeout: duration_field(
                "sink.adx.status.pending_timeout",
                self.status.pending_timeout.as_deref(),
                Duration::from_secs(3600),
            )?,
        };
        if status.poll_interval < Duration::from_millis(100) {
            return Err(Error::invalid(
                "sink.adx.status.poll_interval",
                "must be at least 100ms",
            ));
        }
        if status.pending_timeout < status.poll_interval * 2 {
            return Err(Error::invalid(
                "sink.adx.status.pending_timeout",
                "must be at least twice sink.adx.status.poll_interval",
            ));
        }
        let healthcheck = HealthcheckConfig {
            enabled: self.healthcheck.enabled.unwrap_or(true),
            retry_interval: duration_field(
                "sink.adx.healthcheck.retry_interval",
                self.healthcheck.retry_interval.as_deref(),
                DEFAULT_HEALTHCHECK_RETRY,
            )?,
        };
        if healthcheck.retry_interval < Duration::from_millis(100) {
            return Err(Error::invalid(
                "sink.adx.healthcheck.retry_interval",
                "must be at least 100ms",
            ));
        }
        Ok(AdxConfig {
            ingest_endpoint,
            engine_endpoint,
            database,
            table: non_empty(self.table).unwrap_or_else(|| "KubeEvents".to_owned()),
            mapping,
            format,
            mode,
            ingest_by_tags: self.ingest_by_tags.unwrap_or(false),
            streaming_max_bytes,
            request_timeout,
            resources_refresh,
            scope,
            token_refresh_margin,
            auth,
            failed_ingestions,
            status,
            healthcheck,
        })
    }
}

impl RawAuth {
    fn validate(self, env: &Environment<'_>) -> Result<AdxAuthConfig> {
        let from_env = |name: &str| (env.var)(name).and_then(|v| non_empty(Some(v)));
        let authority = |configured: Option<String>, from_env_too: bool| -> Result<Url> {
            let text = non_empty(configured)
                .or_else(|| {
                    from_env_too
                        .then(|| from_env("AZURE_AUTHORITY_HOST"))
                        .flatten()
                })
                .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_owned());
            url_field("sink.adx.auth.authority_host", text.trim_end_matches('/'))
        };
        let mode = non_empty(self.mode).ok_or_else(|| {
            Error::invalid(
                "sink.adx.auth.mode",
                "is required: one of `client_secret`, `workload_identity`, `managed_identity`, `none`",
            )
        })?;
        match mode.as_str() {
            "none" => Ok(AdxAuthConfig::None),
            "client_secret" => Ok(AdxAuthConfig::ClientSecret {
                tenant_id: non_empty(self.tenant_id).ok_or_else(|| {
                    Error::invalid("sink.adx.auth.tenant_id", "is required for client_secret")
                })?,
                client_id: non_empty(self.client_id).ok_or_else(|| {
                    Error::invalid("sink.adx.auth.client_id", "is required for client_secret")
                })?,
                client_secret: Secret::new(non_empty(self.client_secret).ok_or_else(|| {
                    Error::invalid(
                        "sink.adx.auth.client_secret",
                        "is required for client_secret (for example `${ADX_CLIENT_SECRET}`)",
                    )
                })?),
                authority_host: authority(self.authority_host, false)?,
            }),
            "workload_identity" => {
                let missing = |key: &str, var: &str| {
                    Error::invalid(
                        format!("sink.adx.auth.{key}"),
                        format!(
                            "workload identity needs {var} (set by the AKS workload identity \
                             webhook when the pod's service account is annotated) or \
                             sink.adx.auth.{key}"
                        ),
                    )
                };
                Ok(AdxAuthConfig::WorkloadIdentity {
                    client_id: non_empty(self.client_id)
                        .or_else(|| from_env("AZURE_CLIENT_ID"))
                        .ok_or_else(|| missing("client_id", "AZURE_CLIENT_ID"))?,
                    tenant_id: non_empty(self.tenant_id)
                        .or_else(|| from_env("AZURE_TENANT_ID"))
                        .ok_or_else(|| missing("tenant_id", "AZURE_TENANT_ID"))?,
                    token_file: self
                        .token_file
                        .filter(|p| !p.as_os_str().is_empty())
                        .or_else(|| from_env("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from))
                        .ok_or_else(|| missing("token_file", "AZURE_FEDERATED_TOKEN_FILE"))?,
                    authority_host: authority(self.authority_host, true)?,
                })
            }
            "managed_identity" => Ok(AdxAuthConfig::ManagedIdentity {
                client_id: non_empty(self.client_id),
                imds_endpoint: url_field(
                    "sink.adx.auth.imds_endpoint",
                    &non_empty(self.imds_endpoint)
                        .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_owned()),
                )?,
            }),
            other => Err(Error::invalid(
                "sink.adx.auth.mode",
                format!(
                    "`{other}` is not one of `client_secret`, `workload_identity`, \
                     `managed_identity`, `none`"
                ),
            )),
        }
    }
}
