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

/// Where the claim store is, for messages: each `host:port` (a multi-host URL lists them all),
/// the database and the user — never the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreTarget(std::sync::Arc<str>);

/// PostgreSQL's port when the connection string names none.
const DEFAULT_PORT: u16 = 5432;

impl StoreTarget {
    pub fn of(config: &tokio_postgres::Config) -> Self {
        let ports = config.get_ports();
        let port = |i: usize| match ports {
            [] => DEFAULT_PORT,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(DEFAULT_PORT),
        };
        let mut hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| match host {
                tokio_postgres::config::Host::Tcp(name) if name.contains(':') => {
                    format!("[{name}]:{}", port(i))
                }
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{}", port(i)),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(dir) => {
                    format!("{}/.s.PGSQL.{}", dir.display(), port(i))
                }
            })
            .collect();
        if hosts.is_empty() {
            hosts = config
                .get_hostaddrs()
                .iter()
                .enumerate()
                .map(|(i, addr)| std::net::SocketAddr::new(*addr, port(i)).to_string())
                .collect();
        }
        let mut text = if hosts.is_empty() {
            "(no host in the connection string)".to_owned()
        } else {
            hosts.join(",")
        };
        let detail: Vec<String> = [
            config.get_dbname().map(|d| format!("database {d}")),
            config.get_user().map(|u| format!("user {u}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !detail.is_empty() {
            text.push_str(&format!(" ({})", detail.join(", ")));
        }
        Self(text.into())
    }
}

impl std::fmt::Display for StoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A store failure said once, for an operator: where (the [`StoreTarget`]), the root cause
/// (the innermost error's text only: the layers above it repeat it), and what to do. Has no
/// `source()`, so [`Chain`] shows it once.
#[derive(Debug, thiserror::Error)]
#[error("{what} {target}: {cause}{}", advice.map(|a| format!("; {a}")).unwrap_or_default())]
pub struct Explained {
    pub what: &'static str,
    pub target: StoreTarget,
    pub cause: String,
    pub advice: Option<&'static str>,
}

/// What to check when a connection cannot be made, by what the driver said.
const ADVICE_REFUSED: &str = "is PostgreSQL running there and listening on that port? Check the host and port of --database-url (DATABASE_URL)";
const ADVICE_NAME: &str = "the host name does not resolve: check the host of --database-url (DATABASE_URL) (in a cluster: the Service's name and namespace)";
const ADVICE_AUTH: &str =
    "check the user and password of --database-url (DATABASE_URL), i.e. the Secret it comes from";
const ADVICE_NO_DATABASE: &str =
    "create the database, or fix the database name in --database-url (DATABASE_URL)";
const ADVICE_TLS: &str = "check --database-ca (JANGAR_ORCHESTRATION_DEDUPE_DATABASE_CA): the server's certificate must chain to that CA and name the host of --database-url";
const ADVICE_NO_TLS: &str =
    "the server does not offer TLS: enable it on the server, or drop sslmode=require / --database-ca";
const ADVICE_UNREACHABLE: &str = "is the host reachable from here (network policy, firewall, a Service without endpoints)? Check --database-url (DATABASE_URL)";
const ADVICE_NOT_MIGRATED: &str = "the schema is not migrated in this database (or the connection's search_path points elsewhere): run dedupe-admission or dedupe-pruner with --migrations apply (their default) against it; dedupe-claims never migrates";

/// The innermost error of a chain, and the server's error on the way if there is one.
fn root_cause<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> (
    &'a (dyn std::error::Error + 'static),
    Option<&'a tokio_postgres::error::DbError>,
) {
    let mut innermost = e;
    let mut db = None;
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
            db = db.or(pg.as_db_error());
        }
        if let Some(found) = err.downcast_ref::<tokio_postgres::error::DbError>() {
            db = db.or(Some(found));
        }
        innermost = err;
        current = err.source();
    }
    (innermost, db)
}

