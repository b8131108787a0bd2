//! Reading an AdmissionReview body into the typed request the decision works on
//! ([`parse`], in `review/parse.rs`: only the fields a decision needs, the rest skipped),
//! and writing the answer back ([`respond`]).

use std::collections::HashMap;

use kube::core::admission::{AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, Status};

use crate::decision::Verdict;

mod parse;
pub use parse::{parse, Request, ReviewError};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// The operation's name as the API server spells it (metrics label, log field).
pub fn operation_name(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// The AdmissionReview answer for `verdict`, echoing the request uid.
pub fn respond(uid: &str, verdict: &Verdict) -> AdmissionReview<DynamicObject> {
    let status = if verdict.allowed {
        Status::default()
    } else {
        let mut status = Status::failure(&verdict.message, verdict.reason);
        // Set explicitly: the API server turns a deny without a code (or below 400) into 400.
        status.code = verdict.code;
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
