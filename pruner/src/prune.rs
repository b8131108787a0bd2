//! The batch loop: drives the store one short transaction at a time, as the policy says.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dedupe_store::PrunedBatch;
use dedupe_store::StoreError;
use tokio::time::Instant;

use crate::error::{classify, ErrorClass, PruneError};
use crate::pacing::{Pacer, TrafficSample};
use crate::policy::{BatchPolicy, GiveUp, NextStep, Outcome, StopReason};
use crate::report::{self, Progress, Summary};
use dedupe_store::shutdown::Shutdown;

/// The one store operation the loop needs (a trait so the loop is tested without a database).
pub trait BatchStore {
    /// Deletes up to `limit` claims with `from <= claimed_at < cutoff`, oldest first, in one
    /// transaction bounded by `timeout`; says whether expired claims are left after them.
    fn delete_batch(
        &self,
        from: DateTime<Utc>,
        cutoff: DateTime<Utc>,
        limit: u32,
        timeout: Duration,
    ) -> impl Future<Output = Result<PrunedBatch, StoreError>>;

    /// What PostgreSQL shows of the claim traffic since `since`, for adaptive pacing
    /// (`pacing.rs`); `None` when it cannot be read, which means the configured pacing.
    fn claim_traffic(&self, since: Option<DateTime<Utc>>) -> impl Future<Output = Option<TrafficSample>> {
        let _ = since;
        async { None }
    }
}

// The store the binary uses is `locked::LockedStore`: batches on the pruner lock's own
// session. No impl for the pooled `ClaimStore`, so the pruner cannot delete without
// the lock.

/// What to prune.
#[derive(Debug, Clone)]
pub struct PruneTask {
    /// Claims with `claimed_at` strictly before this go (database clock − retention).
    pub cutoff: DateTime<Utc>,
    /// statement_timeout and lock_timeout of each batch.
    pub batch_timeout: Duration,
}

/// How the loop ended.
#[derive(Debug)]
pub struct Finished {
    pub summary: Summary,
    pub result: Result<StopReason, PruneError>,
}

/// The lower bound of the first batch: earlier than any `claimed_at` the database clock
/// can have written, and still inside PostgreSQL's timestamp range.
fn floor() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(-62_135_596_800, 0) // 0001-01-01T00:00:00Z
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Runs batches until a short batch, the runtime limit, a signal (the batch in flight is
/// always finished and committed first) or a failure. `jitter` yields uniform samples in
/// `[0, 1)` for the pauses.
/// Each batch's size and the pause after it are chosen by `pacer` from the claim traffic
/// sampled right before the batch (fixed pacing: the policy's).
pub async fn prune_paced<S: BatchStore>(
    store: &S,
    task: &PruneTask,
    mut policy: BatchPolicy,
    mut pacer: Pacer,
    shutdown: &mut Shutdown,
    mut jitter: impl FnMut() -> f64,
) -> Finished {
    let started = Instant::now();
    // Each batch starts where the previous one left off (`PrunedBatch::next_from`), so it
    // does not walk the dead index entries the earlier batches left behind.
    let mut from = floor();
    let mut deleted = 0u64;
    let mut batches = 0u64;
    let mut longest = Duration::ZERO;
    let result = loop {
        if let Some(stop) = policy.before_batch(started.elapsed(), shutdown.requested().is_some()) {
            break Ok(stop);
        }
        if pacer.adaptive() {
            pacer.observe(store.claim_traffic(pacer.since()).await);
        }
        let size = pacer.batch_size(policy.batch_size());
        let batch_started = Instant::now();
        // Never raced against the signal: a batch in flight runs to its commit (or its
        // timeout), so nothing is left half-done.
        let result = store
            .delete_batch(from, task.cutoff, size, task.batch_timeout)
            .await;
        let took = batch_started.elapsed();
        let (outcome, error) = match result {
            Ok(batch) => {
                batches += 1;
                deleted += batch.deleted;
                longest = longest.max(took);
                if let Some(next) = batch.next_from {
                    from = next;
                }
                report::progress(&Progress {
                    batch: batches,
                    deleted: batch.deleted,
                    batch_size: size,
                    batch_elapsed: took,
                    total_deleted: deleted,
                    elapsed: started.elapsed(),
                    pace: pacer.pace().as_str(),
                });
                (
                    Outcome::Deleted {
                        deleted: batch.deleted,
                        exhausted: !batch.more,
                    },
                    None,
                )
            }
            Err(e) => match classify(&e) {
                ErrorClass::TimedOut => {
                    report::batch_timed_out(size, took, &e);
                    (Outcome::TimedOut, Some(e))
                }
                ErrorClass::Unavailable => (Outcome::Unavailable, Some(e)),
                ErrorClass::Other => {
                    break Err(PruneError::Batch {
                        batch: batches + 1,
                        error: e,
                    })
                }
            },
        };
        let pause = match policy.after_batch(outcome, started.elapsed(), jitter()) {
            NextStep::Continue { pause } => {
                if let (Outcome::Unavailable, Some(e)) = (outcome, &error) {
                    report::store_lost(pause, e);
                }
                // Only a committed batch's pause is paced; back-offs stay as they are.
                match outcome {
                    Outcome::Deleted { .. } => pacer.pause(pause),
                    _ => pause,
                }
            }
            NextStep::Shrink { from, to, pause } => {
                report::shrunk(from, to);
                pause
            }
            NextStep::Stop(stop) => break Ok(stop),
            NextStep::GiveUp(give_up) => {
                let last = error.unwrap_or_else(|| StoreError::Query("no error recorded".into()));
                break Err(match give_up {
                    GiveUp::Timeouts { batch_size, in_a_row } => PruneError::Timeouts {
                        batch_size,
                        in_a_row,
                        last,
                    },
                    GiveUp::Unavailable { attempts } => PruneError::LostStore {
                        batch: batches + 1,
                        attempts,
                        last,
                    },
                });
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.wait() => {}
            }
        }
    };
    Finished {
        summary: Summary {
            deleted,
            batches,
            elapsed: started.elapsed(),
            // Ran out of expired claims: none left. Otherwise the caller counts them.
            remaining: matches!(result, Ok(StopReason::Done)).then_some(0),
            stopped: match &result {
                Ok(stop) => stop.as_str(),
                Err(_) => "failed",
            },
            longest_batch: longest,
        },
        result,
    }
}

#[cfg(test)]
mod tests;
