//! Self-managed certificates (`--tls-self-secret`, the chart's `admission.tls.mode: self`)
//! against a real kube-apiserver: the webhook makes its CA and serving certificate in a
//! Secret, injects the CA into registrations rendered with no `caBundle`, the API server then
//! calls it over TLS, replicas converge on one Secret, and rotation (seconds-long validities
//! here) changes the served certificate while creates keep being admitted.
//!
//! Runs under `with-kube` (`make test` with `KUBEBUILDER_ASSETS` set).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use dedupe_tests::https::HttpsClient;
use dedupe_tests::kube::{denial, webhook_entry, NewRun, TestNamespace, DELIVERY_LABEL, WEBHOOK_NAME};
use dedupe_tests::webhook::SERVER_NAME;
use dedupe_tests::{new_delivery, TestDb, Webhook};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;

const ORCHESTRATION: &str = "codex-autonomous";
const SECRET: &str = "dedupe-self-tls";

/// The names the serving certificate is made for: the API server calls `https://127.0.0.1`.
const NAMES: &str = "orchestration-dedupe.test.svc,127.0.0.1";

fn validating_name(ns: &TestNamespace) -> String {
    format!("dedupe-selftls-{}", ns.name)
}

fn mutating_name(ns: &TestNamespace) -> String {
    format!("dedupe-selftls-mutating-{}", ns.name)
}

/// The webhook in self-managed mode, its certificate files in `dir` (empty at start).
async fn start_self_managed(ns: &TestNamespace, db: &TestDb, dir: &Path, extra: &[&str]) -> Result<Webhook> {
    start_self_managed_as(ns, db, dir, &ns.plane.admin_kubeconfig(), extra).await
}

/// The same with another identity's kubeconfig.
async fn start_self_managed_as(
    ns: &TestNamespace,
    db: &TestDb,
    dir: &Path,
    kubeconfig: &Path,
    extra: &[&str],
) -> Result<Webhook> {
    let secret = format!("{}/{SECRET}", ns.name);
    let validating = validating_name(ns);
    let mutating = mutating_name(ns);
    let mut args = vec![
        "--kube-lookup",
        "off",
        "--reconcile",
        "off",
        "--tls-self-secret",
        &secret,
        "--tls-self-validating-webhooks",
        &validating,
        "--tls-self-mutating-webhooks",
        &mutating,
        "--tls-self-dns",
        NAMES,
        "--tls-self-check-seconds",
        "1",
    ];
    args.extend_from_slice(extra);
    Webhook::start_with(
        db.url(),
        &dir.join("tls.crt"),
        &dir.join("tls.key"),
        "",
        &args,
        &[("KUBECONFIG", &kubeconfig.to_string_lossy())],
    )
    .await
}

/// Registrations as the chart renders them in self mode: no `caBundle`. The mutating one
/// matches nothing (it is here to see its `caBundle` injected too).
async fn register_without_ca_bundle(ns: &TestNamespace, webhook: &Webhook) -> Result<()> {
    let url = format!("https://127.0.0.1:{}", webhook.addr.port());
    let entry = |path: &str, selector: serde_json::Value| {
        webhook_entry(WEBHOOK_NAME, &format!("{url}{path}"), None, &ns.name, selector)
    };
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": validating_name(ns)},
        "webhooks": [entry("/validate", json!({"matchExpressions": [{"key": DELIVERY_LABEL, "operator": "Exists"}]}))],
    }))?;
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": mutating_name(ns)},
        "webhooks": [entry("/mutate", json!({"matchLabels": {"never-matches": "x"}}))],
    }))?;
    Api::<ValidatingWebhookConfiguration>::all(ns.client.clone())
        .create(&PostParams::default(), &validating)
        .await?;
    Api::<MutatingWebhookConfiguration>::all(ns.client.clone())
        .create(&PostParams::default(), &mutating)
        .await?;
    Ok(())
}

async fn secret_data(ns: &TestNamespace, key: &str) -> Result<String> {
    let secret = Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
        .get(SECRET)
        .await?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .with_context(|| format!("the Secret has no {key}"))?;
    Ok(String::from_utf8(bytes.0.clone())?)
}

/// The first entry's `caBundle` (PEM), if any.
fn first_bundle(client_configs: impl IntoIterator<Item = WebhookClientConfig>) -> Result<Option<String>> {
    let config = client_configs.into_iter().next().context("an entry")?;
    Ok(config
        .ca_bundle
        .map(|b| String::from_utf8_lossy(&b.0).into_owned()))
}

/// The validating registration's `caBundle` (PEM), if any.
async fn validating_bundle(client: &Client, name: &str) -> Result<Option<String>> {
    let config = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await?;
    first_bundle(
        config
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| w.client_config),
    )
}

async fn mutating_bundle(client: &Client, name: &str) -> Result<Option<String>> {
    let config = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await?;
    first_bundle(
        config
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| w.client_config),
    )
}

