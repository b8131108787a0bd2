//! OrchestrationRuns and the webhook's registration, as the tests use them on a real API
//! server: runs created the way the real submitter creates them (`generateName`, the
//! delivery label, `spec.deliveryId`), and a ValidatingWebhookConfiguration pointing at a
//! webhook under test on loopback, scoped to one test's namespace.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::core::Status;
use kube::Client;
use serde_json::json;

/// The label the submitter sets and the webhook's objectSelector matches.
pub const DELIVERY_LABEL: &str = "jangar.proompteng.ai/delivery-id";
/// The webhook entry's name: the API server quotes it in every deny
/// (`admission webhook "NAME" denied the request: …`).
pub const WEBHOOK_NAME: &str = "dedupe.orchestration.proompteng.ai";

/// How long a new registration gets to reach the API server's admission chain.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("orchestration.proompteng.ai", "v1alpha1", "OrchestrationRun"),
        "orchestrationruns",
    )
}

/// OrchestrationRuns in `namespace`.
pub fn run_api(client: Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, namespace, &run_resource())
}

/// A run to create. [`NewRun::submitted`] is what the real submitter sends.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// `metadata.name`; `None` uses `generateName`.
    pub name: Option<String>,
    pub generate_name: String,
    /// The delivery label's value; `None` leaves the label off.
    pub label: Option<String>,
    /// `spec.deliveryId`; `None` leaves it off.
    pub spec_delivery: Option<String>,
    pub orchestration: String,
}

impl NewRun {
    /// `generateName: ORCHESTRATION-`, the label and `spec.deliveryId` both `delivery`.
    pub fn submitted(delivery: &str, orchestration: &str) -> Self {
        Self {
            name: None,
            generate_name: format!("{orchestration}-"),
            label: Some(delivery.to_owned()),
            spec_delivery: Some(delivery.to_owned()),
            orchestration: orchestration.to_owned(),
        }
    }

    /// The same with a fixed `metadata.name`.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    pub fn object(&self, namespace: &str) -> Result<DynamicObject> {
        let mut metadata = json!({"namespace": namespace});
        match &self.name {
            Some(name) => metadata["name"] = json!(name),
            None => metadata["generateName"] = json!(self.generate_name),
        }
        if let Some(label) = &self.label {
            metadata["labels"] = json!({ DELIVERY_LABEL: label });
        }
        let mut spec = json!({
            "orchestrationRef": {"name": self.orchestration},
            "parameters": {"repository": "proompteng/lab", "issueNumber": "1966"},
        });
        if let Some(delivery) = &self.spec_delivery {
            spec["deliveryId"] = json!(delivery);
        }
        Ok(serde_json::from_value(json!({
            "apiVersion": "orchestration.proompteng.ai/v1alpha1",
            "kind": "OrchestrationRun",
            "metadata": metadata,
            "spec": spec,
        }))?)
    }

    /// Creates it; the API server's answer as a client receives it (a deny is `Err` with the
    /// webhook's Status, see [`denial`]).
    pub async fn create(&self, client: &Client, namespace: &str) -> Result<kube::Result<DynamicObject>> {
        Ok(run_api(client.clone(), namespace)
            .create(&PostParams::default(), &self.object(namespace)?)
            .await)
    }

    /// The same as a server-side dry run.
    pub async fn create_dry_run(
        &self,
        client: &Client,
        namespace: &str,
    ) -> Result<kube::Result<DynamicObject>> {
        let params = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        Ok(run_api(client.clone(), namespace)
            .create(&params, &self.object(namespace)?)
            .await)
    }
}

/// The Status of a request the API server refused (a webhook's deny among them).
pub fn denial<T: std::fmt::Debug>(result: &kube::Result<T>) -> Result<&Status> {
    match result {
        Err(kube::Error::Api(status)) => Ok(status),
        other => bail!("expected the API server to refuse the request, got {other:?}"),
    }
}

