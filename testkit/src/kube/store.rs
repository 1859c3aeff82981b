//! The emulator's etcd: one global, monotonically increasing resourceVersion, a short version
//! chain per object (MVCC snapshots for paged lists), a change log that watches read, a
//! compaction point, Event TTL expiry and the ground-truth record of every stored Event version.
//!
//! Everything here is synchronous and runs under the caller's lock; it must never block, await,
//! or know about HTTP. Memory stays bounded by the compaction window, except the ground-truth
//! record, which deliberately keeps every Event version.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Serialize;

use super::resources::{Object, Resource, Stored};
use super::status::ApiError;

/// Storage key of a namespaced object: `namespace/name` (etcd key order).
pub(crate) fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Watch event type of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One entry of the change log: what happened at `rv`.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub rv: u64,
    pub resource: Resource,
    pub kind: ChangeType,
    /// The new object; for DELETED the last state, re-versioned at the deletion rv.
    pub object: Arc<Stored>,
    /// The previous version (MODIFIED/DELETED), for selector transitions.
    pub prev: Option<Arc<Stored>>,
}

/// One Event version the emulator stored (ADDED or MODIFIED), for end-to-end checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroundTruthVersion {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion` of this version.
    pub resource_version: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// When the emulator stored it.
    pub stored_at: Timestamp,
}

/// What a write callback decided to do with the current object.
pub(crate) enum WriteOp {
    /// Store this object as the new version (create or update).
    Put(Object),
    /// Delete the current object.
    Delete,
    /// Nothing changed: keep the current version, no new resourceVersion.
    Noop,
}

/// The result of a write.
pub(crate) struct WriteOutcome {
    /// The version now current (for a delete: the deleted object at the deletion rv).
    pub object: Arc<Stored>,
    /// `None` for a no-op.
    pub change: Option<ChangeType>,
}

/// A compacted position was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Compacted;

/// What a snapshot page reads.
pub(crate) struct PageQuery<'a> {
    /// Only this namespace.
    pub namespace: Option<&'a str>,
    /// First key to consider (from a continue token).
    pub start: Option<&'a str>,
    /// Snapshot resourceVersion.
    pub at: u64,
    /// Page size.
    pub limit: Option<usize>,
    /// Selector.
    pub keep: &'a dyn Fn(&Stored) -> bool,
    /// Count the items after the page (`remainingItemCount`, only without selectors).
    pub count_remaining: bool,
}

/// One page of a snapshot list.
pub(crate) struct Page {
    pub items: Vec<Arc<Stored>>,
    /// First key of the next page, when more matching items exist.
    pub next_key: Option<String>,
    /// Items after this page (only counted when asked).
    pub remaining: Option<u64>,
}

#[derive(Default)]
struct Chain {
    /// (rv, object) oldest first; `None` is a deletion tombstone.
    versions: Vec<(u64, Option<Arc<Stored>>)>,
    expires_at: Option<Instant>,
}

impl Chain {
    fn latest(&self) -> Option<&Arc<Stored>> {
        self.versions.last().and_then(|(_, o)| o.as_ref())
    }

    fn at(&self, rv: u64) -> Option<&Arc<Stored>> {
        self.versions
            .iter()
            .rev()
            .find(|(v, _)| *v <= rv)
            .and_then(|(_, o)| o.as_ref())
    }
}

/// The MVCC store. See the module docs.
pub(crate) struct Store {
    rv: u64,
    compacted: u64,
    objects: [BTreeMap<String, Chain>; 2],
    live: [usize; 2],
    log: VecDeque<Change>,
    expiry: BTreeSet<(Instant, String)>,
    ground_truth: Vec<(u64, GroundTruthVersion)>,
}

impl Store {
    pub fn new() -> Self {
        Self {
            rv: 1,
            compacted: 1,
            objects: [BTreeMap::new(), BTreeMap::new()],
            live: [0, 0],
            log: VecDeque::new(),
            expiry: BTreeSet::new(),
            ground_truth: Vec::new(),
        }
    }

