//! `POST /mutate`: the optional mutating webhook (chart value `admission.mutating.enabled`,
//! off by default). A run created with `spec.deliveryId` but without the delivery-id label
//! gets the label from the spec by JSON patch, so the validating webhook, which the API
//! server calls after every mutating one, deduplicates it like any other run.
//!
//! It never touches the claim store and never denies: a run it leaves alone (no
//! `spec.deliveryId`, or a value no label can carry) is judged by the chart's
//! ValidatingAdmissionPolicy and the validating webhook as if this one were not installed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use dedupe_store::run::label_value_problem;
use dedupe_store::DELIVERY_ID_LABEL;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use kube::core::admission::{AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;

use crate::error::HttpError;
use crate::handler::App;
use crate::review::{self, Request};
use crate::server::edge::{self, BodySlot};

/// `POST /mutate`, behind the same request gate and body limit as `/validate`.
pub async fn mutate(
    State(app): State<Arc<App>>,
    Extension(body_slot): Extension<BodySlot>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match mutate_inner(&headers, body, body_slot) {
        Ok(response) => response,
        Err(e) => e.counted(&app.metrics),
    }
}

fn mutate_inner(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    body_slot: BodySlot,
) -> Result<Response, HttpError> {
    let bytes = edge::read_body(&body_slot, headers, body)?;
    let req = review::parse(&bytes);
    drop(bytes);
    body_slot.release();
    let req = req?;
    let patch = label_patch(&req);
    if let (Some(_), Some(object)) = (&patch, &req.object) {
        tracing::info!(
            deliveryId = object.spec_delivery_id().unwrap_or_default(),
            run = %format_args!("{}/{}", object.namespace, object.name),
            "labelled a run from its spec.deliveryId, so that it is deduplicated"
        );
    }
    Ok(review::into_http(&respond(&req.uid, patch)))
}

/// The patch for one request: the delivery-id label from `spec.deliveryId`, only on a
/// CREATE of an OrchestrationRun (not a subresource) that has a usable `spec.deliveryId`
/// and no label. Whether `metadata.labels` exists decides the patch's path (a JSON patch
/// cannot add a key to a map that is not there, and adding the map would replace one).
pub fn label_patch(req: &Request) -> Option<Patch> {
    if !req.is_orchestration_run || req.sub_resource.is_some() || req.operation != Operation::Create {
        return None;
    }
    let object = req.object.as_ref()?;
    if object.delivery_label.is_some() || object.spec_error.is_some() {
        return None;
    }
    let delivery = object.spec_delivery_id()?;
    if label_value_problem(delivery).is_some() {
        return None;
    }
    let operation = if req.object_has_labels {
        AddOperation {
            path: PointerBuf::from_tokens(["metadata", "labels", DELIVERY_ID_LABEL]),
            value: delivery.into(),
        }
    } else {
        AddOperation {
            path: PointerBuf::from_tokens(["metadata", "labels"]),
            value: serde_json::json!({ DELIVERY_ID_LABEL: delivery }),
        }
    };
    Some(Patch(vec![PatchOperation::Add(operation)]))
}

/// Allowed, with the patch when there is one.
fn respond(uid: &str, patch: Option<Patch>) -> AdmissionReview<DynamicObject> {
    // As in `review::respond`: the one constructor without a whole request.
    let mut response = AdmissionResponse::invalid("");
    response.uid = uid.to_owned();
    response.allowed = true;
    response.result = Default::default();
    let response = match patch {
        Some(patch) => match response.clone().with_patch(patch) {
            Ok(patched) => patched,
            Err(e) => {
                // Serializing a one-operation patch of strings cannot fail; if it ever did,
                // allowing unchanged is what this optional webhook being absent would do.
                tracing::error!(error = %e, "could not serialize the label patch; allowing unchanged");
                response
            }
        },
        None => response,
    };
    response.into_review()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const CREATE: &str = include_str!("../../tests/fixtures/admission-review/create-generatename.json");

    fn body(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(CREATE).expect("a recorded fixture is JSON");
        edit(&mut v);
        v.to_string().into_bytes()
    }

    fn patched(body: &[u8]) -> Option<Value> {
        let req = review::parse(body).expect("a valid review");
        let patch = label_patch(&req)?;
        let mut object: Value =
            serde_json::from_slice::<Value>(body).expect("JSON")["request"]["object"].clone();
        json_patch::patch(&mut object, &patch).expect("the patch applies");
        Some(object)
    }

    #[test]
    fn an_unlabelled_run_gets_the_label_from_its_spec() {
        let delivery = "7f0c2b9e-4c1d-4b8a-9a57-0b5b1f3f2e11";
        // Other labels kept.
        let with_labels = body(|v| {
            v["request"]["object"]["metadata"]["labels"] = json!({"team": "a"});
            v["request"]["object"]["spec"]["deliveryId"] = delivery.into();
        });
        let object = patched(&with_labels).expect("a patch");
        assert_eq!(
            object["metadata"]["labels"],
            json!({"team": "a", DELIVERY_ID_LABEL: delivery})
        );
        // No labels map at all, or a null one.
        for labels in [None, Some(Value::Null)] {
            let without = body(|v| {
                match &labels {
                    None => {
                        if let Some(meta) = v["request"]["object"]["metadata"].as_object_mut() {
                            meta.remove("labels");
                        }
                    }
                    Some(l) => v["request"]["object"]["metadata"]["labels"] = l.clone(),
                }
                v["request"]["object"]["spec"]["deliveryId"] = delivery.into();
            });
            let object = patched(&without).expect("a patch");
            assert_eq!(object["metadata"]["labels"], json!({DELIVERY_ID_LABEL: delivery}));
        }
    }

    #[test]
    fn nothing_to_patch_otherwise() {
        type Edit = Box<dyn FnOnce(&mut Value)>;
        let cases: [(&str, Edit); 5] = [
            ("already labelled", Box::new(|_| {})),
            (
                "no spec.deliveryId",
                Box::new(|v| {
                    v["request"]["object"]["metadata"]["labels"] = json!({});
                    v["request"]["object"]["spec"]["deliveryId"] = Value::Null;
                }),
            ),
            (
                "a value no label can carry",
                Box::new(|v| {
                    v["request"]["object"]["metadata"]["labels"] = json!({});
                    v["request"]["object"]["spec"]["deliveryId"] = "not a label value!".into();
                }),
            ),
            (
                "an update",
                Box::new(|v| {
                    v["request"]["operation"] = "UPDATE".into();
                    v["request"]["oldObject"] = v["request"]["object"].clone();
                    v["request"]["object"]["metadata"]["labels"] = json!({});
                }),
            ),
            (
                "another resource",
                Box::new(|v| {
                    v["request"]["resource"]["resource"] = "pods".into();
                    v["request"]["object"]["metadata"]["labels"] = json!({});
                }),
            ),
        ];
        for (what, edit) in cases {
            assert_eq!(patched(&body(edit)), None, "{what}");
        }
    }

    #[test]
    fn the_answer_is_a_json_patch_that_echoes_the_uid() {
        let review = respond(
            "req-1",
            Some(Patch(vec![PatchOperation::Add(AddOperation {
                path: PointerBuf::from_tokens(["metadata", "labels", DELIVERY_ID_LABEL]),
                value: "d".into(),
            })])),
        );
        let json = serde_json::to_value(review).expect("serializable");
        assert_eq!(json["response"]["uid"], "req-1");
        assert_eq!(json["response"]["allowed"], true);
        assert_eq!(json["response"]["patchType"], "JSONPatch");
        // kube writes the bytes as a JSON array of numbers, which the API server's decoder
        // takes for a []byte as it takes base64.
        let bytes: Vec<u8> = serde_json::from_value(json["response"]["patch"].clone()).expect("bytes");
        let patch: Value = serde_json::from_slice(&bytes).expect("a JSON patch");
        assert_eq!(
            patch,
            json!([{"op": "add", "path": "/metadata/labels/jangar.proompteng.ai~1delivery-id", "value": "d"}])
        );
    }
}
