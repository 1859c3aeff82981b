use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use super::*;

struct TestGuard {
    epoch: i64,
    current: AtomicBool,
}

impl TestGuard {
    fn new(epoch: i64) -> Self {
        Self {
            epoch,
            current: AtomicBool::new(true),
        }
    }
}

impl Guard for TestGuard {
    fn is_current(&self) -> bool {
        self.current.load(Ordering::SeqCst)
    }
    fn epoch(&self) -> i64 {
        self.epoch
    }
}

fn options(dir: &std::path::Path) -> OpenOptions {
    OpenOptions {
        path: dir.join("store"),
        cache_capacity: 8 << 20,
        lock_timeout: Duration::from_millis(300),
    }
}

fn item(uid: &str, rv: &str) -> CaptureItem {
    CaptureItem {
        uid: uid.to_owned(),
        resource_version: rv.to_owned(),
        record: format!("{{\"uid\":\"{uid}\",\"rv\":\"{rv}\"}}").into_bytes(),
        listed: None,
    }
}

fn open_with_term(dir: &std::path::Path, guard: &TestGuard) -> SledStore {
    let store = SledStore::open(&options(dir)).unwrap().store;
    store.begin_term(guard).unwrap();
    store
}

#[test]
fn a_version_is_captured_once_and_a_repeated_occurrence_is_a_new_record() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    let first = store
        .capture(
            &[item("a", "10"), item("b", "11")],
            Some("11"),
            1_000,
            &guard,
        )
        .unwrap();
    assert_eq!((first.captured, first.duplicates), (2, 0));
    // A relist replays a@10 and b@11; a was updated (count++) to rv 12.
    let replay = store
        .capture(
            &[item("a", "10"), item("b", "11"), item("a", "12")],
            Some("12"),
            2_000,
            &guard,
        )
        .unwrap();
    assert_eq!((replay.captured, replay.duplicates), (1, 2));
    // An older version arriving late is a replay, not news.
    let late = store
        .capture(&[item("a", "10")], None, 3_000, &guard)
        .unwrap();
    assert_eq!((late.captured, late.duplicates), (0, 1));
    let meta = store.meta().unwrap();
    assert_eq!(meta.checkpoint.as_deref(), Some("12"));
    assert_eq!(meta.outbox_events, 3);
    let outbox = store.outbox_from(0, 100, u64::MAX).unwrap();
    let seqs: Vec<u64> = outbox.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![0, 1, 2]);
    assert_eq!(outbox[2].record, item("a", "12").record);
}

#[test]
fn versions_the_checkpoint_covers_need_no_dedupe_entry_and_are_still_deduped() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    // Watch events: the checkpoint written with them covers them. A version repeated inside
    // the transaction is still one record.
    let watched = store
        .capture(
            &[item("a", "10"), item("b", "11"), item("b", "11")],
            Some("11"),
            1_000,
            &guard,
        )
        .unwrap();
    assert_eq!((watched.captured, watched.duplicates), (2, 1));
    assert_eq!(store.seen_len(), 0, "covered versions keep no entry");
    // A relist page (no checkpoint yet): one entry each, so a restarted relist dedupes them.
    let page = store
        .capture(&[item("c", "12"), item("a", "13")], None, 2_000, &guard)
        .unwrap();
    assert_eq!((page.captured, page.duplicates), (2, 0));
    assert_eq!(store.seen_len(), 2);
    let again = store
        .capture(
            &[
                item("a", "10"),
                item("b", "11"),
                item("c", "12"),
                item("a", "13"),
            ],
            None,
            3_000,
            &guard,
        )
        .unwrap();
    assert_eq!((again.captured, again.duplicates), (0, 4));
    // The list ends: its resourceVersion covers the page, and maintenance drops the entries.
    store.capture(&[], Some("14"), 4_000, &guard).unwrap();
    assert_eq!(store.prune_seen(0, &guard).unwrap(), 2);
    assert_eq!(store.seen_len(), 0);
    let replay = store
        .capture(&[item("c", "12"), item("a", "13")], None, 5_000, &guard)
        .unwrap();
    assert_eq!((replay.captured, replay.duplicates), (0, 2));
    assert_eq!(store.meta().unwrap().outbox_events, 4);
}

#[test]
fn a_dedupe_entry_above_the_checkpoint_survives_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    store
        .capture(&[item("a", "5"), item("b", "9")], None, 1_000, &guard)
        .unwrap();
    store.capture(&[], Some("6"), 1_000, &guard).unwrap();
    assert_eq!(store.prune_seen(0, &guard).unwrap(), 1, "a@5 is covered");
    assert_eq!(store.seen_len(), 1, "b@9 is above the checkpoint");
    let replay = store
        .capture(&[item("b", "9")], None, 2_000, &guard)
        .unwrap();
    assert_eq!((replay.captured, replay.duplicates), (0, 1));
}

