//! Leader election against the Kubernetes API emulator: races, the naive-PATCH bug we avoid,
//! partitions, clock skew, API errors, and Leases written by other tools.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod dual;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use dual::{Term, assert_no_overlap, race_once, release, winners};
use futures::future::join_all;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kevents::{
    config::LeaderConfig,
    leader::{Attempt, Elector, Fence},
};
use kevents_testkit::kube::{ErrorFault, KubeEmulator, KubeEmulatorConfig};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

const NS: &str = "default";
const LEASE: &str = "race";

async fn emulator() -> KubeEmulator {
    KubeEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        KubeEmulatorConfig::default(),
    )
    .await
    .unwrap()
}

/// A client that identifies itself as `identity` (as kevents does), with kube's retries off.
fn client_as(emulator: &KubeEmulator, identity: &str) -> kube::Client {
    let mut config = kube::Config::new(emulator.url().parse().unwrap());
    NS.clone_into(&mut config.default_namespace);
    config.default_retry = false;
    config.headers.push((
        http::HeaderName::from_static("x-client-id"),
        http::HeaderValue::from_str(identity).unwrap(),
    ));
    kube::Client::try_from(config).unwrap()
}

fn leader_config(identity: &str, lease_ms: u64, renew_ms: u64, retry_ms: u64) -> LeaderConfig {
    LeaderConfig {
        lease_name: LEASE.to_owned(),
        lease_namespace: Some(NS.to_owned()),
        identity: identity.to_owned(),
        lease_duration: Duration::from_millis(lease_ms),
        renew_deadline: Duration::from_millis(renew_ms),
        retry_period: Duration::from_millis(retry_ms),
    }
}

fn elector(emulator: &KubeEmulator, identity: &str, lease_ms: u64) -> Elector {
    let api: Api<Lease> = Api::namespaced(client_as(emulator, identity), NS);
    Elector::new(
        api,
        leader_config(identity, lease_ms, lease_ms * 4 / 5, lease_ms / 4),
    )
}

async fn set_lease(api: &Api<Lease>, spec: LeaseSpec) {
    let mut lease = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    };
    if let Some(current) = api.get_opt(LEASE).await.unwrap() {
        lease.metadata.resource_version = current.metadata.resource_version;
    }
    api.replace(LEASE, &PostParams::default(), &lease)
        .await
        .unwrap();
}

