//! `kevents-lab demo`: the main job on an embedded default, end to end on one machine.
//!
//! Starts the Kubernetes API emulator, the ADX emulator on Azurite (the seed's `KubeEvents` table
//! and the flat mapping; the emulated data management service ingests each queued blob seconds
//! after it was posted, as real ADX does minutes later), three real `kevents run` replicas sharing
//! one store directory and shipping by queued ingestion, and the event generator; SIGTERMs the
//! leader at ~20 s and kill -9s the next leader at ~40 s (restarting each, as a Deployment would);
//! at ~60 s stops the generator, lets the pipeline drain, and prints what the API server stored
//! against the rows in the table, and a few of those rows. It owns nothing the product uses.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::sys::signal::Signal;

use kevents_testkit::{
    adx::{AdxEmulator, AdxEmulatorConfig, AdxState},
    harness::{
        LEASE_NAMESPACE, ground_truth, lease_holder, wait_for_new_leader, wait_leader_ready,
    },
    kube::{GeneratorConfig, KubeEmulator, KubeEmulatorConfig},
    oracle::{self, Report},
    replica::{ReplicaOptions, Replicas},
};

use crate::drill::ADX_INGEST_DELAY;

/// The ADX database the demo ships to.
pub const DEMO_DATABASE: &str = "k8s";
/// Its table (`manifests/adx/kube-events.kql`).
pub const DEMO_TABLE: &str = "KubeEvents";
/// Columns of the sample rows printed at the end.
const SAMPLE_COLUMNS: &[&str] = &["Namespace", "Kind", "Name", "Reason", "Count", "LastSeen"];

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Total generation time (the failovers happen at one third and two thirds).
    pub duration: Duration,
    /// Number of replicas.
    pub replicas: usize,
    /// Generator writes per second.
    pub events_per_second: f64,
    /// Share of writes that update an existing event (count++).
    pub update_ratio: f64,
    /// Generator seed.
    pub seed: u64,
    /// Working directory (store, sink, logs).
    pub workdir: PathBuf,
    /// The `kevents` binary.
    pub kevents: PathBuf,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// Delivery against ground truth.
    pub report: Report,
    /// Rows in the emulated `KubeEvents` table.
    pub rows: usize,
    /// The newest few rows, as (column, value) pairs of [`SAMPLE_COLUMNS`].
    pub sample: Vec<Vec<String>>,
    /// SIGTERM of the leader → another replica leads.
    pub graceful_failover: Option<Duration>,
    /// kill -9 of the leader → another replica leads.
    pub kill_failover: Option<Duration>,
}

