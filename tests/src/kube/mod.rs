//! A real Kubernetes control plane for the tests: etcd and kube-apiserver from
//! `KUBEBUILDER_ASSETS` (envtest's convention), certificates made in-process, the
//! OrchestrationRun CRD established.
//!
//! One control plane serves a whole `make test` run: `with-kube -- COMMAND`
//! (`src/bin/with-kube.rs`) starts it, writes its directory ([`KUBE_DIR_ENV`]: the CA, the
//! admin's kubeconfig and client certificate, the server's address) and runs COMMAND; a test
//! attaches to it with [`ControlPlane::shared`] and works in a namespace of its own
//! ([`ControlPlane::namespace`]). Tests that stop and restart the API server start a private
//! one ([`ControlPlane::start_private`]). Either is stopped and its data removed when its
//! owner ends, also on failure (the processes are killed on drop, the directory is a TempDir).
//!
//! Real-API-server tests live in test binaries named `kube_*`; `make test` filters them out,
//! and says so in one line, when `KUBEBUILDER_ASSETS` is not set.

mod pki;
mod processes;
mod runs;
mod slice;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

pub use pki::{Ca, KeyedCert};
pub use processes::{assets_from_env, ASSETS_ENV};
pub use runs::{
    denial, register_webhook, run_api, run_resource, webhook_entry, NewRun, WebhookRegistration,
    DELIVERY_LABEL, WEBHOOK_NAME,
};

pub use slice::TestNamespace;

use processes::{ApiServerFiles, Processes};

/// The environment variable `with-kube` sets to its control plane's directory.
pub const KUBE_DIR_ENV: &str = "DEDUPE_TEST_KUBE_DIR";

/// The CRD the tests install, the same file as `../shared/fixtures/crd-orchestrationrun.yaml`.
const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/crd-orchestrationrun.yaml");
const CRD_NAME: &str = "orchestrationruns.orchestration.proompteng.ai";
/// How long the CRD gets to become Established and served.
const CRD_TIMEOUT: Duration = Duration::from_secs(30);

/// File names inside a control plane's directory.
mod files {
    pub const CA_CERT: &str = "ca.crt";
    pub const CA_KEY: &str = "ca.key";
    pub const SERVING_CERT: &str = "apiserver.crt";
    pub const SERVING_KEY: &str = "apiserver.key";
    pub const SERVICE_ACCOUNT_KEY: &str = "sa.key";
    pub const SERVICE_ACCOUNT_PUB: &str = "sa.pub";
    pub const ADMIN_KUBECONFIG: &str = "admin.kubeconfig";
    pub const ADMIN_CERT: &str = "admin.crt";
    pub const ADMIN_KEY: &str = "admin.key";
    pub const SERVER: &str = "server";
}

/// A running control plane (started here, or attached to through [`KUBE_DIR_ENV`]).
pub struct ControlPlane {
    dir: PathBuf,
    server: String,
    ca: Ca,
    // Dropped in this order: the processes, then their directory.
    processes: Option<Processes>,
    _owned_dir: Option<tempfile::TempDir>,
}

impl ControlPlane {
    /// The control plane `with-kube` started for this test run.
    pub fn shared() -> Result<Self> {
        let dir = std::env::var_os(KUBE_DIR_ENV).map(PathBuf::from).ok_or_else(|| {
            anyhow!(
                "{KUBE_DIR_ENV} is not set: real-API-server tests (binaries `kube_*`) run under \
                 `with-kube`, which `make test` uses when {ASSETS_ENV} names a directory with \
                 kube-apiserver and etcd"
            )
        })?;
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        Ok(Self {
            server: read(files::SERVER)?.trim().to_owned(),
            ca: Ca::from_pem(read(files::CA_CERT)?, read(files::CA_KEY)?),
            dir,
            processes: None,
            _owned_dir: None,
        })
    }

    /// A control plane of the caller's own, from [`ASSETS_ENV`]: for tests that stop and
    /// restart the API server, which would disturb every other test on the shared one.
    pub async fn start_private() -> Result<Self> {
        let assets = assets_from_env()?
            .ok_or_else(|| anyhow!("{ASSETS_ENV} is not set: no kube-apiserver and etcd to start"))?;
        Self::start(&assets).await
    }

