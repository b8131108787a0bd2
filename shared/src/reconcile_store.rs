//! The reconciler's one store operation: a reconcile batch (runs the API server shows),
//! written in one statement ([`sql::RECONCILE_BATCH`]) on the connection layer. Kept apart
//! from the claim path (`store/claims.rs`) so the admission hot path and the reconciler's
//! bulk writes can change independently.

use crate::claim::ClaimKey;
use crate::db::rows::read_count_lenient;
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

impl std::ops::AddAssign for ReconcileCounts {
    fn add_assign(&mut self, other: Self) {
        self.confirmed += other.confirmed;
        self.backfilled += other.backfilled;
    }
}

/// What [`ClaimStore::reconcile_isolating`] wrote, and the rows the store refused.
#[derive(Debug, Default)]
pub struct Isolated {
    pub counts: ReconcileCounts,
    /// Rows the store refused for their own data, each alone, with the store's error.
    pub rejected: Vec<(ObservedRun, StoreError)>,
}

/// SQLSTATE classes that blame the statement's data rather than the store: 22 (data
/// exception: a NUL byte, 22021), 23 (integrity: a CHECK), 54 (program limit: a key too
/// long for its index, 54000). Retrying the same rows can never succeed.
const DATA_ERROR_CLASSES: [&str; 3] = ["22", "23", "54"];

impl StoreError {
    /// True when the store refused the statement for the values it carried.
    pub fn is_data_error(&self) -> bool {
        self.sqlstate()
            .is_some_and(|code| DATA_ERROR_CLASSES.iter().any(|class| code.starts_with(class)))
    }
}

impl ClaimStore {
    /// [`ClaimStore::reconcile_batch`] for rows of which some may be refused for their data:
    /// a refused batch is split in halves until each refused row is alone, so one bad row
    /// costs about 2·log2(rows) statements and never holds back the others. Any other error
    /// (store down, timeout, a lock) fails the call, with the halves written so far kept
    /// (the batch is idempotent: writing them again changes nothing).
    pub async fn reconcile_isolating(&self, runs: &[ObservedRun]) -> Result<Isolated, StoreError> {
        let mut done = Isolated::default();
        let mut todo: Vec<&[ObservedRun]> = vec![runs];
        while let Some(part) = todo.pop() {
            match self.reconcile_batch(part).await {
                Ok(counts) => done.counts += counts,
                Err(e) if e.is_data_error() => match part {
                    [row] => done.rejected.push((row.clone(), e)),
                    _ => {
                        let (left, right) = part.split_at(part.len() / 2);
                        todo.push(right);
                        todo.push(left);
                    }
                },
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

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
        let row = self
            .db()
            .query_one_row(
                sql::RECONCILE_BATCH,
                &[p1, p2, p3, p4, p5, p6, p7, &holds],
                "reconcile batch",
            )
            .await?;
        Ok(ReconcileCounts {
            confirmed: read_count_lenient(&row, "confirmed")?,
            backfilled: read_count_lenient(&row, "backfilled")?,
        })
    }
}
