use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use super::*;
use crate::{
    sink::{self, ConfirmFuture, SendFuture},
    store::{CaptureItem, OpenOptions, SledStore},
};

struct TestGuard {
    current: AtomicBool,
}

impl Guard for TestGuard {
    fn is_current(&self) -> bool {
        self.current.load(Ordering::SeqCst)
    }
    fn epoch(&self) -> i64 {
        1
    }
}

/// A sink that answers from a script, then succeeds; records every attempt.
#[derive(Default)]
struct ScriptedSink {
    script: Mutex<VecDeque<Option<bool>>>,
    attempts: Mutex<Vec<OutgoingBatch>>,
    delivered: Mutex<Vec<OutgoingBatch>>,
}

impl ScriptedSink {
    /// `Some(true)`: retriable error, `Some(false)`: permanent error, `None`: success.
    fn with(script: &[Option<bool>]) -> Self {
        Self {
            script: Mutex::new(script.iter().copied().collect()),
            ..Self::default()
        }
    }
}

impl Sink for ScriptedSink {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn send<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        Box::pin(async move {
            self.attempts.lock().unwrap().push(batch.clone());
            match self.script.lock().unwrap().pop_front().flatten() {
                Some(true) => Err(sink::Error::Retriable {
                    message: "503".into(),
                    retry_after: None,
                    source: None,
                }),
                Some(false) => Err(sink::Error::Permanent {
                    message: "bad mapping".into(),
                    source: None,
                }),
                None => {
                    self.delivered.lock().unwrap().push(batch.clone());
                    Ok(Receipt::Delivered)
                }
            }
        })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SledStore>,
    guard: Arc<TestGuard>,
}

fn fixture(records: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&OpenOptions {
        path: dir.path().join("store"),
        cache_capacity: 8 << 20,
        lock_timeout: Duration::from_secs(1),
    })
    .unwrap()
    .store;
    let guard = Arc::new(TestGuard {
        current: AtomicBool::new(true),
    });
    store.begin_term(guard.as_ref()).unwrap();
    let items: Vec<CaptureItem> = (0..records)
        .map(|i| CaptureItem {
            uid: format!("u{i}"),
            resource_version: "1".into(),
            record: format!("{{\"n\":{i}}}").into_bytes(),
            listed: None,
        })
        .collect();
    store.capture(&items, Some("1"), 0, guard.as_ref()).unwrap();
    Fixture {
        _dir: dir,
        store: Arc::new(store),
        guard,
    }
}

fn shipper(fx: &Fixture, sink: Arc<dyn Sink>, max_events: usize) -> Shipper {
    Shipper {
        store: fx.store.clone(),
        io: crate::blocking::IoPool::new("store", 2, Duration::from_secs(30)).unwrap(),
        sink,
        guard: fx.guard.clone(),
        options: ShipperOptions {
            max_events,
            max_bytes: 1 << 20,
            max_age: Duration::from_millis(20),
            retry_initial: Duration::from_millis(5),
            retry_max: Duration::from_millis(20),
            max_awaiting: 4,
        },
        metrics: Metrics::new().unwrap(),
        board: Arc::new(StatusBoard::new()),
        wake: Arc::new(Notify::new()),
    }
}

