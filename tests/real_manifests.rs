//! The manifests as a real kube-apiserver + etcd (built by `make kube-binaries`; these tests fail,
//! never skip, when the binaries are missing) judges them: `kubectl apply --dry-run=server` of the
//! base and of every overlay in `manifests/overlays/`, after installing minimal
//! prometheus-operator CRDs (`tests/fixtures/crds/`) for the `ServiceMonitor` and `PrometheusRule`.
//! A server-side dry run goes through defaulting, schema and strict field validation and admission,
//! and stores nothing. `tests/manifests.rs` checks what the rendered objects say; this checks that
//! a cluster accepts them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use kevents_testkit::apiserver::{RealApiServer, RealApiServerOptions};
use support::{kustomize_text, repo, stdout_of, tool, yaml_docs};

/// The base and every overlay directory, found on disk so a new overlay is checked too.
fn kustomizations() -> Vec<String> {
    let mut dirs = vec!["manifests/base".to_owned()];
    let mut overlays: Vec<String> = std::fs::read_dir(repo().join("manifests/overlays"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("kustomization.yaml").is_file())
        .map(|path| {
            format!(
                "manifests/overlays/{}",
                path.file_name().unwrap().to_str().unwrap()
            )
        })
        .collect();
    overlays.sort();
    assert!(
        overlays.len() >= 3,
        "expected the aks, aks-client-secret and kind overlays, found {overlays:?}"
    );
    dirs.extend(overlays);
    dirs
}

fn kubectl(kubeconfig: &Path) -> Command {
    let mut command = tool("kubectl", "install kubectl (make tools)");
    command.arg("--kubeconfig").arg(kubeconfig);
    command
}

/// The names of the objects in a multi-document YAML text, in order.
fn names(yaml: &str) -> Vec<String> {
    yaml_docs(yaml)
        .iter()
        .map(|doc| doc["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `kubectl apply --dry-run=server -o name -f -` with `yaml` on stdin (strict field validation).
fn dry_run(kubeconfig: &Path, yaml: &str) -> Output {
    let mut child = kubectl(kubeconfig)
        .args([
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-o",
            "name",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Asserts that the server accepted every object of `yaml` in a dry run.
fn assert_accepted(kubeconfig: &Path, dir: &str, yaml: &str) {
    let out = dry_run(kubeconfig, yaml);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{dir} was refused by kube-apiserver:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `-o name` prints `<resource>.<group>/<name>` for each object the server accepted.
    let mut accepted: Vec<String> = stdout
        .lines()
        .map(|line| line.rsplit('/').next().unwrap().to_owned())
        .collect();
    let mut rendered = names(yaml);
    accepted.sort();
    rendered.sort();
    assert_eq!(accepted, rendered, "{dir}: {stdout}");
}

/// Installs the CRD fixtures and waits until kubectl's discovery serves both kinds.
fn install_prometheus_operator_crds(kubeconfig: &Path) {
    let crds = repo().join("tests/fixtures/crds");
    stdout_of(kubectl(kubeconfig).arg("apply").arg("-f").arg(&crds));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = kubectl(kubeconfig)
            .args([
                "api-resources",
                "--api-group=monitoring.coreos.com",
                "-o",
                "name",
            ])
            .output()
            .unwrap();
        let served = String::from_utf8_lossy(&out.stdout);
        if served.contains("servicemonitors.monitoring.coreos.com")
            && served.contains("prometheusrules.monitoring.coreos.com")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the CRDs were not served within 60 s: {served} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_overlay_passes_a_server_side_dry_run_on_a_real_apiserver() {
    let server = RealApiServer::start(RealApiServerOptions::default())
        .await
        .unwrap();
    let kubeconfig = server.kubeconfig().to_owned();
    // Admission (NamespaceLifecycle) refuses objects in a namespace that does not exist, and a
    // dry run of the Namespace in the same apply does not create it; `kubectl apply -k` on a
    // cluster creates it first in the same way.
    server.ensure_namespace("kevents").await.unwrap();
    let dirs = kustomizations();
    let rendered: Vec<(String, String)> = dirs
        .iter()
        .map(|d| (d.clone(), kustomize_text(d)))
        .collect();

    // Without the prometheus-operator CRDs, the kind overlay (which drops its two objects) is
    // accepted, and the others are refused for exactly those kinds: the check can fail.
    for (dir, yaml) in &rendered {
        if yaml.contains("kind: ServiceMonitor") {
            let out = dry_run(&kubeconfig, yaml);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{dir} passed without the CRDs");
            assert!(
                stderr.contains("no matches for kind \"ServiceMonitor\""),
                "{dir}: {stderr}"
            );
        } else {
            assert_accepted(&kubeconfig, dir, yaml);
        }
    }

    install_prometheus_operator_crds(&kubeconfig);
    for (dir, yaml) in &rendered {
        assert_accepted(&kubeconfig, dir, yaml);
    }

    // A dry run stores nothing.
    let out = stdout_of(kubectl(&kubeconfig).args([
        "get",
        "deployments,configmaps,servicemonitors,prometheusrules",
        "-n",
        "kevents",
        "-o",
        "name",
    ]));
    let left: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        // The root CA ConfigMap is published into every namespace by the controller manager,
        // which this control plane does not run; nothing else may be there.
        .filter(|line| *line != "configmap/kube-root-ca.crt")
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "a dry run stored {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_side_dry_run_refuses_unknown_fields_and_an_unnamed_rule_group() {
    let server = RealApiServer::start(RealApiServerOptions::default())
        .await
        .unwrap();
    let kubeconfig = server.kubeconfig().to_owned();
    server.ensure_namespace("kevents").await.unwrap();
    install_prometheus_operator_crds(&kubeconfig);
    let base = kustomize_text("manifests/base");
    assert_accepted(&kubeconfig, "manifests/base", &base);

    // A typo in the Deployment: strict field validation names it.
    let typo = base.replacen("  replicas: ", "  replica: ", 1);
    assert_ne!(typo, base, "the base Deployment sets spec.replicas");
    let out = dry_run(&kubeconfig, &typo);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a typo passed");
    assert!(
        stderr.contains("unknown field \"spec.replica\""),
        "{stderr}"
    );

    // The CRD fixtures' schemas are enforced: an unknown rule field, an unnamed rule group.
    let no_expr = base.replacen("expr: ", "exp: ", 1);
    assert_ne!(no_expr, base);
    let out = dry_run(&kubeconfig, &no_expr);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a rule without expr passed");
    assert!(
        stderr.contains("unknown field \"spec.groups[0].rules[0].exp\""),
        "{stderr}"
    );
    let unnamed = base.replacen("- name: kevents.leadership", "- name: \"\"", 1);
    assert_ne!(unnamed, base);
    let out = dry_run(&kubeconfig, &unnamed);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unnamed rule group passed");
    assert!(
        stderr.contains("spec.groups[0].name") && stderr.contains("at least 1 chars long"),
        "{stderr}"
    );
}