/// A registration of a webhook under test.
#[derive(Debug, Clone)]
pub struct WebhookRegistration {
    /// Only requests for objects in this namespace are sent (namespaceSelector on
    /// `kubernetes.io/metadata.name`), so tests sharing a control plane never see each other's.
    pub namespace: String,
    /// `https://127.0.0.1:PORT`; `/validate` is appended.
    pub base_url: String,
    /// The CA that signed the webhook's serving certificate (`caBundle`).
    pub ca_pem: String,
    /// `CREATE`, `UPDATE`, `DELETE`.
    pub operations: Vec<String>,
    /// `Fail` or `Ignore`.
    pub failure_policy: String,
    pub timeout_seconds: i32,
}

impl WebhookRegistration {
    /// CREATE only, `failurePolicy: Fail`, 5 s: the chart's defaults.
    pub fn new(namespace: &str, base_url: &str, ca_pem: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            base_url: base_url.to_owned(),
            ca_pem: ca_pem.to_owned(),
            operations: vec!["CREATE".to_owned()],
            failure_policy: "Fail".to_owned(),
            timeout_seconds: 5,
        }
    }

    pub fn operations(mut self, operations: &[&str]) -> Self {
        self.operations = operations.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    pub fn failure_policy(mut self, policy: &str) -> Self {
        self.failure_policy = policy.to_owned();
        self
    }

    /// The object's name: one per namespace.
    pub fn object_name(&self) -> String {
        format!("dedupe-test-{}", self.namespace)
    }
}

/// One webhook entry (validating or mutating: the fields are the same) as the chart renders
/// it: CREATE of orchestrationruns, `failurePolicy: Fail`, 5 s, `sideEffects: NoneOnDryRun`,
/// requests from `namespace` only, `object_selector` as given; `ca_pem` as its `caBundle`
/// (`None`: none, as in the chart's self-managed TLS mode). Callers change what they need.
pub fn webhook_entry(
    name: &str,
    url: &str,
    ca_pem: Option<&str>,
    namespace: &str,
    object_selector: serde_json::Value,
) -> serde_json::Value {
    let mut client_config = json!({ "url": url });
    if let Some(ca_pem) = ca_pem {
        client_config["caBundle"] =
            json!(base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes()));
    }
    json!({
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "NoneOnDryRun",
        "failurePolicy": "Fail",
        "timeoutSeconds": 5,
        "clientConfig": client_config,
        "rules": [{
            "apiGroups": ["orchestration.proompteng.ai"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE"],
            "resources": ["orchestrationruns"],
            "scope": "Namespaced",
        }],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "objectSelector": object_selector,
    })
}

/// Registers the webhook and waits until the API server calls it: a dry-run create whose
/// `spec.deliveryId` differs from its label, which the webhook refuses (422) and the API
/// server alone would admit, is refused by the webhook.
pub async fn register_webhook(client: &Client, registration: &WebhookRegistration) -> Result<()> {
    let mut entry = webhook_entry(
        WEBHOOK_NAME,
        &format!("{}/validate", registration.base_url),
        Some(&registration.ca_pem),
        &registration.namespace,
        json!({"matchExpressions": [{"key": DELIVERY_LABEL, "operator": "Exists"}]}),
    );
    entry["failurePolicy"] = json!(registration.failure_policy);
    entry["timeoutSeconds"] = json!(registration.timeout_seconds);
    entry["rules"][0]["operations"] = json!(registration.operations);
    let configuration: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": registration.object_name()},
        "webhooks": [entry],
    }))?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &configuration)
        .await
        .with_context(|| format!("registering {}", registration.object_name()))?;

    let probe = NewRun {
        spec_delivery: Some("registration-probe-spec".to_owned()),
        ..NewRun::submitted("registration-probe-label", "registration-probe")
    };
    let deadline = tokio::time::Instant::now() + REGISTRATION_TIMEOUT;
    loop {
        match probe.create_dry_run(client, &registration.namespace).await? {
            Err(kube::Error::Api(status))
                if status.message.contains(WEBHOOK_NAME) && status.message.contains("denied the request") =>
            {
                return Ok(())
            }
            // Not registered yet (admitted), or the webhook not answering yet (a calling error).
            _ if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => bail!(
                "the API server did not call the webhook at {} within {REGISTRATION_TIMEOUT:?}: last answer {other:?}",
                registration.base_url
            ),
        }
    }
}
