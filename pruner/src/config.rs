//! The pruner's command line (flags with environment fallbacks), parsed once in `main` and
//! validated into [`Settings`], which is passed down. Nothing below `main` reads the
//! environment.

use std::time::Duration;

use clap::Parser;
use dedupe_store::cli::{ids, PoolSize, StoreArgs, StoreFlagDefaults};
use dedupe_store::config::DEFAULT_RETENTION_DAYS;
use dedupe_store::{Backoff, CommonArgs, ConfigError, LogFormat, MigrationMode, StoreConfig};

use crate::pacing::{PacingConfig, PacingMode, DEFAULT_QUIET_BATCH_FACTOR};
use crate::policy::BatchPolicyConfig;
use crate::retry::RetryConfig;

/// Rows deleted per batch transaction: large enough that the per-batch overhead is
/// amortised, small enough that a batch stays far inside the 250 ms bound even on slower
/// storage. Chosen by the pruner benchmark; the figures are in docs/BENCHMARKS.md, "Pruner".
pub const DEFAULT_BATCH_SIZE: u32 = 10_000;
/// Pause between batches (jittered by ±20 %). Concurrent claims are slowed only while a
/// batch runs, so the pause sets how much of the claim stream a prune touches; shorter
/// pauses raised the claims' p99 well past the target while this one still deletes far more
/// than a night needs. Chosen by the pruner benchmark (docs/BENCHMARKS.md, "Pruner").
/// With adaptive pacing (the default) this pacing holds while claims flow; while none do,
/// batches go back to back (`pacing.rs`).
pub const DEFAULT_BATCH_PAUSE_MS: u64 = 100;
/// Stop starting new batches after this long; the next night carries on.
pub const DEFAULT_MAX_RUNTIME_SECONDS: u64 = 1_800;
/// Server-side `statement_timeout` and `lock_timeout` of one batch transaction. Repeated
/// timeouts shrink the batch 10x. Well under Kubernetes' default 30 s termination grace
/// period, so a batch in flight at SIGTERM always gets to commit.
pub const DEFAULT_BATCH_TIMEOUT_MS: u64 = 5_000;
/// Bound on every other store call (connect, lock, cutoff, count): longer than the
/// webhook's, since nobody waits on a prune and a count over many expired claims is slow.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 10_000;
/// Longest `--store-timeout-ms` accepted (10 minutes).
pub const MAX_STORE_TIMEOUT_MS: u64 = 600_000;
/// Tries to reach the store at start (and after a lost connection) before giving up.
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 5;

/// The pruner's `application_name` unless the connection string names one: operators tell
/// it apart in `pg_stat_activity`, and adaptive pacing does not count it as claim traffic.
pub const PRUNER_APPLICATION_NAME: &str = "orchestration-dedupe-pruner";

/// Connections the pruner needs: one session holding the advisory lock, one for batches.
const POOL_SIZE: usize = 2;
/// Waits between attempts to reach the store (at start, and after a lost connection): 0.5 s
/// doubling up to 8 s: the default 5 attempts give a restarting or failing-over store 7.5 s.
const CONNECT_BACKOFF: Backoff = Backoff::doubling(Duration::from_millis(500), Duration::from_secs(8));

/// What each exit code means; the chart's podFailurePolicy relies on these.
pub const EXIT_CODES: &str = "Exit codes:\n  \
0  done: also nothing to do, another pruner holds the lock, the maximum runtime was reached,\n     \
SIGTERM/SIGINT arrived (the batch in flight is committed and the summary printed), or the\n     \
lock was lost with its session (restart, failover) and another pruner holds it now\n  \
1  runtime failure (store unreachable after retries, also mid-run after a failover: the next\n     \
run carries on; a batch failed)\n  \
2  configuration error (bad flag or environment value)";

