//! Runs the real `dedupe-admission` binary for a test: dev certificates in a temp dir,
//! loopback ports chosen by the kernel (read back from the JSON start-up log), stdout kept
//! for assertions, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, Result};
use certs_dev::{CertRequest, DevCerts};
use tokio::process::Command;

use crate::https::{http_get, HttpsClient, Reply};
use crate::process::Process;
use crate::signal::Signal;

/// The DNS name the dev serving certificate is issued for.
pub const SERVER_NAME: &str = "orchestration-dedupe.test.svc";

/// Kept here for the tests that import it from this module.
pub use crate::binaries::binary;

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
    process: Process,
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub ca_pem: String,
}

/// The reconciler's last complete sync, unix seconds (0 before the first).
pub const RECONCILE_LAST_SYNC: &str = "orchestration_dedupe_reconcile_last_sync_timestamp_seconds";

/// Resident memory of a process, bytes ([`Webhook::memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: now.
    pub rss: i64,
    /// `VmHWM`: the peak since start (or since the peak was last reset).
    pub hwm: i64,
}

impl Webhook {
    /// A fresh schema, dev certificates and the webhook on them with `--kube-lookup off`
    /// plus `args`: the start of most end-to-end tests.
    pub async fn start_fresh(args: &[&str]) -> Result<(crate::TestDb, TestCerts, Self)> {
        let db = crate::TestDb::new().await?;
        let certs = TestCerts::new()?;
        let webhook = Self::start_without_lookup(&db, &certs, args).await?;
        Ok((db, certs, webhook))
    }

    /// The webhook on `db` with `--kube-lookup off` plus `args`.
    pub async fn start_without_lookup(db: &crate::TestDb, certs: &TestCerts, args: &[&str]) -> Result<Self> {
        let all: Vec<&str> = ["--kube-lookup", "off"].iter().chain(args).copied().collect();
        Self::start(db.url(), certs, &all, &[]).await
    }

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
            .envs(env.iter().copied());
        let mut process = Process::spawn(command, "dedupe-admission")?;
        let started = process
            .wait_for_line("start-up line", Duration::from_secs(30), |line| {
                serving_addresses(&line.text).is_some()
            })
            .await;
        let Some((addr, ops_addr)) = started.ok().and_then(|line| serving_addresses(&line.text)) else {
            let status = process.try_wait().ok().flatten();
            let logs = process.output();
            bail!("dedupe-admission did not start (exit: {status:?}):\n{logs}");
        };
        Ok(Self {
            process,
            addr,
            ops_addr,
            ca_pem: ca_pem.to_owned(),
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

    /// One sample's value from `/metrics`: the line `NAME VALUE`, where NAME includes any
    /// labels (`requests_total{decision="claimed"}`). An error when there is no such line.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let reply = self.ops("/metrics").await?;
        let text = String::from_utf8(reply.body.to_vec())?;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .ok_or_else(|| anyhow::anyhow!("no {name} in /metrics"))?;
        value
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name} is not a number ({value:?}): {e}"))
    }

    /// Whether the reconciler completed a sync at or after `since` (unix seconds; any `since`
    /// of 1 or more asks for a first sync: the gauge is 0 until then).
    pub async fn synced_since(&self, since: f64) -> Result<bool> {
        Ok(self.metric(RECONCILE_LAST_SYNC).await? >= since)
    }

    /// The process's resident memory now and its peak (`VmRSS`, `VmHWM`), in bytes.
    pub fn memory(&self) -> Result<Memory> {
        let status = self.proc_status()?;
        let field = |name: &str| -> Result<i64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .ok_or_else(|| anyhow::anyhow!("no {name} in /proc status"))?;
            let kib: i64 = line
                .split_whitespace()
                .nth(1)
                .ok_or_else(|| anyhow::anyhow!("bad line {line:?}"))?
                .parse()?;
            Ok(kib * 1024)
        };
        Ok(Memory {
            rss: field("VmRSS:")?,
            hwm: field("VmHWM:")?,
        })
    }

    /// `/proc/<pid>/status` of the process (VmRSS, VmHWM, …).
    pub fn proc_status(&self) -> Result<String> {
        let pid = self.pid().ok_or_else(|| anyhow::anyhow!("already exited"))?;
        Ok(std::fs::read_to_string(format!("/proc/{pid}/status"))?)
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> Vec<String> {
        self.process.lines().into_iter().map(|l| l.text).collect()
    }

    /// The log lines once `done` holds for them, or as they are after 5 s. The webhook's log
    /// writer gathers lines for up to 10 ms before writing them, so a decision's line can
    /// follow its answer; a test that reads it waits for it this way (and then asserts).
    pub async fn logs_when(&self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let logs = self.logs();
            if done(&logs) || std::time::Instant::now() >= deadline {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// SIGKILL, as a node failure or OOM kill would.
    pub async fn kill9(&mut self) -> Result<()> {
        self.process.kill().await
    }

    /// SIGTERM, then wait for the exit status.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        self.process.signal(Signal::TERM)?;
        self.process.wait(Duration::from_secs(30)).await
    }

    /// Waits for the process to exit on its own.
    pub async fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        self.process.wait(limit).await
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
