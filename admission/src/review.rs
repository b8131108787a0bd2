//! Reading an AdmissionReview body into the typed request the decision works on, and
//! writing the answer back. Anything that is not a usable AdmissionReview `admission.k8s.io/v1`
//! is a [`ReviewError`] (HTTP 400), never a panic.

use std::collections::HashMap;

use dedupe_shared::run::{GROUP, RESOURCE};
use dedupe_shared::RunView;
use dedupe_shared::{RunRef, DELIVERY_ID_LABEL};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::{StatusCause, StatusDetails};
use kube::core::{DynamicObject, Status};

use crate::decision::Verdict;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// Why a body is not a usable AdmissionReview.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("body is not a JSON AdmissionReview: {0}")]
    Json(String),
    #[error(
        "expected apiVersion {API_VERSION} and kind {KIND}, got apiVersion `{api_version}` and kind `{kind}`"
    )]
    WrongType { api_version: String, kind: String },
    #[error("AdmissionReview has no request")]
    MissingRequest,
    #[error("AdmissionReview request has an empty uid")]
    MissingUid,
    #[error("{operation} request for {resource} has no {field}")]
    MissingObject {
        operation: &'static str,
        resource: String,
        field: &'static str,
    },
}

/// The operation's name as the API server spells it (metrics label, log field).
pub fn operation_name(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// One admission request, reduced to what the decision needs.
#[derive(Debug, Clone)]
pub struct Request {
    pub uid: String,
    pub operation: Operation,
    /// True for `orchestrationruns` of group `orchestration.proompteng.ai` (any version:
    /// the webhook is registered with `matchPolicy: Equivalent`).
    pub is_orchestration_run: bool,
    pub sub_resource: Option<String>,
    pub dry_run: bool,
    /// `request.namespace` / `request.name` (the API server fills the generated name in).
    pub namespace: String,
    pub name: String,
    pub object: Option<RunView>,
    pub old_object: Option<RunView>,
}

/// Parses and checks one AdmissionReview body.
pub fn parse(body: &[u8]) -> Result<Request, ReviewError> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| ReviewError::Json(e.to_string()))?;
    if review.types.api_version != API_VERSION || review.types.kind != KIND {
        return Err(ReviewError::WrongType {
            api_version: review.types.api_version,
            kind: review.types.kind,
        });
    }
    let req: AdmissionRequest<DynamicObject> = review.request.ok_or(ReviewError::MissingRequest)?;
    if req.uid.is_empty() {
        return Err(ReviewError::MissingUid);
    }
    let is_orchestration_run = req.resource.group == GROUP && req.resource.resource == RESOURCE;
    let namespace = req.namespace.clone().unwrap_or_default();
    let view = |o: &DynamicObject| {
        RunView::new(
            o.metadata.namespace.clone().unwrap_or_else(|| namespace.clone()),
            o.metadata
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| req.name.clone()),
            o.metadata.uid.clone().unwrap_or_default(),
            o.metadata.labels.as_ref(),
            o.data.get("spec"),
        )
    };
    let object = req.object.as_ref().map(view);
    let old_object = req.old_object.as_ref().map(view);
    // The objects this webhook acts on must be there; for anything else it just allows.
    if is_orchestration_run && req.sub_resource.is_none() {
        let resource = format!("{}/{}", req.resource.resource, req.name);
        let missing = |operation, field| ReviewError::MissingObject {
            operation,
            resource: resource.clone(),
            field,
        };
        match req.operation {
            Operation::Create if object.is_none() => return Err(missing("CREATE", "object")),
            Operation::Update if object.is_none() => return Err(missing("UPDATE", "object")),
            Operation::Update if old_object.is_none() => return Err(missing("UPDATE", "oldObject")),
            _ => {}
        }
    }
    Ok(Request {
        uid: req.uid,
        operation: req.operation,
        is_orchestration_run,
        sub_resource: req.sub_resource,
        dry_run: req.dry_run,
        namespace,
        name: req.name,
        object,
        old_object,
    })
}

/// The AdmissionReview answer for `verdict`, echoing the request uid.
pub fn respond(uid: &str, verdict: &Verdict) -> AdmissionReview<DynamicObject> {
    let status = if verdict.allowed {
        Status::default()
    } else {
        let mut status = Status::failure(&verdict.message, verdict.reason);
        // Set explicitly: the API server turns a deny without a code (or below 400) into 400.
        status.code = verdict.code;
        status.details = verdict.holder.as_ref().map(duplicate_details);
        status
    };
    // Not `AdmissionResponse::from(&AdmissionRequest)`: `parse` keeps only the fields the
    // decision needs, not kube's whole request (and a streaming parser need not build one).
    // `AdmissionResponse` is non-exhaustive, and `invalid` is its one constructor without a
    // request: it brings the v1 apiVersion/kind we keep; uid, allowed and result are set
    // below, and patch/patchType stay unset (a validating webhook never patches).
    let mut response = AdmissionResponse::invalid("");
    response.uid = uid.to_owned();
    response.allowed = verdict.allowed;
    response.result = status;
    response.audit_annotations =
        HashMap::from([("decision".to_owned(), verdict.decision.as_str().to_owned())]);
    response.warnings = (!verdict.warnings.is_empty()).then(|| verdict.warnings.clone());
    response.into_review()
}

