//! The event generator: a seeded stream of realistic Events (legacy `count`/`firstTimestamp`
//! style and new `eventTime`/`series` style) created at a steady rate, with a share of ticks
//! updating a live event instead (count++ / series.count++, same uid, new resourceVersion).
//!
//! Writes go through the same store path as API writes, so TTL, watches and the ground truth see
//! them identically. It must never bypass the store or hold its lock across an `.await`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSeries, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::resources::{Object, Resource, trunc_micro, trunc_time};
use super::state::{KubeState, uid_from_bytes};
use super::store::{WriteOp, key};

/// Generator settings (`KubeEmulatorConfig::generator`, `PUT /emulator/generator`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GeneratorConfig {
    /// Writes per second (creates + updates); 0 stops the generator.
    pub events_per_second: f64,
    /// Share (0..1) of writes that update an existing live event instead of creating one.
    #[serde(default)]
    pub update_ratio: f64,
    /// Seed of the random stream, for reproducible runs.
    #[serde(default)]
    pub seed: u64,
    /// Number of namespaces `ns-0..ns-{n-1}` the events go to (Node events go to `default`).
    #[serde(default = "default_namespaces")]
    pub namespaces: usize,
}

fn default_namespaces() -> usize {
    5
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            events_per_second: 10.0,
            update_ratio: 0.2,
            seed: 0,
            namespaces: default_namespaces(),
        }
    }
}

/// How often the generator writes its owed batch.
const TICK: Duration = Duration::from_millis(10);
/// Live generated events remembered as update candidates.
const POOL: usize = 4096;

struct Template {
    kind: &'static str,
    api_version: &'static str,
    type_: &'static str,
    reason: &'static str,
    message: &'static str,
    component: &'static str,
    action: &'static str,
}

