//! AdmissionReview bodies built from the recorded fixtures in `tests/fixtures/` (what a
//! real kube-apiserver sent), edited field by field — never written from scratch.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

pub const LABEL: &str = "jangar.proompteng.ai/delivery-id";

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("admission-review")
}

/// One recorded AdmissionReview, as JSON to edit.
#[derive(Debug, Clone)]
pub struct Review(pub Value);

impl Review {
    /// `name` is the file stem: `create-generatename`, `create-fixed-name`, `create-dry-run`,
    /// `update-label-changed`, `update-status-subresource`, `delete`.
    pub fn load(name: &str) -> Result<Self> {
        let path = fixtures_dir().join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self(serde_json::from_str(&text)?))
    }

    /// A CREATE of run `name` (new object uid, new request uid) for `delivery`.
    pub fn create(delivery: &str, name: &str) -> Result<Self> {
        Ok(Self::load("create-generatename")?
            .delivery(delivery)
            .name(name)
            .new_uids())
    }

    fn request(&mut self) -> &mut Value {
        &mut self.0["request"]
    }

    fn objects(&mut self) -> Vec<&mut Value> {
        let request = self.request();
        let Some(map) = request.as_object_mut() else {
            return Vec::new();
        };
        map.iter_mut()
            .filter(|(k, v)| (k.as_str() == "object" || k.as_str() == "oldObject") && v.is_object())
            .map(|(_, v)| v)
            .collect()
    }

    /// Sets the delivery id on the label and `spec.deliveryId` of every object in the request.
    pub fn delivery(mut self, delivery: &str) -> Self {
        for object in self.objects() {
            object["metadata"]["labels"][LABEL] = delivery.into();
            object["spec"]["deliveryId"] = delivery.into();
        }
        self
    }

    /// Sets `request.name` and the objects' `metadata.name`.
    pub fn name(mut self, name: &str) -> Self {
        self.request()["name"] = name.into();
        for object in self.objects() {
            object["metadata"]["name"] = name.into();
        }
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.request()["namespace"] = namespace.into();
        for object in self.objects() {
            object["metadata"]["namespace"] = namespace.into();
        }
        self
    }

    pub fn orchestration(mut self, orchestration: &str) -> Self {
        for object in self.objects() {
            object["spec"]["orchestrationRef"]["name"] = orchestration.into();
        }
        self
    }

    /// A fresh `request.uid` (the API server sends a new one on every call) and object uid
    /// (a retried create gets a new one too).
    pub fn new_uids(mut self) -> Self {
        self.request()["uid"] = uuid::Uuid::new_v4().to_string().into();
        let uid = uuid::Uuid::new_v4().to_string();
        for object in self.objects() {
            object["metadata"]["uid"] = uid.clone().into();
        }
        self
    }

    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.request()["dryRun"] = dry_run.into();
        self
    }

    /// Any other edit.
    pub fn edit(mut self, f: impl FnOnce(&mut Value)) -> Self {
        f(&mut self.0);
        self
    }

    pub fn request_uid(&self) -> String {
        required_str(&self.0, "/request/uid").to_owned()
    }

    pub fn object_uid(&self) -> String {
        required_str(&self.0, "/request/object/metadata/uid").to_owned()
    }

    pub fn json(&self) -> &Value {
        &self.0
    }
}

/// The `response` of an AdmissionReview answer, with accessors for what tests check.
#[derive(Debug, Clone)]
pub struct Answer(pub Value);

impl Answer {
    pub fn from_reply(reply: &crate::https::Reply) -> Result<Self> {
        anyhow::ensure!(
            reply.status == hyper::StatusCode::OK,
            "expected HTTP 200, got {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        let v = reply.json()?;
        anyhow::ensure!(
            v["apiVersion"] == "admission.k8s.io/v1" && v["kind"] == "AdmissionReview",
            "not an AdmissionReview: {v}"
        );
        Ok(Self(v["response"].clone()))
    }
    pub fn allowed(&self) -> bool {
        self.0["allowed"].as_bool().unwrap_or(false)
    }
    pub fn uid(&self) -> &str {
        required_str(&self.0, "/uid")
    }
    pub fn code(&self) -> u64 {
        self.0["status"]["code"].as_u64().unwrap_or(0)
    }
    /// The denial's reason; panics when the answer has none (an allowed answer has no status).
    pub fn reason(&self) -> &str {
        required_str(&self.0, "/status/reason")
    }
    /// The denial's message; panics when the answer has none.
    pub fn message(&self) -> &str {
        required_str(&self.0, "/status/message")
    }
    /// `status.details` of a deny (`Null` when absent).
    pub fn details(&self) -> &Value {
        &self.0["status"]["details"]
    }
    pub fn decision(&self) -> &str {
        required_str(&self.0, "/auditAnnotations/decision")
    }
    /// The warnings; none when the answer carries no `warnings` field (the API server's own
    /// reading), but a field that is not a list of strings fails the test.
    pub fn warnings(&self) -> Vec<String> {
        match self.0.get("warnings") {
            None => Vec::new(),
            Some(w) => w
                .as_array()
                .unwrap_or_else(|| panic!("warnings is not a list: {}", self.0))
                .iter()
                .map(|s| {
                    s.as_str()
                        .unwrap_or_else(|| panic!("a warning that is not a string: {}", self.0))
                        .to_owned()
                })
                .collect(),
        }
    }
}

/// The string at a JSON pointer. A fixture or an answer without it fails the test here, with
/// the whole document, rather than reading as "" and letting a comparison pass.
fn required_str<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}
