//! No token, secret, federated assertion, authorization context or SAS signature ever appears in
//! a log line: every tracing event at debug level (kevents, the emulators, reqwest, hyper) is
//! captured into a buffer during an end-to-end run of the real pipeline in this process —
//! client-secret auth with tokens that expire and are revoked, SAS that expire (403 and refresh),
//! a lost streaming answer looked up with a query, the failed-ingestions poller — plus workload
//! identity and managed identity sends, and the buffer is searched for every one of them.
//!
//! One test per file: the capturing subscriber is the process-wide default.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod adx_common;

use std::{
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use adx_common::synthetic_batch;
use adx_common::{DB, TABLE, emulator};
use kevents::{
    app::{RunOptions, run},
    config::{AdxAuthConfig, AdxMode, Config, Environment},
    sink::{AdxSink, Sink as _},
    telemetry::Metrics,
};
use kevents_testkit::{
    adx::{AdxEmulatorConfig, AuthSettings},
    harness::ground_truth,
    kube::{GeneratorConfig, KubeEmulator, KubeEmulatorConfig},
};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "kevents-client-secret-9f8e7d6c5b4a";
const ASSERTION: &str = "eyJhbGciOiJSUzI1NiJ9.federated-assertion-payload.signature-1a2b3c";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_secret_assertion_or_sas_signature_is_ever_logged() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let adx = emulator(AdxEmulatorConfig {
        auth: AuthSettings {
            require_token: true,
            client_secrets: vec![("kevents-app".to_owned(), SECRET.to_owned())],
            assertions: vec![("wi-app".to_owned(), ASSERTION.to_owned())],
        },
        ..AdxEmulatorConfig::default()
    })
    .await;
    adx.state().set_token_lifetime(Duration::from_secs(2));
    adx.state().set_sas_lifetime(Duration::from_secs(2));
    let kube = KubeEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        KubeEmulatorConfig::default(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, "kevents").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    // The real pipeline: the secret comes from the environment through ${ADX_SECRET}.
    let yaml = format!(
        "cluster:\n  name: logs\nleader:\n  lease_namespace: kevents\n  identity: logs-0\n\
         admin:\n  listen: {admin}\n\
         store:\n  path: {store}\n\
         shipper:\n  max_batch_age: 200ms\n  retry_initial: 100ms\n  retry_max: 1s\n\
         record:\n  extra_columns: [Uid, ResourceVersion]\n\
         sink:\n  type: adx\n  adx:\n    ingest_endpoint: {url}\n    database: {DB}\n    mode: managed\n    \
         ingest_by_tags: true\n    failed_ingestions:\n      enabled: true\n      interval: 200ms\n    \
         auth:\n      mode: client_secret\n      tenant_id: t\n      client_id: kevents-app\n      \
         client_secret: ${{ADX_SECRET}}\n      authority_host: {url}\n",
        store = dir.path().join("store").display(),
        url = adx.url(),
    );
    let env = Environment {
        var: &|name| (name == "ADX_SECRET").then(|| SECRET.to_owned()),
        pod_namespace: &|| None,
        identity_suffix: "x".to_owned(),
    };
    let config = Config::parse(&yaml, &env).unwrap();
    let stop = CancellationToken::new();
    let app = tokio::spawn(run(
        config,
        RunOptions {
            kubeconfig: Some(kubeconfig),
        },
        stop.clone(),
    ));
    // Capturing before the generator starts: a replica that creates the Lease acts only after
    // its renew deadline, and versions superseded before the first list are not this test's.
    let http = reqwest::Client::new();
    let leading = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = http.get(format!("http://{admin}/status")).send().await;
        if let Ok(answer) = status
            && let Ok(status) = answer.json::<serde_json::Value>().await
            && status["leader"]["role"] == "leader"
            && status["ready"] == true
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < leading,
            "never a ready leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kube.state().set_generator(Some(GeneratorConfig {
        events_per_second: 100.0,
        update_ratio: 0.3,
        seed: 5,
        namespaces: 3,
    }));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A streamed batch whose answer is lost: the sink looks it up with a query.
    adx.state().lose_next_answers(1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    adx.state().expire_tokens_now();
    adx.state().fail_next(2, 503); // managed: falls back to queued
    tokio::time::sleep(Duration::from_secs(3)).await;
    // On a loaded machine the generator may lag its rate: wait for enough events.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ground_truth(&kube).len() <= 300 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kube.state().set_generator(None);
    let truth = ground_truth(&kube).len();
    assert!(truth > 300, "{truth}");
    assert_eq!(
        adx.wait_for_rows(DB, TABLE, truth, Duration::from_secs(30))
            .await,
        truth
    );
    stop.cancel();
    app.await.unwrap().unwrap();

    // The other two token flows, straight through the sink.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, ASSERTION).unwrap();
    let authority = reqwest::Url::parse(&adx.url()).unwrap();
    for auth in [
        AdxAuthConfig::WorkloadIdentity {
            tenant_id: "t".to_owned(),
            client_id: "wi-app".to_owned(),
            token_file,
            authority_host: authority.clone(),
        },
        AdxAuthConfig::ManagedIdentity {
            client_id: None,
            imds_endpoint: authority.join("metadata/identity/oauth2/token").unwrap(),
        },
    ] {
        let mut cfg = adx_common::config(&adx, AdxMode::Queued);
        cfg.auth = auth;
        let sink = AdxSink::new(&cfg, Metrics::new().unwrap()).unwrap();
        sink.send(&synthetic_batch("logs", 1_000_000, 3))
            .await
            .unwrap();
    }

    let secrets = adx.state().handed_out_secrets();
    adx.shutdown().await;
    kube.shutdown().await;

    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    // The capture works, at debug level, across the paths that matter.
    for expected in [
        "Fetched an AAD token",
        "Fetched ADX ingestion resources",
        "Batch handed to ADX",
        "Storage refused the SAS",
        "Streaming ingestion failed; sending the batch queued",
        "Streaming ingestion answered with an error but stored the batch",
        "Checked whether the batch is in ADX",
    ] {
        assert!(log.contains(expected), "the log lacks `{expected}`");
    }
    let tokens = secrets
        .iter()
        .filter(|s| s.starts_with("emu-token-"))
        .count();
    let contexts = secrets
        .iter()
        .filter(|s| s.starts_with("emu-authctx-"))
        .count();
    let sigs = secrets.len() - tokens - contexts;
    assert!(
        tokens >= 3 && contexts >= 2 && sigs >= 2,
        "{tokens} {contexts} {sigs}"
    );
    let mut needles: Vec<String> = vec![
        SECRET.to_owned(),
        ASSERTION.to_owned(),
        "sig=".to_owned(),
        "emu-token-".to_owned(),
        "emu-authctx-".to_owned(),
        "Bearer ".to_owned(),
    ];
    for secret in &secrets {
        needles.push(secret.clone());
        // As it would appear inside a URL.
        let encoded: String = reqwest::Url::parse_with_params("http://x/", [("s", secret)])
            .unwrap()
            .query()
            .unwrap()
            .trim_start_matches("s=")
            .to_owned();
        needles.push(encoded);
    }
    for needle in &needles {
        if let Some(at) = log.find(needle.as_str()) {
            let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = log[at..].find('\n').map_or(log.len(), |i| at + i);
            panic!(
                "a log line reveals a secret:\n{}",
                &log[line_start..line_end]
            );
        }
    }
    println!(
        "searched {} bytes of debug logs for {} secrets ({tokens} tokens, {contexts} authorization contexts, {sigs} SAS signatures, the client secret, the assertion)",
        log.len(),
        needles.len()
    );
}
