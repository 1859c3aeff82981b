//! The event writer: writes realistic core/v1 Events through the Kubernetes API at a set pace —
//! creates, and count++ updates of recent events by merge PATCH as the legacy recorder does — and
//! records every (uid, resourceVersion) the API server answered with. That record is the ground
//! truth of the dual-backend tests: a real kube-apiserver keeps no history of versions, so the
//! writer must.
//!
//! Owns the event content, the pacing and the record. It works the same against the emulator and
//! a real kube-apiserver (it only uses the API). It must never record a version the server did not
//! confirm, and it counts every write that failed, since such a write may or may not have been
//! stored and the oracle cannot be exact around it.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::oracle::Key;

/// Events kept as candidates for count++ updates.
const RECENT: usize = 200;

/// What the writer writes and where.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Namespaces to write to (they must exist on a real API server).
    pub namespaces: Vec<String>,
    /// Random seed (content and the create/update choice).
    pub seed: u64,
}

/// How fast, and how many of the writes are updates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Writes per second; 0 pauses.
    pub events_per_second: f64,
    /// Share of writes that bump the count of a recent event (the rest create).
    pub update_ratio: f64,
}

impl Pace {
    /// No writes.
    pub const PAUSED: Self = Self {
        events_per_second: 0.0,
        update_ratio: 0.0,
    };
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Events created.
    pub created: u64,
    /// count++ updates.
    pub updated: u64,
    /// Updates answered 404 (the event expired); not recorded, and the event is forgotten.
    pub expired: u64,
    /// Writes that failed otherwise (they may or may not be stored).
    pub failed: u64,
    /// The resourceVersion of the last confirmed write.
    pub last_resource_version: Option<String>,
}

/// One event the writer may update.
#[derive(Debug, Clone)]
struct Recent {
    namespace: String,
    name: String,
    count: i32,
}

#[derive(Debug, Default)]
struct Record {
    truth: Vec<Key>,
    stats: WriterStats,
}

/// Writes events and records the ground truth. Use it directly (`create`, `update`, `write_one`)
/// or [`EventWriter::spawn`] it to write at a pace.
pub struct EventWriter {
    client: kube::Client,
    config: WriterConfig,
    rng: StdRng,
    recent: VecDeque<Recent>,
    serial: u64,
    record: Arc<Mutex<Record>>,
}

impl EventWriter {
    /// A writer over `client`.
    #[must_use]
    pub fn new(client: kube::Client, config: WriterConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self {
            client,
            config,
            rng,
            recent: VecDeque::new(),
            serial: 0,
            record: Arc::new(Mutex::new(Record::default())),
        }
    }

    /// Every (uid, resourceVersion) the API server confirmed so far.
    #[must_use]
    pub fn ground_truth(&self) -> Vec<Key> {
        ground_truth(&self.record)
    }

    /// Counts so far.
    #[must_use]
    pub fn stats(&self) -> WriterStats {
        stats(&self.record)
    }

    /// One write: an update of a recent event with probability `update_ratio`, else a create.
    ///
    /// # Errors
    /// The API error of a failed write (also counted in [`WriterStats::failed`]).
    pub async fn write_one(&mut self, update_ratio: f64) -> Result<Key, kube::Error> {
        if !self.recent.is_empty() && self.rng.random_bool(update_ratio.clamp(0.0, 1.0)) {
            let index = self.rng.random_range(0..self.recent.len());
            match self.update(index).await? {
                Some(key) => Ok(key),
                None => self.create().await,
            }
        } else {
            self.create().await
        }
    }

    /// Creates a new event, as the kubelet would.
    ///
    /// # Errors
    /// The API error (also counted as failed).
    pub async fn create(&mut self) -> Result<Key, kube::Error> {
        let event = self.next_event();
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let name = event.metadata.name.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let created = api.create(&PostParams::default(), &event).await;
        let created = self.confirm(created, false)?;
        self.recent.push_back(Recent {
            namespace,
            name,
            count: 1,
        });
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        Ok(created)
    }

    /// Bumps the count of the recent event at `index` (merge PATCH of `count` and
    /// `lastTimestamp`). `Ok(None)` when it has expired (404): it is forgotten.
    ///
    /// # Errors
    /// The API error (also counted as failed).
    async fn update(&mut self, index: usize) -> Result<Option<Key>, kube::Error> {
        let Some(target) = self.recent.get(index).cloned() else {
            return Ok(None);
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &target.namespace);
        let patch = serde_json::json!({
            "count": target.count + 1,
            "lastTimestamp": now_seconds(),
        });
        match api
            .patch(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 404 => {
                self.recent.remove(index);
                lock(&self.record).stats.expired += 1;
                Ok(None)
            }
            answer => {
                let key = self.confirm(answer, true)?;
                if let Some(recent) = self.recent.get_mut(index) {
                    recent.count += 1;
                }
                Ok(Some(key))
            }
        }
    }

    fn confirm(
        &self,
        answer: Result<Event, kube::Error>,
        update: bool,
    ) -> Result<Key, kube::Error> {
        let mut record = lock(&self.record);
        let event = match answer {
            Ok(event) => event,
            Err(error) => {
                record.stats.failed += 1;
                return Err(error);
            }
        };
        let (Some(uid), Some(rv)) = (event.metadata.uid, event.metadata.resource_version) else {
            record.stats.failed += 1;
            return Err(kube::Error::Api(
                kube::core::Status::failure("answer without uid or resourceVersion", "BadResponse")
                    .with_code(500)
                    .boxed(),
            ));
        };
        if update {
            record.stats.updated += 1;
        } else {
            record.stats.created += 1;
        }
        record.stats.last_resource_version = Some(rv.clone());
        record.truth.push((uid.clone(), rv.clone()));
        Ok((uid, rv))
    }

