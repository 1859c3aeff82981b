//! The configuration file exactly as written (after `${VAR}` expansion), and its validation into
//! the typed [`Config`](super::Config).
//!
//! Every struct rejects unknown keys: a typo is an error, never a silent default.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{
    AdminConfig, ClusterTags, Config, DiagnosticsConfig, Environment, Error, KubernetesConfig,
    LeaderConfig, LogConfig, LogFormat, Result, duration_field,
    pipeline::{RawRecord, RawShipper, RawSink, RawSource, RawStore, validate_sink},
};

/// Default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9102";
/// client-go's default lease duration for core clients.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// client-go's default renew deadline.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// client-go's default retry period.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// client-go's jitter factor: `renew_deadline` must exceed `retry_period` times this.
pub const JITTER_FACTOR: f64 = 1.2;
/// Kubernetes gives a pod 30 s by default; leave room to release the lease.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    kubernetes: RawKubernetes,
    #[serde(default)]
    leader: RawLeader,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    diagnostics: RawDiagnostics,
    #[serde(default)]
    source: RawSource,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    shipper: RawShipper,
    #[serde(default)]
    record: RawRecord,
    sink: Option<RawSink>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Option<String>,
    region: Option<String>,
    environment: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeader {
    lease_name: Option<String>,
    lease_namespace: Option<String>,
    identity: Option<String>,
    lease_duration: Option<String>,
    renew_deadline: Option<String>,
    retry_period: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiagnostics {
    fence_log: Option<PathBuf>,
    fence_log_interval: Option<String>,
    stall_store_commit: Option<String>,
    stall_sink_write: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace_period: Option<String>,
}

impl RawConfig {
    pub fn validate(self, env: &Environment<'_>) -> Result<Config> {
        let Self {
            cluster,
            kubernetes,
            leader,
            admin,
            log,
            shutdown,
            diagnostics,
            source,
            store,
            shipper,
            record,
            sink,
        } = self;
        let record = record.validate()?;
        Ok(Config {
            source: source.validate()?,
            store: store.validate()?,
            shipper: shipper.validate()?,
            sink: validate_sink(sink, record.shape, env)?,
            record,
            cluster: cluster.validate()?,
            kubernetes: KubernetesConfig {
                kubeconfig: kubernetes.kubeconfig,
            },
            leader: leader.validate(env)?,
            admin: admin.validate()?,
            log: log.validate()?,
            shutdown_grace_period: duration_field(
                "shutdown.grace_period",
                shutdown.grace_period.as_deref(),
                DEFAULT_SHUTDOWN_GRACE,
            )?,
            diagnostics: DiagnosticsConfig {
                fence_log: diagnostics.fence_log,
                fence_log_interval: {
                    let interval = duration_field(
                        "diagnostics.fence_log_interval",
                        diagnostics.fence_log_interval.as_deref(),
                        Duration::from_millis(100),
                    )?;
                    if interval < Duration::from_millis(1) {
                        return Err(Error::invalid(
                            "diagnostics.fence_log_interval",
                            "must be at least 1ms",
                        ));
                    }
                    interval
                },
                stall_store_commit: duration_field(
                    "diagnostics.stall_store_commit",
                    diagnostics.stall_store_commit.as_deref(),
                    Duration::ZERO,
                )?,
                stall_sink_write: duration_field(
                    "diagnostics.stall_sink_write",
                    diagnostics.stall_sink_write.as_deref(),
                    Duration::ZERO,
                )?,
            },
        })
    }
}

impl RawCluster {
    fn validate(self) -> Result<ClusterTags> {
        let Self {
            name,
            region,
            environment,
        } = self;
        let name = name.unwrap_or_default();
        if name.trim().is_empty() {
            return Err(Error::invalid(
                "cluster.name",
                "is required (it fills the Cluster column); for example `name: ${CLUSTER}`",
            ));
        }
        Ok(ClusterTags {
            name,
            region: region.unwrap_or_default(),
            environment: environment.unwrap_or_default(),
        })
    }
}

impl RawLeader {
    fn validate(self, env: &Environment<'_>) -> Result<LeaderConfig> {
        let Self {
            lease_name,
            lease_namespace,
            identity,
            lease_duration,
            renew_deadline,
            retry_period,
        } = self;
        let lease_name = lease_name.unwrap_or_else(|| "kevents".to_owned());
        check_dns_subdomain("leader.lease_name", &lease_name)?;
        let lease_namespace = lease_namespace
            .filter(|s| !s.is_empty())
            .or_else(|| (env.pod_namespace)())
            .or_else(|| (env.var)("POD_NAMESPACE").filter(|s| !s.is_empty()));
        if let Some(ns) = &lease_namespace {
            check_dns_label("leader.lease_namespace", ns)?;
        }
        let identity = if let Some(identity) = identity.filter(|s| !s.is_empty()) {
            identity
        } else {
            let base = (env.var)("POD_NAME")
                .or_else(|| (env.var)("HOSTNAME"))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "kevents".to_owned());
            format!("{base}-{}", env.identity_suffix)
        };
        let lease_duration = duration_field(
            "leader.lease_duration",
            lease_duration.as_deref(),
            DEFAULT_LEASE_DURATION,
        )?;
        let renew_deadline = duration_field(
            "leader.renew_deadline",
            renew_deadline.as_deref(),
            DEFAULT_RENEW_DEADLINE,
        )?;
        let retry_period = duration_field(
            "leader.retry_period",
            retry_period.as_deref(),
            DEFAULT_RETRY_PERIOD,
        )?;
        if lease_duration.as_secs() < 1 || lease_duration.subsec_nanos() != 0 {
            return Err(Error::invalid(
                "leader.lease_duration",
                "must be a whole number of seconds, at least 1s (leaseDurationSeconds)",
            ));
        }
        if lease_duration <= renew_deadline {
            return Err(Error::invalid(
                "leader.renew_deadline",
                "must be shorter than leader.lease_duration",
            ));
        }
        if renew_deadline.as_secs_f64() <= JITTER_FACTOR * retry_period.as_secs_f64() {
            return Err(Error::invalid(
                "leader.retry_period",
                format!("leader.renew_deadline must exceed {JITTER_FACTOR} x leader.retry_period"),
            ));
        }
        if retry_period.is_zero() {
            return Err(Error::invalid("leader.retry_period", "must be positive"));
        }
        Ok(LeaderConfig {
            lease_name,
            lease_namespace,
            identity,
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }
}

impl RawAdmin {
    fn validate(self) -> Result<AdminConfig> {
        let listen = self
            .listen
            .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_owned());
        let listen: SocketAddr = listen.parse().map_err(|_| {
            Error::invalid(
                "admin.listen",
                format!("`{listen}` is not an address like 0.0.0.0:9102"),
            )
        })?;
        Ok(AdminConfig { listen })
    }
}

impl RawLog {
    fn validate(self) -> Result<LogConfig> {
        let level = self.level.unwrap_or_else(|| "info".to_owned());
        if tracing_subscriber::EnvFilter::builder()
            .parse(&level)
            .is_err()
        {
            return Err(Error::invalid(
                "log.level",
                format!("`{level}` is not a level or filter like `info` or `kevents=debug,info`"),
            ));
        }
        let format = match self.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(Error::invalid(
                    "log.format",
                    format!("`{other}` is not one of `text`, `json`"),
                ));
            }
        };
        Ok(LogConfig { level, format })
    }
}

fn check_dns_label(key: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            key,
            format!("`{value}` is not a valid Kubernetes name (lowercase letters, digits, '-')"),
        ))
    }
}

fn check_dns_subdomain(key: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .split('.')
            .all(|label| check_dns_label(key, label).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            key,
            format!(
                "`{value}` is not a valid Kubernetes name (lowercase letters, digits, '-', '.')"
            ),
        ))
    }
}
