//! The pruner's operations: the cutoff, counts of expired claims, the claim-traffic sample
//! adaptive pacing reads, and the advisory-lock session ([`PrunerLock`]) on which every
//! prune batch runs.
//!
//! "Batch" here is always a prune batch: one short transaction deleting up to N expired
//! claims.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;

use crate::claim::ExpiredCount;
use crate::db::{discards_connection, rows::read_count_lenient};
use crate::error::StoreError;
use crate::sql;

use super::ClaimStore;

/// First half of the pruner's advisory lock key ("prun" in ASCII).
pub const PRUNER_LOCK_CLASS: i32 = 0x7072_756e;

/// What [`ClaimStore::claim_traffic`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimTraffic {
    pub keyed_scans: i64,
    pub recent_sessions: i64,
    pub sampled_at: DateTime<Utc>,
}

/// What [`PrunerLock::prune_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrunedBatch {
    pub deleted: u64,
    /// Where the next batch can start: every expired claim before it is gone (the range's
    /// bound, or the newest `claimed_at` a key-by-key batch deleted). Starting there, a batch
    /// does not re-walk the dead index entries the earlier ones left behind.
    pub next_from: Option<DateTime<Utc>>,
    /// Claims are left in the range past this batch's bound: the prune is not done.
    pub more: bool,
}

/// Which delete statement a prune batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PruneShape {
    /// [`sql::DELETE_EXPIRED_KEYS`]: the N oldest keys, skipping locked rows.
    KeyByKey,
    /// [`sql::PRUNE_RANGE_BOUND`] then [`sql::DELETE_EXPIRED_RANGE`]: everything below the
    /// (N+1)-th oldest `claimed_at`.
    Range,
}

impl ClaimStore {
    /// The database clock minus `retention_days`: the pruner's cutoff, taken once.
    pub async fn prune_cutoff(&self, retention_days: u32) -> Result<DateTime<Utc>, StoreError> {
        let days = i32::try_from(retention_days).map_err(|e| {
            StoreError::Query(format!("retention of {retention_days} days is out of range: {e}").into())
        })?;
        let row = self
            .db
            .query_one_row(sql::PRUNE_CUTOFF, &[&days], "cutoff query")
            .await?;
        Ok(row.try_get("cutoff")?)
    }

    /// How many claims are older than `cutoff`, and the oldest (dry-run, progress).
    pub async fn count_expired(&self, cutoff: DateTime<Utc>) -> Result<ExpiredCount, StoreError> {
        let row = self
            .db
            .query_one_row(sql::COUNT_EXPIRED, &[&cutoff], "count")
            .await?;
        Ok(ExpiredCount {
            expired: read_count_lenient(&row, "expired")?,
            oldest: row.try_get("oldest")?,
        })
    }

    /// What PostgreSQL shows of the claim traffic ([`sql::PRUNE_CLAIM_TRAFFIC`]): the
    /// claims primary key's cumulative index scans, other sessions on the claims table since
    /// `since` (or now), and the database clock; sessions named `own_application_name` are
    /// the pruner's own and not counted.
    pub async fn claim_traffic(
        &self,
        since: Option<DateTime<Utc>>,
        own_application_name: Option<&str>,
    ) -> Result<ClaimTraffic, StoreError> {
        let row = self
            .db
            .query_one_row(
                sql::PRUNE_CLAIM_TRAFFIC,
                &[&since, &own_application_name],
                "traffic sample",
            )
            .await?;
        Ok(ClaimTraffic {
            keyed_scans: row.try_get("keyed_scans")?,
            recent_sessions: row.try_get("recent_sessions")?,
            sampled_at: row.try_get("sampled_at")?,
        })
    }

    /// Tries to become the only pruner of this claims table. `None` when another session
    /// holds the lock. The lock lives as long as the returned guard: the guard owns a
    /// connection taken out of the pool, and dropping it closes that session, which releases
    /// the lock even if the process is killed.
    ///
    /// The lock is a session-level advisory lock, so it ends with its session (a PostgreSQL
    /// restart or failover ends it). Prune batches therefore run only through
    /// [`PrunerLock::prune_batch`], on that very session: a batch can run only while the
    /// session that holds the lock is alive, so a lost lock can never be followed by a
    /// delete from the pruner that lost it.
    pub async fn try_pruner_lock(&self) -> Result<Option<PrunerLock>, StoreError> {
        let bound = self.db.timeout();
        let attempt = async {
            let mut checkout = self.db.checkout().await?;
            let result = async {
                let row = checkout
                    .client()?
                    .query_one(sql::PRUNER_TRY_LOCK, &[&PRUNER_LOCK_CLASS])
                    .await?;
                Ok(row.try_get::<_, bool>(0)?)
            }
            .await;
            if let Ok(true) = result {
                // Held: the session leaves the pool for good (it must never serve another
                // call, and closing it is what releases the lock).
                return Ok(checkout.detach().map(|session| PrunerLock {
                    session: Some(session),
                    timeout: bound,
                }));
            }
            checkout.settle(&result);
            result.map(|_| None)
        };
        // A timeout drops the checkout mid-statement: discarded, so a lock the server may
        // still have granted is released with the closed session, not kept in the pool.
        tokio::time::timeout(bound, attempt)
            .await
            .unwrap_or(Err(StoreError::Timeout(bound)))
    }
}

