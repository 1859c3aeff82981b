//! Kubernetes API server emulator: core/v1 and events.k8s.io/v1 Events and
//! coordination.k8s.io/v1 Leases over plain HTTP/1.1 on loopback, faithful to the kube-apiserver
//! wire contract (resourceVersions, paged snapshot lists, watches with in-stream 410s, optimistic
//! concurrency, Status errors, Tables for kubectl), plus an event generator, a ground-truth record
//! of every stored Event version, and fault injection under `/emulator/*`.
//!
//! It owns the emulator's lifecycle (listener, background tasks) and its public API. It is test
//! infrastructure: the `kevents` product must never depend on it, and it must never bind to
//! anything but the address it is given.
//!
//! Control endpoints (JSON; never subject to injected faults):
//!
//! | endpoint | body / query | effect |
//! |---|---|---|
//! | `POST /emulator/compact` | – | compact to the current rv; answers `{"compactedResourceVersion"}` |
//! | `GET`/`PUT /emulator/settings` | `{"eventTtlSeconds","compactionIntervalSeconds" (0 = never),"eventBookmarks","bookmarkIntervalSeconds"}` | runtime settings |
//! | `GET /emulator/stats` | – | rvs, stored counts, open watches, LIST/WATCH counts per resource and client |
//! | `GET`/`PUT /emulator/generator` | `{"eventsPerSecond" (0 stops),"updateRatio"?,"seed"?,"namespaces"?}` | event generator |
//! | `GET /emulator/ground-truth` | `?since=<rv>` | `{"versions":[{"uid","resourceVersion","namespace","name","storedAt"}]}` |
//! | `GET /emulator/faults` | – | active faults |
//! | `POST /emulator/faults/drop-watches` | – | every open watch ends with a broken chunked body |
//! | `POST /emulator/faults/stall-watches` | `{"seconds"}` | open and new watches deliver nothing meanwhile |
//! | `POST /emulator/faults/errors` | `{"status","count"?,"seconds"?,"retryAfterSeconds"?,"pathContains"?}` | answer `status` with a `Status` body |
//! | `POST /emulator/faults/latency` | `{"millis","seconds"?,"pathContains"?}` | delay matching requests |
//! | `POST /emulator/faults/partition` | `{"client","seconds"?}` | requests whose `User-Agent` or `X-Client-Id` contains `client` get their connection closed without an answer; their watches break |
//! | `DELETE /emulator/faults/partition` | `?client=` (all when absent) | heal |
//! | `POST /emulator/faults/clear` | – | clear errors, latency, partitions and stalls |
//!
//! ```no_run
//! # async fn demo() -> Result<(), kevents_testkit::kube::Error> {
//! use kevents_testkit::kube::{KubeEmulator, KubeEmulatorConfig};
//! let emu = KubeEmulator::start("127.0.0.1:0".parse().unwrap(), KubeEmulatorConfig::default()).await?;
//! let events: kube::Api<k8s_openapi::api::core::v1::Event> = kube::Api::all(emu.client());
//! # let _ = events;
//! emu.shutdown().await;
//! # Ok(()) }
//! ```

mod control;
mod discovery;
mod faults;
mod generator;
mod managed;
mod namespaces;
mod patch;
mod resources;
mod selectors;
mod server;
mod state;
mod status;
mod store;
mod table;
mod validation;
mod watch;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use faults::{ErrorFault, FaultSummary, Faults, LatencyFault};
pub use generator::GeneratorConfig;
pub use state::{ClientStats, GeneratorStats, KubeState, Settings, Stats};
pub use status::ApiError;
pub use store::GroundTruthVersion;

