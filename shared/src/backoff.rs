//! Exponential back-off: the waits between attempts at something that keeps failing (the
//! store at start, the store mid-prune, the reconciler's writes). One type, so each caller
//! states only its first wait, its cap and its growth factor.

use std::time::Duration;

/// Waits that grow by `factor` after each failure in a row, from `first` up to `max`.
/// No jitter: its callers are one per process (a pruner, a replica's reconciler), and a
/// failed start is retried a handful of times, so nothing stampedes in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    factor: u32,
}

/// Failures past which the wait stops growing: any factor of 2 or more has reached any
/// practical cap long before, and it keeps the multiplication finite.
const MAX_GROWTH_STEPS: u32 = 30;

impl Backoff {
    /// `first`, then twice as long after each further failure, never longer than `max`.
    pub const fn doubling(first: Duration, max: Duration) -> Self {
        Self::new(first, max, 2)
    }

    /// `first`, then `factor` times longer after each further failure (a factor below 1
    /// counts as 1: a constant wait), never longer than `max`.
    pub const fn new(first: Duration, max: Duration, factor: u32) -> Self {
        Self {
            first,
            max,
            factor: if factor == 0 { 1 } else { factor },
        }
    }

    /// The first wait.
    pub const fn first(&self) -> Duration {
        self.first
    }

    /// The cap on a single wait.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The wait after the `failures`-th failure in a row (1-based; 0 counts as 1).
    pub fn delay_after(&self, failures: u32) -> Duration {
        let steps = failures.saturating_sub(1).min(MAX_GROWTH_STEPS);
        self.factor
            .checked_pow(steps)
            .map_or(self.max, |growth| self.first.saturating_mul(growth))
            .min(self.max)
    }

    /// A counter of failures in a row, for a loop that waits after each failure and starts
    /// over after a success.
    pub fn waits(&self) -> BackoffWaits {
        BackoffWaits {
            backoff: *self,
            failures: 0,
        }
    }
}

/// Failures in a row against one [`Backoff`].
#[derive(Debug, Clone)]
pub struct BackoffWaits {
    backoff: Backoff,
    failures: u32,
}

impl BackoffWaits {
    /// Counts a failure; the wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.backoff.delay_after(self.failures)
    }

    /// A success: the next failure waits [`Backoff::first`] again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(waits: impl Iterator<Item = Duration>) -> Vec<u128> {
        waits.map(|d| d.as_millis()).collect()
    }

    #[test]
    fn doubling_waits_grow_to_the_cap_and_stay() {
        let b = Backoff::doubling(Duration::from_millis(500), Duration::from_secs(8));
        assert_eq!(
            ms((1..=7).map(|n| b.delay_after(n))),
            vec![500, 1000, 2000, 4000, 8000, 8000, 8000]
        );
        assert_eq!(b.delay_after(0), Duration::from_millis(500));
        assert_eq!(b.delay_after(u32::MAX), Duration::from_secs(8));
    }

    #[test]
    fn a_large_factor_saturates_at_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 1000);
        assert_eq!(b.delay_after(2), Duration::from_secs(60));
        assert_eq!(b.delay_after(40), Duration::from_secs(60));
        let constant = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 0);
        assert_eq!(constant.delay_after(5), Duration::from_secs(1));
    }

    /// The reconciler's flusher waits 0.5 s, then doubles up to 30 s, and starts over after
    /// a batch is written.
    #[test]
    fn waits_count_failures_in_a_row_and_a_success_starts_over() {
        let mut waits = Backoff::doubling(Duration::from_millis(500), Duration::from_secs(30)).waits();
        assert_eq!(
            ms((0..8).map(|_| waits.failed())),
            vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
        );
        waits.succeeded();
        assert_eq!(waits.failed(), Duration::from_millis(500));
    }
}
