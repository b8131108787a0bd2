//! Bounded retries with exponential back-off ([`Backoff`]), for reaching the store at start
//! (the webhook's migrations, the pruner's first contact). Waits are cut short by a shutdown
//! request.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::error::Chain;
use crate::shutdown::Shutdown;

/// How often and how patiently to try: `attempts` in all, waiting as a doubling
/// [`Backoff`] from `base_delay` up to `max_delay` between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Wait after the first failure; doubles after each further one.
    pub base_delay: Duration,
    /// Cap on a single wait.
    pub max_delay: Duration,
}

impl RetryConfig {
    /// `attempts` in all, waiting as `backoff` says between them.
    pub const fn new(attempts: u32, backoff: Backoff) -> Self {
        Self {
            attempts,
            base_delay: backoff.first(),
            max_delay: backoff.max(),
        }
    }

    /// The waits between attempts.
    pub const fn backoff(&self) -> Backoff {
        Backoff::doubling(self.base_delay, self.max_delay)
    }

    /// The wait after the `failures`-th failure in a row (1-based).
    pub fn delay_after(&self, failures: u32) -> Duration {
        self.backoff().delay_after(failures)
    }
}

/// Why [`until_reachable`] stopped trying.
#[derive(Debug)]
pub enum NotReached<E> {
    /// Every attempt failed; `last` is the last error.
    Exhausted {
        attempts: u32,
        elapsed: Duration,
        last: E,
    },
    /// An error that waiting will not fix (`retryable` said no).
    Fatal(E),
    /// A shutdown was requested while waiting.
    Interrupted,
}

/// Runs `op` until it succeeds, the attempts run out, an error is not `retryable`, or a
/// shutdown is requested (waits are cut short by it).
pub async fn until_reachable<T, E, F, Fut>(
    config: &RetryConfig,
    shutdown: &mut Shutdown,
    retryable: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, NotReached<E>>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let attempts = config.attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match op().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if !retryable(&error) {
            return Err(NotReached::Fatal(error));
        }
        if attempt >= attempts {
            return Err(NotReached::Exhausted {
                attempts: attempt,
                elapsed: started.elapsed(),
                last: error,
            });
        }
        let delay = config.delay_after(attempt);
        tracing::warn!(
            attempt,
            attempts,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %Chain(&error),
            "claim store not reachable yet; retrying"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.wait() => return Err(NotReached::Interrupted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreError;

    fn config(attempts: u32) -> RetryConfig {
        RetryConfig {
            attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    fn always(_: &StoreError) -> bool {
        true
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let c = RetryConfig {
            attempts: 10,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        };
        let ms: Vec<u128> = (1..=7).map(|n| c.delay_after(n).as_millis()).collect();
        assert_eq!(ms, vec![500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(c.delay_after(u32::MAX), Duration::from_secs(8));
    }

    #[tokio::test]
    async fn gives_up_after_the_attempts_with_the_last_error() {
        let (_tx, mut shutdown) = Shutdown::manual();
        let mut calls = 0;
        let r: Result<(), _> = until_reachable(&config(3), &mut shutdown, always, || {
            calls += 1;
            let n = calls;
            async move { Err(StoreError::Timeout(Duration::from_millis(n))) }
        })
        .await;
        assert_eq!(calls, 3);
        match r {
            Err(NotReached::Exhausted { attempts, last, .. }) => {
                assert_eq!(attempts, 3);
                assert!(
                    matches!(last, StoreError::Timeout(d) if d == Duration::from_millis(3)),
                    "{last}"
                );
            }
            other => panic!("expected Exhausted, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn succeeds_once_the_store_answers() {
        let (_tx, mut shutdown) = Shutdown::manual();
        let mut calls = 0;
        let r = until_reachable(&config(5), &mut shutdown, always, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(StoreError::Timeout(Duration::from_millis(1)))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.ok(), Some(3));
    }

    #[tokio::test]
    async fn an_error_that_is_not_retryable_is_not_retried() {
        let (_tx, mut shutdown) = Shutdown::manual();
        let mut calls = 0;
        let r: Result<(), _> = until_reachable(
            &config(5),
            &mut shutdown,
            |_: &StoreError| false,
            || {
                calls += 1;
                async { Err(StoreError::Timeout(Duration::from_millis(1))) }
            },
        )
        .await;
        assert_eq!(calls, 1);
        assert!(matches!(r, Err(NotReached::Fatal(_))));
    }

    #[tokio::test]
    async fn a_signal_cuts_the_wait_short() {
        let (tx, mut shutdown) = Shutdown::manual();
        let slow = RetryConfig {
            attempts: 5,
            base_delay: Duration::from_secs(3600),
            max_delay: Duration::from_secs(3600),
        };
        let _ = tx.send(Some("SIGTERM"));
        let started = Instant::now();
        let r: Result<(), _> = until_reachable(&slow, &mut shutdown, always, || async {
            Err(StoreError::Timeout(Duration::from_millis(1)))
        })
        .await;
        assert!(matches!(r, Err(NotReached::Interrupted)));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
