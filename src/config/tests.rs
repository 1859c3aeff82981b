use std::time::Duration;

use super::*;

fn env_with(vars: &'static [(&'static str, &'static str)]) -> Environment<'static> {
    Environment {
        var: Box::leak(Box::new(move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })),
        pod_namespace: &|| None,
        identity_suffix: "x7k2q".to_owned(),
    }
}

const MINIMAL: &str = "cluster:\n  name: aks-1\nsink:\n  type: stdout\n";

#[test]
fn a_minimal_config_gets_every_default() {
    let config = Config::parse(MINIMAL, &env_with(&[("POD_NAME", "kevents-abc")])).unwrap();
    assert_eq!(config.cluster.name, "aks-1");
    assert_eq!(config.leader.lease_name, "kevents");
    assert_eq!(config.leader.identity, "kevents-abc-x7k2q");
    assert_eq!(config.leader.lease_duration, Duration::from_secs(15));
    assert_eq!(config.leader.renew_deadline, Duration::from_secs(10));
    assert_eq!(config.leader.retry_period, Duration::from_secs(2));
    assert_eq!(config.admin.listen.to_string(), "0.0.0.0:9102");
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.shutdown_grace_period, Duration::from_secs(25));
}

#[test]
fn the_shipped_example_config_is_valid() {
    let text = include_str!("../../examples/kevents.yaml");
    let config = Config::parse(
        text,
        &env_with(&[
            ("CLUSTER", "aks-prod"),
            ("REGION", "westeurope"),
            ("ENVIRONMENT", "prod"),
        ]),
    )
    .unwrap();
    assert_eq!(config.cluster.region, "westeurope");
}

#[test]
fn a_misspelt_key_is_rejected_naming_the_key() {
    let err = Config::parse(
        "cluster:\n  name: a\nleader:\n  lease_duraton: 15s\n",
        &env_with(&[]),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("leader.lease_duraton: unknown field"),
        "{text}"
    );
    assert!(text.contains("lease_duraton"), "{text}");
    let err = Config::parse("clustr:\n  name: a\n", &env_with(&[])).unwrap_err();
    assert!(err.to_string().contains("clustr"), "{err}");
}

#[test]
fn an_unset_variable_is_rejected_naming_key_and_variable() {
    let err = Config::parse("cluster:\n  name: ${CLUSTER}\n", &env_with(&[])).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cluster.name"), "{text}");
    assert!(text.contains("CLUSTER"), "{text}");
    let ok = Config::parse(
        "cluster:\n  name: ${CLUSTER:-dev}\nsink:\n  type: stdout\n",
        &env_with(&[]),
    )
    .unwrap();
    assert_eq!(ok.cluster.name, "dev");
}

#[test]
fn lease_timings_must_be_ordered_like_client_go() {
    let bad = [
        (
            "lease_duration: 10s\n  renew_deadline: 10s",
            "leader.renew_deadline",
        ),
        (
            "renew_deadline: 2s\n  retry_period: 2s",
            "leader.retry_period",
        ),
        ("lease_duration: 1500ms", "leader.lease_duration"),
        ("retry_period: soon", "leader.retry_period"),
    ];
    for (leader, key) in bad {
        let text = format!("{MINIMAL}leader:\n  {leader}\n");
        let err = Config::parse(&text, &env_with(&[])).unwrap_err();
        assert!(err.to_string().starts_with(key), "{leader}: {err}");
    }
    let ok = format!(
        "{MINIMAL}leader:\n  lease_duration: 4s\n  renew_deadline: 3s\n  retry_period: 1s\n"
    );
    Config::parse(&ok, &env_with(&[])).unwrap();
}

