//! The webhook's decision table, as pure functions: (request, current claim, database
//! clock) → (answer, store action). No I/O here: `handler.rs` runs the store and API-server
//! steps these functions ask for, and every row below is a unit test in this file.
//!
//! | request | answer (`decision` audit annotation) |
//! | --- | --- |
//! | CREATE with the label, no claim for its key | insert a `pending` claim naming this run, allow (`claimed`) |
//! | CREATE, claim `pending` for this same run (same namespace/name: a retried create) | allow, count it (`admissions`) (`retry`). Which uid the claim keeps: with the lookup on, the API server is asked; the run exists → the first create landed and the API server refuses this one itself (AlreadyExists): keep the first uid, confirm the claim; no such run → this create makes it: record its uid; lookup failed or off → keep the first uid (the usual case; the reconciler records the uid it sees when it confirms) |
//! | CREATE, claim held by another run, or `confirmed` for this name | deny 409 `Conflict` (never `AlreadyExists`, which the API server retries), naming the delivery and the holder (namespace/name, uid, when claimed) in the message and in `status.details` (`duplicate`) |
//! | … `confirmed` for this name, with the lookup on | the API server is asked (never a take-over): the 409 says the run exists, or that it existed and was deleted; lookup off or failed: worded true either way (`duplicate`) |
//! | CREATE, claim `pending` and idle longer than the grace period, the API server has no such run | take the claim over (compare-and-swap on the holder), allow with a warning (`takeover`) |
//! | … the same, and the run exists | mark the claim `confirmed`, deny 409 (`duplicate`) |
//! | … the same, and the lookup fails | keep the claim, deny 409 saying why (`duplicate`) |
//! | … the same, with the lookup off | no take-over: the claim holds until retention, and the 409 says so (`duplicate`) |
//! | CREATE with `dryRun: true` | the same answer, never written (`dry-run` when it would be allowed) |
//! | CREATE with an empty or invalid label value, an unreadable spec, `spec.deliveryId` different from the label, or no `spec.orchestrationRef.name` under scope `orchestration` | deny 422 `Invalid` naming the field (`invalid`) |
//! | UPDATE that adds, changes or removes the label, or changes `spec.deliveryId` or `spec.orchestrationRef.name` | deny 422 `Invalid` (`immutable`), without the store |
//! | UPDATE or DELETE of a labelled run otherwise | allow without touching the store (`allowed`): the chart registers CREATE only, and an older registration that still sends these must not make them depend on PostgreSQL; pending claims are confirmed by the reconciler's watch and the take-over lookup |
//! | CREATE without the label; another resource; a subresource; CONNECT | allow, write nothing (`ignored`; a warning when `spec.deliveryId` is set without the label) |
//!
//! Before any decision, `handler.rs` answers what is not a usable AdmissionReview with an
//! HTTP error (400, 413, 415; `error.rs`), and a store that fails or exceeds its timeout with
//! 503, so the API server's failurePolicy applies: never a deny.
//!
//! A create goes: [`plan`] → `ClaimStore::claim` → [`after_claim`] → (only for a stale
//! pending claim) the API-server lookup → [`after_lookup`] → `ClaimStore::take_over` →
//! [`taken_over`]. An update or delete is answered by [`plan`] alone: no store, no
//! API-server call, so a store outage never blocks updates, finalizer removal or deletes.
//! A review's word never confirms a claim: anything that reaches the port can forge one.

use std::time::Duration;

use dedupe_store::run::label_value_problem;
use dedupe_store::{
    Claim, ClaimKey, ClaimOutcome, ClaimScope, ClaimState, RunRef, RunView, DELIVERY_ID_LABEL,
};

use kube::core::admission::Operation;

use crate::review::{self, Request};

