//! The `kevents` command line as a user meets it: `--version`, `check-config` exit codes and
//! messages, and `run` serving its admin endpoints until SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use support::{KEVENTS, http_get, start_follower};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check_config(path: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(KEVENTS);
    command
        .args(["check-config", "--config"])
        .arg(path)
        .env_remove("CLUSTER")
        .env_remove("REGION")
        .env_remove("ENVIRONMENT");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[test]
fn version_prints_the_package_version() {
    let out = Command::new(KEVENTS).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kevents {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_the_example_and_prints_the_effective_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kevents.yaml");
    let out = check_config(
        &example,
        &[
            ("CLUSTER", "aks-prod"),
            ("REGION", "westeurope"),
            ("POD_NAME", "kevents-0"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("name: aks-prod"), "{stdout}");
    assert!(stdout.contains("region: westeurope"), "{stdout}");
    assert!(stdout.contains("lease_duration: 15s"), "{stdout}");
    assert!(stdout.contains("identity: kevents-0-"), "{stdout}");
}

#[test]
fn check_config_rejects_a_misspelt_key_with_exit_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.yaml",
        "cluster:\n  name: a\nadmin:\n  lisen: 0.0.0.0:1\n",
    );
    let out = check_config(&path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("admin.lisen"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn check_config_rejects_an_unset_variable_with_exit_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "env.yaml",
        "cluster:\n  name: ${KEVENTS_TEST_UNSET_CLUSTER}\n",
    );
    let out = check_config(&path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("KEVENTS_TEST_UNSET_CLUSTER"), "{stderr}");
    assert!(stderr.contains("cluster.name"), "{stderr}");
}

#[test]
fn check_config_names_a_missing_file() {
    let out = check_config(Path::new("/nonexistent/kevents.yaml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kevents.yaml"));
}

#[test]
fn run_serves_admin_endpoints_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_follower(dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    let livez = loop {
        if let Some(answer) = http_get(&addr, "/livez") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "admin server never answered on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(livez.0, 200);
    let (code, metrics) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("kevents_build_info{version=\""),
        "{metrics}"
    );
    let (code, status) = http_get(&addr, "/status").unwrap();
    assert_eq!(code, 200);
    assert!(status.contains("\"version\""), "{status}");
    assert_eq!(http_get(&addr, "/readyz").unwrap().0, 200);
    // The glibc build re-executes itself (same pid) with flat-memory malloc settings.
    if cfg!(target_env = "gnu") {
        let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        for setting in ["MALLOC_ARENA_MAX=2", "MALLOC_MMAP_THRESHOLD_=262144"] {
            assert!(
                environ.split('\0').any(|v| v == setting),
                "{setting} not in {environ:?}"
            );
        }
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "kevents did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
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
