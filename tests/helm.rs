//! The Helm chart (`charts/kevents`), judged like the kustomize manifests and against them:
//! `helm lint --strict`, the values schema refusing a typo, required values named when missing,
//! every rendered config accepted by `kevents check-config`, the same objects as `kubectl
//! kustomize` renders for the same settings (one truth: the base, the AKS overlay and its
//! client-secret variant, compared field by field), the alerts and the dashboard being the
//! repository's own, and, on a real kube-apiserver, a server-side dry run of every rendering and
//! the chart's `ServiceAccount` holding exactly the least-privilege grants `manifests/` holds.
//!
//! Helm is the pinned build of `scripts/helm.sh` (`make tools`); without it these tests fail,
//! never skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use kevents_testkit::apiserver::{RealApiServer, RealApiServerOptions};
use serde_yaml_ng::{Mapping, Value};
use support::{KEVENTS, at, kustomize, of_kind, one, repo, stdout_of, str_at, tool, yaml_docs};

const CHART: &str = "charts/kevents";
/// The release name and namespace every rendering uses: the names of `manifests/`.
const RELEASE: &str = "kevents";
const NAMESPACE: &str = "kevents";
/// The API group of the `ServiceMonitor` and `PrometheusRule` (prometheus-operator's CRDs).
const MONITORING: &str = "monitoring.coreos.com/v1";

/// Each values file of `charts/kevents/ci/` and the kustomization it stands for.
const EQUIVALENTS: &[(&str, &str)] = &[
    ("ci/base-values.yaml", "manifests/base"),
    ("ci/aks-values.yaml", "manifests/overlays/aks"),
    (
        "ci/aks-client-secret-values.yaml",
        "manifests/overlays/aks-client-secret",
    ),
];

/// A values file with every optional part switched on: linted and dry-run, compared with nothing.
const OPTIONS: &str = "ci/options-values.yaml";

/// Every values file of `charts/kevents/ci/`.
fn ci_files() -> Vec<&'static str> {
    let mut files: Vec<&str> = EQUIVALENTS.iter().map(|(file, _)| *file).collect();
    files.push(OPTIONS);
    let on_disk = std::fs::read_dir(repo().join(CHART).join("ci"))
        .unwrap()
        .count();
    assert_eq!(
        files.len(),
        on_disk,
        "a values file in ci/ that no test uses"
    );
    files
}

/// The pinned helm that `scripts/helm.sh` builds into `.tools/`.
fn helm_path() -> PathBuf {
    let out = Command::new(repo().join("scripts/helm.sh"))
        .arg("--path")
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/helm.sh --path failed");
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        path.is_file(),
        "helm is missing at {}: run `make tools` (or `scripts/helm.sh`) to build the pinned helm \
         into .tools/",
        path.display()
    );
    path
}

fn helm() -> Command {
    let mut command = Command::new(helm_path());
    command.current_dir(repo());
    // No user configuration, plugins or repositories leak into the tests.
    let home = std::env::temp_dir().join("kevents-helm-test-home");
    command
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"));
    command
}

/// `helm template kevents charts/kevents -n kevents` with `args`, as it ended.
fn template_output(args: &[&str]) -> Output {
    helm()
        .args(["template", RELEASE, CHART, "--namespace", NAMESPACE])
        .args(args)
        .output()
        .unwrap()
}