async fn run_until_empty(shipper: Shipper, store: &SledStore) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(shipper.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.meta().unwrap().outbox_events > 0 {
        assert!(Instant::now() < deadline, "outbox never drained");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
}

fn lines(batches: &[OutgoingBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            String::from_utf8(b.payload.to_vec())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn records_leave_the_outbox_only_after_the_sink_confirms_and_retries_keep_the_batch_id() {
    let fx = fixture(10);
    let sink = Arc::new(ScriptedSink::with(&[Some(true), Some(true)]));
    run_until_empty(shipper(&fx, sink.clone(), 4), &fx.store).await;
    let attempts = sink.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 5, "two failures, then three batches");
    assert_eq!(attempts[0].id, attempts[1].id);
    assert_eq!(attempts[1].id, attempts[2].id);
    let delivered = sink.delivered.lock().unwrap().clone();
    let expected: Vec<String> = (0..10).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_eq!(lines(&delivered), expected, "every record once, in order");
    assert!(fx.store.inflight_batches().unwrap().is_empty());
}

#[tokio::test]
async fn a_permanent_error_moves_the_batch_to_dead_and_later_batches_still_arrive() {
    let fx = fixture(6);
    let sink = Arc::new(ScriptedSink::with(&[Some(false)]));
    run_until_empty(shipper(&fx, sink.clone(), 3), &fx.store).await;
    assert_eq!(
        sink.attempts.lock().unwrap().len(),
        2,
        "a permanent error is not retried"
    );
    let dead = fx.store.dead_batches().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload.lines().count(), 3);
    assert_eq!(
        lines(&sink.delivered.lock().unwrap()),
        vec!["{\"n\":3}", "{\"n\":4}", "{\"n\":5}"]
    );
}

#[tokio::test]
async fn recorded_in_flight_batches_are_resent_first_with_the_same_id() {
    let fx = fixture(5);
    let meta = fx.store.meta().unwrap();
    let recorded = BatchRecord {
        id: BatchRecord::id_for(&meta.store_id, 0, 1),
        first: 0,
        last: 1,
        events: 2,
        bytes: 0,
        epoch: 0,
        created_ms: 0,
    };
    fx.store.record_batch(&recorded, fx.guard.as_ref()).unwrap();
    let sink = Arc::new(ScriptedSink::default());
    run_until_empty(shipper(&fx, sink.clone(), 100), &fx.store).await;
    let delivered = sink.delivered.lock().unwrap().clone();
    assert_eq!(delivered[0].id, recorded.id);
    assert_eq!(lines(&delivered[..1]), vec!["{\"n\":0}", "{\"n\":1}"]);
    assert_eq!(
        lines(&delivered[1..]),
        vec!["{\"n\":2}", "{\"n\":3}", "{\"n\":4}"]
    );
}

#[tokio::test]
async fn a_stale_fence_sends_nothing_and_stops_the_shipper() {
    let fx = fixture(3);
    fx.guard.current.store(false, Ordering::SeqCst);
    let sink = Arc::new(ScriptedSink::default());
    let result = shipper(&fx, sink.clone(), 100)
        .run(CancellationToken::new())
        .await;
    assert!(
        matches!(result, Err(Error::Store(store::Error::Fenced))),
        "{result:?}"
    );
    assert!(sink.attempts.lock().unwrap().is_empty());
    assert_eq!(fx.store.meta().unwrap().outbox_events, 3);
}

#[tokio::test]
async fn a_small_trickle_waits_for_max_age_then_ships_as_one_batch() {
    let fx = fixture(2);
    let sink = Arc::new(ScriptedSink::default());
    let mut s = shipper(&fx, sink.clone(), 100);
    s.options.max_age = Duration::from_millis(200);
    let started = Instant::now();
    run_until_empty(s, &fx.store).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(sink.delivered.lock().unwrap().len(), 1);
}

/// A sink whose sends take `delay`; tells when a send has started.
struct SlowSink {
    delay: Duration,
    started: Notify,
    delivered: Mutex<Vec<String>>,
}

impl Sink for SlowSink {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn send<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        Box::pin(async move {
            self.started.notify_one();
            tokio::time::sleep(self.delay).await;
            self.delivered.lock().unwrap().push(batch.id.clone());
            Ok(Receipt::Delivered)
        })
    }
}

