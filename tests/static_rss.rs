//! How much memory the static build the image ships (`target/static/kevents`, built by
//! `make static` / scripts/static-build.sh) takes to open a store.
//!
//! The first use of a sled store in a process allocates sled's metrics histograms, ~20 MiB in all.
//! They stay out of RSS only while they come from a zeroed allocation, whose pages nobody touches
//! (sled's `miri_optimizations` feature, see Cargo.toml). A build that writes those zeros instead
//! adds the ~20 MiB to every leader: the fat-LTO and `opt-level = "s"` builds of
//! docs/cost-at-low-rates.md did. This binary runs no other child, so the peak RSS of its children
//! is that of the static build opening a store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use nix::sys::resource::{UsageWho, getrusage};
use support::{repo, store_with_one_event};

/// The bound on the static build's peak RSS while it lists a one-event store offline. The build
/// of docs/cost-at-low-rates.md ("A smaller executable") peaks at ~14 MiB, most of it the
/// executable's own pages; touched histograms add ~16 MiB more (30.4 MiB measured).
const PEAK_RSS_BOUND_KIB: i64 = 20 * 1024;

#[test]
fn the_amd64_static_binary_opens_a_store_without_touching_sled_s_histograms() {
    let binary = repo().join("target/static/kevents");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `make static` (scripts/static-build.sh)",
        binary.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let config = dir.path().join("kevents.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster:\n  name: t\nsink:\n  type: stdout\nstore:\n  path: {}\n",
            root.display()
        ),
    )
    .unwrap();

    drop(store_with_one_event(&root));

    // sled's threads let go of the lock shortly after the store is dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(&binary)
            .args(["dead", "list", "--offline", "--config"])
            .arg(&config)
            .env_clear()
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("dead tree is empty"), "{stdout}");
            break;
        }
        assert!(
            stderr.contains("in use") && Instant::now() < deadline,
            "{stderr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // ru_maxrss is in KiB on Linux: the largest peak RSS of the children waited for.
    let peak = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap().max_rss();
    assert!(
        peak > 1024,
        "a peak RSS of {peak} KiB cannot be the static build's: is getrusage counting it?"
    );
    assert!(
        peak < PEAK_RSS_BOUND_KIB,
        "target/static/kevents peaked at {} MiB listing a one-event store (bound {} MiB): a build \
         setting made it touch memory it only allocates, such as sled's metrics histograms \
         (Cargo.toml, sled's `miri_optimizations`)",
        peak / 1024,
        PEAK_RSS_BOUND_KIB / 1024
    );
}
