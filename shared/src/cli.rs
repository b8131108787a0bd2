//! The command-line flags the binaries share, as clap groups (the `cli` feature): parsed
//! once in each `main` into typed values and passed down.
//!
//! - [`StoreArgs`]: where the store is and how long a call may take, one group for all three
//!   binaries; what differs between them (the timeout's default, range and environment
//!   variable, the pool, the help texts) is the binary's [`StoreFlagDefaults`]. It builds the
//!   [`StoreConfig`] ([`StoreArgs::to_config`]).
//! - [`CommonArgs`]: migrations and log format, for the webhook and the pruner.

#[cfg(test)]
mod tests;

use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::ValueParser;
use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches};

use crate::config::{
    LogFormat, MigrationMode, StoreConfig, TcpHealth, DEFAULT_DATABASE_KEEPALIVE_IDLE_SECONDS,
    DEFAULT_DATABASE_KEEPALIVE_INTERVAL_SECONDS, DEFAULT_DATABASE_KEEPALIVE_RETRIES,
    DEFAULT_DATABASE_TCP_USER_TIMEOUT_MS,
};
use crate::error::ConfigError;

/// Flags the webhook and the pruner take besides the store's: migrations and logging.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Apply the embedded schema migrations at start (under an advisory lock), or skip them.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_MIGRATIONS", value_enum, default_value_t = MigrationMode::Apply)]
    pub migrations: MigrationMode,

    /// Log format.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The ids (and, dashed, the long names) of the store flags, for [`StoreFlagDefaults::HELP_PLACEMENT`].
pub mod ids {
    pub const DATABASE_URL: &str = "database_url";
    pub const DATABASE_CA: &str = "database_ca";
    pub const STORE_TIMEOUT_MS: &str = "store_timeout_ms";
    pub const POOL_SIZE: &str = "pool_size";
    pub const KEEPALIVE_IDLE_SECONDS: &str = "database_keepalive_idle_seconds";
    pub const KEEPALIVE_INTERVAL_SECONDS: &str = "database_keepalive_interval_seconds";
    pub const KEEPALIVE_RETRIES: &str = "database_keepalive_retries";
    pub const TCP_USER_TIMEOUT_MS: &str = "database_tcp_user_timeout_ms";
}

/// Largest `--pool-size` accepted: far past what one replica's claims need, and a bound on
/// how many backends one replica can hold.
pub const MAX_POOL_SIZE: usize = 1024;

/// How many connections a binary's pool holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSize {
    /// Always this many (no flag).
    Fixed(usize),
    /// `--pool-size` with this environment variable and default (1 to [`MAX_POOL_SIZE`]).
    Flag {
        env: &'static str,
        default: usize,
        help: &'static str,
    },
}

/// What the store flags of one binary are: the parts that differ between the webhook, the
/// pruner and `dedupe-claims`. Implemented by a unit type per binary.
pub trait StoreFlagDefaults {
    /// The environment variable of `--store-timeout-ms` (each binary has its own, so that
    /// they can differ in one pod's environment).
    const STORE_TIMEOUT_ENV: &'static str;
    /// The default of `--store-timeout-ms`.
    const STORE_TIMEOUT_MS: u64;
    /// The largest `--store-timeout-ms` accepted (`None`: any).
    const STORE_TIMEOUT_MAX_MS: Option<u64>;
    /// What `--store-timeout-ms` bounds, as `--help` says it.
    const STORE_TIMEOUT_HELP: &'static str;
    /// The pool: fixed, or `--pool-size`.
    const POOL_SIZE: PoolSize;
    /// Whether the TCP keepalive and user-timeout flags are offered (without them: the
    /// defaults).
    const TCP_FLAGS: bool = true;
    /// Whether clap itself requires `--database-url` (else [`StoreArgs::to_config`] does).
    const DATABASE_URL_REQUIRED: bool = true;
    /// `--database-url`'s help.
    const DATABASE_URL_HELP: &'static str = "PostgreSQL connection string (URL or key=value form)";
    /// `--database-ca`'s help.
    const DATABASE_CA_HELP: &'static str = "CA bundle (PEM) that PostgreSQL's server certificate must chain to (and name the host); unset = encrypt when the server offers TLS (`sslmode` prefer/require) without verifying, as libpq does without a root certificate";
    /// The flags may stand before or after a subcommand.
    const GLOBAL: bool = false;
    /// The sessions' `application_name` unless the connection string names one (`None`:
    /// the store's own).
    const APPLICATION_NAME: Option<&'static str> = None;
    /// Where `--help` lists a store flag among the binary's own: `(store flag id, listed
    /// right after this flag id)`; flags not named here are listed where the group is
    /// flattened. The binaries' help keeps the order their operators and docs know.
    const HELP_PLACEMENT: &'static [(&'static str, &'static str)] = &[];
}