    /// Starts etcd and kube-apiserver from `assets` and installs the CRD.
    pub async fn start(assets: &Path) -> Result<Self> {
        let owned = tempfile::Builder::new().prefix("dedupe-kube-").tempdir()?;
        let dir = owned.path().to_path_buf();
        let ca = Ca::generate()?;
        let serving = ca.serving()?;
        let admin = ca.client("admin", &["system:masters"])?;
        let write = |name: &str, content: &str| {
            std::fs::write(dir.join(name), content).with_context(|| format!("writing {name}"))
        };
        write(files::CA_CERT, &ca.cert_pem)?;
        write(files::CA_KEY, ca.key_pem())?;
        write(files::SERVING_CERT, &serving.cert_pem)?;
        write(files::SERVING_KEY, &serving.key_pem)?;
        let service_account = pki::service_account_keys()?;
        write(files::SERVICE_ACCOUNT_KEY, &service_account.private_pem)?;
        write(files::SERVICE_ACCOUNT_PUB, &service_account.public_pem)?;
        write(files::ADMIN_CERT, &admin.cert_pem)?;
        write(files::ADMIN_KEY, &admin.key_pem)?;
        let processes = Processes::start(
            assets,
            &dir,
            ApiServerFiles {
                ca_cert: dir.join(files::CA_CERT),
                serving_cert: dir.join(files::SERVING_CERT),
                serving_key: dir.join(files::SERVING_KEY),
                service_account_key: dir.join(files::SERVICE_ACCOUNT_KEY),
                service_account_pub: dir.join(files::SERVICE_ACCOUNT_PUB),
            },
        )
        .await?;
        let server = processes.apiserver_url();
        write(files::SERVER, &server)?;
        let mut plane = Self {
            dir: dir.clone(),
            server,
            ca,
            processes: Some(processes),
            _owned_dir: Some(owned),
        };
        write(
            files::ADMIN_KUBECONFIG,
            &kubeconfig(&plane.server, &plane.ca.cert_pem, "admin", &admin),
        )?;
        plane.wait_ready().await?;
        plane.install_crd().await?;
        Ok(plane)
    }

    /// The directory with the CA, the admin's kubeconfig and the server's address.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `https://127.0.0.1:PORT`
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// A kubeconfig file for the admin (`O=system:masters`): what the webhook under test
    /// gets as `KUBECONFIG`.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join(files::ADMIN_KUBECONFIG)
    }

    pub async fn admin_client(&self) -> Result<Client> {
        client_from(&self.admin_kubeconfig()).await
    }

    /// A kubeconfig for an ordinary user (client certificate `CN=user`, `O=` each group),
    /// which RBAC governs: nothing is allowed until a Role grants it.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let cert = self.ca.client(user, groups)?;
        let path = self.dir.join(format!(
            "user-{user}-{}.kubeconfig",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, kubeconfig(&self.server, &self.ca.cert_pem, user, &cert))?;
        Ok(path)
    }

    /// A new namespace `PREFIX-XXXXXXXX`, created: each test works in its own.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let prefix: String = prefix.chars().take(40).collect();
        let name = format!("{prefix}-{}", &suffix[..8]);
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))?;
        Api::<Namespace>::all(self.admin_client().await?)
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    /// Stops the API server of a private control plane (etcd and its data stay).
    pub fn stop_apiserver(&mut self) -> Result<()> {
        self.processes
            .as_mut()
            .ok_or_else(|| anyhow!("not a private control plane"))?
            .stop_apiserver();
        Ok(())
    }

    /// Starts it again on the same address and waits until it is ready.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        self.processes
            .as_mut()
            .ok_or_else(|| anyhow!("not a private control plane"))?
            .start_apiserver()?;
        self.wait_ready().await
    }

    /// Stops the processes now (they are also stopped on drop).
    pub fn stop(&mut self) {
        if let Some(processes) = self.processes.as_mut() {
            processes.stop();
        }
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let kubeconfig = self.admin_kubeconfig();
        let processes = self
            .processes
            .as_mut()
            .ok_or_else(|| anyhow!("not a private control plane"))?;
        processes
            .wait_ready(|| {
                let kubeconfig = kubeconfig.clone();
                async move { readyz(&kubeconfig).await.unwrap_or(false) }
            })
            .await
    }

    async fn install_crd(&self) -> Result<()> {
        let text = std::fs::read_to_string(CRD_FILE).with_context(|| format!("reading {CRD_FILE}"))?;
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).with_context(|| format!("parsing {CRD_FILE}"))?;
        let client = self.admin_client().await?;
        let crds = Api::<CustomResourceDefinition>::all(client.clone());
        crds.create(&PostParams::default(), &crd)
            .await
            .context("creating the OrchestrationRun CRD")?;
        let deadline = tokio::time::Instant::now() + CRD_TIMEOUT;
        loop {
            let established = crds.get(CRD_NAME).await?.status.is_some_and(|status| {
                status
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            // Established comes a moment before the resource is served: list it too.
            if established
                && run_api(client.clone(), "default")
                    .list(&Default::default())
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the OrchestrationRun CRD was not established and served within {CRD_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A client for the kubeconfig at `path`, as `kubectl --kubeconfig` would build it.
pub async fn client_from(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn readyz(kubeconfig: &Path) -> Result<bool> {
    let client = client_from(kubeconfig).await?;
    let request = hyper::Request::get("/readyz").body(Vec::new())?;
    let reply = tokio::time::timeout(Duration::from_secs(2), client.request_text(request)).await??;
    Ok(reply.trim() == "ok")
}

/// A kubeconfig (JSON, which is YAML) with the certificates inline.
fn kubeconfig(server: &str, ca_pem: &str, user: &str, cert: &KeyedCert) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(&cert.cert_pem),
            "client-key-data": b64(&cert.key_pem),
        }}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    })
    .to_string()
}
