//! The operator docs against the product: every key of the effective config is in the config
//! reference with its default, every alert has a troubleshooting section, every metric is in the
//! operations guide, and relative links resolve.

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
};

use serde_yaml_ng::Value;
use support::{KEVENTS, at, duration, repo, stdout_of, str_at};

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Leaf keys (scalars and lists) of a YAML mapping, dotted.
fn leaves(value: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                let key = key.as_str().unwrap();
                let path = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(child, &path, out);
            }
        }
        leaf => {
            out.insert(prefix.to_owned(), leaf.clone());
        }
    }
}

/// `kevents check-config` of a config text, as dotted leaf keys.
fn effective(text: &str, env: &[(&str, &str)]) -> BTreeMap<String, Value> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kevents.yaml");
    std::fs::write(&path, text).unwrap();
    let out = stdout_of(
        Command::new(KEVENTS)
            .args(["check-config", "--config"])
            .arg(&path)
            .env_clear()
            .env("CLUSTER", "docs")
            .env("POD_NAME", "kevents-0")
            .envs(env.iter().copied()),
    );
    let value: Value = serde_yaml_ng::from_slice(&out).unwrap();
    let mut keys = BTreeMap::new();
    leaves(&value, "", &mut keys);
    keys
}

/// The effective config of `examples/kevents.yaml`, which sets every key to its default.
fn effective_example() -> BTreeMap<String, Value> {
    effective(&read("examples/kevents.yaml"), &[])
}

/// The example switched to `sink.type: adx`, once per auth mode (each prints its own `auth`
/// keys), merged. Only ids and the secret are filled in; everything else keeps its default.
fn effective_adx_example() -> BTreeMap<String, Value> {
    let example = read("examples/kevents.yaml");
    let mut merged = BTreeMap::new();
    for mode in [
        "workload_identity",
        "client_secret",
        "managed_identity",
        "none",
    ] {
        let text: String = example
            .lines()
            .map(|line| match line.trim_start() {
                l if l.starts_with("type: file") => "  type: adx".to_owned(),
                l if l.starts_with("mode: workload_identity") => format!("      mode: {mode}"),
                l if l.starts_with("tenant_id: null") => "      tenant_id: tenant".to_owned(),
                l if l.starts_with("client_id: null") => "      client_id: client".to_owned(),
                l if l.starts_with("client_secret: null") => "      client_secret: secret".to_owned(),
                _ => line.to_owned(),
            } + "\n")
            .collect();
        let keys = effective(
            &text,
            &[(
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            )],
        );
        assert_eq!(
            keys.get("sink.adx.auth.mode").and_then(Value::as_str),
            Some(mode)
        );
        merged.extend(keys.into_iter().filter(|(k, _)| k.starts_with("sink.adx.")));
    }
    assert!(merged.len() > 20, "{merged:?}");
    merged
}

/// `| `key` | default | meaning |` rows of the config reference: key → default cell.
fn documented() -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    for line in read("docs/configuration.md").lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = rest.split(" | ").collect();
        let key = cells[0].trim_end_matches('`').to_owned();
        assert!(cells.len() >= 3, "row of {key} has a default and a meaning");
        assert!(
            rows.insert(key.clone(), cells[1].trim().to_owned())
                .is_none(),
            "{key} twice"
        );
    }
    rows
}

/// A default cell that is one literal in backticks.
fn literal(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then_some(inner)
}

fn looks_like_duration(text: &str) -> bool {
    !text.is_empty()
        && text.starts_with(|c: char| c.is_ascii_digit())
        && text.ends_with(['s', 'm', 'h'])
        && !text.ends_with("iB")
}

fn same_default(documented: &str, effective: &Value) -> bool {
    let parsed: Value = serde_yaml_ng::from_str(documented).unwrap();
    match (&parsed, effective) {
        (Value::String(a), Value::String(b))
            if looks_like_duration(a) && looks_like_duration(b) =>
        {
            duration(a) == duration(b)
        }
        _ => &parsed == effective,
    }
}