/// `helm template` with `args`, as YAML text; the test fails with helm's error otherwise.
fn template_text(args: &[&str]) -> String {
    let out = template_output(args);
    assert!(
        out.status.success(),
        "helm template {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn template(args: &[&str]) -> Vec<Value> {
    yaml_docs(&template_text(args))
}

/// The values file `ci/<name>` as a `-f` argument.
fn values(file: &str) -> String {
    repo().join(CHART).join(file).to_str().unwrap().to_owned()
}

/// The renderings the tests apply: the defaults (with the one required value) and each `ci/`
/// file, with the prometheus-operator objects or without.
fn renderings(monitoring: bool) -> Vec<(String, String)> {
    let mut all = vec![(
        "defaults".to_owned(),
        vec!["--set".to_owned(), "cluster.name=test".to_owned()],
    )];
    for file in ci_files() {
        all.push((file.to_owned(), vec!["-f".to_owned(), values(file)]));
    }
    all.into_iter()
        .map(|(name, mut args)| {
            if monitoring {
                args.extend(["--api-versions".to_owned(), MONITORING.to_owned()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            (name, template_text(&args))
        })
        .collect()
}

fn failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "helm succeeded where it must fail:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_pinned_helm_lints_the_chart_strictly_with_every_values_file() {
    let out = stdout_of(helm().args(["version", "--template", "{{.Version}}"]));
    let pinned = std::fs::read_to_string(repo().join("scripts/helm.sh")).unwrap();
    let version = String::from_utf8(out).unwrap();
    assert!(
        pinned.contains(&format!("HELM_VERSION:-{version}}}")),
        "helm reports {version}, not the version scripts/helm.sh pins"
    );
    let mut runs: Vec<Vec<String>> = vec![vec![]];
    for file in ci_files() {
        runs.push(vec!["-f".to_owned(), values(file)]);
    }
    for extra in runs {
        let out = helm()
            .args(["lint", "--strict", CHART])
            .args(&extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm lint --strict {extra:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_typo_in_the_values_fails_the_schema_and_names_the_key() {
    // At the top level, by --set and in a file, and inside an object.
    let out = template_output(&["--set", "cluster.name=x", "--set", "replicaCont=3"]);
    let stderr = failure(&out);
    assert!(stderr.contains("replicaCont"), "{stderr}");
    assert!(stderr.contains("schema"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.yaml");
    std::fs::write(
        &file,
        "cluster:\n  name: x\nsink: adx\nadx:\n  ingestEndpont: https://ingest-x.kusto.windows.net\n",
    )
    .unwrap();
    let out = template_output(&["-f", file.to_str().unwrap()]);
    let stderr = failure(&out);
    assert!(stderr.contains("ingestEndpont"), "{stderr}");

    // A value of the wrong kind, and one outside its set.
    let out = template_output(&["--set", "cluster.name=x", "--set", "sink=kafka"]);
    assert!(failure(&out).contains("sink"));
    let out = template_output(&[
        "--set",
        "cluster.name=x",
        "--set",
        "persistence.storageClass.mountOptions=nobrl",
    ]);
    assert!(failure(&out).contains("mountOptions"));
    // The same refusal at install time: helm install validates before it talks to a cluster.
    let out = helm()
        .args([
            "install",
            RELEASE,
            CHART,
            "--dry-run=client",
            "--namespace",
            NAMESPACE,
            "--set",
            "cluster.name=x",
            "--set",
            "replicaCont=3",
        ])
        .output()
        .unwrap();
    assert!(failure(&out).contains("replicaCont"));
}

#[test]
fn a_missing_required_value_is_named() {
    let stderr = failure(&template_output(&[]));
    assert!(stderr.contains("cluster.name is required"), "{stderr}");
    let stderr = failure(&template_output(&[
        "--set",
        "cluster.name=x",
        "--set",
        "sink=adx",
        "--set",
        "adx.ingestEndpoint=https://ingest-x.kusto.windows.net",
    ]));
    assert!(
        stderr.contains("adx.auth.workloadIdentity.clientId is required"),
        "{stderr}"
    );
    let stderr = failure(&template_output(&[
        "--set",
        "cluster.name=x",
        "--set",
        "sink=adx",
        "--set",
        "adx.auth.workloadIdentity.clientId=00000000-0000-0000-0000-000000000000",
    ]));
    assert!(
        stderr.contains("adx.ingestEndpoint is required"),
        "{stderr}"
    );
    let stderr = failure(&template_output(&[
        "--set",
        "cluster.name=x",
        "--set",
        "sink=adx",
        "--set",
        "adx.ingestEndpoint=https://ingest-x.kusto.windows.net",
        "--set",
        "adx.auth.mode=client_secret",
    ]));
    assert!(stderr.contains("adx.auth.clientSecret"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// One truth: the chart and the kustomize manifests render the same objects.

/// kustomize's `configMapGenerator` appends a content hash to a `ConfigMap`'s name (and to every
/// reference to it) so that a change rolls the pods; the chart keeps a fixed name and rolls them
/// through `checksum/*` pod annotations. The comparison drops the hash.
fn unhashed(name: &str) -> String {
    match name.rsplit_once('-') {
        Some((stem, hash))
            if hash.len() == 10 && hash.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            stem.to_owned()
        }
        _ => name.to_owned(),
    }
}

/// Labels only the chart sets: the release's identity, as Helm charts label every object, and
/// the name and `part-of` on objects the base's `labels` do not reach in kustomize (the pod
/// template, the AKS overlay's `StorageClass`): the chart labels everything alike.
const CHART_LABELS: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
];
/// Annotations only the chart sets: the claim survives `helm uninstall` (kustomize has no such
/// thing: `kubectl delete -k` deletes it), and a config change rolls the pods.
const CHART_ANNOTATIONS: &[&str] = &[
    "helm.sh/resource-policy",
    "checksum/config",
    "checksum/secret",
];

/// Removes the labels or annotations at `path` of `chart` and `kustomize`, after asserting that
/// the chart carries every one of kustomize's with the same value and no others than `extra`.
fn take_superset(
    what: &str,
    path: &[&str],
    chart: &mut Value,
    kustomize: &mut Value,
    extra: &[&str],
) {
    let take = |doc: &mut Value| -> Mapping {
        let (last, parents) = path.split_last().unwrap();
        let mut node = doc;
        for key in parents {
            match node.get_mut(*key) {
                Some(next) => node = next,
                None => return Mapping::new(),
            }
        }
        node.as_mapping_mut()
            .and_then(|m| m.remove(*last))
            .and_then(|v| v.as_mapping().cloned())
            .unwrap_or_default()
    };
    let ours = take(chart);
    let theirs = take(kustomize);
    for (key, value) in &theirs {
        assert_eq!(
            ours.get(key),
            Some(value),
            "{what}: {} {key:?} is {value:?} in kustomize",
            path.join(".")
        );
    }
    for key in ours.keys() {
        let key = key.as_str().unwrap();
        assert!(
            theirs.contains_key(key) || extra.contains(&key),
            "{what}: the chart adds {} {key:?}, which kustomize does not set",
            path.join(".")
        );
    }
}

/// (kind, name, namespace): how objects are matched.
type Key = (String, String, String);

fn key_of(doc: &Value) -> Key {
    (
        str_at(doc, "kind").unwrap().to_owned(),
        unhashed(str_at(doc, "metadata.name").unwrap()),
        str_at(doc, "metadata.namespace")
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Drops the hash from the `ConfigMap` references of a Deployment.
fn unhash_references(doc: &mut Value) {
    let Some(spec) = doc
        .get_mut("spec")
        .and_then(|s| s.get_mut("template"))
        .and_then(|t| t.get_mut("spec"))
    else {
        return;
    };
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_sequence_mut) {
        for volume in volumes {
            if let Some(name) = volume.get_mut("configMap").and_then(|c| c.get_mut("name")) {
                *name = Value::from(unhashed(name.as_str().unwrap()));
            }
        }
    }
    for container in spec
        .get_mut("containers")
        .and_then(Value::as_sequence_mut)
        .unwrap()
    {
        if let Some(sources) = container
            .get_mut("envFrom")
            .and_then(Value::as_sequence_mut)
        {
            for source in sources {
                if let Some(name) = source
                    .get_mut("configMapRef")
                    .and_then(|c| c.get_mut("name"))
                {
                    *name = Value::from(unhashed(name.as_str().unwrap()));
                }
            }
        }
    }
}

/// The chart's and kustomize's object, normalised for comparison: names without kustomize's
/// hash, labels and annotations checked (see `take_superset`) and then removed, the config file
/// parsed (its comments differ). Everything else must be equal as it is.
fn normalised(what: &str, mut chart: Value, mut kustomize: Value) -> (Value, Value) {
    for doc in [&mut chart, &mut kustomize] {
        let name = unhashed(str_at(doc, "metadata.name").unwrap());
        doc["metadata"]["name"] = Value::from(name);
        unhash_references(doc);
        if let Some(text) = doc
            .get("data")
            .and_then(|d| d.get("kevents.yaml"))
            .and_then(Value::as_str)
        {
            let parsed: Value = serde_yaml_ng::from_str(text).unwrap();
            doc["data"]["kevents.yaml"] = parsed;
        }
    }
    take_superset(
        what,
        &["metadata", "labels"],
        &mut chart,
        &mut kustomize,
        CHART_LABELS,
    );
    take_superset(
        what,
        &["metadata", "annotations"],
        &mut chart,
        &mut kustomize,
        CHART_ANNOTATIONS,
    );
    take_superset(
        what,
        &["spec", "template", "metadata", "labels"],
        &mut chart,
        &mut kustomize,
        CHART_LABELS,
    );
    take_superset(
        what,
        &["spec", "template", "metadata", "annotations"],
        &mut chart,
        &mut kustomize,
        CHART_ANNOTATIONS,
    );
    (chart, kustomize)
}

/// Objects of `manifests/` the chart does not render, and why.
fn only_in_kustomize(key: &Key) -> Option<&'static str> {
    match key.0.as_str() {
        // Helm installs into a namespace that exists or that `--create-namespace` creates; a
        // chart that also rendered it would collide with that. Label it for Pod Security
        // `restricted` as docs/operations.md says.
        "Namespace" => Some("helm install --create-namespace makes the namespace"),
        _ => None,
    }
}

#[test]
fn the_chart_renders_the_objects_of_the_kustomize_manifests_for_the_same_settings() {
    for (file, kustomization) in EQUIVALENTS {
        let what = format!("{file} vs {kustomization}");
        let chart = template(&["-f", &values(file), "--api-versions", MONITORING]);
        let ours: BTreeMap<Key, Value> = chart.into_iter().map(|d| (key_of(&d), d)).collect();
        let theirs: BTreeMap<Key, Value> = kustomize(kustomization)
            .into_iter()
            .map(|d| (key_of(&d), d))
            .collect();
        for key in theirs.keys() {
            assert!(
                ours.contains_key(key) || only_in_kustomize(key).is_some(),
                "{what}: the chart renders no {key:?}"
            );
        }
        for key in ours.keys() {
            assert!(
                theirs.contains_key(key),
                "{what}: the chart renders {key:?}, which kustomize does not"
            );
        }
        for (key, ours) in &ours {
            let (chart, kustomize) = normalised(
                &format!("{what}: {key:?}"),
                ours.clone(),
                theirs[key].clone(),
            );
            assert!(
                chart == kustomize,
                "{what}: {key:?} differs.\n--- chart (normalised)\n{}\n--- kustomize (normalised)\n{}",
                serde_yaml_ng::to_string(&chart).unwrap(),
                serde_yaml_ng::to_string(&kustomize).unwrap()
            );
        }
    }
}

#[test]
fn the_prometheus_operator_objects_follow_the_clusters_api_versions_and_their_switches() {
    let kinds = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .map(|d| str_at(d, "kind").unwrap().to_owned())
            .collect()
    };
    let without = kinds(&template(&["-f", &values("ci/aks-values.yaml")]));
    assert!(!without.contains("ServiceMonitor") && !without.contains("PrometheusRule"));
    let with = kinds(&template(&[
        "-f",
        &values("ci/aks-values.yaml"),
        "--api-versions",
        MONITORING,
    ]));
    assert!(with.contains("ServiceMonitor") && with.contains("PrometheusRule"));
    let off = kinds(&template(&[
        "-f",
        &values("ci/aks-values.yaml"),
        "--api-versions",
        MONITORING,
        "--set",
        "serviceMonitor.enabled=false",
        "--set",
        "prometheusRule.enabled=false",
    ]));
    assert!(!off.contains("ServiceMonitor") && !off.contains("PrometheusRule"));
}

#[test]
fn the_alerts_and_the_dashboard_are_the_repositorys_own() {
    for (copy, original) in [
        (
            "files/prometheusrule.yaml",
            "manifests/base/prometheusrule.yaml",
        ),
        ("files/kevents.json", "dashboards/kevents.json"),
    ] {
        assert!(
            std::fs::read(repo().join(CHART).join(copy)).unwrap()
                == std::fs::read(repo().join(original)).unwrap(),
            "{CHART}/{copy} differs from {original}: cp {original} {CHART}/{copy}"
        );
    }
    let docs = template(&[
        "--set",
        "cluster.name=x",
        "--set",
        "dashboard.enabled=true",
        "--set",
        "prometheusRule.labels.release=kube-prometheus-stack",
        "--api-versions",
        MONITORING,
    ]);
    let dashboard = of_kind(&docs, "ConfigMap")
        .into_iter()
        .find(|d| str_at(d, "metadata.name") == Some("kevents-dashboard"))
        .expect("dashboard.enabled renders the dashboard ConfigMap");
    assert_eq!(
        str_at(dashboard, "metadata.labels.grafana_dashboard"),
        Some("1")
    );
    assert_eq!(
        at(dashboard, "data")
            .and_then(|d| d.get("kevents.json"))
            .and_then(Value::as_str),
        Some(
            std::fs::read_to_string(repo().join("dashboards/kevents.json"))
                .unwrap()
                .as_str()
        )
    );
    let rule = one(&docs, "PrometheusRule");
    assert_eq!(
        str_at(rule, "metadata.labels.release"),
        Some("kube-prometheus-stack")
    );
}

// ---------------------------------------------------------------------------------------------
// What the pods would run.

/// The rendered `kevents.yaml` and the environment its `${VAR}`s expand from.
fn config_and_env(docs: &[Value]) -> (String, BTreeMap<String, String>) {
    let data = |suffix: &str| {
        of_kind(docs, "ConfigMap")
            .into_iter()
            .find(|d| str_at(d, "metadata.name") == Some(&format!("{RELEASE}-{suffix}")))
            .and_then(|d| at(d, "data"))
            .and_then(Value::as_mapping)
            .unwrap()
            .clone()
    };
    let config = data("config")
        .get("kevents.yaml")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let env = data("env")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (config, env)
}

#[test]
fn every_rendered_config_passes_check_config_and_config_keys_pass_through() {
    let mut runs: Vec<(String, Vec<String>)> = vec![(
        "defaults with a config passthrough".to_owned(),
        [
            "--set",
            "cluster.name=test",
            "--set",
            "config.source.initial_list=none",
            "--set",
            "config.shipper.max_batch_age=5s",
        ]
        .map(str::to_owned)
        .to_vec(),
    )];
    for file in ci_files() {
        runs.push((file.to_owned(), vec!["-f".to_owned(), values(file)]));
    }
    runs.push((
        "client secret from values, managed identity".to_owned(),
        [
            "-f",
            &values("ci/aks-values.yaml"),
            "--set",
            "adx.auth.mode=client_secret",
            "--set",
            "adx.auth.clientSecret.tenantId=t",
            "--set",
            "adx.auth.clientSecret.clientId=c",
            "--set",
            "adx.auth.clientSecret.clientSecret=s",
        ]
        .map(str::to_owned)
        .to_vec(),
    ));
    runs.push((
        "managed identity".to_owned(),
        [
            "-f",
            &values("ci/aks-values.yaml"),
            "--set",
            "adx.auth.mode=managed_identity",
        ]
        .map(str::to_owned)
        .to_vec(),
    ));
    for (what, args) in runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let docs = template(&args);
        let (config, env) = config_and_env(&docs);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kevents.yaml");
        std::fs::write(&path, &config).unwrap();
        let out = Command::new(KEVENTS)
            .args(["check-config", "--config"])
            .arg(&path)
            .env_clear()
            .envs(env)
            .env("POD_NAME", "kevents-0")
            .env("POD_NAMESPACE", NAMESPACE)
            .env("ADX_TENANT_ID", "tenant")
            .env("ADX_CLIENT_ID", "client")
            .env("ADX_CLIENT_SECRET", "secret")
            // What the AKS workload identity webhook injects into a labelled pod.
            .env("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
            .env("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000002")
            .env(
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            )
            .env("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: check-config refused\n{config}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let effective: Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
        if what.starts_with("defaults") {
            assert_eq!(str_at(&effective, "sink.type"), Some("stdout"));
            assert_eq!(str_at(&effective, "source.initial_list"), Some("none"));
            assert_eq!(str_at(&effective, "shipper.max_batch_age"), Some("5s"));
            // With the default shape, kevents picks the Fluent Bit setup's mapping.
            assert_eq!(str_at(&effective, "record.shape"), Some("fluent-bit"));
        }
        if what.starts_with("client secret") {
            assert!(!config.contains(": s\n"), "the secret is in the ConfigMap");
            let secret = one(&docs, "Secret");
            assert_eq!(str_at(secret, "stringData.client_secret"), Some("s"));
            let deployment = one(&docs, "Deployment");
            assert!(
                serde_yaml_ng::to_string(deployment)
                    .unwrap()
                    .contains(&format!("name: {RELEASE}-adx")),
                "the pods read the chart's Secret"
            );
        }
        if what == OPTIONS {
            // One value names the Lease in the config and in the Role.
            assert_eq!(
                str_at(&effective, "leader.lease_name"),
                Some("kevents-events")
            );
            let role = one(&docs, "Role");
            assert_eq!(
                str_at(role, "rules.1.resourceNames.0"),
                Some("kevents-events")
            );
            assert_eq!(str_at(&effective, "source.initial_list"), Some("none"));
        }
        if what == "managed identity" {
            let policy = one(&docs, "NetworkPolicy");
            assert!(
                serde_yaml_ng::to_string(policy)
                    .unwrap()
                    .contains("169.254.169.254/32"),
                "managed identity needs the instance metadata service"
            );
            let labels = at(one(&docs, "Deployment"), "spec.template.metadata.labels").unwrap();
            assert!(labels.get("azure.workload.identity/use").is_none());
        }
    }
}

#[test]
fn an_existing_claim_replaces_the_charts_own_and_the_claim_survives_uninstall() {
    let docs = template(&["--set", "cluster.name=x"]);
    let claim = one(&docs, "PersistentVolumeClaim");
    assert_eq!(
        at(claim, "metadata.annotations")
            .and_then(|a| a.get("helm.sh/resource-policy"))
            .and_then(Value::as_str),
        Some("keep")
    );
    let docs = template(&[
        "--set",
        "cluster.name=x",
        "--set",
        "persistence.existingClaim=shared-store",
    ]);
    assert!(of_kind(&docs, "PersistentVolumeClaim").is_empty());
    let volumes = at(one(&docs, "Deployment"), "spec.template.spec.volumes")
        .and_then(Value::as_sequence)
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| str_at(v, "persistentVolumeClaim.claimName") == Some("shared-store"))
    );
}

#[test]
fn the_helm_script_passes_shellcheck() {
    let out = tool("shellcheck", "apt-get install -y shellcheck (make tools)")
        .current_dir(repo())
        .args(["--external-sources", "--severity=info", "scripts/helm.sh"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// A real kube-apiserver judges the renderings and the RBAC.

fn kubectl(kubeconfig: &Path) -> Command {
    let mut command = tool("kubectl", "install kubectl (make tools)");
    command.arg("--kubeconfig").arg(kubeconfig);
    command
}

/// `kubectl apply --dry-run=server --validate=strict -o name -f -` with `yaml` on stdin.
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

fn assert_accepted(kubeconfig: &Path, what: &str, yaml: &str) {
    let out = dry_run(kubeconfig, yaml);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} was refused by kube-apiserver:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted = stdout.lines().count();
    assert_eq!(accepted, yaml_docs(yaml).len(), "{what}: {stdout}");
}

/// Installs the CRD fixtures of `tests/real_manifests.rs` and waits until they are served.
fn install_prometheus_operator_crds(kubeconfig: &Path) {
    stdout_of(
        kubectl(kubeconfig)
            .arg("apply")
            .arg("-f")
            .arg(repo().join("tests/fixtures/crds")),
    );
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
        if served.contains("servicemonitors") && served.contains("prometheusrules") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the CRDs were not served within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rendering_passes_a_server_side_dry_run_on_a_real_apiserver() {
    let server = RealApiServer::start(RealApiServerOptions::default())
        .await
        .unwrap();
    let kubeconfig = server.kubeconfig().to_owned();
    server.ensure_namespace(NAMESPACE).await.unwrap();

    // Without the CRDs the chart leaves its prometheus-operator objects out by itself …
    for (what, yaml) in renderings(false) {
        assert!(!yaml.contains("kind: ServiceMonitor"), "{what}");
        assert_accepted(&kubeconfig, &what, &yaml);
    }
    // … and a rendering that has them is refused for exactly those: the check can fail.
    let (what, yaml) = renderings(true).remove(0);
    let stderr = String::from_utf8_lossy(&dry_run(&kubeconfig, &yaml).stderr).into_owned();
    assert!(
        stderr.contains("no matches for kind \"ServiceMonitor\""),
        "{what}: {stderr}"
    );
    install_prometheus_operator_crds(&kubeconfig);
    for (what, yaml) in renderings(true) {
        assert!(yaml.contains("kind: PrometheusRule"), "{what}");
        assert_accepted(&kubeconfig, &what, &yaml);
    }
}

/// The chart's `ServiceAccount`, roles and bindings for the AKS values, nothing else.
fn rbac_of_the_chart() -> String {
    let docs = template(&["-f", &values("ci/aks-values.yaml")]);
    let kept: Vec<String> = docs
        .iter()
        .filter(|d| {
            matches!(
                str_at(d, "kind"),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .map(|d| serde_yaml_ng::to_string(d).unwrap())
        .collect();
    assert_eq!(kept.len(), 5, "a ServiceAccount, two roles, two bindings");
    kept.join("---\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_service_account_can_read_events_and_its_own_lease_and_nothing_more() {
    let server = RealApiServer::start(RealApiServerOptions::default())
        .await
        .unwrap();
    let kubeconfig = server.kubeconfig().to_owned();
    server.ensure_namespace(NAMESPACE).await.unwrap();
    server.ensure_namespace("default").await.unwrap();
    let mut child = kubectl(&kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rbac_of_the_chart().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let sa_kubeconfig = dir.path().join("kubeconfig-sa");
    server
        .write_service_account_kubeconfig(NAMESPACE, RELEASE, &sa_kubeconfig)
        .await
        .unwrap();
    // The questions tests/dual_backend.rs asks of the manifests' ServiceAccount (which also runs
    // kevents end to end with it): the same answers.
    let can_i = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&sa_kubeconfig)
            .args(["auth", "can-i"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let own = "leases/kevents";
    for (question, answer) in [
        (vec!["watch", "events", "-A"], "yes"),
        (vec!["list", "events", "-A"], "yes"),
        (vec!["get", "events", "-n", "default"], "yes"),
        (vec!["list", "events.events.k8s.io", "-A"], "yes"),
        (vec!["watch", "events.events.k8s.io", "-A"], "yes"),
        (vec!["create", "leases", "-n", NAMESPACE], "yes"),
        (vec!["get", own, "-n", NAMESPACE], "yes"),
        (vec!["update", own, "-n", NAMESPACE], "yes"),
        (vec!["watch", own, "-n", NAMESPACE], "yes"),
        (vec!["list", own, "-n", NAMESPACE], "yes"),
        (vec!["update", "leases/someone-else", "-n", NAMESPACE], "no"),
        (vec!["get", "leases/someone-else", "-n", NAMESPACE], "no"),
        (vec!["patch", own, "-n", NAMESPACE], "no"),
        (vec!["delete", own, "-n", NAMESPACE], "no"),
        (vec!["delete", "leases", "-n", NAMESPACE], "no"),
        (vec!["create", "leases", "-n", "default"], "no"),
        (vec!["update", "leases", "-n", "default"], "no"),
        (
            vec!["get", "leases/kube-controller-manager", "-n", "kube-system"],
            "no",
        ),
        (vec!["create", "events", "-n", "default"], "no"),
        (vec!["delete", "events", "-n", "default"], "no"),
        (vec!["patch", "events", "-n", "default"], "no"),
        (vec!["get", "secrets", "-n", NAMESPACE], "no"),
        (vec!["list", "secrets", "-A"], "no"),
        (vec!["list", "pods", "-A"], "no"),
        (vec!["get", "configmaps", "-n", NAMESPACE], "no"),
    ] {
        assert_eq!(can_i(&question), answer, "kubectl auth can-i {question:?}");
    }
}

/// `kubectl get <what> -n kevents -o name`, one name a line.
fn names_in_namespace(kubeconfig: &Path, what: &str) -> BTreeSet<String> {
    let out = stdout_of(kubectl(kubeconfig).args(["get", what, "-n", NAMESPACE, "-o", "name"]));
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn claim_uid(kubeconfig: &Path) -> String {
    let out = stdout_of(kubectl(kubeconfig).args([
        "get",
        "pvc",
        "kevents-store",
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.metadata.uid}",
    ]));
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_on_a_real_apiserver_and_a_reinstall_takes_the_kept_claim_over() {
    let server = RealApiServer::start(RealApiServerOptions::default())
        .await
        .unwrap();
    let kubeconfig = server.kubeconfig().to_owned();
    let helm_on = |args: &[&str]| {
        let out = helm()
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let aks = values("ci/aks-values.yaml");
    let install = [
        "install",
        RELEASE,
        CHART,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "-f",
        &aks,
    ];
    let notes = helm_on(&install);
    // The notes tell how to find the leader and the backlog; this cluster has no
    // prometheus-operator, and the chart left its objects out by itself.
    for needle in [
        "get lease kevents",
        "/status",
        "kevents_outbox_events",
        "does not serve monitoring.coreos.com/v1",
    ] {
        assert!(
            notes.contains(needle),
            "the notes lack {needle:?}:\n{notes}"
        );
    }
    let installed = names_in_namespace(&kubeconfig, "deployments,configmaps,pvc,serviceaccounts");
    for name in [
        "deployment.apps/kevents",
        "configmap/kevents-config",
        "configmap/kevents-env",
        "persistentvolumeclaim/kevents-store",
        "serviceaccount/kevents",
    ] {
        assert!(installed.contains(name), "{name} not in {installed:?}");
    }
    let uid = claim_uid(&kubeconfig);

    helm_on(&["uninstall", RELEASE, "--namespace", NAMESPACE]);
    let left = names_in_namespace(&kubeconfig, "deployments,configmaps,pvc");
    assert!(
        left.contains("persistentvolumeclaim/kevents-store"),
        "uninstall deleted the claim: {left:?}"
    );
    assert!(!left.contains("deployment.apps/kevents"), "{left:?}");
    assert!(!left.contains("configmap/kevents-config"), "{left:?}");

    // The same release name again: Helm takes the kept claim over (it carries the release's
    // annotations), and it is the same claim, store and all.
    helm_on(&install);
    assert_eq!(claim_uid(&kubeconfig), uid, "the claim was replaced");
    let status = helm_on(&["status", RELEASE, "--namespace", NAMESPACE]);
    assert!(status.contains("STATUS: deployed"), "{status}");
}