/// dedupe-pruner: deletes dedupe claims older than the retention window, in batches.
///
/// Each batch is its own short transaction; at most one pruner runs per claims table.
#[derive(Debug, Clone, Parser)]
#[command(name = "dedupe-pruner", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Args {
    /// Delete claims older than this many days (at least 1).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_RETENTION_DAYS", default_value_t = DEFAULT_RETENTION_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub retention_days: u32,

    /// Claims deleted per batch (each batch is its own short transaction).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_BATCH_SIZE", default_value_t = DEFAULT_BATCH_SIZE, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: u32,

    /// Milliseconds to pause between batches (jittered by ±20 %).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_BATCH_PAUSE_MS", default_value_t = DEFAULT_BATCH_PAUSE_MS, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub batch_pause_ms: u64,

    /// Stop starting new batches after this many seconds.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_MAX_RUNTIME_SECONDS", default_value_t = DEFAULT_MAX_RUNTIME_SECONDS, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub max_runtime_seconds: u64,

    /// Count what would be deleted (and the oldest claim); delete nothing.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_DRY_RUN", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dry_run: bool,

    /// statement_timeout and lock_timeout of each batch transaction, in milliseconds; after 3
    /// timeouts in a row the batch size shrinks 10x.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_BATCH_TIMEOUT_MS", default_value_t = DEFAULT_BATCH_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub batch_timeout_ms: u64,

    /// Attempts to reach the store (backing off 0.5 s, 1 s, 2 s, ... up to 8 s) before exiting 1.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_CONNECT_ATTEMPTS", default_value_t = DEFAULT_CONNECT_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub connect_attempts: u32,

    /// `adaptive`: full speed (batches --quiet-batch-factor times larger, no pause) while
    /// PostgreSQL shows no claim traffic, --batch-size and --batch-pause-ms while it does;
    /// `fixed`: always --batch-size and --batch-pause-ms.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_PACING", value_enum, default_value_t = PacingMode::Adaptive)]
    pub pacing: PacingMode,

    /// With adaptive pacing: how many times larger a batch is while nobody claims.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_QUIET_BATCH_FACTOR", default_value_t = DEFAULT_QUIET_BATCH_FACTOR, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub quiet_batch_factor: u32,

    #[command(flatten)]
    pub common: CommonArgs,

    /// Last, so that `--help` can list each store flag where it always stood
    /// ([`PrunerStoreFlags::HELP_PLACEMENT`]).
    #[command(flatten)]
    pub store: StoreArgs<PrunerStoreFlags>,
}

/// The pruner's store flags: a longer timeout than the webhook's (nobody waits on a prune),
/// its own environment variable for it, two connections, and its own application_name.
#[derive(Debug, Clone, Copy)]
pub struct PrunerStoreFlags;

impl StoreFlagDefaults for PrunerStoreFlags {
    const STORE_TIMEOUT_ENV: &'static str = "JANGAR_ORCHESTRATION_DEDUPE_PRUNE_STORE_TIMEOUT_MS";
    const STORE_TIMEOUT_MS: u64 = DEFAULT_STORE_TIMEOUT_MS;
    const STORE_TIMEOUT_MAX_MS: Option<u64> = Some(MAX_STORE_TIMEOUT_MS);
    const STORE_TIMEOUT_HELP: &'static str =
        "Bound on every other store call (connect, lock, cutoff, count), in milliseconds";
    const POOL_SIZE: PoolSize = PoolSize::Fixed(POOL_SIZE);
    const APPLICATION_NAME: Option<&'static str> = Some(PRUNER_APPLICATION_NAME);
    const HELP_PLACEMENT: &'static [(&'static str, &'static str)] = &[
        (ids::STORE_TIMEOUT_MS, "batch_timeout_ms"),
        (ids::DATABASE_URL, "quiet_batch_factor"),
        (ids::DATABASE_CA, "migrations"),
        (ids::KEEPALIVE_IDLE_SECONDS, "log_format"),
        (ids::KEEPALIVE_INTERVAL_SECONDS, "log_format"),
        (ids::KEEPALIVE_RETRIES, "log_format"),
        (ids::TCP_USER_TIMEOUT_MS, "log_format"),
    ];
}

impl Args {
    pub fn max_runtime(&self) -> Duration {
        Duration::from_secs(self.max_runtime_seconds)
    }
}

/// Everything the pruner needs, validated once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreConfig,
    pub migrations: MigrationMode,
    pub log_format: LogFormat,
    pub retention_days: u32,
    pub dry_run: bool,
    pub policy: BatchPolicyConfig,
    pub batch_timeout: Duration,
    pub connect: RetryConfig,
    pub pacing: PacingConfig,
}

