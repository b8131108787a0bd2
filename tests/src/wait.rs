//! Waiting on a condition with a generous deadline, never on a sleep: what a test waits for
//! (a reconciler's write, a watch's event) takes well under a second here, and the deadline
//! is far above it so a loaded CI machine does not flake.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// The deadline [`eventually`] uses.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` every 20 ms until it returns true (then how long it took) or [`DEADLINE`]
/// passes (then an error naming `what`).
pub async fn eventually<F, Fut>(what: &str, check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    eventually_within(what, DEADLINE, check).await
}

/// [`eventually`] with a deadline of the caller's (a volume test that needs longer).
pub async fn eventually_within<F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    while started.elapsed() < deadline {
        if check().await? {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{what}: not reached within {deadline:?}")
}
