//! Turns SIGTERM/SIGINT into a cancellation token; a second signal aborts the process.
//!
//! Owns signal handling only. It never waits for tasks itself: `app` decides how long a graceful
//! shutdown may take.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit code after a second signal cut a graceful shutdown short (128 + SIGINT, as shells do).
pub const ABORT_EXIT_CODE: i32 = 130;

/// Starts listening for SIGTERM and SIGINT. The returned token is cancelled on the first signal;
/// the second signal exits the process at once with [`ABORT_EXIT_CODE`].
///
/// # Errors
/// Fails if the signal handlers cannot be installed.
pub fn install() -> std::io::Result<CancellationToken> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = first, "Received signal; shutting down gracefully");
        cancel.cancel();
        let second = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = second, "Received a second signal; aborting");
        std::process::exit(ABORT_EXIT_CODE);
    });
    Ok(token)
}