/// The audit annotation `decision` and the `decision` log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// First create for the delivery: claimed, allowed.
    Claimed,
    /// Another run holds the delivery: denied 409.
    Duplicate,
    /// A retried create of the run that holds the pending claim: allowed.
    Retry,
    /// A stale pending claim whose run does not exist was taken over: allowed.
    Takeover,
    /// A dry-run create that would be allowed; nothing written.
    DryRun,
    /// An update that changes the claim key: denied 422.
    Immutable,
    /// A create with a bad delivery id or mismatched spec: denied 422.
    Invalid,
    /// An allowed update/delete (answered without the store).
    Allowed,
    /// Not ours: unlabelled, another resource, a subresource.
    Ignored,
}

impl Decision {
    #[cfg(test)]
    pub const ALL: [Decision; 9] = [
        Decision::Claimed,
        Decision::Duplicate,
        Decision::Retry,
        Decision::Takeover,
        Decision::DryRun,
        Decision::Immutable,
        Decision::Invalid,
        Decision::Allowed,
        Decision::Ignored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Claimed => "claimed",
            Decision::Duplicate => "duplicate",
            Decision::Retry => "retry",
            Decision::Takeover => "takeover",
            Decision::DryRun => "dry-run",
            Decision::Immutable => "immutable",
            Decision::Invalid => "invalid",
            Decision::Allowed => "allowed",
            Decision::Ignored => "ignored",
        }
    }
}

/// The webhook's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// `status.code` of a deny (409 or 422); 0 when allowed.
    pub code: u16,
    /// `status.reason` of a deny ([`DUPLICATE_REASON`], `Invalid`).
    pub reason: &'static str,
    pub message: String,
    pub decision: Decision,
    pub warnings: Vec<String>,
    /// The run holding the claim, when that is what the answer is about (for logs).
    pub existing_run: Option<String>,
    /// The run holding the delivery, for a 409's `status.details` (name, uid, namespace),
    /// so a submitter's program can return it without parsing the message.
    pub holder: Option<RunRef>,
}

impl Verdict {
    fn allow(decision: Decision, message: String) -> Self {
        Self {
            allowed: true,
            code: 0,
            reason: "",
            message,
            decision,
            warnings: Vec::new(),
            existing_run: None,
            holder: None,
        }
    }

    fn invalid(decision: Decision, message: String) -> Self {
        Self {
            allowed: false,
            code: 422,
            reason: "Invalid",
            message,
            decision,
            warnings: Vec::new(),
            existing_run: None,
            holder: None,
        }
    }

    fn warn(mut self, warning: String) -> Self {
        self.warnings.push(warning);
        self
    }
}

/// The knobs the decision depends on. Whether the API-server lookup is on is not one of
/// them: [`after_claim`] is handed the lookup itself (or `None`), so a decision to look up
/// always comes with something to look up with.
#[derive(Debug, Clone)]
pub struct Policy {
    pub scope: ClaimScope,
    /// How long a pending claim is left alone before its run may be looked up.
    pub grace: Duration,
}

/// A create that needs the claim store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPlan {
    pub key: ClaimKey,
    pub run: RunRef,
    /// Read only, never write (`sideEffects: NoneOnDryRun`).
    pub dry_run: bool,
}

/// What a request needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Answer now; nothing to read or write.
    Answer(Verdict),
    Claim(ClaimPlan),
}

impl Plan {
    /// The claim key and delivery the request is about, if any (for logs).
    pub fn key(&self) -> Option<&ClaimKey> {
        match self {
            Plan::Answer(_) => None,
            Plan::Claim(p) => Some(&p.key),
        }
    }
}

/// First step for every request: decide without the store when possible.
pub fn plan(req: &Request, policy: &Policy) -> Plan {
    if !req.is_orchestration_run {
        return Plan::Answer(Verdict::allow(
            Decision::Ignored,
            "not an OrchestrationRun".into(),
        ));
    }
    if let Some(sub) = &req.sub_resource {
        return Plan::Answer(Verdict::allow(
            Decision::Ignored,
            format!("the {sub} subresource carries no claim"),
        ));
    }
    match (&req.operation, &req.object, &req.old_object) {
        (Operation::Create, Some(object), _) => plan_create(object, req.dry_run, policy),
        (Operation::Update, Some(object), Some(old)) => plan_update(object, old),
        (Operation::Delete, _, Some(old)) => plan_delete(old),
        (Operation::Delete, _, None) => Plan::Answer(Verdict::allow(
            Decision::Ignored,
            "delete without the old object".into(),
        )),
        // CONNECT, or an object missing (review::parse rejects those for our resource).
        _ => Plan::Answer(Verdict::allow(
            Decision::Ignored,
            format!("{} carries no claim", review::operation_name(&req.operation)),
        )),
    }
}

