//! dedupe-admission: the HTTPS validating admission webhook. This file only parses the
//! flags, sets up logging and starts the library.
//!
//! The request path, in three hops from here (the one place it is written down; `lib.rs`
//! and `docs/ARCHITECTURE.md` point here): [`startup::serve`] builds the `App` and the
//! server and starts `server::serve_https` → its router, `server::webhook_router`, sends
//! `POST /validate` to `handler::validate` → which runs the pure decision table in
//! `decision.rs` against the claim store and answers with a `verdict::Verdict`.

use std::process::ExitCode;

use clap::Parser;
use dedupe_admission::config::Args;
use dedupe_admission::startup;
use dedupe_store::error::Chain;

/// Exit code for a configuration error (bad flag value, unreadable connection string).
const EXIT_CONFIG: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let _log_writer = dedupe_store::telemetry::init_non_blocking(args.common.log_format);
    match startup::serve(args).await {
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
