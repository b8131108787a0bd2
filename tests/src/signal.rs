//! Signals to the processes a test started, by system call (no `kill` child process, whose
//! absence or failure would read as the signal having been sent).

use anyhow::{anyhow, Context, Result};
pub use rustix::process::Signal;
use rustix::process::{kill_process, Pid};

/// Sends `signal` to process `pid`.
pub fn send(pid: u32, signal: Signal) -> Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| anyhow!("{pid} is not a process id"))?;
    kill_process(pid, signal).with_context(|| format!("sending {signal:?} to {pid:?}"))
}

/// Sends `signal` to a child that has not been reaped yet.
pub fn send_to(child: &tokio::process::Child, signal: Signal) -> Result<()> {
    let pid = child.id().ok_or_else(|| anyhow!("the process already exited"))?;
    send(pid, signal)
}