#[test]
fn forgetting_the_checkpoint_captures_lower_versions_of_a_restored_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    store
        .capture(&[item("a", "900")], Some("900"), 1_000, &guard)
        .unwrap();
    // Without forgetting, a restored server's lower versions would read as replays.
    let stale = store
        .capture(&[item("x", "40")], None, 2_000, &guard)
        .unwrap();
    assert_eq!((stale.captured, stale.duplicates), (0, 1));
    store.forget_checkpoint(&guard).unwrap();
    assert_eq!(store.meta().unwrap().checkpoint, None);
    let restored = store
        .capture(
            &[item("x", "40"), item("y", "41")],
            Some("50"),
            3_000,
            &guard,
        )
        .unwrap();
    assert_eq!((restored.captured, restored.duplicates), (2, 0));
    guard.current.store(false, Ordering::SeqCst);
    assert!(matches!(
        store.forget_checkpoint(&guard),
        Err(Error::Fenced)
    ));
    assert_eq!(store.meta().unwrap().checkpoint.as_deref(), Some("50"));
}

/// An item at `key` of the list at `list` (one run per list resourceVersion).
fn listed(uid: &str, rv: &str, list: &str, key: &str) -> CaptureItem {
    CaptureItem {
        listed: Some(ListPosition {
            list_resource_version: list.to_owned(),
            list_run: list.parse().unwrap(),
            key: key.to_owned(),
        }),
        ..item(uid, rv)
    }
}

/// The records in the outbox, as written by [`item`].
fn outbox_records(store: &SledStore) -> Vec<String> {
    store
        .outbox_from(0, usize::MAX, u64::MAX)
        .unwrap()
        .into_iter()
        .map(|entry| String::from_utf8(entry.record).unwrap())
        .collect()
}

#[test]
fn a_first_list_keeps_no_dedupe_entry_and_listing_again_after_a_crash_drops_what_it_captured() {
    let dir = tempfile::tempdir().unwrap();
    {
        let guard = TestGuard::new(1);
        let store = open_with_term(dir.path(), &guard);
        // The list at 100 gets through ns/c, then the leader dies.
        for page in [
            vec![
                listed("a", "10", "100", "ns/a"),
                listed("b", "20", "100", "ns/b"),
            ],
            vec![listed("c", "30", "100", "ns/c")],
        ] {
            let outcome = store.capture(&page, None, 1_000, &guard).unwrap();
            assert_eq!(
                (outcome.captured, outcome.duplicates),
                (page.len() as u64, 0)
            );
        }
        assert_eq!(store.seen_len(), 0, "a first list keeps no entry per event");
    }
    let guard = TestGuard::new(2);
    let store = open_with_term(dir.path(), &guard);
    // The next leader lists at 120: b was written after 100, d was never reached, e is new.
    let again = store
        .capture(
            &[
                listed("a", "10", "120", "ns/a"),
                listed("b", "110", "120", "ns/b"),
                listed("c", "30", "120", "ns/c"),
                listed("d", "40", "120", "ns/d"),
                listed("e", "115", "120", "ns/e"),
            ],
            Some("120"),
            2_000,
            &guard,
        )
        .unwrap();
    assert_eq!((again.captured, again.duplicates), (3, 2));
    assert!(!again.unordered_list);
    assert_eq!(
        outbox_records(&store),
        [
            r#"{"uid":"a","rv":"10"}"#,
            r#"{"uid":"b","rv":"20"}"#,
            r#"{"uid":"c","rv":"30"}"#,
            r#"{"uid":"b","rv":"110"}"#,
            r#"{"uid":"d","rv":"40"}"#,
            r#"{"uid":"e","rv":"115"}"#,
        ]
    );
    assert_eq!(store.seen_len(), 0);
    // The checkpoint replaced the marks; a later relist is deduped by it.
    let relist = store
        .capture(
            &[
                listed("d", "40", "130", "ns/d"),
                listed("f", "125", "130", "ns/f"),
            ],
            None,
            3_000,
            &guard,
        )
        .unwrap();
    assert_eq!((relist.captured, relist.duplicates), (1, 1));
    assert_eq!(
        store.seen_len(),
        1,
        "above the checkpoint: an entry, as before"
    );
}

