//! `ClaimStore`: the PostgreSQL claim store. Each operation is one named statement from
//! [`crate::sql`], bounded by the configured timeout; uniqueness comes from the table's
//! primary key, never from a read-then-write here.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::claim::{Claim, ClaimKey, ClaimOutcome, ClaimState, DeletedBatch, ExpiredCount, RunRef};
use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::migrate::{self, MigrationReport};
use crate::sql;

/// First half of the pruner's advisory lock key ("prun" in ASCII).
pub const PRUNER_LOCK_CLASS: i32 = 0x7072_756e;

/// How many times `claim` re-reads after an insert lost to a holder its snapshot could not
/// see (or that the pruner deleted meanwhile). One is almost always enough.
const CLAIM_ATTEMPTS: usize = 3;

/// The claim store. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct ClaimStore {
    pool: Pool,
    timeout: Duration,
}

impl std::fmt::Debug for ClaimStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClaimStore {
    /// Builds the bounded pool. Connections are opened on first use, so this does not fail
    /// when the store is down; the first call does, with [`StoreError`].
    pub fn new(config: &StoreConfig) -> Result<Self, StoreError> {
        let mut pg = config.database.clone();
        // The server-side bound matches the client-side one, so a statement abandoned by a
        // timed-out call does not go on holding locks.
        let ms = config.timeout.as_millis();
        let options = match pg.get_options() {
            Some(existing) => format!("{existing} -c statement_timeout={ms}"),
            None => format!("-c statement_timeout={ms}"),
        };
        pg.options(&options);
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(config.timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("orchestration-dedupe");
        }
        let manager = Manager::from_config(
            pg,
            config.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self {
            pool,
            timeout: config.timeout,
        })
    }

