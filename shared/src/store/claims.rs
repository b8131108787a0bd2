//! The webhook's claim path: claim a key, read it (dry-run), take a stale pending claim
//! over, confirm it, record a retried create's uid.

use std::time::Duration;

use crate::claim::{Claim, ClaimKey, ClaimOutcome, ClaimState, RunRef};
use crate::db::read_claim;
use crate::error::StoreError;
use crate::group_commit;
use crate::sql;

use super::ClaimStore;

impl ClaimStore {
    /// Claims `key` for `run`: inserts a pending claim, or records a retried create of the
    /// same pending run, or reports the holder. One round trip for a new claim and for a
    /// duplicate (a read: no row lock), two for a retried create.
    pub async fn claim(&self, key: &ClaimKey, run: &RunRef) -> Result<ClaimOutcome, StoreError> {
        let inserted = match &self.group {
            Some(group) => self.db.bounded(group.insert(key, run)).await?,
            None => group_commit::insert_alone(&self.db, key, run).await?,
        };
        let found = match inserted {
            Some(found) => Some(found),
            // The holder committed after this statement's snapshot: read it afresh.
            None => self.lookup(key).await?.map(|claim| (false, claim)),
        };
        Ok(match found {
            Some((true, claim)) => ClaimOutcome::Claimed(claim),
            Some((false, claim)) if claim.state == ClaimState::Pending && claim.holder.same_run(run) => {
                let rows = self
                    .db
                    .query_keyed(sql::CLAIM_RETRY, key, &[&run.namespace, &run.name])
                    .await?;
                match rows.first() {
                    Some(row) => ClaimOutcome::SameRun(read_claim(row)?.1),
                    // Confirmed, taken over or pruned since it was read.
                    None => ClaimOutcome::Changed,
                }
            }
            Some((false, claim)) => ClaimOutcome::HeldBy(claim),
            // Deleted (pruned) between the two statements.
            None => ClaimOutcome::Changed,
        })
    }

    /// Reads the claim for `key` without writing (dry-run).
    pub async fn lookup(&self, key: &ClaimKey) -> Result<Option<Claim>, StoreError> {
        let rows = self.db.query_keyed(sql::LOOKUP, key, &[]).await?;
        rows.first()
            .map(|row| read_claim(row).map(|(_, claim)| claim))
            .transpose()
    }

    /// Moves a stale pending claim from `expected`'s holder to `new_run`, only if nobody
    /// changed it since `expected` was read and it has been idle for at least `grace` by the
    /// database clock. `None` when another writer got there first.
    pub async fn take_over(
        &self,
        key: &ClaimKey,
        expected: &Claim,
        grace: Duration,
        new_run: &RunRef,
    ) -> Result<Option<Claim>, StoreError> {
        let grace_secs = grace.as_secs_f64();
        let rows = self
            .db
            .query_keyed(
                sql::TAKE_OVER,
                key,
                &[
                    &expected.holder.namespace,
                    &expected.holder.name,
                    &expected.holder.uid,
                    &expected.updated_at,
                    &grace_secs,
                    &new_run.namespace,
                    &new_run.name,
                    &new_run.uid,
                ],
            )
            .await?;
        rows.first()
            .map(|row| read_claim(row).map(|(_, claim)| claim))
            .transpose()
    }

    /// Marks the claim confirmed if `run` (by namespace/name) holds it pending. True when the
    /// state changed.
    pub async fn confirm(&self, key: &ClaimKey, run: &RunRef) -> Result<bool, StoreError> {
        let rows = self
            .db
            .query_keyed(sql::CONFIRM, key, &[&run.namespace, &run.name])
            .await?;
        Ok(!rows.is_empty())
    }

    /// Records `run`'s uid on the pending claim its namespace/name holds: a retried create
    /// whose first create never landed (the API server shows no such run), so this one makes
    /// the run. True when the claim was still pending for that name.
    pub async fn record_retry_uid(&self, key: &ClaimKey, run: &RunRef) -> Result<bool, StoreError> {
        let rows = self
            .db
            .query_keyed(sql::CLAIM_RETRY_UID, key, &[&run.namespace, &run.name, &run.uid])
            .await?;
        Ok(!rows.is_empty())
    }

    /// Marks a pending claim confirmed if `holder` (namespace/name/uid, as read) still holds
    /// it; used when the take-over lookup found the holder alive.
    pub async fn confirm_holder(&self, key: &ClaimKey, holder: &RunRef) -> Result<bool, StoreError> {
        let rows = self
            .db
            .query_keyed(
                sql::CONFIRM_HOLDER,
                key,
                &[&holder.namespace, &holder.name, &holder.uid],
            )
            .await?;
        Ok(!rows.is_empty())
    }
}