impl StoreError {
    /// A connection that could not be made (`Unavailable` from the pool), said once, with
    /// where and what to do; other errors unchanged.
    pub fn explain_connect(self, target: &StoreTarget) -> StoreError {
        let StoreError::Unavailable(cause) = self else {
            return self;
        };
        let (innermost, db) = root_cause(cause.as_ref());
        let text = innermost.to_string();
        let lower = text.to_ascii_lowercase();
        let io_kind = innermost
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind);
        let (cause_text, advice) = if let Some(db) = db {
            let advice = match db.code().code() {
                "28P01" | "28000" => Some(ADVICE_AUTH),
                "3D000" => Some(ADVICE_NO_DATABASE),
                _ => None,
            };
            (
                format!("{} (SQLSTATE {})", db.message(), db.code().code()),
                advice,
            )
        } else if io_kind == Some(std::io::ErrorKind::ConnectionRefused) {
            (text, Some(ADVICE_REFUSED))
        } else if lower.contains("lookup address") || lower.contains("name or service not known") {
            (text, Some(ADVICE_NAME))
        } else if lower.contains("server does not support tls") {
            (text, Some(ADVICE_NO_TLS))
        } else if lower.contains("certificate") || lower.contains("tls") {
            (text, Some(ADVICE_TLS))
        } else if lower.contains("timeout") || lower.contains("timed out") {
            ("no answer in time".to_owned(), Some(ADVICE_UNREACHABLE))
        } else {
            (text, Some(ADVICE_UNREACHABLE))
        };
        StoreError::Unavailable(Box::new(Explained {
            what: "cannot connect to",
            target: target.clone(),
            cause: cause_text,
            advice,
        }))
    }

    /// A server error that means the schema is missing (`42P01` undefined table, `3F000`
    /// undefined schema) says so, where, and how to migrate; other errors unchanged.
    pub fn explain_query(self, target: &StoreTarget) -> StoreError {
        match self {
            StoreError::Database { code, source } if code == "42P01" || code == "3F000" => {
                let (innermost, db) = root_cause(source.as_ref());
                let cause = db.map_or_else(|| innermost.to_string(), |db| db.message().to_owned());
                StoreError::Database {
                    code: code.clone(),
                    source: Box::new(Explained {
                        what: "the claims table is missing at",
                        target: target.clone(),
                        cause,
                        advice: Some(ADVICE_NOT_MIGRATED),
                    }),
                }
            }
            other => other,
        }
    }
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
    use std::str::FromStr;

    #[test]
    fn the_target_names_hosts_and_ports_never_the_password() {
        let t = |url: &str| {
            StoreTarget::of(&tokio_postgres::Config::from_str(url).expect("a valid URL")).to_string()
        };
        assert_eq!(
            t("postgres://u:s3cret@db.example:6432/claims"),
            "db.example:6432 (database claims, user u)"
        );
        assert_eq!(t("postgres://a,b:5433/x"), "a:5432,b:5433 (database x)");
        assert_eq!(t("host=h port=7 user=me password=s3cret"), "h:7 (user me)");
        assert_eq!(t("postgres://u@[::1]:1/d"), "[::1]:1 (database d, user u)");
        assert!(!t("postgres://u:s3cret@h/d").contains("s3cret"));
    }

    #[test]
    fn a_refused_connection_is_said_once_with_where_and_what_to_do() {
        let target =
            StoreTarget::of(&tokio_postgres::Config::from_str("postgres://u:pw@h:1/d").expect("a URL"));
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let e = StoreError::Unavailable(Box::new(io)).explain_connect(&target);
        let text = Chain(&e).to_string();
        assert_eq!(
            text,
            format!("claim store unavailable: cannot connect to h:1 (database d, user u): Connection refused (os error 111); {ADVICE_REFUSED}")
        );
        assert_eq!(
            text.matches("refused").count(),
            1 + ADVICE_REFUSED.matches("refused").count()
        );
    }

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
