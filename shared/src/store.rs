//! `ClaimStore`: the PostgreSQL claim store. Each operation is one named statement from
//! [`crate::sql`], bounded by the configured timeout; uniqueness comes from the table's
//! primary key, never from a read-then-write here.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::claim::{Claim, ClaimKey, ClaimOutcome, ClaimState, ExpiredCount, RunRef};
use crate::config::StoreConfig;
use crate::error::{StoreError, StoreTarget};
use crate::group_commit::{GroupCommit, GroupCommitConfig, GroupCommitStats};
use crate::migrate::{self, MigrationReport};
use crate::sql;

/// First half of the pruner's advisory lock key ("prun" in ASCII).
pub const PRUNER_LOCK_CLASS: i32 = 0x7072_756e;

/// tokio-postgres' own `keepalives_idle` when the connection string does not set one (2 h):
/// seeing it means "not set", so the flag applies.
const LIBRARY_DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// How many times `claim` starts over when the holder it lost to was gone by the time it
/// looked (pruned meanwhile), or a retried create found the claim changed since it was
/// read (confirmed or taken over). One is almost always enough.
const CLAIM_ATTEMPTS: usize = 3;

/// The claim store. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct ClaimStore {
    pool: Pool,
    timeout: Duration,
    /// For cancel requests on abandoned calls (see [`Checkout`]).
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// Batches the claims' insert step when on ([`ClaimStore::with_group_commit`]).
    group: Option<Arc<GroupCommit>>,
    /// Where the store is, for errors an operator reads (never the password).
    target: StoreTarget,
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
        let target = StoreTarget::of(&config.database);
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
        apply_tcp_health(&mut pg, &config.tcp_health);
        let manager = Manager::from_config(
            pg,
            config.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // LIFO: the connection used last goes out next, so steady load runs on as few
        // backends as it needs, each warm (its process scheduled, its caches and plan
        // cache hot), instead of rotating through every connection the pool once opened.
        // FIFO cost ~10% of durable claims/s at 32 connections (docs/BENCHMARKS.md).
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(Self {
            pool,
            timeout: config.timeout,
            tls: config.tls.clone(),
            group: None,
            target,
        })
    }

    /// Turns on group commit ([`crate::group_commit`]): concurrent claims' insert steps go
    /// to the store together, one statement and one transaction per batch.
    pub fn with_group_commit(mut self, config: GroupCommitConfig) -> Self {
        let executor = Self {
            group: None,
            ..self.clone()
        };
        self.group = Some(Arc::new(GroupCommit::new(config, executor)));
        self
    }

    /// The group commit settings, when it is on.
    pub fn group_commit(&self) -> Option<GroupCommitConfig> {
        self.group.as_ref().map(|g| g.config())
    }

    /// Batches and claims group commit has run so far, when it is on.
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.group.as_ref().map(|g| g.stats())
    }

    /// The per-call bound (the operator queries in `inspect.rs` use it too).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Bounds a wait that is not itself a call on a connection (a claim queued for group
    /// commit); the batch's own statement runs through [`Self::on_connection`].
    async fn bounded<T>(&self, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)))
    }

    /// Where the store is (host:port, database, user), as errors name it.
    pub fn target(&self) -> &StoreTarget {
        &self.target
    }

    /// A pooled connection; a connection that cannot be made says where and what to do.
    async fn checkout(&self) -> Result<Checkout, StoreError> {
        Checkout::get(&self.pool, &self.tls, self.timeout)
            .await
            .map_err(|e| e.explain_connect(&self.target))
    }

    /// Runs `work` on one pooled connection under `bound` (pool wait included). Every store
    /// call goes through here (or through [`Checkout`] directly), so every call path gets the
    /// connection hygiene: a connection whose call timed out, was cancelled, failed at the
    /// connection level or hit a read-only server is closed, never handed out again.
    pub(crate) async fn on_connection<T>(
        &self,
        bound: Duration,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let attempt = async {
            let mut checkout = self.checkout().await?;
            let result = match checkout.client() {
                Ok(client) => work(client).await,
                Err(e) => Err(e),
            };
            checkout.settle(&result);
            result
        };
        // On timeout the attempt future is dropped, and the checkout with it: discarded.
        tokio::time::timeout(bound, attempt)
            .await
            .unwrap_or(Err(StoreError::Timeout(bound)))
            .map_err(|e| e.explain_query(&self.target))
    }

    pub(crate) async fn query(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.on_connection(self.timeout, async |client| {
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
        let mut checkout = self.checkout().await?;
        // statement_timeout would cut a long wait for the lock; lift it for this session's
        // migration and restore it after.
        let result = async {
            let client = checkout.client()?;
            client.batch_execute("SET statement_timeout = 0").await?;
            let result = migrate::apply(client).await;
            client.batch_execute("RESET statement_timeout").await?;
            result
        }
        .await;
        checkout.settle(&result);
        result.map_err(|e| e.explain_query(&self.target))
    }

    /// One round trip to the store (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query(sql::PING, &[]).await.map(|_| ())
    }

    /// Claims `key` for `run`: inserts a pending claim, or records a retried create of the
    /// same pending run, or reports the holder. One round trip for a new claim and for a
    /// duplicate (a read: no row lock), two for a retried create.
    pub async fn claim(&self, key: &ClaimKey, run: &RunRef) -> Result<ClaimOutcome, StoreError> {
        for _ in 0..CLAIM_ATTEMPTS {
            let inserted = match &self.group {
                Some(group) => self.bounded(group.insert(key, run)).await?,
                None => self.insert_one(key, run).await?,
            };
            let found = match inserted {
                Some(found) => Some(found),
                // The holder committed after this statement's snapshot: read it afresh.
                None => self.lookup(key).await?.map(|claim| (false, claim)),
            };
            match found {
                Some((true, claim)) => return Ok(ClaimOutcome::Claimed(claim)),
                Some((false, claim)) if claim.state == ClaimState::Pending && claim.holder.same_run(run) => {
                    let rows = self
                        .query_keyed(sql::CLAIM_RETRY, key, &[&run.namespace, &run.name])
                        .await?;
                    match rows.first() {
                        Some(row) => return Ok(ClaimOutcome::SameRun(read_claim(row)?.1)),
                        // Confirmed, taken over or pruned since it was read: start over.
                        None => continue,
                    }
                }
                Some((false, claim)) => return Ok(ClaimOutcome::HeldBy(claim)),
                // Deleted (pruned) between the two statements: try the insert again.
                None => continue,
            }
        }
        Err(StoreError::UnexpectedRow(format!(
            "claim for {key} kept vanishing between insert and read"
        )))
    }

    /// The insert step of a claim alone ([`sql::CLAIM_INSERT`]): `(written, claim)`, or
    /// `None` when the holder is not visible to the statement's snapshot.
    pub(crate) async fn insert_one(
        &self,
        key: &ClaimKey,
        run: &RunRef,
    ) -> Result<Option<(bool, Claim)>, StoreError> {
        self.query_keyed(sql::CLAIM_INSERT, key, &[&run.namespace, &run.name, &run.uid])
            .await?
            .first()
            .map(read_claim)
            .transpose()
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

    /// Records `run`'s uid on the pending claim its namespace/name holds: a retried create
    /// whose first create never landed (the API server shows no such run), so this one makes
    /// the run. True when the claim was still pending for that name.
    pub async fn record_retry_uid(&self, key: &ClaimKey, run: &RunRef) -> Result<bool, StoreError> {
        let rows = self
            .query_keyed(sql::CLAIM_RETRY_UID, key, &[&run.namespace, &run.name, &run.uid])
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
        let days = i32::try_from(retention_days).map_err(|e| {
            StoreError::Query(format!("retention of {retention_days} days is out of range: {e}").into())
        })?;
        let rows = self.query(sql::PRUNE_CUTOFF, &[&days]).await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::UnexpectedRow("cutoff query returned nothing".into()))?;
        Ok(row.try_get("cutoff")?)
    }

    /// One prune batch (the only meaning of "batch" here: one short transaction of the
    /// pruner): deletes up to `limit` claims with `from <= claimed_at < cutoff`, oldest
    /// first, as one `claimed_at` range ([`sql::DELETE_EXPIRED_RANGE`]), bounded by
    /// `statement_timeout` and `lock_timeout`. When more than `limit` claims share the
    /// oldest `claimed_at` (a range cannot split them), the same transaction deletes `limit`
    /// of them key by key ([`sql::DELETE_EXPIRED_KEYS`]) instead.
    ///
    /// On a pooled connection, without the pruner lock: for tests and benchmarks. The pruner
    /// deletes through [`PrunerLock::prune_batch`], under its lock.
    pub async fn prune_batch(
        &self,
        from: DateTime<Utc>,
        cutoff: DateTime<Utc>,
        limit: i64,
        batch_timeout: Duration,
    ) -> Result<PrunedBatch, StoreError> {
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
    ) -> Result<PrunedBatch, StoreError> {
        let bound = batch_timeout + self.timeout;
        self.on_connection(bound, async |client| {
            batch_transaction(client, shape, from, cutoff, limit, batch_timeout).await
        })
        .await
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

    /// What PostgreSQL shows of the claim traffic ([`sql::PRUNE_CLAIM_TRAFFIC`]): the
    /// claims primary key's cumulative index scans, other sessions on the claims table since
    /// `since` (or now), and the database clock; sessions named `own_application_name` are
    /// the pruner's own and not counted.
    pub async fn claim_traffic(
        &self,
        since: Option<DateTime<Utc>>,
        own_application_name: Option<&str>,
    ) -> Result<ClaimTraffic, StoreError> {
        let rows = self
            .query(sql::PRUNE_CLAIM_TRAFFIC, &[&since, &own_application_name])
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::UnexpectedRow("traffic sample returned nothing".into()))?;
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
    /// restart or failover ends it). The pruner therefore deletes only through
    /// [`PrunerLock::prune_batch`], on that very session: a batch can run only
    /// while the session that holds the lock is alive, so a lost lock can never be
    /// followed by a delete from the pruner that lost it.
    pub async fn try_pruner_lock(&self) -> Result<Option<PrunerLock>, StoreError> {
        let bound = self.timeout;
        let attempt = async {
            let mut checkout = self.checkout().await?;
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
                    timeout: self.timeout,
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
/// killed. Batches run on this session, so they stop with it.
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

    /// [`ClaimStore::prune_batch`] on the lock's own session. A call that times out
    /// or fails at the connection level leaves the session unusable (the caller must take
    /// the lock afresh); the server ends whatever it was running at `statement_timeout`,
    /// still holding the lock until then, so no other pruner can start meanwhile.
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
        let work = batch_transaction(
            session,
            BatchShape::Range,
            from,
            cutoff,
            limit.max(1),
            batch_timeout,
        );
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

/// One pooled connection checked out for one store call: the connection hygiene.
///
/// deadpool's `RecyclingMethod::Fast` only asks `is_closed()` when a connection comes back,
/// so a session that is open but useless — its call timed out on a peer that went silent, it
/// talks to a server that became a read-only standby — would be handed out again and again.
/// This guard returns the connection to the pool only when the call's result says the
/// session is sound ([`settle`](Self::settle)); dropped unsettled (the call was cancelled or
/// timed out mid-statement) or settled with a connection-level error, it takes the
/// connection out of the pool (`Object::take`) and closes it.
///
/// A call abandoned mid-statement also gets a cancel request (best effort, in the
/// background): closing the socket does not stop the server's backend, and
/// `statement_timeout` does not cover a commit waiting for a synchronous standby, so without
/// it an abandoned claim would keep its backend (and the claim's row lock) until the standby
/// returns. Cancelled, the wait ends and the commit stays local (an orphan claim: pending,
/// for a run that was answered 503).
struct Checkout {
    object: Option<deadpool_postgres::Object>,
    cancel: Canceller,
}

/// What it takes to cancel the statement in flight on one session.
struct Canceller {
    token: tokio_postgres::CancelToken,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    bound: Duration,
}

impl Canceller {
    /// Sends the cancel request from a background task, bounded; nothing to wait for here.
    fn fire(self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(self.bound, self.token.cancel_query(self.tls)).await;
            });
        }
    }
}

impl Checkout {
    async fn get(
        pool: &Pool,
        tls: &tokio_postgres_rustls::MakeRustlsConnect,
        bound: Duration,
    ) -> Result<Self, StoreError> {
        let object = pool.get().await?;
        let cancel = Canceller {
            token: object.cancel_token(),
            tls: tls.clone(),
            bound,
        };
        Ok(Self {
            object: Some(object),
            cancel,
        })
    }

    /// The connection. Only `settle`, `detach` and `abandon` empty the guard, and the first
    /// two consume it, so an error here means a call went on after abandoning its connection.
    fn client(&mut self) -> Result<&mut deadpool_postgres::Object, StoreError> {
        self.object
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("the connection was already discarded".into()))
    }

    /// Back to the pool if `result` leaves the session trustworthy, else discarded (and a
    /// call abandoned mid-statement cancelled).
    fn settle<T>(mut self, result: &Result<T, StoreError>) {
        match result {
            // Abandoned mid-statement: cancel it too.
            Err(StoreError::Timeout { .. }) => self.abandon(),
            // Closed, or idle on a server it must not be used with: just close it.
            Err(e) if discards_connection(e) => {
                drop(self.object.take().map(deadpool_postgres::Object::take));
            }
            // Dropped as an Object: back to the pool.
            _ => drop(self.object.take()),
        }
    }

    /// Takes the connection out of the pool for good (the pruner lock's session).
    fn detach(mut self) -> Option<deadpool_postgres::ClientWrapper> {
        self.object.take().map(deadpool_postgres::Object::take)
    }

    /// Discards the connection now, cancelling whatever it was running.
    fn abandon(&mut self) {
        if let Some(object) = self.object.take() {
            let closing = deadpool_postgres::Object::take(object);
            if !closing.is_closed() {
                self.cancel.clone_token().fire();
            }
        }
    }
}

