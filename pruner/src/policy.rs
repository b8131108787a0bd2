//! The batch loop's policy, free of I/O: when to stop, when to shrink the batch, how long
//! to pause. The driver (`prune.rs`) feeds it each batch's outcome and does what it says.

use std::time::Duration;

use crate::retry::RetryConfig;

/// The pause is spread over `pause × [1 − JITTER, 1 + JITTER)`, so pruners of many
/// clusters sharing one database server do not beat in step.
pub const JITTER: f64 = 0.2;
/// Timeouts in a row that make the batch shrink (river's JobCleaner does the same).
pub const SHRINK_AFTER_TIMEOUTS: u32 = 3;
/// How much a shrink divides the batch size by (river: 10,000 → 1,000).
pub const SHRINK_FACTOR: u32 = 10;
/// The batch never shrinks below this; timeouts at this size are a failure.
pub const MIN_BATCH_SIZE: u32 = 1;

/// The knobs of the loop.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPolicyConfig {
    pub batch_size: u32,
    pub pause: Duration,
    pub max_runtime: Duration,
    /// Back-off and attempt budget when the store becomes unreachable mid-run.
    pub retry: RetryConfig,
}

impl BatchPolicyConfig {
    pub fn new(batch_size: u32, pause: Duration, max_runtime: Duration, retry: RetryConfig) -> Self {
        Self {
            batch_size: batch_size.max(MIN_BATCH_SIZE),
            pause,
            max_runtime,
            retry,
        }
    }
}

/// What one batch did, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed, deleting `deleted` claims; `exhausted` when the batch found nothing
    /// expired left beyond what it deleted.
    Deleted { deleted: u64, exhausted: bool },
    /// Cancelled by its statement or lock timeout (nothing deleted, nothing half-done).
    TimedOut,
    /// The store could not be reached (the connection dropped or could not be made).
    Unavailable,
}

/// Why the loop ended without a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A batch found nothing expired left beyond what it deleted, or deleted nothing.
    Done,
    /// The maximum runtime was reached; the next run carries on.
    MaxRuntime,
    /// SIGTERM or SIGINT.
    Signal,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Done => "done",
            StopReason::MaxRuntime => "max-runtime",
            StopReason::Signal => "signal",
        }
    }
}

/// Why the loop gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// Batches kept timing out even at the smallest size.
    Timeouts { batch_size: u32, in_a_row: u32 },
    /// The store stayed unreachable for the whole retry budget.
    Unavailable { attempts: u32 },
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NextStep {
    /// Pause, then run the next batch (of [`BatchPolicy::batch_size`]).
    Continue {
        pause: Duration,
    },
    /// The batch size was cut after repeated timeouts; pause, then go on with `to`.
    Shrink {
        from: u32,
        to: u32,
        pause: Duration,
    },
    Stop(StopReason),
    GiveUp(GiveUp),
}

/// The loop's state.
#[derive(Debug, Clone)]
pub struct BatchPolicy {
    config: BatchPolicyConfig,
    batch_size: u32,
    timeouts_in_a_row: u32,
    unavailable_in_a_row: u32,
}

impl BatchPolicy {
    pub fn new(config: BatchPolicyConfig) -> Self {
        Self {
            batch_size: config.batch_size,
            config,
            timeouts_in_a_row: 0,
            unavailable_in_a_row: 0,
        }
    }

    /// The size of the next batch.
    pub fn batch_size(&self) -> u32 {
        self.batch_size
    }

    /// Checked before each batch: a signal or the runtime limit stops the loop.
    pub fn before_batch(&self, elapsed: Duration, signalled: bool) -> Option<StopReason> {
        if signalled {
            Some(StopReason::Signal)
        } else if elapsed >= self.config.max_runtime {
            Some(StopReason::MaxRuntime)
        } else {
            None
        }
    }

