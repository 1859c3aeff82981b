//! `kevents-lab`: the emulators, the demo, and (later) drills and benchmarks.
//!
//! Parses arguments and hands over to the library's `emulator` and `lab` modules. The container
//! image never ships this binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kevents::{
    config::units::parse_duration,
    emulator::kube::{GeneratorConfig, KubeEmulator, KubeEmulatorConfig},
    lab::{
        apiserver::{RealApiServer, RealApiServerOptions},
        demo::{self, DemoOptions},
        drill::{self, DrillOptions},
    },
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
    /// Failover drills against real kevents processes; prints PASS/FAIL with figures.
    Drill {
        /// Scenarios (`all` for every short one).
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
            tokio::signal::ctrl_c().await?;
            emulator.shutdown().await;
            Ok(ExitCode::SUCCESS)
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
            tokio::signal::ctrl_c().await?;
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
        Command::Drill {
            scenarios,
            runs,
            replicas,
            events_per_second,
            lease_duration,
            renew_deadline,
            retry_period,
            workdir,
        } => {
            let kevents = kevents_binary()?;
            let names: Vec<String> = if scenarios.iter().any(|s| s == "all") {
                drill::SCENARIOS.iter().map(|s| (*s).to_owned()).collect()
            } else {
                scenarios
            };
            let mut failed = Vec::new();
            for name in &names {
                let mut options = DrillOptions::new(workdir.join(name), kevents.clone());
                options.runs = runs;
                options.replicas = replicas;
                options.events_per_second = events_per_second;
                options.lease_duration = lease_duration;
                options.renew_deadline = renew_deadline;
                options.retry_period = retry_period;
                let report = drill::run(name, options).await?;
                report.print();
                if !report.passed() {
                    failed.push(name.clone());
                }
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

fn kevents_binary() -> anyhow::Result<PathBuf> {
    let kevents = std::env::current_exe()?.with_file_name("kevents");
    anyhow::ensure!(
        kevents.exists(),
        "{} not found: build it first (cargo build --bins)",
        kevents.display()
    );
    Ok(kevents)
}
