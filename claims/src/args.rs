//! The command line of `dedupe-claims`, parsed once in `main` (flags with environment
//! fallbacks, as the other binaries) and validated into [`Settings`].

use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use dedupe_store::claim::ClaimState;
use dedupe_store::cli::{PoolSize, StoreArgs, StoreFlagDefaults};
use dedupe_store::config::{
    DEFAULT_PENDING_GRACE_SECONDS, DEFAULT_RETENTION_DAYS, MAX_PENDING_GRACE_SECONDS,
};
use dedupe_store::inspect::{KeySelector, ListCursor, ListFilter};
use dedupe_store::{ClaimScope, ConfigError, StoreConfig};

use crate::{human, token};

/// Rows `list` shows unless told otherwise.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Upper bound of `--limit`: past this, `-o json` and a pipe serve better than a table.
pub const MAX_LIST_LIMIT: u32 = 100_000;
/// Bound on each store call. Longer than the webhook's 2 s: `stats` counts the whole table,
/// which takes a second or more at millions of rows, and nobody is waiting on an admission.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 10_000;
/// Longest `--store-timeout-ms` accepted (10 minutes).
pub const MAX_STORE_TIMEOUT_MS: u64 = 600_000;
/// One connection: the CLI runs one statement (or one transaction) at a time.
pub const POOL_SIZE: usize = 1;

/// Exit codes, as `--help` prints them (docs/OPERATIONS.md repeats them for scripts).
pub const EXIT_OK: u8 = 0;
pub const EXIT_STORE_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_NO_SUCH_CLAIM: u8 = 3;
pub const EXIT_AMBIGUOUS: u8 = 4;

pub const EXIT_CODES: &str = "Exit codes:\n  \
0  success (also an empty `list`)\n  \
1  the claim store failed (one line on stderr)\n  \
2  usage: unknown flag, missing or malformed argument (the message names it)\n  \
3  no such claim: `get` or `release` found no claim of that delivery (one line on stderr)\n  \
4  ambiguous: `release` matched more than one claim; nothing was deleted";

/// dedupe-claims: who holds a delivery, and releasing a claim by hand.
///
/// Reads the claims table of orchestration-dedupe (the same store flags and environment as
/// dedupe-admission and dedupe-pruner) and never migrates it. In a cluster, run it in the
/// webhook's pod: `kubectl exec deploy/<release>-orchestration-dedupe-admission -- dedupe-claims get ID`,
/// or `kubectl dedupe get ID` with the plugin.
#[derive(Debug, Clone, Parser)]
// A flag given twice takes the last value: the kubectl plugin passes the pruner's
// --retention-days first, and the operator's own still wins.
#[command(name = "dedupe-claims", version, after_help = EXIT_CODES, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub store: StoreFlags,

    /// Output format: a table for people (one line per claim, nothing cut), `wide` for more
    /// columns, `name` for `claim/DELIVERY_ID` lines, or JSON / YAML for scripts (the same
    /// document, documented in docs/OPERATIONS.md; fields are only ever added).
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,

    /// Tables without their header line (as kubectl's --no-headers).
    #[arg(long, global = true)]
    pub no_headers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One line per claim: DELIVERY, SCOPE, STATE, RUN, AGE.
    Table,
    /// The table plus ORCHESTRATION, RUN-UID, IDLE, ADMISSIONS, TAKEOVERS, PRUNED-AFTER.
    Wide,
    /// `claim/DELIVERY_ID`, one line per claim (`get`, `list`).
    Name,
    Json,
    Yaml,
}

/// The CLI's store flags: the shared group ([`StoreArgs`], with this binary's timeout and
/// help texts) plus the two windows claims are read against. Global, so they may stand
/// before or after the command.
#[derive(Debug, Clone, ClapArgs)]
pub struct StoreFlags {
    #[command(flatten)]
    pub connection: StoreArgs<ClaimsStoreFlags>,

    /// The pruner's retention window in days: when `get` says a claim will be pruned, and what
    /// `stats` counts as past retention. Set it as the pruner has it (the chart's retentionDays).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_RETENTION_DAYS", default_value_t = DEFAULT_RETENTION_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500), global = true)]
    pub retention_days: u32,

