//! Azure Data Explorer emulator over real Azurite: the data management service (`.get ingestion
//! resources` handing out real SAS URLs it signs itself, `.get kusto identity token`, an
//! ingestion worker reading the queue, fetching and gunzipping blobs, applying the JSON mapping
//! and honouring `ingestIfNotExists`), the engine's streaming and query endpoints, an AAD token
//! endpoint and an IMDS-style endpoint, with fault knobs (among them the refusals of a real
//! cluster: a table's streaming policy off, the streaming size limit, a caller without Database
//! Viewer, a caller who may not see the table's metadata), the engine's `.show … ingestion
//! mappings` answered from the schema, and an API to count and dump rows. Tables and mappings come from
//! `manifests/adx/kube-events.kql`. Wire formats: `reference/adx-ingestion.md`.
//!
//! Owns the emulator's lifecycle: Azurite (started and stopped with it, or given), the
//! containers and queues it creates at start, the HTTP server, the worker. It is test
//! infrastructure: the `kevents` product must never depend on it, and it must never bind to
//! anything but the address it is given.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kevents_testkit::adx::Error> {
//! use kevents_testkit::adx::{AdxEmulator, AdxEmulatorConfig};
//! let adx = AdxEmulator::start("127.0.0.1:0".parse().unwrap(), AdxEmulatorConfig::default()).await?;
//! println!("DM and engine at {}", adx.url());
//! let rows = adx.state().rows("k8s", "KubeEvents");
//! # let _ = rows;
//! adx.shutdown().await;
//! # Ok(()) }
//! ```

pub mod azurite;
pub mod kql;
mod server;
mod state;
pub mod storage;
mod synthetic;
mod worker;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};

use tokio_util::sync::CancellationToken;

pub use azurite::{Azurite, DEV_ACCOUNT, DEV_ACCOUNT_KEY};
pub use state::{
    AdxState, AdxStats, AuthSettings, ErrorBurst, FaultRequest, RequestRecord, Throttle,
};
pub use storage::StorageAccount;
pub use synthetic::{synthetic_batch_id, synthetic_payload, synthetic_record};