#[test]
fn the_shipped_example_adx_section_is_valid() {
    let text = include_str!("../../examples/kevents.yaml").replacen("type: file ", "type: adx ", 1);
    let config = Config::parse(
        &text,
        &env_with(&[
            ("CLUSTER", "aks-prod"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_TENANT_ID", "t"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
        ]),
    )
    .unwrap();
    let SinkConfig::Adx(adx) = &config.sink else {
        panic!("not adx")
    };
    assert_eq!(adx.database, "Kubernetes");
    assert_eq!(adx.mode, AdxMode::Queued);
    assert_eq!(adx.mapping, "KubeEventsFlatMapping");
    assert_eq!(
        adx.engine().unwrap().as_str(),
        "https://mycluster.westeurope.kusto.windows.net/"
    );
    assert_eq!(adx.auth.mode(), "workload_identity");
}

#[test]
fn an_adx_sink_without_its_section_is_rejected_naming_it() {
    let err =
        Config::parse("cluster:\n  name: a\nsink:\n  type: adx\n", &env_with(&[])).unwrap_err();
    assert!(err.to_string().starts_with("sink.adx:"), "{err}");
}

fn adx(section: &str) -> String {
    format!("cluster:\n  name: a\nsink:\n  type: adx\n  adx:\n{section}")
}

#[test]
fn an_adx_sink_without_an_endpoint_is_rejected_naming_the_field() {
    let err = Config::parse(
        &adx("    database: k8s\n    auth:\n      mode: none\n"),
        &env_with(&[]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("sink.adx.ingest_endpoint: is required"),
        "{err}"
    );
    let err = Config::parse(
        &adx("    ingest_endpoint: not a url\n    database: k8s\n    auth:\n      mode: none\n"),
        &env_with(&[]),
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("sink.adx.ingest_endpoint:"),
        "{err}"
    );
}

#[test]
fn an_unknown_adx_auth_mode_is_rejected_naming_the_field() {
    let err = Config::parse(
        &adx("    ingest_endpoint: https://ingest-c.westeurope.kusto.windows.net\n    database: k8s\n    auth:\n      mode: password\n"),
        &env_with(&[]),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("sink.adx.auth.mode:"), "{text}");
    assert!(text.contains("password"), "{text}");
}

#[test]
fn workload_identity_without_its_environment_is_rejected_naming_the_variable() {
    let section = "    ingest_endpoint: https://ingest-c.westeurope.kusto.windows.net\n    database: k8s\n    auth:\n      mode: workload_identity\n";
    let err = Config::parse(&adx(section), &env_with(&[])).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("sink.adx.auth.client_id:"), "{text}");
    assert!(text.contains("AZURE_CLIENT_ID"), "{text}");
    let err = Config::parse(
        &adx(section),
        &env_with(&[("AZURE_CLIENT_ID", "c"), ("AZURE_TENANT_ID", "t")]),
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("sink.adx.auth.token_file:")
            && err.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"),
        "{err}"
    );
    let config = Config::parse(
        &adx(section),
        &env_with(&[
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_TENANT_ID", "t"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/"),
        ]),
    )
    .unwrap();
    let SinkConfig::Adx(adx) = &config.sink else {
        panic!("not adx")
    };
    match &adx.auth {
        AdxAuthConfig::WorkloadIdentity {
            client_id,
            tenant_id,
            authority_host,
            ..
        } => {
            assert_eq!((client_id.as_str(), tenant_id.as_str()), ("c", "t"));
            assert_eq!(authority_host.as_str(), "https://login.microsoftonline.us/");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_adx_client_secret_prints_redacted_and_defaults_are_filled_in() {
    let config = Config::parse(
        &adx("    ingest_endpoint: https://ingest-c.westeurope.kusto.windows.net\n    database: k8s\n    auth:\n      mode: client_secret\n      tenant_id: t\n      client_id: c\n      client_secret: ${ADX_SECRET}\n"),
        &env_with(&[("ADX_SECRET", "s3cr3t-value")]),
    )
    .unwrap();
    let printed = config.to_redacted_yaml().unwrap();
    assert!(!printed.contains("s3cr3t-value"), "{printed}");
    assert!(printed.contains("client_secret: <redacted>"), "{printed}");
    assert!(!format!("{config:?}").contains("s3cr3t-value"));
    assert!(
        printed.contains("engine_endpoint: https://c.westeurope.kusto.windows.net"),
        "{printed}"
    );
    assert!(
        printed.contains("mapping: KubeEventsFlatMapping"),
        "{printed}"
    );
    assert!(printed.contains("mode: queued"), "{printed}");
    assert!(printed.contains("ingest_by_tags: false"), "{printed}");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        ("admin:\n  listen: nowhere", "admin.listen"),
        ("log:\n  format: xml", "log.format"),
        ("log:\n  level: 'kevents=[bad'", "log.level"),
        ("leader:\n  lease_name: Not_Valid", "leader.lease_name"),
        (
            "shutdown:\n  grace_period: forever",
            "shutdown.grace_period",
        ),
        ("admin:\n  listen: [1, 2]", "admin.listen"),
    ];
    for (body, key) in cases {
        let err = Config::parse(&format!("{MINIMAL}{body}\n"), &env_with(&[])).unwrap_err();
        assert!(err.to_string().starts_with(key), "{body}: {err}");
    }
    let err = Config::parse("admin: [", &env_with(&[])).unwrap_err();
    assert!(matches!(err, Error::Yaml(_)), "{err}");
    let err = Config::parse(
        "log:\n  level: info\nsink:\n  type: stdout\n",
        &env_with(&[]),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("cluster.name"), "{err}");
}

#[test]
fn the_lease_namespace_defaults_to_the_pods_own() {
    let env = Environment {
        pod_namespace: &|| Some("observability".to_owned()),
        ..env_with(&[])
    };
    let config = Config::parse(MINIMAL, &env).unwrap();
    assert_eq!(
        config.leader.lease_namespace.as_deref(),
        Some("observability")
    );
    let config = Config::parse(MINIMAL, &env_with(&[("POD_NAMESPACE", "kube-system")])).unwrap();
    assert_eq!(
        config.leader.lease_namespace.as_deref(),
        Some("kube-system")
    );
}

#[test]
fn the_effective_config_round_trips_through_the_parser() {
    let config = Config::parse(
        "cluster:\n  name: a\n  region: r\nleader:\n  identity: me\n  lease_duration: 20s\nsink:\n  type: file\n  file:\n    path: /tmp/x.ndjson\nsource:\n  types: [Warning]\n  initial_list: 30m\nrecord:\n  extra_columns: [Uid]\nstore:\n  max_outbox_bytes: 10MB\n",
        &env_with(&[]),
    )
    .unwrap();
    let printed = config.to_redacted_yaml().unwrap();
    let again = Config::parse(&printed, &env_with(&[])).unwrap();
    assert_eq!(config, again, "{printed}");
}

#[test]
fn pipeline_sections_validate_and_name_bad_keys() {
    let cases = [
        ("source:\n  api: v2", "source.api"),
        ("source:\n  initial_list: sometimes", "source.initial_list"),
        ("source:\n  types: [Error]", "source.types"),
        (
            "source:\n  namespaces:\n    includ: [a]",
            "source.namespaces.includ",
        ),
        ("store:\n  max_outbox_bytes: lots", "store.max_outbox_bytes"),
        ("store:\n  max_dead_bytes: 1GiB", "store.max_dead_bytes"),
        ("store:\n  max_dead_bytes: 0", "store.max_dead_bytes"),
        ("store:\n  seen_retention: 10m", "store.seen_retention"),
        (
            "shipper:\n  max_batch_events: 0",
            "shipper.max_batch_events",
        ),
        ("record:\n  shape: xml", "record.shape"),
        ("record:\n  extra_columns: [Name]", "record.extra_columns"),
    ];
    for (body, key) in cases {
        let err = Config::parse(&format!("{MINIMAL}{body}\n"), &env_with(&[])).unwrap_err();
        assert!(err.to_string().starts_with(key), "{body}: {err}");
    }
    let no_sink = Config::parse("cluster:\n  name: a\n", &env_with(&[])).unwrap_err();
    assert!(no_sink.to_string().starts_with("sink:"), "{no_sink}");
    let no_path = Config::parse(
        "cluster:\n  name: a\nsink:\n  type: file\n  file: {}\n",
        &env_with(&[]),
    )
    .unwrap_err();
    assert!(
        no_path.to_string().starts_with("sink.file.path"),
        "{no_path}"
    );
}

/// An environment where `VALUE` holds `value` and nothing else is set.
fn parse_with_value(text: &str, value: &str) -> Result<Config> {
    let var = |name: &str| (name == "VALUE").then(|| value.to_owned());
    Config::parse(
        text,
        &Environment {
            var: &var,
            ..env_with(&[])
        },
    )
}

#[test]
fn string_keys_keep_a_variable_that_looks_like_a_number_boolean_or_null() {
    let text = "cluster:\n  name: ${VALUE}\n  region: ${VALUE}\n  environment: ${VALUE}\nleader:\n  identity: ${VALUE}\nsink:\n  type: adx\n  adx:\n    ingest_endpoint: https://ingest-c.westeurope.kusto.windows.net\n    database: ${VALUE}\n    auth:\n      mode: client_secret\n      tenant_id: ${VALUE}\n      client_id: ${VALUE}\n      client_secret: ${VALUE}\n";
    for value in [
        "2024", "1e3", "true", "null", "0x10", "~", "yes", "1_000", "False", "0o17", ".inf", "-1",
    ] {
        let config = parse_with_value(text, value).unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(config.cluster.name, value);
        assert_eq!(config.cluster.region, value);
        assert_eq!(config.cluster.environment, value);
        assert_eq!(config.leader.identity, value);
        let SinkConfig::Adx(adx) = &config.sink else {
            panic!("not adx")
        };
        assert_eq!(adx.database, value);
        let AdxAuthConfig::ClientSecret {
            tenant_id,
            client_id,
            client_secret,
            ..
        } = &adx.auth
        else {
            panic!("{:?}", adx.auth)
        };
        assert_eq!(tenant_id, value);
        assert_eq!(client_id, value);
        assert_eq!(client_secret.expose(), value);
    }
}

#[test]
fn numeric_keys_read_their_number_from_a_variable() {
    let text = "cluster:\n  name: a\nadmin:\n  listen: 127.0.0.1:${VALUE}\nsource:\n  page_size: ${VALUE}\nstore:\n  max_commit_events: ${VALUE}\nshipper:\n  max_batch_events: ${VALUE}\nsink:\n  type: file\n  file:\n    path: /tmp/x.ndjson\n    max_bytes: ${VALUE}\n    max_files: ${VALUE}\n";
    let config = parse_with_value(text, "9102").unwrap();
    assert_eq!(config.admin.listen.port(), 9102);
    assert_eq!(config.source.page_size, 9102);
    assert_eq!(config.store.max_commit_events, 9102);
    assert_eq!(config.shipper.max_batch_events, 9102);
    assert_eq!(
        config.sink,
        SinkConfig::File {
            path: "/tmp/x.ndjson".into(),
            max_bytes: 9102,
            max_files: 9102,
        }
    );
}

#[test]
fn a_variable_that_is_not_a_number_is_rejected_naming_the_key() {
    let cases = [
        ("source:\n  page_size: ${VALUE}", "source.page_size"),
        (
            "store:\n  max_commit_events: ${VALUE}",
            "store.max_commit_events",
        ),
        (
            "shipper:\n  max_batch_events: ${VALUE}",
            "shipper.max_batch_events",
        ),
    ];
    for value in ["abc", "1e3", "0x10", "-5", "~"] {
        for (body, key) in cases {
            let err = parse_with_value(&format!("{MINIMAL}{body}\n"), value).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("{key}: `{value}` is not a whole number")),
                "{value}: {text}"
            );
        }
    }
    let err = parse_with_value(
        "cluster:\n  name: a\nsink:\n  type: file\n  file:\n    path: /tmp/x\n    max_files: ${VALUE}\n",
        "abc",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("sink.file.max_files: `abc` is not a whole number"),
        "{err}"
    );
    let err =
        parse_with_value(&format!("{MINIMAL}source:\n  page_size: ${{VALUE}}\n"), "0").unwrap_err();
    assert!(err.to_string().starts_with("source.page_size:"), "{err}");
}

