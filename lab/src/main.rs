//! `kevents-lab`: the emulators, the demo, the drills and the benchmarks.
//!
//! Parses arguments and hands over to the test kit (`kevents-testkit`: emulators, real
//! kube-apiserver, oracle) and this crate's `demo`, `drill` and `bench` modules. It orchestrates
//! real `kevents` processes; the container image never ships it.

mod adx;
mod bench;
mod demo;
mod drill;
mod peers;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kevents::config::units::parse_duration;
use kevents_testkit::{
    adx::{AdxEmulator, AdxEmulatorConfig, AuthSettings},
    apiserver::{RealApiServer, RealApiServerOptions},
    kube::{GeneratorConfig, KubeEmulator, KubeEmulatorConfig},
    nodes::{Ground, MAX_NODES},
    oracle,
};

use crate::{
    adx::{self as lab_adx, BenchOptions},
    bench::BenchOptions as CaptureBenchOptions,
    demo::DemoOptions,
    drill::DrillOptions,
    peers as lab_peers,
};

/// kevents lab: emulators, demo, drills and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "kevents-lab", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Kubernetes API emulator (with the event generator when a rate is given).
    Kube {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Generator writes per second (0: no generator).
        #[arg(long, default_value_t = 0.0)]
        events_per_second: f64,
        /// Share of generator writes that update an existing event.
        #[arg(long, default_value_t = 0.3)]
        update_ratio: f64,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Namespaces the generator writes to.
        #[arg(long, default_value_t = 5)]
        namespaces: usize,
        /// Event TTL (kube-apiserver --event-ttl).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        event_ttl: Duration,
        /// Compaction interval (`0s` = never).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        compaction_interval: Duration,
        /// Send BOOKMARKs on Event watches (real clusters do not).
        #[arg(long)]
        event_bookmarks: bool,
        /// Write a kubeconfig for this emulator here.
        #[arg(long)]
        kubeconfig_out: Option<PathBuf>,
    },
    /// Run the Azure Data Explorer emulator on a fresh Azurite (`make azurite` installs it): DM,
    /// engine, AAD and IMDS endpoints on one address.
    Adx {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Require a bearer token issued by the emulator on DM and engine requests.
        #[arg(long)]
        require_token: bool,
        /// Accept this client-secret credential, as `CLIENT_ID:SECRET` (repeatable).
        #[arg(long, env = "KEVENTS_LAB_ADX_CLIENT")]
        client: Vec<String>,
        /// `expires_in` of issued tokens.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        token_lifetime: Duration,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        target: BenchTarget,
    },
    /// Run a real kube-apiserver + etcd (built by `make kube-binaries`) on random loopback ports
    /// until Ctrl-C, with envtest's flags; prints the admin kubeconfig.
    KubeApiserver {
        /// Event TTL (`--event-ttl`).
        #[arg(long, default_value = "1m", value_parser = parse_duration)]
        event_ttl: Duration,
        /// `--etcd-compaction-interval`.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        compaction_interval: Duration,
        /// Start with `--watch-cache=false` (a compacted watch position then answers 410).
        #[arg(long)]
        no_watch_cache: bool,
        /// Working directory (certs, etcd data, logs; kept afterwards). Default: a temporary
        /// one, removed on exit.
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Copy the admin kubeconfig here (context namespace `default`).
        #[arg(long)]
        kubeconfig_out: Option<PathBuf>,
    },
    /// The demo: emulator, generator, three replicas, two failovers, and the delivery check.
    Demo {
        /// Generation time.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Replicas.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Generator writes per second.
        #[arg(long, default_value_t = 100.0)]
        events_per_second: f64,
        /// Share of writes that update an existing event.
        #[arg(long, default_value_t = 0.3)]
        update_ratio: f64,
        /// Generator seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Working directory (cleared first).
        #[arg(long, default_value = "target/demo")]
        workdir: PathBuf,
    },
    /// Compare delivered rows with ground truth; exits non-zero on any missing, duplicated or
    /// unexpected version (used by chaos/kind/drill.sh).
    Oracle {
        /// NDJSON ground truth: `{"uid": …, "resourceVersion": …}` per stored event version.
        #[arg(long)]
        truth: PathBuf,
        /// The file sink's path (its rotated files `<path>.N` are read too).
        #[arg(long)]
        delivered: PathBuf,
    },
    /// Failover drills against real kevents processes; prints PASS/FAIL with figures.
    Drill {
        /// Scenarios: handover, pause, partition, rolling, apiserver-down, compaction, adx-429,
        /// read-only-store, long-outage, storm (`all`: every one of these), adx-outage (`long`).
        #[arg(required = true)]
        scenarios: Vec<String>,
        /// Repetitions of the fault per scenario.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Replicas.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Generator writes per second.
        #[arg(long, default_value_t = 200.0)]
        events_per_second: f64,
        /// Lease duration (whole seconds).
        #[arg(long, default_value = "6s", value_parser = parse_duration)]
        lease_duration: Duration,
        /// Renew deadline.
        #[arg(long, default_value = "4s", value_parser = parse_duration)]
        renew_deadline: Duration,
        /// Retry period.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        retry_period: Duration,
        /// Working directory (one subfolder per scenario, cleared first).
        #[arg(long, default_value = "target/drills")]
        workdir: PathBuf,
        /// Nodes of the test ground: 1 = one store directory for every replica; 2 or more = one
        /// share (`<workdir>/<scenario>/share`) mounted with bindfs per node (`node-a`, …),
        /// replicas placed round-robin; flocks do not cross nodes (like SMB `nobrl`).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Attribute and entry cache time of each node mount, in seconds (bindfs `attr_timeout`
        /// and `entry_timeout`, like SMB `actimeo`; 0 = no cache). Only with --nodes 2 or more;
        /// default 30.
        #[arg(long)]
        attr_timeout: Option<u32>,
        /// Where the replicas ship (scenarios that need a particular sink choose their own):
        /// file, adx-queued (the AKS overlay's mode and defaults: status rows, no ingest-by tags;
        /// the emulated DM ingests 2-10 s after the post), adx-streaming, adx-managed.
        #[arg(long, default_value = "file")]
        sink: String,
        /// The `kevents` binary the replicas run (default: the one next to this binary).
        #[arg(long, env = "KEVENTS_BIN")]
        kevents: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchTarget {
    /// The capture path: emulator watch → durable capture → file sink; events/s, RSS, CPU.
    /// With --rates: CPU per 1,000 events and RSS of leader and follower at each rate, and idle
    /// CPU. With --backlog: a cold start over that many retained events.
    Capture {
        /// Event versions to push through.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Generator writes per second.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        /// Measure at each of these rates (events/s, comma-separated) instead, e.g. 50,500,2000.
        #[arg(long, value_delimiter = ',', conflicts_with = "backlog")]
        rates: Option<Vec<f64>>,
        /// With --rates: the measured window of each rate.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// With --rates: the idle window (no events), before the first rate and after the last.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        idle: Duration,
        /// Measure a cold start instead: the generator first creates this many retained events,
        /// then kevents starts.
        #[arg(long)]
        backlog: Option<u64>,
        /// With --backlog: generator writes per second while filling.
        #[arg(long, default_value_t = 50_000.0)]
        fill_rate: f64,
        /// With --rates or --backlog: the shipper's `max_batch_age` (the product default).
        #[arg(long, default_value = "15s")]
        batch_age: String,
        /// With --rates or --backlog: the store's `cache_capacity` (config text, e.g. 4MiB;
        /// the product default when not given).
        #[arg(long)]
        cache_capacity: Option<String>,
        /// Working directory (cleared first).
        #[arg(long, default_value = "target/bench")]
        workdir: PathBuf,
    },
    /// kevents vs the OpenTelemetry Collector (`k8sobjects`, `k8s_events`; built by
    /// scripts/otelcol.sh), 3 replicas each on a real kube-apiserver, SIGTERM and kill -9 of the
    /// leader: missing, duplicated, failover gap, CPU s per 1,000 events, RSS.
    Peers {
        /// Writing time per run (SIGTERM at a third, kill -9 at two thirds).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Event writes per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Share of writes that bump the count of a recent event.
        #[arg(long, default_value_t = 0.3)]
        update_ratio: f64,
        /// Runs per tool (the table shows medians).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Tools, comma-separated: `kevents`, `k8sobjects`, `k8s_events`.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "kevents,k8sobjects,k8s_events"
        )]
        tools: Vec<lab_peers::Tool>,
        /// Working directory (cleared first).
        #[arg(long, default_value = "target/bench-peers")]
        workdir: PathBuf,
    },
    /// Queued ingestion through the ADX sink into the ADX emulator on Azurite, in events/s.
    Adx {
        /// Events in total.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Events per batch (the shipper's default max is 10000).
        #[arg(long, default_value_t = 10_000)]
        batch_events: u64,
        /// Batches in flight (the shipper sends one at a time).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
}

