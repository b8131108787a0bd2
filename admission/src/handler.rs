//! The request path: `POST /validate` → check the HTTP envelope (415/413/408, as
//! [`HttpError`], by the edge's [`edge::read_body`]) → parse the AdmissionReview (400) → run
//! the decision (`decision.rs`) against the claim store and, for a stale pending claim, the
//! API server → answer. A store failure is a 503, never a deny.
//!
//! The create path's store steps, and its one retry loop (`CREATE_ATTEMPTS`), are in
//! [`admit`]'s `create`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use dedupe_store::error::Chain;
use dedupe_store::ClaimStore;
use tracing::Instrument;

use crate::decision::{self, AfterClaim, AfterLookup, ClaimPlan, Found, Holder, Plan, Policy};
use crate::error::{AdmitError, HttpError};
use crate::lookup::{self, RunLookup};
use crate::metrics::{Metrics, OperationLabels, RequestLabels};
use crate::review;
use crate::server::edge::{self, BodySlot};
use crate::verdict::{Decision, Verdict};

/// How many times a create decides again when the claim changed under it (pruned between
/// the claim's insert and its read, confirmed or taken over before a retried create was
/// counted, or a take-over lost to another) before giving up with a 503 (the API server,
/// or the submitter, retries). The only retry on the create path: the store makes one
/// attempt per call and says when the claim changed under it.
const CREATE_ATTEMPTS: usize = 3;

/// What deciding a request needs; built once at start-up (`startup.rs`). What bounds the
/// request before it gets here is the server's ([`crate::server::edge`]).
pub struct App {
    pub store: ClaimStore,
    pub lookup: Option<Arc<dyn RunLookup>>,
    pub policy: Policy,
    pub metrics: Arc<Metrics>,
}

/// `POST /validate`. The body arrives already read, up to the router's body limit
/// ([`crate::server::webhook_router`]); past the limit, axum hands over the rejection.
/// The body slot is the edge's ([`edge::admit_request`] puts it in every request).
pub async fn validate(
    State(app): State<Arc<App>>,
    Extension(body_slot): Extension<BodySlot>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let _in_flight = InFlight::enter(&app.metrics);
    match validate_inner(&app, &headers, body, body_slot, started).await {
        Ok(response) => response,
        Err(e) => e.counted(&app.metrics),
    }
}

/// Counts a request in flight until dropped — also when the API server hangs up and the
/// request's future is dropped half-way.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

async fn validate_inner(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    body_slot: BodySlot,
    started: Instant,
) -> Result<Response, HttpError> {
    let bytes = edge::read_body(&body_slot, headers, body)?;
    let req = review::parse(&bytes);
    // The request is owned now: the body, and its slot, can go before the decision waits on
    // the store (edge::MAX_BODIES_IN_MEMORY).
    drop(bytes);
    body_slot.release();
    let req = req?;
    // `run` rather than `name`: the JSON formatter also writes the span's own name as "name".
    let span = tracing::info_span!(
        "admission",
        uid = %req.uid,
        operation = review::operation_name(&req.operation),
        run = %format_args!("{}/{}", req.namespace, req.name),
        dryRun = req.dry_run,
    );
    decide(app, &req, started).instrument(span).await
}

/// Plans, runs the store steps, records the decision and writes the answer.
async fn decide(app: &App, req: &review::Request, started: Instant) -> Result<Response, HttpError> {
    let plan = decision::plan(req, &app.policy);
    let outcome = admit(app, &plan).await;
    let key = plan.key();
    let latency = started.elapsed();
    let operation = review::operation_name(&req.operation);
    app.metrics
        .latency
        .get_or_create(&OperationLabels { operation })
        .observe(latency.as_secs_f64());
    let latency_ms = latency.as_secs_f64() * 1000.0;
    let delivery = key.map(|k| k.delivery_id.as_str()).unwrap_or_default();
    let claim_key = key.map(|k| k.to_string()).unwrap_or_default();
    match outcome {
        Ok(verdict) => {
            let decision = verdict.decision.as_str();
            app.metrics
                .requests
                .get_or_create(&RequestLabels { operation, decision })
                .inc();
            log_decision(&verdict, delivery, &claim_key, latency_ms);
            Ok(review::into_http(&review::respond(&req.uid, &verdict)))
        }
        Err(e) => {
            app.metrics.store_errors.inc();
            tracing::error!(
                deliveryId = delivery,
                claimKey = %claim_key,
                latency_ms,
                error = %Chain(&e),
                "no decision: claim store unavailable, answering 503 so the failurePolicy applies"
            );
            Err(HttpError::Unavailable(e))
        }
    }
}