/// `status.details` of a duplicate's 409, naming the run that holds the delivery the way
/// the API server's own AlreadyExists does, so a program can fetch it: group, resource
/// (`kind` is the resource name in Status details), name, uid, and a cause carrying the
/// holder's namespace, which for the `namespace` and `cluster` scopes may differ from the
/// request's. The API server passes the whole Status through to the client.
pub fn duplicate_details(holder: &RunRef) -> StatusDetails {
    StatusDetails {
        name: holder.name.clone(),
        group: GROUP.to_owned(),
        kind: RESOURCE.to_owned(),
        uid: holder.uid.clone(),
        causes: vec![StatusCause {
            reason: "FieldValueDuplicate".to_owned(),
            message: format!(
                "the delivery is held by orchestrationrun {} in namespace {}",
                holder.name, holder.namespace
            ),
            field: format!("metadata.labels[\"{DELIVERY_ID_LABEL}\"]"),
        }],
        retry_after_seconds: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_api_version_is_named() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":null}"#;
        let err = parse(body).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("admission.k8s.io/v1beta1"), "{err}");
    }

    #[test]
    fn missing_request_is_an_error() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        assert!(matches!(parse(body), Err(ReviewError::MissingRequest)));
    }

    const FIXTURES: [&str; 6] = [
        include_str!("../../tests/fixtures/admission-review/create-generatename.json"),
        include_str!("../../tests/fixtures/admission-review/create-fixed-name.json"),
        include_str!("../../tests/fixtures/admission-review/create-dry-run.json"),
        include_str!("../../tests/fixtures/admission-review/update-label-changed.json"),
        include_str!("../../tests/fixtures/admission-review/update-status-subresource.json"),
        include_str!("../../tests/fixtures/admission-review/delete.json"),
    ];

    #[test]
    fn every_recorded_fixture_parses() {
        for body in FIXTURES {
            assert!(parse(body.as_bytes()).is_ok(), "{body}");
        }
    }

    /// Arbitrary JSON values to plant inside a recorded request.
    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            ".{0,80}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,12}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every place in `v`, as JSON pointers.
    fn pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    pointers(
                        child,
                        format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                        out,
                    );
                }
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    pointers(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2_000, ..Default::default() })]

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse(&body);
        }

        /// A recorded request with any one field replaced by any JSON value either parses
        /// or is rejected cleanly, and whatever parses gets a decision without panicking.
        #[test]
        fn mutated_fixtures_never_panic(which in 0usize..6, slot in 0usize..10_000, value in any_json()) {
            let mut v: serde_json::Value = serde_json::from_str(FIXTURES[which]).unwrap_or_default();
            let mut places = Vec::new();
            pointers(&v, String::new(), &mut places);
            let place = &places[slot % places.len()];
            if place.is_empty() {
                v = value;
            } else if let Some(target) = v.pointer_mut(place) {
                *target = value;
            }
            if let Ok(request) = parse(v.to_string().as_bytes()) {
                for scope in [dedupe_shared::ClaimScope::Orchestration, dedupe_shared::ClaimScope::Cluster] {
                    let policy = crate::decision::Policy { scope, grace: std::time::Duration::from_secs(120) };
                    let _ = crate::decision::plan(&request, &policy);
                }
            }
        }
    }

    #[test]
    fn a_duplicate_answer_carries_details_naming_the_holder() {
        use crate::decision::{Decision, Verdict};
        let holder = RunRef {
            namespace: "agents".into(),
            name: "codex-autonomous-x7k2p".into(),
            uid: "u-1".into(),
        };
        let verdict = Verdict {
            allowed: false,
            code: 409,
            reason: "AlreadyExists",
            message: "delivery d already has a run".into(),
            decision: Decision::Duplicate,
            warnings: Vec::new(),
            existing_run: Some(holder.to_string()),
            holder: Some(holder),
        };
        let json = match serde_json::to_value(respond("req-1", &verdict)) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        let status = &json["response"]["status"];
        assert_eq!(status["code"], 409);
        assert_eq!(status["reason"], "AlreadyExists");
        assert_eq!(status["message"], "delivery d already has a run");
        assert_eq!(
            status["details"],
            serde_json::json!({
                "group": "orchestration.proompteng.ai",
                "kind": "orchestrationruns",
                "name": "codex-autonomous-x7k2p",
                "uid": "u-1",
                "causes": [{
                    "reason": "FieldValueDuplicate",
                    "field": "metadata.labels[\"jangar.proompteng.ai/delivery-id\"]",
                    "message": "the delivery is held by orchestrationrun codex-autonomous-x7k2p in namespace agents"
                }]
            })
        );
        assert_eq!(json["response"]["uid"], "req-1");
    }

    #[test]
    fn not_json_is_an_error() {
        assert!(matches!(parse(b"\xff\x00not json"), Err(ReviewError::Json(_))));
        assert!(matches!(parse(b"[]"), Err(ReviewError::Json(_))));
    }
}