const TEMPLATES: &[Template] = &[
    Template {
        kind: "Pod",
        api_version: "v1",
        type_: "Normal",
        reason: "Scheduled",
        message: "Successfully assigned {ns}/{pod} to {node}",
        component: "default-scheduler",
        action: "Binding",
    },
    Template {
        kind: "Pod",
        api_version: "v1",
        type_: "Normal",
        reason: "Pulling",
        message: "Pulling image \"{image}\"",
        component: "kubelet",
        action: "",
    },
    Template {
        kind: "Pod",
        api_version: "v1",
        type_: "Normal",
        reason: "Pulled",
        message: "Successfully pulled image \"{image}\" in 1.284s (1.284s including waiting). Image size: 48213561 bytes.",
        component: "kubelet",
        action: "",
    },
    Template {
        kind: "Pod",
        api_version: "v1",
        type_: "Normal",
        reason: "Created",
        message: "Created container: {container}",
        component: "kubelet",
        action: "",
    },
    Template {
        kind: "Pod",
        api_version: "v1",
        type_: "Normal",
        reason: "Started",
        message: "Started container {container}",
        component: "kubelet",
        action: "",
    },
    Template {
        kind: "Pod",
        api_version: "v1",
        type_: "Normal",
        reason: "Killing",
        message: "Stopping container {container}",
        component: "kubelet",
        action: "",
    },
    Template {
        kind: "Pod",
        api_version: "v1",
        type_: "Warning",
        reason: "BackOff",
        message: "Back-off restarting failed container {container} in pod {pod}_{ns}({uid})",
        component: "kubelet",
        action: "",
    },
    Template {
        kind: "Pod",
        api_version: "v1",
        type_: "Warning",
        reason: "Unhealthy",
        message: "Readiness probe failed: HTTP probe failed with statuscode: 503",
        component: "kubelet",
        action: "",
    },
    Template {
        kind: "Pod",
        api_version: "v1",
        type_: "Warning",
        reason: "FailedScheduling",
        message: "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.",
        component: "default-scheduler",
        action: "Scheduling",
    },
    Template {
        kind: "Pod",
        api_version: "v1",
        type_: "Warning",
        reason: "FailedMount",
        message: "MountVolume.SetUp failed for volume \"config\" : configmap \"{app}-config\" not found",
        component: "kubelet",
        action: "",
    },
    Template {
        kind: "Node",
        api_version: "v1",
        type_: "Normal",
        reason: "NodeHasSufficientMemory",
        message: "Node {node} status is now: NodeHasSufficientMemory",
        component: "kubelet",
        action: "",
    },
    Template {
        kind: "Node",
        api_version: "v1",
        type_: "Normal",
        reason: "NodeNotReady",
        message: "Node {node} status is now: NodeNotReady",
        component: "node-controller",
        action: "NodeNotReady",
    },
    Template {
        kind: "Node",
        api_version: "v1",
        type_: "Warning",
        reason: "Rebooted",
        message: "Node {node} has been rebooted, boot id: {uid}",
        component: "kubelet",
        action: "",
    },
    Template {
        kind: "Deployment",
        api_version: "apps/v1",
        type_: "Normal",
        reason: "ScalingReplicaSet",
        message: "Scaled up replica set {rs} from 1 to 3",
        component: "deployment-controller",
        action: "Scaling",
    },
    Template {
        kind: "ReplicaSet",
        api_version: "apps/v1",
        type_: "Normal",
        reason: "SuccessfulCreate",
        message: "Created pod: {pod}",
        component: "replicaset-controller",
        action: "",
    },
    Template {
        kind: "ReplicaSet",
        api_version: "apps/v1",
        type_: "Normal",
        reason: "SuccessfulDelete",
        message: "Deleted pod: {pod}",
        component: "replicaset-controller",
        action: "",
    },
    Template {
        kind: "PersistentVolumeClaim",
        api_version: "v1",
        type_: "Normal",
        reason: "WaitForFirstConsumer",
        message: "waiting for first consumer to be created before binding",
        component: "persistentvolume-controller",
        action: "",
    },
    Template {
        kind: "PersistentVolumeClaim",
        api_version: "v1",
        type_: "Normal",
        reason: "ProvisioningSucceeded",
        message: "Successfully provisioned volume pvc-{uid}",
        component: "disk.csi.azure.com_csi-azuredisk-controller",
        action: "Provisioning",
    },
    Template {
        kind: "Job",
        api_version: "batch/v1",
        type_: "Normal",
        reason: "SuccessfulCreate",
        message: "Created pod: {pod}",
        component: "job-controller",
        action: "",
    },
    Template {
        kind: "Job",
        api_version: "batch/v1",
        type_: "Normal",
        reason: "Completed",
        message: "Job completed",
        component: "job-controller",
        action: "",
    },
];

const APPS: &[&str] = &[
    "web", "api", "worker", "cache", "ingest", "billing", "auth", "search",
];
const IMAGES: &[&str] = &[
    "mcr.microsoft.com/oss/nginx/nginx:1.25.3",
    "ghcr.io/example/api:2.14.1",
    "docker.io/library/redis:7.2",
    "registry.k8s.io/pause:3.9",
];
const ALNUM: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The generator's private state (owned by its task).
struct Generator {
    rng: StdRng,
    config: GeneratorConfig,
    /// Keys of generated events that may still be live.
    pool: VecDeque<String>,
    last_nanos: i64,
}