    /// The current (latest) resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The compaction point: positions below it are gone.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    pub fn live(&self, resource: Resource) -> usize {
        self.live[resource.index()]
    }

    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    pub fn ground_truth_len(&self) -> usize {
        self.ground_truth.len()
    }

    /// Namespaces holding at least one live object.
    pub fn namespaces(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for map in &self.objects {
            for (k, chain) in map {
                if chain.latest().is_some()
                    && let Some((ns, _)) = k.split_once('/')
                    && !out.contains(ns)
                {
                    out.insert(ns.to_owned());
                }
            }
        }
        out
    }

    /// The latest version of `key`, if it exists.
    pub fn get(&self, resource: Resource, key: &str) -> Option<Arc<Stored>> {
        self.objects[resource.index()]
            .get(key)
            .and_then(Chain::latest)
            .cloned()
    }

    /// Atomically reads the current object, lets `decide` choose, and applies the decision at a
    /// new resourceVersion. Event writes (re)arm the TTL when `ttl` is given.
    pub fn write<F>(
        &mut self,
        resource: Resource,
        key: &str,
        now: Instant,
        ttl: Option<Duration>,
        decide: F,
    ) -> Result<WriteOutcome, ApiError>
    where
        F: FnOnce(Option<&Arc<Stored>>) -> Result<WriteOp, ApiError>,
    {
        let current = self.get(resource, key);
        match decide(current.as_ref())? {
            WriteOp::Noop => match current {
                Some(object) => Ok(WriteOutcome {
                    object,
                    change: None,
                }),
                None => Err(ApiError::bad_request("no-op write of a missing object")),
            },
            WriteOp::Put(object) => Ok(self.put(resource, key, current, object, now, ttl)),
            WriteOp::Delete => match current {
                Some(cur) => Ok(self.delete(resource, key, &cur)),
                None => Err(ApiError::bad_request("delete of a missing object")),
            },
        }
    }

    fn put(
        &mut self,
        resource: Resource,
        key: &str,
        current: Option<Arc<Stored>>,
        object: Object,
        now: Instant,
        ttl: Option<Duration>,
    ) -> WriteOutcome {
        self.rv += 1;
        let rv = self.rv;
        let stored = Arc::new(Stored::new(object, rv));
        let kind = if current.is_some() {
            ChangeType::Modified
        } else {
            ChangeType::Added
        };
        let chain = self.objects[resource.index()]
            .entry(key.to_owned())
            .or_default();
        chain.versions.push((rv, Some(stored.clone())));
        if current.is_none() {
            self.live[resource.index()] += 1;
        }
        if let Some(old) = chain.expires_at.take() {
            self.expiry.remove(&(old, key.to_owned()));
        }
        if let Some(ttl) = ttl {
            let at = now + ttl;
            chain.expires_at = Some(at);
            self.expiry.insert((at, key.to_owned()));
        }
        if resource == Resource::Events {
            let o = &stored.object;
            self.ground_truth.push((
                rv,
                GroundTruthVersion {
                    uid: o.uid().to_owned(),
                    resource_version: rv.to_string(),
                    namespace: o.namespace().to_owned(),
                    name: o.name().to_owned(),
                    stored_at: Timestamp::now(),
                },
            ));
        }
        self.log.push_back(Change {
            rv,
            resource,
            kind,
            object: stored.clone(),
            prev: current,
        });
        WriteOutcome {
            object: stored,
            change: Some(kind),
        }
    }

    fn delete(&mut self, resource: Resource, key: &str, current: &Arc<Stored>) -> WriteOutcome {
        self.rv += 1;
        let rv = self.rv;
        let gone = current.at_rv(rv);
        if let Some(chain) = self.objects[resource.index()].get_mut(key) {
            chain.versions.push((rv, None));
            if let Some(old) = chain.expires_at.take() {
                self.expiry.remove(&(old, key.to_owned()));
            }
        }
        self.live[resource.index()] -= 1;
        self.log.push_back(Change {
            rv,
            resource,
            kind: ChangeType::Deleted,
            object: gone.clone(),
            prev: Some(current.clone()),
        });
        WriteOutcome {
            object: gone,
            change: Some(ChangeType::Deleted),
        }
    }

    /// Deletes every Event whose TTL has passed; returns how many expired.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some((at, key)) = self.expiry.first().cloned() {
            if at > now {
                break;
            }
            self.expiry.pop_first();
            if let Some(chain) = self.objects[Resource::Events.index()].get_mut(&key) {
                chain.expires_at = None;
            }
            if let Some(cur) = self.get(Resource::Events, &key) {
                self.delete(Resource::Events, &key, &cur);
                n += 1;
            }
        }
        n
    }

    /// Drops history at or below `to` (capped at the current rv); returns the compaction point.
    pub fn compact(&mut self, to: u64) -> u64 {
        let to = to.min(self.rv);
        if to <= self.compacted {
            return self.compacted;
        }
        self.compacted = to;
        while self.log.front().is_some_and(|c| c.rv <= to) {
            self.log.pop_front();
        }
        for map in &mut self.objects {
            map.retain(|_, chain| {
                if let Some(i) = chain.versions.iter().rposition(|(v, _)| *v <= to) {
                    chain.versions.drain(..i);
                }
                if chain
                    .versions
                    .first()
                    .is_some_and(|(v, o)| *v <= to && o.is_none())
                {
                    chain.versions.remove(0);
                }
                !chain.versions.is_empty()
            });
        }
        to
    }

    /// Up to `max` changes after `cursor`, in order; `Compacted` if some are already gone.
    pub fn changes_after(&self, cursor: u64, max: usize) -> Result<Vec<Change>, Compacted> {
        if cursor < self.compacted {
            return Err(Compacted);
        }
        let start = self.log.partition_point(|c| c.rv <= cursor);
        Ok(self.log.range(start..).take(max).cloned().collect())
    }

    /// Every live object of `resource` (in `namespace`, if given) at the current rv.
    pub fn snapshot(&self, resource: Resource, namespace: Option<&str>) -> (u64, Vec<Arc<Stored>>) {
        let map = &self.objects[resource.index()];
        let items = match namespace {
            Some(ns) => {
                let prefix = format!("{ns}/");
                map.range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter_map(|(_, c)| c.latest().cloned())
                    .collect()
            }
            None => map.values().filter_map(|c| c.latest().cloned()).collect(),
        };
        (self.rv, items)
    }

    /// A page of the snapshot described by `q`.
    pub fn page(&self, resource: Resource, q: &PageQuery<'_>) -> Page {
        let map = &self.objects[resource.index()];
        let prefix = q.namespace.map(|ns| format!("{ns}/")).unwrap_or_default();
        let from = match q.start {
            Some(s) if s > prefix.as_str() => s,
            _ => prefix.as_str(),
        };
        let (at, keep) = (q.at, q.keep);
        let mut iter = map
            .range::<str, _>((Bound::Included(from), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, c)| c.at(at).map(|o| (k, o)))
            .filter(|(_, o)| keep(o));
        let limit = q.limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        for (_, o) in iter.by_ref() {
            items.push(o.clone());
            if items.len() >= limit {
                break;
            }
        }
        let mut next_key = None;
        let mut remaining = None;
        if items.len() >= limit
            && let Some((k, _)) = iter.next()
        {
            next_key = Some(k.clone());
            if q.count_remaining {
                remaining = Some(1 + iter.count() as u64);
            }
        }
        Page {
            items,
            next_key,
            remaining,
        }
    }

    /// Ground-truth versions with resourceVersion > `since` (all when `None`).
    pub fn ground_truth(&self, since: Option<u64>) -> Vec<GroundTruthVersion> {
        let start = since.map_or(0, |s| self.ground_truth.partition_point(|(rv, _)| *rv <= s));
        self.ground_truth[start..]
            .iter()
            .map(|(_, g)| g.clone())
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn lease(name: &str, holder: &str) -> Object {
        Object::Lease(Box::new(Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some(holder.into()),
                ..Default::default()
            }),
        }))
    }

    fn put(store: &mut Store, name: &str, holder: &str) -> u64 {
        let obj = lease(name, holder);
        store
            .write(
                Resource::Leases,
                &key("ns", name),
                Instant::now(),
                None,
                |_| Ok(WriteOp::Put(obj)),
            )
            .unwrap()
            .object
            .rv
    }

    #[test]
    fn snapshot_pages_read_the_version_chain() {
        let mut s = Store::new();
        put(&mut s, "a", "x");
        let snap = put(&mut s, "b", "x");
        put(&mut s, "a", "y");
        put(&mut s, "c", "x");
        let q = PageQuery {
            namespace: Some("ns"),
            start: None,
            at: snap,
            limit: None,
            keep: &|_| true,
            count_remaining: false,
        };
        let page = s.page(Resource::Leases, &q);
        let names: Vec<_> = page
            .items
            .iter()
            .map(|o| o.object.name().to_owned())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(page.items[0].rv, 2);
    }

    #[test]
    fn compaction_drops_log_and_keeps_the_state_at_the_point() {
        let mut s = Store::new();
        put(&mut s, "a", "x");
        let mid = put(&mut s, "a", "y");
        put(&mut s, "a", "z");
        s.compact(mid);
        assert_eq!(s.changes_after(mid - 1, 10).unwrap_err(), Compacted);
        assert_eq!(s.changes_after(mid, 10).unwrap().len(), 1);
        let q = PageQuery {
            namespace: None,
            start: None,
            at: mid,
            limit: None,
            keep: &|_| true,
            count_remaining: false,
        };
        let page = s.page(Resource::Leases, &q);
        assert_eq!(page.items[0].rv, mid);
    }
}
