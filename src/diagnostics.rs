//! Drill aids. The fence log: while its lease is current, the leader appends a line per interval
//! to a file, checking the fence right before every write exactly like the pipeline's side effects.
//!
//! Owns only that file. It must never write without checking [`Fence::is_current`] first.

use std::{path::PathBuf, time::Duration};

use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

use crate::fence::Fence;

/// Appends `<unix_ms> <identity> <epoch>` to `path` every `interval` while `fence` is current,
/// until `stop` is cancelled or the fence goes stale.
///
/// # Errors
/// Fails if the file cannot be opened or written.
pub async fn fence_log(
    path: PathBuf,
    interval: Duration,
    identity: String,
    fence: Fence,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await?;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        // The fence check sits right before the write: nothing may run in between.
        if !fence.is_current() {
            tracing::info!(
                epoch = fence.epoch(),
                "Fence is stale; fence log stops writing"
            );
            return Ok(());
        }
        let line = format!(
            "{} {identity} {}\n",
            jiff::Timestamp::now().as_millisecond(),
            fence.epoch()
        );
        file.write_all(line.as_bytes()).await?;
        file.flush().await?;
    }
}
