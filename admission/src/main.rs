//! dedupe-admission: the HTTPS validating admission webhook. This file only parses the
//! flags, sets up logging and runs the library.
//!
//! The request path, in three hops from here: [`run`] (in `run.rs`) builds the `App` and
//! starts `server::serve_https` → its `server::webhook_router` sends `POST /validate` to
//! `handler::validate` → which runs the pure decision table in `decision.rs` against the
//! claim store.

use std::process::ExitCode;

use clap::Parser;
use dedupe_admission::config::Args;
use dedupe_admission::run;
use dedupe_store::error::Chain;

/// Exit code for a configuration error (bad flag value, unreadable connection string).
const EXIT_CONFIG: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let _log_writer = dedupe_store::telemetry::init_non_blocking(args.common.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_config() => {
            tracing::error!("configuration error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!("dedupe-admission failed: {}", Chain(&e));
            ExitCode::FAILURE
        }
    }
}