#[test]
fn a_mark_does_not_cover_what_the_crashed_list_never_reached_even_across_two_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let capture = |epoch: i64, items: &[CaptureItem]| {
        let guard = TestGuard::new(epoch);
        let store = open_with_term(dir.path(), &guard);
        let outcome = store.capture(items, None, 1_000, &guard).unwrap();
        (outcome.captured, outcome.duplicates)
    };
    // List 100 reaches ns/m; list 200 reaches only ns/c before its leader dies too.
    assert_eq!(
        capture(
            1,
            &[
                listed("a", "10", "100", "ns/a"),
                listed("m", "50", "100", "ns/m")
            ]
        ),
        (2, 0)
    );
    assert_eq!(capture(2, &[listed("a", "10", "200", "ns/a")]), (0, 1));
    assert_eq!(capture(3, &[listed("c", "150", "200", "ns/c")]), (1, 0));
    // List 300: m is still covered by list 100's mark, c by list 200's; n and c's newer version
    // are not.
    assert_eq!(
        capture(
            4,
            &[
                listed("a", "10", "300", "ns/a"),
                listed("c", "150", "300", "ns/c"),
                listed("c2", "250", "300", "ns/d"),
                listed("m", "50", "300", "ns/m"),
                listed("n", "60", "300", "ns/n"),
            ]
        ),
        (2, 3)
    );
}

#[test]
fn a_list_out_of_key_order_falls_back_to_dedupe_entries_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let guard = TestGuard::new(1);
        let store = open_with_term(dir.path(), &guard);
        let first = store
            .capture(&[listed("m", "10", "100", "ns/m")], None, 1_000, &guard)
            .unwrap();
        assert!(!first.unordered_list);
        let out_of_order = store
            .capture(
                &[
                    listed("c", "20", "100", "ns/c"),
                    listed("z", "30", "100", "ns/z"),
                ],
                None,
                1_000,
                &guard,
            )
            .unwrap();
        assert_eq!(out_of_order.captured, 2);
        assert!(
            out_of_order.unordered_list,
            "reported when the order breaks"
        );
        assert_eq!(store.seen_len(), 2, "the rest of the list keeps entries");
        let later = store
            .capture(&[listed("y", "40", "100", "ns/y")], None, 1_000, &guard)
            .unwrap();
        assert!(!later.unordered_list, "reported once");
        assert_eq!(store.seen_len(), 3);
    }
    let guard = TestGuard::new(2);
    let store = open_with_term(dir.path(), &guard);
    let again = store
        .capture(
            &[
                listed("c", "20", "120", "ns/c"),
                listed("m", "10", "120", "ns/m"),
                listed("y", "40", "120", "ns/y"),
                listed("z", "30", "120", "ns/z"),
            ],
            Some("120"),
            2_000,
            &guard,
        )
        .unwrap();
    // m was covered only by the poisoned mark: captured again (a duplicate, never a loss).
    assert_eq!((again.captured, again.duplicates), (1, 3));
}

#[test]
fn with_a_checkpoint_listed_items_above_it_keep_dedupe_entries() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    store
        .capture(&[item("a", "50")], Some("50"), 1_000, &guard)
        .unwrap();
    let relist = store
        .capture(
            &[
                listed("a", "50", "100", "ns/a"),
                listed("b", "60", "100", "ns/b"),
            ],
            None,
            2_000,
            &guard,
        )
        .unwrap();
    assert_eq!((relist.captured, relist.duplicates), (1, 1));
    assert_eq!(store.seen_len(), 1);
}

#[test]
fn a_stale_fence_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    guard.current.store(false, Ordering::SeqCst);
    let err = store
        .capture(&[item("a", "1")], Some("1"), 0, &guard)
        .unwrap_err();
    assert!(matches!(err, Error::Fenced), "{err}");
    let meta = store.meta().unwrap();
    assert_eq!(meta.checkpoint, None);
    assert_eq!(meta.outbox_events, 0);
    assert_eq!(store.seen_len(), 0);
}

#[test]
fn a_database_a_newer_term_wrote_refuses_an_older_term() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with_term(dir.path(), &TestGuard::new(4));
    assert!(matches!(
        store.begin_term(&TestGuard::new(3)),
        Err(Error::StaleEpoch { stored: 4, ours: 3 })
    ));
}

fn take(dir: &std::path::Path, guard: &TestGuard) -> Handover {
    take_over(&options(dir), &"test".into(), guard, &|| false).unwrap()
}

#[test]
fn another_holders_term_with_the_same_epoch_is_refused_and_a_running_term_sees_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = take_over(
        &options(dir.path()),
        &"a".into(),
        &TestGuard::new(5),
        &|| false,
    )
    .unwrap();
    assert_eq!(first.generation, 1);
    drop(first.store);
    // The same epoch from another holder (a second Lease that also counted to 5): the two terms
    // cannot be ordered, so the later one is refused and must advance its epoch.
    let err = take_over(
        &options(dir.path()),
        &"b".into(),
        &TestGuard::new(5),
        &|| false,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::StaleEpoch { stored: 5, ours: 5 }),
        "{err}"
    );
    // The same holder restarting its pipeline within its term takes over.
    let again = take_over(
        &options(dir.path()),
        &"a".into(),
        &TestGuard::new(5),
        &|| false,
    )
    .unwrap();
    assert_eq!(again.generation, 2);
    let root = options(dir.path()).path;
    assert_eq!(terms::newer_term(&root, 2).unwrap(), None);
    drop(again.store);
    let next = take_over(
        &options(dir.path()),
        &"b".into(),
        &TestGuard::new(6),
        &|| false,
    )
    .unwrap();
    assert_eq!(
        terms::newer_term(&root, 2).unwrap().as_deref(),
        Some(next.dir.as_path()),
        "a term that ran at generation 2 must see that a newer one began"
    );
}