    fn next_event(&mut self) -> Event {
        const REASONS: [(&str, &str, &str); 8] = [
            (
                "Scheduled",
                "Normal",
                "Successfully assigned {pod} to {node}",
            ),
            (
                "Pulling",
                "Normal",
                "Pulling image \"registry.local/app:1.4.2\"",
            ),
            (
                "Pulled",
                "Normal",
                "Successfully pulled image \"registry.local/app:1.4.2\" in 1.2s",
            ),
            ("Created", "Normal", "Created container app"),
            ("Started", "Normal", "Started container app"),
            (
                "BackOff",
                "Warning",
                "Back-off restarting failed container app in pod {pod}",
            ),
            (
                "Unhealthy",
                "Warning",
                "Readiness probe failed: HTTP probe failed with statuscode: 503",
            ),
            (
                "FailedMount",
                "Warning",
                "MountVolume.SetUp failed for volume \"config\": configmap \"app\" not found",
            ),
        ];
        self.serial += 1;
        let namespace = if self.config.namespaces.is_empty() {
            "default".to_owned()
        } else {
            let i = self.rng.random_range(0..self.config.namespaces.len());
            self.config.namespaces[i].clone()
        };
        let pod = format!(
            "app-{:x}-{}",
            self.rng.random_range(0x1000_u32..0xffff),
            self.rng.random_range(0..5)
        );
        let node = format!("node-{}", self.rng.random_range(1..4));
        let (reason, kind, message) = REASONS[self.rng.random_range(0..REASONS.len())];
        let message = message.replace("{pod}", &pod).replace("{node}", &node);
        let now = Time(jiff::Timestamp::now());
        let component = if reason == "Scheduled" {
            "default-scheduler"
        } else {
            "kubelet"
        };
        Event {
            metadata: ObjectMeta {
                // The recorder's `<object>.<unix nanos in hex>`; the serial keeps it unique.
                name: Some(format!(
                    "{pod}.{:x}",
                    jiff::Timestamp::now().as_nanosecond() + i128::from(self.serial)
                )),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(pod),
                namespace: Some(namespace),
                uid: Some(format!("{:032x}", self.rng.random::<u128>())),
                field_path: (component == "kubelet").then(|| "spec.containers{app}".to_owned()),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some(kind.to_owned()),
            source: Some(EventSource {
                component: Some(component.to_owned()),
                host: (component == "kubelet").then(|| node.clone()),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some(component.to_owned()),
            reporting_instance: Some(node),
            ..Event::default()
        }
    }

    /// Writes at `pace` in a task until stopped; change the pace with [`RunningWriter::pace`].
    #[must_use]
    pub fn spawn(self, pace: Pace) -> RunningWriter {
        let record = Arc::clone(&self.record);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(self, rx, pace));
        RunningWriter { tx, task, record }
    }
}

enum Command {
    Pace(Pace, oneshot::Sender<()>),
    Stop,
}

/// A writer running in a task.
pub struct RunningWriter {
    tx: mpsc::UnboundedSender<Command>,
    task: JoinHandle<EventWriter>,
    record: Arc<Mutex<Record>>,
}

impl RunningWriter {
    /// Changes the pace; returns once no write of the old pace is in flight.
    pub async fn pace(&self, pace: Pace) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Command::Pace(pace, ack)).is_ok() {
            let _ = done.await;
        }
    }

    /// Stops writing until the next [`RunningWriter::pace`]; returns once nothing is in flight,
    /// with the counts at that point.
    pub async fn pause(&self) -> WriterStats {
        self.pace(Pace::PAUSED).await;
        self.stats()
    }

    /// Every (uid, resourceVersion) confirmed so far.
    #[must_use]
    pub fn ground_truth(&self) -> Vec<Key> {
        ground_truth(&self.record)
    }

    /// Counts so far.
    #[must_use]
    pub fn stats(&self) -> WriterStats {
        stats(&self.record)
    }

    /// Stops writing and hands the writer back (with its record).
    ///
    /// # Errors
    /// Fails if the writer task panicked.
    pub async fn stop(self) -> Result<EventWriter, tokio::task::JoinError> {
        let _ = self.tx.send(Command::Stop);
        self.task.await
    }
}

async fn run(
    mut writer: EventWriter,
    mut rx: mpsc::UnboundedReceiver<Command>,
    mut pace: Pace,
) -> EventWriter {
    let mut next = tokio::time::Instant::now();
    loop {
        let writing = pace.events_per_second > 0.0;
        let command = tokio::select! {
            command = rx.recv() => command,
            () = tokio::time::sleep_until(next), if writing => {
                next += Duration::from_secs_f64(1.0 / pace.events_per_second);
                // Fall behind rather than burst when the server is slower than the pace.
                next = next.max(tokio::time::Instant::now());
                if let Err(error) = writer.write_one(pace.update_ratio).await {
                    tracing::warn!(%error, "Event writer: a write failed");
                }
                continue;
            }
        };
        match command {
            None | Some(Command::Stop) => return writer,
            Some(Command::Pace(new, ack)) => {
                pace = new;
                next = tokio::time::Instant::now();
                let _ = ack.send(());
            }
        }
    }
}

fn ground_truth(record: &Mutex<Record>) -> Vec<Key> {
    lock(record).truth.clone()
}

fn stats(record: &Mutex<Record>) -> WriterStats {
    lock(record).stats.clone()
}

fn lock(record: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    record
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Now as a `Time` (whole seconds, `Z`), as the API server stores it.
fn now_seconds() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