fn label_field() -> String {
    format!("metadata.labels[\"{DELIVERY_ID_LABEL}\"]")
}

fn plan_create(object: &RunView, dry_run: bool, policy: &Policy) -> Plan {
    let Some(delivery) = object.delivery_label.as_deref() else {
        let verdict = Verdict::allow(Decision::Ignored, "no delivery-id label".into());
        return Plan::Answer(match object.spec_delivery_id() {
            Some(id) => verdict.warn(format!(
                "spec.deliveryId is {id:?} but the {DELIVERY_ID_LABEL} label is missing: this run is not deduplicated"
            )),
            None => verdict,
        });
    };
    if let Some(problem) = label_value_problem(delivery) {
        return Plan::Answer(Verdict::invalid(
            Decision::Invalid,
            format!("{} {problem}", label_field()),
        ));
    }
    if let Some(error) = &object.spec_error {
        return Plan::Answer(Verdict::invalid(
            Decision::Invalid,
            format!("spec cannot be read: {error}"),
        ));
    }
    if let Some(spec_id) = object.spec_delivery_id() {
        if spec_id != delivery {
            return Plan::Answer(Verdict::invalid(
                Decision::Invalid,
                format!(
                    "spec.deliveryId {spec_id:?} differs from the {} label {delivery:?}: they must name the same delivery",
                    DELIVERY_ID_LABEL
                ),
            ));
        }
    }
    let orchestration = object.orchestration().unwrap_or_default();
    if policy.scope == ClaimScope::Orchestration && orchestration.is_empty() {
        return Plan::Answer(Verdict::invalid(
            Decision::Invalid,
            "spec.orchestrationRef.name is required: it is part of the claim key (claim scope `orchestration`)".into(),
        ));
    }
    if object.name.is_empty() || object.namespace.is_empty() {
        return Plan::Answer(Verdict::invalid(
            Decision::Invalid,
            "metadata.name and metadata.namespace must be set by the time the webhook is called".into(),
        ));
    }
    if let Some(problem) = key_problem(object, policy.scope) {
        return Plan::Answer(Verdict::invalid(Decision::Invalid, problem));
    }
    Plan::Claim(ClaimPlan {
        key: ClaimKey::new(policy.scope, &object.namespace, orchestration, delivery),
        run: run_ref(object),
        dry_run,
    })
}

fn plan_update(object: &RunView, old: &RunView) -> Plan {
    if object.delivery_label.is_none() && old.delivery_label.is_none() {
        return Plan::Answer(Verdict::allow(Decision::Ignored, "no delivery-id label".into()));
    }
    let changed = |field: String, before: Option<&str>, after: Option<&str>| {
        let what = match (before, after) {
            (None, Some(a)) => format!("{field} cannot be added after create (was unset, now {a:?})"),
            (Some(b), None) => format!("{field} cannot be removed (was {b:?})"),
            (Some(b), Some(a)) => format!("{field} is immutable (was {b:?}, now {a:?})"),
            (None, None) => format!("{field} is immutable"),
        };
        Plan::Answer(Verdict::invalid(
            Decision::Immutable,
            format!("{what}: the delivery claim was made at create and its key cannot change"),
        ))
    };
    let (old_label, new_label) = (old.delivery_label.as_deref(), object.delivery_label.as_deref());
    if old_label != new_label {
        return changed(label_field(), old_label, new_label);
    }
    if old.spec_delivery_id() != object.spec_delivery_id() {
        return changed(
            "spec.deliveryId".into(),
            old.spec_delivery_id(),
            object.spec_delivery_id(),
        );
    }
    if old.orchestration() != object.orchestration() {
        return changed(
            "spec.orchestrationRef.name".into(),
            old.orchestration(),
            object.orchestration(),
        );
    }
    Plan::Answer(Verdict::allow(
        Decision::Allowed,
        "the claim key is unchanged; updates are answered without the claim store".into(),
    ))
}

