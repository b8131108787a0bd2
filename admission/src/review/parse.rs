//! Reading an AdmissionReview body into the typed [`Request`] the decision works on, without
//! building the object: serde structs name only the fields a decision needs (uid, resource,
//! operation, names, namespace, dry run, subresource; of each object its metadata name,
//! namespace, uid, the delivery-id label, `spec.deliveryId` and `spec.orchestrationRef.name`)
//! and everything else — `spec.parameters`, `managedFields`, `userInfo`, other labels — is
//! skipped by `serde::de::IgnoredAny`, which in serde_json walks the bytes with an explicit
//! stack (one byte per open bracket, no recursion, no values built). So memory is bounded by
//! the body that was read, not by what a generic JSON tree of it would cost: a body of tiny
//! nested arrays costs many times its size as a `DynamicObject` (docs/BENCHMARKS.md,
//! "Memory at the edge").
//!
//! Strings are borrowed from the body while parsing (`Cow`, owned only when JSON escapes
//! must be undone) and the handful that are kept are copied once into [`Request`].
//!
//! Anything that is not a usable AdmissionReview `admission.k8s.io/v1` is a [`ReviewError`]
//! (HTTP 400), never a panic. Wrong types inside `spec` are not: the run's own fields are
//! read leniently and reported as `spec_error` (a 422 naming the field), like before.

use std::borrow::Cow;
use std::fmt;

use dedupe_store::run::{OrchestrationRef, OrchestrationRunSpec, GROUP, RESOURCE};
use dedupe_store::RunView;
use kube::core::admission::Operation;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::Deserialize;

use crate::orchestration_run::{DeliveryLabel, Key};

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

/// One admission request, reduced to what the decision needs.
#[derive(Debug, Clone)]
pub struct Request {
    pub uid: String,
    pub operation: Operation,
    /// True for `orchestrationruns` of group `orchestration.proompteng.ai` (any version:
    /// the webhook is registered with `matchPolicy: Equivalent`).
    pub is_orchestration_run: bool,
    /// `None` also when the API server sends `subResource: ""` (the main resource).
    pub sub_resource: Option<String>,
    pub dry_run: bool,
    /// `request.namespace` / `request.name` (the API server fills the generated name in).
    pub namespace: String,
    pub name: String,
    pub object: Option<RunView>,
    pub old_object: Option<RunView>,
    /// Whether `object.metadata.labels` is there (and not null): the mutating webhook's
    /// patch adds a label to the map, or the map itself when there is none.
    pub object_has_labels: bool,
}

/// Parses and checks one AdmissionReview body.
pub fn parse(body: &[u8]) -> Result<Request, ReviewError> {
    // One UTF-8 check of the whole body (word at a time over ASCII) instead of serde_json's
    // check of each string it borrows from a byte slice.
    let text = std::str::from_utf8(body).map_err(|e| ReviewError::Json(format!("not UTF-8: {e}")))?;
    let review: WireReview<'_> = serde_json::from_str(text).map_err(|e| ReviewError::Json(e.to_string()))?;
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(ReviewError::WrongType {
            api_version: review.api_version.into_owned(),
            kind: review.kind.into_owned(),
        });
    }
    let req = review.request.ok_or(ReviewError::MissingRequest)?;
    if req.uid.is_empty() {
        return Err(ReviewError::MissingUid);
    }
    let is_orchestration_run = req.resource.group == GROUP && req.resource.resource == RESOURCE;
    let sub_resource = req.sub_resource.filter(|s| !s.is_empty());
    let namespace = req.namespace.unwrap_or_default();
    let object_has_labels = req
        .object
        .as_ref()
        .and_then(|o| o.metadata.as_ref())
        .is_some_and(|m| m.labels.is_some());
    let object = req.object.map(|o| o.into_view(&namespace, &req.name));
    let old_object = req.old_object.map(|o| o.into_view(&namespace, &req.name));
    // The objects this webhook acts on must be there; for anything else it just allows.
    if is_orchestration_run && sub_resource.is_none() {
        let missing = |field| ReviewError::MissingObject {
            operation: operation_name(&req.operation),
            resource: format!("{}/{}", req.resource.resource, req.name),
            field,
        };
        match req.operation {
            Operation::Create | Operation::Update if object.is_none() => return Err(missing("object")),
            Operation::Update if old_object.is_none() => return Err(missing("oldObject")),
            _ => {}
        }
    }
    Ok(Request {
        uid: req.uid.into_owned(),
        operation: req.operation,
        is_orchestration_run,
        sub_resource: sub_resource.map(Cow::into_owned),
        dry_run: req.dry_run.unwrap_or(false),
        namespace: namespace.into_owned(),
        name: req.name.into_owned(),
        object,
        old_object,
        object_has_labels,
    })
}

/// The envelope. `apiVersion`/`kind` default to empty so a missing one is reported as the
/// wrong type, naming what was expected.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    #[serde(borrow, default)]
    api_version: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    request: Option<WireRequest<'a>>,
}

/// `request`, the fields a decision reads; `kind`, `requestKind`, `userInfo`, `options`
/// and the rest are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    #[serde(borrow, default)]
    uid: Cow<'a, str>,
    #[serde(borrow)]
    resource: WireResource<'a>,
    #[serde(borrow, default)]
    sub_resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    operation: Operation,
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(borrow, default)]
    object: Option<WireObject<'a>>,
    #[serde(borrow, default)]
    old_object: Option<WireObject<'a>>,
}

#[derive(Deserialize)]
struct WireResource<'a> {
    #[serde(borrow, default)]
    group: Cow<'a, str>,
    #[serde(borrow, default)]
    resource: Cow<'a, str>,
}