/// Errors of the emulator's Rust API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Azurite could not be started.
    #[error(transparent)]
    Azurite(#[from] azurite::Error),
    /// A container or queue could not be created in Azurite.
    #[error("preparing Azurite failed")]
    Storage(#[from] storage::Error),
    /// The KQL manifest could not be parsed.
    #[error("the KQL manifest is invalid")]
    Kql(#[from] kql::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The containers and queues the emulated DM hands out.
#[derive(Debug, Clone)]
pub struct Resources {
    /// Blob containers (`TempStorage`).
    pub containers: Vec<String>,
    /// Ingestion queues (`SecuredReadyForAggregationQueue`).
    pub ingestion_queues: Vec<String>,
    /// `FailedIngestionsQueue`.
    pub failed_queue: String,
    /// `SuccessfulIngestionsQueue`.
    pub success_queue: String,
    /// `IngestionsStatusTable`.
    pub status_table: String,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            containers: vec!["ingest-temp-0".to_owned(), "ingest-temp-1".to_owned()],
            ingestion_queues: vec![
                "readyforaggregation-secured-0".to_owned(),
                "readyforaggregation-secured-1".to_owned(),
            ],
            failed_queue: "failedingestions".to_owned(),
            success_queue: "successfulingestions".to_owned(),
            status_table: "ingestionsstatus".to_owned(),
        }
    }
}

/// How an emulator starts.
#[derive(Debug, Clone)]
pub struct AdxEmulatorConfig {
    /// KQL script with the tables and mappings (default: `manifests/adx/kube-events.kql`).
    pub kql: String,
    /// Accepted credentials and whether requests need a token.
    pub auth: AuthSettings,
    /// Containers and queues.
    pub resources: Resources,
    /// Use this storage account instead of starting Azurite.
    pub storage: Option<StorageAccount>,
}

impl Default for AdxEmulatorConfig {
    fn default() -> Self {
        Self {
            kql: kql::KUBE_EVENTS_KQL.to_owned(),
            auth: AuthSettings::default(),
            resources: Resources::default(),
            storage: None,
        }
    }
}

/// A running emulator. Dropping it stops it (and its Azurite) without waiting; prefer
/// [`AdxEmulator::shutdown`].
pub struct AdxEmulator {
    addr: SocketAddr,
    state: Arc<AdxState>,
    storage: StorageAccount,
    resources: Arc<Resources>,
    azurite: Option<Azurite>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl AdxEmulator {
    /// Starts Azurite (unless `config.storage` is given), creates the containers and queues,
    /// binds `listen` (`127.0.0.1:0` = a free port) and starts the server and the worker.
    ///
    /// # Errors
    /// Azurite missing or not starting, storage preparation, the KQL, or the bind.
    pub async fn start(listen: SocketAddr, config: AdxEmulatorConfig) -> Result<Self, Error> {
        let schema = kql::parse_script(&config.kql)?;
        let (azurite, storage) = match config.storage {
            Some(storage) => (None, storage),
            None => {
                let azurite = Azurite::start().await?;
                let storage = StorageAccount::new(
                    DEV_ACCOUNT,
                    DEV_ACCOUNT_KEY,
                    azurite.blob_endpoint.clone(),
                    azurite.queue_endpoint.clone(),
                    azurite.table_endpoint.clone(),
                )?;
                (Some(azurite), storage)
            }
        };
        let resources = Arc::new(config.resources);
        for container in &resources.containers {
            storage.create_container(container).await?;
        }
        for queue in resources
            .ingestion_queues
            .iter()
            .chain([&resources.failed_queue, &resources.success_queue])
        {
            storage.create_queue(queue).await?;
        }
        storage.create_table(&resources.status_table).await?;
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
        let state = Arc::new(AdxState::new(schema, config.auth));
        let stop = CancellationToken::new();
        let app = server::router(server::AppState {
            state: Arc::clone(&state),
            storage: storage.clone(),
            resources: Arc::clone(&resources),
        });
        let server_stop = stop.clone();
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(error) = axum::serve(tcp, app)
                .with_graceful_shutdown(server_stop.cancelled_owned())
                .await
            {
                tracing::error!(%error, "ADX emulator server failed");
            }
        })];
        tasks.push(tokio::spawn(worker::run(
            Arc::clone(&state),
            storage.clone(),
            Arc::clone(&resources),
            stop.clone(),
        )));
        tracing::info!(%addr, "ADX emulator listening");
        Ok(Self {
            addr,
            state,
            storage,
            resources,
            azurite,
            stop,
            tasks,
        })
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the DM, the engine, AAD (`/{tenant}/oauth2/v2.0/token`) and
    /// IMDS (`/metadata/identity/oauth2/token`) all live here.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Rows, tokens, faults and counters.
    #[must_use]
    pub fn state(&self) -> &Arc<AdxState> {
        &self.state
    }

    /// The Azurite account (to read blobs and queues directly in tests).
    #[must_use]
    pub fn storage(&self) -> &StorageAccount {
        &self.storage
    }

    /// The containers and queues handed out.
    #[must_use]
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// Azurite's pid, when the emulator started it.
    #[must_use]
    pub fn azurite_pid(&self) -> Option<u32> {
        self.azurite.as_ref().and_then(Azurite::pid)
    }

    /// A `sink:` section of a config file for this emulator, for `kevents run` processes and
    /// for tests that parse it into the sink's config: see [`sink_yaml_at`].
    #[must_use]
    pub fn sink_yaml(&self, database: &str, mode: &str, extra: &str) -> String {
        sink_yaml_at(&self.url(), database, mode, extra)
    }

    /// Waits until `database.table` holds at least `rows` rows, or `timeout` passes; returns the
    /// count.
    pub async fn wait_for_rows(
        &self,
        database: &str,
        table: &str,
        rows: usize,
        timeout: Duration,
    ) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let count = self.state.row_count(database, table);
            if count >= rows || tokio::time::Instant::now() >= deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server and the worker, then Azurite.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for task in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("ADX emulator task did not stop within 5 s");
            }
        }
        if let Some(mut azurite) = self.azurite.take() {
            tokio::task::spawn_blocking(move || azurite.stop())
                .await
                .ok();
        }
    }
}

/// `sink.adx` keys (indent 4) that make a sink follow the emulator at test speed: status rows
/// read every 200 ms and given up after 60 s, the health check retried every 500 ms.
pub const QUICK_POLLING: &str = "    status:\n      poll_interval: 200ms\n      pending_timeout: 60s\n    \
                                 healthcheck:\n      retry_interval: 500ms\n";

/// A `sink:` section of a config file for an ADX emulator at `url` (both endpoints; also for a
/// process that only knows the address): `mode` is `queued`, `streaming` or `managed`, `extra` is
/// appended under `sink.adx` (indent 4). Unless `extra` has its own `auth:` section, `auth.mode`
/// is `none`.
#[must_use]
pub fn sink_yaml_at(url: &str, database: &str, mode: &str, extra: &str) -> String {
    let auth = if extra.contains("    auth:") {
        ""
    } else {
        "    auth:\n      mode: none\n"
    };
    format!(
        "sink:\n  type: adx\n  adx:\n    ingest_endpoint: {url}\n    engine_endpoint: {url}\n    \
         database: {database}\n    mode: {mode}\n    request_timeout: 10s\n{auth}{extra}",
    )
}

impl Drop for AdxEmulator {
    fn drop(&mut self) {
        self.stop.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}