async fn stop_during_a_send(current_at_stop: bool) -> (Fixture, Arc<SlowSink>) {
    let fx = fixture(3);
    let sink = Arc::new(SlowSink {
        delay: Duration::from_millis(300),
        started: Notify::new(),
        delivered: Mutex::new(Vec::new()),
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(shipper(&fx, sink.clone(), 100).run(stop.clone()));
    sink.started.notified().await;
    fx.guard.current.store(current_at_stop, Ordering::SeqCst);
    stop.cancel();
    let _ = task.await.unwrap();
    (fx, sink)
}

#[tokio::test]
async fn a_stop_while_the_term_is_current_finishes_the_send_in_flight_and_acknowledges_it() {
    let (fx, sink) = stop_during_a_send(true).await;
    assert_eq!(sink.delivered.lock().unwrap().len(), 1);
    assert!(
        fx.store.inflight_batches().unwrap().is_empty(),
        "the finished send was left for the next leader as maybe delivered"
    );
    assert_eq!(fx.store.meta().unwrap().outbox_events, 0);
}

#[tokio::test]
async fn a_stop_after_the_term_ended_abandons_the_send_and_leaves_the_batch_recorded() {
    let (fx, sink) = stop_during_a_send(false).await;
    assert!(sink.delivered.lock().unwrap().is_empty());
    assert_eq!(fx.store.inflight_batches().unwrap().len(), 1);
    assert_eq!(fx.store.meta().unwrap().outbox_events, 3);
}

/// What [`DeferredSink::confirm`] answers, in turn; after the script, `Delivered`.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Pending,
    Resubmit,
    Fail,
    Unreadable,
}

/// A sink that submits every batch (its destination processes it later) and answers
/// confirmations from a script per batch.
#[derive(Default)]
struct DeferredSink {
    script: Mutex<std::collections::HashMap<String, VecDeque<Answer>>>,
    default_script: Vec<Answer>,
    /// (batch id, kind) of every send.
    sends: Mutex<Vec<(String, &'static str)>>,
    confirms: Mutex<Vec<String>>,
    /// Batch ids answered `Delivered`, in order.
    confirmed: Mutex<Vec<String>>,
}

impl DeferredSink {
    fn with(default_script: &[Answer]) -> Self {
        Self {
            default_script: default_script.to_vec(),
            ..Self::default()
        }
    }

    fn submit(&self, batch: &OutgoingBatch, kind: &'static str) -> SendFuture<'_> {
        self.sends.lock().unwrap().push((batch.id.clone(), kind));
        Box::pin(async {
            Ok(Receipt::Submitted {
                check_after: Duration::from_millis(10),
            })
        })
    }

    fn sends_of(&self, kind: &str) -> usize {
        self.sends
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, k)| *k == kind)
            .count()
    }
}

impl Sink for DeferredSink {
    fn name(&self) -> &'static str {
        "deferred"
    }
    fn send<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        self.submit(batch, "send")
    }
    fn resend<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        self.submit(batch, "resend")
    }
    fn resubmit<'a>(&'a self, batch: &'a OutgoingBatch) -> SendFuture<'a> {
        self.submit(batch, "resubmit")
    }
    fn confirm<'a>(&'a self, batch_id: &'a str) -> ConfirmFuture<'a> {
        Box::pin(async move {
            self.confirms.lock().unwrap().push(batch_id.to_owned());
            let answer = self
                .script
                .lock()
                .unwrap()
                .entry(batch_id.to_owned())
                .or_insert_with(|| self.default_script.iter().copied().collect())
                .pop_front();
            match answer {
                None => {
                    self.confirmed.lock().unwrap().push(batch_id.to_owned());
                    Ok(Confirmation::Delivered)
                }
                Some(Answer::Pending) => Ok(Confirmation::Pending {
                    check_after: Duration::from_millis(10),
                }),
                Some(Answer::Resubmit) => Ok(Confirmation::Resubmit {
                    reason: "lost".to_owned(),
                }),
                Some(Answer::Fail) => Err(sink::Error::Permanent {
                    message: "mapping error".to_owned(),
                    source: None,
                }),
                Some(Answer::Unreadable) => Err(sink::Error::Retriable {
                    message: "table service 503".to_owned(),
                    retry_after: None,
                    source: None,
                }),
            }
        })
    }
}