/// Holds the pruner advisory lock for as long as it lives, on a session of its own (out of
/// the pool). Dropping it closes the session, which releases the lock even if the process is
/// killed. Prune batches run on this session, so they stop with it.
pub struct PrunerLock {
    /// `None` once a call on it timed out or failed at the connection level: closed then,
    /// and the lock with it (once the server notices).
    session: Option<deadpool_postgres::ClientWrapper>,
    timeout: Duration,
}

impl std::fmt::Debug for PrunerLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrunerLock")
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl PrunerLock {
    /// True once the session holding the lock is gone (closed, or failed at the connection
    /// level): the lock is gone with it and this guard can delete nothing more.
    pub fn is_lost(&self) -> bool {
        self.session.as_ref().is_none_or(|session| session.is_closed())
    }

    /// One prune batch, on the lock's own session: deletes up to `limit` claims with
    /// `from <= claimed_at < cutoff`, oldest first, as one `claimed_at` range
    /// ([`sql::DELETE_EXPIRED_RANGE`]), bounded by `statement_timeout` and `lock_timeout`
    /// (`batch_timeout`). When more than `limit` claims share the oldest `claimed_at` (a
    /// range cannot split them), the same transaction deletes `limit` of them key by key
    /// ([`sql::DELETE_EXPIRED_KEYS`]) instead.
    ///
    /// Bounded client side by the batch timeout plus the store timeout. A call that times
    /// out or fails at the connection level leaves the session unusable (the caller must
    /// take the lock afresh); the server ends whatever it was running at
    /// `statement_timeout`, still holding the lock until then, so no other pruner can start
    /// meanwhile.
    pub async fn prune_batch(
        &mut self,
        from: DateTime<Utc>,
        cutoff: DateTime<Utc>,
        limit: i64,
        batch_timeout: Duration,
    ) -> Result<PrunedBatch, StoreError> {
        let bound = batch_timeout + self.timeout;
        let session = match self.session.as_mut() {
            Some(session) if !session.is_closed() => session,
            _ => {
                return Err(StoreError::Unavailable(
                    "the session holding the pruner lock was lost".into(),
                ))
            }
        };
        let work = prune_transaction(session, from, cutoff, limit.max(1), batch_timeout);
        let result = tokio::time::timeout(bound, work)
            .await
            .unwrap_or(Err(StoreError::Timeout(bound)));
        if let Err(e) = &result {
            if discards_connection(e) {
                // Never reused: its state is unknown, and closing it is what lets the server
                // release the lock once it has ended the statement.
                self.session = None;
            }
        }
        result
    }
}

/// One prune batch on `client`: a transaction with `SET LOCAL` timeouts, the range delete,
/// and for a range that could not split its oldest timestamp the key-by-key delete
/// instead. Not bounded here: the caller bounds it.
async fn prune_transaction(
    client: &mut deadpool_postgres::ClientWrapper,
    from: DateTime<Utc>,
    cutoff: DateTime<Utc>,
    limit: i64,
    batch_timeout: Duration,
) -> Result<PrunedBatch, StoreError> {
    let ms = u64::try_from(batch_timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let tx = client.transaction().await?;
    tx.batch_execute(&sql::set_local_timeouts(ms, ms)).await?;
    let params: [&(dyn ToSql + Sync); 3] = [&from, &cutoff, &limit];
    let mut batch = delete_step(&tx, PruneShape::Range, &params).await?;
    if batch.deleted == 0 && batch.more {
        batch = PrunedBatch {
            more: true,
            ..delete_step(&tx, PruneShape::KeyByKey, &params).await?
        };
    }
    tx.commit().await?;
    Ok(batch)
}

/// Runs one prune batch's statements (`$1 from, $2 cutoff, $3 limit`) in `tx`.
async fn delete_step(
    tx: &deadpool_postgres::Transaction<'_>,
    shape: PruneShape,
    params: &[&(dyn ToSql + Sync); 3],
) -> Result<PrunedBatch, StoreError> {
    match shape {
        PruneShape::KeyByKey => {
            let prepared = tx.prepare_cached(sql::DELETE_EXPIRED_KEYS).await?;
            let rows = tx.query(&prepared, params).await?;
            let row = rows
                .first()
                .ok_or_else(|| StoreError::UnexpectedRow("key-by-key delete returned nothing".into()))?;
            Ok(PrunedBatch {
                deleted: read_count_lenient(row, "deleted")?,
                next_from: row.try_get("newest")?,
                // Key by key cannot tell whether claims remain: the caller decides.
                more: false,
            })
        }
        PruneShape::Range => {
            let prepared = tx.prepare_cached(sql::PRUNE_RANGE_BOUND).await?;
            let bound: Option<DateTime<Utc>> = tx
                .query_opt(&prepared, params)
                .await?
                .map(|row| row.try_get("claimed_at"))
                .transpose()?;
            let [from, cutoff, _] = *params;
            let below: &(dyn ToSql + Sync) = match &bound {
                Some(bound) => bound,
                None => cutoff,
            };
            let prepared = tx.prepare_cached(sql::DELETE_EXPIRED_RANGE).await?;
            let deleted = tx.execute(&prepared, &[from, below]).await?;
            Ok(PrunedBatch {
                deleted,
                next_from: bound,
                more: bound.is_some(),
            })
        }
    }
}
