//! Runs the real `dedupe-admission` binary for a test: dev certificates in a temp dir,
//! loopback ports chosen by the kernel (read back from the JSON start-up log), stdout kept
//! for assertions, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use certs_dev::{CertRequest, DevCerts};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::https::{http_get, HttpsClient, Reply};

/// The DNS name the dev serving certificate is issued for.
pub const SERVER_NAME: &str = "orchestration-dedupe.test.svc";

/// `target/<profile>/<name>`, next to the running binary: a test runs from
/// `target/<profile>/deps/`, the demo from `target/<profile>/`.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("unexpected binary path {}", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| anyhow!("unexpected test binary path {}", exe.display()))?;
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (`cargo build --workspace`; `make test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// Dev CA + serving certificate written to a temp dir.
pub struct TestCerts {
    pub dir: tempfile::TempDir,
    pub certs: DevCerts,
}

impl TestCerts {
    pub fn new() -> Result<Self> {
        let request = CertRequest::new(
            vec![SERVER_NAME.into(), "localhost".into()],
            vec!["127.0.0.1".parse()?],
        )
        .with_client("kube-apiserver");
        let certs = certs_dev::generate(&request)?;
        let dir = tempfile::Builder::new().prefix("dedupe-certs-").tempdir()?;
        certs.write_to(dir.path())?;
        Ok(Self { dir, certs })
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }
    pub fn ca_pem(&self) -> &str {
        &self.certs.ca_cert_pem
    }
}

/// A running webhook.
pub struct Webhook {
    child: Child,
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub ca_pem: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Webhook {
    /// Starts the webhook on `database_url` with the dev certs and extra flags/env.
    pub async fn start(
        database_url: &str,
        certs: &TestCerts,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_with(
            database_url,
            &certs.cert(),
            &certs.key(),
            certs.ca_pem(),
            args,
            env,
        )
        .await
    }

    pub async fn start_with(
        database_url: &str,
        cert: &Path,
        key: &Path,
        ca_pem: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut command = Command::new(binary("dedupe-admission")?);
        command.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
        // JSON logs unless the test asks for a format (the start-up line is read in both).
        if !args.contains(&"--log-format") {
            command.args(["--log-format", "json"]);
        }
        command
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .args(args)
            .env("DATABASE_URL", database_url)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().context("starting dedupe-admission")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::channel::<(SocketAddr, SocketAddr)>(1);
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(collect_lines(stdout, logs.clone(), addr_tx.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(collect_lines(stderr, logs.clone(), addr_tx));
        }
        let started = tokio::time::timeout(Duration::from_secs(30), addr_rx.recv()).await;
        let (addr, ops_addr) = match started {
            Ok(Some(addrs)) => addrs,
            _ => {
                let status = child.try_wait().ok().flatten();
                let logs = logs.lock().map(|l| l.join("\n")).unwrap_or_default();
                bail!("dedupe-admission did not start (exit: {status:?}):\n{logs}");
            }
        };
        Ok(Self {
            child,
            addr,
            ops_addr,
            ca_pem: ca_pem.to_owned(),
            logs,
        })
    }

    pub fn client(&self) -> Result<HttpsClient> {
        HttpsClient::new(self.addr, &self.ca_pem, SERVER_NAME)
    }

    /// One AdmissionReview on a fresh connection.
    pub async fn review(&self, body: &serde_json::Value) -> Result<Reply> {
        self.client()?.connect().await?.review(body).await
    }

    pub async fn ops(&self, path: &str) -> Result<Reply> {
        http_get(self.ops_addr, path).await
    }

    /// `/proc/<pid>/status` of the process (VmRSS, VmHWM, …).
    pub fn proc_status(&self) -> Result<String> {
        let pid = self.pid().ok_or_else(|| anyhow!("already exited"))?;
        Ok(std::fs::read_to_string(format!("/proc/{pid}/status"))?)
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, as a node failure or OOM kill would.
    pub async fn kill9(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then wait for the exit status.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        let pid = self.child.id().ok_or_else(|| anyhow!("already exited"))?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??)
    }

    /// Waits for the process to exit on its own.
    pub async fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        Ok(tokio::time::timeout(limit, self.child.wait()).await??)
    }
}

/// Keeps every line the process prints, and reports the listen addresses from the
/// start-up line when it goes by.
async fn collect_lines(
    stream: impl tokio::io::AsyncRead + Unpin,
    logs: Arc<Mutex<Vec<String>>>,
    addresses: tokio::sync::mpsc::Sender<(SocketAddr, SocketAddr)>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(addrs) = serving_addresses(&line) {
            let _ = addresses.send(addrs).await;
        }
        if let Ok(mut logs) = logs.lock() {
            logs.push(line);
        }
    }
}

fn serving_addresses(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if !line.starts_with('{') {
        // The text format: `… dedupe-admission serving listen=… metrics_listen=…`.
        if !line.contains("dedupe-admission serving") {
            return None;
        }
        let field = |name: &str| {
            line.split(' ')
                .find_map(|part| part.strip_prefix(name))
                .and_then(|v| v.parse().ok())
        };
        return Some((field("listen=")?, field("metrics_listen=")?));
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["message"] != "dedupe-admission serving" {
        return None;
    }
    Some((
        v["listen"].as_str()?.parse().ok()?,
        v["metrics_listen"].as_str()?.parse().ok()?,
    ))
}