#[test]
fn every_effective_config_key_is_documented_with_its_default() {
    let example = effective_example();
    let mut effective = example.clone();
    effective.extend(effective_adx_example());
    let documented = documented();
    let missing: Vec<&String> = effective
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:?}"
    );
    let unknown: Vec<&String> = documented
        .keys()
        .filter(|k| !effective.contains_key(*k))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents keys kevents does not have: {unknown:?}"
    );
    let mut checked = 0;
    for (key, cell) in &documented {
        let (Some(text), Some(value)) = (literal(cell), effective.get(key)) else {
            continue;
        };
        assert!(
            same_default(text, value),
            "{key}: documented default `{text}`, effective {value:?}"
        );
        checked += 1;
    }
    assert!(checked > 50, "only {checked} defaults compared");
    // The defaults the example relies on are the real defaults: an empty config gives the same.
    let dir = tempfile::tempdir().unwrap();
    let minimal = dir.path().join("kevents.yaml");
    std::fs::write(
        &minimal,
        "cluster:\n  name: docs\nsink:\n  type: file\n  file:\n    path: /var/lib/kevents/events.ndjson\n",
    )
    .unwrap();
    let out = stdout_of(
        Command::new(KEVENTS)
            .args(["check-config", "--config"])
            .arg(&minimal)
            .env_clear()
            .env("POD_NAME", "kevents-0"),
    );
    let mut defaults = BTreeMap::new();
    leaves(&serde_yaml_ng::from_slice(&out).unwrap(), "", &mut defaults);
    for (key, value) in &example {
        if key.starts_with("cluster.") || key == "leader.identity" {
            continue;
        }
        assert_eq!(
            defaults.get(key),
            Some(value),
            "{key}: examples/kevents.yaml is not the default"
        );
    }
}

#[test]
fn every_alert_has_a_troubleshooting_section() {
    let rules: Value =
        serde_yaml_ng::from_str(&read("manifests/base/prometheusrule.yaml")).unwrap();
    let troubleshooting = read("docs/troubleshooting.md");
    let headings: BTreeSet<String> = troubleshooting
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let groups = at(&rules, "spec.groups")
        .and_then(Value::as_sequence)
        .unwrap();
    let mut alerts = 0;
    for rule in groups
        .iter()
        .flat_map(|g| g.get("rules").and_then(Value::as_sequence).unwrap())
    {
        let alert = str_at(rule, "alert").unwrap();
        let runbook = str_at(rule, "annotations.runbook").unwrap();
        assert_eq!(
            runbook,
            format!("docs/troubleshooting.md#{}", alert.to_lowercase()),
            "{alert}"
        );
        assert!(
            headings.contains(&alert.to_lowercase()),
            "docs/troubleshooting.md has no `### {alert}`"
        );
        alerts += 1;
    }
    assert!(alerts >= 6);
}

#[test]
fn every_metric_is_in_the_operations_guide() {
    let source = read("src/telemetry/metrics.rs");
    let guide = read("docs/operations.md");
    let names: BTreeSet<&str> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("kevents_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    assert!(names.len() > 20, "{names:?}");
    for name in names {
        assert!(
            guide.contains(&format!("`{name}")),
            "docs/operations.md does not describe {name}"
        );
    }
}

#[test]
fn relative_links_in_the_docs_resolve() {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| {
            std::path::Path::new(f)
                .extension()
                .is_some_and(|e| e == "md")
        })
        .collect();
    files.push("chaos/README.md".to_owned());
    for file in files {
        let text = read(&file);
        let dir = repo().join(&file).parent().unwrap().to_owned();
        for (i, _) in text.match_indices("](") {
            let target = &text[i + 2..];
            let target = &target[..target.find(')').unwrap()];
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let path = target.split('#').next().unwrap();
            assert!(dir.join(path).exists(), "{file}: broken link {target}");
        }
    }
}