    /// Decides after a batch. `elapsed` is the run's time so far; `jitter` a uniform sample
    /// in `[0, 1)` (the caller's randomness, so this stays deterministic under test).
    pub fn after_batch(&mut self, outcome: Outcome, elapsed: Duration, jitter: f64) -> NextStep {
        let decision = match outcome {
            Outcome::Deleted { deleted, exhausted } => {
                self.timeouts_in_a_row = 0;
                self.unavailable_in_a_row = 0;
                // Nothing deleted is also the end: no progress is possible this run (say
                // every remaining row was held locked), and the next run carries on.
                if exhausted || deleted == 0 {
                    return NextStep::Stop(StopReason::Done);
                }
                NextStep::Continue {
                    pause: self.jittered_pause(jitter),
                }
            }
            Outcome::TimedOut => {
                self.unavailable_in_a_row = 0;
                self.timeouts_in_a_row += 1;
                if self.timeouts_in_a_row < SHRINK_AFTER_TIMEOUTS {
                    NextStep::Continue {
                        pause: self.jittered_pause(jitter),
                    }
                } else if self.batch_size > MIN_BATCH_SIZE {
                    let from = self.batch_size;
                    self.batch_size = (from / SHRINK_FACTOR).max(MIN_BATCH_SIZE);
                    self.timeouts_in_a_row = 0;
                    NextStep::Shrink {
                        from,
                        to: self.batch_size,
                        pause: self.jittered_pause(jitter),
                    }
                } else {
                    return NextStep::GiveUp(GiveUp::Timeouts {
                        batch_size: self.batch_size,
                        in_a_row: self.timeouts_in_a_row,
                    });
                }
            }
            Outcome::Unavailable => {
                self.unavailable_in_a_row += 1;
                if self.unavailable_in_a_row >= self.config.retry.attempts {
                    return NextStep::GiveUp(GiveUp::Unavailable {
                        attempts: self.unavailable_in_a_row,
                    });
                }
                NextStep::Continue {
                    pause: self.config.retry.delay_after(self.unavailable_in_a_row),
                }
            }
        };
        // Sleeping past the runtime limit only to stop afterwards helps nobody.
        let pause = match decision {
            NextStep::Continue { pause } | NextStep::Shrink { pause, .. } => pause,
            _ => Duration::ZERO,
        };
        if elapsed.saturating_add(pause) >= self.config.max_runtime {
            return NextStep::Stop(StopReason::MaxRuntime);
        }
        decision
    }

    fn jittered_pause(&self, jitter: f64) -> Duration {
        jittered(self.config.pause, jitter)
    }
}

