//! The reconciler's metrics, registered with the webhook's (`orchestration_dedupe_reconcile_*`).

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why a run got no claim from the reconciler: a [`dedupe_store::RejectReason`] word, or
/// [`STORE_REJECTED`] / [`GONE_OVERFLOW`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub reason: &'static str,
}

/// The store refused the run's row for its data (the rules let through something it cannot
/// hold): the row is skipped, the rest of its write batch written.
pub const STORE_REJECTED: &str = "store_rejected";
/// A run that left before it was written, dropped because too many were waiting.
pub const GONE_OVERFLOW: &str = "gone_overflow";

/// Cheap to clone: every field shares its value.
#[derive(Clone, Debug, Default)]
pub struct ReconcileMetrics {
    /// Unix seconds at which every watched run of the last (re)list was written to the
    /// store; 0 until the first complete sync.
    pub last_sync: Gauge<i64, AtomicI64>,
    pub backfilled: Counter,
    pub confirmed: Counter,
    /// Keys with more than one live run now.
    pub conflicts: Gauge<i64, AtomicI64>,
    /// Labelled runs the watches show now.
    pub observed_runs: Gauge<i64, AtomicI64>,
    pub watch_errors: Counter,
    pub store_errors: Counter,
    /// Runs the reconciler cannot claim, by reason; each counted once when first seen.
    pub skipped: Family<SkipLabels, Counter>,
    /// Unix seconds of the last thing a watch received: an event, a list page, a bookmark;
    /// 0 until the first. Moves while the watches work, not only on a relist, so alerts can
    /// tell a quiet healthy watch from a failing one.
    pub last_event: Gauge<i64, AtomicI64>,
}

impl ReconcileMetrics {
    pub fn register(&self, registry: &mut Registry) {
        // Every reason from the start, at 0: an alert's `increase()` sees the first skip, and
        // the family always has samples.
        let reasons = dedupe_store::RejectReason::ALL.map(|r| r.as_str());
        for reason in reasons.into_iter().chain([STORE_REJECTED, GONE_OVERFLOW]) {
            let _ = self.skipped.get_or_create(&SkipLabels { reason });
        }
        let sub = registry.sub_registry_with_prefix("reconcile");
        sub.register(
            "last_sync_timestamp_seconds",
            "When the reconciler last had every listed run written to the claim store (unix seconds; 0 = never)",
            self.last_sync.clone(),
        );
        sub.register(
            "backfilled",
            "Confirmed claims inserted for runs that had none",
            self.backfilled.clone(),
        );
        sub.register(
            "confirmed",
            "Pending claims confirmed because the API server showed their run",
            self.confirmed.clone(),
        );
        sub.register(
            "conflicts",
            "Claim keys carried by more than one live run (the oldest holds; the others got in while the webhook was bypassed)",
            self.conflicts.clone(),
        );
        sub.register(
            "observed_runs",
            "Labelled runs the reconciler's watches show",
            self.observed_runs.clone(),
        );
        sub.register(
            "watch_errors",
            "Failed lists and watches of the API server (retried with backoff)",
            self.watch_errors.clone(),
        );
        sub.register(
            "skipped_runs",
            "Labelled runs the reconciler cannot claim (a key the webhook's rules refuse, or a row the store refused), by reason; each logged once",
            self.skipped.clone(),
        );
        sub.register(
            "last_event_timestamp_seconds",
            "When a reconciler watch last received anything from the API server: an event, a list page or a bookmark (unix seconds; 0 = never)",
            self.last_event.clone(),
        );
        sub.register(
            "store_errors",
            "Reconciler batches the claim store did not take (retried)",
            self.store_errors.clone(),
        );
    }
}
