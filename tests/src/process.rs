//! A child process under test: stdin closed, every stdout and stderr line collected as it
//! arrives (searchable at any time, awaitable in order), killed when dropped.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::signal::{self, Signal};

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line the process printed (without its newline).
#[derive(Debug, Clone)]
pub struct Line {
    pub stream: Stream,
    pub text: String,
}

/// A running (or exited) child process and what it printed.
pub struct Process {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<Line>>>,
    /// How many lines have arrived; closed once both pipes have ended.
    arrived: watch::Receiver<usize>,
    readers: Vec<JoinHandle<()>>,
    /// Lines before this index were already looked at by [`Process::wait_for_line`].
    cursor: usize,
}

impl Process {
    /// Starts `command` (stdin closed, stdout and stderr collected, killed on drop). `name`
    /// is what error messages call it.
    pub fn spawn(mut command: Command, name: &str) -> Result<Self> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("starting {name}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, arrived) = watch::channel(0);
        let tx = Arc::new(tx);
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(collect(
                out,
                Stream::Stdout,
                lines.clone(),
                tx.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(collect(err, Stream::Stderr, lines.clone(), tx)));
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            arrived,
            readers,
            cursor: 0,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        signal::send_to(&self.child, signal).with_context(|| format!("signalling {}", self.name))
    }

    /// SIGKILL, as a node failure or an OOM kill would; waits for the exit.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    pub fn still_running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Every line so far, both pipes, in the order they arrived.
    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Everything printed so far, both pipes, one line per line.
    pub fn output(&self) -> String {
        self.joined(|_| true)
    }

    pub fn stdout(&self) -> String {
        self.joined(|l| l.stream == Stream::Stdout)
    }

    pub fn stderr(&self) -> String {
        self.joined(|l| l.stream == Stream::Stderr)
    }

    /// Whether any line so far contains `needle`.
    pub fn printed(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|l| l.text.contains(needle))
    }

    fn joined(&self, keep: impl Fn(&Line) -> bool) -> String {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let kept: Vec<&str> = lines
            .iter()
            .filter(|l| keep(l))
            .map(|l| l.text.as_str())
            .collect();
        kept.join("\n")
    }

    /// Waits up to `limit` for the next line matching `matches`, looking only at lines no
    /// earlier call has looked at (so successive calls follow the output in order). `what`
    /// names the awaited line in the error, which carries the output so far.
    pub async fn wait_for_line(
        &mut self,
        what: &str,
        limit: Duration,
        mut matches: impl FnMut(&Line) -> bool,
    ) -> Result<Line> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Marked seen before looking, so a line arriving meanwhile wakes the wait below.
            self.arrived.borrow_and_update();
            {
                let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
                while let Some(line) = lines.get(self.cursor) {
                    self.cursor += 1;
                    if matches(line) {
                        return Ok(line.clone());
                    }
                }
            }
            match tokio::time::timeout_at(deadline, self.arrived.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("{}'s output ended before {what}:\n{}", self.name, self.output()),
                Err(_) => bail!(
                    "no {what} from {} within {limit:?}:\n{}",
                    self.name,
                    self.output()
                ),
            }
        }
    }

    /// Waits up to `limit` for the process to exit and for its pipes to be read to the end.
    pub async fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        let status = tokio::time::timeout_at(deadline, self.child.wait())
            .await
            .map_err(|_| anyhow!("{} did not exit within {limit:?}:\n{}", self.name, self.output()))??;
        for reader in std::mem::take(&mut self.readers) {
            tokio::time::timeout_at(deadline, reader)
                .await
                .map_err(|_| anyhow!("{}'s output did not end within {limit:?}", self.name))?
                .with_context(|| format!("reading {}'s output", self.name))?;
        }
        Ok(status)
    }
}

async fn collect(
    stream: impl AsyncRead + Unpin,
    which: Stream,
    lines: Arc<Mutex<Vec<Line>>>,
    arrived: Arc<watch::Sender<usize>>,
) {
    let mut reader = BufReader::new(stream).lines();
    while let Ok(Some(text)) = reader.next_line().await {
        let n = {
            let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
            lines.push(Line { stream: which, text });
            lines.len()
        };
        arrived.send_replace(n);
    }
}