#[test]
fn the_marker_records_the_lease_a_term_was_won_on() {
    let dir = tempfile::tempdir().unwrap();
    let owner = TermOwner {
        holder: "a".into(),
        lease_namespace: "kevents".into(),
        lease_name: "kevents".into(),
        lease_uid: "uid-1".into(),
    };
    let taken = take_over(&options(dir.path()), &owner, &TestGuard::new(1), &|| false).unwrap();
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(taken.dir.join(terms::BEGUN_MARKER)).unwrap())
            .unwrap();
    assert_eq!(marker["lease_uid"], "uid-1");
    assert_eq!(marker["lease_name"], "kevents");
    assert_eq!(marker["lease_namespace"], "kevents");
    assert_eq!(marker["holder"], "a");
    assert_eq!(marker["epoch"], 1);
}

fn batch(first: u64, last: u64, epoch: i64) -> BatchRecord {
    BatchRecord {
        id: BatchRecord::id_for("s", first, last),
        first,
        last,
        events: last - first + 1,
        bytes: 10,
        epoch,
        created_ms: 0,
    }
}

/// Every file under `dir` with its content.
fn contents(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = walk(dir)
        .into_iter()
        .map(|path| {
            let content = std::fs::read(&path).unwrap();
            (path, content)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_new_term_takes_over_a_copy_while_the_old_term_still_has_its_store_open() {
    let dir = tempfile::tempdir().unwrap();
    let old_guard = TestGuard::new(1);
    let old = take(dir.path(), &old_guard);
    old.store
        .capture(
            &[item("a", "10"), item("b", "11")],
            Some("11"),
            0,
            &old_guard,
        )
        .unwrap();
    old.store.record_batch(&batch(0, 0, 1), &old_guard).unwrap();

    // The old store stays open (a paused process on another node), and a new term begins.
    let new_guard = TestGuard::new(2);
    let new = take(dir.path(), &new_guard);
    assert_eq!(new.source.as_deref(), Some(old.dir.as_path()));
    assert_ne!(new.dir, old.dir);
    let meta = new.store.meta().unwrap();
    assert_eq!(
        (meta.checkpoint.as_deref(), meta.outbox_events, meta.epoch),
        (Some("11"), 2, 2)
    );
    assert_eq!(new.store.inflight_batches().unwrap(), vec![batch(0, 0, 1)]);
    let new_files = contents(&new.dir);

    // The old process wakes and writes (its fence check passed before the pause): only its own
    // directory changes, and the next term takes over the newer one.
    old.store
        .capture(&[item("late", "12")], Some("12"), 0, &old_guard)
        .unwrap();
    old.store.ack_batch(&batch(0, 0, 1), &old_guard).unwrap();
    old.store.flush().unwrap();
    assert_eq!(
        contents(&new.dir),
        new_files,
        "a late write reached the new term"
    );
    drop(new);
    let next = take(dir.path(), &TestGuard::new(3));
    let meta = next.store.meta().unwrap();
    assert_eq!(
        (meta.checkpoint.as_deref(), meta.outbox_events),
        (Some("11"), 2)
    );
    assert_eq!(next.store.inflight_batches().unwrap().len(), 1);
}

#[test]
fn an_older_term_cannot_begin_once_a_newer_one_has() {
    let dir = tempfile::tempdir().unwrap();
    drop(take(dir.path(), &TestGuard::new(5)));
    let err = take_over(
        &options(dir.path()),
        &"late".into(),
        &TestGuard::new(4),
        &|| false,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::StaleEpoch { stored: 5, ours: 4 }),
        "{err}"
    );
}

#[test]
fn a_term_that_never_began_is_not_taken_over_and_older_terms_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let first_guard = TestGuard::new(1);
    let first = take(dir.path(), &first_guard);
    first
        .store
        .capture(&[item("a", "10")], Some("10"), 0, &first_guard)
        .unwrap();
    let first_dir = first.dir.clone();
    drop(first);
    // A term that lost its lease while copying gives up and leaves nothing behind …
    let lost = TestGuard::new(2);
    lost.current.store(false, Ordering::SeqCst);
    let err = take_over(&options(dir.path()), &"lost".into(), &lost, &|| false).unwrap_err();
    assert!(matches!(err, Error::Fenced), "{err}");
    // … and one killed between its copy and its BEGUN marker leaves a directory nobody takes.
    let terms = dir.path().join("store").join(terms::TERMS_DIR);
    let killed = terms.join("g0000000002-e2-0badc0de");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::write(killed.join("db"), b"not a database").unwrap();
    let third = take(dir.path(), &TestGuard::new(3));
    assert_eq!(third.source.as_deref(), Some(first_dir.as_path()));
    assert_eq!(
        third.store.meta().unwrap().checkpoint.as_deref(),
        Some("10")
    );
    let third_dir = third.dir.clone();
    drop(third);
    let fourth = take(dir.path(), &TestGuard::new(4));
    assert_eq!(fourth.source.as_deref(), Some(third_dir.as_path()));
    assert!(
        !first_dir.exists(),
        "a term older than the source is removed"
    );
    assert!(
        third_dir.exists(),
        "the source is kept until the next hand-over"
    );
    let names: Vec<_> = std::fs::read_dir(&terms)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_source_written_during_the_copy_is_copied_again_until_two_reads_agree() {
    let dir = tempfile::tempdir().unwrap();
    let old_guard = TestGuard::new(1);
    let old = take(dir.path(), &old_guard);
    old.store
        .capture(&[item("a", "10")], Some("10"), 0, &old_guard)
        .unwrap();
    // A process of the old term keeps writing while the copies are made (before every other
    // file the copy reads, three times: across the first copy and its check).
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let written = std::sync::atomic::AtomicUsize::new(0);
    let new = take_over(
        &options(dir.path()),
        &"b".into(),
        &TestGuard::new(2),
        &|| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            // Every seventh call (calls come per file and per chunk): spread over the copy
            // and the read that checks it.
            if call % 7 == 6 && written.load(Ordering::SeqCst) < 3 {
                let n = 11 + written.fetch_add(1, Ordering::SeqCst);
                old.store
                    .capture(
                        &[item(&format!("late{n}"), &n.to_string())],
                        Some(&n.to_string()),
                        0,
                        &old_guard,
                    )
                    .unwrap();
            }
            false
        },
    )
    .unwrap();
    assert!(new.attempts >= 2, "copied {} times", new.attempts);
    let meta = new.store.meta().unwrap();
    assert_eq!(
        (meta.checkpoint.as_deref(), meta.outbox_events),
        (Some("13"), 4),
        "the copy is the source as it was after all three writes"
    );
}

#[test]
fn a_source_that_never_stops_changing_is_reported_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let old_guard = TestGuard::new(1);
    let old = take(dir.path(), &old_guard);
    let writes = std::sync::atomic::AtomicU64::new(0);
    let err = take_over(
        &options(dir.path()),
        &"b".into(),
        &TestGuard::new(2),
        &|| {
            let n = writes.fetch_add(1, Ordering::SeqCst);
            old.store
                .capture(
                    &[item(&format!("u{n}"), &format!("{}", n + 1))],
                    None,
                    0,
                    &old_guard,
                )
                .unwrap();
            false
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::SourceUnsettled { .. }), "{err}");
    assert_eq!(
        terms::current_dir(&dir.path().join("store")).unwrap(),
        Some(old.dir.clone())
    );
}

