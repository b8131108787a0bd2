//! A typed view of an `OrchestrationRun` (group `orchestration.proompteng.ai`, `v1alpha1`):
//! just the parts that make up its claim — the delivery-id label, `spec.deliveryId` and
//! `spec.orchestrationRef.name` — read leniently, so an odd object is reported as a
//! field-level problem instead of failing to parse.

use serde::Deserialize;

/// The label the submitter puts on every run; its value is the provider's delivery id.
pub const DELIVERY_ID_LABEL: &str = "jangar.proompteng.ai/delivery-id";
/// API group of OrchestrationRun.
pub const GROUP: &str = "orchestration.proompteng.ai";
/// Resource (plural) of OrchestrationRun.
pub const RESOURCE: &str = "orchestrationruns";
/// Version this webhook reads.
pub const VERSION: &str = "v1alpha1";
/// Kind of OrchestrationRun.
pub const KIND: &str = "OrchestrationRun";

/// `spec` as far as the claim is concerned. Unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrchestrationRunSpec {
    #[serde(default)]
    pub orchestration_ref: Option<OrchestrationRef>,
    #[serde(default)]
    pub delivery_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct OrchestrationRef {
    #[serde(default)]
    pub name: Option<String>,
}

/// The claim-relevant view of one OrchestrationRun object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The delivery-id label: `None` when absent, `Some("")` when present but empty.
    pub delivery_label: Option<String>,
    pub spec: OrchestrationRunSpec,
    /// Set when `spec` could not be read as an OrchestrationRun spec (wrong field types).
    pub spec_error: Option<String>,
}

impl RunView {
    /// `spec.orchestrationRef.name`, if set.
    pub fn orchestration(&self) -> Option<&str> {
        self.spec
            .orchestration_ref
            .as_ref()
            .and_then(|r| r.name.as_deref())
    }

    /// `spec.deliveryId`, if set.
    pub fn spec_delivery_id(&self) -> Option<&str> {
        self.spec.delivery_id.as_deref()
    }

    /// The claim key this run carries under `scope`, as the reconciler and the holder check
    /// see it: `None` when the run could not hold a claim ([`RunView::checked_key`] says why).
    pub fn claim_key(&self, scope: crate::ClaimScope) -> Option<crate::ClaimKey> {
        self.checked_key(scope).ok()
    }

    /// The claim key this run carries under `scope`, or the first rule it breaks: no or an
    /// invalid label, an unreadable spec, a spec naming another delivery, no orchestration
    /// where the scope needs one, or a key part or run field Kubernetes itself would refuse
    /// ([`RunView::key_problem`]). The webhook refuses such a create; the reconciler skips
    /// such a run. Both ask here, so they can never disagree on what a claim may hold.
    pub fn checked_key(&self, scope: crate::ClaimScope) -> Result<crate::ClaimKey, KeyRejection> {
        let Some(delivery) = self.delivery_label.as_deref() else {
            return Err(KeyRejection::new(
                RejectReason::Unlabelled,
                DELIVERY_ID_LABEL_FIELD,
                "is missing".into(),
            ));
        };
        if let Some(problem) = label_value_problem(delivery) {
            return Err(KeyRejection::new(
                RejectReason::InvalidDeliveryId,
                DELIVERY_ID_LABEL_FIELD,
                problem,
            ));
        }
        if let Some(error) = &self.spec_error {
            return Err(KeyRejection::new(
                RejectReason::UnreadableSpec,
                "spec",
                format!("cannot be read: {error}"),
            ));
        }
        if let Some(spec_id) = self.spec_delivery_id().filter(|id| *id != delivery) {
            return Err(KeyRejection::new(
                RejectReason::DeliveryIdMismatch,
                "spec.deliveryId",
                format!("{spec_id:?} differs from the {DELIVERY_ID_LABEL} label {delivery:?}"),
            ));
        }
        let orchestration = self.orchestration().unwrap_or_default();
        if scope == crate::ClaimScope::Orchestration && orchestration.is_empty() {
            return Err(KeyRejection::new(
                RejectReason::MissingOrchestration,
                "spec.orchestrationRef.name",
                "is required: it is part of the claim key (claim scope `orchestration`)".into(),
            ));
        }
        if let Some(rejection) = self.key_problem(scope) {
            return Err(rejection);
        }
        Ok(crate::ClaimKey::new(
            scope,
            &self.namespace,
            orchestration,
            delivery,
        ))
    }

