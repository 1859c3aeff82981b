//! `kevents check-config` on the `sink.adx` section, as a user meets it: errors name the field
//! (missing endpoint, unknown auth mode, workload identity without the webhook's variables), and
//! the effective config prints the client secret as `<redacted>`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::process::Command;

const KEVENTS: &str = env!("CARGO_BIN_EXE_kevents");

fn check(adx: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kevents.yaml");
    std::fs::write(
        &path,
        format!("cluster:\n  name: aks-1\nsink:\n  type: adx\n  adx:\n{adx}"),
    )
    .unwrap();
    let mut command = Command::new(KEVENTS);
    command.args(["check-config", "--config"]).arg(&path);
    for var in kevents::config::WORKLOAD_IDENTITY_ENV {
        command.env_remove(var);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const ENDPOINT: &str = "    ingest_endpoint: https://ingest-c.westeurope.kusto.windows.net\n";

#[test]
fn a_missing_endpoint_is_rejected_naming_sink_adx_ingest_endpoint() {
    let (code, _, stderr) = check("    database: k8s\n    auth:\n      mode: none\n", &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("sink.adx.ingest_endpoint: is required"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_auth_mode_is_rejected_naming_sink_adx_auth_mode() {
    let (code, _, stderr) = check(
        &format!("{ENDPOINT}    database: k8s\n    auth:\n      mode: certificate\n"),
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("sink.adx.auth.mode"), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
}

#[test]
fn workload_identity_without_the_webhook_variables_is_rejected_naming_them() {
    let section =
        format!("{ENDPOINT}    database: k8s\n    auth:\n      mode: workload_identity\n");
    let (code, _, stderr) = check(&section, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("sink.adx.auth.client_id"), "{stderr}");
    assert!(stderr.contains("AZURE_CLIENT_ID"), "{stderr}");
    // Each of the three variables, missing alone, is named with its field.
    let all = [
        ("AZURE_CLIENT_ID", "c", "sink.adx.auth.client_id"),
        ("AZURE_TENANT_ID", "t", "sink.adx.auth.tenant_id"),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/azure/tokens/azure-identity-token",
            "sink.adx.auth.token_file",
        ),
    ];
    for (missing, _, field) in all {
        let env: Vec<(&str, &str)> = all
            .iter()
            .filter(|(var, _, _)| *var != missing)
            .map(|(var, value, _)| (*var, *value))
            .collect();
        let (code, _, stderr) = check(&section, &env);
        assert_eq!(code, Some(2), "{missing}: {stderr}");
        assert!(
            stderr.contains(field) && stderr.contains(missing),
            "{missing}: {stderr}"
        );
    }
    let (code, stdout, stderr) = check(
        &section,
        &[
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_TENANT_ID", "t"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("mode: workload_identity"), "{stdout}");
    assert!(
        stdout.contains("token_file: /var/run/secrets/azure/tokens/azure-identity-token"),
        "{stdout}"
    );
}

#[test]
fn the_effective_config_prints_the_client_secret_redacted() {
    let (code, stdout, stderr) = check(
        &format!(
            "{ENDPOINT}    database: k8s\n    auth:\n      mode: client_secret\n      tenant_id: t\n      client_id: c\n      client_secret: ${{ADX_SECRET}}\n"
        ),
        &[("ADX_SECRET", "do-not-print-me-42")],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("client_secret: <redacted>"), "{stdout}");
    assert!(!stdout.contains("do-not-print-me-42") && !stderr.contains("do-not-print-me-42"));
}