#[test]
fn a_store_from_before_term_directories_is_taken_over_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let guard = TestGuard::new(1);
        let legacy = open_with_term(dir.path(), &guard);
        legacy
            .capture(&[item("a", "10")], Some("10"), 0, &guard)
            .unwrap();
        legacy.record_batch(&batch(0, 0, 1), &guard).unwrap();
    }
    let root = dir.path().join("store");
    let first = take(dir.path(), &TestGuard::new(2));
    assert_eq!(first.source.as_deref(), Some(root.as_path()));
    assert_eq!(
        first.store.meta().unwrap().checkpoint.as_deref(),
        Some("10")
    );
    assert_eq!(first.store.inflight_batches().unwrap().len(), 1);
    drop(first);
    drop(take(dir.path(), &TestGuard::new(3)));
    assert!(
        !root.join("db").exists(),
        "the old layout's files are removed"
    );
    assert!(!root.join("conf").exists());
}

#[test]
fn a_batch_leaves_the_outbox_only_when_acknowledged_and_survives_a_restart_until_then() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let batch = {
        let store = open_with_term(dir.path(), &guard);
        let items: Vec<CaptureItem> = (0..10).map(|i| item(&format!("u{i}"), "5")).collect();
        store.capture(&items, Some("5"), 0, &guard).unwrap();
        let entries = store.outbox_from(0, 4, u64::MAX).unwrap();
        assert_eq!(entries.len(), 4);
        let meta = store.meta().unwrap();
        let batch = BatchRecord {
            id: BatchRecord::id_for(&meta.store_id, 0, 3),
            first: 0,
            last: 3,
            events: 4,
            bytes: 0,
            epoch: 1,
            created_ms: 0,
        };
        store.record_batch(&batch, &guard).unwrap();
        batch
    };
    // The process died before the sink confirmed: the batch and its records are still there.
    let next = TestGuard::new(2);
    let store = open_with_term(dir.path(), &next);
    assert_eq!(store.inflight_batches().unwrap(), vec![batch.clone()]);
    assert_eq!(store.meta().unwrap().outbox_events, 10);
    store.ack_batch(&batch, &next).unwrap();
    let meta = store.meta().unwrap();
    assert_eq!(meta.outbox_events, 6);
    assert!(store.inflight_batches().unwrap().is_empty());
    assert_eq!(store.outbox_from(0, 100, u64::MAX).unwrap()[0].seq, 4);
    assert_eq!(meta.checkpoint.as_deref(), Some("5"));
}

