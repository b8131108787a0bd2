use super::*;
use crate::review;
use chrono::{TimeZone, Utc};
use serde_json::Value;

const CREATE: &str = include_str!("../../../tests/fixtures/admission-review/create-generatename.json");
const CREATE_FIXED: &str = include_str!("../../../tests/fixtures/admission-review/create-fixed-name.json");
const CREATE_DRY: &str = include_str!("../../../tests/fixtures/admission-review/create-dry-run.json");
const UPDATE_LABEL: &str = include_str!("../../../tests/fixtures/admission-review/update-label-changed.json");
const UPDATE_STATUS: &str =
    include_str!("../../../tests/fixtures/admission-review/update-status-subresource.json");
const DELETE: &str = include_str!("../../../tests/fixtures/admission-review/delete.json");

fn policy() -> Policy {
    Policy {
        scope: ClaimScope::Orchestration,
        grace: Duration::from_secs(120),
    }
}

/// Stands in for the API-server lookup: the decision only hands it back.
const LOOKUP: Option<&()> = Some(&());

fn parse(body: &str, edit: impl FnOnce(&mut Value)) -> Request {
    let mut v: Value = serde_json::from_str(body).expect("a recorded fixture is JSON");
    edit(&mut v);
    match review::parse(v.to_string().as_bytes()) {
        Ok(r) => r,
        Err(e) => panic!("fixture does not parse: {e}"),
    }
}

fn claim_plan(body: &str, edit: impl FnOnce(&mut Value)) -> ClaimPlan {
    match plan(&parse(body, edit), &policy()) {
        Plan::Claim(p) => p,
        other => panic!("expected a claim plan, got {other:?}"),
    }
}

