//! The Kubernetes manifests as a cluster would receive them: every overlay rendered with
//! `kubectl kustomize`, then the Deployment's security context, probes and identity, the RBAC
//! verbs (exactly what the elector and the source use), each overlay's storage and auth, each
//! rendered config accepted by `kevents check-config`, the alerts checked and unit-tested by
//! promtool, and every metric the alerts and the dashboard name exported by a live kevents.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::Duration,
};

use serde_yaml_ng::Value;
use support::{
    KEVENTS, at, duration, kustomize, live_metric_names, named, of_kind, one, promql_metric_names,
    promtool, promtool_check_exprs, repo, str_at,
};

/// Every kustomization a user or a drill applies.
const OVERLAYS: &[&str] = &[
    "manifests/base",
    "manifests/overlays/aks",
    "manifests/overlays/aks-client-secret",
    "manifests/overlays/kind",
    "chaos/kind/overlay",
];

/// Where the shared volume is mounted; the store and file sink must live below it.
const VOLUME_MOUNT: &str = "/var/lib/kevents";

fn deployment(docs: &[Value]) -> &Value {
    named(docs, "Deployment", "kevents")
}

fn container(docs: &[Value]) -> &Value {
    let containers = at(deployment(docs), "spec.template.spec.containers")
        .and_then(Value::as_sequence)
        .unwrap();
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The `ConfigMap` the Deployment mounts at `/etc/kevents`, and its `kevents.yaml`.
fn config_text(docs: &[Value]) -> String {
    let volumes = at(deployment(docs), "spec.template.spec.volumes")
        .and_then(Value::as_sequence)
        .unwrap();
    let name = volumes
        .iter()
        .find(|v| str_at(v, "name") == Some("config"))
        .and_then(|v| str_at(v, "configMap.name"))
        .unwrap();
    at(named(docs, "ConfigMap", name), "data")
        .and_then(|data| data.get("kevents.yaml"))
        .and_then(Value::as_str)
        .unwrap()
        .to_owned()
}

/// The environment the config is expanded with: the `kevents-env` `ConfigMap` (`envFrom`).
fn config_env(docs: &[Value]) -> BTreeMap<String, String> {
    let from = at(container(docs), "envFrom.0.configMapRef.name")
        .and_then(Value::as_str)
        .unwrap();
    at(named(docs, "ConfigMap", from), "data")
        .and_then(Value::as_mapping)
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn rendered_config(docs: &[Value]) -> Value {
    serde_yaml_ng::from_str(&config_text(docs)).unwrap()
}

fn strings(value: Option<&Value>) -> BTreeSet<String> {
    value
        .and_then(Value::as_sequence)
        .map(|s| s.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn every_overlay_renders_with_kubectl_kustomize() {
    for overlay in OVERLAYS {
        let docs = kustomize(overlay);
        let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| str_at(d, "kind")).collect();
        for kind in [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "NetworkPolicy",
        ] {
            assert!(kinds.contains(kind), "{overlay} renders no {kind}");
        }
        for doc in &docs {
            let kind = str_at(doc, "kind").unwrap();
            let cluster_scoped = matches!(
                kind,
                "Namespace"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
                    | "StorageClass"
                    | "PersistentVolume"
            );
            assert_eq!(
                str_at(doc, "metadata.namespace").is_some(),
                !cluster_scoped,
                "{overlay}: {kind} {:?} namespace",
                str_at(doc, "metadata.name")
            );
            if !cluster_scoped {
                assert_eq!(
                    str_at(doc, "metadata.namespace"),
                    Some("kevents"),
                    "{overlay}: {kind}"
                );
            }
        }
    }
    let base = kustomize("manifests/base");
    assert!(!of_kind(&base, "ServiceMonitor").is_empty());
    assert!(!of_kind(&base, "PrometheusRule").is_empty());
    // kind has no prometheus-operator CRDs.
    let kind = kustomize("manifests/overlays/kind");
    assert!(of_kind(&kind, "ServiceMonitor").is_empty());
    assert!(of_kind(&kind, "PrometheusRule").is_empty());
}

#[test]
fn the_deployment_runs_as_65534_read_only_without_capabilities_or_privilege_escalation() {
    for overlay in OVERLAYS {
        let docs = kustomize(overlay);
        let pod = at(deployment(&docs), "spec.template.spec").unwrap();
        let c = container(&docs);
        let context = |path: &str| at(c, &format!("securityContext.{path}"));
        assert_eq!(
            at(pod, "securityContext.runAsNonRoot"),
            Some(&Value::Bool(true)),
            "{overlay}"
        );
        assert_eq!(
            at(pod, "securityContext.runAsUser").and_then(Value::as_u64),
            Some(65534),
            "{overlay}"
        );
        assert_eq!(
            str_at(pod, "securityContext.seccompProfile.type"),
            Some("RuntimeDefault"),
            "{overlay}"
        );
        assert_eq!(
            context("runAsNonRoot"),
            Some(&Value::Bool(true)),
            "{overlay}"
        );
        assert_eq!(
            context("runAsUser").and_then(Value::as_u64),
            Some(65534),
            "{overlay}"
        );
        assert_eq!(
            context("runAsGroup").and_then(Value::as_u64),
            Some(65534),
            "{overlay}"
        );
        assert_eq!(
            context("readOnlyRootFilesystem"),
            Some(&Value::Bool(true)),
            "{overlay}"
        );
        assert_eq!(
            context("allowPrivilegeEscalation"),
            Some(&Value::Bool(false)),
            "{overlay}"
        );
        assert_ne!(context("privileged"), Some(&Value::Bool(true)), "{overlay}");
        assert_eq!(
            strings(context("capabilities.drop")),
            BTreeSet::from(["ALL".to_owned()]),
            "{overlay}"
        );
        assert!(
            context("capabilities.add").is_none(),
            "{overlay} adds capabilities"
        );
        assert_eq!(
            str_at(c, "securityContext.seccompProfile.type"),
            Some("RuntimeDefault"),
            "{overlay}"
        );
        assert!(
            at(pod, "hostNetwork").is_none() && at(pod, "hostPID").is_none(),
            "{overlay}"
        );
        for volume in at(pod, "volumes").and_then(Value::as_sequence).unwrap() {
            assert!(
                volume.get("hostPath").is_none(),
                "{overlay}: a pod must not mount a hostPath"
            );
        }
        // As in the seed: not evicted for lower-value pods.
        assert_eq!(
            str_at(pod, "priorityClassName"),
            Some("system-cluster-critical"),
            "{overlay}"
        );
    }
}

#[test]
fn the_deployment_is_three_spread_replicas_rolling_one_at_a_time_with_a_disruption_budget() {
    for overlay in OVERLAYS {
        let docs = kustomize(overlay);
        let d = deployment(&docs);
        assert_eq!(
            at(d, "spec.replicas").and_then(Value::as_u64),
            Some(3),
            "{overlay}"
        );
        assert_eq!(
            str_at(d, "spec.strategy.type"),
            Some("RollingUpdate"),
            "{overlay}"
        );
        assert_eq!(
            at(d, "spec.strategy.rollingUpdate.maxUnavailable").and_then(Value::as_u64),
            Some(0),
            "{overlay}"
        );
        let pod_labels = at(d, "spec.template.metadata.labels").unwrap();
        let selector = at(d, "spec.selector.matchLabels")
            .and_then(Value::as_mapping)
            .unwrap();
        for (k, v) in selector {
            assert_eq!(
                pod_labels.get(k.as_str().unwrap()),
                Some(v),
                "{overlay}: selector matches the pods"
            );
        }
        let spread = at(d, "spec.template.spec.topologySpreadConstraints")
            .and_then(Value::as_sequence)
            .unwrap();
        assert!(
            spread
                .iter()
                .any(|c| str_at(c, "topologyKey") == Some("kubernetes.io/hostname")),
            "{overlay}"
        );
        assert!(
            at(d, "spec.template.spec.affinity.podAntiAffinity").is_some(),
            "{overlay}"
        );
        let pdb = one(&docs, "PodDisruptionBudget");
        assert_eq!(
            at(pdb, "spec.maxUnavailable").and_then(Value::as_u64),
            Some(1),
            "{overlay}"
        );
        assert_eq!(
            at(pdb, "spec.selector.matchLabels").and_then(Value::as_mapping),
            Some(selector),
            "{overlay}"
        );
    }
}

#[test]
fn probes_hit_livez_and_readyz_on_the_admin_port_and_the_pod_knows_its_name_and_namespace() {
    for overlay in OVERLAYS {
        let docs = kustomize(overlay);
        let c = container(&docs);
        let config = rendered_config(&docs);
        let listen = str_at(&config, "admin.listen").unwrap_or("0.0.0.0:9102");
        let admin_port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
        let ports = at(c, "ports").and_then(Value::as_sequence).unwrap();
        let port_of = |name: &Value| -> u64 {
            name.as_u64().unwrap_or_else(|| {
                ports
                    .iter()
                    .find(|p| p.get("name") == Some(name))
                    .and_then(|p| at(p, "containerPort"))
                    .and_then(Value::as_u64)
                    .unwrap()
            })
        };
        for (probe, path) in [
            ("livenessProbe", "/livez"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/livez"),
        ] {
            assert_eq!(
                str_at(c, &format!("{probe}.httpGet.path")),
                Some(path),
                "{overlay}: {probe}"
            );
            assert_eq!(
                port_of(at(c, &format!("{probe}.httpGet.port")).unwrap()),
                admin_port,
                "{overlay}: {probe}"
            );
        }
        let env = at(c, "env").and_then(Value::as_sequence).unwrap();
        let field = |name: &str| {
            env.iter()
                .find(|e| str_at(e, "name") == Some(name))
                .and_then(|e| str_at(e, "valueFrom.fieldRef.fieldPath"))
        };
        assert_eq!(field("POD_NAME"), Some("metadata.name"), "{overlay}");
        assert_eq!(
            field("POD_NAMESPACE"),
            Some("metadata.namespace"),
            "{overlay}"
        );
        assert!(
            at(c, "resources.requests.cpu").is_some() && at(c, "resources.limits.memory").is_some(),
            "{overlay}"
        );
        assert_eq!(
            str_at(deployment(&docs), "spec.template.spec.serviceAccountName"),
            Some("kevents"),
            "{overlay}"
        );
        // The Service and the NetworkPolicy serve the same port.
        let service = one(&docs, "Service");
        assert_eq!(
            at(service, "spec.ports.0.port").and_then(Value::as_u64),
            Some(admin_port),
            "{overlay}"
        );
        let policy = named(&docs, "NetworkPolicy", "kevents");
        assert_eq!(
            at(policy, "spec.ingress.0.ports.0.port").and_then(Value::as_u64),
            Some(admin_port),
            "{overlay}"
        );
        let egress: BTreeSet<u64> = at(policy, "spec.egress")
            .and_then(Value::as_sequence)
            .unwrap()
            .iter()
            .flat_map(|rule| {
                rule.get("ports")
                    .and_then(Value::as_sequence)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|p| p.get("port").and_then(Value::as_u64))
            .collect();
        assert_eq!(
            egress,
            BTreeSet::from([53, 443, 6443]),
            "{overlay}: DNS, API server, HTTPS"
        );
    }
}

#[test]
fn the_grace_period_covers_the_shutdown_and_the_store_lives_on_the_shared_volume() {
    for overlay in OVERLAYS {
        let docs = kustomize(overlay);
        let config = rendered_config(&docs);
        let grace = duration(str_at(&config, "shutdown.grace_period").unwrap_or("25s"));
        let termination = at(
            deployment(&docs),
            "spec.template.spec.terminationGracePeriodSeconds",
        )
        .and_then(Value::as_u64)
        .unwrap();
        assert!(
            Duration::from_secs(termination) >= grace + Duration::from_secs(10),
            "{overlay}: terminationGracePeriodSeconds {termination} leaves no margin over shutdown.grace_period {grace:?}"
        );
        let mounts = at(container(&docs), "volumeMounts")
            .and_then(Value::as_sequence)
            .unwrap();
        let store_mount = mounts
            .iter()
            .find(|m| str_at(m, "name") == Some("store"))
            .unwrap();
        assert_eq!(
            str_at(store_mount, "mountPath"),
            Some(VOLUME_MOUNT),
            "{overlay}"
        );
        let store = str_at(&config, "store.path").unwrap_or("/var/lib/kevents/store");
        assert!(
            store.starts_with(&format!("{VOLUME_MOUNT}/")),
            "{overlay}: store.path {store}"
        );
        if let Some(path) = str_at(&config, "sink.file.path") {
            assert!(
                path.starts_with(&format!("{VOLUME_MOUNT}/")),
                "{overlay}: sink.file.path {path}"
            );
        }
        let claim = one(&docs, "PersistentVolumeClaim");
        assert_eq!(
            strings(at(claim, "spec.accessModes")),
            BTreeSet::from(["ReadWriteMany".to_owned()]),
            "{overlay}"
        );
        assert_eq!(
            str_at(
                at(deployment(&docs), "spec.template.spec.volumes")
                    .unwrap()
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|v| str_at(v, "name") == Some("store"))
                    .unwrap(),
                "persistentVolumeClaim.claimName"
            ),
            str_at(claim, "metadata.name"),
            "{overlay}"
        );
    }
}

/// (apiGroup, resource) → verbs.
type Grants = BTreeMap<(String, String), BTreeSet<String>>;
/// (verbs, resourceNames) of each rule.
type Named = Vec<(BTreeSet<String>, BTreeSet<String>)>;

/// The grants of a role, and the `resourceNames` of each rule.
fn rules(role: &Value) -> (Grants, Named) {
    let mut verbs = Grants::new();
    let mut names = Vec::new();
    for rule in at(role, "rules").and_then(Value::as_sequence).unwrap() {
        let rule_verbs = strings(rule.get("verbs"));
        for group in strings(rule.get("apiGroups")) {
            for resource in strings(rule.get("resources")) {
                verbs
                    .entry((group.clone(), resource))
                    .or_default()
                    .extend(rule_verbs.iter().cloned());
            }
        }
        names.push((rule_verbs, strings(rule.get("resourceNames"))));
    }
    (verbs, names)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn rbac_grants_exactly_event_reads_cluster_wide_and_its_own_lease_in_its_namespace() {
    for overlay in OVERLAYS {
        let docs = kustomize(overlay);
        let cluster_role = one(&docs, "ClusterRole");
        let (verbs, _) = rules(cluster_role);
        assert_eq!(
            verbs,
            BTreeMap::from([
                (
                    (String::new(), "events".to_owned()),
                    set(&["get", "list", "watch"])
                ),
                (
                    ("events.k8s.io".to_owned(), "events".to_owned()),
                    set(&["get", "list", "watch"])
                ),
            ]),
            "{overlay}: the ClusterRole"
        );
        // The elector GETs the Lease, POSTs it on 404, PUTs it, and watches it by name.
        let role = one(&docs, "Role");
        assert_eq!(
            str_at(role, "metadata.namespace"),
            Some("kevents"),
            "{overlay}"
        );
        let (verbs, names) = rules(role);
        assert_eq!(
            verbs,
            BTreeMap::from([(
                ("coordination.k8s.io".to_owned(), "leases".to_owned()),
                set(&["get", "create", "update", "watch", "list"])
            )]),
            "{overlay}: the Role"
        );
        let lease = str_at(&rendered_config(&docs), "leader.lease_name")
            .unwrap_or("kevents")
            .to_owned();
        for (rule_verbs, rule_names) in names {
            if rule_verbs == set(&["create"]) {
                assert!(
                    rule_names.is_empty(),
                    "{overlay}: create cannot be limited by name"
                );
            } else {
                assert_eq!(
                    rule_names,
                    BTreeSet::from([lease.clone()]),
                    "{overlay}: {rule_verbs:?} limited to the Lease"
                );
            }
        }
        for (binding, role_kind, role) in [
            (
                one(&docs, "ClusterRoleBinding"),
                "ClusterRole",
                cluster_role,
            ),
            (one(&docs, "RoleBinding"), "Role", one(&docs, "Role")),
        ] {
            assert_eq!(
                str_at(binding, "roleRef.kind"),
                Some(role_kind),
                "{overlay}"
            );
            assert_eq!(
                str_at(binding, "roleRef.name"),
                str_at(role, "metadata.name"),
                "{overlay}"
            );
            let subjects = at(binding, "subjects")
                .and_then(Value::as_sequence)
                .unwrap();
            assert_eq!(subjects.len(), 1, "{overlay}");
            assert_eq!(
                str_at(&subjects[0], "kind"),
                Some("ServiceAccount"),
                "{overlay}"
            );
            assert_eq!(str_at(&subjects[0], "name"), Some("kevents"), "{overlay}");
            assert_eq!(
                str_at(&subjects[0], "namespace"),
                Some("kevents"),
                "{overlay}"
            );
        }
    }
}

#[test]
fn the_aks_overlay_keeps_the_seeds_nobrl_azure_files_share_and_uses_workload_identity() {
    let docs = kustomize("manifests/overlays/aks");
    let class = one(&docs, "StorageClass");
    assert_eq!(str_at(class, "provisioner"), Some("file.csi.azure.com"));
    let options = strings(at(class, "mountOptions"));
    for option in [
        "nobrl",
        "mfsymlinks",
        "actimeo=30",
        "nosharesock",
        "uid=65534",
        "gid=65534",
    ] {
        assert!(options.contains(option), "mount option {option}");
    }
    let claim = one(&docs, "PersistentVolumeClaim");
    assert_eq!(
        str_at(claim, "spec.storageClassName"),
        str_at(class, "metadata.name")
    );
    let d = deployment(&docs);
    let labels = at(d, "spec.template.metadata.labels").unwrap();
    assert_eq!(
        labels
            .get("azure.workload.identity/use")
            .and_then(Value::as_str),
        Some("true")
    );
    let account = one(&docs, "ServiceAccount");
    assert!(
        at(account, "metadata.annotations")
            .unwrap()
            .get("azure.workload.identity/client-id")
            .is_some()
    );
    let config = rendered_config(&docs);
    assert_eq!(str_at(&config, "sink.type"), Some("adx"));
    assert_eq!(
        str_at(&config, "sink.adx.auth.mode"),
        Some("workload_identity")
    );
    // The seed's table and mapping, unchanged.
    assert_eq!(str_at(&config, "record.shape"), Some("fluent-bit"));
    assert_eq!(str_at(&config, "sink.adx.table"), Some("KubeEvents"));
    assert_eq!(
        str_at(&config, "sink.adx.mapping"),
        Some("FluentBitMappingEvents")
    );

    let docs = kustomize("manifests/overlays/aks-client-secret");
    let d = deployment(&docs);
    let labels = at(d, "spec.template.metadata.labels").unwrap();
    assert!(labels.get("azure.workload.identity/use").is_none());
    assert!(
        at(one(&docs, "ServiceAccount"), "metadata.annotations")
            .and_then(|a| a.get("azure.workload.identity/client-id"))
            .is_none()
    );
    let env = at(container(&docs), "env")
        .and_then(Value::as_sequence)
        .unwrap();
    for (var, key) in [
        ("ADX_TENANT_ID", "tenant_id"),
        ("ADX_CLIENT_ID", "client_id"),
        ("ADX_CLIENT_SECRET", "client_secret"),
    ] {
        let entry = env
            .iter()
            .find(|e| str_at(e, "name") == Some(var))
            .unwrap_or_else(|| panic!("{var}"));
        assert_eq!(
            str_at(entry, "valueFrom.secretKeyRef.name"),
            Some("azuredataexplorer")
        );
        assert_eq!(str_at(entry, "valueFrom.secretKeyRef.key"), Some(key));
    }
    let config = rendered_config(&docs);
    assert_eq!(str_at(&config, "sink.adx.auth.mode"), Some("client_secret"));
    assert_eq!(
        str_at(&config, "sink.adx.auth.client_secret"),
        Some("${ADX_CLIENT_SECRET}")
    );
}

#[test]
fn the_kind_overlay_shares_one_host_directory_across_nodes_and_writes_a_file_sink() {
    for overlay in ["manifests/overlays/kind", "chaos/kind/overlay"] {
        let docs = kustomize(overlay);
        let volume = one(&docs, "PersistentVolume");
        assert_eq!(
            str_at(volume, "spec.hostPath.path"),
            Some("/kevents-shared"),
            "{overlay}"
        );
        assert!(strings(at(volume, "spec.accessModes")).contains("ReadWriteMany"));
        let claim = one(&docs, "PersistentVolumeClaim");
        assert_eq!(
            str_at(claim, "spec.volumeName"),
            str_at(volume, "metadata.name"),
            "{overlay}"
        );
        assert_eq!(
            str_at(claim, "spec.storageClassName"),
            str_at(volume, "spec.storageClassName"),
            "{overlay}"
        );
        let config = rendered_config(&docs);
        assert_eq!(str_at(&config, "sink.type"), Some("file"), "{overlay}");
        // The oracle keys delivered rows by (Uid, ResourceVersion).
        assert_eq!(
            strings(at(&config, "record.extra_columns")),
            set(&["Uid", "ResourceVersion"]),
            "{overlay}"
        );
    }
    let drill = kustomize("chaos/kind/overlay");
    let isolated = named(&drill, "NetworkPolicy", "kevents-drill-isolated");
    let egress_ports: BTreeSet<u64> = at(isolated, "spec.egress.0.ports")
        .and_then(Value::as_sequence)
        .unwrap()
        .iter()
        .filter_map(|p| p.get("port").and_then(Value::as_u64))
        .collect();
    assert_eq!(
        egress_ports,
        BTreeSet::from([53]),
        "an isolated pod reaches DNS only"
    );
    let regular = named(&drill, "NetworkPolicy", "kevents");
    assert_eq!(
        str_at(regular, "spec.podSelector.matchExpressions.0.key"),
        Some("kevents.drill/isolated")
    );
    assert_eq!(
        str_at(regular, "spec.podSelector.matchExpressions.0.operator"),
        Some("DoesNotExist")
    );
    assert!(str_at(&rendered_config(&drill), "diagnostics.fence_log").is_some());
}

#[test]
fn every_rendered_config_passes_check_config() {
    for overlay in OVERLAYS {
        let docs = kustomize(overlay);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kevents.yaml");
        std::fs::write(&path, config_text(&docs)).unwrap();
        let out = Command::new(KEVENTS)
            .args(["check-config", "--config"])
            .arg(&path)
            .env_clear()
            .envs(config_env(&docs))
            .env("POD_NAME", "kevents-0")
            .env("POD_NAMESPACE", "kevents")
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
        let stderr = String::from_utf8_lossy(&out.stderr);
        let sink = str_at(&rendered_config(&docs), "sink.type")
            .unwrap()
            .to_owned();
        assert!(
            out.status.success(),
            "{overlay}: check-config failed:\n{stderr}"
        );
        let effective: Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("\"secret\"")
                && !String::from_utf8_lossy(&out.stdout).contains(": secret"),
            "{overlay}: the client secret is printed"
        );
        if sink == "adx" {
            // The Fluent Bit setup's table and mapping, through queued ingestion.
            assert_eq!(
                str_at(&effective, "sink.adx.table"),
                Some("KubeEvents"),
                "{overlay}"
            );
            assert_eq!(
                str_at(&effective, "sink.adx.mapping"),
                Some("FluentBitMappingEvents"),
                "{overlay}"
            );
            assert_eq!(
                str_at(&effective, "sink.adx.mode"),
                Some("queued"),
                "{overlay}"
            );
        }
        assert_eq!(
            str_at(&effective, "sink.type"),
            Some(sink.as_str()),
            "{overlay}"
        );
        assert_eq!(
            str_at(&effective, "log.format"),
            Some("json"),
            "{overlay}: JSON logs in clusters"
        );
        assert!(
            str_at(&effective, "leader.identity")
                .unwrap()
                .starts_with("kevents-0-"),
            "{overlay}"
        );
        assert_ne!(str_at(&effective, "cluster.name"), Some(""), "{overlay}");
    }
}

fn rule_spec() -> Value {
    at(one(&kustomize("manifests/base"), "PrometheusRule"), "spec")
        .unwrap()
        .clone()
}

fn alert_exprs(spec: &Value) -> Vec<(String, String)> {
    at(spec, "groups")
        .and_then(Value::as_sequence)
        .unwrap()
        .iter()
        .flat_map(|g| {
            g.get("rules")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap()
        })
        .map(|r| {
            (
                str_at(&r, "alert").unwrap().to_owned(),
                str_at(&r, "expr").unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_alerts_pass_promtool_check_and_their_unit_tests() {
    let spec = rule_spec();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_yaml_ng::to_string(&spec).unwrap()).unwrap();
    promtool(&["check", "rules"], &rules);

    let mut stripped = spec.clone();
    for group in stripped
        .get_mut("groups")
        .and_then(Value::as_sequence_mut)
        .unwrap()
    {
        for rule in group
            .get_mut("rules")
            .and_then(Value::as_sequence_mut)
            .unwrap()
        {
            rule.as_mapping_mut().unwrap().remove("annotations");
        }
    }
    std::fs::write(&rules, serde_yaml_ng::to_string(&stripped).unwrap()).unwrap();
    let tests = dir.path().join("alerts-test.yaml");
    std::fs::copy(repo().join("manifests/alerts-test.yaml"), &tests).unwrap();
    promtool(&["test", "rules"], &tests);

    let names: BTreeSet<String> = alert_exprs(&spec)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for required in [
        "KeventsNoLeader",
        "KeventsBacklogGrowing",
        "KeventsDeadBatches",
        "KeventsIngestionFailing",
        "KeventsCaptureGap",
        "KeventsRestarting",
        "KeventsAdxIngestionFailures",
    ] {
        assert!(names.contains(required), "alert {required}");
    }
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("dashboards/kevents.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(
                target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$namespace", "kevents")
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "1h"),
            );
        }
    }
    assert!(exprs.len() > 20, "the dashboard has its queries");
    exprs
}

#[test]
fn the_dashboard_queries_parse() {
    promtool_check_exprs(&dashboard_exprs());
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_name_is_exported_by_a_live_kevents() {
    let live = live_metric_names();
    assert!(live.contains("kevents_leader"), "{live:?}");
    let mut exprs: Vec<(String, String)> = alert_exprs(&rule_spec());
    exprs.extend(
        dashboard_exprs()
            .into_iter()
            .map(|e| ("dashboard".to_owned(), e)),
    );
    for (name, expr) in exprs {
        let used = promql_metric_names(&expr);
        assert!(!used.is_empty(), "{name}: no metric found in {expr}");
        for metric in used {
            assert!(
                live.contains(&metric),
                "{name}: {metric} is not exported by kevents ({expr})"
            );
        }
    }
}

#[test]
fn promql_names_skip_functions_labels_ranges_and_keywords() {
    let names = |expr: &str| promql_metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (namespace, le) (rate(a_total{outcome=~"x|y", pod!="b"}[5m] offset 1m)) / on (pod) group_left (x) b and c > 0.5 unless absent(d) or vector(1)"#
        ),
        ["a_total", "b", "c", "d"]
    );
    assert_eq!(
        names("histogram_quantile(0.99, sum(rate(x_bucket[1m])) by (le)) > 1e3"),
        ["x_bucket"]
    );
    assert_eq!(
        names("sum by (namespace) (kevents_leader) < 1"),
        ["kevents_leader"]
    );
}