impl Canceller {
    fn clone_token(&self) -> Canceller {
        Canceller {
            token: self.token.clone(),
            tls: self.tls.clone(),
            bound: self.bound,
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        // Still holding it: the call was dropped mid-way (its bound ran out) or failed at the
        // connection level.
        self.abandon();
    }
}

/// SQLSTATEs after which a session is not reused: `25006` read_only_sql_transaction (the
/// server is a standby now: a switchover brought the old primary back at the same address),
/// class `08` connection exceptions, and class `57P` (server shutting down, crashed, not
/// accepting connections, database dropped, idle session ended).
fn discards_connection(error: &StoreError) -> bool {
    match error {
        // The call was abandoned mid-statement on a peer that did not answer in time.
        StoreError::Timeout { .. } => true,
        // Closed, or an I/O error under it.
        StoreError::Unavailable { .. } => true,
        // A client-side protocol or encoding failure: the session's state is unknown, and a
        // new connection costs one handshake.
        StoreError::Query { .. } => true,
        StoreError::Database { .. } => error
            .sqlstate()
            .is_some_and(|code| code == "25006" || code.starts_with("08") || code.starts_with("57P")),
        StoreError::UnexpectedRow { .. } | StoreError::Migration { .. } => false,
    }
}

/// Applies the dead-peer detection settings, except those the connection string set itself.
fn apply_tcp_health(pg: &mut tokio_postgres::Config, tcp: &crate::config::TcpHealth) {
    if pg.get_keepalives_idle() == LIBRARY_DEFAULT_KEEPALIVE_IDLE {
        pg.keepalives_idle(tcp.keepalive_idle);
    }
    if pg.get_keepalives_interval().is_none() {
        pg.keepalives_interval(tcp.keepalive_interval);
    }
    if pg.get_keepalives_retries().is_none() {
        pg.keepalives_retries(tcp.keepalive_retries);
    }
    if pg.get_tcp_user_timeout().is_none() && !tcp.user_timeout.is_zero() {
        pg.tcp_user_timeout(tcp.user_timeout);
    }
}

/// One prune batch on `client`: a transaction with `SET LOCAL` timeouts, the `shape`'s
/// delete, and for a range that could not split its oldest timestamp the key-by-key delete
/// instead. Not bounded here: the caller bounds it.
async fn batch_transaction(
    client: &mut deadpool_postgres::ClientWrapper,
    shape: BatchShape,
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
    let mut batch = delete_step(&tx, shape, &params).await?;
    if shape == BatchShape::Range && batch.deleted == 0 && batch.more {
        batch = PrunedBatch {
            more: true,
            ..delete_step(&tx, BatchShape::KeyByKey, &params).await?
        };
    }
    tx.commit().await?;
    Ok(batch)
}

pub(crate) fn read_claim(row: &Row) -> Result<(bool, Claim), StoreError> {
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

/// What [`ClaimStore::claim_traffic`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimTraffic {
    pub keyed_scans: i64,
    pub recent_sessions: i64,
    pub sampled_at: DateTime<Utc>,
}

/// What [`ClaimStore::prune_batch`] did.
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
enum BatchShape {
    /// [`sql::DELETE_EXPIRED_KEYS`]: the N oldest keys, skipping locked rows.
    KeyByKey,
    /// [`sql::PRUNE_RANGE_BOUND`] then [`sql::DELETE_EXPIRED_RANGE`]: everything below the
    /// (N+1)-th oldest `claimed_at`.
    Range,
}

/// Runs one batch's statements (`$1 from, $2 cutoff, $3 limit`) in `tx`.
async fn delete_step(
    tx: &deadpool_postgres::Transaction<'_>,
    shape: BatchShape,
    params: &[&(dyn ToSql + Sync); 3],
) -> Result<PrunedBatch, StoreError> {
    match shape {
        BatchShape::KeyByKey => {
            let prepared = tx.prepare_cached(sql::DELETE_EXPIRED_KEYS).await?;
            let rows = tx.query(&prepared, params).await?;
            let row = rows
                .first()
                .ok_or_else(|| StoreError::UnexpectedRow("key-by-key delete returned nothing".into()))?;
            Ok(PrunedBatch {
                deleted: u64::try_from(row.try_get::<_, i64>("deleted")?).unwrap_or(0),
                next_from: row.try_get("newest")?,
                // Key by key cannot tell whether claims remain: the caller decides.
                more: false,
            })
        }
        BatchShape::Range => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TcpHealth;

    fn server(code: &str) -> StoreError {
        StoreError::Database {
            code: code.into(),
            source: "ERROR: x".into(),
        }
    }

    #[test]
    fn connection_level_failures_and_read_only_servers_discard_the_connection() {
        assert!(discards_connection(&StoreError::Timeout(Duration::from_secs(1))));
        assert!(discards_connection(&StoreError::Unavailable(
            "connection closed".into()
        )));
        assert!(discards_connection(&server("25006")), "read_only_sql_transaction");
        assert!(discards_connection(&server("57P01")), "admin_shutdown");
        assert!(discards_connection(&server("08006")), "connection_failure");
    }

    #[test]
    fn ordinary_server_errors_keep_the_connection() {
        // A statement or lock timeout, a conflict, a constraint: the session is sound.
        for code in ["57014", "55P03", "40001", "23505", "42P01"] {
            assert!(!discards_connection(&server(code)), "{code}");
        }
        assert!(!discards_connection(&StoreError::UnexpectedRow("x".into())));
    }

    #[test]
    fn tcp_health_fills_what_the_connection_string_left_unset() -> Result<(), tokio_postgres::Error> {
        let tcp = TcpHealth::default();
        let mut pg: tokio_postgres::Config = "host=h dbname=d".parse()?;
        apply_tcp_health(&mut pg, &tcp);
        assert_eq!(pg.get_keepalives_idle(), tcp.keepalive_idle);
        assert_eq!(pg.get_keepalives_interval(), Some(tcp.keepalive_interval));
        assert_eq!(pg.get_keepalives_retries(), Some(tcp.keepalive_retries));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&tcp.user_timeout));

        // tokio-postgres reads `tcp_user_timeout` in seconds (libpq: milliseconds).
        let mut pg: tokio_postgres::Config =
            "host=h keepalives_idle=30 keepalives_interval=7 keepalives_retries=9 tcp_user_timeout=4"
                .parse()?;
        apply_tcp_health(&mut pg, &tcp);
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(pg.get_keepalives_interval(), Some(Duration::from_secs(7)));
        assert_eq!(pg.get_keepalives_retries(), Some(9));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(4)));
        Ok(())
    }
}