/// The store flags: `--database-url`, `--database-ca`, `--store-timeout-ms`, `--pool-size`
/// (if the binary has it) and the TCP dead-peer flags (if it has them). Flatten it into a
/// binary's clap `Parser`; [`StoreArgs::to_config`] validates and builds the store's config.
pub struct StoreArgs<B> {
    /// `None` only where clap does not require it ([`StoreFlagDefaults::DATABASE_URL_REQUIRED`]).
    pub database_url: Option<String>,
    pub database_ca: Option<PathBuf>,
    pub store_timeout_ms: u64,
    pub pool_size: usize,
    pub tcp_health: TcpHealth,
    defaults: PhantomData<fn() -> B>,
}

impl<B> Clone for StoreArgs<B> {
    fn clone(&self) -> Self {
        Self {
            database_url: self.database_url.clone(),
            database_ca: self.database_ca.clone(),
            store_timeout_ms: self.store_timeout_ms,
            pool_size: self.pool_size,
            tcp_health: self.tcp_health,
            defaults: PhantomData,
        }
    }
}

impl<B> std::fmt::Debug for StoreArgs<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string can carry a password.
        f.debug_struct("StoreArgs")
            .field("database_ca", &self.database_ca)
            .field("store_timeout_ms", &self.store_timeout_ms)
            .field("pool_size", &self.pool_size)
            .field("tcp_health", &self.tcp_health)
            .finish_non_exhaustive()
    }
}

impl<B: StoreFlagDefaults> StoreArgs<B> {
    /// The bound on each store call.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms)
    }

    /// Validates what clap cannot (the connection string, the CA bundle), naming the
    /// offending flag, and builds the store's settings.
    pub fn to_config(&self) -> Result<StoreConfig, ConfigError> {
        let url = self.database_url.as_deref().ok_or_else(|| ConfigError::Invalid {
            flag: "--database-url (DATABASE_URL)",
            reason: "is required".into(),
        })?;
        let mut config = StoreConfig::new(url, self.pool_size, self.timeout())?
            .with_database_ca(self.database_ca.as_deref())?
            .with_tcp_health(self.tcp_health);
        if let Some(name) = B::APPLICATION_NAME {
            if config.database.get_application_name().is_none() {
                config.database.application_name(name);
            }
        }
        Ok(config)
    }

    /// The flags, in the group's own order.
    fn args() -> Vec<Arg> {
        let timeout_range = match B::STORE_TIMEOUT_MAX_MS {
            Some(max) => clap::value_parser!(u64).range(1..=max),
            None => clap::value_parser!(u64).range(1..),
        };
        let mut args = vec![
            Arg::new(ids::DATABASE_URL)
                .long("database-url")
                .env("DATABASE_URL")
                .hide_env_values(true)
                .value_name("URL")
                .required(B::DATABASE_URL_REQUIRED)
                .action(ArgAction::Set)
                .value_parser(clap::value_parser!(String))
                .help(B::DATABASE_URL_HELP),
            Arg::new(ids::DATABASE_CA)
                .long("database-ca")
                .env("JANGAR_ORCHESTRATION_DEDUPE_DATABASE_CA")
                .value_name("PEM_FILE")
                .action(ArgAction::Set)
                .value_parser(clap::value_parser!(PathBuf))
                .help(B::DATABASE_CA_HELP),
            valued(ids::STORE_TIMEOUT_MS, B::STORE_TIMEOUT_MS)
                .env(B::STORE_TIMEOUT_ENV)
                .value_parser(timeout_range)
                .help(B::STORE_TIMEOUT_HELP),
        ];
        if let PoolSize::Flag { env, default, help } = B::POOL_SIZE {
            args.push(
                valued(ids::POOL_SIZE, default)
                    .env(env)
                    .value_parser(ValueParser::new(parse_pool_size))
                    .help(help),
            );
        }
        if B::TCP_FLAGS {
            args.extend(tcp_flags());
        }
        if B::GLOBAL {
            args = args.into_iter().map(|arg| arg.global(true)).collect();
        }
        args
    }
}

/// The dead-peer detection flags.
fn tcp_flags() -> [Arg; 4] {
    let env = |id: &str| format!("JANGAR_ORCHESTRATION_DEDUPE_{}", id.to_ascii_uppercase());
    [
        valued(ids::KEEPALIVE_IDLE_SECONDS, DEFAULT_DATABASE_KEEPALIVE_IDLE_SECONDS)
            .env(env(ids::KEEPALIVE_IDLE_SECONDS))
            .value_parser(clap::value_parser!(u64).range(1..=86_400))
            .help("Seconds a store connection may be idle before TCP keepalive probes start (a `keepalives_idle` in the connection string wins)"),
        valued(ids::KEEPALIVE_INTERVAL_SECONDS, DEFAULT_DATABASE_KEEPALIVE_INTERVAL_SECONDS)
            .env(env(ids::KEEPALIVE_INTERVAL_SECONDS))
            .value_parser(clap::value_parser!(u64).range(1..=3_600))
            .help("Seconds between unanswered TCP keepalive probes (`keepalives_interval` in the connection string wins)"),
        valued(ids::KEEPALIVE_RETRIES, DEFAULT_DATABASE_KEEPALIVE_RETRIES)
            .env(env(ids::KEEPALIVE_RETRIES))
            .value_parser(clap::value_parser!(u32).range(1..=100))
            .help("Unanswered TCP keepalive probes before a store connection is closed (`keepalives_retries` in the connection string wins)"),
        valued(ids::TCP_USER_TIMEOUT_MS, DEFAULT_DATABASE_TCP_USER_TIMEOUT_MS)
            .env(env(ids::TCP_USER_TIMEOUT_MS))
            .value_parser(clap::value_parser!(u64).range(0..=3_600_000))
            .help("TCP user timeout of store connections in milliseconds: sent data unacknowledged this long closes the connection (Linux; 0 = the system default; `tcp_user_timeout` in the connection string wins)"),
    ]
}