/// Waits until both registrations trust exactly the Secret's `ca.crt`.
async fn wait_for_injection(ns: &TestNamespace) -> Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ca = secret_data(ns, "ca.crt").await?;
        let validating = validating_bundle(&ns.client, &validating_name(ns)).await?;
        let mutating = mutating_bundle(&ns.client, &mutating_name(ns)).await?;
        if validating.as_deref() == Some(ca.as_str()) && mutating.as_deref() == Some(ca.as_str()) {
            return Ok(ca);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("caBundle not injected: Secret ca.crt {ca:?}, validating {validating:?}, mutating {mutating:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The certificate `webhook` serves on a fresh connection, verified against `ca_pem` for the
/// name the registration's URL uses (127.0.0.1) and the Service-style name.
async fn served_certificate(webhook: &Webhook, ca_pem: &str) -> Result<Vec<u8>> {
    let mut served = None;
    for name in ["127.0.0.1", SERVER_NAME] {
        let connection = HttpsClient::new(webhook.addr, ca_pem, name)?
            .connect()
            .await
            .with_context(|| format!("handshake for {name} trusting the given CA"))?;
        served = connection.peer_certificate;
    }
    served.context("no peer certificate")
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

fn count_certificates(pem: &str) -> usize {
    pem.matches("BEGIN CERTIFICATE").count()
}

#[tokio::test]
async fn the_webhook_makes_its_secret_injects_the_ca_bundle_and_creates_are_admitted_over_tls() -> Result<()>
{
    let ns = TestNamespace::new("selftls").await?;
    let db = TestDb::new().await?;
    let dir = tempfile::tempdir()?;
    // Started before its registrations exist (as a GitOps tool may order them): it serves anyway.
    let webhook = start_self_managed(&ns, &db, dir.path(), &[]).await?;

    let secret = Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
        .get(SECRET)
        .await?;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let keys: BTreeSet<&str> = secret.data.iter().flatten().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, BTreeSet::from(["ca.crt", "ca.key", "tls.crt", "tls.key"]));
    let ca = secret_data(&ns, "ca.crt").await?;
    assert_eq!(count_certificates(&ca), 1);
    // It serves the Secret's certificate, which its CA vouches for.
    let served = served_certificate(&webhook, &ca).await?;
    assert_eq!(served, pem_to_der(&secret_data(&ns, "tls.crt").await?)?);
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("tls.key"))?.permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);

    register_without_ca_bundle(&ns, &webhook).await?;
    assert_eq!(wait_for_injection(&ns).await?, ca);

    // The API server calls the webhook over TLS with the injected bundle: a create is admitted
    // and claimed, and its redelivery denied by the webhook.
    let d = new_delivery();
    let submitted = NewRun::submitted(&d, ORCHESTRATION);
    let mut first = None;
    for _ in 0..100 {
        // The API server's webhook client picks the new caBundle up within a moment.
        match submitted.create(&ns.client, &ns.name).await? {
            Ok(run) => {
                first = Some(run);
                break;
            }
            Err(e) if e.to_string().contains("failed calling webhook") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => bail!("create refused: {e}"),
        }
    }
    let first = first.context("the API server never reached the webhook")?;
    let rows = db.claim_rows(&d).await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(Some(rows[0].0.clone()), first.metadata.name);
    let second = submitted.create(&ns.client, &ns.name).await?;
    assert_eq!(denial(&second)?.code, 409);

    let logs = webhook.logs();
    ensure!(
        logs.iter()
            .any(|l| l.contains("Secret written") && l.contains("no Secret yet")),
        "{logs:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn two_replicas_converge_on_one_secret_and_one_ca() -> Result<()> {
    let ns = TestNamespace::new("selftls-ha").await?;
    let db = TestDb::new().await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    // Both start at once: both find no Secret, both try to create it.
    let (a, b) = tokio::join!(
        start_self_managed(&ns, &db, dir_a.path(), &[]),
        start_self_managed(&ns, &db, dir_b.path(), &[])
    );
    let (a, b) = (a?, b?);
    let ca = secret_data(&ns, "ca.crt").await?;
    assert_eq!(count_certificates(&ca), 1);
    let tls = pem_to_der(&secret_data(&ns, "tls.crt").await?)?;
    assert_eq!(served_certificate(&a, &ca).await?, tls);
    assert_eq!(served_certificate(&b, &ca).await?, tls);
    let writers = [&a, &b]
        .iter()
        .filter(|w| w.logs().iter().any(|l| l.contains("Secret written")))
        .count();
    assert_eq!(writers, 1, "exactly one replica created the Secret");

    register_without_ca_bundle(&ns, &a).await?;
    assert_eq!(wait_for_injection(&ns).await?, ca);
    // Let a few checks of both pass: nothing flaps.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        validating_bundle(&ns.client, &validating_name(&ns)).await?,
        Some(ca.clone())
    );
    assert_eq!(secret_data(&ns, "ca.crt").await?, ca);
    Ok(())
}

