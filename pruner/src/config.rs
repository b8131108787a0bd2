//! The pruner's command line (flags with environment fallbacks), parsed once in `main`.

use std::time::Duration;

use clap::Parser;
use dedupe_shared::config::DEFAULT_RETENTION_DAYS;
use dedupe_shared::CommonArgs;

/// Rows deleted per batch transaction (see docs/BENCHMARKS.md for how it was chosen).
pub const DEFAULT_BATCH_SIZE: u32 = 5_000;
/// Pause between batches, so admission traffic and replication keep up.
pub const DEFAULT_BATCH_PAUSE_MS: u64 = 50;
/// Stop starting new batches after this long; the next night carries on.
pub const DEFAULT_MAX_RUNTIME_SECONDS: u64 = 1_800;

/// What each exit code means; the chart's podFailurePolicy relies on these.
pub const EXIT_CODES: &str = "Exit codes:\n  0  done (also: nothing to do, or another pruner holds the lock)\n  \
1  runtime failure (store unreachable after retries, a batch failed)\n  2  configuration error (bad flag or environment value)";

/// dedupe-pruner: deletes dedupe claims older than the retention window, in batches.
///
/// Exit codes: 0 done (also: nothing to do, or another pruner holds the lock), 1 runtime
/// failure (store unreachable, a batch failed), 2 configuration error.
#[derive(Debug, Clone, Parser)]
#[command(name = "dedupe-pruner", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Args {
    /// Delete claims older than this many days (at least 1).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_RETENTION_DAYS", default_value_t = DEFAULT_RETENTION_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub retention_days: u32,

    /// Claims deleted per batch (each batch is its own short transaction).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_BATCH_SIZE", default_value_t = DEFAULT_BATCH_SIZE, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: u32,

    /// Milliseconds to pause between batches.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_BATCH_PAUSE_MS", default_value_t = DEFAULT_BATCH_PAUSE_MS)]
    pub batch_pause_ms: u64,

    /// Stop starting new batches after this many seconds.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_MAX_RUNTIME_SECONDS", default_value_t = DEFAULT_MAX_RUNTIME_SECONDS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_runtime_seconds: u64,

    /// Count what would be deleted (and the oldest claim); delete nothing.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_DRY_RUN", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dry_run: bool,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Args {
    pub fn max_runtime(&self) -> Duration {
        Duration::from_secs(self.max_runtime_seconds)
    }
}