impl Settings {
    /// Validates what clap cannot (the connection string), naming the offending flag.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let store = args.store.to_config()?;
        let connect = RetryConfig::new(args.connect_attempts, CONNECT_BACKOFF);
        Ok(Self {
            store,
            migrations: args.common.migrations,
            log_format: args.common.log_format,
            retention_days: args.retention_days,
            dry_run: args.dry_run,
            policy: BatchPolicyConfig::new(
                args.batch_size,
                Duration::from_millis(args.batch_pause_ms),
                args.max_runtime(),
                connect.clone(),
            ),
            batch_timeout: Duration::from_millis(args.batch_timeout_ms),
            connect,
            pacing: PacingConfig {
                mode: args.pacing,
                quiet_batch_factor: args.quiet_batch_factor,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["dedupe-pruner", "--database-url", "postgres://u@127.0.0.1/db"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    #[test]
    fn defaults_are_the_documented_ones() -> Result<(), clap::Error> {
        let a = parse(&[])?;
        assert_eq!(a.retention_days, 7);
        assert_eq!(a.batch_size, 10_000);
        assert_eq!(a.batch_pause_ms, 100);
        assert_eq!(a.max_runtime_seconds, 1_800);
        assert!(!a.dry_run);
        assert_eq!(a.common.migrations, MigrationMode::Apply);
        assert_eq!(a.common.log_format, LogFormat::Text);
        assert_eq!(a.pacing, PacingMode::Adaptive);
        assert_eq!(a.quiet_batch_factor, DEFAULT_QUIET_BATCH_FACTOR);
        Ok(())
    }

    #[test]
    fn dry_run_takes_a_bare_flag_or_a_value() -> Result<(), clap::Error> {
        assert!(parse(&["--dry-run"])?.dry_run);
        assert!(parse(&["--dry-run", "true"])?.dry_run);
        assert!(!parse(&["--dry-run=false"])?.dry_run);
        Ok(())
    }

    #[test]
    fn out_of_range_values_are_rejected_by_clap_naming_the_flag() {
        for (flag, value) in [
            ("--retention-days", "0"),
            ("--batch-size", "0"),
            ("--batch-size", "many"),
            ("--max-runtime-seconds", "0"),
            ("--batch-timeout-ms", "0"),
            ("--connect-attempts", "0"),
            ("--log-format", "yaml"),
        ] {
            let err = parse(&[flag, value]).err();
            let kind = err.as_ref().map(|e| e.kind());
            assert!(
                matches!(kind, Some(ErrorKind::ValueValidation | ErrorKind::InvalidValue)),
                "{flag} {value}: {kind:?}"
            );
            let text = err.map(|e| e.to_string()).expect("an error");
            assert!(text.contains(flag), "{flag}: {text}");
            // clap exits 2 for every usage error; main relies on that.
        }
    }

    #[test]
    fn an_unknown_flag_is_a_usage_error_that_names_it() {
        let err = parse(&["--batch-sise", "10"]).err();
        assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::UnknownArgument));
        assert_eq!(err.map(|e| e.exit_code()), Some(2));
    }

    #[test]
    fn settings_carry_the_flags_and_validate_the_url() -> Result<(), Box<dyn std::error::Error>> {
        let s = Settings::from_args(&parse(&[
            "--batch-size",
            "250",
            "--batch-pause-ms",
            "0",
            "--batch-timeout-ms",
            "1500",
        ])?)?;
        assert_eq!(s.policy.batch_size, 250);
        assert_eq!(s.policy.pause, Duration::ZERO);
        assert_eq!(s.batch_timeout, Duration::from_millis(1500));
        assert_eq!(s.connect.attempts, DEFAULT_CONNECT_ATTEMPTS);

        let bad = Args::try_parse_from(["dedupe-pruner", "--database-url", "postgres://h:notaport/db"])?;
        let err = Settings::from_args(&bad)
            .err()
            .map(|e| e.to_string())
            .expect("an error");
        assert!(err.contains("--database-url"), "{err}");
        Ok(())
    }

    #[test]
    fn help_documents_every_exit_code_and_the_signal_behaviour() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        for needle in [
            "0  done",
            "1  runtime failure",
            "2  configuration error",
            "SIGTERM",
        ] {
            assert!(help.contains(needle), "missing {needle:?} in\n{help}");
        }
    }
}
