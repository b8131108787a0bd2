//! The reconciler's one store operation: a batch of runs the API server shows, written in
//! one statement ([`sql::RECONCILE_BATCH`]). Kept apart from `store.rs` so the admission
//! hot path and the reconciler's bulk writes can change independently.

use crate::claim::ClaimKey;
use crate::error::StoreError;
use crate::sql;
use crate::store::ClaimStore;

/// One live run as the API server shows it, with the key it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRun {
    pub key: ClaimKey,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The run that holds the key when several carry it (oldest by creationTimestamp, ties
    /// by name); exactly one per key in a batch.
    pub holds: bool,
}

/// What one batch changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileCounts {
    /// Pending claims that became confirmed.
    pub confirmed: u64,
    /// Keys without a claim that got a confirmed one.
    pub backfilled: u64,
}

impl ClaimStore {
    /// Confirms and back-fills for `runs` in one statement, under the store timeout.
    /// Idempotent: running the same batch twice changes nothing the second time.
    pub async fn reconcile_batch(&self, runs: &[ObservedRun]) -> Result<ReconcileCounts, StoreError> {
        if runs.is_empty() {
            return Ok(ReconcileCounts::default());
        }
        let mut columns = sql::ClaimColumns::default();
        for r in runs {
            columns.push(&r.key, &r.namespace, &r.name, &r.uid);
        }
        let holds: Vec<bool> = runs.iter().map(|r| r.holds).collect();
        let [p1, p2, p3, p4, p5, p6, p7] = columns.params();
        let rows = self
            .query(sql::RECONCILE_BATCH, &[p1, p2, p3, p4, p5, p6, p7, &holds])
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::UnexpectedRow("reconcile batch returned nothing".into()))?;
        let count = |column: &str| -> Result<u64, StoreError> {
            Ok(u64::try_from(row.try_get::<_, i64>(column)?).unwrap_or(0))
        };
        Ok(ReconcileCounts {
            confirmed: count("confirmed")?,
            backfilled: count("backfilled")?,
        })
    }
}
