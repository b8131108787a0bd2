//! Configuration shared by both binaries: parsed once (clap, flags with environment
//! fallbacks) into typed values and passed down. Nothing below `main` reads the environment.

use std::str::FromStr;
use std::time::Duration;

use clap::ValueEnum;

use crate::error::ConfigError;

/// Default per-call store timeout: well under the webhook's `timeoutSeconds` (5 s by default)
/// so a slow store turns into a 503 the API server can act on, not a timed-out call.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 2_000;
/// Default size of the webhook's connection pool (bounded: a stuck store must not grow it).
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Default pending grace period: longer than the API server's request timeout (60 s), so a
/// create still in flight is never mistaken for one that failed.
pub const DEFAULT_PENDING_GRACE_SECONDS: u64 = 120;
/// Default retention of claims before the pruner deletes them.
pub const DEFAULT_RETENTION_DAYS: u32 = 7;

/// Whether to apply the embedded migrations at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum MigrationMode {
    /// Apply pending migrations under an advisory lock (safe with many replicas).
    #[default]
    Apply,
    /// Assume the schema is in place (e.g. migrations run by a separate Job).
    Skip,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Flags both binaries take: the database, migrations and logging.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// PostgreSQL connection string (URL or key=value form).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: String,

    /// Apply the embedded schema migrations at start (under an advisory lock), or skip them.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_MIGRATIONS", value_enum, default_value_t = MigrationMode::Apply)]
    pub migrations: MigrationMode,

    /// CA bundle (PEM) that PostgreSQL's server certificate must chain to (and name the host);
    /// unset = encrypt when the server offers TLS (`sslmode` prefer/require) without verifying,
    /// as libpq does without a root certificate.
    #[arg(
        long,
        env = "JANGAR_ORCHESTRATION_DEDUPE_DATABASE_CA",
        value_name = "PEM_FILE"
    )]
    pub database_ca: Option<std::path::PathBuf>,

    /// Log format.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Validated store settings.
#[derive(Clone)]
pub struct StoreConfig {
    pub database: tokio_postgres::Config,
    /// TLS to PostgreSQL (see `store_tls`); encrypt-only unless a CA bundle is given.
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
    pub pool_size: usize,
    /// Bound on each store call (pool wait + query), and the server-side statement timeout.
    pub timeout: Duration,
}

impl StoreConfig {
    /// Parses the connection string and checks the bounds, naming the offending flag.
    pub fn new(database_url: &str, pool_size: usize, timeout: Duration) -> Result<Self, ConfigError> {
        if database_url.trim().is_empty() {
            return Err(ConfigError::Invalid {
                flag: "--database-url (DATABASE_URL)",
                reason: "is empty".into(),
            });
        }
        // The parser's message never contains the password; the URL itself is not echoed.
        let database = tokio_postgres::Config::from_str(database_url).map_err(|e| ConfigError::Invalid {
            flag: "--database-url (DATABASE_URL)",
            reason: format!("not a valid PostgreSQL connection string: {e}"),
        })?;
        if pool_size == 0 {
            return Err(ConfigError::Invalid {
                flag: "--pool-size (JANGAR_ORCHESTRATION_DEDUPE_POOL_SIZE)",
                reason: "must be at least 1".into(),
            });
        }
        if timeout.is_zero() {
            return Err(ConfigError::Invalid {
                flag: "--store-timeout-ms (JANGAR_ORCHESTRATION_DEDUPE_STORE_TIMEOUT_MS)",
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            database,
            tls: crate::store_tls::connector(None)?,
            pool_size,
            timeout,
        })
    }

    /// Verify PostgreSQL's certificate against the CA bundle at `ca` (PEM).
    ///
    /// A CA means the operator wants a verified connection, so TLS becomes required (like
    /// libpq's `verify-full`): with `sslmode=prefer` a server — or whoever sits in between —
    /// could decline TLS and get a plain-text session. `sslmode=disable` with a CA is a
    /// contradiction and is refused.
    pub fn with_database_ca(mut self, ca: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        if ca.is_none() {
            return Ok(self);
        }
        if self.database.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
            return Err(ConfigError::Invalid {
                flag: "--database-ca (JANGAR_ORCHESTRATION_DEDUPE_DATABASE_CA)",
                reason: "is set, but the connection string says sslmode=disable".into(),
            });
        }
        self.database.ssl_mode(tokio_postgres::config::SslMode::Require);
        self.tls = crate::store_tls::connector(ca)?;
        Ok(self)
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection config's Debug would print the password.
        f.debug_struct("StoreConfig")
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_database_url_names_the_flag_and_hides_the_secret() {
        let err = StoreConfig::new("postgres://u:s3cret@host:notaport/db", 4, Duration::from_secs(1))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--database-url (DATABASE_URL)"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn empty_database_url_is_rejected() {
        assert!(StoreConfig::new("  ", 4, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn zero_bounds_are_rejected_by_name() {
        let e = StoreConfig::new("postgres://h/db", 0, Duration::from_secs(1))
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("--pool-size"));
        let e = StoreConfig::new("postgres://h/db", 1, Duration::ZERO)
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("--store-timeout-ms"));
    }
}