/// `object` / `oldObject`: metadata and spec; `status` and the rest are skipped.
#[derive(Deserialize)]
struct WireObject<'a> {
    #[serde(borrow, default)]
    metadata: Option<WireMeta<'a>>,
    #[serde(default)]
    spec: WireSpec,
}

impl WireObject<'_> {
    /// The claim view; the object's own namespace and name win over the request's (they
    /// are the same for a run; a generated name is only in `request.name` for some clients).
    fn into_view(self, namespace: &str, name: &str) -> RunView {
        let meta = self.metadata.unwrap_or_default();
        let owned = |v: Option<Cow<'_, str>>| v.map(Cow::into_owned);
        RunView {
            namespace: owned(meta.namespace).unwrap_or_else(|| namespace.to_owned()),
            name: owned(meta.name.filter(|n| !n.is_empty())).unwrap_or_else(|| name.to_owned()),
            uid: owned(meta.uid).unwrap_or_default(),
            delivery_label: meta.labels.and_then(|labels| labels.0),
            spec: OrchestrationRunSpec {
                orchestration_ref: self
                    .spec
                    .orchestration
                    .map(|name| OrchestrationRef { name: Some(name) }),
                delivery_id: self.spec.delivery_id,
            },
            spec_error: self.spec.error,
        }
    }
}

#[derive(Default, Deserialize)]
struct WireMeta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uid: Option<Cow<'a, str>>,
    /// `None` when absent or null.
    #[serde(default)]
    labels: Option<DeliveryLabel>,
}

/// `spec` as far as the claim goes, read leniently: a wrong type in `deliveryId` or
/// `orchestrationRef` (or a `spec` that is not an object) is kept as `error` for a 422 that
/// names it, not a 400 for the whole review. Null or absent fields are `None`.
#[derive(Default)]
struct WireSpec {
    delivery_id: Option<String>,
    orchestration: Option<String>,
    error: Option<String>,
}

impl<'de> Deserialize<'de> for WireSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = WireSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an OrchestrationRun spec")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut spec = WireSpec::default();
                let (mut seen_id, mut seen_ref) = (false, false);
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    match key.as_ref() {
                        "deliveryId" => {
                            if std::mem::replace(&mut seen_id, true) {
                                return Err(de::Error::duplicate_field("spec.deliveryId"));
                            }
                            match map.next_value::<Lenient>()?.0 {
                                Ok(v) => spec.delivery_id = v,
                                Err(e) => spec.error = Some(format!("spec.deliveryId: {e}")),
                            }
                        }
                        "orchestrationRef" => {
                            if std::mem::replace(&mut seen_ref, true) {
                                return Err(de::Error::duplicate_field("spec.orchestrationRef"));
                            }
                            match map.next_value::<LenientRef>()?.0 {
                                Ok(v) => spec.orchestration = v,
                                Err(e) => spec.error = Some(format!("spec.orchestrationRef{e}")),
                            }
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(spec)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(WireSpec::default())
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(not_an_object(Unexpected::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(not_an_object(Unexpected::Signed(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(not_an_object(Unexpected::Unsigned(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(not_an_object(Unexpected::Float(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(not_an_object(Unexpected::Str(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(not_an_object(Unexpected::Seq))
            }
        }
        fn not_an_object(got: Unexpected<'_>) -> WireSpec {
            WireSpec {
                error: Some(format!("spec: invalid type: {got}, expected an object")),
                ..WireSpec::default()
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

/// A string field that may hold anything: `Ok(None)` for null, `Err(what it was)` for a
/// non-string (whose contents are skipped, not built).
struct Lenient(Result<Option<String>, String>);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor { expected: "a string" })
    }
}

struct LenientVisitor {
    expected: &'static str,
}

impl LenientVisitor {
    fn wrong(&self, got: Unexpected<'_>) -> Lenient {
        Lenient(Err(format!("invalid type: {got}, expected {}", self.expected)))
    }
}

impl<'de> Visitor<'de> for LenientVisitor {
    type Value = Lenient;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expected)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Lenient(Ok(Some(v.to_owned()))))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Lenient(Ok(None)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(self.wrong(Unexpected::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.wrong(Unexpected::Signed(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.wrong(Unexpected::Unsigned(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.wrong(Unexpected::Float(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.wrong(Unexpected::Seq))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.wrong(Unexpected::Map))
    }
}

/// `spec.orchestrationRef`: an object whose `name` is read leniently. The error text
/// continues the field path (`.name: …` or `: …`).
struct LenientRef(Result<Option<String>, String>);

impl<'de> Deserialize<'de> for LenientRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefVisitor;
        impl<'de> Visitor<'de> for RefVisitor {
            type Value = LenientRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object reference")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientRef(Ok(None)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut name = Ok(None);
                let mut seen = false;
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if key == "name" {
                        if std::mem::replace(&mut seen, true) {
                            return Err(de::Error::duplicate_field("spec.orchestrationRef.name"));
                        }
                        name = map.next_value::<Lenient>()?.0.map_err(|e| format!(".name: {e}"));
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(LenientRef(name))
            }
            // Anything else: not an object; the lenient string visitor skips and names it.
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                wrong(Unexpected::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                wrong(Unexpected::Signed(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                wrong(Unexpected::Unsigned(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                wrong(Unexpected::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                wrong(Unexpected::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                wrong(Unexpected::Seq)
            }
        }
        fn wrong<E>(got: Unexpected<'_>) -> Result<LenientRef, E> {
            Ok(LenientRef(Err(format!(
                ": invalid type: {got}, expected an object"
            ))))
        }
        deserializer.deserialize_any(RefVisitor)
    }
}

#[cfg(test)]
mod tests;