/// Runs the store and API-server steps the decision asks for (creates only: updates and
/// deletes are answered by the plan).
pub async fn admit(app: &App, plan: &Plan) -> Result<Verdict, AdmitError> {
    match plan {
        Plan::Answer(verdict) => Ok(verdict.clone()),
        Plan::Claim(p) => create(app, p).await,
    }
}

/// GETs the run `holder` names and says whether it is there carrying `key`.
async fn look_up(
    app: &App,
    lookup: &dyn RunLookup,
    holder: &dedupe_store::RunRef,
    key: &dedupe_store::ClaimKey,
) -> Holder {
    match lookup.get_run(holder).await {
        Ok(Some(found)) if lookup::holds(&found, holder, key) => Holder::Exists,
        Ok(Some(found)) => {
            tracing::info!(
                run = %holder,
                foundDelivery = found.delivery_label.as_deref().unwrap_or_default(),
                "the claim's run name now belongs to a run of another delivery or orchestration"
            );
            Holder::Gone
        }
        Ok(None) => Holder::Gone,
        Err(e) => {
            app.metrics.lookup_errors.inc();
            let error = Chain(&e).to_string();
            tracing::warn!(%error, "API-server lookup failed; keeping the claim as it is");
            Holder::Unknown(error)
        }
    }
}

async fn create(app: &App, plan: &ClaimPlan) -> Result<Verdict, AdmitError> {
    for _ in 0..CREATE_ATTEMPTS {
        let found = if plan.dry_run {
            decision::found_for_dry_run(&plan.run, app.store.lookup(&plan.key).await?)
        } else {
            Found::Outcome(app.store.claim(&plan.key, &plan.run).await?)
        };
        let (claim, lookup) = match decision::after_claim(plan, found, &app.policy, app.lookup.as_deref()) {
            AfterClaim::Answer(verdict) => return Ok(verdict),
            AfterClaim::LookUpHolder { claim, lookup } => (claim, lookup),
            AfterClaim::DecideAgain => continue,
        };
        let holder = look_up(app, lookup, &claim.holder, &plan.key).await;
        let holder_ref = claim.holder.clone();
        match decision::after_lookup(plan, claim, holder) {
            AfterLookup::Answer(verdict) => return Ok(verdict),
            AfterLookup::ConfirmThen(verdict) => {
                app.store.confirm_holder(&plan.key, &holder_ref).await?;
                return Ok(verdict);
            }
            AfterLookup::RecordUidThen(verdict) => {
                app.store.record_retry_uid(&plan.key, &plan.run).await?;
                return Ok(verdict);
            }
            AfterLookup::TakeOver(previous) => {
                if app
                    .store
                    .take_over(&plan.key, &previous, app.policy.grace, &plan.run)
                    .await?
                    .is_some()
                {
                    app.metrics.takeovers.inc();
                    return Ok(decision::taken_over(plan, &previous));
                }
                // Someone changed the claim since it was read: decide again on what is there now.
            }
        }
    }
    Err(AdmitError::Contention)
}

/// One event per decision, worded so that `rg 'deliveryId|idempotent'` finds them all.
fn log_decision(verdict: &Verdict, delivery: &str, claim_key: &str, latency_ms: f64) {
    let existing = verdict.existing_run.as_deref().unwrap_or_default();
    let idempotent;
    let message: &str = if verdict.decision == Decision::Duplicate {
        idempotent = format!(
            "duplicate delivery {delivery}: submission answered idempotently with existing run {existing}"
        );
        &idempotent
    } else {
        &verdict.message
    };
    tracing::info!(
        deliveryId = delivery,
        claimKey = claim_key,
        decision = verdict.decision.as_str(),
        existingRun = existing,
        allowed = verdict.allowed,
        latency_ms,
        "{message}"
    );
}
