//! The drill scenarios. Each states its property, injects its fault `runs` times into one lab (the
//! storm, into a lab per run), and ends with the oracle (nothing missing, nothing duplicated under
//! (uid, resourceVersion)).
//!
//! Owns the fault sequences and their bounds. A scenario never relaxes a bound to pass; where the
//! workload is shaped (creates only while no replica can watch and history is destroyed), the
//! property says so, because a superseded version the API server no longer holds cannot be
//! recovered by any client.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use anyhow::Context as _;

use super::{
    DrillOptions, DrillReport, Finish, Lab, LabSink, LabSpec, admin_get, faults, now_ms, summary,
};
use kevents_testkit::{harness::LEASE_NAMESPACE, kube::KubeEmulatorConfig};

/// Graceful handover bound (SIGTERM of the leader → another leads).
const GRACEFUL_BOUND: Duration = Duration::from_secs(3);

fn kill_bound(options: &DrillOptions) -> Duration {
    options.lease_duration + options.retry_period * 2
}

/// SIGTERM the leader, then kill -9 the next one, `runs` times each.
pub(super) async fn handover(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let kill_bound = kill_bound(&options);
    let mut report = DrillReport::new(
        "handover",
        format!(
            "SIGTERM of the leader: another leads within {}s (p99); kill -9: within lease_duration + 2 x retry_period = {}s (p99); nothing lost, nothing duplicated",
            GRACEFUL_BOUND.as_secs(),
            kill_bound.as_secs()
        ),
        options.runs,
    );
    let mut lab = Lab::start(options.clone()).await?;
    for run in 0..options.runs {
        for signal in [Signal::SIGTERM, Signal::SIGKILL] {
            let (slot, holder) = lab.leader()?;
            lab.fault(if signal == Signal::SIGTERM {
                "SIGTERM"
            } else {
                "kill -9"
            });
            let signalled = Instant::now();
            lab.replicas.signal(slot, signal)?;
            let Some(took) = lab.next_leader(&holder, signalled).await else {
                report
                    .violations
                    .push(format!("run {run}: no new leader after {signal:?}"));
                continue;
            };
            if signal == Signal::SIGTERM {
                report.graceful.push(took);
            } else {
                report.abrupt.push(took);
            }
            lab.restart(slot).await?;
            // Let the new leader capture before the next fault, so each gap is its own.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let (graceful, abrupt) = (report.graceful.clone(), report.abrupt.clone());
    report.bound_p99("graceful failover", &graceful, GRACEFUL_BOUND);
    report.bound_p99("kill -9 failover", &abrupt, kill_bound);
    report.record(lab.finish().await?);
    Ok(report)
}

/// A rolling restart: SIGTERM each replica in turn and start it again, as a Deployment rollout
/// does; every handover is graceful.
pub(super) async fn rolling(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let mut report = DrillReport::new(
        "rolling",
        format!(
            "rolling restart (SIGTERM each replica in turn, start it again before the next): every leader handover within {}s (p99); nothing lost, nothing duplicated",
            GRACEFUL_BOUND.as_secs()
        ),
        options.runs,
    );
    let mut lab = Lab::start(options.clone()).await?;
    for run in 0..options.runs {
        for slot in 0..lab.replicas.replicas.len() {
            let (leader_slot, holder) = lab.leader()?;
            let signalled = Instant::now();
            if slot == leader_slot {
                lab.fault("SIGTERM");
            }
            lab.replicas.signal(slot, Signal::SIGTERM)?;
            if slot == leader_slot {
                match lab.next_leader(&holder, signalled).await {
                    Some(took) => report.graceful.push(took),
                    None => report.violations.push(format!(
                        "run {run}: no new leader after SIGTERM of {holder}"
                    )),
                }
            }
            lab.restart(slot).await?;
            // The rollout waits for the new pod before it replaces the next one.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let graceful = report.graceful.clone();
    report.bound_p99("graceful failover", &graceful, GRACEFUL_BOUND);
    report.record(lab.finish().await?);
    Ok(report)
}

/// SIGSTOP the leader longer than the lease, then SIGCONT: it must write nothing after waking
/// and must demote.
pub(super) async fn pause(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let mut report = DrillReport::new(
        "pause",
        "a leader paused (SIGSTOP, at a random moment, with a 100 ms stall inside every store commit and a 300 ms stall inside every sink write) longer than its lease is woken only after the new leader began its term and captured; after SIGCONT it performs no fenced write, never has a file open in the new term's store directory, and demotes; nothing lost, nothing duplicated".to_owned(),
        options.runs,
    );
    let spec = LabSpec {
        stalls: Some((Duration::from_millis(100), Duration::from_millis(300))),
        // The stalls slow every commit and send down, also while the backlog drains.
        drain_timeout: Duration::from_secs(300),
        ..LabSpec::default()
    };
    let mut lab = Lab::start_with(options.clone(), spec).await?;
    let mut in_stall = 0;
    let mut late_own_writes = 0;
    for run in 0..options.runs {
        // A random moment relative to the leader's commits and sends.
        let jitter = Duration::from_millis(rand::random_range(0..700));
        tokio::time::sleep(jitter).await;
        let (slot, holder) = lab.leader()?;
        let pid = lab.replicas.replicas[slot].pid().unwrap_or_default();
        let own = faults::open_term_dirs(pid);
        lab.fault("SIGSTOP");
        let stopped = Instant::now();
        lab.replicas.signal(slot, Signal::SIGSTOP)?;
        if faults::in_stall(pid) {
            in_stall += 1;
        }
        match lab.next_leader(&holder, stopped).await {
            Some(took) => report.abrupt.push(took),
            None => report.violations.push(format!(
                "run {run}: nobody took over from the paused leader"
            )),
        }
        // Wake it only after the new term began (a begun directory that is not the paused
        // leader's) and has captured for a while, and past its lease.
        let store = lab.store_dir();
        let began = wait_for(Duration::from_secs(30), || {
            kevents::store::terms::current_dir(&store)
                .ok()
                .flatten()
                .and_then(|dir| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
                .is_some_and(|current| !own.contains(&current))
        })
        .await;
        if !began {
            report.violations.push(format!(
                "run {run}: no new term began while {holder} was paused"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::time::sleep_until(
            (stopped + options.lease_duration + Duration::from_secs(2)).into(),
        )
        .await;
        let own_dirs: Vec<_> = own
            .iter()
            .map(|name| store.join("terms").join(name))
            .collect();
        let own_before: Vec<_> = own_dirs.iter().map(|d| faults::fingerprint(d)).collect();
        let woke_ms = now_ms();
        lab.replicas.signal(slot, Signal::SIGCONT)?;
        // Until it demoted (and a little after): never a file open in another term's directory.
        let admin = lab.replicas.replicas[slot].admin;
        let deadline = Instant::now() + options.renew_deadline + Duration::from_secs(5);
        let mut demoted_at = None;
        let mut foreign = std::collections::BTreeSet::new();
        while Instant::now() < deadline {
            foreign.extend(
                faults::open_term_dirs(pid)
                    .into_iter()
                    .filter(|name| !own.contains(name)),
            );
            if demoted_at.is_none()
                && let Some(status) = admin_get(admin, "/status").await
                && status.contains("\"role\":\"follower\"")
            {
                demoted_at = Some(Instant::now());
            }
            if demoted_at.is_some_and(|at| at.elapsed() > Duration::from_millis(500)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !foreign.is_empty() {
            report.violations.push(format!(
                "run {run}: woken {holder} had files open in newer term directories {foreign:?}"
            ));
        }
        let own_after: Vec<_> = own_dirs.iter().map(|d| faults::fingerprint(d)).collect();
        if own_after != own_before {
            late_own_writes += 1;
        }
        let writes = lab.fence_writes_after(&holder, woke_ms);
        if writes > 0 {
            report.violations.push(format!(
                "run {run}: {holder} wrote {writes} time(s) after waking"
            ));
        }
        if demoted_at.is_none() {
            let state = faults::process_state(pid);
            let exited = lab
                .replicas
                .wait_exit(slot, Duration::ZERO)
                .map_or_else(String::new, |status| format!("; exited: {status}"));
            report.violations.push(format!(
                "run {run}: {holder} did not demote after waking ({state}{exited})"
            ));
        }
        // It may have exited (reported above); the restart starts the slot either way.
        let _ = lab.replicas.signal(slot, Signal::SIGTERM);
        lab.restart(slot).await?;
    }
    report.figures.push(format!(
        "pauses that caught the leader inside a store-commit or sink-write stall: {in_stall} of {}",
        options.runs
    ));
    report.figures.push(format!(
        "woken leaders whose own (old) term directory changed after SIGCONT: {late_own_writes} of {} — no newer term reads it",
        options.runs
    ));
    report.record(lab.finish().await?);
    let gaps: Vec<Duration> = report
        .gaps
        .iter()
        .filter(|(kind, _)| *kind == "SIGSTOP")
        .map(|(_, gap)| *gap)
        .collect();
    report.bound_p99("failover gap after a pause", &gaps, kill_bound(&options));
    Ok(report)
}

/// Polls `done` every 100 ms until it answers true (true) or `timeout` passes (false).
async fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Cut the leader off from the API server: within the renew deadline it stops writing; nobody
/// else leads before the lease ran out; after healing it follows.
pub(super) async fn partition(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let mut report = DrillReport::new(
        "partition",
        "a leader cut off from the API server stops writing within renew_deadline; no other replica leads before lease_duration - retry_period after the cut; nothing lost, nothing duplicated".to_owned(),
        options.runs,
    );
    let mut lab = Lab::start(options.clone()).await?;
    for run in 0..options.runs {
        let (slot, holder) = lab.leader()?;
        lab.fault("partition");
        let cut = Instant::now();
        let cut_ms = now_ms();
        lab.emulator.state().faults().partition(&holder, None);
        match lab.next_leader(&holder, cut).await {
            Some(took) => {
                report.abrupt.push(took);
                let earliest = options.lease_duration.saturating_sub(options.retry_period);
                if took < earliest {
                    report.violations.push(format!(
                        "run {run}: a new leader after {took:?}, before {earliest:?}"
                    ));
                }
            }
            None => report.violations.push(format!(
                "run {run}: nobody took over from the cut-off leader"
            )),
        }
        // The fence must have stopped the old leader's writes by the renew deadline.
        let stop_by = cut_ms
            + i64::try_from((options.renew_deadline + Duration::from_millis(200)).as_millis())
                .unwrap_or(i64::MAX);
        let late = lab.fence_writes_after(&holder, stop_by);
        if late > 0 {
            report.violations.push(format!(
                "run {run}: {holder} wrote {late} time(s) after its renew deadline"
            ));
        }
        lab.emulator.state().faults().heal(Some(&holder));
        tokio::time::sleep(Duration::from_secs(1)).await;
        lab.replicas.signal(slot, Signal::SIGTERM)?;
        lab.restart(slot).await?;
    }
    report.record(lab.finish().await?);
    Ok(report)
}

/// The API server goes away for 30 s (every connection of every replica dies, new ones too),
/// then comes back; the generator keeps writing (as controllers would queue and retry).
pub(super) async fn apiserver_down(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let outage = Duration::from_secs(30);
    let mut report = DrillReport::new(
        "apiserver-down",
        format!(
            "the API server is unreachable for {}s (all clients), then back: a leader is ready again and resumes from its checkpoint; nothing lost, nothing duplicated",
            outage.as_secs()
        ),
        options.runs,
    );
    let mut lab = Lab::start(options.clone()).await?;
    let mut recovery = Vec::new();
    for run in 0..options.runs {
        lab.leader()?;
        lab.fault("API server down");
        lab.emulator.state().faults().partition("", None);
        tokio::time::sleep(outage).await;
        lab.emulator.state().faults().heal(None);
        let back = Instant::now();
        match lab.ready_leader(back, Duration::from_secs(60)).await {
            Some(took) => recovery.push(took),
            None => report.violations.push(format!(
                "run {run}: no ready leader within 60s of the API server's return"
            )),
        }
        lab.revive().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    report.figures.push(format!(
        "API server back → ready leader: {}",
        summary(&recovery)
    ));
    report.record(lab.finish().await?);
    Ok(report)
}

/// The leader dies (kill -9 or SIGTERM, alternating) and the API server compacts its history
/// past the leader's checkpoint at that moment: the new leader's resume gets 410 and must relist.
pub(super) async fn compaction(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let mut report = DrillReport::new(
        "compaction",
        "the leader's watch lags (stalled 1.5s), the API server compacts past its checkpoint, and the leader dies (SIGTERM / kill -9, alternating): the new leader's resume gets 410, it relists (410) and captures every version still held; nothing lost, nothing duplicated (creates only from 2s before the fault until the new leader is ready: a superseded version behind the compaction point is held by nobody)".to_owned(),
        options.runs,
    );
    let mut lab = Lab::start(options.clone()).await?;
    let mut new_leaders = Vec::new();
    for run in 0..options.runs {
        lab.generate_creates_only();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (slot, holder) = lab.leader()?;
        let signal = if run % 2 == 0 {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        lab.fault(if signal == Signal::SIGTERM {
            "SIGTERM"
        } else {
            "kill -9"
        });
        // Hold the leader's watch back (its checkpoint stops) while events keep coming, compact
        // past its checkpoint, then stop it: the new leader's resume is behind the compaction.
        lab.emulator
            .state()
            .faults()
            .stall_watches(Duration::from_millis(1500));
        tokio::time::sleep(Duration::from_secs(1)).await;
        lab.emulator.state().compact_now();
        let signalled = Instant::now();
        lab.replicas.signal(slot, signal)?;
        match lab.next_leader(&holder, signalled).await {
            Some(took) if signal == Signal::SIGTERM => report.graceful.push(took),
            Some(took) => report.abrupt.push(took),
            None => report
                .violations
                .push(format!("run {run}: no new leader after {signal:?}")),
        }
        if lab
            .ready_leader(Instant::now(), Duration::from_secs(60))
            .await
            .is_none()
        {
            report
                .violations
                .push(format!("run {run}: the new leader never became ready"));
        }
        if let Ok((_, leader)) = lab.leader() {
            new_leaders.push(leader);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        lab.generate_normally();
        lab.restart(slot).await?;
    }
    let (graceful, abrupt) = (report.graceful.clone(), report.abrupt.clone());
    report.bound_p99("graceful failover", &graceful, GRACEFUL_BOUND);
    report.bound_p99("kill -9 failover", &abrupt, kill_bound(&options));
    let finish = lab.finish().await?;
    check_relisted(
        &mut report,
        &finish,
        &new_leaders,
        "new leaders that relisted after 410",
        "a new leader resumed without the relist the compaction forces",
    );
    report.record(finish);
    Ok(report)
}

/// Reports how many of `leaders` relisted (from `kevents_relists_total`) under `figure`; a
/// violation `why` unless every one did.
fn check_relisted(
    report: &mut DrillReport,
    finish: &Finish,
    leaders: &[String],
    figure: &str,
    why: &str,
) {
    let relisted = leaders
        .iter()
        .filter(|id| finish.captures.relists.get(*id).is_some_and(|n| *n > 0))
        .count();
    report
        .figures
        .push(format!("{figure}: {relisted} of {}", leaders.len()));
    if relisted < leaders.len() {
        report.violations.push(why.to_owned());
    }
}

/// Every replica is down for longer than the API server's watch history (compaction every 5 s
/// here, like the 5 min of a real one) but far shorter than the event TTL.
pub(super) async fn long_outage(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let compaction = Duration::from_secs(5);
    let down = compaction * 4;
    let mut report = DrillReport::new(
        "long-outage",
        format!(
            "every replica is down {}s, longer than the watch history ({}s compaction period; scaled from 5 min) and shorter than the event TTL (10 min here): the next leader relists and captures every version still held; nothing lost, nothing duplicated (creates only while nobody watches: a superseded version behind the compaction point is held by nobody)",
            down.as_secs(),
            compaction.as_secs()
        ),
        options.runs,
    );
    let spec = LabSpec {
        emulator: KubeEmulatorConfig {
            event_ttl: Duration::from_secs(600),
            compaction_interval: Some(compaction),
            ..KubeEmulatorConfig::default()
        },
        ..LabSpec::default()
    };
    let mut lab = Lab::start_with(options.clone(), spec).await?;
    let mut recovery = Vec::new();
    let mut new_leaders = Vec::new();
    for run in 0..options.runs {
        lab.generate_creates_only();
        tokio::time::sleep(Duration::from_secs(2)).await;
        lab.leader()?;
        lab.fault("all replicas down");
        let stopped_rv = lab.emulator.state().resource_version();
        for slot in 0..lab.replicas.replicas.len() {
            let _ = lab.replicas.signal(slot, Signal::SIGTERM);
        }
        for slot in 0..lab.replicas.replicas.len() {
            let _ = lab.replicas.wait_exit(slot, Duration::from_secs(20));
        }
        tokio::time::sleep(down).await;
        let compacted = lab.emulator.state().compacted_resource_version();
        if compacted <= stopped_rv {
            report.violations.push(format!(
                "run {run}: history not compacted past the outage ({compacted} <= {stopped_rv}); the drill proves nothing"
            ));
        }
        let back = Instant::now();
        for slot in 0..lab.replicas.replicas.len() {
            lab.restart(slot).await?;
        }
        match lab.ready_leader(back, Duration::from_secs(60)).await {
            Some(took) => recovery.push(took),
            None => report
                .violations
                .push(format!("run {run}: no ready leader after the restart")),
        }
        if let Ok((_, leader)) = lab.leader() {
            new_leaders.push(leader);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        lab.generate_normally();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    report.figures.push(format!(
        "replicas started → ready leader: {}",
        summary(&recovery)
    ));
    let finish = lab.finish().await?;
    check_relisted(
        &mut report,
        &finish,
        &new_leaders,
        "leaders that relisted after the outage",
        "a leader resumed without the relist the lost history forces",
    );
    report.record(finish);
    Ok(report)
}

/// The store directory turns read-only under the leader for 10 s, then writable again.
pub(super) async fn read_only_store(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let read_only = Duration::from_secs(10);
    let mut report = DrillReport::new(
        "read-only-store",
        format!(
            "the shared store directory refuses every write (chattr +i: EPERM even for root) for {}s, then is writable again: the leader may step down or fail, but a ready leader returns and nothing is lost or duplicated",
            read_only.as_secs()
        ),
        options.runs,
    );
    let mut lab = Lab::start(options.clone()).await?;
    let mut recovery = Vec::new();
    let mut changed = 0;
    let mut revived = 0;
    for run in 0..options.runs {
        let (_, holder) = lab.leader()?;
        lab.fault("store read-only");
        let store = lab.store_dir();
        faults::set_immutable(&store, true)?;
        tokio::time::sleep(read_only).await;
        faults::set_immutable(&store, false)?;
        let back = Instant::now();
        revived += lab.revive().await?;
        match lab.ready_leader(back, Duration::from_secs(60)).await {
            Some(took) => recovery.push(took),
            None => report.violations.push(format!(
                "run {run}: no ready leader within 60s of the store becoming writable"
            )),
        }
        if lab.leader().is_ok_and(|(_, now)| now != holder) {
            changed += 1;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        revived += lab.revive().await?;
    }
    report.figures.push(format!(
        "store writable → ready leader: {}",
        summary(&recovery)
    ));
    report.figures.push(format!(
        "leadership changed in {changed} of {} run(s); replicas that exited and were restarted: {revived}",
        options.runs
    ));
    report.record(lab.finish().await?);
    Ok(report)
}

/// 5,000 events/s for 60 s (a quarter of them count++ updates), then the normal rate. Each run
/// has a lab of its own: one API server holding every run's 300,000 versions would measure the
/// lab's memory, not kevents.
pub(super) async fn storm(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let rate = 5_000.0;
    let length = Duration::from_secs(60);
    let mut report = DrillReport::new(
        "storm",
        format!(
            "an event storm of {rate} events/s for {}s: nothing lost, nothing duplicated; the backlog drain time (storm end → every version delivered) is reported",
            length.as_secs()
        ),
        options.runs,
    );
    let spec = LabSpec {
        drain_timeout: Duration::from_secs(600),
        ..LabSpec::default()
    };
    let mut drains = Vec::new();
    for run in 0..options.runs {
        let mut run_options = options.clone();
        run_options.workdir = options.workdir.join(format!("run-{run}"));
        let rows = run_options.workdir.join("out");
        let lab = Lab::start_with(run_options, spec.clone()).await?;
        let before = lab.emulator.state().resource_version();
        lab.generate(rate, 0.3);
        tokio::time::sleep(length).await;
        lab.emulator.state().set_generator(None);
        let written = lab.emulator.state().resource_version() - before;
        let ended = Instant::now();
        match lab.wait_delivered(Duration::from_secs(600)).await {
            Some(()) => drains.push(ended.elapsed()),
            None => report
                .violations
                .push(format!("run {run}: the backlog did not drain within 600s")),
        }
        #[expect(
            clippy::cast_precision_loss,
            reason = "an event count, for a rate figure"
        )]
        let achieved = written as f64 / length.as_secs_f64();
        report.figures.push(format!(
            "run {run}: {written} writes in the storm ({achieved:.0}/s achieved by the generator)"
        ));
        lab.generate_normally();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let finish = lab.finish().await?;
        if finish.delivery.is_exact() {
            // A passing run's rows (hundreds of MB) are not needed for a post-mortem.
            let _ = std::fs::remove_dir_all(&rows);
        }
        report.record(finish);
    }
    report
        .figures
        .push(format!("backlog drain time: {}", summary(&drains)));
    Ok(report)
}

/// A storm of 429s from ADX (streaming ingestion), each with `Retry-After: 2`.
pub(super) async fn adx_throttle(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let retry_after = Duration::from_secs(2);
    let burst = 6;
    let mut report = DrillReport::new(
        "adx-429",
        format!(
            "ADX answers {burst} consecutive requests 429 with Retry-After {}s (streaming sink), per run: no request follows a 429 sooner than its Retry-After; every version lands in the ADX table exactly once",
            retry_after.as_secs()
        ),
        options.runs,
    );
    let spec = LabSpec {
        sink: LabSink::AdxStreaming,
        ..LabSpec::default()
    };
    let lab = Lab::start_with(options.clone(), spec).await?;
    let Some(adx) = lab.adx.as_ref().map(|a| a.state().clone()) else {
        anyhow::bail!("the ADX lab has no ADX emulator");
    };
    let mut throttled = 0;
    for run in 0..options.runs {
        let before = adx.stats().faults_injected;
        adx.throttle_next(burst, retry_after);
        let deadline = Instant::now() + retry_after * (burst + 10);
        while adx.stats().faults_injected < before + u64::from(burst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let got = adx.stats().faults_injected - before;
        throttled += got;
        if got < u64::from(burst) {
            report.violations.push(format!(
                "run {run}: only {got} of {burst} requests were throttled before the deadline"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut requests = adx.requests();
    requests.sort_by_key(|r| r.at);
    let mut after_429 = Vec::new();
    for pair in requests.windows(2) {
        if pair[0].status == 429 {
            after_429.push(pair[1].at.duration_since(pair[0].at));
        }
    }
    let early = after_429
        .iter()
        .filter(|d| **d + Duration::from_millis(50) < retry_after)
        .count();
    report.figures.push(format!(
        "429s answered: {throttled}; next request after a 429: min {:.2}s, {}",
        after_429
            .iter()
            .min()
            .copied()
            .unwrap_or_default()
            .as_secs_f64(),
        summary(&after_429)
    ));
    if early > 0 {
        report.violations.push(format!(
            "{early} request(s) came sooner than Retry-After {}s after a 429",
            retry_after.as_secs()
        ));
    }
    report.record(lab.finish().await?);
    Ok(report)
}

/// ADX is down (503 to everything) for 10 minutes; halfway through, the leader is rolled.
pub(super) async fn adx_outage(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let outage = Duration::from_secs(600);
    let mut report = DrillReport::new(
        "adx-outage",
        format!(
            "ADX answers 503 to everything for {}s (streaming sink) and the leader is SIGTERMed halfway: events keep being captured into the outbox, and after the outage every version lands exactly once; the drain time is reported",
            outage.as_secs()
        ),
        options.runs,
    );
    let spec = LabSpec {
        sink: LabSink::AdxStreaming,
        drain_timeout: Duration::from_secs(600),
        ..LabSpec::default()
    };
    let mut lab = Lab::start_with(options.clone(), spec).await?;
    let Some(adx) = lab.adx.as_ref().map(|a| a.state().clone()) else {
        anyhow::bail!("the ADX lab has no ADX emulator");
    };
    let mut drains = Vec::new();
    for run in 0..options.runs {
        adx.outage_for(outage);
        let started = Instant::now();
        tokio::time::sleep(outage / 2).await;
        let (slot, holder) = lab.leader()?;
        lab.fault("SIGTERM");
        let signalled = Instant::now();
        lab.replicas.signal(slot, Signal::SIGTERM)?;
        match lab.next_leader(&holder, signalled).await {
            Some(took) => report.graceful.push(took),
            None => report
                .violations
                .push(format!("run {run}: no new leader after SIGTERM")),
        }
        lab.restart(slot).await?;
        tokio::time::sleep_until((started + outage).into()).await;
        let ended = Instant::now();
        match lab.wait_delivered(Duration::from_secs(600)).await {
            Some(()) => drains.push(ended.elapsed()),
            None => report.violations.push(format!(
                "run {run}: the outbox did not drain within 600s of the outage"
            )),
        }
    }
    report.figures.push(format!(
        "outage end → every version in ADX: {}",
        summary(&drains)
    ));
    let graceful = report.graceful.clone();
    report.bound_p99("graceful failover", &graceful, GRACEFUL_BOUND);
    report.record(lab.finish().await?);
    Ok(report)
}

/// An operator deletes the Lease while the generator writes (`kubectl delete lease`, a namespace
/// clean-up, a re-install): a replica recreates it, waits out the renew deadline of the leader it
/// may have been deleted under, finds the store at a higher term and advances its epoch past it.
pub(super) async fn lease_deleted(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let bound = kill_bound(&options);
    let mut report = DrillReport::new(
        "lease-deleted",
        format!(
            "the Lease is deleted while the generator writes: a leader captures again within lease_duration + 2 x retry_period = {}s (p99) of the deletion; nothing lost, nothing duplicated",
            bound.as_secs()
        ),
        options.runs,
    );
    let mut lab = Lab::start(options.clone()).await?;
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(lab.emulator.client(), LEASE_NAMESPACE);
    let mut advanced = 0;
    for run in 0..options.runs {
        let (_, holder) = lab.leader()?;
        let before = lab_lease_epoch(&lab);
        lab.fault("lease deleted");
        let deleted = Instant::now();
        leases
            .delete(
                lab.replicas.lease_name(),
                &kube::api::DeleteParams::default(),
            )
            .await
            .with_context(|| format!("run {run}: deleting the Lease"))?;
        match lab.ready_leader(deleted, Duration::from_secs(60)).await {
            Some(took) => report.abrupt.push(took),
            None => report.violations.push(format!(
                "run {run}: no ready leader within 60s of deleting the Lease held by {holder}"
            )),
        }
        if lab_lease_epoch(&lab) > before {
            advanced += 1;
        }
        // Let the new term capture before the next deletion, so each gap is its own.
        tokio::time::sleep(Duration::from_secs(2)).await;
        lab.revive().await?;
    }
    report.figures.push(format!(
        "runs whose new term's epoch went past the deleted Lease's: {advanced} of {}",
        options.runs
    ));
    if advanced < options.runs {
        report
            .violations
            .push("a term after a deletion did not advance past the store's epoch".to_owned());
    }
    report.record(lab.finish().await?);
    let gaps = gaps_of(&report, "lease deleted");
    report.bound_p99("capture gap after deleting the Lease", &gaps, bound);
    Ok(report)
}

/// The lab Lease's `leaseTransitions` (the epoch of the current term).
fn lab_lease_epoch(lab: &Lab) -> i64 {
    lab.emulator
        .state()
        .lease(LEASE_NAMESPACE, lab.replicas.lease_name())
        .and_then(|l| l.spec)
        .and_then(|s| s.lease_transitions)
        .map_or(-1, i64::from)
}

fn gaps_of(report: &DrillReport, kind: &str) -> Vec<Duration> {
    report
        .gaps
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, gap)| *gap)
        .collect()
}

/// An operator changes `leader.lease_name` and restarts every replica on the same store: the
/// new Lease starts at term 0, the store is at a higher one; the new leader advances past it and
/// resumes from the checkpoint (no relist).
pub(super) async fn lease_renamed(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let bound = kill_bound(&options);
    let mut report = DrillReport::new(
        "lease-renamed",
        format!(
            "every replica is stopped and started with another leader.lease_name on the same store: a leader is ready within lease_duration + 2 x retry_period = {}s (p99) of the restart and resumes from the stored checkpoint (no relist); nothing lost, nothing duplicated",
            bound.as_secs()
        ),
        options.runs,
    );
    let mut lab = Lab::start(options.clone()).await?;
    let mut leaders = Vec::new();
    for run in 0..options.runs {
        lab.leader()?;
        lab.fault("lease renamed");
        for slot in 0..lab.replicas.replicas.len() {
            let _ = lab.replicas.signal(slot, Signal::SIGTERM);
        }
        for slot in 0..lab.replicas.replicas.len() {
            if lab
                .replicas
                .wait_exit(slot, Duration::from_secs(20))
                .is_none()
            {
                report.violations.push(format!(
                    "run {run}: replica {slot} did not exit within 20s of SIGTERM"
                ));
            }
        }
        lab.replicas
            .set_lease_name(&format!("kevents-renamed-{run}"));
        let restarted = Instant::now();
        for slot in 0..lab.replicas.replicas.len() {
            lab.restart(slot).await?;
        }
        match lab.ready_leader(restarted, Duration::from_secs(60)).await {
            Some(took) => report.graceful.push(took),
            None => report.violations.push(format!(
                "run {run}: no ready leader within 60s on the renamed Lease"
            )),
        }
        if let Ok((_, holder)) = lab.leader() {
            leaders.push(holder);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let finish = lab.finish().await?;
    let relisted = leaders
        .iter()
        .filter(|id| finish.captures.relists.get(*id).is_some_and(|n| *n > 0))
        .count();
    report.figures.push(format!(
        "leaders on a renamed Lease that relisted instead of resuming: {relisted} of {}",
        leaders.len()
    ));
    if relisted > 0 {
        report
            .violations
            .push("a leader on a renamed Lease relisted instead of resuming".to_owned());
    }
    let unobserved = leaders
        .iter()
        .filter(|id| !finish.captures.relists.contains_key(*id))
        .count();
    if unobserved > 0 {
        report.violations.push(format!(
            "{unobserved} leader(s) on a renamed Lease were never scraped: their relists are unknown"
        ));
    }
    report.record(finish);
    let restarts = report.graceful.clone();
    report.bound_p99(
        "restart on a renamed Lease → ready leader",
        &restarts,
        bound,
    );
    Ok(report)
}

/// The leader's node mount hangs (its FUSE daemon stopped, as an SMB mount that stops
/// answering): the leader's store call overruns `store.io_timeout`, it steps down and reports
/// itself wedged; a replica on the other node, whose mount answers, leads and captures.
pub(super) async fn sick_leader(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let io_timeout = Duration::from_secs(5);
    let hang = Duration::from_secs(20);
    // Overrun (io_timeout), a replica on the hung node that wins meanwhile overruns its
    // hand-over too (io_timeout), then a lease round.
    let bound = io_timeout * 2 + options.lease_duration + options.retry_period * 2;
    let mut report = DrillReport::new(
        "sick-leader",
        format!(
            "the leader's node mount hangs for {}s (its FUSE daemon stopped; store.io_timeout {}s): a replica on another node leads and captures within 2 x io_timeout + lease_duration + 2 x retry_period = {}s (p99); the sick leader's /livez fails while its call hangs; leadership stays on a healthy node until the mount answers; nothing lost, nothing duplicated",
            hang.as_secs(),
            io_timeout.as_secs(),
            bound.as_secs()
        ),
        options.runs,
    );
    anyhow::ensure!(
        options.ground.is_multi_node(),
        "sick-leader needs the multi-node ground (--nodes 2): one node's mount hangs while another's answers"
    );
    let spec = LabSpec {
        store_extra: format!(
            "  io_timeout: {}s
",
            io_timeout.as_secs()
        ),
        ..LabSpec::default()
    };
    let mut lab = Lab::start_with(options.clone(), spec).await?;
    let mut wedged = 0;
    let mut unwedged = 0;
    for run in 0..options.runs {
        let (slot, holder) = lab.leader()?;
        let nodes = lab.nodes().context("no node mounts")?;
        let node = nodes.node_of(slot);
        let pid = nodes
            .daemon_pid(node)
            .with_context(|| format!("no FUSE daemon found for node {node}"))?;
        let admin = lab.replicas.replicas[slot].admin;
        lab.fault("mount hang");
        let hung_at = Instant::now();
        let hung = faults::HungMount::hang(pid)?;
        // A leader on another node, capturing.
        let mut moved = None;
        let mut saw_wedged = false;
        while hung_at.elapsed() < bound * 3 {
            if !saw_wedged && admin_get(admin, "/livez").await.is_none() {
                saw_wedged = true;
            }
            if let Ok((now, _)) = lab.leader()
                && lab.nodes().is_some_and(|n| n.node_of(now) != node)
                && lab
                    .ready_leader(hung_at, Duration::from_millis(200))
                    .await
                    .is_some()
            {
                moved = Some(hung_at.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match moved {
            Some(took) => report.abrupt.push(took),
            None => report.violations.push(format!(
                "run {run}: no ready leader on another node within {:?} of {holder}'s mount hanging",
                bound * 3
            )),
        }
        // Until the mount answers again: the sick leader reports itself wedged, and leadership
        // never goes back to the hung node.
        while hung_at.elapsed() < hang {
            if !saw_wedged && admin_get(admin, "/livez").await.is_none() {
                saw_wedged = true;
            }
            if let Ok((now, who)) = lab.leader()
                && lab.nodes().is_some_and(|n| n.node_of(now) == node)
                && moved.is_some()
            {
                report.violations.push(format!(
                    "run {run}: {who} on the hung node leads again while its mount hangs"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if saw_wedged {
            wedged += 1;
        } else {
            report.violations.push(format!(
                "run {run}: {holder}'s /livez never failed while its store call hung"
            ));
        }
        hung.release();
        // The stuck call returns once the mount answers: the process heals without a restart.
        let healed = wait_for_async(Duration::from_secs(30), || admin_get(admin, "/livez")).await;
        if healed {
            unwedged += 1;
        }
        lab.revive().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    report.figures.push(format!(
        "sick leaders whose /livez failed during the hang: {wedged} of {}; live again after it: {unwedged} of {}",
        options.runs, options.runs
    ));
    report.record(lab.finish().await?);
    let gaps = gaps_of(&report, "mount hang");
    report.bound_p99("capture gap after the leader's mount hung", &gaps, bound);
    Ok(report)
}

/// Polls `probe` every 200 ms until it answers `Some` (true) or `timeout` passes (false).
async fn wait_for_async<F, T>(timeout: Duration, mut probe: impl FnMut() -> F) -> bool
where
    F: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if probe().await.is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// The table's ingestion mapping breaks for a while (queued sink, status rows): the batches sent
/// meanwhile fail in ADX, end in the dead tree with ADX's reason, `kevents dead list` shows them
/// and `kevents dead replay --all` after the fix delivers them once.
pub(super) async fn mapping_error(options: DrillOptions) -> anyhow::Result<DrillReport> {
    let broken = Duration::from_secs(6);
    let mut report = DrillReport::new(
        "mapping-error",
        format!(
            "per run, the ADX table's ingestion mapping is broken for {}s, longer until ADX has failed an ingestion (queued sink with status rows, ingestion {}-{} s after the post): the batches ADX fails end in the leader's dead tree with the reason BadRequest_MappingReferenceWasNotFound, `kevents dead list` lists each of them, and `kevents dead replay --all` after the fix empties the dead tree; nothing lost, nothing duplicated",
            broken.as_secs(),
            super::ADX_INGEST_DELAY.0.as_secs(),
            super::ADX_INGEST_DELAY.1.as_secs()
        ),
        options.runs,
    );
    let spec = LabSpec {
        sink: LabSink::AdxQueued,
        ..LabSpec::default()
    };
    let lab = Lab::start_with(options.clone(), spec).await?;
    let Some(adx) = lab.adx.as_ref().map(|a| a.state().clone()) else {
        anyhow::bail!("the ADX lab has no ADX emulator");
    };
    let mut dead_batches = 0;
    for run in 0..options.runs {
        let failed_before = adx.stats().failed_ingestions;
        adx.set_mapping_broken("KubeEvents", true);
        tokio::time::sleep(broken).await;
        // The DM ingests a message up to the ingestion delay after its post, and a leader that
        // just started may not have posted yet: the mapping stays broken until ADX has failed
        // one ingestion, at most `longer` more.
        let longer = broken * 4;
        let since = Instant::now();
        while adx.stats().failed_ingestions == failed_before && since.elapsed() < longer {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        adx.set_mapping_broken("KubeEvents", false);
        // Messages posted in the window fail when the DM gets to them (up to the ingestion delay
        // later), then the leader reads the rows.
        let failed = adx.stats().failed_ingestions - failed_before;
        if failed == 0 {
            report.violations.push(format!(
                "run {run}: no ingestion failed while the mapping was broken ({}s)",
                (broken + longer).as_secs()
            ));
            continue;
        }
        let (slot, _) = lab.leader()?;
        let admin = lab.replicas.replicas[slot].admin;
        let url = format!("http://{admin}");
        let listed = wait_for_dead(&options, admin, &adx, failed_before).await;
        let ids: Vec<String> = listed
            .iter()
            .filter_map(|b| b["id"].as_str().map(str::to_owned))
            .collect();
        if ids.is_empty() {
            report
                .violations
                .push(format!("run {run}: the dead tree stayed empty"));
            continue;
        }
        dead_batches += ids.len();
        for batch in &listed {
            let reason = batch["reason"].as_str().unwrap_or("");
            if !reason.contains("BadRequest_MappingReferenceWasNotFound") {
                report.violations.push(format!(
                    "run {run}: dead batch {} without ADX's reason: {reason}",
                    batch["id"]
                ));
            }
        }
        let list = kevents_cli(&options, &["dead", "list", "--admin", &url]).await?;
        for id in &ids {
            if !list.contains(id.as_str()) {
                report.violations.push(format!(
                    "run {run}: `kevents dead list` does not show {id}:\n{list}"
                ));
            }
        }
        kevents_cli(&options, &["dead", "replay", "--all", "--admin", &url]).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut emptied = false;
        while !emptied && Instant::now() < deadline {
            emptied = dead_list(admin).await.is_some_and(|left| left.is_empty());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !emptied {
            report.violations.push(format!(
                "run {run}: the dead tree was not empty after the replay"
            ));
        }
    }
    report.figures.push(format!(
        "dead batches listed and replayed: {dead_batches}; failed ingestions reported by the DM: {}",
        adx.stats().failed_ingestions
    ));
    report.record(lab.finish().await?);
    Ok(report)
}

/// The leader's dead batches (`GET /dead`), once every ingestion that failed since
/// `failed_before` is there (or after a deadline).
async fn wait_for_dead(
    options: &DrillOptions,
    admin: std::net::SocketAddr,
    adx: &kevents_testkit::adx::AdxState,
    failed_before: u64,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now()
        + super::ADX_INGEST_DELAY.1 * 2
        + options.lease_duration
        + Duration::from_secs(10);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        // Every failure the DM reported is one dead batch (each batch is one message).
        let failed = adx.stats().failed_ingestions - failed_before;
        if let Some(batches) = dead_list(admin).await {
            if batches.len() as u64 >= failed {
                return batches;
            }
            last = batches;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    last
}

/// `GET /dead`'s batches of the replica whose admin endpoint is `admin`.
async fn dead_list(admin: std::net::SocketAddr) -> Option<Vec<serde_json::Value>> {
    let body = admin_get(admin, "/dead").await?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["batches"].as_array().cloned()
}

/// Runs `kevents ARGS` and returns its standard output; fails on a non-zero exit.
async fn kevents_cli(options: &DrillOptions, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(&options.kevents)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running kevents {}", args.join(" ")))?;
    anyhow::ensure!(
        out.status.success(),
        "kevents {} exited {}: {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::percentile;

    #[test]
    fn the_kill_bound_is_lease_duration_plus_two_retry_periods() {
        let options = DrillOptions::new("w".into(), "k".into());
        assert_eq!(kill_bound(&options), Duration::from_secs(8));
        assert!(percentile(&[], 0.99).is_zero());
    }
}
