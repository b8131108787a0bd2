//! The OrchestrationRun as the webhook reads it from the API server (the take-over lookup's
//! GET and the reconciler's watch): a typed `kube::Resource` that keeps only what a claim
//! needs. Its deserializer fills `metadata.name`, `namespace`, `uid`,
//! `resourceVersion` (the watcher resumes from it), `creationTimestamp` and the delivery
//! label, and `spec.orchestrationRef.name` and `spec.deliveryId`; everything else —
//! `managedFields`, annotations, other labels, `spec.parameters`, `status` — is skipped as it
//! is parsed (serde's `IgnoredAny`), so an object's size never becomes the webhook's memory.
//!
//! It is lenient where the API server is not strict: a spec field of the wrong type is
//! recorded as `spec_error` (the reconciler then skips and reports the run; the lookup does
//! not take it for a claim's holder) instead of failing the whole list page it came in,
//! which would hold back every run listed after it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use dedupe_store::run::{OrchestrationRef, OrchestrationRunSpec, GROUP, KIND, RESOURCE, VERSION};
use dedupe_store::{RunView, DELIVERY_ID_LABEL};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::NamespaceResourceScope;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A labelled run, slim: see the module documentation for what it keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrchestrationRun {
    /// Only name, namespace, uid, resourceVersion, creationTimestamp and the delivery label.
    pub metadata: ObjectMeta,
    pub spec: OrchestrationRunSpec,
    /// Set when a spec field the claim needs has the wrong type.
    pub spec_error: Option<String>,
}

impl kube::Resource for OrchestrationRun {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(KIND)
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(GROUP)
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(VERSION)
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(RESOURCE)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl OrchestrationRun {
    /// `creationTimestamp` in unix seconds (the API server's resolution).
    pub fn created(&self) -> Option<i64> {
        self.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second())
    }

    /// The claim-relevant view, the one the webhook's rules read.
    pub fn into_view(self) -> RunView {
        let OrchestrationRun {
            metadata,
            spec,
            spec_error,
        } = self;
        RunView {
            namespace: metadata.namespace.unwrap_or_default(),
            name: metadata.name.unwrap_or_default(),
            uid: metadata.uid.unwrap_or_default(),
            delivery_label: metadata.labels.and_then(|mut l| l.remove(DELIVERY_ID_LABEL)),
            spec,
            spec_error,
        }
    }
}

impl<'de> Deserialize<'de> for OrchestrationRun {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RunVisitor)
    }
}

struct RunVisitor;