/// Errors of the emulator's Rust API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The `kube::Client` for the emulator could not be built.
    #[error("cannot build a kube client for the emulator")]
    Client(#[source] kube::Error),
    /// The emulated API server rejected a request made through `KubeState`.
    #[error("rejected by the emulated API server")]
    Api(#[from] ApiError),
}

/// How an emulator starts.
#[derive(Debug, Clone)]
pub struct KubeEmulatorConfig {
    /// Events expire this long after their last write (kube-apiserver `--event-ttl`, 1 h).
    pub event_ttl: Duration,
    /// Automatic compaction period (`--etcd-compaction-interval`, 5 min); `None` = never.
    /// Each tick compacts to the resourceVersion recorded at the previous tick.
    pub compaction_interval: Option<Duration>,
    /// BOOKMARKs on Event watches (real clusters send none: Events bypass the watch cache).
    pub event_bookmarks: bool,
    /// Start the event generator.
    pub generator: Option<GeneratorConfig>,
}

impl Default for KubeEmulatorConfig {
    fn default() -> Self {
        Self {
            event_ttl: Duration::from_secs(3600),
            compaction_interval: Some(Duration::from_secs(300)),
            event_bookmarks: false,
            generator: None,
        }
    }
}

/// A running emulator. Dropping it stops it (without waiting); prefer [`KubeEmulator::shutdown`].
pub struct KubeEmulator {
    addr: SocketAddr,
    state: Arc<KubeState>,
    client: kube::Client,
    connections: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeEmulator {
    /// Binds `listen` (`127.0.0.1:0` = a free port) and starts the server, the TTL reaper, the
    /// compactor and the generator.
    pub async fn start(listen: SocketAddr, config: KubeEmulatorConfig) -> Result<Self, Error> {
        let tcp = TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                source,
            })?;
        let addr = tcp.local_addr().map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        let settings = Settings {
            event_ttl: config.event_ttl,
            compaction_interval: config.compaction_interval,
            event_bookmarks: config.event_bookmarks,
            bookmark_interval: Duration::from_secs(60),
        };
        let generator = config.generator.filter(|g| g.events_per_second > 0.0);
        let state = Arc::new(KubeState::new(settings, generator));
        let connections = CancellationToken::new();
        let listener = faults::EmuListener {
            inner: tcp,
            root: connections.clone(),
        };
        let app = server::router(server::AppState {
            state: state.clone(),
            addr,
        })
        .into_make_service_with_connect_info::<faults::ConnHandle>();
        let stop = state.shutdown.clone();
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(%e, "kube emulator server failed");
            }
        })];
        tasks.push(tokio::spawn(reaper(state.clone())));
        tasks.push(tokio::spawn(compactor(state.clone())));
        tasks.push(tokio::spawn(generator::run(state.clone())));
        let url: http::Uri =
            format!("http://{addr}")
                .parse()
                .map_err(|e: http::uri::InvalidUri| Error::Bind {
                    addr,
                    source: io::Error::new(io::ErrorKind::InvalidInput, e),
                })?;
        let client = kube::Client::try_from(kube::Config::new(url)).map_err(Error::Client)?;
        tracing::info!(%addr, "kube emulator listening");
        Ok(Self {
            addr,
            state,
            client,
            connections,
            tasks,
        })
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plain-HTTP `kube::Client` for this server (default namespace `default`, kube's default
    /// retry policy).
    #[must_use]
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Writes a kubeconfig for this server with `namespace` as the context namespace, so that
    /// `kubectl --kubeconfig` and `kevents --kubeconfig` can connect.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> io::Result<()> {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kevents-emulator\n  cluster:\n    server: {url}\ncontexts:\n- name: kevents-emulator\n  context:\n    cluster: kevents-emulator\n    namespace: {namespace}\n    user: kevents-emulator\ncurrent-context: kevents-emulator\nusers:\n- name: kevents-emulator\n  user: {{}}\npreferences: {{}}\n",
            url = self.url(),
        );
        std::fs::write(path, yaml)
    }

    /// Direct access for tests: events, compaction, settings, faults, ground truth, stats.
    #[must_use]
    pub fn state(&self) -> &Arc<KubeState> {
        &self.state
    }

    /// Stops the server (all connections are closed) and its background tasks.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        self.connections.cancel();
        for task in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("kube emulator task did not stop within 5 s");
            }
        }
    }
}

impl Drop for KubeEmulator {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
        self.connections.cancel();
    }
}

/// Deletes expired Events (each a DELETED watch event at a new resourceVersion).
async fn reaper(state: Arc<KubeState>) {
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        state.expire_now();
    }
}

/// Compacts every `compaction_interval` to the resourceVersion seen at the previous tick.
async fn compactor(state: Arc<KubeState>) {
    let mut settings = state.settings.subscribe();
    let mut interval = settings.borrow_and_update().compaction_interval;
    let mut previous = state.resource_version();
    let mut next = interval.map(|d| tokio::time::Instant::now() + d);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            r = settings.changed() => {
                if r.is_err() {
                    return;
                }
                let now_interval = settings.borrow_and_update().compaction_interval;
                if now_interval != interval {
                    interval = now_interval;
                    next = interval.map(|d| tokio::time::Instant::now() + d);
                }
            }
            () = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let to = state.compact_to(previous);
                tracing::debug!(compacted = to, "kube emulator compaction");
                previous = state.resource_version();
                next = interval.map(|d| tokio::time::Instant::now() + d);
            }
        }
    }
}
