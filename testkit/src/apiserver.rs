//! A real etcd + kube-apiserver on random loopback ports, for tests, drills and the lab: the Rust
//! twin of `scripts/kube-apiserver-up.sh` / `-down.sh`, with envtest's flags (RBAC
//! authorization, an openssl CA with a serving cert and a `system:masters` admin client cert, a
//! generated service-account signing key), a short `--event-ttl` and `--etcd-compaction-interval`,
//! and optionally `--watch-cache=false` so that a watch from a compacted resourceVersion gets 410.
//!
//! Owns the two processes, their working directory (certs, etcd data, logs, kubeconfigs) and the
//! admin and per-ServiceAccount clients. The binaries come from `scripts/kube-binaries.sh` (`make
//! kube-binaries`); when they are missing it fails with a message saying so and never falls back
//! to anything else. It must never leave a process behind: dropping it kills both (by pid, which it
//! owns) and reaps them.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, ServiceAccount},
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

/// Lifetime of the `ServiceAccount` tokens handed out (the API server's minimum is 10 min).
const TOKEN_SECONDS: i64 = 3600;

/// How the control plane starts.
#[derive(Debug, Clone)]
pub struct RealApiServerOptions {
    /// `--event-ttl`: Events expire this long after their last write.
    pub event_ttl: Duration,
    /// `--etcd-compaction-interval`: each tick compacts to the revision of the previous tick, so a
    /// revision is gone after at most two intervals.
    pub etcd_compaction_interval: Duration,
    /// `--watch-cache`; `false` makes a watch from a compacted resourceVersion answer with an
    /// in-stream 410 (the cache would otherwise keep serving old events).
    pub watch_cache: bool,
    /// More kube-apiserver flags.
    pub extra_args: Vec<String>,
    /// Working directory; `None` = a fresh one under the system temp dir, removed on drop.
    pub workdir: Option<PathBuf>,
    /// How long etcd and kube-apiserver may take to become ready.
    pub startup_timeout: Duration,
}

impl Default for RealApiServerOptions {
    /// The up script's defaults: TTL 1 min, compaction every 30 s, watch cache on.
    fn default() -> Self {
        Self {
            event_ttl: Duration::from_secs(60),
            etcd_compaction_interval: Duration::from_secs(30),
            watch_cache: true,
            extra_args: Vec::new(),
            workdir: None,
            startup_timeout: Duration::from_secs(90),
        }
    }
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct KubeBinaries {
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
}

impl KubeBinaries {
    /// `$TEST_ASSET_KUBE_APISERVER` / `$TEST_ASSET_ETCD` (envtest's names), else the folder that
    /// `scripts/kube-binaries.sh --print-dir` names.
    ///
    /// # Errors
    /// Fails, naming `make kube-binaries`, when a binary is missing.
    pub fn locate() -> anyhow::Result<Self> {
        let from_env = |var: &str| std::env::var_os(var).map(PathBuf::from);
        match (
            from_env("TEST_ASSET_KUBE_APISERVER"),
            from_env("TEST_ASSET_ETCD"),
        ) {
            (Some(kube_apiserver), Some(etcd)) => Self::checked(kube_apiserver, etcd),
            (a, e) => {
                let dir = binaries_dir()?;
                Self::checked(
                    a.unwrap_or_else(|| dir.join("kube-apiserver")),
                    e.unwrap_or_else(|| dir.join("etcd")),
                )
            }
        }
    }

    /// `dir/kube-apiserver` and `dir/etcd`.
    ///
    /// # Errors
    /// Fails, naming `make kube-binaries`, when a binary is missing.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        Self::checked(dir.join("kube-apiserver"), dir.join("etcd"))
    }

    fn checked(kube_apiserver: PathBuf, etcd: PathBuf) -> anyhow::Result<Self> {
        for binary in [&kube_apiserver, &etcd] {
            if !is_executable(binary) {
                bail!(
                    "{} is missing: run `make kube-binaries` (scripts/kube-binaries.sh) to build \
                     the real kube-apiserver and etcd first",
                    binary.display()
                );
            }
        }
        Ok(Self {
            kube_apiserver,
            etcd,
        })
    }
}