    /// The webhook's pending grace period in seconds: a pending claim idle longer is one the
    /// next create of its delivery may take over (1 to 31536000, as the webhook accepts).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PENDING_GRACE_SECONDS", default_value_t = DEFAULT_PENDING_GRACE_SECONDS, value_parser = clap::value_parser!(u64).range(1..=MAX_PENDING_GRACE_SECONDS), global = true)]
    pub pending_grace_seconds: u64,

    /// The CLI never migrates; `skip` is the only value, accepted so that the same flags work
    /// for all three binaries. (Its environment variable is not read: in the webhook's pod it
    /// says `apply`, for the webhook.)
    #[arg(long, value_enum, default_value_t = NeverMigrate::Skip, global = true)]
    pub migrations: NeverMigrate,
}

/// The connection flags are read as the store's own (`cli.store.database_url`).
impl std::ops::Deref for StoreFlags {
    type Target = StoreArgs<ClaimsStoreFlags>;

    fn deref(&self) -> &Self::Target {
        &self.connection
    }
}

impl std::ops::DerefMut for StoreFlags {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.connection
    }
}

/// The CLI's store flags: one connection, a longer timeout than the webhook's (`stats`
/// counts the whole table), its own environment variable for it, no TCP tuning, and a
/// connection string checked when the command runs rather than by clap (so `--help` and
/// usage errors need none).
#[derive(Debug, Clone, Copy)]
pub struct ClaimsStoreFlags;

impl StoreFlagDefaults for ClaimsStoreFlags {
    const STORE_TIMEOUT_ENV: &'static str = "JANGAR_ORCHESTRATION_DEDUPE_CLAIMS_STORE_TIMEOUT_MS";
    const STORE_TIMEOUT_MS: u64 = DEFAULT_STORE_TIMEOUT_MS;
    const STORE_TIMEOUT_MAX_MS: Option<u64> = Some(MAX_STORE_TIMEOUT_MS);
    const STORE_TIMEOUT_HELP: &'static str = "Bound on each store call, in milliseconds";
    const POOL_SIZE: PoolSize = PoolSize::Fixed(POOL_SIZE);
    const TCP_FLAGS: bool = false;
    const DATABASE_URL_REQUIRED: bool = false;
    const DATABASE_URL_HELP: &'static str = "PostgreSQL connection string (URL or key=value form). Required";
    const DATABASE_CA_HELP: &'static str = "CA bundle (PEM) that PostgreSQL's server certificate must chain to (and name the host); unset = encrypt when the server offers TLS, without verifying (as the other binaries)";
    const GLOBAL: bool = true;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NeverMigrate {
    /// Assume the schema is in place (dedupe-admission or dedupe-pruner applies it).
    Skip,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Every claim of one delivery, in any scope, one line each (`-o wide` for more columns).
    Get {
        /// The delivery id (the run's `jangar.proompteng.ai/delivery-id` label value), or
        /// `claim/DELIVERY_ID` as `-o name` prints it.
        #[arg(value_parser = parse_delivery_id)]
        delivery_id: String,
    },
    /// Every claim of one delivery in detail: key, holder, state, times, counters, and when
    /// the pruner removes it.
    Describe {
        /// The delivery id, or `claim/DELIVERY_ID`.
        #[arg(value_parser = parse_delivery_id)]
        delivery_id: String,
    },
    /// Claims, newest first, filtered, one line each. When --limit cuts the list, stderr
    /// (or the JSON's `continue`) gives a token: pass it as --continue for the next page.
    List {
        /// Only claims in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only claims claimed longer ago than this: `90s`, `2m`, `12h`, `7d`, `1w`, `1h30m`
        /// (at most 36500d).
        #[arg(long, value_name = "DURATION", value_parser = human::parse_age)]
        older_than: Option<Duration>,
        /// Only claims whose run is in this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Only claims keyed by this orchestration (`spec.orchestrationRef.name`; only scope
        /// `orchestration` records it).
        #[arg(long)]
        orchestration: Option<String>,
        /// Show at most this many claims (says so when the limit cut the list).
        #[arg(long, default_value_t = DEFAULT_LIST_LIMIT, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LIST_LIMIT)))]
        limit: u32,
        /// Start after the page that printed this token (same filters, to walk all claims).
        #[arg(long = "continue", value_name = "TOKEN", value_parser = token::parse)]
        continue_after: Option<ListCursor>,
    },
    /// Release one claim, so that the next create of the delivery makes a new run. Without
    /// --yes, shows what it would delete and deletes nothing.
    Release {
        /// The delivery id, or `claim/DELIVERY_ID`.
        #[arg(value_parser = parse_delivery_id)]
        delivery_id: String,
        /// The claim's scope, when the delivery has claims in several.
        #[arg(long, value_enum)]
        scope: Option<ClaimScope>,
        /// The key's namespace (`''` in scope cluster).
        #[arg(long)]
        namespace: Option<String>,
        /// The key's orchestration (`''` in scopes namespace and cluster).
        #[arg(long)]
        orchestration: Option<String>,
        /// Delete it: exactly one claim, in one transaction; refused when more than one matches.
        #[arg(long)]
        yes: bool,
    },
    /// Claims by scope and state, the oldest claim, the pruner's backlog, pending claims past
    /// the grace period, the table's size on disk and the schema version.
    Stats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Pending,
    Confirmed,
}

impl From<StateArg> for ClaimState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Pending => ClaimState::Pending,
            StateArg::Confirmed => ClaimState::Confirmed,
        }
    }
}