    /// The per-call bound.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `f` under the store timeout.
    async fn bounded<T>(&self, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)))
    }

    pub(crate) async fn query(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.bounded(async {
            let client = self.pool.get().await?;
            let prepared = client.prepare_cached(statement).await?;
            Ok(client.query(&prepared, params).await?)
        })
        .await
    }

    /// Runs a keyed statement: `$1..$4` are the claim key (delivery id, scope, namespace,
    /// orchestration), `rest` follows from `$5`.
    async fn query_keyed(
        &self,
        statement: &str,
        key: &ClaimKey,
        rest: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let scope = key.scope.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(4 + rest.len());
        params.extend_from_slice(&[&key.delivery_id, &scope, &key.namespace, &key.orchestration]);
        params.extend_from_slice(rest);
        self.query(statement, &params).await
    }

    /// Applies pending migrations under the migration advisory lock. The migration
    /// transaction may wait for another replica's, so it is not bound by the store timeout.
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let mut client = self.pool.get().await?;
        // statement_timeout would cut a long wait for the lock; lift it for this session's
        // migration and restore it after.
        client.batch_execute("SET statement_timeout = 0").await?;
        let result = migrate::apply(&mut client).await;
        client.batch_execute("RESET statement_timeout").await?;
        result
    }

    /// One round trip to the store (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query(sql::PING, &[]).await.map(|_| ())
    }

    /// Claims `key` for `run`: inserts a pending claim, or records a retried create of the
    /// same pending run, or reports the holder. One round trip on the common paths.
    pub async fn claim(&self, key: &ClaimKey, run: &RunRef) -> Result<ClaimOutcome, StoreError> {
        for _ in 0..CLAIM_ATTEMPTS {
            let rows = self
                .query_keyed(sql::CLAIM, key, &[&run.namespace, &run.name, &run.uid])
                .await?;
            let found = match rows.first() {
                Some(row) => Some(read_claim(row)?),
                // The holder committed after this statement's snapshot: read it afresh.
                None => self.lookup(key).await?.map(|claim| (false, claim)),
            };
            match found {
                Some((true, claim)) if claim.admissions == 0 => return Ok(ClaimOutcome::Claimed(claim)),
                Some((true, claim)) => return Ok(ClaimOutcome::SameRun(claim)),
                Some((false, claim)) => return Ok(ClaimOutcome::HeldBy(claim)),
                // Deleted (pruned) between the two statements: try the insert again.
                None => continue,
            }
        }
        Err(StoreError::UnexpectedRow(format!(
            "claim for {key} kept vanishing between insert and read"
        )))
    }

    /// Reads the claim for `key` without writing (dry-run).
    pub async fn lookup(&self, key: &ClaimKey) -> Result<Option<Claim>, StoreError> {
        let rows = self.query_keyed(sql::LOOKUP, key, &[]).await?;
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
            .query_keyed(sql::CONFIRM, key, &[&run.namespace, &run.name])
            .await?;
        Ok(!rows.is_empty())
    }

    /// Marks a pending claim confirmed if `holder` (namespace/name/uid, as read) still holds
    /// it; used when the take-over lookup found the holder alive.
    pub async fn confirm_holder(&self, key: &ClaimKey, holder: &RunRef) -> Result<bool, StoreError> {
        let rows = self
            .query_keyed(
                sql::CONFIRM_HOLDER,
                key,
                &[&holder.namespace, &holder.name, &holder.uid],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// The database clock minus `retention_days`: the pruner's cutoff, taken once.
    pub async fn prune_cutoff(&self, retention_days: u32) -> Result<DateTime<Utc>, StoreError> {
        let days = i32::try_from(retention_days)
            .map_err(|_| StoreError::Query(format!("retention of {retention_days} days is out of range")))?;
        let rows = self.query(sql::PRUNE_CUTOFF, &[&days]).await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::UnexpectedRow("cutoff query returned nothing".into()))?;
        Ok(row.try_get("cutoff")?)
    }

    /// Deletes up to `limit` claims with `from <= claimed_at < cutoff`, oldest first, key by
    /// key ([`sql::DELETE_EXPIRED_BATCH`]), in one short transaction bounded by
    /// `statement_timeout` and `lock_timeout`. Rows locked by a concurrent admission are
    /// skipped, never waited for.
    pub async fn delete_expired_batch(
        &self,
        from: DateTime<Utc>,
        cutoff: DateTime<Utc>,
        limit: i64,
        batch_timeout: Duration,
    ) -> Result<DeletedBatch, StoreError> {
        let batch = self
            .delete_in_batch_transaction(BatchShape::KeyByKey, from, cutoff, limit, batch_timeout)
            .await?;
        Ok(DeletedBatch {
            deleted: batch.deleted,
            newest: batch.newest,
        })
    }

    /// Deletes up to `limit` claims with `from <= claimed_at < cutoff`, oldest first, as one
    /// `claimed_at` range ([`sql::DELETE_EXPIRED_RANGE`]) in one short transaction bounded
    /// by `statement_timeout` and `lock_timeout`. When more than `limit` claims share the
    /// oldest `claimed_at` (a range cannot split them), the same transaction deletes `limit`
    /// of them key by key ([`sql::DELETE_EXPIRED_BATCH`]) instead.
    pub async fn delete_expired_range(
        &self,
        from: DateTime<Utc>,
        cutoff: DateTime<Utc>,
        limit: i64,
        batch_timeout: Duration,
    ) -> Result<RangeBatch, StoreError> {
        self.delete_in_batch_transaction(BatchShape::Range, from, cutoff, limit.max(1), batch_timeout)
            .await
    }

    /// One prune batch: a transaction with `SET LOCAL` timeouts, the `shape`'s delete, and
    /// for a range that could not split its oldest timestamp the key-by-key delete instead.
    /// Bounded client side by the batch timeout plus the store timeout.
    async fn delete_in_batch_transaction(
        &self,
        shape: BatchShape,
        from: DateTime<Utc>,
        cutoff: DateTime<Utc>,
        limit: i64,
        batch_timeout: Duration,
    ) -> Result<RangeBatch, StoreError> {
        let ms = u64::try_from(batch_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let bound = batch_timeout + self.timeout;
        let work = async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.batch_execute(&sql::set_local_timeouts(ms, ms)).await?;
            let params: [&(dyn ToSql + Sync); 3] = [&from, &cutoff, &limit];
            let mut batch = delete_step(&tx, shape, &params).await?;
            if shape == BatchShape::Range && batch.deleted == 0 && batch.more {
                batch = RangeBatch {
                    more: true,
                    ..delete_step(&tx, BatchShape::KeyByKey, &params).await?
                };
            }
            tx.commit().await?;
            Ok(batch)
        };
        tokio::time::timeout(bound, work)
            .await
            .unwrap_or(Err(StoreError::Timeout(bound)))
    }

    /// How many claims are older than `cutoff`, and the oldest (dry-run, progress).
    pub async fn count_expired(&self, cutoff: DateTime<Utc>) -> Result<ExpiredCount, StoreError> {
        let rows = self.query(sql::COUNT_EXPIRED, &[&cutoff]).await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::UnexpectedRow("count returned nothing".into()))?;
        let expired: i64 = row.try_get("expired")?;
        Ok(ExpiredCount {
            expired: u64::try_from(expired).unwrap_or(0),
            oldest: row.try_get("oldest")?,
        })
    }

    /// Tries to become the only pruner of this claims table. `None` when another session
    /// holds the lock. The lock lives as long as the returned guard: the guard owns a
    /// connection taken out of the pool, and dropping it closes that session, which releases
    /// the lock even if the process is killed.
    pub async fn try_pruner_lock(&self) -> Result<Option<PrunerLock>, StoreError> {
        self.bounded(async {
            let client = self.pool.get().await?;
            let row = client
                .query_one(sql::PRUNER_TRY_LOCK, &[&PRUNER_LOCK_CLASS])
                .await?;
            let held: bool = row.try_get(0)?;
            Ok(held.then(|| PrunerLock {
                _session: deadpool_postgres::Object::take(client),
            }))
        })
        .await
    }
}

