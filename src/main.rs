//! The `kevents` command: `run`, `check-config`, `dead list|replay`, `--version`.
//!
//! Parses arguments, loads the config, initialises telemetry, hands over to `app::run`, and maps
//! the outcome to an exit code (2 for configuration errors). Nothing else lives here.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use kevents::{
    app::{self, RunOptions},
    config::{Config, Environment},
    dead::cli::DeadCommand,
    shutdown, telemetry,
};

/// Async worker threads.
const WORKER_THREADS: usize = 2;
/// Threads for blocking store and file I/O (capture, shipper, maintenance, sink).
const BLOCKING_THREADS: usize = 4;

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

/// Highly available Kubernetes events collector for Azure Data Explorer.
#[derive(Debug, Parser)]
#[command(name = "kevents", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the collector.
    Run {
        /// Config file.
        #[arg(long, env = "KEVENTS_CONFIG")]
        config: PathBuf,
        /// Kubeconfig file (default: in-cluster config, then KUBECONFIG / ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Validate a config file and print the effective config with secrets redacted.
    CheckConfig {
        /// Config file.
        #[arg(long, env = "KEVENTS_CONFIG")]
        config: PathBuf,
    },
    /// Inspect and replay dead batches (batches the sink rejected for good).
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
}

fn main() -> ExitCode {
    let Args { command } = Args::parse();
    match command {
        Command::CheckConfig { config } => match Config::load(&config, &Environment::process())
            .and_then(|loaded| loaded.to_redacted_yaml())
        {
            Ok(effective) => {
                print!("{effective}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("kevents: invalid config {}: {error}", config.display());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Dead { command } => {
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| Ok(runtime.block_on(kevents::dead::cli::run(command))?));
            match outcome {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("kevents: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config, kubeconfig } => {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            tune_glibc_malloc();
            let path = config;
            let config = match Config::load(&path, &Environment::process()) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("kevents: invalid config {}: {error}", path.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            telemetry::init_tracing(&config.log);
            match run(config, RunOptions { kubeconfig }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "kevents stopped with an error"
                    );
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// glibc's malloc settings for a long-running collector, read from the environment at start.
///
/// By default glibc gives busy threads arenas of their own (up to 8 per core), each keeping what
/// was freed, and after a large buffer (a batch payload) is freed it raises its mmap threshold
/// so later large buffers come from, and fragment, those arenas: resident memory then grows
/// with the events that passed through. Two arenas and a fixed 256 KiB threshold keep it flat
/// (the static musl build the image ships is not affected).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const GLIBC_MALLOC: [(&str, &str); 2] = [
    ("MALLOC_ARENA_MAX", "2"),
    ("MALLOC_MMAP_THRESHOLD_", "262144"),
];

/// Re-executes this process with [`GLIBC_MALLOC`] set, unless the environment already sets any
/// of them (an operator's choice wins). `exec` keeps the pid, arguments and open files.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_glibc_malloc() {
    use std::os::unix::process::CommandExt as _;
    if GLIBC_MALLOC
        .iter()
        .any(|(name, _)| std::env::var_os(name).is_some())
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // Only returns if the exec failed: then run untuned.
    let error = command.args(args).envs(GLIBC_MALLOC).exec();
    eprintln!("kevents: running with glibc's default malloc settings: re-exec failed: {error}");
}

fn run(config: Config, options: RunOptions) -> anyhow::Result<()> {
    // Few threads on purpose: the pipeline is one leader doing group commits; every extra
    // blocking thread costs an allocator arena of resident memory.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let token = shutdown::install()?;
        app::run(config, options, token).await
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Args::command().debug_assert();
    }
}
