//! The `kevents-lab` command line: `oracle` compares delivered rows with the ground truth and
//! fails on a duplicate or a gap.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::{path::Path, process::Command};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_lab_oracle_passes_exact_delivery_and_fails_on_a_duplicate_or_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let truth = write(
        dir.path(),
        "truth.ndjson",
        "{\"uid\":\"a\",\"resourceVersion\":\"1\"}\n{\"uid\":\"a\",\"resourceVersion\":\"2\"}\n",
    );
    let sink = dir.path().join("events.ndjson");
    let oracle = |delivered: &str| {
        std::fs::write(&sink, delivered).unwrap();
        Command::new(env!("CARGO_BIN_EXE_kevents-lab"))
            .args(["oracle", "--truth"])
            .arg(&truth)
            .arg("--delivered")
            .arg(&sink)
            .output()
            .unwrap()
    };
    let row = |rv: &str| format!("{{\"Uid\":\"a\",\"ResourceVersion\":\"{rv}\"}}\n");

    let exact = oracle(&(row("1") + &row("2")));
    assert!(exact.status.success(), "{exact:?}");
    assert!(String::from_utf8_lossy(&exact.stdout).contains("missing 0 duplicated 0"));

    let duplicate = oracle(&(row("1") + &row("2") + &row("2")));
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stdout).contains("duplicated 1"));

    let gap = oracle(&row("1"));
    assert!(!gap.status.success());
    assert!(String::from_utf8_lossy(&gap.stdout).contains("missing uid=a resourceVersion=2"));
}