impl<'de> Visitor<'de> for RunVisitor {
    type Value = OrchestrationRun;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an OrchestrationRun object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut run = OrchestrationRun::default();
        while let Some(field) = map.next_key::<TopField>()? {
            match field {
                TopField::Metadata => run.metadata = map.next_value::<SlimMeta>()?.0,
                TopField::Spec => match map.next_value::<Lenient<SpecFields>>()? {
                    Lenient::Absent => {}
                    Lenient::Value(fields) => {
                        run.spec_error = fields.error();
                        run.spec = fields.into_spec();
                    }
                    Lenient::Wrong(what) => run.spec_error = Some(format!("spec is {what}, not an object")),
                },
                TopField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(run)
    }
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum TopField {
    Metadata,
    Spec,
    #[serde(other)]
    Other,
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum MetaField {
    Name,
    Namespace,
    Uid,
    ResourceVersion,
    CreationTimestamp,
    Labels,
    #[serde(other)]
    Other,
}

/// `metadata` with only the fields the claim and the watcher use.
struct SlimMeta(ObjectMeta);

impl<'de> Deserialize<'de> for SlimMeta {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MetaVisitor;
        impl<'de> Visitor<'de> for MetaVisitor {
            type Value = SlimMeta;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("object metadata")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut meta = ObjectMeta::default();
                while let Some(field) = map.next_key::<MetaField>()? {
                    match field {
                        MetaField::Name => meta.name = map.next_value()?,
                        MetaField::Namespace => meta.namespace = map.next_value()?,
                        MetaField::Uid => meta.uid = map.next_value()?,
                        MetaField::ResourceVersion => meta.resource_version = map.next_value()?,
                        MetaField::CreationTimestamp => {
                            meta.creation_timestamp = map.next_value::<Option<Time>>()?
                        }
                        MetaField::Labels => {
                            meta.labels = map
                                .next_value::<DeliveryLabel>()?
                                .0
                                .map(|value| BTreeMap::from([(DELIVERY_ID_LABEL.to_owned(), value)]))
                        }
                        MetaField::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(SlimMeta(meta))
            }
        }
        deserializer.deserialize_map(MetaVisitor)
    }
}

/// A field read without failing on the wrong type: absent (or null), the expected value,
/// or a description of what was there instead (consumed and dropped).
enum Lenient<T> {
    Absent,
    Value(T),
    Wrong(&'static str),
}

/// A value [`Lenient`] can read: from a string or from an object.
trait Shape: Sized {
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl Shape for String {
    fn from_str(s: &str) -> Option<Self> {
        Some(s.to_owned())
    }
}

impl<'de, T: Shape> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenientVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Shape> Visitor<'de> for LenientVisitor<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient::Absent)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient::Absent)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                Lenient::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient::Wrong("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient::Wrong("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient::Wrong("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient::Wrong("a number"))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(T::from_str(s).map_or(Lenient::Wrong("a string"), Lenient::Value))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient::Wrong("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Ok(T::from_map(map)?.map_or(Lenient::Wrong("an object"), Lenient::Value))
            }
        }
        deserializer.deserialize_any(LenientVisitor(std::marker::PhantomData))
    }
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum SpecField {
    OrchestrationRef,
    DeliveryId,
    #[serde(other)]
    Other,
}

/// `spec` as read: each field the claim needs, possibly of the wrong type.
struct SpecFields {
    orchestration_ref: Lenient<RefFields>,
    delivery_id: Lenient<String>,
}

impl SpecFields {
    fn error(&self) -> Option<String> {
        let wrong =
            |field: &str, what: &str, expected: &str| Some(format!("{field} is {what}, not {expected}"));
        match (&self.orchestration_ref, &self.delivery_id) {
            (Lenient::Wrong(what), _) => wrong("spec.orchestrationRef", what, "an object"),
            (Lenient::Value(RefFields(Lenient::Wrong(what))), _) => {
                wrong("spec.orchestrationRef.name", what, "a string")
            }
            (_, Lenient::Wrong(what)) => wrong("spec.deliveryId", what, "a string"),
            _ => None,
        }
    }

    fn into_spec(self) -> OrchestrationRunSpec {
        OrchestrationRunSpec {
            orchestration_ref: match self.orchestration_ref {
                Lenient::Value(RefFields(name)) => Some(OrchestrationRef { name: name.value() }),
                _ => None,
            },
            delivery_id: self.delivery_id.value(),
        }
    }
}

impl<T> Lenient<T> {
    fn value(self) -> Option<T> {
        match self {
            Lenient::Value(v) => Some(v),
            _ => None,
        }
    }
}

impl Shape for SpecFields {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut spec = SpecFields {
            orchestration_ref: Lenient::Absent,
            delivery_id: Lenient::Absent,
        };
        while let Some(field) = map.next_key::<SpecField>()? {
            match field {
                SpecField::OrchestrationRef => spec.orchestration_ref = map.next_value()?,
                SpecField::DeliveryId => spec.delivery_id = map.next_value()?,
                SpecField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(spec))
    }
}

/// `spec.orchestrationRef`: its `name`.
struct RefFields(Lenient<String>);

impl Shape for RefFields {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut name = Lenient::Absent;
        while let Some(IsName(is_name)) = map.next_key()? {
            if is_name {
                name = map.next_value()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(RefFields(name)))
    }
}

struct IsName(bool);

impl<'de> Deserialize<'de> for IsName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = IsName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
                Ok(IsName(key == "name"))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A map key, borrowed from the body unless it has escapes: comparing keys must not
/// allocate one string per key of a large object.
pub(crate) struct Key<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// `metadata.labels`, keeping only the delivery-id label's value: no map of every label is
/// built. A delivery-id key given twice is an error rather than a guess at which one the
/// API server stored (it never sends one twice; a forged body might). The review parser,
/// the lookup and the reconciler all read a run's labels with it.
#[derive(Default)]
pub(crate) struct DeliveryLabel(pub(crate) Option<String>);

impl<'de> Deserialize<'de> for DeliveryLabel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelsVisitor;
        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = DeliveryLabel;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of labels")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(DeliveryLabel(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut found = None;
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if key == DELIVERY_ID_LABEL {
                        if found.is_some() {
                            return Err(de::Error::custom(format_args!(
                                "label {DELIVERY_ID_LABEL} is given twice"
                            )));
                        }
                        found = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(DeliveryLabel(found))
            }
        }
        deserializer.deserialize_any(LabelsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dedupe_store::ClaimScope;
    use serde_json::json;

    fn object(spec: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "orchestration.proompteng.ai/v1alpha1",
            "kind": "OrchestrationRun",
            "metadata": {
                "name": "codex-autonomous-x7k2p",
                "generateName": "codex-autonomous-",
                "namespace": "agents",
                "uid": "599aef04-af48-4dfe-9e63-c02ffc7d621d",
                "resourceVersion": "4711",
                "generation": 1,
                "creationTimestamp": "2026-11-27T09:00:01Z",
                "labels": {"app": "jangar", DELIVERY_ID_LABEL: "d-1", "team": "x"},
                "annotations": {"note": "a".repeat(4096)},
                "managedFields": [{
                    "manager": "submitter", "operation": "Update",
                    "apiVersion": "orchestration.proompteng.ai/v1alpha1",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:parameters": {"f:prompt": {}}}}
                }]
            },
            "spec": spec,
            "status": {"phase": "Running", "log": "b".repeat(4096)}
        })
    }

    fn read(value: serde_json::Value) -> OrchestrationRun {
        match serde_json::from_value(value) {
            Ok(run) => run,
            Err(e) => panic!("deserializing: {e}"),
        }
    }

    /// The object's bodies — a 4 KB parameter, annotations, managedFields, other labels,
    /// status — are not kept: what is left is exactly the claim's fields.
    #[test]
    fn keeps_only_what_a_claim_needs() {
        let run = read(object(json!({
            "orchestrationRef": {"name": "codex", "namespace": "elsewhere"},
            "deliveryId": "d-1",
            "parameters": {"prompt": "p".repeat(4096), "repository": "proompteng/lab"},
        })));
        let expected_meta = ObjectMeta {
            name: Some("codex-autonomous-x7k2p".into()),
            namespace: Some("agents".into()),
            uid: Some("599aef04-af48-4dfe-9e63-c02ffc7d621d".into()),
            resource_version: Some("4711".into()),
            creation_timestamp: run.metadata.creation_timestamp.clone(),
            labels: Some(BTreeMap::from([(DELIVERY_ID_LABEL.to_owned(), "d-1".to_owned())])),
            ..ObjectMeta::default()
        };
        assert_eq!(run.metadata, expected_meta);
        assert_eq!(run.created(), Some(1_795_770_001));
        assert_eq!(run.spec_error, None);
        let debug = format!("{run:?}");
        assert!(debug.len() < 1024, "something big was kept: {debug}");
        for body in [
            "ppp",
            "aaa",
            "bbb",
            "submitter",
            "FieldsV1",
            "proompteng/lab",
            "\"app\"",
            "\"team\"",
            "elsewhere",
            "Running",
        ] {
            assert!(!debug.contains(body), "{body} kept: {debug}");
        }
        let view = run.into_view();
        assert_eq!(view.orchestration(), Some("codex"));
        assert_eq!(view.spec_delivery_id(), Some("d-1"));
        assert!(view.checked_key(ClaimScope::Orchestration).is_ok());
    }

    #[test]
    fn wrong_spec_types_are_recorded_not_fatal() {
        for (spec, field) in [
            (
                json!({"orchestrationRef": {"name": 42}}),
                "spec.orchestrationRef.name",
            ),
            (json!({"orchestrationRef": "codex"}), "spec.orchestrationRef"),
            (
                json!({"orchestrationRef": {"name": "codex"}, "deliveryId": ["d"]}),
                "spec.deliveryId",
            ),
            (json!("not an object"), "spec"),
        ] {
            let run = read(object(spec.clone()));
            assert!(
                run.spec_error.as_deref().is_some_and(|e| e.starts_with(field)),
                "{spec}: {:?}",
                run.spec_error
            );
            assert_eq!(run.metadata.name.as_deref(), Some("codex-autonomous-x7k2p"));
        }
        let bare = read(object(serde_json::Value::Null));
        assert_eq!(
            (bare.spec_error, bare.spec),
            (None, OrchestrationRunSpec::default())
        );
    }

    #[test]
    fn a_list_page_with_an_odd_run_still_reads() {
        let page = json!({
            "apiVersion": "orchestration.proompteng.ai/v1alpha1",
            "kind": "OrchestrationRunList",
            "metadata": {"resourceVersion": "9", "continue": "abc"},
            "items": [
                object(json!({"orchestrationRef": {"name": 7}})),
                object(json!({"orchestrationRef": {"name": "co\u{0}dex"}})),
            ]
        });
        let list: kube::core::ObjectList<OrchestrationRun> = match serde_json::from_value(page) {
            Ok(list) => list,
            Err(e) => panic!("list: {e}"),
        };
        assert_eq!(list.items.len(), 2);
        assert_eq!(
            list.items[1]
                .spec
                .orchestration_ref
                .as_ref()
                .and_then(|r| r.name.as_deref()),
            Some("co\u{0}dex")
        );
    }
}