/// A delete never depends on the store: at DELETE admission the run still exists, and its
/// claim stays until retention expires whatever happens next.
fn plan_delete(old: &RunView) -> Plan {
    if old.delivery_label.is_none() {
        return Plan::Answer(Verdict::allow(Decision::Ignored, "no delivery-id label".into()));
    }
    Plan::Answer(Verdict::allow(
        Decision::Allowed,
        "deletes are answered without the claim store; the delivery stays claimed until retention expires"
            .into(),
    ))
}

/// The first part of the claim (its key, and the run it records) that Kubernetes itself
/// would refuse, as "<field> <rule>" ([`RunView::key_problem`], the reconciler's rules too).
fn key_problem(run: &RunView, scope: ClaimScope) -> Option<String> {
    run.key_problem(scope).map(|rejection| rejection.to_string())
}

fn run_ref(run: &RunView) -> RunRef {
    RunRef {
        namespace: run.namespace.clone(),
        name: run.name.clone(),
        uid: run.uid.clone(),
    }
}

/// What the store holds for a create's key: the claim statement's outcome, or for a
/// dry-run the read-only lookup mapped onto the same cases by [`found_for_dry_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Outcome(ClaimOutcome),
    /// Dry-run only: no claim exists (a real create would claim it).
    Vacant,
}

/// Maps a dry-run's read onto what the claim statement would have returned.
pub fn found_for_dry_run(run: &RunRef, current: Option<Claim>) -> Found {
    match current {
        None => Found::Vacant,
        Some(c) if c.state == ClaimState::Pending && c.holder.same_run(run) => {
            Found::Outcome(ClaimOutcome::SameRun(c))
        }
        Some(c) => Found::Outcome(ClaimOutcome::HeldBy(c)),
    }
}

/// After the claim statement (or the dry-run read). `L` is the API-server lookup; this
/// module never calls it, it only hands it back with the claim to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterClaim<'l, L: ?Sized> {
    Answer(Verdict),
    /// The pending claim is older than the grace period: ask the API server (through
    /// `lookup`) whether its run exists before deciding.
    LookUpHolder {
        claim: Claim,
        lookup: &'l L,
    },
}

/// `lookup` is `None` when the API-server lookup is off (`--kube-lookup off`, or no cluster
/// configuration): then no claim is ever taken over.
pub fn after_claim<'l, L: ?Sized>(
    plan: &ClaimPlan,
    found: Found,
    policy: &Policy,
    lookup: Option<&'l L>,
) -> AfterClaim<'l, L> {
    let delivery = &plan.key.delivery_id;
    let claim = match found {
        Found::Vacant => {
            return AfterClaim::Answer(Verdict::allow(
                Decision::DryRun,
                format!(
                    "dry run: delivery {delivery} is unclaimed; a real create would claim it for {}",
                    plan.run
                ),
            ))
        }
        Found::Outcome(ClaimOutcome::Claimed(_)) => {
            return AfterClaim::Answer(Verdict::allow(
                Decision::Claimed,
                format!("delivery {delivery} claimed for {}", plan.run),
            ))
        }
        // A retried create keeps the first create's uid. With the lookup on, the API server
        // says whether that create landed: if not, the retry is the one that makes the run,
        // and its uid is recorded (after_lookup).
        Found::Outcome(ClaimOutcome::SameRun(claim)) => match lookup.filter(|_| !plan.dry_run) {
            Some(lookup) => return AfterClaim::LookUpHolder { claim, lookup },
            None => return AfterClaim::Answer(retried(plan)),
        },
        Found::Outcome(ClaimOutcome::HeldBy(claim)) => claim,
    };
    let stale = claim.state == ClaimState::Pending && claim.idle_for() >= grace_as_chrono(policy.grace);
    // A create of the very name a confirmed claim names: that run may still exist (the API
    // server would refuse this create itself) or have been deleted. Only the API server
    // knows which, and the answer must not say the wrong one.
    let same_name_confirmed = claim.state == ClaimState::Confirmed && claim.holder.same_run(&plan.run);
    let worth_a_lookup = (stale && !claim.holder.same_run(&plan.run)) || same_name_confirmed;
    if let Some(lookup) = lookup.filter(|_| worth_a_lookup) {
        return AfterClaim::LookUpHolder { claim, lookup };
    }
    let note = match claim.state {
        ClaimState::Confirmed if same_name_confirmed => SAME_NAME_EITHER_WAY.to_owned(),
        ClaimState::Confirmed => "that run exists (confirmed)".to_owned(),
        ClaimState::Pending if lookup.is_none() => {
            "the claim is pending and the API-server lookup is off, so it holds until retention expires".to_owned()
        }
        ClaimState::Pending => match claim.updated_at.checked_add_signed(grace_as_chrono(policy.grace)) {
            Some(after) => format!(
                "the claim is pending; if that run was never created, a create after {} can take it over",
                after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            // Only a grace past the flag's bound gets here; no date to name.
            None => "the claim is pending, and its grace period outlasts any date, so it holds until retention expires"
                .to_owned(),
        },
    };
    AfterClaim::Answer(duplicate(plan, &claim, &note))
}