/// What `-o name` puts before a delivery id.
pub const NAME_PREFIX: &str = "claim/";

/// A delivery id is a label value: the same rule the webhook applies. `claim/ID` (what
/// `-o name` prints) is accepted too, so `list -o name | xargs -n1 dedupe-claims get` works.
fn parse_delivery_id(value: &str) -> Result<String, String> {
    let value = value.strip_prefix(NAME_PREFIX).unwrap_or(value);
    match dedupe_store::run::label_value_problem(value) {
        None => Ok(value.to_owned()),
        Some(problem) => Err(format!("not a delivery id (a label value): {problem}")),
    }
}

/// What a command asks of the store, validated.
#[derive(Debug, Clone)]
pub enum Request {
    Get {
        delivery_id: String,
    },
    Describe {
        delivery_id: String,
    },
    List(ListFilter),
    Release {
        delivery_id: String,
        selector: KeySelector,
        yes: bool,
    },
    Stats,
}

/// Everything the CLI needs, validated once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreConfig,
    pub format: Format,
    pub headers: bool,
    pub retention_days: u32,
    pub pending_grace: Duration,
    pub request: Request,
}

impl Settings {
    /// Validates what clap cannot (a missing or malformed connection string), naming the flag.
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let store = cli.store.to_config()?;
        let request = match &cli.command {
            Command::Get { delivery_id } => Request::Get {
                delivery_id: delivery_id.clone(),
            },
            Command::Describe { delivery_id } => Request::Describe {
                delivery_id: delivery_id.clone(),
            },
            Command::List {
                state,
                older_than,
                namespace,
                orchestration,
                limit,
                continue_after,
            } => Request::List(ListFilter {
                state: state.map(ClaimState::from),
                older_than: *older_than,
                run_namespace: namespace.clone(),
                orchestration: orchestration.clone(),
                limit: *limit,
                after: continue_after.clone(),
            }),
            Command::Release {
                delivery_id,
                scope,
                namespace,
                orchestration,
                yes,
            } => Request::Release {
                delivery_id: delivery_id.clone(),
                selector: KeySelector {
                    scope: *scope,
                    namespace: namespace.clone(),
                    orchestration: orchestration.clone(),
                },
                yes: *yes,
            },
            Command::Stats => Request::Stats,
        };
        if cli.output == Format::Name && !matches!(request, Request::Get { .. } | Request::List(_)) {
            return Err(ConfigError::Invalid {
                flag: "--output (-o)",
                reason: "`name` is for `get` and `list` (the others print no claim list): use table, wide, json or yaml".into(),
            });
        }
        Ok(Self {
            store,
            format: cli.output,
            headers: !cli.no_headers,
            retention_days: cli.store.retention_days,
            pending_grace: Duration::from_secs(cli.store.pending_grace_seconds),
            request,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dedupe-claims").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_the_documented_ones() -> Result<(), clap::Error> {
        let cli = parse(&["stats", "--database-url", "postgres://h/db"])?;
        assert_eq!(cli.output, Format::Table);
        assert_eq!(cli.store.retention_days, 7);
        assert_eq!(cli.store.pending_grace_seconds, 120);
        assert_eq!(cli.store.store_timeout_ms, DEFAULT_STORE_TIMEOUT_MS);
        assert_eq!(cli.store.migrations, NeverMigrate::Skip);
        let cli = parse(&["list"])?;
        assert!(matches!(cli.command, Command::List { limit: 100, .. }));
        assert!(!cli.no_headers);
        Ok(())
    }

    #[test]
    fn names_as_o_name_prints_them_are_delivery_ids() -> Result<(), clap::Error> {
        let cli = parse(&["release", "claim/d-1", "--yes"])?;
        assert!(matches!(cli.command, Command::Release { ref delivery_id, .. } if delivery_id == "d-1"));
        let cli = parse(&["describe", "claim/d-2"])?;
        assert!(matches!(cli.command, Command::Describe { ref delivery_id } if delivery_id == "d-2"));
        Ok(())
    }

    #[test]
    fn output_name_is_only_for_claim_lists() -> Result<(), clap::Error> {
        for (args, ok) in [
            (&["get", "d", "-o", "name"][..], true),
            (&["list", "-o", "name"][..], true),
            (&["stats", "-o", "name"][..], false),
            (&["describe", "d", "-o", "name"][..], false),
            (&["release", "d", "-o", "name"][..], false),
        ] {
            let cli = parse(&[args, &["--database-url", "postgres://h/db"]].concat())?;
            let result = Settings::from_cli(&cli);
            assert_eq!(result.is_ok(), ok, "{args:?}");
            if let Err(e) = result {
                assert!(e.to_string().contains("--output"), "{e}");
            }
        }
        Ok(())
    }

    #[test]
    fn store_flags_and_output_go_before_or_after_the_command() -> Result<(), clap::Error> {
        let a = parse(&["-o", "json", "--database-url", "postgres://h/db", "get", "d1"])?;
        let b = parse(&["get", "d1", "--database-url", "postgres://h/db", "-o", "json"])?;
        assert_eq!(a.output, Format::Json);
        assert_eq!(a.store.database_url, b.store.database_url);
        assert_eq!(b.output, Format::Json);
        Ok(())
    }

    #[test]
    fn a_flag_given_twice_takes_the_last_value() -> Result<(), clap::Error> {
        let cli = parse(&["--retention-days", "30", "get", "d1", "--retention-days", "9"])?;
        assert_eq!(cli.store.retention_days, 9);
        Ok(())
    }

    #[test]
    fn malformed_delivery_ids_are_usage_errors_naming_the_argument() {
        for bad in ["", "-x", "has space", &"x".repeat(64)] {
            let err = parse(&["get", "--", bad]).err();
            assert_eq!(err.as_ref().map(clap::Error::exit_code), Some(2), "{bad:?}");
            let text = err.map(|e| e.to_string()).expect("an error");
            assert!(text.contains("DELIVERY_ID"), "{bad:?}: {text}");
        }
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["list", "--limit", "0"][..], "--limit"),
            (&["list", "--state", "gone"][..], "--state"),
            (&["list", "--older-than", "7x"][..], "--older-than"),
            (&["release", "d1", "--scope", "global"][..], "--scope"),
            (&["stats", "--migrations", "apply"][..], "--migrations"),
            (&["stats", "-o", "xml"][..], "--output"),
            (&["list", "--continue", "nope"][..], "--continue"),
        ] {
            let err = parse(args).err();
            assert_eq!(err.as_ref().map(clap::Error::exit_code), Some(2), "{args:?}");
            let text = err.map(|e| e.to_string()).expect("an error");
            assert!(text.contains(flag), "{args:?}: {text}");
        }
        let err = parse(&["stats", "--frobnicate"]).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::UnknownArgument));
    }

    #[test]
    fn a_missing_database_url_names_the_flag() -> Result<(), clap::Error> {
        let mut cli = parse(&["stats"])?;
        // As if DATABASE_URL were unset (make test sets it for the whole run).
        cli.store.database_url = None;
        let err = Settings::from_cli(&cli)
            .err()
            .map(|e| e.to_string())
            .expect("an error");
        assert!(err.contains("--database-url (DATABASE_URL)"), "{err}");
        Ok(())
    }

    #[test]
    fn help_documents_every_exit_code() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for code in [
            "0  success",
            "1  the claim store failed",
            "2  usage",
            "3  no such claim",
            "4  ambiguous",
        ] {
            assert!(help.contains(code), "missing {code:?} in\n{help}");
        }
    }
}
