//! The pruner's failures, and how a store error is classed (retry, shrink, or give up).

use std::time::Duration;

use dedupe_store::StoreError;

/// A failure that ends the run with exit code 1. The store error is the `source()`, shown
/// after this message by `main` (`{:#}`).
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("claim store unreachable after {attempts} attempt(s) over {:.1}s", elapsed.as_secs_f64())]
    Unreachable {
        attempts: u32,
        elapsed: Duration,
        #[source]
        last: StoreError,
    },
    #[error("connecting to the claim store failed")]
    Connect(#[source] StoreError),
    #[error("applying the schema migrations failed")]
    Migrate(#[source] StoreError),
    #[error("taking the pruner advisory lock failed")]
    Lock(#[source] StoreError),
    #[error("reading the cutoff from the database clock failed")]
    Cutoff(#[source] StoreError),
    #[error("counting expired claims failed")]
    Count(#[source] StoreError),
    #[error("batch {batch} failed")]
    Batch {
        batch: u64,
        #[source]
        error: StoreError,
    },
    #[error("batches kept timing out ({in_a_row} in a row at the smallest size, {batch_size}); last error")]
    Timeouts {
        batch_size: u32,
        in_a_row: u32,
        #[source]
        last: StoreError,
    },
    #[error(
        "claim store unreachable during batch {batch} after {attempts} attempt(s) (restart or failover?); \
         stopped with every committed batch kept and nothing half-deleted, the next run carries on"
    )]
    LostStore {
        batch: u64,
        attempts: u32,
        #[source]
        last: StoreError,
    },
}

/// How the pruner treats a store error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A statement or lock timeout (server side), the client-side bound, or a transient
    /// conflict (deadlock, serialization): nothing was committed; retry, and shrink the
    /// batch if it keeps happening.
    TimedOut,
    /// The store could not be reached: retry with back-off, within the attempt budget.
    Unavailable,
    /// Anything else (a rejected query, an unexpected row): give up.
    Other,
}

/// SQLSTATEs meaning "too slow, try again": query_canceled (statement_timeout),
/// lock_not_available (lock_timeout), and the transient conflicts deadlock_detected and
/// serialization_failure (a smaller batch makes them rarer).
const TIMEOUT_CODES: &[&str] = &["57014", "55P03", "40P01", "40001"];
/// SQLSTATEs meaning "not reachable right now": server shutting down or starting up,
/// too many connections.
const UNAVAILABLE_CODES: &[&str] = &["57P01", "57P02", "57P03", "53300"];

/// Classes a store error: by the server's SQLSTATE when it reported one, and by variant
/// otherwise (a lost or unobtainable connection is `StoreError::Unavailable`).
pub fn classify(error: &StoreError) -> ErrorClass {
    match error {
        StoreError::Timeout(_) => ErrorClass::TimedOut,
        StoreError::Unavailable(_) => ErrorClass::Unavailable,
        StoreError::Database { code, .. } => match code.as_str() {
            code if TIMEOUT_CODES.contains(&code) => ErrorClass::TimedOut,
            code if UNAVAILABLE_CODES.contains(&code) || code.starts_with("08") => ErrorClass::Unavailable,
            _ => ErrorClass::Other,
        },
        StoreError::Query(_) | StoreError::UnexpectedRow(_) | StoreError::Migration { .. } => {
            ErrorClass::Other
        }
    }
}

/// The five-character SQLSTATE at the end of `"... (XXXXX)"`, if there is one (tests build
/// server errors from their printed form with it).
#[cfg(test)]
pub(crate) fn sqlstate(message: &str) -> Option<&str> {
    let inner = message.strip_suffix(')')?;
    let code = inner.get(inner.len().checked_sub(5)?..)?;
    let open = inner.get(..inner.len() - 5)?;
    (open.ends_with('(') && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
        .then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store error as printed: with a `(SQLSTATE)` suffix it came from the server.
    fn q(s: &str) -> StoreError {
        match sqlstate(s) {
            Some(code) => StoreError::Database {
                code: code.into(),
                source: s.into(),
            },
            None => StoreError::Query(s.into()),
        }
    }

    #[test]
    fn timeouts_are_recognised_from_either_side() {
        assert_eq!(
            classify(&StoreError::Timeout(Duration::from_secs(1))),
            ErrorClass::TimedOut
        );
        assert_eq!(
            classify(&q("ERROR: canceling statement due to statement timeout (57014)")),
            ErrorClass::TimedOut
        );
        assert_eq!(
            classify(&q("ERROR: canceling statement due to lock timeout (55P03)")),
            ErrorClass::TimedOut
        );
        assert_eq!(
            classify(&q("ERROR: deadlock detected (40P01)")),
            ErrorClass::TimedOut
        );
    }

    #[test]
    fn lost_connections_are_unavailable() {
        assert_eq!(
            classify(&StoreError::Unavailable(
                "error connecting to server: Connection refused".into()
            )),
            ErrorClass::Unavailable
        );
        assert_eq!(
            classify(&q(
                "FATAL: terminating connection due to administrator command (57P01)"
            )),
            ErrorClass::Unavailable
        );
        assert_eq!(
            classify(&q("FATAL: connection failure (08006)")),
            ErrorClass::Unavailable
        );
        // A lost session arrives as `Unavailable` (StoreError tells it apart, not its wording).
        assert_eq!(
            classify(&StoreError::Unavailable("connection closed".into())),
            ErrorClass::Unavailable
        );
        assert_eq!(
            classify(&StoreError::Unavailable(
                "error communicating with the server: Broken pipe (os error 32)".into()
            )),
            ErrorClass::Unavailable
        );
    }

    #[test]
    fn everything_else_is_fatal() {
        assert_eq!(
            classify(&q(
                "ERROR: relation \"orchestration_dedupe_claims\" does not exist (42P01)"
            )),
            ErrorClass::Other
        );
        assert_eq!(
            classify(&StoreError::UnexpectedRow("x".into())),
            ErrorClass::Other
        );
        assert_eq!(classify(&q("something odd (not a code)")), ErrorClass::Other);
        assert_eq!(classify(&q("")), ErrorClass::Other);
    }

    #[test]
    fn sqlstate_is_read_only_from_a_well_formed_suffix() {
        assert_eq!(sqlstate("ERROR: x (57014)"), Some("57014"));
        assert_eq!(sqlstate("(57014)"), Some("57014"));
        assert_eq!(sqlstate("57014)"), None);
        assert_eq!(sqlstate("x (5701)"), None);
        assert_eq!(sqlstate("x (abcde)"), None);
        assert_eq!(sqlstate("é)"), None);
    }
}
