//! The `kevents` command line as a user meets it: `--version`, `check-config` exit codes and
//! messages, `run` serving its admin endpoints until SIGTERM, and `dead list|replay`.

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

use support::{AlwaysCurrent, KEVENTS, free_port, http_get, start_follower, store_with_one_event};

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

fn kevents(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(KEVENTS)
        .args(args)
        .env_remove("KEVENTS_ADMIN_URL")
        .env_remove("KEVENTS_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dead_list_names_a_missing_endpoint_and_a_replica_that_is_not_the_leader() {
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let (code, _, stderr) = kevents(&["dead", "list", "--admin", &nowhere]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("no kevents admin endpoint at {nowhere}/dead")),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_follower(dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(&addr, "/livez").is_none() {
        assert!(Instant::now() < deadline, "admin server never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin = format!("http://{addr}");
    let (code, stdout, stderr) = kevents(&["dead", "list", "--admin", &admin]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("answered 503"), "{stderr}");
    assert!(
        stderr.contains(
            "this replica is not the leader; ask the leader (GET /status shows the holder)"
        ),
        "{stderr}"
    );
    let (code, _, stderr) = kevents(&["dead", "replay", "--all", "--admin", &admin]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not the leader"), "{stderr}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn dead_replay_needs_ids_or_all_and_says_there_is_no_offline_replay() {
    let (code, _, stderr) = kevents(&["dead", "replay"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, help, _) = kevents(&["dead", "replay", "--help"]);
    assert_eq!(code, Some(0));
    assert!(help.contains("There is no offline replay"), "{help}");
    assert!(help.contains("--id <ID>"), "{help}");
}

#[test]
fn dead_list_offline_reads_a_stopped_store_and_refuses_one_in_use() {
    use kevents::store::{BatchRecord, EventStore as _};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let config = write(
        dir.path(),
        "kevents.yaml",
        &format!(
            "cluster:\n  name: t\nsink:\n  type: stdout\nstore:\n  path: {}\n",
            root.display()
        ),
    );
    let config = config.to_str().unwrap();

    let (code, _, stderr) = kevents(&["dead", "list", "--offline", "--config", config]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no store under"), "{stderr}");

    let store = store_with_one_event(&root);
    let batch = BatchRecord {
        id: BatchRecord::id_for("cafe", 0, 0),
        first: 0,
        last: 0,
        events: 1,
        bytes: 13,
        epoch: 1,
        created_ms: 0,
    };
    store.record_batch(&batch, &AlwaysCurrent).unwrap();
    store
        .dead_batch(&batch, "400 Bad Request: no such column", 0, &AlwaysCurrent)
        .unwrap();

    // Held open by this process, as a running leader holds it.
    let (code, _, stderr) = kevents(&["dead", "list", "--offline", "--config", config]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("is in use by a running kevents"),
        "{stderr}"
    );
    assert!(stderr.contains("--admin"), "{stderr}");

    drop(store);
    let deadline = Instant::now() + Duration::from_secs(10);
    let stdout = loop {
        let (code, stdout, stderr) =
            kevents(&["dead", "list", "--offline", "--payload", "--config", config]);
        if code == Some(0) {
            break stdout;
        }
        // sled's threads let go of the lock shortly after the store is dropped.
        assert!(
            stderr.contains("in use") && Instant::now() < deadline,
            "{stderr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let rows: Vec<&str> = stdout.lines().collect();
    assert!(rows[0].starts_with("ID"), "{stdout}");
    assert!(rows[1].starts_with(&batch.id), "{stdout}");
    assert!(rows[1].contains("1970-01-01T00:00:00Z"), "{stdout}");
    assert!(
        rows[1].contains("400 Bad Request: no such column"),
        "{stdout}"
    );
    assert!(stdout.contains("(read offline)"), "{stdout}");
    assert!(stdout.ends_with("{\"Uid\":\"u1\"}\n"), "{stdout}");
}