/// `pause × (1 − JITTER + 2·JITTER·sample)`, with `sample` clamped to `[0, 1]`.
pub fn jittered(pause: Duration, sample: f64) -> Duration {
    let sample = if sample.is_finite() {
        sample.clamp(0.0, 1.0)
    } else {
        0.5
    };
    pause.mul_f64(1.0 - JITTER + 2.0 * JITTER * sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy(batch_size: u32, pause_ms: u64, max_runtime_s: u64) -> BatchPolicy {
        BatchPolicy::new(BatchPolicyConfig::new(
            batch_size,
            MS * pause_ms as u32,
            Duration::from_secs(max_runtime_s),
            RetryConfig {
                attempts: 3,
                base_delay: MS * 500,
                max_delay: Duration::from_secs(8),
            },
        ))
    }

    fn more(deleted: u64) -> Outcome {
        Outcome::Deleted {
            deleted,
            exhausted: false,
        }
    }

    fn last(deleted: u64) -> Outcome {
        Outcome::Deleted {
            deleted,
            exhausted: true,
        }
    }

    #[test]
    fn a_batch_with_more_behind_it_continues_after_the_pause_and_the_last_one_stops() {
        let mut p = policy(100, 50, 60);
        assert_eq!(
            p.after_batch(more(100), Duration::ZERO, 0.5),
            NextStep::Continue { pause: MS * 50 }
        );
        // Short but not exhausted (ties at a range bound): go on.
        assert_eq!(
            p.after_batch(more(97), Duration::ZERO, 0.5),
            NextStep::Continue { pause: MS * 50 }
        );
        assert_eq!(
            p.after_batch(last(100), Duration::ZERO, 0.5),
            NextStep::Stop(StopReason::Done)
        );
        assert_eq!(
            p.after_batch(last(3), Duration::ZERO, 0.5),
            NextStep::Stop(StopReason::Done)
        );
    }

    #[test]
    fn a_batch_that_deleted_nothing_stops_even_if_rows_remain() {
        let mut p = policy(100, 0, 60);
        assert_eq!(
            p.after_batch(more(0), Duration::ZERO, 0.5),
            NextStep::Stop(StopReason::Done)
        );
    }

    #[test]
    fn signal_and_runtime_stop_before_the_next_batch() {
        let p = policy(100, 50, 60);
        assert_eq!(p.before_batch(Duration::ZERO, false), None);
        assert_eq!(p.before_batch(Duration::ZERO, true), Some(StopReason::Signal));
        assert_eq!(
            p.before_batch(Duration::from_secs(60), false),
            Some(StopReason::MaxRuntime)
        );
        assert_eq!(p.before_batch(Duration::from_secs(59), false), None);
    }

    #[test]
    fn a_pause_that_would_cross_the_runtime_limit_stops_now() {
        let mut p = policy(100, 2_000, 10);
        assert_eq!(
            p.after_batch(more(100), Duration::from_secs(9), 0.5),
            NextStep::Stop(StopReason::MaxRuntime)
        );
        assert!(matches!(
            p.after_batch(more(100), Duration::from_secs(7), 0.5),
            NextStep::Continue { .. }
        ));
    }

    #[test]
    fn three_timeouts_in_a_row_shrink_the_batch_tenfold_and_say_so() {
        let mut p = policy(10_000, 0, 600);
        let t = Duration::ZERO;
        assert!(matches!(
            p.after_batch(Outcome::TimedOut, t, 0.0),
            NextStep::Continue { .. }
        ));
        assert!(matches!(
            p.after_batch(Outcome::TimedOut, t, 0.0),
            NextStep::Continue { .. }
        ));
        assert_eq!(p.batch_size(), 10_000, "two timeouts are not enough");
        assert_eq!(
            p.after_batch(Outcome::TimedOut, t, 0.0),
            NextStep::Shrink {
                from: 10_000,
                to: 1_000,
                pause: Duration::ZERO
            }
        );
        assert_eq!(p.batch_size(), 1_000);
        assert_eq!(
            p.after_batch(more(1_000), t, 0.0),
            NextStep::Continue {
                pause: Duration::ZERO
            }
        );
    }

    #[test]
    fn a_success_resets_the_timeout_count() {
        let mut p = policy(100, 0, 600);
        let t = Duration::ZERO;
        p.after_batch(Outcome::TimedOut, t, 0.0);
        p.after_batch(Outcome::TimedOut, t, 0.0);
        p.after_batch(more(100), t, 0.0);
        p.after_batch(Outcome::TimedOut, t, 0.0);
        p.after_batch(Outcome::TimedOut, t, 0.0);
        assert_eq!(p.batch_size(), 100, "timeouts were not in a row");
    }

    #[test]
    fn timeouts_at_the_smallest_size_give_up() {
        let mut p = policy(10, 0, 600);
        let t = Duration::ZERO;
        let mut sizes = vec![p.batch_size()];
        let give_up = loop {
            match p.after_batch(Outcome::TimedOut, t, 0.0) {
                NextStep::Shrink { to, .. } => sizes.push(to),
                NextStep::Continue { .. } => {}
                NextStep::GiveUp(g) => break g,
                NextStep::Stop(s) => panic!("unexpected stop {s:?}"),
            }
        };
        assert_eq!(sizes, vec![10, 1]);
        assert_eq!(
            give_up,
            GiveUp::Timeouts {
                batch_size: 1,
                in_a_row: 3
            }
        );
    }

    #[test]
    fn an_unreachable_store_is_retried_with_backoff_then_given_up() {
        let mut p = policy(100, 0, 600);
        let t = Duration::ZERO;
        assert_eq!(
            p.after_batch(Outcome::Unavailable, t, 0.0),
            NextStep::Continue { pause: MS * 500 }
        );
        assert_eq!(
            p.after_batch(Outcome::Unavailable, t, 0.0),
            NextStep::Continue { pause: MS * 1000 }
        );
        assert_eq!(
            p.after_batch(Outcome::Unavailable, t, 0.0),
            NextStep::GiveUp(GiveUp::Unavailable { attempts: 3 })
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_is_centred() {
        let base = Duration::from_millis(1_000);
        assert_eq!(jittered(base, 0.0), Duration::from_millis(800));
        assert_eq!(jittered(base, 0.5), Duration::from_millis(1_000));
        assert_eq!(jittered(base, 1.0), Duration::from_millis(1_200));
        assert_eq!(jittered(base, 7.0), Duration::from_millis(1_200), "clamped");
        assert_eq!(jittered(base, f64::NAN), base);
        assert_eq!(jittered(Duration::ZERO, 0.9), Duration::ZERO);
    }

    #[test]
    fn a_zero_batch_size_is_raised_to_the_minimum() {
        assert_eq!(policy(0, 0, 1).batch_size(), MIN_BATCH_SIZE);
    }
}