/// The answer to a retried create of the run that holds the pending claim.
fn retried(plan: &ClaimPlan) -> Verdict {
    let decision = if plan.dry_run {
        Decision::DryRun
    } else {
        Decision::Retry
    };
    Verdict::allow(
        decision,
        format!(
            "delivery {} is already claimed by this run ({}): a retried create",
            plan.key.delivery_id, plan.run
        ),
    )
}

/// What the API server said about the run a claim names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A run of that namespace/name exists and carries the claim's key
    /// (`lookup::holds`).
    Exists,
    /// No such run, or the name now belongs to a run of another delivery (or orchestration).
    Gone,
    /// The lookup failed; the claim is kept (never risk a second run).
    Unknown(String),
}

/// After the API-server lookup of a stale pending claim's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterLookup {
    /// The run never appeared: move the claim to this run (compare-and-swap on the holder).
    TakeOver(Claim),
    /// The run exists: mark the claim confirmed, then answer (a duplicate, or a retried
    /// create the API server will refuse itself because the name exists).
    ConfirmThen(Verdict),
    /// A retried create whose first create never landed: this one makes the run, so record
    /// its uid (`ClaimStore::record_retry_uid`), then answer.
    RecordUidThen(Verdict),
    Answer(Verdict),
}

pub fn after_lookup(plan: &ClaimPlan, claim: Claim, holder: Holder) -> AfterLookup {
    // A retried create of the pending claim's own run (namespace/name): allowed whatever the
    // API server says; what it says decides which uid the claim keeps. The run exists: the
    // first create landed and the API server refuses this one itself (AlreadyExists), so
    // the first uid stays, and the claim is confirmed. No such run: this create makes it.
    // Unknown: the first uid stays (the usual case).
    if claim.state == ClaimState::Pending && claim.holder.same_run(&plan.run) {
        return match holder {
            Holder::Exists => AfterLookup::ConfirmThen(retried(plan)),
            Holder::Gone => AfterLookup::RecordUidThen(retried(plan)),
            Holder::Unknown(_) => AfterLookup::Answer(retried(plan)),
        };
    }
    // A confirmed claim is only looked up for a create of its own name: never taken over or
    // confirmed again, only answered truly.
    if claim.state == ClaimState::Confirmed {
        let note = match holder {
            Holder::Exists => "that run exists (confirmed): a create of the same name is refused".to_owned(),
            Holder::Gone => {
                "that run existed and was deleted; deleting a run does not free its delivery, whose \
                             claim is kept until retention expires"
                    .to_owned()
            }
            Holder::Unknown(error) => {
                format!("{SAME_NAME_EITHER_WAY} (the API server could not be asked: {error})")
            }
        };
        return AfterLookup::Answer(duplicate(plan, &claim, &note));
    }
    match holder {
        Holder::Gone if plan.dry_run => AfterLookup::Answer(Verdict::allow(
            Decision::DryRun,
            format!(
                "dry run: delivery {} is held by {}, which does not exist; a real create would take the claim over",
                plan.key.delivery_id, claim.holder
            ),
        )),
        Holder::Gone => AfterLookup::TakeOver(claim),
        Holder::Exists => {
            let verdict = duplicate(plan, &claim, "that run exists");
            if plan.dry_run {
                AfterLookup::Answer(verdict)
            } else {
                AfterLookup::ConfirmThen(verdict)
            }
        }
        Holder::Unknown(error) => AfterLookup::Answer(duplicate(
            plan,
            &claim,
            &format!("the claim is pending and whether that run exists could not be checked ({error}), so the claim is kept"),
        )),
    }
}

