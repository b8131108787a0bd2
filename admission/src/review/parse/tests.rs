use super::*;
use serde_json::{json, Value};

const FIXTURES: [&str; 6] = [
    include_str!("../../../../tests/fixtures/admission-review/create-generatename.json"),
    include_str!("../../../../tests/fixtures/admission-review/create-fixed-name.json"),
    include_str!("../../../../tests/fixtures/admission-review/create-dry-run.json"),
    include_str!("../../../../tests/fixtures/admission-review/update-label-changed.json"),
    include_str!("../../../../tests/fixtures/admission-review/update-status-subresource.json"),
    include_str!("../../../../tests/fixtures/admission-review/delete.json"),
];

fn fixture(i: usize) -> Value {
    match serde_json::from_str(FIXTURES[i]) {
        Ok(v) => v,
        Err(e) => panic!("fixture {i} is not JSON: {e}"),
    }
}

fn parsed(v: &Value) -> Request {
    match parse(v.to_string().as_bytes()) {
        Ok(r) => r,
        Err(e) => panic!("does not parse: {e}"),
    }
}

fn create_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = fixture(0);
    edit(&mut v);
    v
}

#[test]
fn wrong_api_version_is_named() {
    let body = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":null}"#;
    match parse(body) {
        Err(e @ ReviewError::WrongType { .. }) => {
            assert!(e.to_string().contains("admission.k8s.io/v1beta1"), "{e}")
        }
        other => panic!("expected WrongType, got {other:?}"),
    }
}

#[test]
fn missing_request_is_an_error() {
    let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
    assert!(matches!(parse(body), Err(ReviewError::MissingRequest)));
}

#[test]
fn not_json_is_an_error() {
    assert!(matches!(parse(b"\xff\x00not json"), Err(ReviewError::Json(_))));
    // serde reads a struct from an array too (fields in order): an empty one has no types.
    assert!(matches!(parse(b"[]"), Err(ReviewError::WrongType { .. })));
}

#[test]
fn every_recorded_fixture_parses() {
    for body in FIXTURES {
        assert!(parse(body.as_bytes()).is_ok(), "{body}");
    }
}

#[test]
fn the_recorded_create_is_read_field_by_field() {
    let r = parsed(&fixture(0));
    assert_eq!(r.uid, "25d95170-b342-47eb-856d-86bba6ffd136");
    assert_eq!(r.operation, Operation::Create);
    assert!(r.is_orchestration_run);
    assert_eq!(r.sub_resource, None);
    assert!(!r.dry_run);
    assert_eq!((r.namespace.as_str(), r.name.as_str()), ("jangar", "run-bxm4w"));
    let o = r.object.unwrap_or_else(|| panic!("no object"));
    assert_eq!((o.namespace.as_str(), o.name.as_str()), ("jangar", "run-bxm4w"));
    assert_eq!(o.uid, "599aef04-af48-4dfe-9e63-c02ffc7d621d");
    assert_eq!(
        o.delivery_label.as_deref(),
        Some("0466d0d5-31e3-4a8a-8d3f-d031fa39b1e7")
    );
    assert_eq!(o.spec_error, None);
    assert!(o.orchestration().is_some());
    assert!(r.old_object.is_none());
}

#[test]
fn the_status_subresource_is_kept_and_an_empty_one_is_none() {
    assert_eq!(parsed(&fixture(4)).sub_resource.as_deref(), Some("status"));
    let v = create_with(|v| v["request"]["subResource"] = json!(""));
    assert_eq!(parsed(&v).sub_resource, None);
}

#[test]
fn escaped_strings_are_unescaped() {
    let v = create_with(|v| {
        v["request"]["object"]["metadata"]["labels"] =
            json!({"jangar.proompteng.ai/delivery-id": "a\"b\\c\u{e9}"});
    });
    // Written with `\u` escapes in the key as well: still the delivery-id label.
    let body = v.to_string().replace(
        "jangar.proompteng.ai/delivery-id",
        "jangar.proompteng.ai\\/delivery\\u002did",
    );
    let r = parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let label = r.object.and_then(|o| o.delivery_label);
    assert_eq!(label.as_deref(), Some("a\"b\\c\u{e9}"));
}

#[test]
fn only_the_delivery_label_is_kept_and_twice_is_an_error() {
    let v = create_with(|v| {
        v["request"]["object"]["metadata"]["labels"] =
            json!({"a": "1", "jangar.proompteng.ai/delivery-id": "d1", "z": "2"});
    });
    assert_eq!(
        parsed(&v).object.and_then(|o| o.delivery_label).as_deref(),
        Some("d1")
    );
    let body = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u",
        "resource":{"group":"orchestration.proompteng.ai","resource":"orchestrationruns"},"operation":"CREATE",
        "object":{"metadata":{"labels":{"jangar.proompteng.ai/delivery-id":"a","jangar.proompteng.ai/delivery-id":"b"}}}}}"#;
    match parse(body.as_bytes()) {
        Err(ReviewError::Json(e)) => assert!(e.contains("given twice"), "{e}"),
        other => panic!("expected a JSON error, got {other:?}"),
    }
}

#[test]
fn duplicate_spec_fields_are_an_error() {
    let body = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u",
        "resource":{"group":"orchestration.proompteng.ai","resource":"orchestrationruns"},"operation":"CREATE",
        "object":{"spec":{"deliveryId":"a","deliveryId":"b"}}}}"#;
    assert!(matches!(parse(body.as_bytes()), Err(ReviewError::Json(_))));
}

