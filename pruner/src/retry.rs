//! Reaching the store at start: the shared back-off ([`dedupe_store::retry`]), retrying
//! only what waiting can fix (the pruner's error classes: unavailable or timed out).

use std::future::Future;

use dedupe_store::retry;
pub use dedupe_store::retry::{NotReached, RetryConfig};
use dedupe_store::shutdown::Shutdown;
use dedupe_store::StoreError;

use crate::error::{classify, ErrorClass};

/// Runs `op` until it succeeds, the attempts run out, the error is not one of
/// unavailability, or a shutdown signal arrives (waits are cut short by it).
pub async fn until_reachable<T, F, Fut>(
    config: &RetryConfig,
    shutdown: &mut Shutdown,
    op: F,
) -> Result<T, NotReached<StoreError>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    retry::until_reachable(config, shutdown, |e| classify(e) != ErrorClass::Other, op).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_rejected_query_is_not_retried_and_a_lost_store_is() {
        let (_tx, mut shutdown) = Shutdown::manual();
        let config = RetryConfig {
            attempts: 5,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        };
        let mut calls = 0;
        let r: Result<(), _> = until_reachable(&config, &mut shutdown, || {
            calls += 1;
            async { Err(StoreError::Query("ERROR: permission denied (42501)".into())) }
        })
        .await;
        assert_eq!(calls, 1);
        assert!(matches!(r, Err(NotReached::Fatal(_))));

        let mut calls = 0;
        let r: Result<(), _> = until_reachable(&config, &mut shutdown, || {
            calls += 1;
            async { Err(StoreError::Unavailable("connection refused".into())) }
        })
        .await;
        assert_eq!(calls, 5);
        assert!(matches!(r, Err(NotReached::Exhausted { attempts: 5, .. })));
    }
}
