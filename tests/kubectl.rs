//! The real `kubectl` against the Kubernetes emulator: discovery, server-side Table printing
//! (also in watches), `-o yaml` and `create -f` with kubectl's default (strict) validation.
//!
//! kubectl must be on PATH; when it is missing these tests fail with a clear message rather than
//! skip. They never sleep a fixed time; they poll with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod kube_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kevents_testkit::kube::{GeneratorConfig, KubeEmulator, KubeEmulatorConfig};
use kube::api::{Api, PostParams};
use kube_support::{eventually, legacy_event, start_with};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const DEADLINE: Duration = Duration::from_secs(20);

fn kubectl_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("kubectl was not found on PATH; install kubectl (v1.32 is expected at /usr/bin/kubectl) to run these tests"))
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(emu: &KubeEmulator, namespace: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        emu.write_kubeconfig(&kubeconfig, namespace).unwrap();
        Self {
            bin: kubectl_path(),
            cache: dir.path().join("cache"),
            kubeconfig,
            dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args);
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs kubectl to completion; panics with its stderr when it fails.
    async fn run(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(DEADLINE, self.command(args).output())
            .await
            .expect("kubectl finished in time")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

async fn emulator_with_generator() -> KubeEmulator {
    let emu = start_with(KubeEmulatorConfig {
        compaction_interval: None,
        generator: Some(GeneratorConfig {
            events_per_second: 50.0,
            update_ratio: 0.2,
            seed: 11,
            namespaces: 3,
        }),
        ..KubeEmulatorConfig::default()
    })
    .await;
    eventually(DEADLINE, "generated events", || async {
        (emu.state().stats().events_stored >= 5).then_some(())
    })
    .await;
    emu
}

#[tokio::test]
async fn kubectl_get_events_all_namespaces_prints_generated_events() {
    let emu = emulator_with_generator().await;
    let kubectl = Kubectl::new(&emu, "default");
    let some = emu.state().events().into_iter().next().unwrap();
    let out = kubectl.run(&["get", "events", "-A"]).await;
    let header = out.lines().next().unwrap();
    for col in [
        "NAMESPACE",
        "LAST SEEN",
        "TYPE",
        "REASON",
        "OBJECT",
        "MESSAGE",
    ] {
        assert!(header.contains(col), "missing column {col}: {header}");
    }
    let object = format!(
        "{}/{}",
        some.involved_object.kind.as_deref().unwrap().to_lowercase(),
        some.involved_object.name.as_deref().unwrap()
    );
    assert!(out.contains(&object), "{object} not in:\n{out}");
    let wide = kubectl.run(&["get", "events", "-A", "-o", "wide"]).await;
    assert!(wide.lines().next().unwrap().contains("COUNT"));
    assert!(wide.contains(some.metadata.name.as_deref().unwrap()));
}

#[tokio::test]
async fn kubectl_get_events_watch_sees_a_newly_created_event() {
    let emu = emulator_with_generator().await;
    emu.state().set_generator(None);
    let kubectl = Kubectl::new(&emu, "default");
    let mut child = kubectl
        .command(&["get", "events", "-A", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The initial list is printed first.
    let header = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("kubectl prints")
        .unwrap()
        .unwrap();
    assert!(header.contains("LAST SEEN"), "{header}");
    // Wait until kubectl's watch is open, then create an event it must show.
    eventually(DEADLINE, "kubectl's watch", || async {
        (emu.state().stats().open_watches >= 1).then_some(())
    })
    .await;
    let mut e = legacy_event("ns-watch", "watched-event");
    e.message = Some("hello from the kubectl watch test".into());
    emu.state().create_event(e).unwrap();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("hello from the kubectl watch test") {
                return line;
            }
        }
        panic!("kubectl --watch ended without showing the event");
    })
    .await
    .expect("kubectl --watch shows the new event in time");
    assert!(found.starts_with("ns-watch"), "{found}");
    assert!(found.contains("pod/watched-event-pod"), "{found}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn kubectl_get_lease_yaml_shows_the_holder() {
    let emu = start_with(KubeEmulatorConfig {
        compaction_interval: None,
        ..KubeEmulatorConfig::default()
    })
    .await;
    let api: Api<Lease> = Api::namespaced(emu.client(), "kevents");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("kevents-leader".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("kevents-7f9c-abcde".into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }),
    };
    api.create(&PostParams::default(), &lease).await.unwrap();
    let kubectl = Kubectl::new(&emu, "default");
    let out = kubectl
        .run(&["get", "lease", "-n", "kevents", "-o", "yaml"])
        .await;
    assert!(out.contains("holderIdentity: kevents-7f9c-abcde"), "{out}");
    assert!(out.contains("kind: Lease"), "{out}");
    let table = kubectl.run(&["get", "lease", "-n", "kevents"]).await;
    assert!(table.lines().next().unwrap().contains("HOLDER"), "{table}");
    assert!(table.contains("kevents-7f9c-abcde"), "{table}");
    let namespaces = kubectl.run(&["get", "namespaces"]).await;
    assert!(
        namespaces
            .lines()
            .any(|l| l.starts_with("kevents ") && l.contains("Active")),
        "{namespaces}"
    );
    let missing = kubectl
        .command(&["get", "lease", "-n", "kevents", "nope"])
        .output()
        .await
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("leases.coordination.k8s.io \"nope\" not found"),
        "{stderr}"
    );
}

#[tokio::test]
async fn kubectl_create_f_of_an_event_manifest_is_visible_through_the_api_and_in_ground_truth() {
    let emu = start_with(KubeEmulatorConfig {
        compaction_interval: None,
        ..KubeEmulatorConfig::default()
    })
    .await;
    let kubectl = Kubectl::new(&emu, "team-a");
    let manifest = kubectl.write(
        "event.yaml",
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: deploy-started.1\ninvolvedObject:\n  kind: Deployment\n  name: web\n  namespace: team-a\nreason: DeployStarted\nmessage: rollout began\ntype: Normal\nfirstTimestamp: \"2025-06-01T12:00:00+02:00\"\nlastTimestamp: \"2025-06-01T12:00:00+02:00\"\ncount: 1\nsource:\n  component: deployer\n",
    );
    let out = kubectl.run(&["create", "-f", path_str(&manifest)]).await;
    assert!(out.contains("event/deploy-started.1 created"), "{out}");
    let api: Api<Event> = Api::namespaced(emu.client(), "team-a");
    let got = api.get("deploy-started.1").await.unwrap();
    assert_eq!(got.reason.as_deref(), Some("DeployStarted"));
    assert_eq!(
        got.first_timestamp.unwrap().0.to_string(),
        "2025-06-01T10:00:00Z"
    );
    let uid = got.metadata.uid.unwrap();
    assert!(
        emu.state()
            .ground_truth(None)
            .iter()
            .any(|g| g.uid == uid && g.name == "deploy-started.1")
    );

    // kubectl's strict validation is done by the server: unknown fields are rejected.
    let bad = kubectl.write("bad.yaml", "apiVersion: v1\nkind: Event\nmetadata:\n  name: bad\ninvolvedObject:\n  kind: Pod\n  name: p\n  namespace: team-a\nbogusField: 1\n");
    let out = kubectl
        .command(&["create", "-f", path_str(&bad)])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field \"bogusField\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
