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

use dedupe_store::run::DELIVERY_ID_LABEL_FIELD;
use dedupe_store::{
    Claim, ClaimKey, ClaimOutcome, ClaimScope, ClaimState, KeyRejection, RejectReason, RunRef, RunView,
    DELIVERY_ID_LABEL,
};

use kube::core::admission::Operation;

use crate::review::{self, Request};
use crate::verdict::{Decision, Verdict, DUPLICATE_REASON};

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

fn plan_create(object: &RunView, dry_run: bool, policy: &Policy) -> Plan {
    if object.delivery_label.is_none() {
        let verdict = Verdict::allow(Decision::Ignored, "no delivery-id label".into());
        return Plan::Answer(match object.spec_delivery_id() {
            Some(id) => verdict.warn(format!(
                "spec.deliveryId is {id:?} but the {DELIVERY_ID_LABEL} label is missing: this run is not deduplicated"
            )),
            None => verdict,
        });
    }
    // The same rules, in the same order, as the reconciler's: one reader of what a claim
    // may hold ([`RunView::checked_key`]).
    let key = match object.checked_key(policy.scope) {
        Ok(key) => key,
        Err(rejection) => {
            return Plan::Answer(Verdict::invalid(
                Decision::Invalid,
                create_rejection(object, &rejection),
            ))
        }
    };
    Plan::Claim(ClaimPlan {
        key,
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
        return changed(DELIVERY_ID_LABEL_FIELD.into(), old_label, new_label);
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

/// A create's 422 message for a run that cannot hold a claim: the rejection as "<field>
/// <rule>", with two wordings of the webhook's own. A run whose name or namespace is still
/// empty is named as such before any rule on its key's parts: the API server fills both in
/// before calling, so an empty one is a malformed review, not a bad run.
fn create_rejection(object: &RunView, rejection: &KeyRejection) -> String {
    match rejection.reason {
        RejectReason::DeliveryIdMismatch => format!("{rejection}: they must name the same delivery"),
        RejectReason::InvalidOrchestration
        | RejectReason::InvalidNamespace
        | RejectReason::InvalidName
        | RejectReason::InvalidUid
            if object.name.is_empty() || object.namespace.is_empty() =>
        {
            "metadata.name and metadata.namespace must be set by the time the webhook is called".into()
        }
        _ => rejection.to_string(),
    }
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
    /// The claim changed under this attempt ([`ClaimOutcome::Changed`]): decide again on
    /// what is there now.
    DecideAgain,
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
        Found::Outcome(ClaimOutcome::Changed) => return AfterClaim::DecideAgain,
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
mod tests;