fn answer(p: Plan) -> Verdict {
    match p {
        Plan::Answer(v) => v,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn claim_by(name: &str, state: ClaimState, idle_secs: i64) -> Claim {
    let at = Utc
        .with_ymd_and_hms(2026, 11, 27, 9, 0, 0)
        .single()
        .expect("a valid date");
    Claim {
        holder: RunRef {
            namespace: "jangar".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        },
        state,
        claimed_at: at,
        updated_at: at,
        admissions: 0,
        takeovers: 0,
        observed_at: at + chrono::Duration::seconds(idle_secs),
    }
}

fn after(p: &ClaimPlan, outcome: ClaimOutcome, policy: &Policy) -> AfterClaim<'static, ()> {
    after_claim(p, Found::Outcome(outcome), policy, LOOKUP)
}

fn answered(next: AfterClaim<'_, ()>) -> Verdict {
    match next {
        AfterClaim::Answer(v) => v,
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[test]
fn create_with_label_plans_a_claim_for_the_named_run() {
    let p = claim_plan(CREATE, |_| {});
    assert_eq!(p.key.delivery_id, "0466d0d5-31e3-4a8a-8d3f-d031fa39b1e7");
    assert_eq!(
        (p.key.namespace.as_str(), p.key.orchestration.as_str()),
        ("jangar", "demo-orchestration")
    );
    assert_eq!(p.run.to_string(), "jangar/run-bxm4w");
    assert_eq!(p.run.uid, "599aef04-af48-4dfe-9e63-c02ffc7d621d");
    assert!(!p.dry_run);
}

#[test]
fn new_claim_is_allowed_as_claimed() {
    let p = claim_plan(CREATE, |_| {});
    let v = answered(after(
        &p,
        ClaimOutcome::Claimed(claim_by("run-bxm4w", ClaimState::Pending, 0)),
        &policy(),
    ));
    assert!(v.allowed);
    assert_eq!(v.decision, Decision::Claimed);
}

#[test]
fn retried_create_of_same_pending_run_is_allowed_as_retry() {
    let p = claim_plan(CREATE, |_| {});
    let v = answered(after_claim::<()>(
        &p,
        Found::Outcome(ClaimOutcome::SameRun(claim_by(
            "run-bxm4w",
            ClaimState::Pending,
            3,
        ))),
        &policy(),
        None,
    ));
    assert!(v.allowed);
    assert_eq!(v.decision, Decision::Retry);
}

/// A claim that changed between the store's two statements (pruned, confirmed or taken over
/// meanwhile) is neither allowed nor denied on what the attempt saw: the create decides again.
#[test]
fn a_claim_changed_under_the_attempt_is_decided_again() {
    let p = claim_plan(CREATE, |_| {});
    for lookup in [LOOKUP, None] {
        let next = after_claim(&p, Found::Outcome(ClaimOutcome::Changed), &policy(), lookup);
        assert!(matches!(next, AfterClaim::DecideAgain), "{next:?}");
    }
}

/// With the lookup on, a retried create asks the API server which uid the claim keeps.
#[test]
fn retried_create_asks_the_api_server_when_the_lookup_is_on() {
    let p = claim_plan(CREATE, |_| {});
    let retried = claim_by("run-bxm4w", ClaimState::Pending, 3);
    assert_eq!(
        after(&p, ClaimOutcome::SameRun(retried.clone()), &policy()),
        AfterClaim::LookUpHolder {
            claim: retried,
            lookup: &()
        }
    );
}

/// The first create landed (the API server shows the run): the retry will be refused by
/// the API server itself, so the claim keeps the first uid, and is confirmed.
#[test]
fn retried_create_whose_run_exists_keeps_the_first_uid_and_confirms() {
    let p = claim_plan(CREATE, |_| {});
    let retried = claim_by("run-bxm4w", ClaimState::Pending, 3);
    match after_lookup(&p, retried, Holder::Exists) {
        AfterLookup::ConfirmThen(v) => assert_eq!((v.allowed, v.decision), (true, Decision::Retry)),
        other => panic!("{other:?}"),
    }
}

/// The first create never landed: this retry makes the run, and its uid is recorded.
#[test]
fn retried_create_whose_run_never_appeared_records_its_uid() {
    let p = claim_plan(CREATE, |_| {});
    let retried = claim_by("run-bxm4w", ClaimState::Pending, 3);
    match after_lookup(&p, retried.clone(), Holder::Gone) {
        AfterLookup::RecordUidThen(v) => assert_eq!((v.allowed, v.decision), (true, Decision::Retry)),
        other => panic!("never a take-over of one's own claim: {other:?}"),
    }
    match after_lookup(&p, retried, Holder::Unknown("forbidden".into())) {
        AfterLookup::Answer(v) => assert_eq!((v.allowed, v.decision), (true, Decision::Retry)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn claim_held_by_another_run_is_a_409_naming_it() {
    let p = claim_plan(CREATE, |_| {});
    let v = answered(after(
        &p,
        ClaimOutcome::HeldBy(claim_by("run-first", ClaimState::Pending, 5)),
        &policy(),
    ));
    assert!(!v.allowed);
    assert_eq!(
        (v.code, v.reason, v.decision),
        (409, "Conflict", Decision::Duplicate)
    );
    for part in [
        "0466d0d5-31e3-4a8a-8d3f-d031fa39b1e7",
        "jangar/run-first",
        "uid-run-first",
        "2026-11-27T09:00:00Z",
        "idempotently",
    ] {
        assert!(v.message.contains(part), "{part} missing from {}", v.message);
    }
    assert_eq!(v.existing_run.as_deref(), Some("jangar/run-first"));
}

/// A create of the very name a confirmed claim names: the run may still exist (the
/// API server would refuse the create itself) or have been deleted. With the lookup on,
/// the API server is asked, and the answer says which; it is never taken over.
#[test]
fn confirmed_claim_for_the_same_name_asks_the_api_server_when_the_lookup_is_on() {
    let p = claim_plan(CREATE, |_| {});
    let confirmed = claim_by("run-bxm4w", ClaimState::Confirmed, 5);
    assert_eq!(
        after(&p, ClaimOutcome::HeldBy(confirmed.clone()), &policy()),
        AfterClaim::LookUpHolder {
            claim: confirmed,
            lookup: &()
        }
    );
}

#[test]
fn confirmed_claim_for_the_same_name_whose_run_exists_says_it_exists() {
    let p = claim_plan(CREATE, |_| {});
    let confirmed = claim_by("run-bxm4w", ClaimState::Confirmed, 5);
    match after_lookup(&p, confirmed, Holder::Exists) {
        AfterLookup::Answer(v) => {
            assert_eq!((v.allowed, v.code, v.decision), (false, 409, Decision::Duplicate));
            assert!(v.message.contains("that run exists"), "{}", v.message);
            assert!(!v.message.contains("deleted"), "{}", v.message);
        }
        other => panic!("a confirmed claim is never confirmed again: {other:?}"),
    }
}

#[test]
fn confirmed_claim_for_the_same_name_whose_run_is_gone_says_it_was_deleted() {
    let p = claim_plan(CREATE, |_| {});
    let confirmed = claim_by("run-bxm4w", ClaimState::Confirmed, 5);
    match after_lookup(&p, confirmed, Holder::Gone) {
        AfterLookup::Answer(v) => {
            assert_eq!((v.allowed, v.code), (false, 409));
            assert!(v.message.contains("existed and was deleted"), "{}", v.message);
            assert!(v.message.contains("retention"), "{}", v.message);
        }
        other => panic!("a confirmed claim is never taken over: {other:?}"),
    }
}

#[test]
fn confirmed_claim_for_the_same_name_unknown_or_lookup_off_claims_neither() {
    let p = claim_plan(CREATE, |_| {});
    let confirmed = claim_by("run-bxm4w", ClaimState::Confirmed, 5);
    let unknown = match after_lookup(&p, confirmed.clone(), Holder::Unknown("forbidden".into())) {
        AfterLookup::Answer(v) => v,
        other => panic!("{other:?}"),
    };
    let off = answered(after_claim::<()>(
        &p,
        Found::Outcome(ClaimOutcome::HeldBy(confirmed)),
        &policy(),
        None,
    ));
    for v in [unknown, off] {
        assert_eq!((v.allowed, v.code), (false, 409));
        // True whether the run still exists or was deleted.
        assert!(!v.message.contains("existed and was deleted"), "{}", v.message);
        assert!(
            v.message.contains("still exists or was deleted")
                && v.message.contains("does not free its delivery"),
            "{}",
            v.message
        );
    }
}

/// The largest grace a duration can hold: no overflow, whatever the flag's bound.
#[test]
fn a_huge_grace_never_overflows_the_clock() {
    let p = claim_plan(CREATE, |_| {});
    let huge = Policy {
        grace: Duration::MAX,
        ..policy()
    };
    let v = answered(after(
        &p,
        ClaimOutcome::HeldBy(claim_by("run-first", ClaimState::Pending, 5)),
        &huge,
    ));
    assert_eq!((v.allowed, v.code), (false, 409));
    assert!(v.message.contains("pending"), "{}", v.message);
}

#[test]
fn stale_pending_claim_asks_the_api_server() {
    let p = claim_plan(CREATE, |_| {});
    let stale = claim_by("run-ghost", ClaimState::Pending, 121);
    assert_eq!(
        after(&p, ClaimOutcome::HeldBy(stale.clone()), &policy()),
        AfterClaim::LookUpHolder {
            claim: stale,
            lookup: &()
        }
    );
    // Inside the grace period: plain duplicate, with the time a take-over becomes possible.
    let young = claim_by("run-ghost", ClaimState::Pending, 119);
    let v = answered(after(&p, ClaimOutcome::HeldBy(young), &policy()));
    assert_eq!(v.decision, Decision::Duplicate);
    assert!(v.message.contains("2026-11-27T09:02:00Z"), "{}", v.message);
}

#[test]
fn stale_confirmed_claim_never_asks() {
    let p = claim_plan(CREATE, |_| {});
    let old = claim_by("run-first", ClaimState::Confirmed, 86_400);
    assert!(
        matches!(after(&p, ClaimOutcome::HeldBy(old), &policy()), AfterClaim::Answer(v) if v.code == 409)
    );
}

#[test]
fn with_lookup_off_a_stale_claim_holds_and_the_denial_says_so() {
    let p = claim_plan(CREATE, |_| {});
    let v = answered(after_claim::<()>(
        &p,
        Found::Outcome(ClaimOutcome::HeldBy(claim_by(
            "run-ghost",
            ClaimState::Pending,
            9_999,
        ))),
        &policy(),
        None,
    ));
    assert_eq!(v.code, 409);
    assert!(
        v.message.contains("lookup is off") && v.message.contains("retention"),
        "{}",
        v.message
    );
}

#[test]
fn lookup_results_decide_take_over_or_confirmed_duplicate() {
    let p = claim_plan(CREATE, |_| {});
    let stale = claim_by("run-ghost", ClaimState::Pending, 500);
    assert_eq!(
        after_lookup(&p, stale.clone(), Holder::Gone),
        AfterLookup::TakeOver(stale.clone())
    );
    match after_lookup(&p, stale.clone(), Holder::Exists) {
        AfterLookup::ConfirmThen(v) => assert_eq!((v.code, v.decision), (409, Decision::Duplicate)),
        other => panic!("{other:?}"),
    }
    match after_lookup(&p, stale.clone(), Holder::Unknown("forbidden".into())) {
        AfterLookup::Answer(v) => {
            assert_eq!(v.code, 409);
            assert!(v.message.contains("forbidden"));
        }
        other => panic!("{other:?}"),
    }
    let v = taken_over(&p, &stale);
    assert_eq!((v.allowed, v.decision), (true, Decision::Takeover));
    assert!(v.warnings.iter().any(|w| w.contains("jangar/run-ghost")));
}

#[test]
fn dry_run_reads_and_never_writes() {
    let req = parse(CREATE_DRY, |_| {});
    let p = match plan(&req, &policy()) {
        Plan::Claim(p) => p,
        other => panic!("{other:?}"),
    };
    assert!(p.dry_run);
    let v = answered(after_claim(
        &p,
        found_for_dry_run(&p.run, None),
        &policy(),
        LOOKUP,
    ));
    assert_eq!((v.allowed, v.decision), (true, Decision::DryRun));
    // Held by another: the same 409 a real create gets.
    let held = found_for_dry_run(&p.run, Some(claim_by("run-first", ClaimState::Confirmed, 1)));
    let v = answered(after_claim(&p, held, &policy(), LOOKUP));
    assert_eq!((v.allowed, v.code), (false, 409));
    assert!(v.message.starts_with("dry run:"));
    // Same pending run: allowed as dry-run.
    let same = found_for_dry_run(&p.run, Some(claim_by("run-j7r8g", ClaimState::Pending, 1)));
    let v = answered(after_claim(&p, same, &policy(), LOOKUP));
    assert_eq!((v.allowed, v.decision), (true, Decision::DryRun));
    // Stale holder gone: allowed, no take-over; holder exists: deny without confirming.
    let stale = claim_by("run-ghost", ClaimState::Pending, 500);
    assert!(matches!(after_lookup(&p, stale.clone(), Holder::Gone), AfterLookup::Answer(v) if v.allowed));
    assert!(matches!(after_lookup(&p, stale, Holder::Exists), AfterLookup::Answer(v) if v.code == 409));
}

#[test]
fn empty_label_is_invalid() {
    let v = answer(plan(
        &parse(CREATE, |v| {
            v["request"]["object"]["metadata"]["labels"][DELIVERY_ID_LABEL] = "".into()
        }),
        &policy(),
    ));
    assert_eq!(
        (v.allowed, v.code, v.reason, v.decision),
        (false, 422, "Invalid", Decision::Invalid)
    );
    assert!(
        v.message.contains(DELIVERY_ID_LABEL) && v.message.contains("empty"),
        "{}",
        v.message
    );
}

#[test]
fn spec_delivery_id_differing_from_label_is_invalid_and_named() {
    let v = answer(plan(
        &parse(CREATE, |v| {
            v["request"]["object"]["spec"]["deliveryId"] = "other".into()
        }),
        &policy(),
    ));
    assert_eq!((v.code, v.decision), (422, Decision::Invalid));
    assert!(v.message.contains("spec.deliveryId"), "{}", v.message);
}

#[test]
fn spec_delivery_id_absent_is_fine() {
    let req = parse(CREATE, |v| {
        if let Some(spec) = v["request"]["object"]["spec"].as_object_mut() {
            spec.remove("deliveryId");
        }
    });
    assert!(matches!(plan(&req, &policy()), Plan::Claim(_)));
}

#[test]
fn overlong_or_malformed_label_is_invalid_not_a_store_error() {
    let v = answer(plan(
        &parse(CREATE, |v| {
            v["request"]["object"]["metadata"]["labels"][DELIVERY_ID_LABEL] = "x".repeat(64).into();
            v["request"]["object"]["spec"]["deliveryId"] = "x".repeat(64).into();
        }),
        &policy(),
    ));
    assert_eq!(v.code, 422);
}

#[test]
fn missing_orchestration_ref_is_invalid_only_where_the_key_needs_it() {
    let req = parse(CREATE, |v| {
        v["request"]["object"]["spec"]["orchestrationRef"] = Value::Null
    });
    assert_eq!(answer(plan(&req, &policy())).code, 422);
    let ns = Policy {
        scope: ClaimScope::Namespace,
        ..policy()
    };
    assert!(matches!(plan(&req, &ns), Plan::Claim(_)));
}

#[test]
fn wrongly_typed_spec_is_invalid() {
    let v = answer(plan(
        &parse(CREATE, |v| {
            v["request"]["object"]["spec"]["deliveryId"] = 42.into()
        }),
        &policy(),
    ));
    assert_eq!((v.code, v.decision), (422, Decision::Invalid));
}

#[test]
fn create_without_label_is_ignored_and_warns_if_spec_names_a_delivery() {
    let req = parse(CREATE_FIXED, |v| {
        v["request"]["object"]["metadata"]["labels"] = Value::Null
    });
    let v = answer(plan(&req, &policy()));
    assert_eq!((v.allowed, v.decision), (true, Decision::Ignored));
    assert!(v.warnings.iter().any(|w| w.contains("not deduplicated")));
}

#[test]
fn label_change_on_update_is_immutable() {
    let v = answer(plan(&parse(UPDATE_LABEL, |_| {}), &policy()));
    assert_eq!((v.allowed, v.code, v.decision), (false, 422, Decision::Immutable));
    assert!(
        v.message.contains("cab75a61-62fe-44c9-aca9-be29f735114a"),
        "{}",
        v.message
    );
}

#[test]
fn label_added_or_removed_on_update_is_immutable() {
    let added = parse(UPDATE_LABEL, |v| {
        v["request"]["oldObject"]["metadata"]["labels"] = Value::Null
    });
    let v = answer(plan(&added, &policy()));
    assert_eq!(v.decision, Decision::Immutable);
    assert!(v.message.contains("cannot be added"));
    let removed = parse(UPDATE_LABEL, |v| {
        v["request"]["object"]["metadata"]["labels"] = Value::Null
    });
    assert!(answer(plan(&removed, &policy()))
        .message
        .contains("cannot be removed"));
}

/// An update that keeps the key: the fixture's new object with its old labels restored.
fn same_key_update(edit: impl FnOnce(&mut Value)) -> Request {
    parse(UPDATE_LABEL, |v| {
        v["request"]["object"]["metadata"]["labels"] =
            v["request"]["oldObject"]["metadata"]["labels"].clone();
        edit(v)
    })
}

#[test]
fn spec_key_fields_are_immutable_on_update() {
    let v = answer(plan(
        &same_key_update(|v| v["request"]["object"]["spec"]["deliveryId"] = "x".into()),
        &policy(),
    ));
    assert!(v.message.starts_with("spec.deliveryId"), "{}", v.message);
    let v = answer(plan(
        &same_key_update(|v| v["request"]["object"]["spec"]["orchestrationRef"]["name"] = "other".into()),
        &policy(),
    ));
    assert!(
        v.message.starts_with("spec.orchestrationRef.name"),
        "{}",
        v.message
    );
}

/// Updates and deletes are answered by `plan` alone, store or no store: with the chart
/// registering CREATE only they never reach the webhook, and when an older registration
/// still sends them, a store outage must not block them.
#[test]
fn updates_and_deletes_that_keep_the_key_are_allowed_without_the_store() {
    for (what, req) in [
        (
            "update",
            same_key_update(|v| v["request"]["object"]["spec"]["parameters"]["issue"] = "43".into()),
        ),
        (
            "finalizer added",
            same_key_update(|v| {
                v["request"]["object"]["metadata"]["finalizers"] = serde_json::json!(["x/y"])
            }),
        ),
        (
            "dry-run update",
            same_key_update(|v| v["request"]["dryRun"] = true.into()),
        ),
        ("delete", parse(DELETE, |_| {})),
    ] {
        let v = answer(plan(&req, &policy()));
        assert_eq!((v.allowed, v.decision), (true, Decision::Allowed), "{what}");
    }
}

#[test]
fn a_duplicate_names_its_holder_for_the_details() {
    let p = claim_plan(CREATE, |_| {});
    let v = answered(after(
        &p,
        ClaimOutcome::HeldBy(claim_by("run-first", ClaimState::Confirmed, 5)),
        &policy(),
    ));
    assert_eq!(
        v.holder.as_ref().map(|h| h.to_string()),
        Some("jangar/run-first".into())
    );
    let allowed = answered(after(
        &p,
        ClaimOutcome::Claimed(claim_by("run-bxm4w", ClaimState::Pending, 0)),
        &policy(),
    ));
    assert_eq!(allowed.holder, None);
}

#[test]
fn status_subresource_and_other_resources_are_ignored() {
    let v = answer(plan(&parse(UPDATE_STATUS, |_| {}), &policy()));
    assert_eq!((v.allowed, v.decision), (true, Decision::Ignored));
    let other = parse(CREATE, |v| v["request"]["resource"]["resource"] = "pods".into());
    assert_eq!(answer(plan(&other, &policy())).decision, Decision::Ignored);
}

#[test]
fn every_decision_has_a_distinct_name() {
    let names: std::collections::HashSet<_> = Decision::ALL.iter().map(|d| d.as_str()).collect();
    assert_eq!(names.len(), Decision::ALL.len());
}

/// Key parts Kubernetes would refuse are a 422 naming the field and the rule,
/// before any store call (a NUL byte used to fail in PostgreSQL as a 503).
#[test]
fn malformed_key_parts_are_invalid_before_the_store() {
    let long = "a".repeat(3_000);
    let cases: [(&str, &str, &str); 7] = [
        (
            "/request/object/spec/orchestrationRef/name",
            "co\0dex",
            "spec.orchestrationRef.name is not a DNS-1123 subdomain",
        ),
        (
            "/request/object/spec/orchestrationRef/name",
            &long,
            "spec.orchestrationRef.name is 3000 characters long",
        ),
        (
            "/request/object/spec/orchestrationRef/name",
            "Codex_1",
            "spec.orchestrationRef.name is not a DNS-1123 subdomain",
        ),
        (
            "/request/object/spec/orchestrationRef/name",
            "codex\nINFO forged",
            "spec.orchestrationRef.name is not a DNS-1123 subdomain",
        ),
        (
            "/request/object/metadata/namespace",
            "jan.gar",
            "metadata.namespace is not a DNS-1123 label",
        ),
        (
            "/request/object/metadata/name",
            "Run-1",
            "metadata.name is not a DNS-1123 subdomain",
        ),
        (
            "/request/object/metadata/uid",
            "u\0id",
            "metadata.uid may contain only printable ASCII",
        ),
    ];
    for (pointer, value, message) in cases {
        let value = Value::from(value);
        let p = plan(
            &parse(CREATE, |v| {
                if let Some(slot) = v.pointer_mut(pointer) {
                    *slot = value.clone();
                }
            }),
            &policy(),
        );
        let verdict = answer(p);
        assert_eq!(
            (verdict.allowed, verdict.code, verdict.decision),
            (false, 422, Decision::Invalid)
        );
        assert!(
            verdict.message.starts_with(message),
            "{pointer}: {}",
            verdict.message
        );
    }
}

/// A cluster-scoped key has no orchestration part, so its name is not checked.
#[test]
fn orchestration_name_is_checked_only_when_it_is_in_the_key() {
    let request = parse(CREATE, |v| {
        v["request"]["object"]["spec"]["orchestrationRef"]["name"] = "Not_A_Name".into();
    });
    let cluster = Policy {
        scope: ClaimScope::Cluster,
        ..policy()
    };
    assert!(matches!(plan(&request, &cluster), Plan::Claim(_)));
}

/// An update of a run whose key could never have been claimed is allowed, without the store.
#[test]
fn update_with_a_malformed_key_is_allowed() {
    let request = parse(UPDATE_LABEL, |v| {
        for side in ["object", "oldObject"] {
            v["request"][side]["metadata"]["labels"][DELIVERY_ID_LABEL] = "d1".into();
            v["request"][side]["spec"]["deliveryId"] = Value::Null;
            v["request"][side]["spec"]["orchestrationRef"]["name"] = "a\u{0}b".into();
        }
    });
    let verdict = answer(plan(&request, &policy()));
    assert_eq!((verdict.allowed, verdict.decision), (true, Decision::Allowed));
}

#[test]
fn a_create_not_yet_named_is_invalid_and_says_so_before_the_key_rules() {
    let not_named = "metadata.name and metadata.namespace must be set by the time the webhook is called";
    // (what, a field set on top of the missing name, the message's start)
    let cases = [
        ("unnamed", None, not_named),
        (
            "unnamed, with an orchestration Kubernetes would refuse",
            Some(("/request/object/spec/orchestrationRef/name", "co\0dex")),
            not_named,
        ),
        (
            "unnamed, with a spec naming another delivery",
            Some(("/request/object/spec/deliveryId", "other")),
            "spec.deliveryId \"other\" differs from the jangar.proompteng.ai/delivery-id label",
        ),
    ];
    for (what, field, message) in cases {
        let request = parse(CREATE, |v| {
            v["request"]["name"] = "".into();
            if let Some(meta) = v["request"]["object"]["metadata"].as_object_mut() {
                meta.remove("name");
            }
            if let Some((pointer, value)) = field {
                if let Some(slot) = v.pointer_mut(pointer) {
                    *slot = value.into();
                }
            }
        });
        let verdict = answer(plan(&request, &policy()));
        assert_eq!(
            (verdict.code, verdict.decision),
            (422, Decision::Invalid),
            "{what}"
        );
        assert!(
            verdict.message.starts_with(message),
            "{what}: {}",
            verdict.message
        );
    }
}
