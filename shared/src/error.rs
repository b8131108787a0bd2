//! Error types of the shared crate.

use std::time::Duration;

/// A configuration value that cannot be used; names the flag and its environment variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

/// A failure talking to the claim store. Every variant means "no decision could be made":
/// the webhook answers 503 so the API server applies its failurePolicy.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("claim store did not answer within {0:?}")]
    Timeout(Duration),
    /// No usable connection: none could be made or taken from the pool, or the one in use
    /// was lost (closed, I/O error). Worth retrying once the store is back.
    #[error("claim store unavailable: {0}")]
    Unavailable(String),
    #[error("claim store query failed: {0}")]
    Query(String),
    /// An error the server reported, with its SQLSTATE (`57014` statement timeout, …), so
    /// callers can tell kinds apart without reading the message.
    #[error("claim store query failed: {message} ({code})")]
    Database { code: String, message: String },
    #[error("claim store returned an unexpected row: {0}")]
    UnexpectedRow(String),
    #[error("migration {version} ({name}) failed: {reason}")]
    Migration {
        version: i32,
        name: &'static str,
        reason: String,
    },
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => StoreError::Database {
                code: db.code().code().to_owned(),
                message: format!("{}: {}", db.severity(), db.message()),
            },
            None if is_connection_loss(&e) => StoreError::Unavailable(describe_pg_error(&e)),
            None => StoreError::Query(describe_pg_error(&e)),
        }
    }
}

impl StoreError {
    /// The server's SQLSTATE, when the server reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            StoreError::Database { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Unavailable(describe_pg_error(&e)),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// The session is gone: closed, or the socket failed under it.
fn is_connection_loss(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || std::error::Error::source(e).is_some_and(|source| source.is::<std::io::Error>())
}

/// tokio-postgres' `Display` says only "db error"; the server's message is in the source.
pub(crate) fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// Shows an error with its causes, outermost first, joined by ": ", for logs and messages.
/// The error types here keep a cause as `source()` rather than in their own text, so a
/// plain `{}` shows only the outermost part.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