fn adx_flags(flags: &str) -> String {
    adx(&format!(
        "    ingest_endpoint: https://ingest-c.westeurope.kusto.windows.net\n    database: k8s\n    auth:\n      mode: none\n{flags}"
    ))
}

#[test]
fn boolean_keys_read_true_or_false_from_a_variable() {
    let text = adx_flags(
        "    ingest_by_tags: ${VALUE}\n    failed_ingestions:\n      enabled: ${VALUE}\n",
    );
    for (value, expected) in [("true", true), ("TRUE", true), ("false", false)] {
        let config = parse_with_value(&text, value).unwrap();
        let SinkConfig::Adx(adx) = &config.sink else {
            panic!("not adx")
        };
        assert_eq!(adx.ingest_by_tags, expected, "{value}");
        assert_eq!(adx.failed_ingestions.enabled, expected, "{value}");
    }
    for value in ["yes", "1", "null"] {
        let err = parse_with_value(&text, value).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "sink.adx.ingest_by_tags: `{value}` is not `true` or `false`"
            )),
            "{value}: {err}"
        );
    }
}

#[test]
fn an_empty_variable_leaves_a_numeric_or_boolean_key_at_its_default() {
    let text = "cluster:\n  name: a\nsource:\n  page_size: ${VALUE:-}\nstore:\n  max_commit_events: ${VALUE:-}\n  max_outbox_bytes: ${VALUE:-}\nshipper:\n  max_batch_events: ${VALUE:-}\nsink:\n  type: file\n  file:\n    path: /tmp/x.ndjson\n    max_bytes: ${VALUE:-}\n    max_files: ${VALUE:-}\n";
    let config = parse_with_value(text, "").unwrap();
    let defaults = Config::parse(
        "cluster:\n  name: a\nsink:\n  type: file\n  file:\n    path: /tmp/x.ndjson\n",
        &env_with(&[]),
    )
    .unwrap();
    assert_eq!(config, defaults);
    assert_eq!(config.source.page_size, 500);
    let text = adx_flags(
        "    ingest_by_tags: ${VALUE:-}\n    streaming_max_bytes: ${VALUE:-}\n    failed_ingestions:\n      enabled: ${VALUE:-}\n",
    );
    let config = parse_with_value(&text, "").unwrap();
    let SinkConfig::Adx(adx) = &config.sink else {
        panic!("not adx")
    };
    assert!(!adx.ingest_by_tags);
    assert!(!adx.failed_ingestions.enabled);
    assert_eq!(adx.streaming_max_bytes, DEFAULT_STREAMING_MAX_BYTES);
}