impl Generator {
    fn new(config: GeneratorConfig) -> Self {
        Self {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            pool: VecDeque::new(),
            last_nanos: 0,
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    fn random_suffix(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| ALNUM[self.rng.random_range(0..ALNUM.len())] as char)
            .collect()
    }

    /// Unique, increasing hex timestamp for event names (`<object>.<hex>`), like client-go.
    fn name_stamp(&mut self, now: Timestamp) -> String {
        let nanos = i64::try_from(now.as_nanosecond())
            .unwrap_or(i64::MAX)
            .max(self.last_nanos + 1);
        self.last_nanos = nanos;
        format!("{nanos:x}")
    }

    fn new_event(&mut self, now: Timestamp) -> Event {
        let t = self.pick(TEMPLATES);
        let app = *self.pick(APPS);
        let rs = format!("{app}-{}", self.random_suffix(8).to_lowercase());
        let pod = format!("{rs}-{}", self.random_suffix(5));
        let node = format!(
            "aks-nodepool1-{}-vmss{:06}",
            12_345_678 + self.rng.random_range(0..3),
            self.rng.random_range(0..6)
        );
        let ns_count = self.config.namespaces.max(1);
        let ns = if t.kind == "Node" {
            "default".to_owned()
        } else {
            format!("ns-{}", self.rng.random_range(0..ns_count))
        };
        let (obj_name, obj_ns) = match t.kind {
            "Pod" => (pod.clone(), ns.clone()),
            "Node" => (node.clone(), String::new()),
            "Deployment" => (app.to_owned(), ns.clone()),
            "ReplicaSet" => (rs.clone(), ns.clone()),
            "PersistentVolumeClaim" => (format!("data-{app}-0"), ns.clone()),
            _ => (
                format!(
                    "{app}-backup-{}",
                    self.rng.random_range(28_000_000..29_000_000)
                ),
                ns.clone(),
            ),
        };
        let involved_uid = new_seeded_uid(&mut self.rng);
        let image = *self.pick(IMAGES);
        let message = t
            .message
            .replace("{ns}", &ns)
            .replace("{pod}", &pod)
            .replace("{node}", &node)
            .replace("{image}", image)
            .replace("{container}", app)
            .replace("{app}", app)
            .replace("{rs}", &rs)
            .replace("{uid}", &involved_uid);
        let field_path = (t.kind == "Pod" && t.component == "kubelet")
            .then(|| format!("spec.containers{{{app}}}"));
        let name = format!("{obj_name}.{}", self.name_stamp(now));
        // Controllers that use the events.k8s.io recorder write new-style events.
        let new_style = !t.action.is_empty() && self.rng.random_bool(0.7);
        let mut e = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(ns),
                uid: Some(new_seeded_uid(&mut self.rng)),
                creation_timestamp: Some(trunc_time(&Time(now))),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some(t.api_version.to_owned()),
                kind: Some(t.kind.to_owned()),
                name: Some(obj_name),
                namespace: (!obj_ns.is_empty()).then_some(obj_ns),
                uid: Some(involved_uid),
                resource_version: Some(self.rng.random_range(1_000_000..9_999_999_u32).to_string()),
                field_path,
            },
            message: Some(message),
            reason: Some(t.reason.to_owned()),
            type_: Some(t.type_.to_owned()),
            ..Event::default()
        };
        if new_style {
            e.event_time = Some(trunc_micro(&MicroTime(now)));
            e.reporting_component = Some(t.component.to_owned());
            e.reporting_instance = Some(format!("{}-{}", t.component, self.random_suffix(5)));
            e.action = Some(t.action.to_owned());
        } else {
            e.count = Some(1);
            e.first_timestamp = Some(trunc_time(&Time(now)));
            e.last_timestamp = e.first_timestamp.clone();
            let host = (t.component == "kubelet").then(|| node.clone());
            e.source = Some(EventSource {
                component: Some(t.component.to_owned()),
                host: host.clone(),
            });
            if self.rng.random_bool(0.5) {
                e.reporting_component = Some(t.component.to_owned());
                e.reporting_instance = host;
            }
        }
        e
    }
}

/// One more occurrence of `e`: `count`/`lastTimestamp` for legacy events, `series` for new ones.
fn bump(e: &mut Event, now: Timestamp) {
    if e.event_time.is_some() {
        let count = e.series.as_ref().and_then(|s| s.count).unwrap_or(1) + 1;
        e.series = Some(EventSeries {
            count: Some(count),
            last_observed_time: Some(trunc_micro(&MicroTime(now))),
        });
    } else {
        e.count = Some(e.count.unwrap_or(1) + 1);
        e.last_timestamp = Some(trunc_time(&Time(now)));
    }
}

fn new_seeded_uid(rng: &mut StdRng) -> String {
    uid_from_bytes(rng.random())
}