/// Runs the demo.
///
/// # Errors
/// Fails if the emulator, a replica or the sink output cannot be set up or read.
pub async fn run(options: DemoOptions) -> anyhow::Result<DemoOutcome> {
    let DemoOptions {
        duration,
        replicas: count,
        events_per_second,
        update_ratio,
        seed,
        workdir,
        kevents,
    } = options;
    if workdir.exists() {
        std::fs::remove_dir_all(&workdir)
            .with_context(|| format!("clearing {}", workdir.display()))?;
    }
    std::fs::create_dir_all(&workdir)?;
    let emulator = KubeEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        KubeEmulatorConfig::default(),
    )
    .await
    .context("starting the Kubernetes API emulator")?;
    let kubeconfig = workdir.join("kubeconfig");
    emulator.write_kubeconfig(&kubeconfig, LEASE_NAMESPACE)?;
    println!(
        "API server emulator on {}  (kubeconfig: {})",
        emulator.url(),
        kubeconfig.display()
    );
    println!("Starting Azurite and the ADX emulator (data management service and engine)…");
    let adx = AdxEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        AdxEmulatorConfig::default(),
    )
    .await
    .context("starting the ADX emulator on Azurite (`make azurite` installs Azurite)")?;
    adx.state()
        .set_ingest_delay(ADX_INGEST_DELAY.0, ADX_INGEST_DELAY.1);
    println!(
        "ADX emulator on {}: database {DEMO_DATABASE}, table {DEMO_TABLE}, mapping KubeEventsFlatMapping; queued ingestion lands {}-{} s after the post",
        adx.url(),
        ADX_INGEST_DELAY.0.as_secs(),
        ADX_INGEST_DELAY.1.as_secs()
    );

    let mut replicas = Replicas::start(
        ReplicaOptions {
            kevents,
            workdir: workdir.clone(),
            kubeconfig,
            lease_namespace: LEASE_NAMESPACE.to_owned(),
            lease_duration: "6s".to_owned(),
            renew_deadline: "4s".to_owned(),
            retry_period: "1s".to_owned(),
            pipeline_yaml: demo_pipeline_yaml(&workdir, &adx),
            log_level: "info".to_owned(),
        },
        count,
    )
    .context("starting kevents replicas")?;
    println!(
        "Started {count} kevents replicas (logs in {})",
        workdir.display()
    );

    let first = wait_leader_ready(&emulator, &replicas, Duration::from_secs(60))
        .await
        .context("no replica became a ready leader within 60 s")?;
    println!("Leader: {}", replicas.replicas[first].identity);

    emulator.state().set_generator(Some(GeneratorConfig {
        events_per_second,
        update_ratio,
        seed,
        namespaces: 5,
    }));
    let started = Instant::now();
    println!(
        "Generating {events_per_second} events/s ({}% updates of existing events) for {}s",
        (update_ratio * 100.0).round(),
        duration.as_secs()
    );

    // Progress every 10 s while the generator runs.
    let progress = {
        let kube = emulator.state().clone();
        let table = adx.state().clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                println!(
                    "  {:>3}s: {} versions stored by the API server, {} rows in {DEMO_TABLE}",
                    started.elapsed().as_secs(),
                    kube.ground_truth(None).len(),
                    table.row_count(DEMO_DATABASE, DEMO_TABLE)
                );
            }
        })
    };
    let graceful_failover = failover_at(
        &emulator,
        &mut replicas,
        started + duration / 3,
        Signal::SIGTERM,
    )
    .await?;
    let kill_failover = failover_at(
        &emulator,
        &mut replicas,
        started + duration * 2 / 3,
        Signal::SIGKILL,
    )
    .await?;

    tokio::time::sleep_until((started + duration).into()).await;
    progress.abort();
    emulator.state().set_generator(None);
    println!(
        "Generator stopped; waiting until every stored version is a row in {DEMO_DATABASE}.{DEMO_TABLE}"
    );
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    let mut last_print = Instant::now();
    let report = loop {
        let report = compare_table(&emulator, adx.state());
        if report.missing == 0 || Instant::now() >= drain_deadline {
            break report;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            println!(
                "  {} of {} versions in the table so far",
                report.delivered, report.stored
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // A straggling duplicate would show up within a few ingestion delays.
    let report = if report.missing == 0 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        compare_table(&emulator, adx.state())
    } else {
        report
    };
    let rows = adx.state().row_count(DEMO_DATABASE, DEMO_TABLE);
    let sample = sample_rows(adx.state(), 8);
    replicas.stop_all(Duration::from_secs(15));
    adx.shutdown().await;
    emulator.shutdown().await;
    Ok(DemoOutcome {
        report,
        rows,
        sample,
        graceful_failover,
        kill_failover,
    })
}

/// The replicas' config: the shared store and the ADX sink in queued mode with its defaults
/// (status rows on, no `ingest-by` tags), status rows read every second.
fn demo_pipeline_yaml(workdir: &std::path::Path, adx: &AdxEmulator) -> String {
    format!(
        "store:\n  path: {store}\n  lock_timeout: 30s\n\
         shipper:\n  max_batch_age: 1s\n  retry_initial: 200ms\n  retry_max: 5s\n\
         record:\n  extra_columns: [Uid, ResourceVersion]\n{sink}",
        store = workdir.join("store").display(),
        sink = adx.sink_yaml(
            DEMO_DATABASE,
            "queued",
            "    mapping: KubeEventsFlatMapping\n    status:\n      poll_interval: 1s\n      pending_timeout: 60s\n",
        ),
    )
}

/// Ground truth against the rows of the demo table.
fn compare_table(emulator: &KubeEmulator, adx: &AdxState) -> Report {
    let truth = ground_truth(emulator);
    let mut delivered = Vec::new();
    let mut unkeyed = 0;
    for row in adx.rows(DEMO_DATABASE, DEMO_TABLE) {
        match oracle::key_of(&serde_json::Value::Object(row)) {
            Some(key) => delivered.push(key),
            None => unkeyed += 1,
        }
    }
    oracle::compare(&truth, &delivered, unkeyed)
}

/// The newest `count` rows' [`SAMPLE_COLUMNS`].
fn sample_rows(adx: &AdxState, count: usize) -> Vec<Vec<String>> {
    let rows = adx.rows(DEMO_DATABASE, DEMO_TABLE);
    rows[rows.len().saturating_sub(count)..]
        .iter()
        .map(|row| {
            SAMPLE_COLUMNS
                .iter()
                .map(|column| match row.get(*column) {
                    Some(serde_json::Value::String(text)) => text.clone(),
                    Some(serde_json::Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                })
                .collect()
        })
        .collect()
}

async fn failover_at(
    emulator: &KubeEmulator,
    replicas: &mut Replicas,
    at: Instant,
    signal: Signal,
) -> anyhow::Result<Option<Duration>> {
    tokio::time::sleep_until(at.into()).await;
    let holder = lease_holder(emulator).context("no leader to fail over from")?;
    let slot = replicas
        .slot_of(&holder)
        .with_context(|| format!("the leader {holder} is not a lab replica"))?;
    let signalled = Instant::now();
    replicas.signal(slot, signal)?;
    println!("{signal:?} → leader {holder}");
    let next =
        wait_for_new_leader(emulator, replicas, Some(&holder), Duration::from_secs(60)).await;
    let failover = next.map(|_| signalled.elapsed());
    match (next, failover) {
        (Some(next), Some(took)) => println!(
            "  {} leads after {:.2}s",
            replicas.replicas[next].identity,
            took.as_secs_f64()
        ),
        _ => println!("  no new leader within 60s"),
    }
    let _ = replicas.wait_exit(slot, Duration::from_secs(20));
    replicas.restart(slot)?;
    Ok(failover)
}

/// Prints the outcome table.
pub fn print_outcome(outcome: &DemoOutcome) {
    let r = &outcome.report;
    let secs = |d: Option<Duration>| {
        d.map_or_else(
            || "none".to_owned(),
            |d| format!("{:.2} s", d.as_secs_f64()),
        )
    };
    println!();
    println!("  event versions the API server stored   {:>8}", r.stored);
    println!(
        "  rows in the ADX table {DEMO_TABLE:<17}{:>8}",
        outcome.rows
    );
    println!("  missing                                {:>8}", r.missing);
    println!(
        "  duplicated                             {:>8}",
        r.duplicated
    );
    println!(
        "  failover after SIGTERM of the leader   {:>8}",
        secs(outcome.graceful_failover)
    );
    println!(
        "  failover after kill -9 of the leader   {:>8}",
        secs(outcome.kill_failover)
    );
    if r.unexpected > 0 || r.unkeyed > 0 {
        println!(
            "  unexpected rows {}  unkeyed rows {}",
            r.unexpected, r.unkeyed
        );
    }
    if !r.missing_sample.is_empty() {
        println!("  first missing versions: {:?}", r.missing_sample);
    }
    if !outcome.sample.is_empty() {
        println!();
        println!(
            "  {DEMO_DATABASE}.{DEMO_TABLE} | take {} (newest):",
            outcome.sample.len()
        );
        print_table(SAMPLE_COLUMNS, &outcome.sample);
    }
    println!();
    println!(
        "  {}",
        if r.is_exact() {
            "PASS: every stored version is a row in the ADX table, exactly once"
        } else {
            "FAIL: delivery differs from what the API server stored"
        }
    );
}

/// Prints `rows` under `header` with columns padded to their widest cell (long cells cut).
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    const MAX: usize = 40;
    let cut = |text: &str| -> String {
        if text.chars().count() > MAX {
            format!("{}…", text.chars().take(MAX - 1).collect::<String>())
        } else {
            text.to_owned()
        }
    };
    let widths: Vec<usize> = header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| cut(r.get(i).map_or("", String::as_str)).chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("  {}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in rows {
        line(row.iter().map(|c| cut(c)).collect());
    }
}