#[test]
fn the_dead_tree_cap_defaults_to_64_mib_and_to_a_quarter_of_a_smaller_outbox() {
    let config = Config::parse(MINIMAL, &env_with(&[])).unwrap();
    assert_eq!(config.store.max_dead_bytes, 64 << 20);
    let small = Config::parse(
        &format!("{MINIMAL}store:\n  max_outbox_bytes: 100MiB\n"),
        &env_with(&[]),
    )
    .unwrap();
    assert_eq!(small.store.max_dead_bytes, 25 << 20);
    let set = Config::parse(
        &format!("{MINIMAL}store:\n  max_outbox_bytes: 100MiB\n  max_dead_bytes: 99MiB\n"),
        &env_with(&[]),
    )
    .unwrap();
    assert_eq!(set.store.max_dead_bytes, 99 << 20);
    let err = Config::parse(
        &format!("{MINIMAL}store:\n  max_outbox_bytes: 100MiB\n  max_dead_bytes: 100MiB\n"),
        &env_with(&[]),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("less than store.max_outbox_bytes"),
        "{err}"
    );
}

/// The example's environment: cluster tags and what the AKS workload identity webhook sets.
fn example_env() -> Environment<'static> {
    env_with(&[
        ("CLUSTER", "aks-prod"),
        ("REGION", "westeurope"),
        ("POD_NAME", "kevents-0"),
        ("AZURE_CLIENT_ID", "c"),
        ("AZURE_TENANT_ID", "t"),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/azure/tokens/azure-identity-token",
        ),
    ])
}

