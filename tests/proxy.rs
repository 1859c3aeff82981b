//! Egress through an HTTP proxy, as AKS's HTTP-proxy feature sets it up (`HTTPS_PROXY`,
//! `HTTP_PROXY`, `NO_PROXY` and their lower-case twins in every pod): the real `kevents` binary
//! against the Kubernetes API emulator with a loopback proxy that records what it is asked for,
//! and the ADX HTTP client (reqwest) as kevents builds it.
//!
//! The emulator serves plain HTTP, so the variables that apply to it are `HTTP_PROXY`/`http_proxy`;
//! kube tunnels with `CONNECT` for http and https alike, reqwest forwards plain-http requests in
//! absolute form.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod proxy_support;

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures::future::join_all;
use kevents_testkit::{
    harness::admin_get,
    kube::{KubeEmulator, KubeEmulatorConfig},
};
use proxy_support::{Seen, TestProxy};

const KEVENTS: &str = env!("CARGO_BIN_EXE_kevents");

/// Cleared in every child, so the machine's own settings never leak into a case.
const INHERITED: [&str; 9] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
    "KUBECONFIG",
];

/// How long a `kevents run` may take to lead with its first list done (debug build, busy box).
const LEAD_WITHIN: Duration = Duration::from_secs(90);

/// `kevents run` is killed when this is dropped, even when the test fails.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `kevents run` against an emulator of its own.
struct Run {
    kevents: Kill,
    admin: SocketAddr,
    emulator: KubeEmulator,
    dir: tempfile::TempDir,
}

/// Starts the emulator and `kevents run` with a kubeconfig whose server is
/// `http://{server_host}:{emulator port}` (plus `proxy-url` when given) and `env` on top of an
/// environment without proxy variables.
async fn start(server_host: &str, proxy_url: Option<&str>, env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let emulator = KubeEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        KubeEmulatorConfig::default(),
    )
    .await
    .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    emulator.write_kubeconfig(&kubeconfig, "default").unwrap();
    let written = std::fs::read_to_string(&kubeconfig).unwrap();
    let server = format!("server: {}", emulator.url());
    assert!(written.contains(&server), "{written}");
    let port = emulator.addr().port();
    let cluster = match proxy_url {
        Some(proxy_url) => {
            format!("server: http://{server_host}:{port}\n    proxy-url: {proxy_url}")
        }
        None => format!("server: http://{server_host}:{port}"),
    };
    std::fs::write(&kubeconfig, written.replace(&server, &cluster)).unwrap();

    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path().join("kevents.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster:\n  name: proxy-test\n\
             leader:\n  lease_namespace: default\n  identity: kevents-proxy\n  \
             lease_duration: 4s\n  renew_deadline: 3s\n  retry_period: 500ms\n\
             admin:\n  listen: {admin}\n\
             store:\n  path: {store}\n\
             sink:\n  type: stdout\n\
             shutdown:\n  grace_period: 5s\n",
            store = dir.path().join("store").display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("kevents.log")).unwrap();
    let mut command = Command::new(KEVENTS);
    command
        .args(["run", "--config"])
        .arg(&config)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for name in INHERITED {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    Run {
        kevents: Kill(command.spawn().unwrap()),
        admin,
        emulator,
        dir,
    }
}

impl Run {
    /// `host:port` of the emulator as the kubeconfig names it.
    fn api_server(&self, host: &str) -> String {
        format!("{host}:{}", self.emulator.addr().port())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kevents.log")).unwrap_or_default()
    }