#[test]
fn wrong_spec_types_are_named_not_fatal() {
    for (spec, field) in [
        (
            json!({"deliveryId": 42}),
            "spec.deliveryId: invalid type: integer `42`",
        ),
        (
            json!({"deliveryId": [[1]]}),
            "spec.deliveryId: invalid type: sequence",
        ),
        (
            json!({"orchestrationRef": "codex"}),
            "spec.orchestrationRef: invalid type: string",
        ),
        (
            json!({"orchestrationRef": {"name": {"x": 1}}}),
            "spec.orchestrationRef.name: invalid type: map",
        ),
        (json!(7), "spec: invalid type: integer `7`"),
        (json!([1, [2]]), "spec: invalid type: sequence"),
    ] {
        let v = create_with(|v| v["request"]["object"]["spec"] = spec.clone());
        let error = parsed(&v).object.and_then(|o| o.spec_error).unwrap_or_default();
        assert!(error.starts_with(field), "{spec}: {error}");
    }
    let v = create_with(|v| {
        v["request"]["object"]["spec"] = json!({"deliveryId": null, "orchestrationRef": null})
    });
    let o = parsed(&v).object.unwrap_or_else(|| panic!("no object"));
    assert_eq!(
        (o.spec_error.as_deref(), o.spec_delivery_id(), o.orchestration()),
        (None, None, None)
    );
}

#[test]
fn deep_nesting_outside_the_read_fields_is_skipped() {
    // Far past serde_json's recursion limit (128): skipped values are walked without recursion.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let body = FIXTURES[0].replacen("\"spec\": {", &format!("\"spec\": {{\"parameters\": {deep},"), 1);
    assert_ne!(body, FIXTURES[0]);
    let r = parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.object.and_then(|o| o.spec_error), None);
}

#[test]
fn create_without_object_is_an_error() {
    let v = create_with(|v| v["request"]["object"] = Value::Null);
    assert!(matches!(
        parse(v.to_string().as_bytes()),
        Err(ReviewError::MissingObject { field: "object", .. })
    ));
}

/// How many cases each property test runs: `PROPTEST_CASES` when set (the ≥1,000,000-case
/// run of docs/SECURITY.md), else a slice small enough for `make test`.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

/// Arbitrary JSON values to plant inside a recorded request.
fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,80}".prop_map(Value::from),
        // Strings that look like the values a decision reads, to reach validation.
        "[a-z0-9.\\-_\u{0}\n]{0,70}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every place in `v`, as JSON pointers.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                pointers(
                    child,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Whatever parses gets a decision, under both claim scopes, without panicking.
fn decide(body: &[u8]) {
    if let Ok(request) = parse(body) {
        for scope in [
            dedupe_store::ClaimScope::Orchestration,
            dedupe_store::ClaimScope::Cluster,
        ] {
            let policy = crate::decision::Policy {
                scope,
                grace: std::time::Duration::from_secs(120),
            };
            let _ = crate::decision::plan(&request, &policy);
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(cases()))]

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn fuzz_arbitrary_bytes(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        decide(&body);
    }

    /// A recorded request with a few bytes changed, inserted or removed: mostly broken JSON
    /// that gets far into the parser before failing.
    #[test]
    fn fuzz_byte_edits(which in 0usize..6, edits in proptest::collection::vec((0usize..100_000, proptest::prelude::any::<u8>(), 0u8..3), 1..8)) {
        let mut body = FIXTURES[which].as_bytes().to_vec();
        for (at, byte, kind) in edits {
            let at = at % (body.len() + 1);
            match kind {
                0 if at < body.len() => body[at] = byte,
                1 => body.insert(at, byte),
                _ if at < body.len() => { body.remove(at); }
                _ => {}
            }
        }
        decide(&body);
    }

    /// A recorded request with any one field replaced by any JSON value either parses or is
    /// rejected cleanly, and whatever parses gets a decision.
    #[test]
    fn fuzz_mutated_fixtures(which in 0usize..6, slot in 0usize..10_000, value in any_json()) {
        let mut v = fixture(which);
        let mut places = Vec::new();
        pointers(&v, String::new(), &mut places);
        let place = &places[slot % places.len()];
        if place.is_empty() {
            v = value;
        } else if let Some(target) = v.pointer_mut(place) {
            *target = value;
        }
        decide(v.to_string().as_bytes());
    }
}

/// CPU per parse, this decoder against the generic tree it replaced (kube's
/// `AdmissionReview<DynamicObject>`), on the recorded create. Timing, not a check: run by
/// hand, `cargo test --release -p dedupe-admission --lib parse_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn parse_cost() {
    use kube::core::admission::AdmissionReview;
    use kube::core::DynamicObject;
    let body = FIXTURES[0].as_bytes();
    let rounds = 50_000u32;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(parse(std::hint::black_box(body)).is_ok());
    }
    let new = started.elapsed() / rounds;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        let tree: Result<AdmissionReview<DynamicObject>, _> =
            serde_json::from_slice(std::hint::black_box(body));
        std::hint::black_box(tree.is_ok());
    }
    let tree = started.elapsed() / rounds;
    println!("{} B review: parse {new:?}, generic tree {tree:?}", body.len());
}

#[test]
fn a_body_that_is_not_utf8_is_a_json_error() {
    let mut body =
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}}"#);
    match parse(&body) {
        Err(ReviewError::Json(message)) => assert!(message.contains("not UTF-8"), "{message}"),
        other => panic!("expected a JSON error, got {other:?}"),
    }
}
