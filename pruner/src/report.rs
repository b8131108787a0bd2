//! What the pruner tells the operator: one event per batch, one summary, and the few
//! events in between. `tracing` events, text or JSON per `--log-format`; field names are
//! stable (the benchmark and the tests read them).

use std::time::Duration;

use chrono::{DateTime, Utc};
use dedupe_store::error::Chain;
use dedupe_store::{ExpiredCount, StoreError};

/// One committed batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// 1-based number of the committed batch.
    pub batch: u64,
    pub deleted: u64,
    pub batch_size: u32,
    /// Wall time of the batch transaction (begin .. commit acknowledged).
    pub batch_elapsed: Duration,
    pub total_deleted: u64,
    /// Time since the loop started.
    pub elapsed: Duration,
    /// `full` (nobody claiming) or `gentle` (the configured pacing).
    pub pace: &'static str,
}

/// The run as a whole.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub deleted: u64,
    pub batches: u64,
    pub elapsed: Duration,
    /// Expired claims left when the run ended: `0` when the loop ran out of them, else
    /// counted after the last batch (`None` if that count failed).
    pub remaining: Option<u64>,
    /// `done`, `max-runtime`, `signal`, `lock-lost` or `failed`.
    pub stopped: &'static str,
    /// The longest batch transaction.
    pub longest_batch: Duration,
}

impl Summary {
    pub fn rows_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.deleted as f64 / secs
        } else {
            0.0
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000.0).round() / 1_000.0
}

/// The task, once the cutoff is known.
pub fn starting(cutoff: DateTime<Utc>, retention_days: u32, batch_size: u32, pause: Duration) {
    tracing::info!(
        cutoff = %cutoff.to_rfc3339(),
        retention_days,
        batch_size,
        batch_pause_ms = ms(pause),
        "prune starting: deleting claims older than the cutoff"
    );
}

pub fn progress(p: &Progress) {
    tracing::info!(
        batch = p.batch,
        deleted = p.deleted,
        batch_size = p.batch_size,
        batch_ms = ms(p.batch_elapsed),
        total_deleted = p.total_deleted,
        elapsed_s = secs(p.elapsed),
        pace = p.pace,
        "batch committed"
    );
}

pub fn summary(s: &Summary) {
    tracing::info!(
        deleted = s.deleted,
        batches = s.batches,
        seconds = secs(s.elapsed),
        rows_per_second = s.rows_per_second().round(),
        remaining_expired_estimate = s.remaining,
        longest_batch_ms = ms(s.longest_batch),
        stopped = s.stopped,
        "prune finished"
    );
}

pub fn batch_timed_out(batch_size: u32, elapsed: Duration, error: &StoreError) {
    tracing::warn!(
        batch_size,
        batch_ms = ms(elapsed),
        error = %Chain(error),
        "batch timed out and was rolled back; retrying"
    );
}

pub fn shrunk(from: u32, to: u32) {
    tracing::warn!(
        from,
        to,
        "batches keep timing out: shrinking the batch size tenfold"
    );
}

pub fn store_lost(retry_in: Duration, error: &StoreError) {
    tracing::warn!(
        retry_in_ms = ms(retry_in),
        error = %Chain(error),
        "claim store not reachable during the prune; retrying the batch"
    );
}

/// `--dry-run`'s whole output.
pub fn dry_run(cutoff: DateTime<Utc>, retention_days: u32, count: ExpiredCount) {
    let now = cutoff + chrono::Duration::days(i64::from(retention_days));
    let oldest_age_days = count
        .oldest
        .map(|t| ((now - t).num_seconds() as f64 / 86_400.0 * 100.0).round() / 100.0);
    tracing::info!(
        would_delete = count.expired,
        oldest = count.oldest.map(|t| t.to_rfc3339()),
        oldest_age_days,
        cutoff = %cutoff.to_rfc3339(),
        retention_days,
        "dry run: counted the claims a prune would delete; deleted nothing"
    );
}

pub fn lock_held() {
    tracing::info!("another prune holds the lock; nothing to do");
}

/// The session holding the lock was lost (restart, failover) and this pruner took the lock
/// again on a new session before anyone else did.
pub fn lock_retaken() {
    tracing::warn!(
        "the session holding the pruner lock was lost; took the lock again on a new session, carrying on"
    );
}

/// The session holding the lock was lost, and another session held it when this pruner
/// tried to take it back: stopping (exit 0).
pub fn lock_lost_to_another() {
    tracing::warn!(
        "the session holding the pruner lock was lost (PostgreSQL restart or failover) and another \
         pruner holds the lock now (or this pruner's lost session is still ending its last \
         statement); stopped without deleting anything more (exit 0): whoever holds it carries \
         on, else the next run"
    );
}

pub fn count_skipped(error: &StoreError) {
    tracing::warn!(
        error = %Chain(error),
        "counting the expired claims left did not finish in time; no remaining count"
    );
}

pub fn interrupted_before_start(signal: &str) {
    tracing::info!(
        signal,
        "stopped by a signal before pruning started; deleted nothing"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(deleted: u64, elapsed_ms: u64) -> Summary {
        Summary {
            deleted,
            batches: 1,
            elapsed: Duration::from_millis(elapsed_ms),
            remaining: None,
            stopped: "done",
            longest_batch: Duration::ZERO,
        }
    }

    #[test]
    fn rows_per_second_is_deleted_over_elapsed() {
        assert_eq!(summary(1_000, 500).rows_per_second(), 2_000.0);
        assert_eq!(summary(1_000, 0).rows_per_second(), 0.0);
    }

    #[test]
    fn durations_are_rounded_for_reading() {
        assert_eq!(ms(Duration::from_micros(12_345)), 12.3);
        assert_eq!(secs(Duration::from_micros(1_234_567)), 1.235);
    }
}
