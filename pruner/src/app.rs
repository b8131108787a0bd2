//! One run of the pruner, start to end: reach the store, migrate, take the lock, take the
//! cutoff, prune, report. Returns a typed failure for `main` to turn into exit code 1.

use dedupe_store::shutdown::Shutdown;
use dedupe_store::{ClaimStore, MigrationMode};

use crate::config::Settings;
use crate::error::PruneError;
use crate::locked::LockedStore;
use crate::pacing::Pacer;
use crate::policy::BatchPolicy;
use crate::prune::{self, PruneTask};
use crate::report;
use crate::retry::{self, NotReached};

/// How a successful run ended (all exit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Pruned,
    DryRun,
    LockHeld,
    /// The lock's session was lost mid-run and another pruner took the lock.
    LockLost,
    Interrupted,
}

pub async fn run(settings: &Settings, shutdown: &mut Shutdown) -> Result<Ended, PruneError> {
    let store = ClaimStore::new(&settings.store).map_err(PruneError::Connect)?;
    match retry::until_reachable(&settings.connect, shutdown, || store.ping()).await {
        Ok(()) => {}
        Err(NotReached::Interrupted) => {
            report::interrupted_before_start(shutdown.requested().unwrap_or("signal"));
            return Ok(Ended::Interrupted);
        }
        Err(NotReached::Exhausted {
            attempts,
            elapsed,
            last,
        }) => {
            return Err(PruneError::Unreachable {
                attempts,
                elapsed,
                last,
            })
        }
        Err(NotReached::Fatal(e)) => return Err(PruneError::Connect(e)),
    }
    if settings.migrations == MigrationMode::Apply {
        store.migrate().await.map_err(PruneError::Migrate)?;
    }

    if settings.dry_run {
        let cutoff = store
            .prune_cutoff(settings.retention_days)
            .await
            .map_err(PruneError::Cutoff)?;
        let count = store.count_expired(cutoff).await.map_err(PruneError::Count)?;
        report::dry_run(cutoff, settings.retention_days, count);
        return Ok(Ended::DryRun);
    }

    // Held until this function returns; its session closing releases it even on a crash.
    // Every batch runs on this session (`locked`), so none can run without the lock.
    let Some(lock) = store.try_pruner_lock().await.map_err(PruneError::Lock)? else {
        report::lock_held();
        return Ok(Ended::LockHeld);
    };
    // Once, from the database clock: the pod's clock never decides what is expired.
    let cutoff = store
        .prune_cutoff(settings.retention_days)
        .await
        .map_err(PruneError::Cutoff)?;
    // No count of the expired claims first: it is an index scan over every expired claim, a
    // large share of a quiet prune's time, for a number nobody acts on. What is left is
    // counted at the end instead, and only when the run stopped before it ran out of them.
    report::starting(
        cutoff,
        settings.retention_days,
        settings.policy.batch_size,
        settings.policy.pause,
    );
    let task = PruneTask {
        cutoff,
        batch_timeout: settings.batch_timeout,
    };
    let locked = LockedStore::new(&store, lock);
    let mut finished = prune::prune_paced(
        &locked,
        &task,
        BatchPolicy::new(settings.policy.clone()),
        Pacer::new(settings.pacing),
        shutdown,
        rand::random::<f64>,
    )
    .await;
    if locked.lost_to_another() {
        finished.summary.stopped = "lock-lost";
        report::summary(&finished.summary);
        report::lock_lost_to_another();
        return Ok(Ended::LockLost);
    }
    if finished.summary.remaining.is_none() {
        finished.summary.remaining = match store.count_expired(cutoff).await {
            Ok(count) => Some(count.expired),
            Err(e) => {
                report::count_skipped(&e);
                None
            }
        };
    }
    report::summary(&finished.summary);
    finished.result.map(|_| Ended::Pruned)
}