fn main() -> ExitCode {
    let Args { command } = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kevents-lab: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("kevents-lab: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Kube {
            listen,
            events_per_second,
            update_ratio,
            seed,
            namespaces,
            event_ttl,
            compaction_interval,
            event_bookmarks,
            kubeconfig_out,
        } => {
            let generator = (events_per_second > 0.0).then_some(GeneratorConfig {
                events_per_second,
                update_ratio,
                seed,
                namespaces,
            });
            let emulator = KubeEmulator::start(
                listen,
                KubeEmulatorConfig {
                    event_ttl,
                    compaction_interval: (!compaction_interval.is_zero())
                        .then_some(compaction_interval),
                    event_bookmarks,
                    generator,
                },
            )
            .await
            .context("starting the Kubernetes API emulator")?;
            println!("Kubernetes API emulator listening on {}", emulator.url());
            if let Some(path) = kubeconfig_out {
                emulator.write_kubeconfig(&path, "default")?;
                println!("kubeconfig written to {}", path.display());
            }
            interrupted().await?;
            emulator.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Adx {
            listen,
            require_token,
            client,
            token_lifetime,
        } => {
            let mut client_secrets = Vec::new();
            for pair in client {
                let (id, secret) = pair
                    .split_once(':')
                    .context("--client takes CLIENT_ID:SECRET")?;
                client_secrets.push((id.to_owned(), secret.to_owned()));
            }
            let emulator = AdxEmulator::start(
                listen,
                AdxEmulatorConfig {
                    auth: AuthSettings {
                        require_token,
                        client_secrets,
                        assertions: Vec::new(),
                    },
                    ..AdxEmulatorConfig::default()
                },
            )
            .await
            .context("starting the ADX emulator")?;
            emulator.state().set_token_lifetime(token_lifetime);
            let url = emulator.url();
            println!(
                "ADX emulator listening on {url} (Azurite pid {:?})",
                emulator.azurite_pid()
            );
            println!("  DM and engine:  {url}   (sink.adx.ingest_endpoint / engine_endpoint)");
            println!(
                "  AAD token:      {url}/<tenant>/oauth2/v2.0/token   (sink.adx.auth.authority_host: {url})"
            );
            println!("  IMDS:           {url}/metadata/identity/oauth2/token");
            println!(
                "  rows:           {url}/emulator/tables/<db>/KubeEvents   stats: {url}/emulator/stats"
            );
            println!("  faults:         POST {url}/emulator/faults  e.g. {{\"outage_secs\": 120}}");
            interrupted().await?;
            emulator.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target:
                BenchTarget::Adx {
                    events,
                    batch_events,
                    concurrency,
                },
        } => {
            anyhow::ensure!(
                events > 0 && batch_events > 0,
                "--events and --batch-events must be positive"
            );
            println!(
                "Queued ingestion into the ADX emulator on Azurite: {events} events, {batch_events} per batch, {concurrency} in flight"
            );
            let outcome = lab_adx::bench(BenchOptions {
                events,
                batch_events,
                concurrency,
            })
            .await?;
            #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
            let rate = |d: Duration| outcome.events as f64 / d.as_secs_f64();
            #[expect(clippy::cast_precision_loss, reason = "a size for display")]
            let mib = outcome.bytes as f64 / f64::from(1u32 << 20);
            println!("  uncompressed bytes              {mib:>10.1} MiB");
            println!(
                "  sent and confirmed (sink)       {:>10.0} events/s  ({:.2} s)",
                rate(outcome.send_time),
                outcome.send_time.as_secs_f64()
            );
            println!(
                "  ingested as rows (end to end)   {:>10.0} events/s  ({:.2} s)",
                rate(outcome.ingest_time),
                outcome.ingest_time.as_secs_f64()
            );
            println!(
                "  rows {} (distinct {}) for {} events plus 1 warm-up",
                outcome.rows, outcome.distinct, outcome.events
            );
            println!(
                "  target: every event once, ingested at >= {:.0} events/s: {}",
                lab_adx::TARGET_EVENTS_PER_SECOND,
                if outcome.meets_target() {
                    "met"
                } else {
                    "NOT MET"
                }
            );
            Ok(if outcome.meets_target() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::KubeApiserver {
            event_ttl,
            compaction_interval,
            no_watch_cache,
            workdir,
            kubeconfig_out,
        } => {
            let server = RealApiServer::start(RealApiServerOptions {
                event_ttl,
                etcd_compaction_interval: compaction_interval,
                watch_cache: !no_watch_cache,
                workdir,
                ..RealApiServerOptions::default()
            })
            .await?;
            println!("{server}");
            println!("admin kubeconfig: {}", server.kubeconfig().display());
            if let Some(path) = kubeconfig_out {
                server.write_kubeconfig(&path, "default")?;
                println!("kubeconfig written to {}", path.display());
            }
            interrupted().await?;
            drop(server);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            duration,
            replicas,
            events_per_second,
            update_ratio,
            seed,
            workdir,
        } => {
            let kevents = kevents_binary()?;
            let outcome = demo::run(DemoOptions {
                duration,
                replicas,
                events_per_second,
                update_ratio,
                seed,
                workdir,
                kevents,
            })
            .await?;
            demo::print_outcome(&outcome);
            Ok(if outcome.report.is_exact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Bench {
            target:
                BenchTarget::Capture {
                    rates: Some(rates),
                    duration,
                    idle,
                    batch_age,
                    cache_capacity,
                    workdir,
                    ..
                },
        } => {
            anyhow::ensure!(
                !rates.is_empty() && rates.iter().all(|r| *r > 0.0),
                "--rates needs positive rates"
            );
            let report = bench::rates(bench::RatesOptions {
                rates,
                duration,
                idle,
                max_batch_age: batch_age,
                cache_capacity,
                workdir,
                kevents: kevents_binary()?,
            })
            .await?;
            report.print();
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target:
                BenchTarget::Capture {
                    backlog: Some(events),
                    fill_rate,
                    batch_age,
                    cache_capacity,
                    workdir,
                    ..
                },
        } => {
            anyhow::ensure!(
                events > 0 && fill_rate > 0.0,
                "--backlog needs events and a rate"
            );
            let report = bench::backlog(bench::BacklogOptions {
                events,
                fill_rate,
                max_batch_age: batch_age,
                cache_capacity,
                workdir,
                kevents: kevents_binary()?,
            })
            .await?;
            report.print();
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target:
                BenchTarget::Capture {
                    events,
                    rate,
                    workdir,
                    ..
                },
        } => {
            let report = bench::capture(CaptureBenchOptions {
                events,
                rate,
                workdir,
                kevents: kevents_binary()?,
            })
            .await?;
            report.print();
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target:
                BenchTarget::Peers {
                    duration,
                    rate,
                    update_ratio,
                    runs,
                    tools,
                    workdir,
                },
        } => {
            let otelcol = if tools.iter().any(|t| *t != lab_peers::Tool::Kevents) {
                Some(lab_peers::otelcol_binary()?)
            } else {
                None
            };
            let options = lab_peers::PeersOptions {
                duration,
                rate,
                update_ratio,
                runs,
                replicas: 3,
                tools,
                workdir,
                kevents: kevents_binary()?,
                otelcol,
            };
            let outcomes = lab_peers::run(&options).await?;
            lab_peers::print_table(&options, &outcomes);
            Ok(ExitCode::SUCCESS)
        }
        Command::Oracle { truth, delivered } => {
            let stored = oracle::read_truth(&truth)?;
            let files = oracle::sink_files(&delivered);
            anyhow::ensure!(
                !files.is_empty(),
                "no sink files at {}",
                delivered.display()
            );
            let (keys, unkeyed) = oracle::read_delivered(&files)
                .with_context(|| format!("reading {}", delivered.display()))?;
            let report = oracle::compare(&stored, &keys, unkeyed);
            println!(
                "stored {} delivered {} missing {} duplicated {} unexpected {} unkeyed {}",
                report.stored,
                report.delivered,
                report.missing,
                report.duplicated,
                report.unexpected,
                report.unkeyed
            );
            for (uid, rv) in &report.missing_sample {
                println!("missing uid={uid} resourceVersion={rv}");
            }
            Ok(if report.is_exact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Drill {
            scenarios,
            runs,
            replicas,
            events_per_second,
            lease_duration,
            renew_deadline,
            retry_period,
            workdir,
            nodes,
            attr_timeout,
            sink,
            kevents,
        } => {
            let sink = drill::LabSink::from_name(&sink).with_context(|| {
                format!(
                    "--sink takes {}, not {sink}",
                    drill::LabSink::NAMES.join(", ")
                )
            })?;
            let kevents = match kevents {
                Some(path) => {
                    anyhow::ensure!(path.exists(), "--kevents {} not found", path.display());
                    path
                }
                None => kevents_binary()?,
            };
            anyhow::ensure!(
                (1..=MAX_NODES).contains(&nodes),
                "--nodes takes 1 to {MAX_NODES}, not {nodes}"
            );
            anyhow::ensure!(
                nodes > 1 || attr_timeout.is_none(),
                "--attr-timeout applies to the node mounts of --nodes 2 or more"
            );
            let ground = Ground {
                nodes,
                attr_timeout: attr_timeout.unwrap_or(30),
            };
            let ground = if nodes > 1 { ground } else { Ground::single() };
            let names: Vec<String> = scenarios
                .iter()
                .flat_map(|s| match s.as_str() {
                    "all" => drill::SCENARIOS.iter().map(|s| (*s).to_owned()).collect(),
                    "long" => drill::LONG_SCENARIOS
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect(),
                    other => vec![other.to_owned()],
                })
                .collect();
            let mut failed = Vec::new();
            for name in &names {
                let mut options = DrillOptions::new(workdir.join(name), kevents.clone());
                options.runs = runs;
                options.replicas = replicas;
                options.events_per_second = events_per_second;
                options.lease_duration = lease_duration;
                options.renew_deadline = renew_deadline;
                options.retry_period = retry_period;
                options.ground = ground;
                options.sink = sink;
                let started = std::time::Instant::now();
                match drill::run(name, options).await {
                    Ok(report) => {
                        report.print();
                        if !report.passed() {
                            failed.push(name.clone());
                        }
                    }
                    Err(e) => {
                        println!("drill {name}: could not run: {e:#}\n  FAIL");
                        failed.push(name.clone());
                    }
                }
                println!("  took {:.0}s", started.elapsed().as_secs_f64());
            }
            if failed.is_empty() {
                println!("all drills passed: {}", names.join(", "));
                Ok(ExitCode::SUCCESS)
            } else {
                println!("drills failed: {}", failed.join(", "));
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Waits for Ctrl-C or SIGTERM, so servers started here (etcd, kube-apiserver, Azurite) are
/// stopped on either.
async fn interrupted() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}

/// The `kevents` next to this binary, or `$KEVENTS_BIN` (for example the static build the image
/// ships, `target/static/kevents`).
fn kevents_binary() -> anyhow::Result<PathBuf> {
    let kevents = match std::env::var_os("KEVENTS_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?.with_file_name("kevents"),
    };
    anyhow::ensure!(
        kevents.exists(),
        "{} not found: build it first (cargo build --bins)",
        kevents.display()
    );
    Ok(kevents)
}