fn binaries_dir() -> anyhow::Result<PathBuf> {
    let script = crate::repo_root().join("scripts/kube-binaries.sh");
    let out = Command::new(&script)
        .arg("--print-dir")
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "running {} --print-dir (needed to find the binaries `make kube-binaries` builds)",
                script.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "{} --print-dir failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running etcd + kube-apiserver. Dropping it kills both and removes a working directory it
/// created.
pub struct RealApiServer {
    dir: PathBuf,
    owns_dir: bool,
    url: String,
    etcd_url: String,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    client: kube::Client,
    kubeconfig: PathBuf,
    options: RealApiServerOptions,
}

impl RealApiServer {
    /// Generates the certs, starts etcd, then kube-apiserver, waits for `/readyz`, and builds
    /// the admin client. Retries twice when a process dies before it is ready (a random port may
    /// have been taken in between).
    ///
    /// # Errors
    /// Fails if the binaries are missing (naming `make kube-binaries`), openssl fails, or a
    /// process exits or is not ready in time (with the tail of its log).
    pub async fn start(options: RealApiServerOptions) -> anyhow::Result<Self> {
        let binaries = KubeBinaries::locate()?;
        let (dir, owns_dir) = match &options.workdir {
            Some(dir) => (dir.clone(), false),
            None => (fresh_dir()?, true),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = Pki::generate(&dir)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::launch(&binaries, &options, &dir, &pki).await {
                Ok(mut server) => {
                    server.owns_dir = owns_dir;
                    return Ok(server);
                }
                Err(Launch::Died(error)) if attempt < 3 => {
                    tracing::warn!(error = %format!("{error:#}"), attempt, "Control plane died while starting; retrying on other ports");
                }
                Err(Launch::Died(error) | Launch::Failed(error)) => {
                    if owns_dir {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    return Err(error);
                }
            }
        }
    }

    async fn launch(
        binaries: &KubeBinaries,
        options: &RealApiServerOptions,
        dir: &Path,
        pki: &Pki,
    ) -> Result<Self, Launch> {
        let deadline = Instant::now() + options.startup_timeout;
        let etcd_port = free_port().map_err(Launch::failed)?;
        let peer_port = free_port().map_err(Launch::failed)?;
        let api_port = free_port().map_err(Launch::failed)?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data = dir.join("etcd-data");
        let _ = std::fs::remove_dir_all(&data);
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&data)
                .map_err(Launch::failed)?;
        }
        let mut etcd = spawn(
            &binaries.etcd,
            &[
                "--name".into(),
                "kevents-test".into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--listen-client-urls".into(),
                etcd_url.clone(),
                "--advertise-client-urls".into(),
                etcd_url.clone(),
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url.clone(),
                "--initial-cluster".into(),
                format!("kevents-test={peer_url}"),
                "--unsafe-no-fsync".into(),
            ],
            &dir.join("etcd.log"),
        )
        .map_err(Launch::failed)?;
        let http = reqwest::Client::new();
        let health = format!("{etcd_url}/health");
        let etcd_ready = wait_ready("etcd", &mut etcd, &dir.join("etcd.log"), deadline, || {
            let request = http.get(&health).timeout(Duration::from_secs(2)).send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        if let Err(error) = etcd_ready {
            kill(&mut etcd);
            return Err(error);
        }

        let url = format!("https://127.0.0.1:{api_port}");
        let secs = |d: Duration| format!("{}s", d.as_secs().max(1));
        let mut args: Vec<String> = [
            "--etcd-servers",
            &etcd_url,
            "--cert-dir",
            &pki.certs.display().to_string(),
            "--secure-port",
            &api_port.to_string(),
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
            // A loopback advertise address is refused by the default endpoint reconciler.
            "--endpoint-reconciler-type",
            "none",
            "--service-cluster-ip-range",
            "10.0.0.0/24",
            "--allow-privileged=true",
            "--authorization-mode",
            "RBAC",
            "--disable-admission-plugins",
            "ServiceAccount",
            "--client-ca-file",
            &pki.ca_crt.display().to_string(),
            "--service-account-issuer",
            "https://kubernetes.default.svc",
            "--service-account-key-file",
            &pki.sa_pub.display().to_string(),
            "--service-account-signing-key-file",
            &pki.sa_key.display().to_string(),
            "--event-ttl",
            &secs(options.event_ttl),
            "--etcd-compaction-interval",
            &secs(options.etcd_compaction_interval),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if !options.watch_cache {
            args.push("--watch-cache=false".into());
        }
        args.extend(options.extra_args.iter().cloned());
        let log = dir.join("kube-apiserver.log");
        let mut apiserver = match spawn(&binaries.kube_apiserver, &args, &log) {
            Ok(child) => child,
            Err(error) => {
                kill(&mut etcd);
                return Err(Launch::failed(error));
            }
        };
        let kubeconfig = dir.join("kubeconfig");
        let written = std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(
                &url,
                &pki.ca_pem,
                "kevents-admin",
                &format!(
                    "    client-certificate-data: {}\n    client-key-data: {}\n",
                    base64(pki.admin_crt_pem.as_bytes()),
                    base64(pki.admin_key_pem.as_bytes())
                ),
                None,
            ),
        );
        let client = match written.map_err(anyhow::Error::from) {
            Ok(()) => client_from_kubeconfig(&kubeconfig).await,
            Err(error) => Err(error),
        };
        let client = match client {
            Ok(client) => client,
            Err(error) => {
                kill(&mut apiserver);
                kill(&mut etcd);
                return Err(Launch::Failed(error));
            }
        };
        let ready = wait_ready("kube-apiserver", &mut apiserver, &log, deadline, || {
            let client = client.clone();
            async move {
                let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
                    return false;
                };
                client.request_text(request).await.is_ok()
            }
        })
        .await;
        if let Err(error) = ready {
            kill(&mut apiserver);
            kill(&mut etcd);
            return Err(error);
        }
        tracing::info!(%url, etcd = %etcd_url, dir = %dir.display(), "Real kube-apiserver ready");
        Ok(Self {
            dir: dir.to_owned(),
            owns_dir: false,
            url,
            etcd_url,
            etcd: Some(etcd),
            apiserver: Some(apiserver),
            client,
            kubeconfig,
            options: options.clone(),
        })
    }

    /// `https://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `http://127.0.0.1:PORT` of etcd.
    #[must_use]
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The working directory (certs, logs, kubeconfigs).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How it was started.
    #[must_use]
    pub fn options(&self) -> &RealApiServerOptions {
        &self.options
    }

    /// The admin (`system:masters`) client; its default namespace is `default`.
    #[must_use]
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig (client certificate, context namespace `default`).
    #[must_use]
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Writes an admin kubeconfig whose context namespace is `namespace`.
    ///
    /// # Errors
    /// Fails if the file cannot be read or written.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        let text = text.replacen(
            "    user: kevents-admin\n",
            &format!("    user: kevents-admin\n    namespace: {namespace}\n"),
            1,
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The pids of etcd and kube-apiserver, while they run.
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        [&self.etcd, &self.apiserver]
            .into_iter()
            .flatten()
            .map(Child::id)
            .collect()
    }

    /// The last `lines` lines of the kube-apiserver log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.join("kube-apiserver.log"), lines)
    }

    /// Creates `name` unless it exists.
    ///
    /// # Errors
    /// Fails on any answer but 201 or 409.
    pub async fn ensure_namespace(&self, name: &str) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        match api.create(&PostParams::default(), &namespace).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(error).with_context(|| format!("creating namespace {name}")),
        }
    }

    /// A token of the `ServiceAccount` `namespace/name` (a `TokenRequest`, valid 1 h), creating
    /// the namespace and the `ServiceAccount` if needed (no controller-manager runs, so nothing else
    /// would).
    ///
    /// # Errors
    /// Fails if an API call fails.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<String> {
        self.ensure_namespace(namespace).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("creating ServiceAccount {namespace}/{name}"));
            }
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(TOKEN_SECONDS),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let answer = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for {namespace}/{name}"))?;
        answer
            .status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .with_context(|| format!("the TokenRequest for {namespace}/{name} returned no token"))
    }

    /// Writes a kubeconfig that authenticates as the `ServiceAccount` `namespace/name` (a bearer
    /// token), with `namespace` as the context namespace.
    ///
    /// # Errors
    /// Fails if the token cannot be had or the file cannot be written.
    pub async fn write_service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        path: &Path,
    ) -> anyhow::Result<()> {
        let token = self.service_account_token(namespace, name).await?;
        let pem = std::fs::read_to_string(self.dir.join("pki/ca.crt"))?;
        let yaml = kubeconfig_yaml(
            &self.url,
            &pem,
            &format!("{namespace}-{name}"),
            &format!("    token: {token}\n"),
            Some(namespace),
        );
        std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
    }

    /// A client authenticated as the `ServiceAccount` `namespace/name` (default namespace
    /// `namespace`).
    ///
    /// # Errors
    /// Fails if the token cannot be had or the client cannot be built.
    pub async fn service_account_client(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<kube::Client> {
        let path = self.dir.join(format!("kubeconfig-{namespace}-{name}"));
        self.write_service_account_kubeconfig(namespace, name, &path)
            .await?;
        client_from_kubeconfig(&path).await
    }

    /// The sum of every series of the counter or gauge `name` on `/metrics` whose labels include
    /// all of `labels` (0 when none matches).
    ///
    /// # Errors
    /// Fails if `/metrics` cannot be read.
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let request = http::Request::get("/metrics").body(Vec::new())?;
        let text = self
            .client
            .request_text(request)
            .await
            .context("reading the kube-apiserver /metrics")?;
        Ok(sum_series(&text, name, labels))
    }

    /// LIST requests for Events served so far (`apiserver_request_total{verb="LIST",
    /// resource="events"}`, both API groups).
    ///
    /// # Errors
    /// Fails if `/metrics` cannot be read.
    pub async fn event_lists(&self) -> anyhow::Result<u64> {
        let total = self
            .metric_sum(
                "apiserver_request_total",
                &[("verb", "LIST"), ("resource", "events")],
            )
            .await?;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a request counter is a small whole number"
        )]
        Ok(total.round() as u64)
    }

    /// Kills both processes (kube-apiserver first) and reaps them. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            kill(&mut child);
        }
        if let Some(mut child) = self.etcd.take() {
            kill(&mut child);
        }
    }
}

