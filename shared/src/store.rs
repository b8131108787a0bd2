//! `ClaimStore`: the PostgreSQL claim store. Each operation is one named statement from
//! [`crate::sql`], bounded by the configured timeout, run through the connection layer
//! ([`crate::db`]); uniqueness comes from the table's primary key, never from a
//! read-then-write here.
//!
//! The operations are grouped by who calls them: the webhook's claim path
//! ([`claims`]: claim, lookup, take-over, confirm), the pruner's ([`prune`]: cutoff, counts,
//! the advisory-lock session and its prune batches), the reconciler's writes
//! (`reconcile_store.rs`) and the operators' reads (`inspect.rs`).

pub mod claims;
pub mod prune;

use std::sync::Arc;
use std::time::Duration;

use crate::config::StoreConfig;
use crate::db::Db;
use crate::error::{StoreError, StoreTarget};
use crate::group_commit::{GroupCommit, GroupCommitConfig, GroupCommitCounters, GroupCommitStats};
use crate::migrate::{self, MigrationReport};
use crate::sql;

pub use prune::{ClaimTraffic, PrunedBatch, PrunerLock, PRUNER_LOCK_CLASS};

/// The claim store. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct ClaimStore {
    db: Db,
    /// Batches the claims' insert step when on ([`ClaimStore::with_group_commit`]).
    group: Option<Arc<GroupCommit>>,
}

impl std::fmt::Debug for ClaimStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimStore")
            .field("timeout", &self.db.timeout())
            .finish_non_exhaustive()
    }
}

impl ClaimStore {
    /// Builds the bounded pool. Connections are opened on first use, so this does not fail
    /// when the store is down; the first call does, with [`StoreError`].
    pub fn new(config: &StoreConfig) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::new(config)?,
            group: None,
        })
    }

    /// Turns on group commit ([`crate::group_commit`]): concurrent claims' insert steps go
    /// to the store together, one statement and one transaction per claim batch.
    pub fn with_group_commit(mut self, config: GroupCommitConfig) -> Self {
        self.group = Some(Arc::new(GroupCommit::new(config, self.db.clone())));
        self
    }

    /// The group commit settings, when it is on.
    pub fn group_commit(&self) -> Option<GroupCommitConfig> {
        self.group.as_ref().map(|g| g.config())
    }

    /// Claim batches and claims group commit has run so far, when it is on.
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.group.as_ref().map(|g| g.counters().stats())
    }

    /// Group commit's counters, when it is on, for a reader (the metrics) that must not keep
    /// the store, and with it the group commit workers, alive.
    pub fn group_commit_counters(&self) -> Option<GroupCommitCounters> {
        self.group.as_ref().map(|g| g.counters())
    }

    /// The per-call bound.
    pub(crate) fn timeout(&self) -> Duration {
        self.db.timeout()
    }

    /// The connection layer the operations run on.
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// Where the store is (host:port, database, user), as errors name it.
    pub fn target(&self) -> &StoreTarget {
        self.db.target()
    }

    /// Applies pending migrations under the migration advisory lock. The migration
    /// transaction may wait for another replica's, so it is not bound by the store timeout.
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let mut checkout = self.db.checkout().await?;
        // statement_timeout would cut a long wait for the lock; lift it for this session's
        // migration and restore it after.
        let result = async {
            let client = checkout.client()?;
            client.batch_execute(sql::STATEMENT_TIMEOUT_OFF).await?;
            let result = migrate::apply(client).await;
            client.batch_execute(sql::STATEMENT_TIMEOUT_RESET).await?;
            result
        }
        .await;
        checkout.settle(&result);
        result.map_err(|e| e.explain_query(self.db.target()))
    }

    /// One round trip to the store (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.query(sql::PING, &[]).await.map(|_| ())
    }
}