    /// The first part of the claim (its key, and the run it records) that Kubernetes itself
    /// would refuse: such a value can never name a real run, and must not reach the store,
    /// where it would fail as a store error (a NUL byte, SQLSTATE 22021; a name too long for
    /// the key's index, 54000) or be claimed (a name longer than any Kubernetes name).
    pub fn key_problem(&self, scope: crate::ClaimScope) -> Option<KeyRejection> {
        let delivery = self.delivery_label.as_deref().unwrap_or_default();
        let orchestration = self.orchestration().unwrap_or_default();
        let checks = [
            (
                RejectReason::InvalidDeliveryId,
                DELIVERY_ID_LABEL_FIELD,
                label_value_problem(delivery),
            ),
            (
                RejectReason::InvalidOrchestration,
                "spec.orchestrationRef.name",
                (scope == crate::ClaimScope::Orchestration)
                    .then(|| dns1123_subdomain_problem(orchestration))
                    .flatten(),
            ),
            (
                RejectReason::InvalidNamespace,
                "metadata.namespace",
                dns1123_label_problem(&self.namespace),
            ),
            (
                RejectReason::InvalidName,
                "metadata.name",
                dns1123_subdomain_problem(&self.name),
            ),
            (RejectReason::InvalidUid, "metadata.uid", uid_problem(&self.uid)),
        ];
        checks.into_iter().find_map(|(reason, field, problem)| {
            problem.map(|problem| KeyRejection::new(reason, field, problem))
        })
    }
}

/// The delivery label as a field path, as the webhook's messages and the reconciler's
/// reports name it.
pub const DELIVERY_ID_LABEL_FIELD: &str = "metadata.labels[\"jangar.proompteng.ai/delivery-id\"]";

/// Why a run cannot hold a claim, as a short stable word (the reconciler's
/// `skipped_runs_total{reason}` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Unlabelled,
    InvalidDeliveryId,
    UnreadableSpec,
    DeliveryIdMismatch,
    MissingOrchestration,
    InvalidOrchestration,
    InvalidNamespace,
    InvalidName,
    InvalidUid,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::Unlabelled,
        RejectReason::InvalidDeliveryId,
        RejectReason::UnreadableSpec,
        RejectReason::DeliveryIdMismatch,
        RejectReason::MissingOrchestration,
        RejectReason::InvalidOrchestration,
        RejectReason::InvalidNamespace,
        RejectReason::InvalidName,
        RejectReason::InvalidUid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unlabelled => "unlabelled",
            RejectReason::InvalidDeliveryId => "invalid_delivery_id",
            RejectReason::UnreadableSpec => "unreadable_spec",
            RejectReason::DeliveryIdMismatch => "delivery_id_mismatch",
            RejectReason::MissingOrchestration => "missing_orchestration",
            RejectReason::InvalidOrchestration => "invalid_orchestration",
            RejectReason::InvalidNamespace => "invalid_namespace",
            RejectReason::InvalidName => "invalid_name",
            RejectReason::InvalidUid => "invalid_uid",
        }
    }
}

/// A run that cannot hold a claim: which field, which rule. Displays as "<field> <rule>".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRejection {
    pub reason: RejectReason,
    pub field: &'static str,
    pub problem: String,
}

impl KeyRejection {
    fn new(reason: RejectReason, field: &'static str, problem: String) -> Self {
        Self {
            reason,
            field,
            problem,
        }
    }
}

impl std::fmt::Display for KeyRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.problem)
    }
}

