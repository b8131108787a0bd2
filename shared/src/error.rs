//! Error types of the shared crate.

use std::time::Duration;

/// A configuration value that cannot be used; names the flag and its environment variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

/// The cause of a store error as the driver or pool reported it (also plain text, for an
/// error this crate finds itself): kept as `source()`, shown with [`Chain`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure talking to the claim store. Every variant means "no decision could be made":
/// the webhook answers 503 so the API server applies its failurePolicy. The cause is the
/// error's `source()`, not part of its own text: show it whole with [`Chain`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("claim store did not answer within {0:?}")]
    Timeout(Duration),
    /// No usable connection: none could be made or taken from the pool, or the one in use
    /// was lost (closed, I/O error). Worth retrying once the store is back.
    #[error("claim store unavailable")]
    Unavailable(#[source] Cause),
    #[error("claim store query failed")]
    Query(#[source] Cause),
    /// An error the server reported, with its SQLSTATE (`57014` statement timeout, …), so
    /// callers can tell kinds apart without reading the message.
    #[error("claim store query failed ({code})")]
    Database {
        code: String,
        #[source]
        source: Cause,
    },
    #[error("claim store returned an unexpected row: {0}")]
    UnexpectedRow(String),
    #[error("migration {version} ({name}) failed")]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: Cause,
    },
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => StoreError::Database {
                code: db.code().code().to_owned(),
                source: Box::new(e),
            },
            None if is_connection_loss(&e) => StoreError::Unavailable(Box::new(e)),
            None => StoreError::Query(Box::new(e)),
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
        StoreError::Unavailable(Box::new(e))
    }
}

/// The session is gone: closed, or the socket failed under it.
fn is_connection_loss(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || std::error::Error::source(e).is_some_and(|source| source.is::<std::io::Error>())
}

/// Shows an error with its causes, outermost first, joined by ": ", for logs and messages.
/// The error types here keep a cause as `source()` rather than in their own text, so a
/// plain `{}` shows only the outermost part. Some libraries (tokio-postgres, deadpool) do
/// both; a cause their text already ends with is not repeated.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !shown.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_shows_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = StoreError::Unavailable(Box::new(io));
        assert_eq!(Chain(&e).to_string(), "claim store unavailable: refused");

        /// Says its cause in its own text and returns it as the source, as tokio-postgres does.
        #[derive(Debug)]
        struct Both(std::io::Error);
        impl std::fmt::Display for Both {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "error connecting to server: {}", self.0)
            }
        }
        impl std::error::Error for Both {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let both = Both(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        let e = StoreError::Unavailable(Box::new(both));
        assert_eq!(
            Chain(&e).to_string(),
            "claim store unavailable: error connecting to server: refused"
        );
    }
}
