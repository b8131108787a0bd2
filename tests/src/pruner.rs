//! Runs the real `dedupe-pruner` binary for a test: to the end ([`run`]) or live
//! ([`Live`], its JSON events awaitable as they come), against a [`TestDb`] schema.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use tokio::process::Command;

use crate::binaries::binary;
use crate::process::{Process, Stream};
use crate::signal::Signal;
use crate::TestDb;

/// Generous bound for a run that should take seconds: a stuck pruner fails the test instead
/// of hanging it.
pub const RUN_BOUND: Duration = Duration::from_secs(90);

/// The binary with a clean environment (flags only), logs at info.
pub fn command(args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(binary("dedupe-pruner")?);
    cmd.env_clear()
        .env("RUST_LOG", "info")
        // These tests pin batch sizes and pauses; adaptive pacing (which changes both when no
        // claims are seen, and sees other tests' claims on the same server) has its own tests
        // in pruner_pacing.rs.
        .env("JANGAR_ORCHESTRATION_DEDUPE_PRUNE_PACING", "fixed")
        .args(args);
    Ok(cmd)
}

/// A connection string for the binary: the test's schema, and an application_name so the
/// test can find the pruner's sessions in pg_stat_activity.
pub fn pruner_url(db: &TestDb) -> String {
    format!("{}&application_name={}", db.url(), app_name(db))
}

/// The application_name of the pruner's sessions ([`pruner_url`]).
pub fn app_name(db: &TestDb) -> String {
    format!("pruner_{}", db.schema())
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The stdout lines that are JSON.
    pub events: Vec<Value>,
}

impl Finished {
    fn from(process: &Process, code: Option<i32>) -> Self {
        let stdout = process.stdout();
        Self {
            code,
            events: parse_events(&stdout),
            stdout,
            stderr: process.stderr(),
        }
    }

    /// The events whose message starts with `message`.
    pub fn with_message(&self, message: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| is_event(e, message)).collect()
    }

    /// The one event whose message starts with `message`; an error if none or several.
    pub fn one(&self, message: &str) -> Result<&Value> {
        match self.with_message(message).as_slice() {
            [one] => Ok(one),
            other => bail!(
                "expected one `{message}` event, found {}:\n{}",
                other.len(),
                self.stdout
            ),
        }
    }

    /// The run's summary event.
    pub fn summary(&self) -> Result<&Value> {
        self.one("prune finished")
    }

    pub fn levels(&self, level: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["level"] == level).collect()
    }
}

fn is_event(event: &Value, message: &str) -> bool {
    event["message"].as_str().is_some_and(|m| m.starts_with(message))
}

pub fn parse_events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Runs to the end (bounded by [`RUN_BOUND`]).
pub async fn run(args: &[&str]) -> Result<Finished> {
    run_with_env(args, &[]).await
}

/// Runs to the end with extra environment variables.
pub async fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Finished> {
    let mut cmd = command(args)?;
    cmd.envs(env.iter().copied());
    let mut process = Process::spawn(cmd, "dedupe-pruner")?;
    let status = process.wait(RUN_BOUND).await?;
    Ok(Finished::from(&process, status.code()))
}

/// A pruner still running: its JSON events awaitable as they arrive.
pub struct Live {
    process: Process,
}

impl Live {
    pub fn spawn(args: &[&str]) -> Result<Self> {
        Ok(Self {
            process: Process::spawn(command(args)?, "dedupe-pruner")?,
        })
    }

    /// Waits for the next event whose message starts with `message`; returns it.
    pub async fn wait_for(&mut self, message: &str) -> Result<Value> {
        let line = self
            .process
            .wait_for_line(&format!("`{message}` event"), RUN_BOUND, |line| {
                line.stream == Stream::Stdout
                    && serde_json::from_str::<Value>(&line.text).is_ok_and(|e| is_event(&e, message))
            })
            .await?;
        Ok(serde_json::from_str(&line.text)?)
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        self.process.signal(signal)
    }

    pub fn still_running(&mut self) -> Result<bool> {
        self.process.still_running()
    }

    /// Waits for the exit (bounded by [`RUN_BOUND`]) and returns everything printed.
    pub async fn finish(mut self) -> Result<Finished> {
        let status = self.process.wait(RUN_BOUND).await?;
        Ok(Finished::from(&self.process, status.code()))
    }
}

/// A numeric field of an event.
pub fn u64_field(event: &Value, field: &str) -> Result<u64> {
    event[field]
        .as_u64()
        .ok_or_else(|| anyhow!("event has no numeric `{field}`: {event}"))
}

/// A string field of an event.
pub fn str_field<'a>(event: &'a Value, field: &str) -> Result<&'a str> {
    event[field]
        .as_str()
        .ok_or_else(|| anyhow!("event has no string `{field}`: {event}"))
}
