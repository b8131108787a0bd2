//! dedupe-pruner: deletes expired dedupe claims in batches (run by a Kubernetes CronJob).
//!
//! Exit codes (see `config::EXIT_CODES`): 0 done (also nothing to do, lock held elsewhere,
//! runtime limit reached, stopped by SIGTERM/SIGINT after committing the batch in flight, or
//! the lock lost with its session and taken by another pruner), 1 runtime failure (also the
//! store lost mid-run past the retries: the next run carries on), 2 configuration error.
//!
//! "Batch" in this crate always means a prune batch: one short transaction deleting up to
//! `--batch-size` expired claims (`dedupe_store::PrunerLock::prune_batch`).

mod app;
mod config;
mod error;
mod locked;
mod pacing;
mod policy;
mod prune;
mod report;
mod retry;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

const EXIT_RUNTIME_FAILURE: u8 = 1;
const EXIT_CONFIG_ERROR: u8 = 2;

fn main() -> ExitCode {
    // Usage errors (unknown flag, bad value, also from the environment) exit 2 naming the
    // flag; --help and --version exit 0. That is clap's own behaviour.
    let args = config::Args::parse();
    let settings = match config::Settings::from_args(&args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG_ERROR);
        }
    };
    dedupe_store::telemetry::init(settings.log_format);
    match run(&settings) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            let error: &(dyn std::error::Error + 'static) = e.as_ref();
            tracing::error!(error = %dedupe_store::error::Chain(error), "prune failed");
            ExitCode::from(EXIT_RUNTIME_FAILURE)
        }
    }
}

fn run(settings: &config::Settings) -> anyhow::Result<app::Ended> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut shutdown =
            dedupe_store::shutdown::Shutdown::install().context("installing the SIGTERM/SIGINT handlers")?;
        Ok(app::run(settings, &mut shutdown).await?)
    })
}
