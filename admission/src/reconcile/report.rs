//! What the reconciler reports: its warnings (a run it skips, a row the store refuses, a key
//! with several live runs) and the values its metrics take.

use std::time::{SystemTime, UNIX_EPOCH};

use dedupe_store::error::Chain;
use dedupe_store::run::escaped;
use dedupe_store::ObservedRun;

use super::index::{Conflict, Skipped};
use super::metrics::{ReconcileMetrics, SkipLabels, STORE_REJECTED};

/// Longest part of a run's text (name, field value, rule) a report quotes.
const REPORT_MAX_CHARS: usize = 256;

/// A run the index skipped: it cannot hold a claim (the webhook would refuse its key).
pub(super) fn skipped(metrics: &ReconcileMetrics, skipped: &Skipped) {
    let reason = skipped.rejection.reason.as_str();
    metrics.skipped.get_or_create(&SkipLabels { reason }).inc();
    tracing::warn!(
        run = %escaped(&format!("{}/{}", skipped.namespace, skipped.name), REPORT_MAX_CHARS),
        reason,
        field = skipped.rejection.field,
        problem = %escaped(&skipped.rejection.problem, REPORT_MAX_CHARS),
        "reconciler skipped a run it cannot claim (the webhook would refuse its key): no claim is written for it; the other runs are not held back"
    );
}

/// A run's row the claim store refused for its data (the rest of its write batch was written).
pub(super) fn rejected(metrics: &ReconcileMetrics, row: &ObservedRun, error: &dedupe_store::StoreError) {
    metrics
        .skipped
        .get_or_create(&SkipLabels {
            reason: STORE_REJECTED,
        })
        .inc();
    tracing::warn!(
        run = %escaped(&format!("{}/{}", row.namespace, row.name), REPORT_MAX_CHARS),
        claimKey = %escaped(&row.key.to_string(), REPORT_MAX_CHARS),
        reason = STORE_REJECTED,
        error = %escaped(&Chain(error).to_string(), REPORT_MAX_CHARS),
        "the claim store refused a run's row: no claim is written for it; the rest of its batch was written"
    );
}

/// Keys with several live runs: reported, never touched.
pub(super) fn conflicts(conflicts: &[Conflict]) {
    for c in conflicts {
        tracing::warn!(
            deliveryId = %c.key.delivery_id,
            claimKey = %c.key,
            holder = %c.holder,
            others = %c.others.join(","),
            "several live runs carry one delivery (they got in while the webhook was bypassed): the oldest holds the claim; the others are left as they are"
        );
    }
}

/// Now, in unix seconds (the reconciler's timestamp metrics).
pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A count as a gauge value.
pub(super) fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
