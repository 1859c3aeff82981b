//! Azurite, the real Azure Storage emulator (npm), as a child process on random loopback ports
//! with in-memory persistence: what the ADX emulator's blob containers and queues live in.
//!
//! Owns finding the pinned install (`.tools/azurite`, put there by `scripts/azurite.sh`, or
//! `$AZURITE_BIN`), starting it, learning its ports from its start-up lines, and stopping it by
//! pid (SIGTERM, then SIGKILL after a grace: it may ignore SIGTERM). It must never skip silently:
//! a missing install is an error that says how to install it.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use reqwest::Url;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

/// Azurite's well-known development account.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development account key (public, documented; not a secret).
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Start-up budget (node start plus three listeners; a loaded 2-core machine has taken over
/// 30 s).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// SIGTERM grace before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Why Azurite could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not installed where expected.
    #[error(
        "Azurite is not installed at {path}: run `make azurite` (scripts/azurite.sh installs the pinned version into .tools/azurite), or set AZURITE_BIN"
    )]
    NotInstalled {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The process could not be spawned.
    #[error("starting Azurite ({path}) failed")]
    Spawn {
        /// The executable.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It did not report its listeners in time, or exited.
    #[error("Azurite did not start within {timeout:?}; its output: {output}")]
    Start {
        /// The budget.
        timeout: Duration,
        /// What it printed.
        output: String,
    },
}

/// A running Azurite.
#[derive(Debug)]
pub struct Azurite {
    child: Option<Child>,
    workdir: PathBuf,
    /// `http://127.0.0.1:PORT` of the blob service.
    pub blob_endpoint: Url,
    /// `http://127.0.0.1:PORT` of the queue service.
    pub queue_endpoint: Url,
    /// `http://127.0.0.1:PORT` of the table service.
    pub table_endpoint: Url,
}

impl Azurite {
    /// The Azurite executable: `$AZURITE_BIN`, else `.tools/azurite/node_modules/.bin/azurite` in
    /// the source tree.
    #[must_use]
    pub fn executable() -> PathBuf {
        std::env::var_os("AZURITE_BIN").map_or_else(
            || crate::repo_root().join(".tools/azurite/node_modules/.bin/azurite"),
            PathBuf::from,
        )
    }

    /// Starts Azurite on random loopback ports, in memory.
    ///
    /// # Errors
    /// [`Error::NotInstalled`] when the executable is missing; otherwise spawn or start-up
    /// failures.
    pub async fn start() -> Result<Self, Error> {
        let path = Self::executable();
        if !path.exists() {
            return Err(Error::NotInstalled { path });
        }
        let workdir = std::env::temp_dir().join(format!(
            "kevents-azurite-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&workdir).map_err(|source| Error::Spawn {
            path: path.clone(),
            source,
        })?;
        let mut child = Command::new(&path)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--queueHost",
                "127.0.0.1",
                "--tableHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--queuePort",
                "0",
                "--tablePort",
                "0",
                "--inMemoryPersistence",
                "--extentMemoryLimit",
                "2048",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
            ])
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn {
                path: path.clone(),
                source,
            })?;
        let mut output = String::new();
        let (mut blob, mut queue, mut table) = (None, None, None);
        let deadline = Instant::now() + START_TIMEOUT;
        if let Some(stdout) = child.stdout.take() {
            let mut lines = BufReader::new(stdout).lines();
            while blob.is_none() || queue.is_none() || table.is_none() {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(remaining, lines.next_line()).await {
                    Ok(Ok(Some(line))) => {
                        output.push_str(&line);
                        output.push('\n');
                        if let Some(url) = listening_url(&line, "Blob") {
                            blob = Some(url);
                        } else if let Some(url) = listening_url(&line, "Queue") {
                            queue = Some(url);
                        } else if let Some(url) = listening_url(&line, "Table") {
                            table = Some(url);
                        }
                    }
                    _ => break,
                }
            }
            // Keep draining, so a full pipe never blocks it.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        }
        if let Some(stderr) = child.stderr.take() {
            let mut lines = BufReader::new(stderr).lines();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        }
        let (Some(blob_endpoint), Some(queue_endpoint), Some(table_endpoint)) =
            (blob, queue, table)
        else {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let _ = std::fs::remove_dir_all(&workdir);
            return Err(Error::Start {
                timeout: START_TIMEOUT,
                output,
            });
        };
        let azurite = Self {
            child: Some(child),
            workdir,
            blob_endpoint,
            queue_endpoint,
            table_endpoint,
        };
        tracing::info!(
            blob = %azurite.blob_endpoint,
            queue = %azurite.queue_endpoint,
            table = %azurite.table_endpoint,
            pid = ?azurite.pid(),
            "Azurite started"
        );
        Ok(azurite)
    }

    /// The process id while running.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGTERM, then SIGKILL if it is still there after a grace; removes its directory.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
                let deadline = Instant::now() + STOP_GRACE;
                while Instant::now() < deadline {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if !matches!(child.try_wait(), Ok(Some(_))) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            let _ = child.start_kill();
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `http://127.0.0.1:PORT` from "Azurite {service} service is successfully listening at …".
fn listening_url(line: &str, service: &str) -> Option<Url> {
    let marker = format!("Azurite {service} service is successfully listening at ");
    let rest = line.split(&marker).nth(1)?;
    Url::parse(rest.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_the_start_up_lines() {
        let line = "Azurite Queue service is successfully listening at http://127.0.0.1:40531";
        assert_eq!(
            listening_url(line, "Queue").unwrap().as_str(),
            "http://127.0.0.1:40531/"
        );
        assert!(listening_url(line, "Blob").is_none());
    }
}
