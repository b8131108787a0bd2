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
mod token;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use dedupe_store::inspect::ReleaseOutcome;
use dedupe_store::{ClaimStore, StoreError};

use args::{Format, Request, Settings};
use render::{Columns, Context};

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
            eprintln!("error: {e}");
            return ExitCode::from(args::EXIT_USAGE);
        }
    };
    match run(&settings) {
        Ok(Outcome::Done) => ExitCode::from(args::EXIT_OK),
        Ok(Outcome::NoSuchClaim(line)) => {
            eprintln!("error: {line}");
            ExitCode::from(args::EXIT_NO_SUCH_CLAIM)
        }
        Ok(Outcome::Ambiguous(line)) => {
            eprintln!("error: {line}");
            ExitCode::from(args::EXIT_AMBIGUOUS)
        }
        Err(e) => {
            // One line, whatever the error chain holds: scripts and `kubectl exec` read it.
            // Each cause once (the driver repeats its cause in its own text), and the store
            // error itself names where and what to do.
            let error: &(dyn std::error::Error + 'static) = e.as_ref();
            let text = dedupe_store::error::Chain(error).to_string();
            eprintln!("error: {}", render::sanitize(&text.replace(['\n', '\r'], " ")));
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
    let format = settings.format;
    let json = matches!(format, Format::Json | Format::Yaml);
    let columns = if format == Format::Wide {
        Columns::Wide
    } else {
        Columns::Default
    };
    let headers = settings.headers;
    match &settings.request {
        Request::Get { delivery_id } | Request::Describe { delivery_id } => {
            let claims = store
                .claims_of_delivery(delivery_id)
                .await
                .map_err(|e| failed("reading the claims of the delivery", e))?;
            if claims.is_empty() {
                return Ok(Outcome::NoSuchClaim(format!(
                    "no claim for delivery {}",
                    render::sanitize(delivery_id)
                )));
            }
            let describe = matches!(settings.request, Request::Describe { .. });
            match format {
                Format::Json | Format::Yaml => {
                    print_doc(&render::get_json(delivery_id, &claims, cx), format)?;
                }
                Format::Name => print(&render::names(&claims))?,
                Format::Table | Format::Wide if describe => {
                    print(&render::describe(delivery_id, &claims, cx))?;
                }
                Format::Table | Format::Wide => {
                    print(&render::claims_table(&claims, columns, headers, cx))?;
                }
            }
        }
        Request::List(filter) => {
            let list = store
                .list_claims(filter)
                .await
                .map_err(|e| failed("listing claims", e))?;
            let next = list.next.as_ref().map(token::encode);
            match format {
                Format::Json | Format::Yaml => {
                    print_doc(
                        &render::list_json(&list, filter.limit, next.as_deref(), cx),
                        format,
                    )?;
                }
                Format::Name => print(&render::names(&list.claims))?,
                Format::Table | Format::Wide => {
                    if !list.claims.is_empty() {
                        print(&render::claims_table(&list.claims, columns, headers, cx))?;
                    }
                }
            }
            // As kubectl: stdout holds only the claims (a pipe sees no footer); what a person
            // needs to know about the list goes to stderr.
            if !json {
                if let Some(next) = &next {
                    eprintln!(
                        "showing {}; more claims match: for the next page, add --continue {next}",
                        render::plural(list.claims.len(), "claim", "claims")
                    );
                } else if list.claims.is_empty() {
                    eprintln!("No claims found.");
                }
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
                            print_doc(&render::release_json(delivery_id, false, &[one], cx), format)?;
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
                        print_doc(&render::release_json(delivery_id, true, &[record], cx), format)?;
                    } else {
                        print(&format!(
                            "released this claim (deleted; the next create of the delivery makes a new run):\n\n{}",
                            render::claim_block(&record, cx)
                        ))?;
                    }
                }
                ReleaseOutcome::NotFound => {
                    return Ok(Outcome::NoSuchClaim(format!(
                        "no claim of delivery {} matches{}",
                        render::sanitize(delivery_id),
                        if selector == &Default::default() {
                            ""
                        } else {
                            " the given key"
                        }
                    )))
                }
                ReleaseOutcome::Ambiguous(matched) => {
                    if json {
                        print_doc(&render::release_json(delivery_id, false, &matched, cx), format)?;
                    } else {
                        print(&render::claims_table(&matched, Columns::Wide, headers, cx))?;
                    }
                    return Ok(Outcome::Ambiguous(format!(
                        "{} claims of delivery {} match; nothing deleted: pick one with --scope, --namespace and --orchestration",
                        matched.len(),
                        render::sanitize(delivery_id)
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
                print_doc(&render::stats_json(&stats, cx), format)?;
            } else {
                print(&render::stats_table(&stats, headers, cx))?;
            }
        }
    }
    Ok(Outcome::Done)
}

/// A store error with what the CLI was doing.
fn failed(doing: &'static str, e: StoreError) -> anyhow::Error {
    anyhow::Error::new(e).context(doing)
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

/// The document as JSON, or as YAML (the same document: the same keys, values and nulls).
fn print_doc(value: &serde_json::Value, format: Format) -> anyhow::Result<()> {
    let text = if format == Format::Yaml {
        // Plain scalars, never folded (`>-`) past 80 characters: a long id or token stays
        // on one line, whole, as kubectl prints it and as `grep` finds it.
        let mut options = serde_saphyr::SerializerOptions::default();
        options.prefer_block_scalars = false;
        serde_saphyr::to_string_with_options(value, options).context("encoding YAML")?
    } else {
        // serde_json escapes C0 controls but not DEL, C1 or bidi marks: those too.
        human::json_printable(&serde_json::to_string_pretty(value).context("encoding JSON")?).into_owned()
    };
    if text.ends_with('\n') {
        print(&text)
    } else {
        print(&format!("{text}\n"))
    }
}