#[test]
fn the_printed_example_config_parses_back_into_the_same_config() {
    let example = include_str!("../../examples/kevents.yaml");
    let adx = example.replacen("type: file ", "type: adx ", 1);
    let texts = [
        example.to_owned(),
        adx.clone(),
        adx.replacen("mode: workload_identity", "mode: managed_identity", 1),
        adx.replacen("mode: workload_identity", "mode: none", 1)
            .replacen("mode: queued", "mode: streaming", 1)
            .replacen(
                "scope: https://kusto.kusto.windows.net/.default",
                "scope: https://kusto.kusto.usgovcloudapi.net/.default",
                1,
            ),
        example
            .replacen("shape: flat", "shape: fluent-bit", 1)
            .replacen(
                "extra_columns: []",
                "extra_columns: [ResourceVersion, Uid]",
                1,
            )
            .replacen("initial_list: all", "initial_list: 1h30m", 1)
            .replacen("types: []", "types: [Warning]", 1),
    ];
    for text in texts {
        let config = Config::parse(&text, &example_env()).unwrap();
        let printed = config.to_redacted_yaml().unwrap();
        let again = Config::parse(&printed, &example_env()).unwrap();
        assert_eq!(config, again, "{printed}");
        assert_eq!(again.to_redacted_yaml().unwrap(), printed);
    }
}

