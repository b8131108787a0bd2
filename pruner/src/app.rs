//! One run of the pruner, start to end: reach the store, migrate, take the lock, take the
//! cutoff, prune, report. Returns a typed failure for `main` to turn into exit code 1.

use dedupe_shared::{ClaimStore, MigrationMode};

use crate::config::Settings;
use crate::error::PruneError;
use crate::pacing::Pacer;
use crate::policy::Policy;
use crate::prune::{self, Plan};
use crate::report;
use crate::retry::{self, NotReached};
use crate::signal::Shutdown;

/// How a successful run ended (all exit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Pruned,
    DryRun,
    LockHeld,
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
    let Some(_lock) = store.try_pruner_lock().await.map_err(PruneError::Lock)? else {
        report::lock_held();
        return Ok(Ended::LockHeld);
    };
    // Once, from the database clock: the pod's clock never decides what is expired.
    let cutoff = store
        .prune_cutoff(settings.retention_days)
        .await
        .map_err(PruneError::Cutoff)?;
    let count = match store.count_expired(cutoff).await {
        Ok(count) => Some(count),
        Err(e) => {
            report::count_skipped(&e);
            None
        }
    };
    report::starting(
        cutoff,
        settings.retention_days,
        settings.policy.batch_size,
        settings.policy.pause,
        count,
    );
    let plan = Plan {
        cutoff,
        batch_timeout: settings.batch_timeout,
        expired_at_start: count.map(|c| c.expired),
    };
    let finished = prune::prune_paced(
        &store,
        &plan,
        Policy::new(settings.policy.clone()),
        Pacer::new(settings.pacing),
        shutdown,
        rand::random::<f64>,
    )
    .await;
    report::summary(&finished.summary);
    finished.result.map(|_| Ended::Pruned)
}