#[test]
fn outbox_reads_respect_the_byte_limit_but_always_return_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    let items: Vec<CaptureItem> = (0..5).map(|i| item(&format!("u{i}"), "1")).collect();
    store.capture(&items, None, 0, &guard).unwrap();
    let size = items[0].record.len() as u64 + 1;
    assert_eq!(store.outbox_from(0, 100, size * 2).unwrap().len(), 2);
    assert_eq!(store.outbox_from(0, 100, 1).unwrap().len(), 1);
    assert_eq!(store.outbox_from(3, 100, u64::MAX).unwrap().len(), 2);
    // The span is what a read would return, without the records.
    for (from, max_events, max_bytes) in [
        (0, 100, size * 2),
        (0, 100, 1),
        (3, 100, u64::MAX),
        (1, 3, u64::MAX),
        (9, 5, u64::MAX),
    ] {
        let read = store.outbox_from(from, max_events, max_bytes).unwrap();
        let span = store.outbox_span(from, max_events, max_bytes).unwrap();
        assert_eq!(span.events, read.len() as u64);
        assert_eq!(
            span.bytes,
            read.iter().map(|e| e.record.len() as u64 + 1).sum::<u64>()
        );
        if let (Some(first), Some(last)) = (read.first(), read.last()) {
            assert_eq!((span.first, span.last), (first.seq, last.seq));
            let (payload, events) = store.outbox_payload(span.first, span.last, 0).unwrap();
            assert_eq!(events, span.events);
            let expected: Vec<u8> = read
                .iter()
                .flat_map(|e| [e.record.as_slice(), b"\n"].concat())
                .collect();
            assert_eq!(payload, expected);
        }
    }
}

#[test]
fn a_rejected_batch_moves_to_dead_with_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    store
        .capture(&[item("a", "1"), item("b", "2")], None, 0, &guard)
        .unwrap();
    let batch = BatchRecord {
        id: "x".into(),
        first: 0,
        last: 1,
        events: 2,
        bytes: 0,
        epoch: 1,
        created_ms: 0,
    };
    store.record_batch(&batch, &guard).unwrap();
    store.dead_batch(&batch, "bad mapping", 5, &guard).unwrap();
    let dead = store.dead_batches().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "bad mapping");
    assert_eq!(dead[0].payload.lines().count(), 2);
    let meta = store.meta().unwrap();
    assert_eq!((meta.outbox_events, meta.dead_events), (0, 2));
    assert!(store.inflight_batches().unwrap().is_empty());
}

#[test]
fn pruning_forgets_only_uids_not_seen_since_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    store
        .capture(
            &[item("old", "1"), item("renewed", "2")],
            None,
            1_000,
            &guard,
        )
        .unwrap();
    store
        .capture(&[item("renewed", "3")], None, 9_000, &guard)
        .unwrap();
    assert_eq!(store.prune_seen(5_000, &guard).unwrap(), 1);
    assert_eq!(store.seen_len(), 1);
    // "renewed" is still deduped, "old" would be captured again.
    let again = store
        .capture(
            &[item("renewed", "3"), item("old", "1")],
            None,
            10_000,
            &guard,
        )
        .unwrap();
    assert_eq!((again.captured, again.duplicates), (1, 1));
}

#[test]
fn a_locked_store_is_retried_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    let first = SledStore::open(&options(dir.path())).unwrap().store;
    let err = SledStore::open(&options(dir.path())).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match SledStore::open(&options(dir.path())) {
            Ok(_) => break,
            Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {}
            Err(other) => panic!("{other}"),
        }
    }
}