/// Writes `n` generated events (creates and updates) in one lock acquisition.
fn write_batch(state: &KubeState, generator: &mut Generator, n: u64) {
    let now_ts = Timestamp::now();
    let now = Instant::now();
    let ttl = state.ttl_for(Resource::Events);
    let (mut created, mut updated) = (0, 0);
    let rv = {
        let mut store = state.lock();
        for _ in 0..n {
            let update = generator.config.update_ratio > 0.0
                && !generator.pool.is_empty()
                && generator
                    .rng
                    .random_bool(generator.config.update_ratio.clamp(0.0, 1.0));
            if update {
                let i = generator.rng.random_range(0..generator.pool.len());
                let k = generator.pool[i].clone();
                if let Some(cur) = store.get(Resource::Events, &k)
                    && let Object::Event(e) = &cur.object
                {
                    let mut e = e.as_ref().clone();
                    bump(&mut e, now_ts);
                    let obj = Object::Event(Box::new(e));
                    if store
                        .write(Resource::Events, &k, now, ttl, |_| Ok(WriteOp::Put(obj)))
                        .is_ok()
                    {
                        updated += 1;
                        continue;
                    }
                }
                // Expired or deleted meanwhile: forget it and create instead.
                generator.pool.swap_remove_back(i);
            }
            let e = generator.new_event(now_ts);
            let k = key(
                e.metadata.namespace.as_deref().unwrap_or_default(),
                e.metadata.name.as_deref().unwrap_or_default(),
            );
            let obj = Object::Event(Box::new(e));
            if store
                .write(Resource::Events, &k, now, ttl, |_| Ok(WriteOp::Put(obj)))
                .is_ok()
            {
                created += 1;
                generator.pool.push_back(k);
                if generator.pool.len() > POOL {
                    generator.pool.pop_front();
                }
            }
        }
        store.rv()
    };
    state.generated.fetch_add(created, Ordering::Relaxed);
    state
        .generated_updates
        .fetch_add(updated, Ordering::Relaxed);
    if created + updated > 0 {
        state.notify(rv);
    }
}

/// Runs the generator until shutdown, following configuration changes.
pub(crate) async fn run(state: Arc<KubeState>) {
    let mut config_rx = state.generator.subscribe();
    let mut generator: Option<Generator> = None;
    let mut owed = 0.0_f64;
    let mut last = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let config = config_rx.borrow_and_update().clone();
        match (config, generator.as_mut()) {
            (None, _) => {
                generator = None;
                tokio::select! {
                    () = state.shutdown.cancelled() => return,
                    r = config_rx.changed() => if r.is_err() { return },
                }
                owed = 0.0;
                last = Instant::now();
                continue;
            }
            (Some(c), Some(g))
                if g.config.seed == c.seed && g.config.namespaces == c.namespaces =>
            {
                g.config = c;
            }
            (Some(c), _) => generator = Some(Generator::new(c)),
        }
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            r = config_rx.changed() => if r.is_err() { return } else { continue },
        }
        let Some(g) = generator.as_mut() else {
            continue;
        };
        let now = Instant::now();
        owed += g.config.events_per_second * now.duration_since(last).as_secs_f64();
        last = now;
        // Never build up an unbounded backlog if the process was paused.
        owed = owed.min(g.config.events_per_second.max(1.0));
        let n = owed.floor();
        owed -= n;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "n is a small non-negative whole number"
        )]
        let n = n as u64;
        if n > 0 {
            write_batch(&state, g, n);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_generates_the_same_events() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut a = Generator::new(GeneratorConfig {
            seed: 7,
            ..GeneratorConfig::default()
        });
        let mut b = Generator::new(GeneratorConfig {
            seed: 7,
            ..GeneratorConfig::default()
        });
        for _ in 0..50 {
            assert_eq!(a.new_event(now), b.new_event(now));
        }
    }

    #[test]
    fn generated_events_pass_legacy_validation() {
        let now = Timestamp::now();
        let mut g = Generator::new(GeneratorConfig {
            seed: 3,
            ..GeneratorConfig::default()
        });
        for _ in 0..500 {
            let mut e = g.new_event(now);
            bump(&mut e, now);
            let obj = Object::Event(Box::new(e));
            let errs = super::super::validation::validate_create(
                super::super::resources::View::CoreEvents,
                &obj,
            );
            assert!(errs.is_empty(), "{errs:?} for {obj:?}");
        }
    }
}
