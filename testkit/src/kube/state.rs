//! The emulator's shared state and the apiserver's write semantics on top of the store:
//! create (uid, creationTimestamp, generateName), replace with optimistic concurrency and
//! create-on-update, patch, delete with preconditions; plus runtime settings, request statistics
//! and the Rust API that tests use through `KubeEmulator::state()`.
//!
//! Never holds the store lock across an `.await`; never formats HTTP responses (that is the
//! server's job).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rand::Rng;
use serde::{Serialize, Serializer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Error;
use super::faults::{ClientIds, FaultSummary, Faults};
use super::generator::GeneratorConfig;
use super::managed;
use super::patch::{self, PatchType};
use super::resources::{Object, Resource, Stored, View, decode_value};
use super::status::{ApiError, FieldError, OPTIMISTIC_LOCK_MSG};
use super::store::{GroundTruthVersion, Store, WriteOp, key};
use super::validation::{validate_create, validate_update};

/// Runtime settings (`PUT /emulator/settings`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Events expire this long after their last write (applies to writes after a change, like
    /// an etcd lease attached at write time).
    pub event_ttl: Duration,
    /// Automatic compaction period; `None` = never.
    pub compaction_interval: Option<Duration>,
    /// Send BOOKMARKs on Event watches that ask for them (real clusters send none).
    pub event_bookmarks: bool,
    /// Period of BOOKMARKs on watches that get them (the watch cache uses 1 min).
    pub bookmark_interval: Duration,
}

/// Preconditions of a DELETE (`DeleteOptions.preconditions`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// LIST/WATCH counts of one client.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClientStats {
    /// LIST requests per resource (`events`, `events.events.k8s.io`, `leases.coordination.k8s.io`).
    pub lists: BTreeMap<String, u64>,
    /// WATCH requests per resource.
    pub watches: BTreeMap<String, u64>,
    /// Requests answered by an injected fault (error or partition).
    pub faulted: u64,
}

#[derive(Default)]
struct StatsInner {
    total: ClientStats,
    clients: BTreeMap<String, ClientStats>,
}

/// Request counters.
#[derive(Default)]
pub(crate) struct RequestStats {
    inner: Mutex<StatsInner>,
}

impl RequestStats {
    fn with(&self, ids: &ClientIds, f: impl Fn(&mut ClientStats)) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut g.total);
        f(g.clients.entry(ids.identity()).or_default());
    }

    pub fn count_list(&self, view: View, ids: &ClientIds) {
        let name = view.stats_name();
        self.with(ids, |s| *s.lists.entry(name.clone()).or_default() += 1);
    }

    pub fn count_watch(&self, view: View, ids: &ClientIds) {
        let name = view.stats_name();
        self.with(ids, |s| *s.watches.entry(name.clone()).or_default() += 1);
    }

    pub fn count_faulted(&self, ids: &ClientIds) {
        self.with(ids, |s| s.faulted += 1);
    }
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with signature"
)]
fn rv_string<S: Serializer>(rv: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rv.to_string())
}

/// Generator counters and settings, as reported in [`Stats`].
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GeneratorStats {
    /// Configured rate (0 when stopped).
    pub events_per_second: f64,
    /// Configured share of updates.
    pub update_ratio: f64,
    /// Events created by the generator so far.
    pub created: u64,
    /// Event updates made by the generator so far.
    pub updated: u64,
}

/// `GET /emulator/stats`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Current resourceVersion.
    #[serde(serialize_with = "rv_string")]
    pub resource_version: u64,
    /// Compaction point.
    #[serde(serialize_with = "rv_string")]
    pub compacted_resource_version: u64,
    /// Live Events.
    pub events_stored: usize,
    /// Live Leases.
    pub leases_stored: usize,
    /// Entries in the change log (bounded by compaction).
    pub change_log_entries: usize,
    /// Event versions in the ground-truth record.
    pub ground_truth_versions: usize,
    /// Watch streams currently open.
    pub open_watches: usize,
    /// LIST/WATCH counts over all clients.
    pub requests: ClientStats,
    /// LIST/WATCH counts per client identity (`X-Client-Id`, else `User-Agent`).
    pub clients: BTreeMap<String, ClientStats>,
    /// Event generator.
    pub generator: GeneratorStats,
    /// Active faults.
    pub faults: FaultSummary,
}

