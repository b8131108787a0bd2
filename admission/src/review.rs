//! Reading an AdmissionReview body into the typed request the decision works on
//! ([`parse`], in `review/parse.rs`: only the fields a decision needs, the rest skipped),
//! and writing the answer back ([`respond`]).

use std::collections::HashMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dedupe_store::run::{GROUP, RESOURCE};
use dedupe_store::{RunRef, DELIVERY_ID_LABEL};
use kube::core::admission::{AdmissionResponse, AdmissionReview};
use kube::core::response::{StatusCause, StatusDetails};
use kube::core::{DynamicObject, Status};

use crate::verdict::Verdict;

pub(crate) mod parse;
pub use parse::{operation_name, parse, Request, ReviewError, API_VERSION, KIND};

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

/// Room for a whole answer in one allocation: an allowed answer is ~300 bytes, a
/// duplicate's 409 with its details under 1 KiB.
const ANSWER_CAPACITY: usize = 1024;

/// An AdmissionReview answer (or any JSON body) as an HTTP 200 response, serialized once
/// into a buffer with room for it. (axum's `Json` starts at 128 bytes and grows a `BytesMut`
/// through its `io::Write` adapter, one piece of JSON at a time.)
pub fn into_http<T: serde::Serialize>(answer: &T) -> Response {
    let mut body = Vec::with_capacity(ANSWER_CAPACITY);
    match serde_json::to_writer(&mut body, answer) {
        Ok(()) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response(),
        // Not reachable for these types (no map with non-string keys); answered as axum's
        // `Json` would.
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `status.details` of a duplicate's 409, naming the run that holds the delivery in the
/// shape of the API server's own AlreadyExists details (the reason differs, see
/// [`crate::verdict::DUPLICATE_REASON`]), so a program can fetch it: group, resource
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
    fn a_duplicate_answer_carries_details_naming_the_holder() {
        use crate::verdict::{Decision, Verdict};
        let holder = RunRef {
            namespace: "agents".into(),
            name: "codex-autonomous-x7k2p".into(),
            uid: "u-1".into(),
        };
        let verdict = Verdict {
            allowed: false,
            code: 409,
            reason: crate::verdict::DUPLICATE_REASON,
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
        assert_eq!(status["reason"], "Conflict");
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
}
