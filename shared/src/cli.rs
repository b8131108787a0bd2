//! The command-line flags the binaries share, as clap groups (the `cli` feature): parsed
//! once in each `main` into typed values and passed down.

use std::time::Duration;

use crate::config::{
    LogFormat, MigrationMode, TcpHealth, DEFAULT_DATABASE_KEEPALIVE_IDLE_SECONDS,
    DEFAULT_DATABASE_KEEPALIVE_INTERVAL_SECONDS, DEFAULT_DATABASE_KEEPALIVE_RETRIES,
    DEFAULT_DATABASE_TCP_USER_TIMEOUT_MS,
};

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

    /// Seconds a store connection may be idle before TCP keepalive probes start (a
    /// `keepalives_idle` in the connection string wins).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_DATABASE_KEEPALIVE_IDLE_SECONDS", default_value_t = DEFAULT_DATABASE_KEEPALIVE_IDLE_SECONDS, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub database_keepalive_idle_seconds: u64,

    /// Seconds between unanswered TCP keepalive probes (`keepalives_interval` in the
    /// connection string wins).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_DATABASE_KEEPALIVE_INTERVAL_SECONDS", default_value_t = DEFAULT_DATABASE_KEEPALIVE_INTERVAL_SECONDS, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub database_keepalive_interval_seconds: u64,

    /// Unanswered TCP keepalive probes before a store connection is closed
    /// (`keepalives_retries` in the connection string wins).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_DATABASE_KEEPALIVE_RETRIES", default_value_t = DEFAULT_DATABASE_KEEPALIVE_RETRIES, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub database_keepalive_retries: u32,

    /// TCP user timeout of store connections in milliseconds: sent data unacknowledged this
    /// long closes the connection (Linux; 0 = the system default; `tcp_user_timeout` in the
    /// connection string wins).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_DATABASE_TCP_USER_TIMEOUT_MS", default_value_t = DEFAULT_DATABASE_TCP_USER_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub database_tcp_user_timeout_ms: u64,
}

impl CommonArgs {
    /// The dead-peer detection settings these flags ask for.
    pub fn tcp_health(&self) -> TcpHealth {
        TcpHealth {
            keepalive_idle: Duration::from_secs(self.database_keepalive_idle_seconds),
            keepalive_interval: Duration::from_secs(self.database_keepalive_interval_seconds),
            keepalive_retries: self.database_keepalive_retries,
            user_timeout: Duration::from_millis(self.database_tcp_user_timeout_ms),
        }
    }
}