/// `value` with control characters and quotes escaped (`\0`, `\n`, `\u{1b}`, …) and cut to
/// about `max` characters, for a log line or a terminal that must not interpret what a
/// client put in an object.
pub fn escaped(value: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == max {
            out.push_str(&format!("… ({} characters)", value.chars().count()));
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

/// Checks a delivery id is a valid Kubernetes label value: at most 63 characters,
/// alphanumerics plus `-`, `_`, `.`, starting and ending alphanumeric. Returns what is wrong.
pub fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("is empty".into());
    }
    if let Some(problem) = too_long(
        value,
        crate::claim::MAX_DELIVERY_ID_LEN,
        "label values are at most",
    ) {
        return Some(problem);
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !value.chars().all(ok_char) {
        return Some("may contain only letters, digits, '-', '_' and '.'".into());
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(value.chars().next()) || !edge_ok(value.chars().last()) {
        return Some("must start and end with a letter or digit".into());
    }
    None
}

/// Longest DNS-1123 label (a namespace name): 63, as in Kubernetes' `IsDNS1123Label`.
pub const DNS1123_LABEL_MAX_LEN: usize = 63;
/// Longest DNS-1123 subdomain (an object name): 253, as in Kubernetes' `IsDNS1123Subdomain`.
pub const DNS1123_SUBDOMAIN_MAX_LEN: usize = 253;

/// Checks `value` the way Kubernetes validates a namespace name (`IsDNS1123Label`): at most
/// 63 characters, lower-case letters, digits and `-`, starting and ending with a letter or
/// digit. Returns the rule that is broken, worded to follow the field's name.
pub fn dns1123_label_problem(value: &str) -> Option<String> {
    if let Some(problem) = too_long(value, DNS1123_LABEL_MAX_LEN, "a DNS-1123 label is at most") {
        return Some(problem);
    }
    label_part_problem(value).map(|rule| format!("is not a DNS-1123 label: {rule}"))
}

/// Checks `value` the way Kubernetes validates an object name (`IsDNS1123Subdomain`): at
/// most 253 characters, dot-separated parts each of lower-case letters, digits and `-`
/// that start and end with a letter or digit. Returns the rule that is broken.
pub fn dns1123_subdomain_problem(value: &str) -> Option<String> {
    if let Some(problem) = too_long(
        value,
        DNS1123_SUBDOMAIN_MAX_LEN,
        "a DNS-1123 subdomain is at most",
    ) {
        return Some(problem);
    }
    value
        .split('.')
        .find_map(label_part_problem)
        .map(|rule| format!("is not a DNS-1123 subdomain: {rule}"))
}

/// Longest object uid accepted. The API server writes a 36-character UUID; this leaves
/// room for any other form while keeping a forged one out of the claim table.
pub const MAX_UID_LEN: usize = 128;

/// Checks an object uid: at most [`MAX_UID_LEN`] characters of printable ASCII (no NUL,
/// no control characters, no spaces). Empty is allowed (the field is optional).
pub fn uid_problem(value: &str) -> Option<String> {
    if let Some(problem) = too_long(value, MAX_UID_LEN, "at most") {
        return Some(problem);
    }
    (!value.chars().all(|c| c.is_ascii_graphic()))
        .then(|| "may contain only printable ASCII characters without spaces".to_owned())
}

/// `is N characters long; <limit> <max>` when `value` is longer than `max`.
fn too_long(value: &str, max: usize, limit: &str) -> Option<String> {
    (value.len() > max).then(|| format!("is {} characters long; {limit} {max}", value.len()))
}

/// One dot-free part of a DNS-1123 name (length is checked by the callers).
fn label_part_problem(part: &str) -> Option<&'static str> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if part.is_empty() {
        Some("empty, or an empty part between dots")
    } else if !part.chars().all(ok_char) {
        Some("only lower-case letters, digits, '-' and '.' are allowed")
    } else if !edge_ok(part.chars().next()) || !edge_ok(part.chars().last()) {
        Some("each part must start and end with a lower-case letter or digit")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use serde_json::json;

    /// A view built from an object's metadata and its raw `spec` (the webhook's parser and
    /// the reconciler's deserializer build theirs while they read the object).
    fn view(
        namespace: String,
        name: String,
        uid: String,
        labels: Option<&BTreeMap<String, String>>,
        spec: Option<&serde_json::Value>,
    ) -> RunView {
        let delivery_label = labels.and_then(|l| l.get(DELIVERY_ID_LABEL)).cloned();
        let (spec, spec_error) = match spec {
            None | Some(serde_json::Value::Null) => (OrchestrationRunSpec::default(), None),
            Some(value) => match OrchestrationRunSpec::deserialize(value) {
                Ok(spec) => (spec, None),
                Err(e) => (OrchestrationRunSpec::default(), Some(e.to_string())),
            },
        };
        RunView {
            namespace,
            name,
            uid,
            delivery_label,
            spec,
            spec_error,
        }
    }

    fn labels(v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(DELIVERY_ID_LABEL.to_owned(), v.to_owned())])
    }

    #[test]
    fn reads_label_and_spec() {
        let spec =
            json!({"orchestrationRef": {"name": "codex"}, "deliveryId": "d1", "parameters": {"a": "b"}});
        let v = view(
            "ns".into(),
            "r".into(),
            "u".into(),
            Some(&labels("d1")),
            Some(&spec),
        );
        assert_eq!(v.delivery_label.as_deref(), Some("d1"));
        assert_eq!(v.orchestration(), Some("codex"));
        assert_eq!(v.spec_delivery_id(), Some("d1"));
        assert_eq!(v.spec_error, None);
    }

    #[test]
    fn wrong_spec_types_are_reported_not_fatal() {
        let spec = json!({"deliveryId": 42});
        let v = view("ns".into(), "r".into(), "u".into(), None, Some(&spec));
        assert!(v.spec_error.is_some());
        assert_eq!(v.delivery_label, None);
    }

    #[test]
    fn claim_key_needs_a_valid_label_and_the_scope_s_parts() {
        use crate::ClaimScope;
        let spec = json!({"orchestrationRef": {"name": "codex"}, "deliveryId": "d1"});
        let v = view(
            "ns".into(),
            "r".into(),
            "u".into(),
            Some(&labels("d1")),
            Some(&spec),
        );
        let key = v.claim_key(ClaimScope::Orchestration);
        assert_eq!(
            key.as_ref().map(|k| (
                k.namespace.as_str(),
                k.orchestration.as_str(),
                k.delivery_id.as_str()
            )),
            Some(("ns", "codex", "d1"))
        );
        assert_eq!(
            v.claim_key(ClaimScope::Cluster).map(|k| k.namespace),
            Some(String::new())
        );
        let other = view(
            "ns".into(),
            "r".into(),
            "u".into(),
            Some(&labels("d2")),
            Some(&spec),
        );
        assert_eq!(
            other.claim_key(ClaimScope::Orchestration),
            None,
            "spec names another delivery"
        );
        let no_orch = view("ns".into(), "r".into(), "u".into(), Some(&labels("d1")), None);
        assert_eq!(no_orch.claim_key(ClaimScope::Orchestration), None);
        assert!(no_orch.claim_key(ClaimScope::Namespace).is_some());
        let bad = view("ns".into(), "r".into(), "u".into(), Some(&labels("")), None);
        assert_eq!(bad.claim_key(ClaimScope::Cluster), None);
    }

    #[test]
    fn checked_key_names_the_field_and_a_stable_reason() {
        use crate::ClaimScope;
        let view = |orchestration: &str, name: &str| {
            let spec = json!({"orchestrationRef": {"name": orchestration}, "deliveryId": "d1"});
            view(
                "ns".into(),
                name.into(),
                "u".into(),
                Some(&labels("d1")),
                Some(&spec),
            )
        };
        let nul = view("co\0dex", "r").checked_key(ClaimScope::Orchestration);
        assert!(
            matches!(&nul, Err(r) if r.reason == RejectReason::InvalidOrchestration
                && r.field == "spec.orchestrationRef.name"),
            "{nul:?}"
        );
        let long = view(&"a".repeat(3_000), "r").checked_key(ClaimScope::Orchestration);
        assert!(
            matches!(&long, Err(r) if r.problem.contains("3000 characters")),
            "{long:?}"
        );
        // The orchestration is no part of a `namespace` key: not checked there.
        assert!(view("co\0dex", "r").checked_key(ClaimScope::Namespace).is_ok());
        let bad_name = view("codex", "Not_A_Name").checked_key(ClaimScope::Cluster);
        assert!(matches!(&bad_name, Err(r) if r.reason == RejectReason::InvalidName));
        assert_eq!(
            DELIVERY_ID_LABEL_FIELD,
            format!("metadata.labels[\"{DELIVERY_ID_LABEL}\"]")
        );
        let reasons: std::collections::HashSet<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons.len(), RejectReason::ALL.len());
    }

    #[test]
    fn escaped_values_carry_no_control_characters() {
        assert_eq!(escaped("a\0b\u{1b}[2J\n", 64), "a\\0b\\u{1b}[2J\\n");
        let long = escaped(&"a".repeat(3_000), 8);
        assert_eq!(long, "aaaaaaaa… (3000 characters)");
        assert!(!escaped("\u{7}\r\t", 64).chars().any(char::is_control));
    }

    #[test]
    fn label_values() {
        assert_eq!(label_value_problem("7f0c2b9e-4c1d-4b8a-9a57-0b5b1f3f2e11"), None);
        assert_eq!(label_value_problem("A.b_c-9"), None);
        assert!(label_value_problem("").is_some());
        assert!(label_value_problem(&"x".repeat(64)).is_some());
        assert_eq!(label_value_problem(&"x".repeat(63)), None);
        assert!(label_value_problem("-leading").is_some());
        assert!(label_value_problem("has space").is_some());
        assert!(label_value_problem("ünicode").is_some());
        assert!(label_value_problem("nul\0byte").is_some());
        assert!(label_value_problem("new\nline").is_some());
    }

    #[test]
    fn dns1123_labels() {
        for ok in ["a", "jangar", "team-1", "0", &"a".repeat(63)] {
            assert_eq!(dns1123_label_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "Jangar",
            "a.b",
            "-a",
            "a-",
            "a_b",
            "nul\0",
            "new\nline",
            "é",
            &"a".repeat(64),
        ] {
            assert!(dns1123_label_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(
            dns1123_label_problem(&"a".repeat(64)).as_deref(),
            Some("is 64 characters long; a DNS-1123 label is at most 63")
        );
    }

    #[test]
    fn uids() {
        assert_eq!(uid_problem("599aef04-af48-4dfe-9e63-c02ffc7d621d"), None);
        assert_eq!(uid_problem(""), None);
        for bad in ["a\0b", "a b", "a\nb", "\u{1b}[2J", "é", &"a".repeat(129)] {
            assert!(uid_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn dns1123_subdomains() {
        for ok in ["codex", "codex.v2", "a-b.c-d.e", "0.1", &"a".repeat(253)] {
            assert_eq!(dns1123_subdomain_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "Codex",
            "a_b",
            "a.-b",
            "nul\0",
            "line\nbreak",
            "\u{1b}[31m",
            &"a".repeat(254),
        ] {
            assert!(dns1123_subdomain_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(
            dns1123_subdomain_problem("a\nb").as_deref(),
            Some("is not a DNS-1123 subdomain: only lower-case letters, digits, '-' and '.' are allowed")
        );
        // 3,000 characters: refused, however well-formed.
        assert!(dns1123_subdomain_problem(&"a".repeat(3_000)).is_some_and(|p| p.contains("3000 characters")));
    }
}
