//! The flush task: the index → the claim store. It owns the reconciler's writes, so the
//! watch loop never waits on the store.

use std::sync::Arc;

use dedupe_store::error::Chain;
use dedupe_store::run::escaped;
use dedupe_store::{ClaimStore, ObservedRun};
use tokio::sync::watch as signal;

use super::index::{Conflict, WriteBatch};
use super::metrics::{ReconcileMetrics, SkipLabels, STORE_REJECTED};
use super::{
    gauge, unix_now, Shared, FLUSH_DELAY, REPORT_MAX_CHARS, STORE_RETRY_FIRST, STORE_RETRY_MAX,
    WRITE_BATCH_ROWS,
};

/// The flush task: writes what the index says is unwritten, one write batch of at most
/// [`WRITE_WRITE_BATCH_ROWS`] runs per store statement, backing off while the store fails.
pub(super) struct Flusher {
    pub(super) shared: Arc<Shared>,
    pub(super) store: ClaimStore,
    pub(super) metrics: ReconcileMetrics,
}

impl Flusher {
    /// Until `stop` turns true: on each wake-up (a watch event), waits [`FLUSH_DELAY`] for
    /// company unless a full write batch is already waiting, then writes until nothing is left.
    pub(super) async fn flush_until_stopped(self, mut stop: signal::Receiver<bool>) {
        let mut retry_delay = STORE_RETRY_FIRST;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.shared.wake.notified() => {}
            }
            if self.shared.index().unwritten() < WRITE_BATCH_ROWS {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(FLUSH_DELAY) => {}
                }
            }
            loop {
                let batch = self.shared.index().take_write_batch(WRITE_BATCH_ROWS);
                if batch.rows.is_empty() {
                    break;
                }
                if self.write(batch).await {
                    retry_delay = STORE_RETRY_FIRST;
                } else {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(retry_delay) => {}
                    }
                    retry_delay = (retry_delay * 2).min(STORE_RETRY_MAX);
                }
            }
            let mut index = self.shared.index();
            if index.take_sync() {
                self.metrics.last_sync.set(unix_now());
                tracing::info!(
                    runs = index.runs(),
                    conflicts = index.conflicts(),
                    "reconciler in sync with the API server"
                );
            }
        }
    }

    /// Writes one write batch; false when the store failed (the rows are put back).
    async fn write(&self, batch: WriteBatch) -> bool {
        report_conflicts(&batch.conflicts);
        self.metrics.conflicts.set(gauge(self.shared.index().conflicts()));
        match self.store.reconcile_isolating(&batch.rows).await {
            Ok(done) => {
                let counts = done.counts;
                self.metrics.backfilled.inc_by(counts.backfilled);
                self.metrics.confirmed.inc_by(counts.confirmed);
                if counts.backfilled + counts.confirmed > 0 {
                    tracing::info!(
                        runs = batch.rows.len(),
                        backfilled = counts.backfilled,
                        confirmed = counts.confirmed,
                        "reconciler wrote claims for observed runs"
                    );
                }
                for (row, error) in &done.rejected {
                    report_rejected(&self.metrics, row, error);
                }
                true
            }
            Err(e) => {
                self.shared.index().requeue(&batch.rows);
                self.metrics.store_errors.inc();
                tracing::warn!(error = %Chain(&e), runs = batch.rows.len(), "reconciler could not write to the claim store; will retry");
                false
            }
        }
    }
}

fn report_rejected(metrics: &ReconcileMetrics, row: &ObservedRun, error: &dedupe_store::StoreError) {
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

fn report_conflicts(conflicts: &[Conflict]) {
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