#[tokio::test]
async fn a_submitted_batch_stays_in_the_outbox_until_confirmed_while_later_batches_go_out() {
    let fx = fixture(10);
    let sink = Arc::new(DeferredSink::with(&[Answer::Pending; 5]));
    let stop = CancellationToken::new();
    let task = tokio::spawn(shipper(&fx, sink.clone(), 2).run(stop.clone()));
    // Five batches of two, all submitted before any is confirmed (each is pending 5 times).
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.sends_of("send") < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        sink.sends_of("send") >= 4,
        "later batches waited for the first one's confirmation"
    );
    assert!(
        sink.confirmed.lock().unwrap().len() < 4,
        "confirmations came too early for this test"
    );
    assert!(
        fx.store.meta().unwrap().outbox_events > 0,
        "a submitted batch left the outbox before it was confirmed"
    );
    run_until_empty_with(task, stop, &fx.store).await;
    assert_eq!(sink.confirmed.lock().unwrap().len(), 5);
    assert_eq!(sink.sends_of("send"), 5, "a batch was sent twice");
    assert!(fx.store.inflight_batches().unwrap().is_empty());
}

#[tokio::test]
async fn no_more_batches_await_confirmation_than_max_awaiting() {
    let fx = fixture(20);
    // Pending for a long time: the shipper must stop cutting at max_awaiting (4).
    let sink = Arc::new(DeferredSink::with(&[Answer::Pending; 1000]));
    let stop = CancellationToken::new();
    let task = tokio::spawn(shipper(&fx, sink.clone(), 2).run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sink.sends_of("send"), 4, "{:?}", sink.sends.lock().unwrap());
    assert_eq!(fx.store.inflight_batches().unwrap().len(), 4);
    assert_eq!(fx.store.meta().unwrap().outbox_events, 20);
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_batch_the_sink_says_will_not_land_is_resubmitted_and_acknowledged_once() {
    let fx = fixture(2);
    let sink = Arc::new(DeferredSink::with(&[
        Answer::Pending,
        Answer::Unreadable,
        Answer::Resubmit,
        Answer::Pending,
    ]));
    let stop = CancellationToken::new();
    let task = tokio::spawn(shipper(&fx, sink.clone(), 10).run(stop.clone()));
    run_until_empty_with(task, stop, &fx.store).await;
    assert_eq!(sink.sends_of("send"), 1);
    assert_eq!(sink.sends_of("resubmit"), 1);
    assert_eq!(sink.confirmed.lock().unwrap().len(), 1);
    assert!(fx.store.inflight_batches().unwrap().is_empty());
    assert!(fx.store.dead_batches().unwrap().is_empty());
}

#[tokio::test]
async fn a_submitted_batch_that_fails_for_good_goes_to_the_dead_tree_with_the_reason() {
    let fx = fixture(3);
    let sink = Arc::new(DeferredSink::with(&[Answer::Pending, Answer::Fail]));
    let stop = CancellationToken::new();
    let task = tokio::spawn(shipper(&fx, sink.clone(), 10).run(stop.clone()));
    run_until_empty_with(task, stop, &fx.store).await;
    let dead = fx.store.dead_batches().unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("mapping error"),
        "{}",
        dead[0].reason
    );
    assert!(sink.confirmed.lock().unwrap().is_empty());
    assert!(fx.store.inflight_batches().unwrap().is_empty());
}

#[tokio::test]
async fn a_recovered_batch_that_was_submitted_is_followed_not_sent_again() {
    let fx = fixture(4);
    // An earlier term recorded (and submitted) a batch, then died.
    let meta = fx.store.meta().unwrap();
    let earlier = BatchRecord {
        id: BatchRecord::id_for(&meta.store_id, 1, 4),
        first: 1,
        last: 4,
        events: 4,
        bytes: 4 * 8,
        epoch: 1,
        created_ms: 0,
    };
    let span = fx.store.outbox_span(0, 100, 1 << 20).unwrap();
    let earlier = BatchRecord {
        first: span.first,
        last: span.last,
        id: BatchRecord::id_for(&meta.store_id, span.first, span.last),
        bytes: span.bytes,
        ..earlier
    };
    fx.store.record_batch(&earlier, fx.guard.as_ref()).unwrap();
    let sink = Arc::new(DeferredSink::with(&[Answer::Pending]));
    let stop = CancellationToken::new();
    let task = tokio::spawn(shipper(&fx, sink.clone(), 10).run(stop.clone()));
    run_until_empty_with(task, stop, &fx.store).await;
    assert_eq!(sink.sends_of("resend"), 1);
    assert_eq!(sink.sends_of("send"), 0);
    assert_eq!(*sink.confirmed.lock().unwrap(), vec![earlier.id.clone()]);
}

