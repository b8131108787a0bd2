//! One test's slice of a control plane: its own namespace, an admin client, and the webhook
//! under test started against it (kubeconfig = the admin's, watches limited to the namespace)
//! and registered for it.

use anyhow::Result;
use kube::api::{Api, DynamicObject, ListParams};
use kube::Client;

use super::{register_webhook, run_api, ControlPlane, WebhookRegistration, DELIVERY_LABEL};
use crate::{TestCerts, TestDb, Webhook};

pub struct TestNamespace {
    pub plane: ControlPlane,
    pub client: Client,
    pub name: String,
}

impl TestNamespace {
    /// A fresh namespace on the shared control plane.
    pub async fn new(prefix: &str) -> Result<Self> {
        Self::on(ControlPlane::shared()?, prefix).await
    }

    /// A fresh namespace on `plane`.
    pub async fn on(plane: ControlPlane, prefix: &str) -> Result<Self> {
        let client = plane.admin_client().await?;
        let name = plane.namespace(prefix).await?;
        Ok(Self { plane, client, name })
    }

    /// A fresh namespace, a fresh schema, dev certificates, and the webhook on them
    /// (`args` as for [`TestNamespace::start_webhook`]), registered: the start of most
    /// real-API-server tests.
    pub async fn with_registered_webhook(
        prefix: &str,
        args: &[&str],
    ) -> Result<(Self, TestDb, TestCerts, Webhook)> {
        let ns = Self::new(prefix).await?;
        let db = TestDb::new().await?;
        let certs = TestCerts::new()?;
        let webhook = ns.start_webhook(&db, &certs, args).await?;
        ns.register(&webhook).await?;
        Ok((ns, db, certs, webhook))
    }

    /// The webhook on `db` with the admin's kubeconfig, `--namespaces` this namespace (unless
    /// `args` name their own), plus
    /// `args` (the lookup and the reconciler are `auto`, so on, unless `args` say otherwise).
    pub async fn start_webhook(&self, db: &TestDb, certs: &TestCerts, args: &[&str]) -> Result<Webhook> {
        self.start_webhook_as(&self.plane.admin_kubeconfig(), db, certs, args)
            .await
    }

    /// The same with another identity's kubeconfig.
    pub async fn start_webhook_as(
        &self,
        kubeconfig: &std::path::Path,
        db: &TestDb,
        certs: &TestCerts,
        args: &[&str],
    ) -> Result<Webhook> {
        let kubeconfig = kubeconfig.to_string_lossy();
        // `--namespaces` accumulates, so only when the test does not give its own.
        let mut all = Vec::new();
        if !args.contains(&"--namespaces") {
            all.extend(["--namespaces", self.name.as_str()]);
        }
        all.extend_from_slice(args);
        Webhook::start(db.url(), certs, &all, &[("KUBECONFIG", &kubeconfig)]).await
    }

    /// This namespace's registration of `webhook` (CREATE, `failurePolicy: Fail`).
    pub fn registration(&self, webhook: &Webhook) -> WebhookRegistration {
        WebhookRegistration::new(
            &self.name,
            &format!("https://127.0.0.1:{}", webhook.addr.port()),
            &webhook.ca_pem,
        )
    }

    /// Registers `webhook` as the chart does by default, and waits until it is called.
    pub async fn register(&self, webhook: &Webhook) -> Result<()> {
        register_webhook(&self.client, &self.registration(webhook)).await
    }

    pub fn runs(&self) -> Api<DynamicObject> {
        run_api(self.client.clone(), &self.name)
    }

    /// The names of the live runs labelled with `delivery`, sorted.
    pub async fn runs_of(&self, delivery: &str) -> Result<Vec<String>> {
        let selector = format!("{DELIVERY_LABEL}={delivery}");
        let mut names: Vec<String> = self
            .runs()
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .filter_map(|run| run.metadata.name)
            .collect();
        names.sort();
        Ok(names)
    }
}
