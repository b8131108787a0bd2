//! The two processes of a control plane, etcd and kube-apiserver, started from
//! `KUBEBUILDER_ASSETS` with the flags `../shared/k8s/README.md` lists, on free loopback
//! ports, logging into files in the control plane's directory. Killed on drop: a test that
//! fails (or panics) never leaves them running.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::postgres::free_port;

/// The environment variable naming the directory with `kube-apiserver` and `etcd` (envtest's
/// convention: `setup-envtest use 1.32 -p path` prints such a directory).
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";

/// How long etcd and then the API server get to answer their health endpoints.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping process gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The assets directory from [`ASSETS_ENV`], checked to hold both binaries.
pub fn assets_from_env() -> Result<Option<PathBuf>> {
    let Some(dir) = std::env::var_os(ASSETS_ENV).filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let dir = PathBuf::from(dir);
    for binary in ["kube-apiserver", "etcd"] {
        if !dir.join(binary).is_file() {
            bail!(
                "{ASSETS_ENV}={} has no `{binary}`: point it at a directory holding kube-apiserver and \
                 etcd (e.g. `setup-envtest use 1.32 -p path`), or unset it to skip the real-API-server tests",
                dir.display()
            );
        }
    }
    Ok(Some(dir))
}

/// A child process killed (and reaped) on drop.
struct Guarded {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Guarded {
    fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Self {
            name,
            child: Some(child),
            log,
        })
    }

    /// The last lines of its log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!(
            "{} log ({}):\n{}",
            self.name,
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then SIGKILL after a grace period; waits for the exit.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = crate::signal::send(child.id(), crate::signal::Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where the API server's certificates and keys are, inside the control plane's directory.
pub struct ApiServerFiles {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

/// etcd and kube-apiserver, running.
pub struct Processes {
    assets: PathBuf,
    dir: PathBuf,
    etcd: Guarded,
    etcd_url: String,
    apiserver: Option<Guarded>,
    apiserver_port: u16,
    files: ApiServerFiles,
}

impl Processes {
    /// Starts etcd, waits for it, then starts the API server (not yet waited for: the caller
    /// checks `/readyz` with a real client, see [`Processes::wait_ready`]).
    pub async fn start(assets: &Path, dir: &Path, files: ApiServerFiles) -> Result<Self> {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(assets.join("etcd"));
        etcd.arg("--name=t")
            .arg(format!("--data-dir={}", dir.join("etcd-data").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=t={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg("--log-level=warn");
        let mut etcd = Guarded::spawn("etcd", etcd, dir.join("etcd.log"))?;
        wait_for_etcd(&mut etcd, client_port).await?;

        let mut processes = Self {
            assets: assets.to_path_buf(),
            dir: dir.to_path_buf(),
            etcd,
            etcd_url,
            apiserver: None,
            apiserver_port: free_port()?,
            files,
        };
        processes.start_apiserver()?;
        Ok(processes)
    }

    pub fn apiserver_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// (Re)starts the API server on the same port, against the same etcd.
    pub fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            bail!("the API server is already running");
        }
        let f = &self.files;
        let mut command = Command::new(self.assets.join("kube-apiserver"));
        command
            .arg(format!("--etcd-servers={}", self.etcd_url))
            .arg(format!("--secure-port={}", self.apiserver_port))
            .args([
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.96.0.0/16",
                // ValidatingAdmissionPolicy is among the defaults these add to.
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                // Its own audit and profiling endpoints are not what these tests are about.
                "--profiling=false",
            ])
            .arg(format!("--client-ca-file={}", f.ca_cert.display()))
            .arg(format!("--tls-cert-file={}", f.serving_cert.display()))
            .arg(format!("--tls-private-key-file={}", f.serving_key.display()))
            .arg(format!("--service-account-key-file={}", f.service_account_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                f.service_account_key.display()
            ))
            .arg(format!("--cert-dir={}", self.dir.join("cert-dir").display()));
        let log = self.dir.join("kube-apiserver.log");
        // Appending across restarts keeps the whole story in one file.
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = log_file.try_clone()?;
        command.stdin(Stdio::null()).stdout(log_file).stderr(err);
        let child = command
            .spawn()
            .with_context(|| format!("starting kube-apiserver ({command:?})"))?;
        self.apiserver = Some(Guarded {
            name: "kube-apiserver",
            child: Some(child),
            log,
        });
        Ok(())
    }

    /// Stops the API server (SIGTERM, as a rolling restart would), keeping etcd and its data.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.stop();
        }
    }

    /// Waits until `ready` says the API server is ready, failing early if it exited.
    pub async fn wait_ready<F, Fut>(&mut self, mut ready: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        loop {
            if ready().await {
                return Ok(());
            }
            let Some(apiserver) = self.apiserver.as_mut() else {
                bail!("the API server is not running");
            };
            if let Some(status) = apiserver.exited() {
                bail!(
                    "kube-apiserver exited ({status}) before it was ready\n{}",
                    apiserver.log_tail()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "kube-apiserver not ready after {START_TIMEOUT:?}\n{}",
                    apiserver.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops both, the API server first.
    pub fn stop(&mut self) {
        self.stop_apiserver();
        self.etcd.stop();
    }
}

async fn wait_for_etcd(etcd: &mut Guarded, port: u16) -> Result<()> {
    let started = Instant::now();
    loop {
        if etcd_healthy(port).await {
            return Ok(());
        }
        if let Some(status) = etcd.exited() {
            bail!("etcd exited ({status}) before it answered\n{}", etcd.log_tail());
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("etcd not healthy after {START_TIMEOUT:?}\n{}", etcd.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /health` on etcd's client port answers `{"health":"true"}`.
async fn etcd_healthy(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(true))
    )
}