/// Holds the pruner advisory lock for as long as it lives.
pub struct PrunerLock {
    _session: deadpool_postgres::ClientWrapper,
}

fn read_claim(row: &Row) -> Result<(bool, Claim), StoreError> {
    let state: String = row.try_get("state")?;
    let state =
        ClaimState::parse(&state).ok_or_else(|| StoreError::UnexpectedRow(format!("state `{state}`")))?;
    Ok((
        row.try_get("written")?,
        Claim {
            holder: RunRef {
                namespace: row.try_get("run_namespace")?,
                name: row.try_get("run_name")?,
                uid: row.try_get("run_uid")?,
            },
            state,
            claimed_at: row.try_get("claimed_at")?,
            updated_at: row.try_get("updated_at")?,
            admissions: row.try_get("admissions")?,
            takeovers: row.try_get("takeovers")?,
            observed_at: row.try_get("observed_at")?,
        },
    ))
}

/// What [`ClaimStore::delete_expired_range`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeBatch {
    pub deleted: u64,
    /// The newest `claimed_at` among the deleted rows (the next batch can start there).
    pub newest: Option<DateTime<Utc>>,
    /// Claims are left in the range past this batch's bound: the prune is not done.
    pub more: bool,
}

/// Which delete statement a prune batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchShape {
    /// [`sql::DELETE_EXPIRED_BATCH`]: the N oldest keys, skipping locked rows.
    KeyByKey,
    /// [`sql::DELETE_EXPIRED_RANGE`]: everything below the (N+1)-th oldest `claimed_at`.
    Range,
}

/// Runs one batch statement (`$1 from, $2 cutoff, $3 limit`) and reads its one row.
async fn delete_step(
    tx: &deadpool_postgres::Transaction<'_>,
    shape: BatchShape,
    params: &[&(dyn ToSql + Sync)],
) -> Result<RangeBatch, StoreError> {
    let statement = match shape {
        BatchShape::KeyByKey => sql::DELETE_EXPIRED_BATCH,
        BatchShape::Range => sql::DELETE_EXPIRED_RANGE,
    };
    let prepared = tx.prepare_cached(statement).await?;
    let rows = tx.query(&prepared, params).await?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::UnexpectedRow(format!("{shape:?} delete returned nothing")))?;
    Ok(RangeBatch {
        deleted: u64::try_from(row.try_get::<_, i64>("deleted")?).unwrap_or(0),
        newest: row.try_get("newest")?,
        // Only the range statement can tell whether claims remain past its bound.
        more: shape == BatchShape::Range && row.try_get::<_, bool>("more")?,
    })
}