async fn run_until_empty_with(
    task: tokio::task::JoinHandle<Result<()>>,
    stop: CancellationToken,
    store: &SledStore,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while (store.meta().unwrap().outbox_events > 0 || !store.inflight_batches().unwrap().is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        store.meta().unwrap().outbox_events,
        0,
        "the outbox did not drain"
    );
}

fn span(first: u64, last: u64, bytes: u64) -> OutboxSpan {
    OutboxSpan {
        first,
        last,
        events: last - first + 1,
        bytes,
    }
}

#[test]
fn a_known_span_is_read_on_from_its_end_with_the_room_left() {
    let options = ShipperOptions {
        max_events: 10,
        max_bytes: 1000,
        ..ShipperOptions::default()
    };
    assert_eq!(
        rest_of(&OutboxSpan::default(), 40, &options),
        (40, 10, 1000)
    );
    assert_eq!(rest_of(&span(40, 43, 300), 40, &options), (44, 6, 700));
    assert_eq!(rest_of(&span(40, 49, 300), 40, &options).1, 0);
    assert_eq!(rest_of(&span(40, 41, 1000), 40, &options).1, 0);
}

#[test]
fn a_span_grows_by_what_was_appended_but_never_past_its_byte_limit() {
    let mut known = OutboxSpan::default();
    assert!(!extend(&mut known, OutboxSpan::default(), 1000));
    assert!(extend(&mut known, span(5, 6, 200), 1000));
    assert_eq!(known, span(5, 6, 200));
    assert!(extend(&mut known, span(7, 9, 300), 1000));
    assert_eq!(known, span(5, 9, 500));
    // A read always takes its first record, even one larger than the room left.
    assert!(!extend(&mut known, span(10, 10, 600), 1000));
    assert_eq!(known, span(5, 9, 500));
}

#[tokio::test]
async fn records_appended_while_a_batch_fills_all_go_out_once_in_order() {
    let fx = fixture(3);
    let sink = Arc::new(ScriptedSink::default());
    let mut shipper = shipper(&fx, sink.clone(), 5);
    shipper.options.max_age = Duration::from_millis(300);
    let wake = Arc::clone(&shipper.wake);
    let stop = CancellationToken::new();
    let task = tokio::spawn(shipper.run(stop.clone()));
    for round in 0..4u64 {
        let items: Vec<CaptureItem> = (0..2)
            .map(|i| CaptureItem {
                uid: format!("late-{round}-{i}"),
                resource_version: format!("{}", 10 + round),
                record: format!("{{\"late\":{}}}", round * 2 + i).into_bytes(),
                listed: None,
            })
            .collect();
        fx.store
            .capture(
                &items,
                Some(&format!("{}", 10 + round)),
                0,
                fx.guard.as_ref(),
            )
            .unwrap();
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while fx.store.meta().unwrap().outbox_events > 0 {
        assert!(Instant::now() < deadline, "the outbox never emptied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    let delivered = sink.delivered.lock().unwrap();
    let mut lines = Vec::new();
    for batch in delivered.iter() {
        assert!(
            batch.events <= 5,
            "a batch over max_events: {}",
            batch.events
        );
        let text = std::str::from_utf8(&batch.payload).unwrap();
        lines.extend(text.lines().map(str::to_owned));
    }
    let expected: Vec<String> = (0..3)
        .map(|i| format!("{{\"n\":{i}}}"))
        .chain((0..8).map(|i| format!("{{\"late\":{i}}}")))
        .collect();
    assert_eq!(lines, expected);
}