#[test]
fn a_newer_format_store_is_quarantined_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(&options(dir.path())).unwrap().store;
        store
            .set_schema_version_for_test(SCHEMA_VERSION + 1)
            .unwrap();
    }
    let opened = SledStore::open(&options(dir.path())).unwrap();
    let (moved_to, reason) = opened.quarantined.expect("quarantined");
    assert!(reason.contains("newer"), "{reason}");
    assert!(moved_to.exists(), "the old store is kept");
    assert_eq!(opened.store.meta().unwrap().outbox_events, 0);
}

#[test]
fn a_corrupt_store_is_quarantined_and_a_fresh_one_starts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let guard = TestGuard::new(1);
        let store = open_with_term(dir.path(), &guard);
        store
            .capture(&[item("a", "1")], Some("1"), 0, &guard)
            .unwrap();
    }
    // Overwrite every file of the store with garbage.
    for entry in walk(&dir.path().join("store")) {
        std::fs::write(&entry, vec![0xA5u8; 4096]).unwrap();
    }
    let opened = SledStore::open(&options(dir.path())).unwrap();
    assert!(
        opened.quarantined.is_some(),
        "a corrupt store must be moved aside"
    );
    assert_eq!(opened.store.meta().unwrap().checkpoint, None);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Captures `n` records (uids `{prefix}0..`) and records them as one batch, ready to die.
fn recorded_batch(store: &SledStore, guard: &TestGuard, prefix: &str, n: u64) -> BatchRecord {
    let first = store.meta().unwrap().next_seq;
    let items: Vec<CaptureItem> = (0..n)
        .map(|i| item(&format!("{prefix}{i}"), &(first + i + 1).to_string()))
        .collect();
    store.capture(&items, None, 0, guard).unwrap();
    let batch = BatchRecord {
        id: BatchRecord::id_for("s", first, first + n - 1),
        first,
        last: first + n - 1,
        events: n,
        bytes: 0,
        epoch: guard.epoch,
        created_ms: 0,
    };
    store.record_batch(&batch, guard).unwrap();
    batch
}

/// The dead tree's own totals, to hold the counters against.
fn dead_totals(store: &SledStore) -> (u64, u64) {
    store
        .dead_batches()
        .unwrap()
        .iter()
        .fold((0, 0), |(e, b), d| (e + d.events(), b + d.bytes()))
}

#[test]
fn a_full_dead_tree_drops_its_oldest_batches_and_keeps_the_counters_exact() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    let one = recorded_batch(&store, &guard, "a", 3);
    assert!(
        store
            .dead_batch(&one, "first reason", 10, &guard)
            .unwrap()
            .is_empty()
    );
    let size = store.meta().unwrap().dead_bytes;
    assert!(size > 0);
    // Room for two batches of this size, not three.
    store.set_max_dead_bytes(size * 2 + size / 2);
    let two = recorded_batch(&store, &guard, "b", 3);
    assert!(
        store
            .dead_batch(&two, "second reason", 20, &guard)
            .unwrap()
            .is_empty()
    );
    let three = recorded_batch(&store, &guard, "c", 3);
    let dropped = store
        .dead_batch(&three, "third reason", 30, &guard)
        .unwrap();
    assert_eq!(
        dropped,
        vec![DroppedDead {
            id: one.id.clone(),
            events: 3,
            bytes: size,
            reason: "first reason".into(),
            dead_ms: 10,
        }]
    );
    let ids: Vec<String> = store
        .dead_batches()
        .unwrap()
        .into_iter()
        .map(|d| d.batch.id)
        .collect();
    assert_eq!(ids, vec![two.id.clone(), three.id.clone()]);
    let meta = store.meta().unwrap();
    assert_eq!((meta.dead_events, meta.dead_bytes), dead_totals(&store));
    assert_eq!((meta.dead_events, meta.dead_bytes), (6, size * 2));
    assert_eq!((meta.outbox_events, meta.outbox_bytes), (0, 0));
}

#[test]
fn a_dead_batch_larger_than_the_cap_is_kept_and_everything_older_goes() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    for (prefix, n) in [("a", 1), ("b", 1)] {
        let batch = recorded_batch(&store, &guard, prefix, n);
        store.dead_batch(&batch, "small", 0, &guard).unwrap();
    }
    store.set_max_dead_bytes(1);
    let big = recorded_batch(&store, &guard, "c", 5);
    let dropped = store.dead_batch(&big, "big", 0, &guard).unwrap();
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    let dead = store.dead_batches().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].batch.id, big.id);
    let meta = store.meta().unwrap();
    assert_eq!((meta.dead_events, meta.dead_bytes), dead_totals(&store));
    assert_eq!(meta.dead_events, 5);
    assert!(meta.dead_bytes > 1, "the newest batch is never dropped");
}