impl Drop for RealApiServer {
    fn drop(&mut self) {
        self.stop();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Why a launch failed: a process that died may be retried on other ports.
enum Launch {
    Died(anyhow::Error),
    Failed(anyhow::Error),
}

impl Launch {
    fn failed(error: impl Into<anyhow::Error> + Send + Sync + 'static) -> Self {
        Self::Failed(error.into())
    }
}

async fn wait_ready<F, Fut>(
    what: &str,
    child: &mut Child,
    log: &Path,
    deadline: Instant,
    mut probe: F,
) -> Result<(), Launch>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        if probe().await {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Launch::Died(anyhow::anyhow!(
                "{what} exited ({status}) before it was ready; last lines of {}:\n{}",
                log.display(),
                tail(log, 30)
            )));
        }
        if Instant::now() >= deadline {
            return Err(Launch::Failed(anyhow::anyhow!(
                "{what} was not ready in time; last lines of {}:\n{}",
                log.display(),
                tail(log, 30)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn spawn(binary: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// SIGKILL and reap (the pid is ours: a `Child` we have not waited for yet).
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn fresh_dir() -> anyhow::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "kevents-apiserver-{}-{}-{:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The certificates and keys, made with openssl as envtest and the up script do.
struct Pki {
    certs: PathBuf,
    ca_crt: PathBuf,
    ca_pem: String,
    admin_crt_pem: String,
    admin_key_pem: String,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

impl Pki {
    #[rustfmt::skip]
    fn generate(dir: &Path) -> anyhow::Result<Self> {
        let pki = dir.join("pki");
        let certs = dir.join("certs");
        std::fs::create_dir_all(&pki)?;
        std::fs::create_dir_all(&certs)?;
        let p = |name: &str| pki.join(name).display().to_string();
        let c = |name: &str| certs.join(name).display().to_string();
        if !pki.join("admin.crt").exists() {
            openssl(&[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-sha256",
                "-keyout", &p("ca.key"), "-out", &p("ca.crt"), "-subj", "/CN=kevents-test-ca",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ])?;
            // kube-apiserver picks up apiserver.crt/.key from --cert-dir.
            openssl(&[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &c("apiserver.key"),
                "-out", &p("apiserver.csr"), "-subj", "/CN=kube-apiserver",
            ])?;
            std::fs::write(
                pki.join("apiserver.ext"),
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,\
                 DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1\n",
            )?;
            openssl(&[
                "x509", "-req", "-in", &p("apiserver.csr"), "-CA", &p("ca.crt"),
                "-CAkey", &p("ca.key"), "-CAcreateserial", "-days", "3650", "-sha256",
                "-extfile", &p("apiserver.ext"), "-out", &c("apiserver.crt"),
            ])?;
            // O=system:masters bypasses RBAC.
            openssl(&[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &p("admin.key"),
                "-out", &p("admin.csr"), "-subj", "/O=system:masters/CN=kevents-admin",
            ])?;
            std::fs::write(
                pki.join("admin.ext"),
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=clientAuth\n",
            )?;
            openssl(&[
                "x509", "-req", "-in", &p("admin.csr"), "-CA", &p("ca.crt"),
                "-CAkey", &p("ca.key"), "-CAcreateserial", "-days", "3650", "-sha256",
                "-extfile", &p("admin.ext"), "-out", &p("admin.crt"),
            ])?;
            openssl(&["genrsa", "-out", &p("sa.key"), "2048"])?;
            openssl(&["rsa", "-in", &p("sa.key"), "-pubout", "-out", &p("sa.pub")])?;
        }
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(Self {
            ca_pem: read(pki.join("ca.crt"))?,
            admin_crt_pem: read(pki.join("admin.crt"))?,
            admin_key_pem: read(pki.join("admin.key"))?,
            ca_crt: pki.join("ca.crt"),
            sa_key: pki.join("sa.key"),
            sa_pub: pki.join("sa.pub"),
            certs,
        })
    }
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running openssl (needed to make the test CA and certificates)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn kubeconfig_yaml(
    server: &str,
    ca_pem: &str,
    user: &str,
    credentials: &str,
    namespace: Option<&str>,
) -> String {
    let namespace = namespace.map_or_else(String::new, |ns| format!("    namespace: {ns}\n"));
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kevents-test\n  cluster:\n    \
         server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n\
         {credentials}contexts:\n- name: kevents-test\n  context:\n    cluster: kevents-test\n    \
         user: {user}\n{namespace}current-context: kevents-test\n",
        ca = base64(ca_pem.as_bytes()),
    )
}

async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let file = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    kube::Client::try_from(config).context("building a kube client")
}

/// Standard base64 with padding (kubeconfig `*-data` fields).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Sums the Prometheus text-format samples of `name` whose labels include `labels`.
fn sum_series(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(rest) = rest.strip_prefix('{') {
            let Some(end) = rest.rfind('}') else {
                continue;
            };
            (&rest[..end], rest[end + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            continue; // another metric whose name starts with `name`
        };
        let parsed = parse_labels(label_text);
        let matches = labels
            .iter()
            .all(|(k, v)| parsed.iter().any(|(pk, pv)| pk == k && pv == v));
        if matches
            && let Some(value) = value.split_whitespace().next()
            && let Ok(value) = value.parse::<f64>()
        {
            total += value;
        }
    }
    total
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if key.is_empty() {
            return labels;
        }
        if chars.next() != Some('"') {
            return labels;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(escaped) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
        let _ = chars.peek();
    }
}

/// A short description for logs: `kube-apiserver https://… (etcd http://…, dir …)`.
impl std::fmt::Display for RealApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kube-apiserver {} (etcd {}, dir {})",
            self.url,
            self.etcd_url,
            self.dir.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_fail_with_a_message_naming_make_kube_binaries() {
        let dir = std::env::temp_dir().join(format!("kevents-no-binaries-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = KubeBinaries::in_dir(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(error.contains("kube-apiserver is missing"), "{error}");
        assert!(error.contains("make kube-binaries"), "{error}");
    }

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"\xff\xfe\xfd"), "//79");
    }

    #[test]
    fn series_are_summed_over_matching_labels_only() {
        let text = "# HELP apiserver_request_total x\n\
            apiserver_request_total{code=\"200\",resource=\"events\",verb=\"LIST\"} 2\n\
            apiserver_request_total{code=\"410\",resource=\"events\",verb=\"LIST\"} 1\n\
            apiserver_request_total{code=\"200\",resource=\"events\",verb=\"WATCH\"} 7\n\
            apiserver_request_total{code=\"200\",resource=\"leases\",verb=\"LIST\"} 5\n\
            apiserver_request_total_other{resource=\"events\",verb=\"LIST\"} 9\n\
            apiserver_request_duration_seconds_sum{resource=\"events\",verb=\"LIST\"} 0.4\n";
        let lists = sum_series(
            text,
            "apiserver_request_total",
            &[("verb", "LIST"), ("resource", "events")],
        );
        assert!((lists - 3.0).abs() < f64::EPSILON, "{lists}");
        assert!((sum_series(text, "apiserver_request_total", &[]) - 15.0).abs() < f64::EPSILON);
        assert!(sum_series(text, "nothing", &[]).abs() < f64::EPSILON);
    }

    #[test]
    fn label_values_may_hold_commas_quotes_and_braces() {
        let labels = parse_labels(r#"a="x,y",b="say \"hi\"",c="{}""#);
        assert_eq!(
            labels,
            vec![
                ("a".to_owned(), "x,y".to_owned()),
                ("b".to_owned(), "say \"hi\"".to_owned()),
                ("c".to_owned(), "{}".to_owned()),
            ]
        );
    }
}
