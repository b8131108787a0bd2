//! dedupe-claims: the operators' view of the claims table. Who holds a delivery (`get`), which
//! claims there are (`list`), releasing one by hand (`release`), and the table's figures
//! (`stats`). Shipped in the webhook's image, so `kubectl exec` (or the `kubectl-dedupe`
//! plugin) runs it where the database is reachable.
//!
//! Exit codes (`args::EXIT_CODES`): 0 ok, 1 store failure, 2 usage, 3 no such claim,
//! 4 ambiguous release.

mod args;
mod human;
mod render;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use dedupe_store::inspect::ReleaseOutcome;
use dedupe_store::{ClaimStore, StoreError};

use args::{Format, Request, Settings};
use render::Context;

/// How a command ended, when it did not fail.
enum Outcome {
    /// Printed what was asked.
    Done,
    /// No claim matched: one line for stderr.
    NoSuchClaim(String),
    /// A release matched several claims (printed): one line for stderr.
    Ambiguous(String),
}

fn main() -> ExitCode {
    // Usage errors (unknown flag, bad value, malformed delivery id) exit 2 naming the flag or
    // argument; --help and --version exit 0. That is clap's own behaviour.
    let cli = args::Cli::parse();
    let settings = match Settings::from_cli(&cli) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {}", human::printable(&e.to_string()));
            return ExitCode::from(args::EXIT_USAGE);
        }
    };
    match run(&settings) {
        Ok(Outcome::Done) => ExitCode::from(args::EXIT_OK),
        Ok(Outcome::NoSuchClaim(line)) => {
            eprintln!("error: {}", human::printable(&line));
            ExitCode::from(args::EXIT_NO_SUCH_CLAIM)
        }
        Ok(Outcome::Ambiguous(line)) => {
            eprintln!("error: {}", human::printable(&line));
            ExitCode::from(args::EXIT_AMBIGUOUS)
        }
        Err(e) => {
            // One line, whatever the error chain holds: scripts and `kubectl exec` read it.
            // (Control characters a server message may carry are escaped like the tables'.)
            let line = format!("{e:#}").replace(['\n', '\r'], " ");
            eprintln!("error: {}", human::printable(&line));
            ExitCode::from(args::EXIT_STORE_FAILURE)
        }
    }
}

fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let store = ClaimStore::new(&settings.store).context("opening the claim store")?;
        let outcome = execute(&store, settings).await?;
        Ok(outcome)
    })
}

async fn execute(store: &ClaimStore, settings: &Settings) -> anyhow::Result<Outcome> {
    let cx = Context {
        retention_days: settings.retention_days,
        pending_grace: settings.pending_grace,
    };
    let json = settings.format == Format::Json;
    match &settings.request {
        Request::Get { delivery_id } => {
            let claims = store
                .claims_of_delivery(delivery_id)
                .await
                .map_err(|e| failed("reading the claims of the delivery", e))?;
            if claims.is_empty() {
                return Ok(Outcome::NoSuchClaim(format!(
                    "no claim for delivery {delivery_id}"
                )));
            }
            if json {
                print_json(&render::get_json(delivery_id, &claims, cx))?;
            } else {
                print(&render::get_table(delivery_id, &claims, cx))?;
            }
        }
        Request::List(filter) => {
            let list = store
                .list_claims(filter)
                .await
                .map_err(|e| failed("listing claims", e))?;
            if json {
                print_json(&render::list_json(&list, filter.limit, cx))?;
            } else {
                print(&render::list_table(&list, filter.limit))?;
            }
        }
        Request::Release {
            delivery_id,
            selector,
            yes,
        } => {
            let outcome = if *yes {
                store
                    .release_claim(delivery_id, selector)
                    .await
                    .map_err(|e| failed("releasing the claim", e))?
            } else {
                let matched = store
                    .release_preview(delivery_id, selector)
                    .await
                    .map_err(|e| failed("reading the claims to release", e))?;
                match <[_; 1]>::try_from(matched) {
                    Ok([one]) => {
                        if json {
                            print_json(&render::release_json(delivery_id, false, &[one], cx))?;
                        } else {
                            print(&format!(
                                "would release this claim (nothing deleted; run again with --yes to delete it):\n\n{}",
                                render::claim_block(&one, cx)
                            ))?;
                        }
                        return Ok(Outcome::Done);
                    }
                    Err(matched) if matched.is_empty() => ReleaseOutcome::NotFound,
                    Err(matched) => ReleaseOutcome::Ambiguous(matched),
                }
            };
            match outcome {
                ReleaseOutcome::Released(record) => {
                    if json {
                        print_json(&render::release_json(delivery_id, true, &[record], cx))?;
                    } else {
                        print(&format!(
                            "released this claim (deleted; the next create of the delivery makes a new run):\n\n{}",
                            render::claim_block(&record, cx)
                        ))?;
                    }
                }
                ReleaseOutcome::NotFound => {
                    return Ok(Outcome::NoSuchClaim(format!(
                        "no claim of delivery {delivery_id} matches{}",
                        if selector == &Default::default() {
                            ""
                        } else {
                            " the given key"
                        }
                    )))
                }
                ReleaseOutcome::Ambiguous(matched) => {
                    if json {
                        print_json(&render::release_json(delivery_id, false, &matched, cx))?;
                    } else {
                        print(&render::matches_table(&matched))?;
                    }
                    return Ok(Outcome::Ambiguous(format!(
                        "{} claims of delivery {delivery_id} match; nothing deleted: pick one with --scope, --namespace and --orchestration",
                        matched.len()
                    )));
                }
            }
        }
        Request::Stats => {
            let stats = store
                .claim_stats(settings.retention_days, settings.pending_grace)
                .await
                .map_err(|e| failed("reading the table's figures", e))?;
            if json {
                print_json(&render::stats_json(&stats, cx))?;
            } else {
                print(&render::stats_table(&stats, cx))?;
            }
        }
    }
    Ok(Outcome::Done)
}

/// A store error with what the CLI was doing.
fn failed(doing: &'static str, e: StoreError) -> anyhow::Error {
    anyhow::Error::new(e).context(doing)
}

/// Tables and messages go out through here. The tables escape each claim's values already;
/// this keeps any control character that slipped past them from reaching the terminal.
fn print(text: &str) -> anyhow::Result<()> {
    write_stdout(&human::printable_lines(text))
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    write_stdout(&format!("{}\n", human::json_printable(&text)))
}