/// The take-over succeeded: allowed, with a warning naming the previous holder.
pub fn taken_over(plan: &ClaimPlan, previous: &Claim) -> Verdict {
    let mut verdict = Verdict::allow(
        Decision::Takeover,
        format!(
            "delivery {} taken over for {} from {}, which the API server does not show carrying this delivery",
            plan.key.delivery_id, plan.run, previous.holder
        ),
    )
    .warn(format!(
        "delivery {} was claimed by {} (uid {}), which does not exist or now belongs to another delivery; the claim now names this run",
        plan.key.delivery_id, previous.holder, previous.holder.uid
    ));
    verdict.existing_run = Some(previous.holder.to_string());
    verdict
}

/// `status.reason` of a duplicate's 409. Not `AlreadyExists`: on Kubernetes >= 1.30 the API
/// server takes that reason on a `generateName` create for a generated-name collision and
/// retries the create with new names (up to 8 webhook calls per duplicate). `Conflict` keeps
/// the 409 and is never retried.
pub const DUPLICATE_REASON: &str = "Conflict";

/// The 409 for a delivery someone else holds. The message is for people; `status.details`
/// (from [`Verdict::holder`]) names the existing run (namespace/name, uid) for programs.
fn duplicate(plan: &ClaimPlan, claim: &Claim, note: &str) -> Verdict {
    let dry = if plan.dry_run { "dry run: " } else { "" };
    Verdict {
        allowed: false,
        code: 409,
        reason: DUPLICATE_REASON,
        message: format!(
            "{dry}delivery {} already has a run: orchestrationrun {} (uid {}, claimed at {}, {}); {note}. \
             This submission was answered idempotently: use the existing run",
            plan.key.delivery_id,
            claim.holder,
            claim.holder.uid,
            claim
                .claimed_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            claim.state,
        ),
        decision: Decision::Duplicate,
        warnings: Vec::new(),
        existing_run: Some(claim.holder.to_string()),
        holder: Some(claim.holder.clone()),
    }
}

/// The note for a create of the name a confirmed claim names when the API server was not
/// asked (lookup off, or it failed): true whether that run still exists or was deleted.
const SAME_NAME_EITHER_WAY: &str =
    "that run was created and confirmed; whether it still exists or was deleted, \
     deleting a run does not free its delivery, whose claim is kept until retention expires";

fn grace_as_chrono(grace: Duration) -> chrono::Duration {
    chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review;
    use chrono::{TimeZone, Utc};
    use serde_json::Value;

    const CREATE: &str = include_str!("../../tests/fixtures/admission-review/create-generatename.json");
    const CREATE_FIXED: &str = include_str!("../../tests/fixtures/admission-review/create-fixed-name.json");
    const CREATE_DRY: &str = include_str!("../../tests/fixtures/admission-review/create-dry-run.json");
    const UPDATE_LABEL: &str =
        include_str!("../../tests/fixtures/admission-review/update-label-changed.json");
    const UPDATE_STATUS: &str =
        include_str!("../../tests/fixtures/admission-review/update-status-subresource.json");
    const DELETE: &str = include_str!("../../tests/fixtures/admission-review/delete.json");

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

    /// Issue 11: key parts Kubernetes would refuse are a 422 naming the field and the rule,
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
}