fn released() -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        lease_transitions: Some(3),
        ..LeaseSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_candidates_racing_for_a_released_lease_never_both_lead_over_200_rounds() {
    let emulator = emulator().await;
    let admin: Api<Lease> = Api::namespaced(client_as(&emulator, "admin"), NS);
    let mut terms = Vec::new();
    for round in 0..200 {
        set_lease(&admin, released()).await;
        let mut candidates: Vec<Elector> = (0..10)
            .map(|i| elector(&emulator, &format!("c{i}"), 10_000))
            .collect();
        let outcomes = race_once(&mut candidates).await;
        let winners = winners(&outcomes);
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        terms.push(release(&mut candidates[winners[0]], outcomes[winners[0]].1).await);
    }
    assert_no_overlap(&mut terms);
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_candidates_waiting_out_an_expired_lease_never_both_lead() {
    let emulator = emulator().await;
    let admin: Api<Lease> = Api::namespaced(client_as(&emulator, "admin"), NS);
    // An existing Lease: a created one is acted on only after the renew deadline, which this
    // loop (no renewals) would never reach.
    set_lease(&admin, released()).await;
    let lease_ms = 1000;
    let mut candidates: Vec<Elector> = (0..10)
        .map(|i| elector(&emulator, &format!("e{i}"), lease_ms))
        .collect();
    let mut terms = Vec::new();
    // Each round the current leader simply stops renewing (it died); the others must wait the
    // lease out from when *they* last saw it change.
    for round in 0..8 {
        let mut winner: Option<(usize, Instant)> = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while winner.is_none() {
            assert!(
                Instant::now() < deadline,
                "round {round}: nobody took the lease"
            );
            let outcomes = join_all(candidates.iter_mut().map(|c| async move {
                if c.is_leading() {
                    // The previous leader is dead: it neither renews nor competes.
                    return Attempt::Held;
                }
                c.try_acquire_once().await
            }))
            .await;
            let won: Vec<usize> = (0..outcomes.len())
                .filter(|i| outcomes[*i] == Attempt::Acquired)
                .collect();
            assert!(won.len() <= 1, "round {round}: two winners {won:?}");
            if let Some(i) = won.first() {
                winner = Some((*i, Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (index, start) = winner.unwrap();
        let leadership = candidates[index].subscribe().borrow().clone().unwrap();
        terms.push(Term {
            start,
            end: leadership.valid_until,
        });
        // The dead leader is replaced by a fresh process in its slot.
        candidates[index] = elector(&emulator, &format!("e{index}-r{round}"), lease_ms);
    }
    assert_no_overlap(&mut terms);
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_naive_merge_patch_takeover_yields_two_leaders_where_ours_yields_one() {
    let emulator = emulator().await;
    let admin: Api<Lease> = Api::namespaced(client_as(&emulator, "admin"), NS);
    set_lease(&admin, released()).await;
    // What kube-leader-election 0.44 does: GET, judge expiry, then an unconditional merge PATCH.
    let barrier = Arc::new(Barrier::new(10));
    let naive = join_all((0..10).map(|i| {
        let api: Api<Lease> = Api::namespaced(client_as(&emulator, &format!("n{i}")), NS);
        let barrier = Arc::clone(&barrier);
        async move {
            let lease = api.get(LEASE).await.unwrap();
            let holder = lease
                .spec
                .and_then(|s| s.holder_identity)
                .unwrap_or_default();
            barrier.wait().await;
            if !holder.is_empty() {
                return false;
            }
            let patch = serde_json::json!({"spec": {"holderIdentity": format!("n{i}")}});
            api.patch(LEASE, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
        }
    }))
    .await;
    let naive_winners = naive.iter().filter(|won| **won).count();
    assert!(
        naive_winners >= 2,
        "the emulator must expose the naive takeover: {naive_winners} winner(s)"
    );

    set_lease(&admin, released()).await;
    let mut ours: Vec<Elector> = (0..10)
        .map(|i| elector(&emulator, &format!("o{i}"), 10_000))
        .collect();
    let outcomes = race_once(&mut ours).await;
    assert_eq!(winners(&outcomes).len(), 1);
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_leader_demotes_within_the_renew_deadline_and_nobody_leads_before_the_lease_runs_out()
 {
    let emulator = emulator().await;
    let (lease_ms, renew_ms, retry_ms) = (2000, 1500, 300);
    let make = |identity: &str| {
        let api: Api<Lease> = Api::namespaced(client_as(&emulator, identity), NS);
        Elector::new(api, leader_config(identity, lease_ms, renew_ms, retry_ms))
    };
    let a = make("part-a");
    let a_watch = a.subscribe();
    let stop_a = CancellationToken::new();
    let a_task = tokio::spawn(a.run(stop_a.clone()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while a_watch.borrow().is_none() {
        assert!(Instant::now() < deadline, "a never led");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fence = Fence::new(a_watch.clone(), a_watch.borrow().as_ref().unwrap().epoch);
    let b = make("part-b");
    let b_watch = b.subscribe();
    let stop_b = CancellationToken::new();
    let b_task = tokio::spawn(b.run(stop_b.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(b_watch.borrow().is_none());

    let last_valid = a_watch.borrow().as_ref().unwrap().valid_until;
    emulator.state().faults().partition("part-a", None);
    let partitioned_at = Instant::now();
    // a: no longer current within the renew deadline of its last successful renew.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fence.is_current() || a_watch.borrow().is_some() {
        assert!(Instant::now() < deadline, "a never demoted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let demoted_at = Instant::now();
    let last_renew_start = a_watch
        .borrow()
        .as_ref()
        .map_or(last_valid, |l| l.valid_until)
        .checked_sub(Duration::from_millis(renew_ms))
        .unwrap();
    assert!(
        demoted_at
            <= last_valid.max(last_renew_start + Duration::from_millis(renew_ms))
                + Duration::from_millis(150),
        "demoted {:?} after the partition, later than the renew deadline",
        demoted_at - partitioned_at
    );
    // b: leads, but only once the lease ran out since a's last successful renew.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b_watch.borrow().is_none() {
        assert!(Instant::now() < deadline, "b never led");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b_became = Instant::now();
    let a_last_renew_start = last_valid
        .checked_sub(Duration::from_millis(renew_ms))
        .unwrap();
    assert!(
        b_became >= a_last_renew_start + Duration::from_millis(lease_ms),
        "b led {:?} after a's last renew, before the lease duration",
        b_became - a_last_renew_start
    );
    assert!(
        b_became >= demoted_at,
        "b led while a still considered itself leader"
    );
    stop_a.cancel();
    stop_b.cancel();
    let _ = a_task.await;
    let _ = b_task.await;
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renew_time_an_hour_off_is_judged_by_when_this_replica_saw_it_change() {
    let emulator = emulator().await;
    let admin: Api<Lease> = Api::namespaced(client_as(&emulator, "admin"), NS);
    for offset in [3600i64, -3600] {
        let renew = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(offset))
            .unwrap();
        set_lease(
            &admin,
            LeaseSpec {
                holder_identity: Some("ghost".to_owned()),
                lease_duration_seconds: Some(1),
                renew_time: Some(MicroTime(renew)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            },
        )
        .await;
        let mut candidate = elector(&emulator, &format!("skew{offset}"), 1000);
        let first_seen = Instant::now();
        assert_eq!(
            candidate.try_acquire_once().await,
            Attempt::Held,
            "offset {offset}: a lease just seen to change is valid, whatever its renewTime says"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match candidate.try_acquire_once().await {
                Attempt::Acquired => break,
                _ => assert!(Instant::now() < deadline, "offset {offset}: never acquired"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let waited = first_seen.elapsed();
        assert!(
            waited >= Duration::from_secs(1),
            "offset {offset}: took over after {waited:?}, before leaseDurationSeconds"
        );
        assert!(
            waited < Duration::from_secs(3),
            "offset {offset}: waited {waited:?}"
        );
        candidate.release().await;
    }
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_written_by_another_tool_with_missing_fields_is_taken_and_its_other_fields_kept() {
    let emulator = emulator().await;
    let admin: Api<Lease> = Api::namespaced(client_as(&emulator, "admin"), NS);
    let mut labels = BTreeMap::new();
    labels.insert("team".to_owned(), "platform".to_owned());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.to_owned()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                "note".to_owned(),
                "hand-made".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            strategy: Some("OldestEmulationVersion".to_owned()),
            preferred_holder: Some("someone".to_owned()),
            ..LeaseSpec::default()
        }),
    };
    admin.create(&PostParams::default(), &lease).await.unwrap();
    let mut candidate = elector(&emulator, "tidy", 10_000);
    assert_eq!(candidate.try_acquire_once().await, Attempt::Acquired);
    let stored = admin.get(LEASE).await.unwrap();
    let spec = stored.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("tidy"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
    assert_eq!(spec.preferred_holder.as_deref(), Some("someone"));
    assert_eq!(stored.metadata.labels, Some(labels));
    assert_eq!(
        stored
            .metadata
            .annotations
            .unwrap()
            .get("note")
            .map(String::as_str),
        Some("hand-made")
    );
    assert!(candidate.release().await);
    let released = admin.get(LEASE).await.unwrap().spec.unwrap();
    assert_eq!(released.holder_identity.as_deref(), Some(""));
    assert_eq!(released.lease_duration_seconds, Some(1));
    assert_eq!(released.strategy.as_deref(), Some("OldestEmulationVersion"));
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_never_stop_the_elector_and_it_backs_off_instead_of_hot_looping() {
    let emulator = emulator().await;
    let admin: Api<Lease> = Api::namespaced(client_as(&emulator, "admin"), NS);
    set_lease(&admin, released()).await;
    for status in [500u16, 429] {
        emulator
            .state()
            .faults()
            .inject_errors(ErrorFault {
                status,
                count: None,
                seconds: Some(2.0),
                retry_after_seconds: Some(1),
                path_contains: Some("leases".to_owned()),
            })
            .unwrap();
        let identity = format!("err{status}");
        let api: Api<Lease> = Api::namespaced(client_as(&emulator, &identity), NS);
        let candidate = Elector::new(api, leader_config(&identity, 3000, 2000, 250));
        let watch = candidate.subscribe();
        let stop = CancellationToken::new();
        let task = tokio::spawn(candidate.run(stop.clone()));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        while watch.borrow().is_none() {
            assert!(
                Instant::now() < deadline,
                "{status}: never acquired after the errors ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let faulted = emulator
            .state()
            .stats()
            .clients
            .get(&identity)
            .map_or(0, |c| c.faulted);
        // 2 s of errors at a 250 ms retry period, backing off: a handful, never hundreds.
        assert!(
            (1..=12).contains(&faulted),
            "{status}: {faulted} faulted requests"
        );
        stop.cancel();
        let mut elector = task.await.unwrap();
        assert!(elector.release().await);
    }
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_not_ready_from_the_moment_its_leadership_is_visible() {
    use kevents::{
        telemetry::PIPELINE_READY,
        telemetry::{Metrics, StatusBoard},
    };
    let emulator = emulator().await;
    let board = Arc::new(StatusBoard::new());
    // A follower is ready.
    board.set_ready(PIPELINE_READY);
    assert!(board.readiness().is_ok());
    let candidate =
        elector(&emulator, "ready", 3_000).with_telemetry(Metrics::new().unwrap(), board.clone());
    let mut leadership = candidate.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(candidate.run(stop.clone()));
    led(&mut leadership, Duration::from_secs(10), "no leadership").await;
    let not_ready = board
        .readiness()
        .expect_err("ready while the pipeline has not started");
    assert!(
        not_ready.iter().any(|r| r.contains(PIPELINE_READY)),
        "{not_ready:?}"
    );
    assert_eq!(board.snapshot()["leader"]["role"], "leader");
    stop.cancel();
    task.await.unwrap();
}

/// Waits up to `timeout` for `watch` to publish a leadership, and returns it; panics with `what`.
async fn led(
    watch: &mut kevents::leader::LeadershipWatch,
    timeout: Duration,
    what: &str,
) -> kevents::leader::Leadership {
    tokio::time::timeout(timeout, watch.wait_for(Option::is_some))
        .await
        .expect(what)
        .unwrap()
        .clone()
        .unwrap()
}

/// Samples two leadership channels for `span`: how often both were current at once, and whether
/// each ever led.
async fn sample_two(
    a: &kevents::leader::LeadershipWatch,
    b: &kevents::leader::LeadershipWatch,
    span: Duration,
) -> (usize, bool, bool) {
    let current = |w: &kevents::leader::LeadershipWatch| {
        let now = Instant::now();
        w.borrow().as_ref().is_some_and(|l| now < l.valid_until)
    };
    let (mut both, mut a_led, mut b_led) = (0, false, false);
    let end = Instant::now() + span;
    while Instant::now() < end {
        let (x, y) = (current(a), current(b));
        a_led |= x;
        b_led |= y;
        if x && y {
            both += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (both, a_led, b_led)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_configured_with_one_identity_never_both_lead_and_the_clash_is_reported() {
    use kevents::telemetry::{Metrics, StatusBoard};
    let emulator = emulator().await;
    let (metrics_a, metrics_b) = (Metrics::new().unwrap(), Metrics::new().unwrap());
    let board_b = Arc::new(StatusBoard::new());
    let a = elector(&emulator, "shared", 1_000)
        .with_telemetry(metrics_a.clone(), Arc::new(StatusBoard::new()));
    let b = elector(&emulator, "shared", 1_000).with_telemetry(metrics_b.clone(), board_b.clone());
    let (watch_a, watch_b) = (a.subscribe(), b.subscribe());
    let stop = CancellationToken::new();
    let task_a = tokio::spawn(a.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let task_b = tokio::spawn(b.run(stop.clone()));
    // Four lease durations: the second replica must never take the first one's renewals for its
    // own lease.
    let (both, a_led, b_led) = sample_two(&watch_a, &watch_b, Duration::from_secs(4)).await;
    assert_eq!(both, 0, "two processes with one identity led at once");
    assert!(a_led, "the first replica never led");
    assert!(
        !b_led,
        "the second replica took a lease renewed by another process"
    );
    assert_eq!(
        metrics_b.identity_clash.get(),
        1,
        "the clash was not reported"
    );
    assert_eq!(metrics_a.identity_clash.get(), 0);
    assert_eq!(board_b.snapshot()["leader"]["identity_clash"], true);
    stop.cancel();
    task_a.await.unwrap();
    task_b.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advancing_the_epoch_raises_lease_transitions_for_the_current_term_only() {
    let emulator = emulator().await;
    let admin: Api<Lease> = Api::namespaced(client_as(&emulator, "admin"), NS);
    set_lease(&admin, released()).await;
    let candidate = elector(&emulator, "adv", 2_000);
    let handle = candidate.handle();
    let mut leadership = candidate.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(candidate.run(stop.clone()));
    let first = led(&mut leadership, Duration::from_secs(5), "no leadership").await;
    assert_eq!(first.epoch, 4, "an acquisition adds one transition");
    // A request for a term that is not the current one is ignored.
    handle.advance_epoch(3, 40);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(leadership.borrow().as_ref().unwrap().epoch, 4);
    handle.advance_epoch(4, 41);
    let advanced = tokio::time::timeout(
        Duration::from_secs(5),
        leadership.wait_for(|l| l.as_ref().is_some_and(|l| l.epoch != 4)),
    )
    .await
    .expect("the epoch was not advanced")
    .unwrap()
    .clone()
    .unwrap();
    assert_eq!(advanced.epoch, 42);
    let stored = admin.get(LEASE).await.unwrap();
    assert_eq!(stored.spec.unwrap().lease_transitions, Some(42));
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_steps_down_releases_at_once_and_stays_follower_for_its_back_off() {
    let emulator = emulator().await;
    let a = elector(&emulator, "sick", 1_000);
    let b = elector(&emulator, "healthy", 1_000);
    let handle = a.handle();
    let (mut watch_a, mut watch_b) = (a.subscribe(), b.subscribe());
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let task_a = tokio::spawn(a.run(stop_a.clone()));
    led(&mut watch_a, Duration::from_secs(5), "no leadership").await;
    let task_b = tokio::spawn(b.run(stop_b.clone()));
    let asked = Instant::now();
    let hold_off = Duration::from_secs(3);
    handle.step_down(hold_off, "test");
    led(
        &mut watch_b,
        Duration::from_secs(3),
        "the other replica did not take over after the step-down",
    )
    .await;
    assert!(watch_a.borrow().is_none());
    // The other replica stops and releases: the stepped-down one must still wait its back-off.
    stop_b.cancel();
    let mut b = task_b.await.unwrap();
    assert!(b.release().await);
    let (both, a_led, _) = sample_two(
        &watch_a,
        &watch_b,
        hold_off.saturating_sub(asked.elapsed() + Duration::from_millis(200)),
    )
    .await;
    assert_eq!(both, 0);
    assert!(!a_led, "led again during its back-off");
    led(
        &mut watch_a,
        Duration::from_secs(5),
        "never competed again after its back-off",
    )
    .await;
    assert!(asked.elapsed() >= hold_off);
    stop_a.cancel();
    task_a.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_is_recreated_as_a_new_term_that_acts_only_after_the_renew_deadline() {
    let emulator = emulator().await;
    let admin: Api<Lease> = Api::namespaced(client_as(&emulator, "admin"), NS);
    let candidate = elector(&emulator, "del", 1_000);
    let mut leadership = candidate.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(candidate.run(stop.clone()));
    let first = led(&mut leadership, Duration::from_secs(5), "no leadership").await;
    admin
        .delete(LEASE, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(3), leadership.wait_for(Option::is_none))
        .await
        .expect("kept leading on a deleted Lease")
        .unwrap();
    let demoted = Instant::now();
    let second = led(&mut leadership, Duration::from_secs(5), "never led again").await;
    let renew_deadline = Duration::from_millis(800);
    assert!(
        demoted.elapsed() >= renew_deadline.saturating_sub(Duration::from_millis(100)),
        "acted on a recreated Lease after {:?}, before a leader it was deleted under lost its term",
        demoted.elapsed()
    );
    assert_ne!(
        second.lease.uid, first.lease.uid,
        "a recreated Lease has a new uid"
    );
    assert_eq!(second.lease.name, LEASE);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_fails_once_the_election_loop_stops_and_not_while_the_api_server_is_down() {
    use kevents::{
        admin::{self, AdminState},
        telemetry::{Liveness, Metrics, StatusBoard},
    };
    let emulator = emulator().await;
    // A turn of the loop takes at most a call timeout (1 s here) and a back-off of 4 retry periods.
    let liveness = Arc::new(Liveness::new(Duration::from_secs(4)));
    let candidate = elector(&emulator, "live", 1_000).with_liveness(Arc::clone(&liveness));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_stop = CancellationToken::new();
    let server = tokio::spawn(admin::serve(
        listener,
        AdminState {
            metrics: Metrics::new().unwrap(),
            board: Arc::new(StatusBoard::new()),
            liveness: Arc::clone(&liveness),
            dead: kevents::dead::DeadSlot::default(),
        },
        admin_stop.clone(),
    ));
    let http = reqwest::Client::new();
    let livez = || async {
        let answer = http
            .get(format!("http://{addr}/livez"))
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(candidate.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(livez().await.0, 200);
    // The API server answering nothing but errors is a dependency down, not a wedged process.
    emulator.state().faults().partition("", None);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(livez().await.0, 200, "a down API server failed liveness");
    emulator.state().faults().heal(None);
    // The election loop stops (its task is gone): liveness fails with the reason.
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (code, body) = livez().await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("leader election loop"), "{body}");
    admin_stop.cancel();
    server.await.unwrap().unwrap();
}