#[test]
fn a_printed_client_secret_parses_back_as_the_redaction_mark_only() {
    let text = adx(
        "    ingest_endpoint: https://ingest-c.westeurope.kusto.windows.net\n    database: k8s\n    auth:\n      mode: client_secret\n      tenant_id: t\n      client_id: c\n      client_secret: ${ADX_SECRET}\n",
    );
    let config = Config::parse(&text, &env_with(&[("ADX_SECRET", "s3cr3t-value")])).unwrap();
    let printed = config.to_redacted_yaml().unwrap();
    assert!(!printed.contains("s3cr3t-value"), "{printed}");
    let again = Config::parse(&printed, &env_with(&[])).unwrap();
    let redacted = Config::parse(&text, &env_with(&[("ADX_SECRET", REDACTED)])).unwrap();
    assert_eq!(again, redacted, "{printed}");
}

#[test]
fn a_dollar_in_a_value_prints_escaped_and_parses_back_unchanged() {
    let config = Config::parse(
        "cluster:\n  name: a$$b\n  region: ${REGION}\nsink:\n  type: file\n  file:\n    path: /tmp/$${x}.ndjson\n",
        &env_with(&[("REGION", "${NOT_A_VAR}")]),
    )
    .unwrap();
    assert_eq!(config.cluster.name, "a$b");
    assert_eq!(config.cluster.region, "${NOT_A_VAR}");
    let printed = config.to_redacted_yaml().unwrap();
    assert_eq!(
        Config::parse(&printed, &env_with(&[])).unwrap(),
        config,
        "{printed}"
    );
}
