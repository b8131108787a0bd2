//! Waiting on a condition with a generous deadline, never on a sleep: what a test waits for
//! (a reconciler's write, a watch's event) takes well under a second here, and the deadline
//! is far above it so a loaded CI machine does not flake.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// The deadline [`eventually`] uses.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` every 20 ms until it returns true (then how long it took) or [`DEADLINE`]
/// passes (then an error naming `what`).
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    while started.elapsed() < DEADLINE {
        if check().await? {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{what}: not reached within {DEADLINE:?}")
}
