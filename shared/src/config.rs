//! Configuration the binaries share, as typed values and the defaults they start from. The
//! flags that fill them are in `cli.rs` (the `cli` feature): parsed once in `main`, passed
//! down. Nothing below `main` reads the environment.

use std::str::FromStr;
use std::time::Duration;

use crate::error::ConfigError;

/// Default pending grace period: longer than the API server's request timeout (60 s), so a
/// create still in flight is never mistaken for one that failed.
pub const DEFAULT_PENDING_GRACE_SECONDS: u64 = 120;
/// Longest pending grace period accepted (365 days): far past any create still in flight and
/// past any sane retention window, and small enough that a claim's time plus the grace is
/// always a date (a larger one is refused at start, naming the flag).
pub const MAX_PENDING_GRACE_SECONDS: u64 = 365 * 86_400;
/// Default retention of claims before the pruner deletes them.
pub const DEFAULT_RETENTION_DAYS: u32 = 7;

// Dead-peer detection on store connections (failover). A node lost behind one address (a
// Kubernetes Service) sends no FIN or RST: without these, an idle pooled connection to it
// looks healthy until the kernel's defaults give up (2 h idle + 9 probes; ~15 min of
// retransmissions for unacknowledged data). With them, an idle dead connection is closed
// after idle + interval × retries = 5 + 2 × 3 = 11 s, and one with unacknowledged data after
// the user timeout; deadpool's recycle then sees it closed and opens a new one. A call that
// hits a dead connection first is bounded by the store timeout and discards it anyway
// (see `store::Checkout`).
/// Default seconds a store connection may be idle before TCP keepalive probes start.
pub const DEFAULT_DATABASE_KEEPALIVE_IDLE_SECONDS: u64 = 5;
/// Default seconds between unanswered TCP keepalive probes.
pub const DEFAULT_DATABASE_KEEPALIVE_INTERVAL_SECONDS: u64 = 2;
/// Default unanswered TCP keepalive probes before the connection is closed.
pub const DEFAULT_DATABASE_KEEPALIVE_RETRIES: u32 = 3;
/// Default TCP user timeout (Linux `TCP_USER_TIMEOUT`): how long sent data may stay
/// unacknowledged before the connection is closed. Longer than the webhook's store timeout
/// (that call is discarded first anyway) and short enough that the pruner's lock session or
/// a migration notice a lost node within seconds.
pub const DEFAULT_DATABASE_TCP_USER_TIMEOUT_MS: u64 = 10_000;

/// Whether to apply the embedded migrations at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum MigrationMode {
    /// Apply pending migrations under an advisory lock (safe with many replicas).
    #[default]
    Apply,
    /// Assume the schema is in place (e.g. migrations run by a separate Job).
    Skip,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// TCP keepalive and user timeout of store connections: how fast a silent peer (a node lost
/// behind a Service: no FIN, no RST) is noticed. Parameters the connection string sets win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHealth {
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_retries: u32,
    /// Zero leaves the system default.
    pub user_timeout: Duration,
}

impl Default for TcpHealth {
    fn default() -> Self {
        Self {
            keepalive_idle: Duration::from_secs(DEFAULT_DATABASE_KEEPALIVE_IDLE_SECONDS),
            keepalive_interval: Duration::from_secs(DEFAULT_DATABASE_KEEPALIVE_INTERVAL_SECONDS),
            keepalive_retries: DEFAULT_DATABASE_KEEPALIVE_RETRIES,
            user_timeout: Duration::from_millis(DEFAULT_DATABASE_TCP_USER_TIMEOUT_MS),
        }
    }
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
    /// Dead-peer detection on every store connection (defaults unless `with_tcp_health`).
    pub tcp_health: TcpHealth,
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
            reason: match unsupported_sslmode(database_url) {
                Some(mode) => format!(
                    "sslmode={mode} is libpq's, and this client (tokio-postgres) knows only disable, prefer and require: \
                     to verify the server's certificate, set --database-ca (JANGAR_ORCHESTRATION_DEDUPE_DATABASE_CA) to the CA bundle \
                     (it verifies the chain and the host name, as verify-full does, and requires TLS) and drop sslmode or use sslmode=require"
                ),
                None => format!("not a valid PostgreSQL connection string: {e}"),
            },
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
            tcp_health: TcpHealth::default(),
        })
    }

    /// Use these keepalive / user-timeout settings (from `CommonArgs::tcp_health`).
    pub fn with_tcp_health(mut self, tcp_health: TcpHealth) -> Self {
        self.tcp_health = tcp_health;
        self
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

/// libpq's verifying sslmodes, which tokio-postgres refuses as an "invalid connection string"
/// without saying which part.
fn unsupported_sslmode(database_url: &str) -> Option<&'static str> {
    let lower = database_url.to_ascii_lowercase();
    ["verify-full", "verify-ca"]
        .into_iter()
        .find(|mode| lower.contains(&format!("sslmode={mode}")))
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection config's Debug would print the password.
        f.debug_struct("StoreConfig")
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("tcp_health", &self.tcp_health)
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
            .expect("an error");
        assert!(err.contains("--database-url (DATABASE_URL)"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn verify_full_points_at_database_ca() {
        for url in [
            "postgres://u:s3cret@h/db?sslmode=verify-full",
            "host=h password=s3cret sslmode=verify-ca",
        ] {
            let err = StoreConfig::new(url, 4, Duration::from_secs(1))
                .err()
                .map(|e| e.to_string())
                .expect("an error");
            assert!(
                err.contains("--database-ca") && err.contains("sslmode=verify-"),
                "{err}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
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
        assert!(e.expect("an error").contains("--pool-size"));
        let e = StoreConfig::new("postgres://h/db", 1, Duration::ZERO)
            .err()
            .map(|e| e.to_string());
        assert!(e.expect("an error").contains("--store-timeout-ms"));
    }
}
