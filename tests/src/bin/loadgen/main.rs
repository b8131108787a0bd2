//! `loadgen`: load generator for the webhook benchmark (`tests/bench/webhook.sh`).
//!
//! `loadgen run` sends AdmissionReview CREATEs over N keep-alive HTTPS connections (real
//! rustls TLS trusting the dev CA, the same client the end-to-end tests use) to a webhook
//! on loopback, in one of two modes:
//! - `max-rate`: every connection sends its next request as soon as the previous answer
//!   arrived (closed loop); latency is the service time of each request.
//! - `fixed-rate`: an open-loop schedule of `--rate` requests/s spread evenly over the
//!   connections; latency is measured from each request's *scheduled* send time, so a slow
//!   answer that delays the following requests is charged to them too (no coordinated
//!   omission). A plain thread keeps the schedule (the tokio timer ticks in whole
//!   milliseconds, too coarse here). The service time (from the actual send) is reported
//!   beside it.
//!
//! Bodies are built once from the recorded fixture (`Review::create`) and serialised to a
//! template; each request copies the template and overwrites the delivery id, run name and
//! uids in place (fixed-length fields), so generating a request costs a memcpy, not a JSON
//! serialisation. `--deliveries new` gives every request a new delivery (→ `claimed`);
//! `--deliveries duplicate` claims a small set of deliveries once before the warm-up and then
//! sends only duplicates of them under new run names (→ 409 `duplicate`).
//!
//! The run is bounded: warm-up (not recorded), then `--duration-secs` measured, then at most
//! a short drain; it stops by itself. Only loopback targets are accepted.
//!
//! `loadgen pgbench-script` writes the pgbench baseline: the webhook's own claim statement
//! (`dedupe_store::sql::CLAIM_INSERT`, verbatim, `$n` → pgbench variables; or with
//! `--statement insert` a bare `INSERT … ON CONFLICT DO NOTHING`, the durable baseline) with the same key parts
//! as the fixture, for new or duplicate deliveries.
//!
//! The parts: [`body`] builds the request bodies, [`run`] sends them and reports, [`pgbench`]
//! writes the baseline script.

mod body;
mod pgbench;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

const PATH: &str = "/validate?timeout=10s";
const CONTENT_TYPE: &str = "application/json";
/// Run names are `lg-` + 16 hex digits: fixed length, so they can be patched in place.
const NAME_LEN: usize = 19;
const UUID_LEN: usize = 36;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Webhook load generator and pgbench baseline script"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send AdmissionReview CREATEs to the webhook and report throughput and latency.
    Run(RunArgs),
    /// Write the pgbench script that runs the webhook's claim statement.
    PgbenchScript(ScriptArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Each connection sends back-to-back (closed loop).
    MaxRate,
    /// Open loop at --rate requests/s over all connections.
    FixedRate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Deliveries {
    /// Every request a new delivery id: each is claimed.
    New,
    /// A fixed set of deliveries claimed before the warm-up; every request a duplicate.
    Duplicate,
}

impl Deliveries {
    fn as_str(self) -> &'static str {
        match self {
            Deliveries::New => "new",
            Deliveries::Duplicate => "duplicate",
        }
    }
    /// The decision every answer must carry.
    fn expected_decision(self) -> &'static str {
        match self {
            Deliveries::New => "claimed",
            Deliveries::Duplicate => "duplicate",
        }
    }
    fn expected_allowed(self) -> bool {
        self == Deliveries::New
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Webhook HTTPS address; loopback only.
    #[arg(long, default_value = "127.0.0.1:8443")]
    target: SocketAddr,
    /// CA certificate (PEM) the serving certificate chains to (certs-dev's ca.crt).
    #[arg(long)]
    ca: PathBuf,
    /// Name checked against the serving certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[arg(long, value_enum, default_value_t = Mode::MaxRate)]
    mode: Mode,
    #[arg(long, value_enum, default_value_t = Deliveries::New)]
    deliveries: Deliveries,
    /// Keep-alive connections (HTTP/1.1, one request in flight each).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Requests per second over all connections (fixed-rate mode).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured duration, after the warm-up.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration_secs: u64,
    /// Warm-up before measuring (same load, not recorded).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup_secs: u64,
    /// How many deliveries the duplicate mode claims up front and then repeats.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    duplicate_set: u32,
    /// Per-request timeout; a timed-out request counts as an error and its connection is replaced.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Fixed-rate: after the end, requests still behind schedule get this long to go out;
    /// the rest count as `missed`.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
    /// Runtime worker threads of the generator (it shares the machine with what it measures).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,
    /// Print each measured request slower than this many ms to stderr (to line stalls up
    /// with other observations).
    #[arg(long)]
    slow_ms: Option<u64>,
    /// Max-rate: stop after this many requests over all connections (or at the end of the
    /// duration, whichever comes first): a fixed amount of work, for instruction counts.
    #[arg(long, conflicts_with = "rate")]
    requests: Option<u64>,
    /// A label echoed in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ScriptArgs {
    #[arg(long, value_enum)]
    deliveries: Deliveries,
    /// Size of the duplicate set (delivery ids `1`..=N, pre-claimed by the setup SQL).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    duplicate_set: u32,
    /// The statement each transaction runs.
    #[arg(long, value_enum, default_value_t = pgbench::Statement::Claim)]
    statement: pgbench::Statement,
    /// Where to write the pgbench script; the duplicate variant also writes `<out>.setup.sql`.
    /// The `-D name=value` arguments pgbench needs are printed on stdout, one per line.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_blocking(args),
        Command::PgbenchScript(args) => pgbench::pgbench_script(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_blocking(args: RunArgs) -> Result<()> {
    ensure!(
        args.target.ip().is_loopback(),
        "refusing to load {}: only loopback targets (127.0.0.0/8, ::1) are allowed",
        args.target
    );
    if args.mode == Mode::FixedRate {
        ensure!(
            args.rate.is_finite() && args.rate > 0.0 && args.rate <= 1_000_000.0,
            "--rate must be between 0 and 1000000 requests/s"
        );
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads as usize)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run::run(args))
}
