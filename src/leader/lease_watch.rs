//! The Lease watch: wakes the elector on every change of its Lease, so a follower observes a
//! renewal or a release at once instead of at its next poll.
//!
//! Best effort only: it never decides anything about leadership (the elector's reads and writes
//! do), and an error here only delays wake-ups.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::WatchParams};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Server-side timeout of the follower's watch on the Lease.
const LEASE_WATCH_TIMEOUT_SECS: u32 = 120;

/// Watches the Lease and wakes the elector on every change, so a follower observes a renewal or
/// a release at once instead of at its next poll. Best effort: errors only delay the wake-ups.
pub async fn watch_lease(
    leases: Api<Lease>,
    name: String,
    wake: Arc<Notify>,
    retry: Duration,
    stop: CancellationToken,
) {
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(LEASE_WATCH_TIMEOUT_SECS);
    loop {
        let session = async {
            let stream = leases.watch(&params, "0").await?;
            let mut stream = stream.boxed();
            while let Some(_event) = stream.try_next().await? {
                wake.notify_one();
            }
            Ok::<(), kube::Error>(())
        };
        tokio::select! {
            () = stop.cancelled() => return,
            result = session => {
                if let Err(error) = result {
                    tracing::debug!(%error, "Lease watch ended; polling continues");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }
}
