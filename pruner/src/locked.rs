//! Batches that run only under the pruner lock, across lost sessions.
//!
//! The pruner lock is a session-level advisory lock: it ends with its session, and a
//! PostgreSQL restart or failover ends every session. A pruner that reconnected and went on
//! deleting through fresh pooled connections would delete without the lock while a second
//! pruner holds it (their batches interleaved). So every batch runs on the session
//! that holds the lock ([`PrunerLock::prune_batch`]): when that session is gone, no
//! batch of this pruner can run. The next batch first takes the lock again on a new session:
//! - taken: carry on (nobody else can have run meanwhile without the lock, and nobody can
//!   now);
//! - held by another session: stop, exit 0, saying so: the other pruner carries on (or this
//!   pruner's own old session is still ending its last statement; either way nothing runs
//!   twice);
//! - store unreachable: the error goes back to the batch loop, which retries with back-off
//!   and gives up (exit 1, `PruneError::LostStore`) when the store stays away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dedupe_store::PrunedBatch;
use dedupe_store::{ClaimStore, PrunerLock, StoreError};
use tokio::sync::Mutex;

use crate::config::PRUNER_APPLICATION_NAME;
use crate::pacing::{self, TrafficSample};
use crate::prune::BatchStore;
use crate::report;

/// The store as the batch loop sees it: deletes only on the lock's session. Batches delete by
/// `claimed_at` range (`sql::DELETE_EXPIRED_RANGE`): a walk of the `claimed_at` index with no
/// primary-key lookup per row, several times cheaper per row than key by key.
pub struct LockedStore<'a> {
    store: &'a ClaimStore,
    /// `None` after the session holding the lock was lost and before it is taken again.
    lock: Mutex<Option<PrunerLock>>,
    lost_to_another: AtomicBool,
}

impl<'a> LockedStore<'a> {
    /// Starts with the lock already taken by `lock`.
    pub fn new(store: &'a ClaimStore, lock: PrunerLock) -> Self {
        Self {
            store,
            lock: Mutex::new(Some(lock)),
            lost_to_another: AtomicBool::new(false),
        }
    }

    /// True when the lock was lost and another session held it when this pruner tried to
    /// take it back: the run stopped there.
    pub fn lost_to_another(&self) -> bool {
        self.lost_to_another.load(Ordering::SeqCst)
    }
}

impl BatchStore for LockedStore<'_> {
    /// Sampled on a pooled session, not the lock's: reading the statistics deletes nothing,
    /// and the pruner's own sessions are left out of the sample by their application_name.
    async fn claim_traffic(&self, since: Option<DateTime<Utc>>) -> Option<TrafficSample> {
        match self
            .store
            .claim_traffic(since, Some(PRUNER_APPLICATION_NAME))
            .await
        {
            Ok(t) => Some(TrafficSample {
                keyed_scans: t.keyed_scans,
                recent_sessions: t.recent_sessions,
                sampled_at: t.sampled_at,
            }),
            Err(e) => {
                pacing::sample_failed(&e);
                None
            }
        }
    }

    async fn delete_batch(
        &self,
        from: DateTime<Utc>,
        cutoff: DateTime<Utc>,
        limit: u32,
        timeout: Duration,
    ) -> Result<PrunedBatch, StoreError> {
        let mut held = self.lock.lock().await;
        if held.as_ref().is_none_or(PrunerLock::is_lost) {
            // Closing the old session (if still open) before asking again.
            *held = None;
            match self.store.try_pruner_lock().await? {
                Some(lock) => {
                    report::lock_retaken();
                    *held = Some(lock);
                }
                None => {
                    self.lost_to_another.store(true, Ordering::SeqCst);
                    // Classed as "other" by the loop, which ends the run; `app` reports it
                    // as the lock lost to another pruner (exit 0), not as a failure.
                    return Err(StoreError::Query(
                        "the pruner lock was lost with its session and another session holds it now".into(),
                    ));
                }
            }
        }
        match held.as_mut() {
            Some(lock) => lock.prune_batch(from, cutoff, i64::from(limit), timeout).await,
            None => Err(StoreError::Unavailable("no session holds the pruner lock".into())),
        }
    }
}