#[test]
fn a_replayed_batch_goes_back_to_the_end_of_the_outbox_once_with_new_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    let dead = recorded_batch(&store, &guard, "a", 2);
    store.dead_batch(&dead, "bad mapping", 5, &guard).unwrap();
    let dead_payload = store.dead_batches().unwrap()[0].payload.clone();
    // Captured after the batch died: the replayed records come after these.
    store
        .capture(&[item("later", "100")], None, 0, &guard)
        .unwrap();
    let before = store.meta().unwrap();
    let outcome = store
        .replay_dead(&[dead.id.clone(), "nope".into(), dead.id.clone()], &guard)
        .unwrap();
    assert_eq!(outcome.unknown, vec!["nope".to_owned()]);
    assert_eq!(outcome.replayed.len(), 1);
    let replayed = &outcome.replayed[0];
    assert_eq!(replayed.id, dead.id);
    assert_eq!(replayed.events, 2);
    assert_eq!(replayed.seqs, before.next_seq..before.next_seq + 2);
    assert!(replayed.seqs.start > dead.last, "new sequence numbers");
    let outbox = store.outbox_from(0, 100, u64::MAX).unwrap();
    let seqs: Vec<u64> = outbox.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![2, 3, 4]);
    let (payload, events) = store.outbox_payload(3, 4, 0).unwrap();
    assert_eq!(events, 2);
    assert_eq!(String::from_utf8(payload).unwrap(), dead_payload);
    let meta = store.meta().unwrap();
    assert_eq!((meta.dead_events, meta.dead_bytes), (0, 0));
    assert_eq!(meta.next_seq, 5);
    assert_eq!(meta.outbox_events, 3);
    assert_eq!(
        meta.outbox_bytes,
        before.outbox_bytes + dead_payload.len() as u64 - 2,
        "records without their newlines, as capture counts them"
    );
    assert!(store.dead_batches().unwrap().is_empty());
    // Once: asking again moves nothing.
    let again = store
        .replay_dead(std::slice::from_ref(&dead.id), &guard)
        .unwrap();
    assert!(again.replayed.is_empty());
    assert_eq!(again.unknown, vec![dead.id.clone()]);
    assert_eq!(store.meta().unwrap().outbox_events, 3);
    // Not through the dedupe: the same versions captured again are still duplicates, and the
    // replay left no dedupe entries of its own.
    let seen = store.seen_len();
    let recapture = store
        .capture(&[item("a0", "1"), item("a1", "2")], None, 0, &guard)
        .unwrap();
    assert_eq!((recapture.captured, recapture.duplicates), (0, 2));
    assert_eq!(store.seen_len(), seen);
}

#[test]
fn a_stale_fence_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    let dead = recorded_batch(&store, &guard, "a", 2);
    store.dead_batch(&dead, "bad", 5, &guard).unwrap();
    let before = store.meta().unwrap();
    guard.current.store(false, Ordering::SeqCst);
    let err = store
        .replay_dead(std::slice::from_ref(&dead.id), &guard)
        .unwrap_err();
    assert!(matches!(err, Error::Fenced), "{err}");
    assert_eq!(store.meta().unwrap(), before);
    assert_eq!(store.dead_batches().unwrap().len(), 1);
}

#[test]
fn a_store_from_before_the_dead_counters_is_counted_when_a_term_begins() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    let dead = recorded_batch(&store, &guard, "a", 3);
    store.dead_batch(&dead, "bad", 5, &guard).unwrap();
    let counted = store.meta().unwrap();
    // What an older release left: a cumulative event count and no byte count.
    store.set_dead_counters_as_before_for_test(99).unwrap();
    assert_ne!(store.meta().unwrap(), counted);
    store.begin_term(&TestGuard::new(2)).unwrap();
    let meta = store.meta().unwrap();
    assert_eq!(
        (meta.dead_events, meta.dead_bytes),
        (counted.dead_events, counted.dead_bytes)
    );
}

#[test]
fn an_inspection_of_a_store_held_open_reports_it_locked_and_reads_a_closed_one() {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestGuard::new(1);
    let store = open_with_term(dir.path(), &guard);
    let dead = recorded_batch(&store, &guard, "a", 1);
    store.dead_batch(&dead, "bad", 5, &guard).unwrap();
    let err = SledStore::open_existing(&options(dir.path())).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(store);
    // sled's threads let go of the lock shortly after the drop.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let inspected = loop {
        match SledStore::open_existing(&options(dir.path())) {
            Ok(store) => break store,
            Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {}
            Err(other) => panic!("{other}"),
        }
    };
    assert_eq!(inspected.dead_batches().unwrap().len(), 1);
    let missing = SledStore::open_existing(&options(&dir.path().join("nothing"))).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");
    assert!(!dir.path().join("nothing").exists(), "nothing created");
}