/// Shared state of one emulator: storage, settings, faults, statistics.
pub struct KubeState {
    store: Mutex<Store>,
    rv_tx: watch::Sender<u64>,
    pub(crate) settings: watch::Sender<Settings>,
    pub(crate) faults: Faults,
    pub(crate) stats: RequestStats,
    pub(crate) generator: watch::Sender<Option<GeneratorConfig>>,
    pub(crate) generated: AtomicU64,
    pub(crate) generated_updates: AtomicU64,
    pub(crate) open_watches: AtomicUsize,
    pub(crate) shutdown: CancellationToken,
    /// When the emulator started (creation time of the virtual namespaces).
    pub(crate) started: Timestamp,
}

/// Counts an open watch for as long as it lives.
pub(crate) struct OpenWatch(Arc<KubeState>);

impl OpenWatch {
    pub fn new(state: &Arc<KubeState>) -> Self {
        state.open_watches.fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The field manager (`managedFields`) of writes made in-process through [`KubeState`].
const IN_PROCESS_MANAGER: &str = "kevents-emulator";

/// Copies the fields the server owns from the stored object into an update (`BeforeUpdate`).
fn carry_system_fields(obj: &mut Object, old: &Object) {
    let old_meta = old.meta();
    let meta = obj.meta_mut();
    if meta.uid.as_deref().unwrap_or_default().is_empty() {
        meta.uid.clone_from(&old_meta.uid);
    }
    meta.creation_timestamp
        .clone_from(&old_meta.creation_timestamp);
    meta.generation = old_meta.generation;
    meta.deletion_timestamp
        .clone_from(&old_meta.deletion_timestamp);
    meta.managed_fields = None;
    meta.self_link = None;
}

/// Sets the fields the server owns on create (`FillObjectMetaSystemFields`).
fn fill_system_fields(obj: &mut Object) {
    let meta = obj.meta_mut();
    meta.uid = Some(new_uid());
    meta.creation_timestamp = Some(Time(
        Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH),
    ));
    meta.resource_version = None;
    meta.deletion_timestamp = None;
    meta.deletion_grace_period_seconds = None;
    meta.managed_fields = None;
    meta.self_link = None;
}

/// A random RFC 4122 version-4 UUID.
pub(crate) fn new_uid() -> String {
    uid_from_bytes(rand::rng().random())
}

/// Formats 16 random bytes as an RFC 4122 version-4 UUID.
pub(crate) fn uid_from_bytes(mut b: [u8; 16]) -> String {
    use std::fmt::Write;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{x:02x}");
    }
    out
}

/// The 5-character suffix `generateName` gets (apiserver alphabet without vowels).
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn set_namespace(obj: &mut Object, ns: &str) -> Result<(), ApiError> {
    let meta = obj.meta_mut();
    match meta.namespace.as_deref() {
        None | Some("") => {
            meta.namespace = Some(ns.to_owned());
            Ok(())
        }
        Some(n) if n == ns => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
    }
}

fn parse_rv(rv: Option<&str>) -> Result<u64, ApiError> {
    match rv {
        None | Some("") => Ok(0),
        Some(s) => s.parse().map_err(|e| {
            ApiError::unclassified(format!(
                "strconv.ParseUint: parsing {s:?}: {}",
                go_num_error(&e)
            ))
        }),
    }
}

/// Go's `strconv.NumError` text for a failed `ParseUint`.
fn go_num_error(e: &std::num::ParseIntError) -> &'static str {
    match e.kind() {
        std::num::IntErrorKind::PosOverflow => "value out of range",
        _ => "invalid syntax",
    }
}

/// True when `new` equals `old` apart from the resourceVersion (a write that changes nothing).
fn unchanged(new: &mut Object, old: &Object) -> bool {
    new.meta_mut()
        .resource_version
        .clone_from(&old.meta().resource_version);
    new == old
}

