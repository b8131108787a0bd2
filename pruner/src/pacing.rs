//! Adaptive pacing: full speed while nobody is claiming, the configured pacing while claims
//! flow. The signal is what PostgreSQL itself shows, sampled between batches (no new
//! component):
//!
//! - *recent sessions*: other sessions (not this pruner's) whose current or last statement
//!   touched the claims table and that are running one now or finished one since the
//!   previous sample (`pg_stat_activity.state_change`). This is live backend state, with no
//!   delay, so a claim that ran during a batch is seen right after that batch.
//! - *keyed scans*: the claims primary key's `idx_scan` counter (`pg_stat_user_indexes`);
//!   every claim, duplicate, confirm and take-over looks its key up there, the pruner's own
//!   range deletes use the `claimed_at` index instead. This covers sessions whose statements
//!   this pruner's role may not see in `pg_stat_activity`. Backends flush these counters at
//!   transaction end but at most once a second (PostgreSQL 15), so the counter can trail by
//!   about a second: it moving means claims, it standing still proves nothing on its own,
//!   which is why the live signal above comes first.
//!
//! While either shows claims, batches keep the configured size and pause. While neither does,
//! a batch is [`PacingConfig::quiet_batch_factor`] times larger and follows the previous one
//! without a pause. A failed sample counts as traffic (the fixed pacing is the safe side).

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::ValueEnum;

/// How much larger a batch is while nobody claims: per batch the range bound's walk and the
/// round trips are paid once, so larger batches bring a quiet prune close to one `DELETE`'s
/// speed, and this is the smallest factor that did on the pruner benchmark
/// (docs/BENCHMARKS.md, "Pruner"). Such a batch is a longer transaction, which is harmless
/// only while nobody claims: as soon as claims show, batches return to --batch-size.
pub const DEFAULT_QUIET_BATCH_FACTOR: u32 = 20;

/// How the pause between batches is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum PacingMode {
    /// Full speed while no claims are seen, the configured batch size and pause otherwise.
    #[default]
    Adaptive,
    /// Always the configured batch size and pause.
    Fixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacingConfig {
    pub mode: PacingMode,
    /// Batch size multiplier while nobody claims (at least 1).
    pub quiet_batch_factor: u32,
}

impl Default for PacingConfig {
    fn default() -> Self {
        Self {
            mode: PacingMode::Adaptive,
            quiet_batch_factor: DEFAULT_QUIET_BATCH_FACTOR,
        }
    }
}

/// One reading of the claim traffic PostgreSQL shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficSample {
    /// The claims primary key's cumulative `idx_scan`.
    pub keyed_scans: i64,
    /// Other sessions on the claims table active now or since the previous sample.
    pub recent_sessions: i64,
    /// The database clock at the sample (the next sample looks for activity since this).
    pub sampled_at: DateTime<Utc>,
}

/// The pace of the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Claims are flowing (or we cannot tell): the configured size and pause.
    Gentle,
    /// Nobody claims: a larger batch, no pause after it.
    Full,
}

impl Pace {
    pub fn as_str(self) -> &'static str {
        match self {
            Pace::Gentle => "gentle",
            Pace::Full => "full",
        }
    }
}

/// Decides each batch's pace from the samples, free of I/O.
#[derive(Debug, Clone)]
pub struct Pacer {
    config: PacingConfig,
    last: Option<TrafficSample>,
    pace: Pace,
}

impl Pacer {
    pub fn new(config: PacingConfig) -> Self {
        Self {
            config: PacingConfig {
                quiet_batch_factor: config.quiet_batch_factor.max(1),
                ..config
            },
            last: None,
            pace: Pace::Gentle,
        }
    }

    /// Whether samples are needed at all.
    pub fn adaptive(&self) -> bool {
        self.config.mode == PacingMode::Adaptive
    }

    /// Where the next sample should look for activity from: the previous sample's time.
    pub fn since(&self) -> Option<DateTime<Utc>> {
        self.last.map(|s| s.sampled_at)
    }

