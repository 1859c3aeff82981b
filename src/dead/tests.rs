use std::time::Duration;

use super::*;
use crate::store::{OpenOptions, SledStore};

struct Current(i64);

impl Guard for Current {
    fn is_current(&self) -> bool {
        true
    }
    fn epoch(&self) -> i64 {
        self.0
    }
}

fn handle(store: &Arc<SledStore>, epoch: i64) -> DeadHandle {
    DeadHandle::new(
        Arc::clone(store) as Arc<dyn EventStore>,
        Arc::new(Current(epoch)),
        IoPool::new("store", 1, Duration::from_secs(5)).unwrap(),
        Arc::new(Notify::new()),
    )
}

#[test]
fn a_term_that_ends_withdraws_its_own_handle_and_never_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SledStore::open(&OpenOptions {
            path: dir.path().join("store"),
            cache_capacity: 1 << 20,
            lock_timeout: Duration::from_secs(5),
        })
        .unwrap()
        .store,
    );
    let slot = DeadSlot::default();
    assert!(slot.current().is_none());
    let old = slot.publish(handle(&store, 1));
    let new = slot.publish(handle(&store, 2));
    // The old term's pipeline finishes stopping after the new one started.
    drop(old);
    let current = slot
        .current()
        .expect("the newer term's handle was withdrawn");
    assert_eq!(current.guard.epoch(), 2);
    drop(new);
    assert!(slot.current().is_none());
}

#[test]
fn a_replay_request_names_ids_or_all_but_not_both_nor_neither() {
    let ids = ReplayRequest {
        ids: vec!["a".into()],
        all: false,
    };
    assert_eq!(ids.selection(), Ok(Selection::Ids(vec!["a".into()])));
    let all: ReplayRequest = serde_json::from_str(r#"{"all": true}"#).unwrap();
    assert_eq!(all.selection(), Ok(Selection::All));
    assert!(ReplayRequest::default().selection().is_err());
    let both = ReplayRequest {
        ids: vec!["a".into()],
        all: true,
    };
    assert!(both.selection().is_err());
    assert!(serde_json::from_str::<ReplayRequest>(r#"{"id": ["a"]}"#).is_err());
}