impl KubeState {
    pub(crate) fn new(settings: Settings, generator: Option<GeneratorConfig>) -> Self {
        Self {
            store: Mutex::new(Store::new()),
            rv_tx: watch::Sender::new(0),
            settings: watch::Sender::new(settings),
            faults: Faults::default(),
            stats: RequestStats::default(),
            generator: watch::Sender::new(generator),
            generated: AtomicU64::new(0),
            generated_updates: AtomicU64::new(0),
            open_watches: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            started: Timestamp::now(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes watches after a write at `rv`.
    pub(crate) fn notify(&self, rv: u64) {
        self.rv_tx.send_modify(|v| *v = (*v).max(rv));
    }

    pub(crate) fn subscribe_writes(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    pub(crate) fn ttl_for(&self, resource: Resource) -> Option<Duration> {
        (resource == Resource::Events).then(|| self.settings.borrow().event_ttl)
    }

    pub(crate) fn get(&self, resource: Resource, ns: &str, name: &str) -> Option<Arc<Stored>> {
        self.lock().get(resource, &key(ns, name))
    }

    /// POST: creates `obj` in namespace `ns`.
    pub(crate) fn create(
        &self,
        view: View,
        ns: &str,
        mut obj: Object,
        manager: &str,
    ) -> Result<Arc<Stored>, ApiError> {
        set_namespace(&mut obj, ns)?;
        let meta = obj.meta_mut();
        if meta.name.as_deref().unwrap_or_default().is_empty()
            && let Some(prefix) = meta.generate_name.clone()
        {
            meta.name = Some(format!("{prefix}{}", name_suffix()));
        }
        fill_system_fields(&mut obj);
        let errs = validate_create(view, &obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid(view.group_kind(), obj.name(), &errs));
        }
        managed::track(&mut obj, None, view, manager);
        let name = obj.name().to_owned();
        let resource = view.resource();
        let ttl = self.ttl_for(resource);
        let out = self
            .lock()
            .write(resource, &key(ns, &name), Instant::now(), ttl, |cur| {
                if cur.is_some() {
                    Err(ApiError::already_exists(view.group_resource(), &name))
                } else {
                    Ok(WriteOp::Put(obj))
                }
            })?;
        self.notify(out.object.rv);
        Ok(out.object)
    }

    /// PUT: replaces (or creates) `name`. Returns the stored version and whether it was created.
    pub(crate) fn replace(
        &self,
        view: View,
        ns: &str,
        name: &str,
        mut obj: Object,
        manager: &str,
    ) -> Result<(Arc<Stored>, bool), ApiError> {
        if obj.name() != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                obj.name()
            )));
        }
        set_namespace(&mut obj, ns)?;
        let new_rv = parse_rv(obj.meta().resource_version.as_deref())?;
        let resource = view.resource();
        let ttl = self.ttl_for(resource);
        let mut created = false;
        let out = self
            .lock()
            .write(resource, &key(ns, name), Instant::now(), ttl, |cur| {
                let Some(cur) = cur else {
                    // Both resources allow create-on-update, but a PUT carries its object's uid
                    // as a precondition: an update of an object that was deleted meanwhile fails
                    // (the apiserver's `Preconditions.Check` against an empty object).
                    if let Some(uid) = obj.meta().uid.as_deref().filter(|u| !u.is_empty()) {
                        return Err(ApiError::conflict(
                            view.group_resource(),
                            name,
                            &format!(
                                "Precondition failed: UID in precondition: {uid}, UID in object meta: "
                            ),
                        ));
                    }
                    fill_system_fields(&mut obj);
                    let errs = validate_create(view, &obj);
                    if !errs.is_empty() {
                        return Err(ApiError::invalid(view.group_kind(), name, &errs));
                    }
                    managed::track(&mut obj, None, view, manager);
                    created = true;
                    return Ok(WriteOp::Put(obj));
                };
                // Events allow unconditional updates; Leases do not.
                if new_rv == 0 && resource == Resource::Leases {
                    return Err(ApiError::invalid_resource(
                        view.group_resource(),
                        name,
                        &[FieldError::invalid(
                            "metadata.resourceVersion",
                            "0",
                            "must be specified for an update",
                        )],
                    ));
                }
                Self::finish_update(view, name, obj, cur, new_rv, manager)
            })?;
        if out.change.is_some() {
            self.notify(out.object.rv);
        }
        Ok((out.object, created))
    }

    /// The rest of an update once the current object is known: the resourceVersion precondition
    /// (`new_rv` 0 = none), server-owned fields, validation, and no-op detection.
    fn finish_update(
        view: View,
        name: &str,
        mut obj: Object,
        cur: &Arc<Stored>,
        new_rv: u64,
        manager: &str,
    ) -> Result<WriteOp, ApiError> {
        if new_rv != 0 && new_rv != cur.rv {
            return Err(ApiError::conflict(
                view.group_resource(),
                name,
                OPTIMISTIC_LOCK_MSG,
            ));
        }
        carry_system_fields(&mut obj, &cur.object);
        let errs = validate_update(view, &obj, &cur.object);
        if !errs.is_empty() {
            return Err(ApiError::invalid(view.group_kind(), name, &errs));
        }
        managed::track(&mut obj, Some(&cur.object), view, manager);
        if unchanged(&mut obj, &cur.object) {
            Ok(WriteOp::Noop)
        } else {
            Ok(WriteOp::Put(obj))
        }
    }

    /// PATCH: unconditional unless the patch itself sets `metadata.resourceVersion`.
    pub(crate) fn patch(
        &self,
        view: View,
        ns: &str,
        name: &str,
        kind: PatchType,
        body: &[u8],
        manager: &str,
    ) -> Result<Arc<Stored>, ApiError> {
        let resource = view.resource();
        let ttl = self.ttl_for(resource);
        let out = self
            .lock()
            .write(resource, &key(ns, name), Instant::now(), ttl, |cur| {
                let cur = cur.ok_or_else(|| ApiError::not_found(view.group_resource(), name))?;
                let patched = patch::apply(kind, cur.object.to_view_value(view), body)?;
                let obj = decode_value(view, patched)?;
                if obj.name() != name || obj.namespace() != ns {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        obj.name()
                    )));
                }
                let new_rv = parse_rv(obj.meta().resource_version.as_deref())?;
                Self::finish_update(view, name, obj, cur, new_rv, manager)
            })?;
        if out.change.is_some() {
            self.notify(out.object.rv);
        }
        Ok(out.object)
    }

    /// DELETE with optional preconditions. Returns the deleted object (at the deletion rv).
    pub(crate) fn delete(
        &self,
        view: View,
        ns: &str,
        name: &str,
        pre: &Preconditions,
    ) -> Result<Arc<Stored>, ApiError> {
        let resource = view.resource();
        let out = self.lock().write(resource, &key(ns, name), Instant::now(), None, |cur| {
            let cur = cur.ok_or_else(|| ApiError::not_found(view.group_resource(), name))?;
            let failed = |what: &str, want: &str, got: &str| {
                ApiError::conflict(
                    view.group_resource(),
                    name,
                    &format!("Precondition failed: {what} in precondition: {want}, {what} in object meta: {got}"),
                )
            };
            if let Some(uid) = pre.uid.as_deref().filter(|u| *u != cur.object.uid()) {
                return Err(failed("UID", uid, cur.object.uid()));
            }
            let cur_rv = cur.rv.to_string();
            if let Some(rv) = pre.resource_version.as_deref().filter(|r| *r != cur_rv) {
                return Err(failed("ResourceVersion", rv, &cur_rv));
            }
            Ok(WriteOp::Delete)
        })?;
        self.notify(out.object.rv);
        Ok(out.object)
    }

    /// Removes Events whose TTL has passed (each a DELETED at a new rv); returns how many.
    pub fn expire_now(&self) -> usize {
        let (n, rv) = {
            let mut s = self.lock();
            (s.expire(Instant::now()), s.rv())
        };
        if n > 0 {
            self.notify(rv);
        }
        n
    }

    // ------------------------------------------------------------------------------------------
    // Public Rust API.

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv()
    }

    /// The compaction point: watches and continue tokens below it get 410.
    pub fn compacted_resource_version(&self) -> u64 {
        self.lock().compacted()
    }

    /// Compacts to the current resourceVersion; returns the compaction point.
    pub fn compact_now(&self) -> u64 {
        let mut s = self.lock();
        let rv = s.rv();
        s.compact(rv)
    }

    /// Compacts to `rv` (capped at the current one); returns the compaction point.
    pub fn compact_to(&self, rv: u64) -> u64 {
        self.lock().compact(rv)
    }

    /// Creates a core/v1 Event exactly as `POST /api/v1/namespaces/{ns}/events` would.
    pub fn create_event(&self, event: Event) -> Result<Event, Error> {
        let mut obj = Object::Event(Box::new(event));
        obj.normalize();
        let ns = obj.namespace().to_owned();
        let stored = self.create(View::CoreEvents, &ns, obj, IN_PROCESS_MANAGER)?;
        Ok(to_event(&stored))
    }

    /// Replaces a core/v1 Event exactly as `PUT …/events/{name}` would (unconditional when the
    /// event has no resourceVersion).
    pub fn update_event(&self, event: Event) -> Result<Event, Error> {
        let mut obj = Object::Event(Box::new(event));
        obj.normalize();
        let (ns, name) = (obj.namespace().to_owned(), obj.name().to_owned());
        let (stored, _) = self.replace(View::CoreEvents, &ns, &name, obj, IN_PROCESS_MANAGER)?;
        Ok(to_event(&stored))
    }

    /// Deletes an Event (a DELETED change at a new resourceVersion).
    pub fn delete_event(&self, namespace: &str, name: &str) -> Result<(), Error> {
        self.delete(View::CoreEvents, namespace, name, &Preconditions::default())?;
        Ok(())
    }

    /// The current version of an Event.
    pub fn event(&self, namespace: &str, name: &str) -> Option<Event> {
        self.get(Resource::Events, namespace, name)
            .map(|s| to_event(&s))
    }

    /// Every live Event.
    pub fn events(&self) -> Vec<Event> {
        let (_, items) = self.lock().snapshot(Resource::Events, None);
        items.iter().map(|s| to_event(s)).collect()
    }

    /// The current version of a Lease.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Lease> {
        self.get(Resource::Leases, namespace, name)
            .and_then(|s| match &s.object {
                Object::Lease(l) => Some(l.as_ref().clone()),
                Object::Event(_) => None,
            })
    }

    /// Every Event version stored (ADDED or MODIFIED) with resourceVersion > `since`.
    pub fn ground_truth(&self, since: Option<u64>) -> Vec<GroundTruthVersion> {
        self.lock().ground_truth(since)
    }

    /// Request counters, storage figures, generator and fault state.
    pub fn stats(&self) -> Stats {
        let (rv, compacted, events, leases, log, gt) = {
            let s = self.lock();
            (
                s.rv(),
                s.compacted(),
                s.live(Resource::Events),
                s.live(Resource::Leases),
                s.log_len(),
                s.ground_truth_len(),
            )
        };
        let (requests, clients) = {
            let g = self
                .stats
                .inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (g.total.clone(), g.clients.clone())
        };
        let gen_cfg = self.generator.borrow().clone();
        Stats {
            resource_version: rv,
            compacted_resource_version: compacted,
            events_stored: events,
            leases_stored: leases,
            change_log_entries: log,
            ground_truth_versions: gt,
            open_watches: self.open_watches.load(Ordering::Relaxed),
            requests,
            clients,
            generator: GeneratorStats {
                events_per_second: gen_cfg.as_ref().map_or(0.0, |g| g.events_per_second),
                update_ratio: gen_cfg.as_ref().map_or(0.0, |g| g.update_ratio),
                created: self.generated.load(Ordering::Relaxed),
                updated: self.generated_updates.load(Ordering::Relaxed),
            },
            faults: self.faults.summary(),
        }
    }

    /// The current runtime settings.
    pub fn settings(&self) -> Settings {
        self.settings.borrow().clone()
    }

    /// Sets the Event TTL for writes from now on.
    pub fn set_event_ttl(&self, ttl: Duration) {
        self.settings.send_modify(|s| s.event_ttl = ttl);
    }

    /// Sets the automatic compaction period (`None` = never).
    pub fn set_compaction_interval(&self, interval: Option<Duration>) {
        self.settings
            .send_modify(|s| s.compaction_interval = interval);
    }

    /// Turns BOOKMARKs on Event watches on or off (for watches started afterwards).
    pub fn set_event_bookmarks(&self, on: bool) {
        self.settings.send_modify(|s| s.event_bookmarks = on);
    }

    /// Sets the BOOKMARK period (for watches started afterwards).
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.settings.send_modify(|s| s.bookmark_interval = every);
    }

    /// Starts, retunes or (with `None` or a zero rate) stops the event generator.
    pub fn set_generator(&self, config: Option<GeneratorConfig>) {
        let config = config.filter(|c| c.events_per_second > 0.0);
        self.generator.send_replace(config);
    }

    /// The running generator's configuration.
    pub fn generator(&self) -> Option<GeneratorConfig> {
        self.generator.borrow().clone()
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }
}

fn to_event(stored: &Stored) -> Event {
    match &stored.object {
        Object::Event(e) => e.as_ref().clone(),
        Object::Lease(_) => Event::default(),
    }
}
