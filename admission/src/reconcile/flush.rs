//! The flush task: the index → the claim store. It owns the reconciler's writes, so the
//! watch loop never waits on the store.

use std::sync::Arc;
use std::time::Duration;

use dedupe_store::error::Chain;
use dedupe_store::{Backoff, ClaimStore};
use tokio::sync::watch as signal;

use super::index::{SharedIndex, WriteBatch};
use super::metrics::ReconcileMetrics;
use super::report::{self, gauge, unix_now};

/// Runs per write batch (one store statement): the watcher's list page size, so a relist of
/// N runs costs about N/500 statements, each well inside the store timeout.
pub const WRITE_BATCH_ROWS: usize = 500;
/// How long the first change after a quiet spell waits for company before it is written:
/// short next to the 2 s in which a pending claim is confirmed after its run appears, long
/// enough to gather a burst into one write batch. Under steady churn changes are written at
/// this pace.
pub const FLUSH_DELAY: Duration = Duration::from_millis(100);
/// After failed store writes: half a second, doubling up to half a minute, so a store that
/// is back is written to soon and one that stays down is not hammered.
pub const STORE_RETRY: Backoff = Backoff::doubling(Duration::from_millis(500), Duration::from_secs(30));

/// The flush task: writes what the index says is unwritten, one write batch of at most
/// [`WRITE_BATCH_ROWS`] runs per store statement, backing off while the store fails.
pub(super) struct Flusher {
    pub(super) shared: Arc<SharedIndex>,
    pub(super) store: ClaimStore,
    pub(super) metrics: ReconcileMetrics,
}

impl Flusher {
    /// Until `stop` turns true: on each wake-up (a watch event), waits [`FLUSH_DELAY`] for
    /// company unless a full write batch is already waiting, then writes until nothing is left.
    pub(super) async fn flush_until_stopped(self, mut stop: signal::Receiver<bool>) {
        let mut waits = STORE_RETRY.waits();
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
                    waits.succeeded();
                } else {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(waits.failed()) => {}
                    }
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
        report::conflicts(&batch.conflicts);
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
                    report::rejected(&self.metrics, row, error);
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