    /// Polls `/status` until this replica leads with its first list done.
    async fn wait_leader(&mut self, case: &str) {
        let deadline = Instant::now() + LEAD_WITHIN;
        loop {
            if let Some(status) = admin_get(self.admin, "/status").await
                && let Ok(status) = serde_json::from_str::<serde_json::Value>(&status)
                && status.pointer("/leader/role").and_then(|v| v.as_str()) == Some("leader")
                && status.get("ready").and_then(serde_json::Value::as_bool) == Some(true)
            {
                return;
            }
            if let Some(exit) = self.kevents.0.try_wait().unwrap() {
                panic!("{case}: kevents exited ({exit}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{case}: kevents did not lead within {LEAD_WITHIN:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        drop(self.kevents);
        self.emulator.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kevents_leads_through_the_proxy_that_https_proxy_and_http_proxy_name() {
    let proxy = TestProxy::start().await;
    let url = proxy.url();
    let url = url.as_str();
    let mut run = start(
        "127.0.0.1",
        None,
        &[("HTTPS_PROXY", url), ("HTTP_PROXY", url)],
    )
    .await;
    run.wait_leader("through the proxy").await;
    let api_server = run.api_server("127.0.0.1");
    let seen = proxy.seen();
    println!("the proxy tunnelled {} connections", proxy.connects());
    assert!(proxy.connects() > 0, "the proxy saw no CONNECT");
    assert!(
        seen.iter().all(|s| *s == Seen::Connect(api_server.clone())),
        "{seen:?}"
    );
    assert!(
        run.log()
            .contains("Kubernetes API through the proxy in HTTP_PROXY"),
        "{}",
        run.log()
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kevents_leads_without_the_proxy_when_no_proxy_covers_the_api_server() {
    let proxy = TestProxy::start().await;
    let url = proxy.url();
    let url = url.as_str();
    let mut run = start(
        "127.0.0.1",
        None,
        &[
            ("HTTPS_PROXY", url),
            ("HTTP_PROXY", url),
            ("NO_PROXY", "127.0.0.1"),
        ],
    )
    .await;
    run.wait_leader("NO_PROXY=127.0.0.1").await;
    assert_eq!(proxy.seen(), [], "the proxy was used");
    assert!(
        run.log()
            .contains("NO_PROXY covers the Kubernetes API server"),
        "{}",
        run.log()
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_proxy_name_covers_its_subdomains_in_any_case() {
    let proxy = TestProxy::start().await;
    let url = proxy.url();
    let run = start(
        "api.kevents.test",
        None,
        &[("HTTP_PROXY", url.as_str()), ("NO_PROXY", "KEVENTS.test")],
    )
    .await;
    // `.test` resolves nowhere, so kevents cannot lead: it must try the name directly, and fail.
    let deadline = Instant::now() + LEAD_WITHIN;
    while !run.log().contains("Lease API call failed") {
        assert!(
            Instant::now() < deadline,
            "no Lease call was tried:\n{}",
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        run.log()
            .contains("NO_PROXY covers the Kubernetes API server api_server=api.kevents.test"),
        "{}",
        run.log()
    );
    assert_eq!(proxy.seen(), [], "the proxy was used");
    run.stop().await;
}

/// One way of setting the variables, and whether the API server must then be reached through the
/// proxy.
struct Case {
    what: &'static str,
    server_host: &'static str,
    kubeconfig_proxy: bool,
    env: Vec<(&'static str, String)>,
    proxied: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variable_names_and_no_proxy_entries_are_read_as_curl_reads_them() {
    let proxy = TestProxy::start().await;
    let url = proxy.url();
    let url = url.as_str();
    let case = |what, server_host, env: &[(&'static str, &str)], proxied| Case {
        what,
        server_host,
        kubeconfig_proxy: false,
        env: env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        proxied,
    };
    let cases = [
        case(
            "lower-case no_proxy with CIDR blocks covers 127.0.0.1",
            "127.0.0.1",
            &[("HTTP_PROXY", url), ("no_proxy", "10.0.0.0/8, 127.0.0.0/8")],
            false,
        ),
        case(
            "NO_PROXY=* covers an IP address too",
            "127.0.0.1",
            &[("HTTP_PROXY", url), ("NO_PROXY", "*")],
            false,
        ),
        case(
            "HTTPS_PROXY does not apply to an http:// API server",
            "127.0.0.1",
            &[("HTTPS_PROXY", url)],
            false,
        ),
        case(
            "a name with a leading dot covers the name itself, in any case",
            "localhost",
            &[("http_proxy", url), ("NO_PROXY", "example.com,.LOCALHOST")],
            false,
        ),
        case(
            "lower-case http_proxy; a suffix covers whole labels only",
            "api.kevents.test",
            &[
                ("http_proxy", url),
                ("no_proxy", "events.test,kevents.test.example,api.kevents"),
            ],
            true,
        ),
        Case {
            kubeconfig_proxy: true,
            ..case(
                "the kubeconfig's proxy-url wins over NO_PROXY, as in kubectl",
                "127.0.0.1",
                &[("NO_PROXY", "127.0.0.1")],
                true,
            )
        },
    ];
    let mut runs = Vec::new();
    for case in &cases {
        let env: Vec<(&str, &str)> = case.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let proxy_url = case.kubeconfig_proxy.then_some(url);
        runs.push(start(case.server_host, proxy_url, &env).await);
    }
    join_all(
        runs.iter_mut()
            .zip(&cases)
            .map(|(run, case)| run.wait_leader(case.what)),
    )
    .await;
    let seen = proxy.seen();
    for (run, case) in runs.iter().zip(&cases) {
        let tunnels = seen
            .iter()
            .filter(|s| **s == Seen::Connect(run.api_server(case.server_host)))
            .count();
        println!("{}: {tunnels} tunnels", case.what);
        assert_eq!(tunnels > 0, case.proxied, "{}\n{}", case.what, run.log());
    }
    // Every request the proxy saw belongs to a proxied case.
    let expected: Vec<Seen> = runs
        .iter()
        .zip(&cases)
        .filter(|(_, case)| case.proxied)
        .map(|(run, case)| Seen::Connect(run.api_server(case.server_host)))
        .collect();
    assert!(seen.iter().all(|s| expected.contains(s)), "{seen:?}");
    for run in runs {
        run.stop().await;
    }
}

/// Set in the copy of this test binary that plays the ADX client.
const CHILD_GET: &str = "KEVENTS_PROXY_TEST_GET";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adx_http_client_takes_http_proxy_and_no_proxy_from_the_environment() {
    const NAME: &str = "the_adx_http_client_takes_http_proxy_and_no_proxy_from_the_environment";
    if let Ok(url) = std::env::var(CHILD_GET) {
        // The child: a client built as `AdxSink::new` builds it, with no proxy setting of its own;
        // the package's reqwest features decide what it reads from the environment.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .unwrap();
        let status = client.get(&url).send().await.unwrap().status();
        assert!(status.is_success(), "GET {url}: {status}");
        return;
    }
    let emulator = KubeEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        KubeEmulatorConfig::default(),
    )
    .await
    .unwrap();
    let proxy = TestProxy::start().await;
    let url = proxy.url();
    let target = format!("{}/version", emulator.url());
    let get = |env: Vec<(&'static str, String)>| {
        let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
        command.args([NAME, "--exact", "--nocapture", "--test-threads=1"]);
        for name in INHERITED {
            command.env_remove(name);
        }
        command.env(CHILD_GET, &target).envs(env);
        async move {
            let out = command.output().await.unwrap();
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };

    get(vec![("HTTP_PROXY", url.clone())]).await;
    let forwarded = [Seen::Forward(emulator.addr().to_string())];
    assert_eq!(proxy.seen(), forwarded, "HTTP_PROXY");

    get(vec![
        ("http_proxy", url.clone()),
        ("no_proxy", "localhost,127.0.0.0/8".to_owned()),
    ])
    .await;
    assert_eq!(
        proxy.seen(),
        forwarded,
        "no_proxy=127.0.0.0/8 was not honoured"
    );

    // HTTPS_PROXY is for https:// URLs only.
    get(vec![("HTTPS_PROXY", url.clone())]).await;
    assert_eq!(proxy.seen(), forwarded, "HTTPS_PROXY was used for http://");

    emulator.shutdown().await;
}

/// Set in the copy of this test binary that fetches a managed-identity token.
const CHILD_IMDS: &str = "KEVENTS_PROXY_TEST_IMDS";

/// AKS's HTTP-proxy feature puts `HTTPS_PROXY`/`HTTP_PROXY` into every pod; the instance metadata
/// endpoint is link-local and a proxy cannot reach it, so the managed-identity token request must
/// go direct while everything else honours the variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_tokens_bypass_the_proxy_while_other_adx_requests_use_it() {
    const NAME: &str = "managed_identity_tokens_bypass_the_proxy_while_other_adx_requests_use_it";
    if let Ok(url) = std::env::var(CHILD_IMDS) {
        use kevents::sink::Sink as _;
        let url = reqwest::Url::parse(&url).unwrap();
        let text = "cluster:\n  name: test\n".to_owned()
            + &kevents_testkit::adx::sink_yaml_at(
                url.as_str(),
                "k8s",
                "queued",
                &format!(
                    "    auth:\n      mode: managed_identity\n      imds_endpoint: {}\n",
                    url.join("metadata/identity/oauth2/token").unwrap()
                ),
            )
            .replace("request_timeout: 10s", "request_timeout: 5s");
        let env = kevents::config::Environment::process();
        let kevents::config::SinkConfig::Adx(config) =
            kevents::config::Config::parse(&text, &env).unwrap().sink
        else {
            panic!("not an ADX sink");
        };
        let sink =
            kevents::sink::AdxSink::new(&config, kevents::telemetry::Metrics::new().unwrap())
                .unwrap();
        let error = sink.healthcheck().await.unwrap_err();
        // The token came (directly); the management command went to the dead proxy.
        assert_eq!(error.check, "ingestion_resources", "{error}");
        return;
    }
    let adx = kevents_testkit::adx::AdxEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        kevents_testkit::adx::AdxEmulatorConfig::default(),
    )
    .await
    .unwrap();
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command.args([NAME, "--exact", "--nocapture", "--test-threads=1"]);
    for name in INHERITED {
        command.env_remove(name);
    }
    command
        .env(CHILD_IMDS, adx.url())
        .env("HTTP_PROXY", &dead_url)
        .env("HTTPS_PROXY", &dead_url);
    let out = command.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        adx.state().stats().tokens_issued,
        1,
        "the token request reached IMDS"
    );
    assert_eq!(
        adx.state().stats().mgmt_requests,
        0,
        "the DM was asked through the proxy"
    );
    adx.shutdown().await;
}