/// A flag taking one value, with a default, named as clap's derive names a field `id`:
/// `--id-with-dashes <ID_IN_CAPITALS>`.
fn valued(id: &'static str, default: impl ToString) -> Arg {
    Arg::new(id)
        .long(id.replace('_', "-"))
        .value_name(id.to_ascii_uppercase())
        .default_value(default.to_string())
        .action(ArgAction::Set)
}

fn parse_pool_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_POOL_SIZE).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a pool size between 1 and {MAX_POOL_SIZE}")),
    }
}

impl<B: StoreFlagDefaults> clap::Args for StoreArgs<B> {
    fn augment_args(cmd: Command) -> Command {
        let args = Self::args();
        if B::HELP_PLACEMENT.is_empty() {
            return cmd.args(args);
        }
        let order = help_order(&cmd, &args, B::HELP_PLACEMENT);
        let place = |arg: Arg| match order.iter().position(|id| id == arg.get_id().as_str()) {
            Some(i) => arg.display_order(i),
            None => arg,
        };
        // Positions for the command's own flags too: they are renumbered around the store's.
        cmd.mut_args(place).args(args.into_iter().map(place))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// The order `--help` lists the command's options and the store flags in: the command's
/// own in their order, each store flag right after the one `placement` names, the rest of
/// the store flags last.
fn help_order(cmd: &Command, store: &[Arg], placement: &[(&str, &str)]) -> Vec<String> {
    let mut own: Vec<&Arg> = cmd.get_arguments().filter(|a| !a.is_positional()).collect();
    own.sort_by_key(|a| a.get_display_order());
    let anchor_of = |id: &str| {
        placement
            .iter()
            .find(|(flag, _)| *flag == id)
            .map(|(_, anchor)| *anchor)
            .filter(|anchor| own.iter().any(|a| a.get_id() == *anchor))
    };
    let mut order = Vec::with_capacity(own.len() + store.len());
    for arg in &own {
        order.push(arg.get_id().to_string());
        for flag in store {
            if anchor_of(flag.get_id().as_str()) == Some(arg.get_id().as_str()) {
                order.push(flag.get_id().to_string());
            }
        }
    }
    for flag in store {
        if anchor_of(flag.get_id().as_str()).is_none() {
            order.push(flag.get_id().to_string());
        }
    }
    order
}

impl<B: StoreFlagDefaults> FromArgMatches for StoreArgs<B> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Self::from_arg_matches_mut(&mut matches.clone())
    }

    fn from_arg_matches_mut(matches: &mut ArgMatches) -> Result<Self, clap::Error> {
        let pool_size = match B::POOL_SIZE {
            PoolSize::Fixed(n) => n,
            PoolSize::Flag { default, .. } => take(matches, ids::POOL_SIZE)?.unwrap_or(default),
        };
        let defaults = TcpHealth::default();
        let tcp_health = if B::TCP_FLAGS {
            TcpHealth {
                keepalive_idle: take(matches, ids::KEEPALIVE_IDLE_SECONDS)?
                    .map_or(defaults.keepalive_idle, Duration::from_secs),
                keepalive_interval: take(matches, ids::KEEPALIVE_INTERVAL_SECONDS)?
                    .map_or(defaults.keepalive_interval, Duration::from_secs),
                keepalive_retries: take(matches, ids::KEEPALIVE_RETRIES)?
                    .unwrap_or(defaults.keepalive_retries),
                user_timeout: take(matches, ids::TCP_USER_TIMEOUT_MS)?
                    .map_or(defaults.user_timeout, Duration::from_millis),
            }
        } else {
            defaults
        };
        Ok(Self {
            database_url: take(matches, ids::DATABASE_URL)?,
            database_ca: take(matches, ids::DATABASE_CA)?,
            store_timeout_ms: take(matches, ids::STORE_TIMEOUT_MS)?.unwrap_or(B::STORE_TIMEOUT_MS),
            pool_size,
            tcp_health,
            defaults: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.update_from_arg_matches_mut(&mut matches.clone())
    }

    fn update_from_arg_matches_mut(&mut self, matches: &mut ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches_mut(matches)?;
        Ok(())
    }
}

/// The value of flag `id`, as its value parser made it.
fn take<T: Clone + Send + Sync + 'static>(
    matches: &mut ArgMatches,
    id: &str,
) -> Result<Option<T>, clap::Error> {
    matches
        .try_remove_one::<T>(id)
        .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("--{id}: {e}\n")))
}
