//! What `with-postgres` and `with-kube` share: run a command to its end while a service
//! they started stays up, passing a SIGTERM on to it, and exit with its exit code.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

/// How long the command gets to exit after a forwarded SIGTERM before it is killed.
const FORWARDED_SIGTERM_GRACE: Duration = Duration::from_secs(20);

/// The command line after `--`: the program and its arguments.
pub fn command_from_args(wrapper: &str) -> Result<Command> {
    let args: Vec<String> = std::env::args().skip(1).skip_while(|a| a == "--").collect();
    let Some((program, rest)) = args.split_first() else {
        bail!("usage: {wrapper} -- COMMAND [ARGS...]");
    };
    let mut command = Command::new(program);
    command.args(rest);
    Ok(command)
}

/// Runs `command` to its end and returns its exit code.
pub async fn run_to_end(mut command: Command) -> Result<ExitCode> {
    let program = command.as_std().get_program().to_string_lossy().into_owned();
    let mut child = command.spawn().with_context(|| format!("starting `{program}`"))?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let status = tokio::select! {
        status = child.wait() => status?,
        // Ctrl-C reaches the whole process group, so the command sees it too; wait for it.
        _ = tokio::signal::ctrl_c() => child.wait().await?,
        // SIGTERM for the wrapper alone (a CI timeout, a supervisor): pass it on so the
        // command can clean up, and only kill it if it has not ended after a grace period.
        _ = sigterm.recv() => {
            if let Some(pid) = child.id() {
                let _ = crate::signal::send(pid, crate::signal::Signal::TERM);
            }
            match tokio::time::timeout(FORWARDED_SIGTERM_GRACE, child.wait()).await {
                Ok(status) => status?,
                Err(_) => {
                    let _ = child.start_kill();
                    child.wait().await?
                }
            }
        }
    };
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(1),
    })
}