#[tokio::test]
async fn rotation_changes_the_served_certificate_and_the_ca_while_creates_keep_being_admitted() -> Result<()>
{
    let ns = TestNamespace::new("selftls-rot").await?;
    let db = TestDb::new().await?;
    let dir = tempfile::tempdir()?;
    // Serving certificates for 9 s (renewed with 3 s left), a CA for 30 s (replaced with 10 s
    // left, the old one trusted until it expires); checks every second.
    let webhook = start_self_managed(
        &ns,
        &db,
        dir.path(),
        &[
            "--tls-self-cert-validity-seconds",
            "9",
            "--tls-self-ca-validity-seconds",
            "30",
        ],
    )
    .await?;
    register_without_ca_bundle(&ns, &webhook).await?;
    wait_for_injection(&ns).await?;

    let mut served = BTreeSet::new();
    let mut cas = BTreeSet::new();
    let mut admitted = 0;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(28) {
        // Every create goes through the API server (failurePolicy Fail): an unverifiable
        // certificate would refuse it.
        let d = new_delivery();
        let created = NewRun::submitted(&d, ORCHESTRATION)
            .create(&ns.client, &ns.name)
            .await?;
        if let Err(e) = created {
            bail!(
                "create refused after {:?} ({admitted} admitted): {e}",
                started.elapsed()
            );
        }
        admitted += 1;
        // A fresh handshake, trusting only what the registration trusts now.
        let bundle = validating_bundle(&ns.client, &validating_name(&ns))
            .await?
            .context("caBundle")?;
        served.insert(served_certificate(&webhook, &bundle).await?);
        let ca = secret_data(&ns, "ca.crt").await?;
        if let Some(current) = ca.split_inclusive("-----END CERTIFICATE-----").next() {
            cas.insert(current.trim().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(served.len() >= 3, "served certificates seen: {}", served.len());
    assert!(cas.len() >= 2, "CAs seen: {}", cas.len());
    assert!(admitted >= 20, "{admitted}");
    let logs = webhook.logs();
    ensure!(logs.iter().any(|l| l.contains("CA rotation")), "{logs:#?}");
    ensure!(
        logs.iter().any(|l| l.contains("serving certificate renewal")),
        "{logs:#?}"
    );
    Ok(())
}

/// The chart's grants for self mode (admission-selftls-rbac.yaml), bound to `user`.
async fn grant_self_tls_rbac(ns: &TestNamespace, user: &str) -> Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let name = format!("selftls-{}", ns.name);
    let subject = json!([{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}]);
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get", "update"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        ],
    }))?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": subject,
    }))?;
    let cluster_role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"],
             "resourceNames": [validating_name(ns)], "verbs": ["get", "patch"]},
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
             "resourceNames": [mutating_name(ns)], "verbs": ["get", "patch"]},
        ],
    }))?;
    let cluster_binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": subject,
    }))?;
    let pp = PostParams::default();
    Api::<Role>::namespaced(ns.client.clone(), &ns.name)
        .create(&pp, &role)
        .await?;
    Api::<RoleBinding>::namespaced(ns.client.clone(), &ns.name)
        .create(&pp, &binding)
        .await?;
    Api::<ClusterRole>::all(ns.client.clone())
        .create(&pp, &cluster_role)
        .await?;
    Api::<ClusterRoleBinding>::all(ns.client.clone())
        .create(&pp, &cluster_binding)
        .await?;
    Ok(())
}

#[tokio::test]
async fn without_rbac_it_does_not_serve_says_what_to_grant_and_starts_once_granted() -> Result<()> {
    let ns = TestNamespace::new("selftls-rbac").await?;
    let db = TestDb::new().await?;
    let dir = tempfile::tempdir()?;
    let user = format!("selftls-{}", ns.name);
    let kubeconfig = ns.plane.user_kubeconfig(&user, &[])?;
    // Granted only after a few seconds: until then it must not serve.
    let grant = async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        grant_self_tls_rbac(&ns, &user).await
    };
    let start = start_self_managed_as(&ns, &db, dir.path(), &kubeconfig, &[]);
    let started_at = tokio::time::Instant::now();
    let (webhook, granted) = tokio::join!(start, grant);
    granted?;
    let webhook = webhook?;
    assert!(
        started_at.elapsed() >= Duration::from_secs(4),
        "served before it had a certificate"
    );
    let logs = webhook.logs();
    let refused = logs
        .iter()
        .position(|l| {
            l.contains("refused to get Secret") && l.contains("grant the webhook's service account `get`")
        })
        .with_context(|| format!("no log line saying what to grant: {logs:#?}"))?;
    let written = logs
        .iter()
        .position(|l| l.contains("Secret written"))
        .context("the Secret was never written")?;
    assert!(refused < written);

    // With exactly the chart's grants (names only), the caBundle is injected and creates pass.
    register_without_ca_bundle(&ns, &webhook).await?;
    wait_for_injection(&ns).await?;
    let d = new_delivery();
    for attempt in 0.. {
        match NewRun::submitted(&d, ORCHESTRATION)
            .create(&ns.client, &ns.name)
            .await?
        {
            Ok(_) => break,
            Err(e) if attempt < 100 && e.to_string().contains("failed calling webhook") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => bail!("create refused: {e}"),
        }
    }
    assert_eq!(db.claim_rows(&d).await?.len(), 1);
    Ok(())
}