    /// Takes a sample (`None`: it failed) and decides the pace of the next batch.
    pub fn observe(&mut self, sample: Option<TrafficSample>) -> Pace {
        self.pace = match (self.config.mode, sample) {
            (PacingMode::Fixed, _) | (_, None) => Pace::Gentle,
            (PacingMode::Adaptive, Some(now)) => {
                let counter_moved = self
                    .last
                    .is_some_and(|before| now.keyed_scans != before.keyed_scans);
                if now.recent_sessions > 0 || counter_moved {
                    Pace::Gentle
                } else {
                    Pace::Full
                }
            }
        };
        // A failed sample keeps the previous one as the reference, so activity since then is
        // still looked for next time.
        if sample.is_some() {
            self.last = sample;
        }
        self.pace
    }

    /// The current pace (the last decision).
    pub fn pace(&self) -> Pace {
        self.pace
    }

    /// The next batch's size given the policy's (which may have shrunk after timeouts).
    pub fn batch_size(&self, policy_size: u32) -> u32 {
        match self.pace {
            Pace::Gentle => policy_size,
            Pace::Full => policy_size.saturating_mul(self.config.quiet_batch_factor),
        }
    }

    /// The pause after a committed batch given the policy's.
    pub fn pause(&self, policy_pause: Duration) -> Duration {
        match self.pace {
            Pace::Gentle => policy_pause,
            Pace::Full => Duration::ZERO,
        }
    }
}

/// Said once per failed sample; the batch that follows keeps the configured pacing.
pub fn sample_failed(error: &dyn std::fmt::Display) {
    tracing::warn!(error = %error, "could not read the claim traffic; keeping the configured pacing for the next batch");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(keyed_scans: i64, recent_sessions: i64, secs: i64) -> Option<TrafficSample> {
        Some(TrafficSample {
            keyed_scans,
            recent_sessions,
            sampled_at: DateTime::<Utc>::from_timestamp(1_700_000_000 + secs, 0).unwrap_or_default(),
        })
    }

    fn adaptive() -> Pacer {
        Pacer::new(PacingConfig {
            mode: PacingMode::Adaptive,
            quiet_batch_factor: 5,
        })
    }

    #[test]
    fn nobody_claiming_means_full_speed_with_larger_batches_and_no_pause() {
        let mut p = adaptive();
        assert_eq!(p.observe(sample(100, 0, 0)), Pace::Full);
        assert_eq!(p.batch_size(10_000), 50_000);
        assert_eq!(p.pause(Duration::from_millis(100)), Duration::ZERO);
        assert_eq!(p.observe(sample(100, 0, 1)), Pace::Full);
    }

    #[test]
    fn a_live_session_or_a_moving_counter_means_the_configured_pacing() {
        let mut p = adaptive();
        assert_eq!(p.observe(sample(100, 1, 0)), Pace::Gentle);
        assert_eq!(p.batch_size(10_000), 10_000);
        assert_eq!(p.pause(Duration::from_millis(100)), Duration::from_millis(100));
        // The live signal is gone but the (delayed) counter moved: still claims.
        assert_eq!(p.observe(sample(140, 0, 1)), Pace::Gentle);
        assert_eq!(p.observe(sample(140, 0, 2)), Pace::Full);
        assert_eq!(p.observe(sample(141, 0, 3)), Pace::Gentle);
    }

    #[test]
    fn activity_is_looked_for_since_the_last_good_sample() {
        let mut p = adaptive();
        assert_eq!(p.since(), None);
        p.observe(sample(1, 0, 5));
        let first = p.since();
        assert!(first.is_some());
        assert_eq!(p.observe(None), Pace::Gentle, "a failed sample is the safe side");
        assert_eq!(p.since(), first);
        assert_eq!(
            p.observe(sample(2, 0, 7)),
            Pace::Gentle,
            "the counter moved meanwhile"
        );
    }

    #[test]
    fn fixed_pacing_ignores_the_samples() {
        let mut p = Pacer::new(PacingConfig {
            mode: PacingMode::Fixed,
            quiet_batch_factor: 5,
        });
        assert!(!p.adaptive());
        assert_eq!(p.observe(sample(1, 0, 0)), Pace::Gentle);
        assert_eq!(p.batch_size(10_000), 10_000);
    }

    #[test]
    fn a_shrunk_batch_stays_shrunk_in_proportion_and_never_overflows() {
        let mut p = adaptive();
        p.observe(sample(0, 0, 0));
        assert_eq!(p.batch_size(1_000), 5_000);
        assert_eq!(p.batch_size(u32::MAX), u32::MAX);
    }
}
