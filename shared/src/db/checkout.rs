//! One pooled connection checked out for one store call, and when a session is not reused.

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::error::StoreError;

/// One pooled connection checked out for one store call: the connection hygiene.
///
/// deadpool's `RecyclingMethod::Fast` only asks `is_closed()` when a connection comes back,
/// so a session that is open but useless — its call timed out on a peer that went silent, it
/// talks to a server that became a read-only standby — would be handed out again and again.
/// This guard returns the connection to the pool only when the call's result says the
/// session is sound ([`settle`](Self::settle)); dropped unsettled (the call was cancelled or
/// timed out mid-statement) or settled with a connection-level error, it takes the
/// connection out of the pool (`Object::take`) and closes it.
///
/// A call abandoned mid-statement also gets a cancel request (best effort, in the
/// background): closing the socket does not stop the server's backend, and
/// `statement_timeout` does not cover a commit waiting for a synchronous standby, so without
/// it an abandoned claim would keep its backend (and the claim's row lock) until the standby
/// returns. Cancelled, the wait ends and the commit stays local (an orphan claim: pending,
/// for a run that was answered 503).
pub(crate) struct Checkout {
    object: Option<deadpool_postgres::Object>,
    cancel: Canceller,
}

/// What it takes to cancel the statement in flight on one session.
struct Canceller {
    token: tokio_postgres::CancelToken,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    bound: Duration,
}

impl Canceller {
    /// Sends the cancel request from a background task, bounded; nothing to wait for here.
    fn fire(&self) {
        let (token, tls, bound) = (self.token.clone(), self.tls.clone(), self.bound);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(bound, token.cancel_query(tls)).await;
            });
        }
    }
}

impl Checkout {
    pub(crate) async fn get(
        pool: &Pool,
        tls: &tokio_postgres_rustls::MakeRustlsConnect,
        bound: Duration,
    ) -> Result<Self, StoreError> {
        let object = pool.get().await?;
        let cancel = Canceller {
            token: object.cancel_token(),
            tls: tls.clone(),
            bound,
        };
        Ok(Self {
            object: Some(object),
            cancel,
        })
    }

    /// The connection. Only `settle`, `detach` and `abandon` empty the guard, and the first
    /// two consume it, so an error here means a call went on after abandoning its connection.
    pub(crate) fn client(&mut self) -> Result<&mut deadpool_postgres::Object, StoreError> {
        self.object
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("the connection was already discarded".into()))
    }

    /// Back to the pool if `result` leaves the session trustworthy, else discarded (and a
    /// call abandoned mid-statement cancelled).
    pub(crate) fn settle<T>(mut self, result: &Result<T, StoreError>) {
        match result {
            // Abandoned mid-statement: cancel it too.
            Err(StoreError::Timeout { .. }) => self.abandon(),
            // Closed, or idle on a server it must not be used with: just close it.
            Err(e) if discards_connection(e) => {
                drop(self.object.take().map(deadpool_postgres::Object::take));
            }
            // Dropped as an Object: back to the pool.
            _ => drop(self.object.take()),
        }
    }

    /// Takes the connection out of the pool for good (the pruner lock's session).
    pub(crate) fn detach(mut self) -> Option<deadpool_postgres::ClientWrapper> {
        self.object.take().map(deadpool_postgres::Object::take)
    }

    /// Discards the connection now, cancelling whatever it was running.
    fn abandon(&mut self) {
        if let Some(object) = self.object.take() {
            let closing = deadpool_postgres::Object::take(object);
            if !closing.is_closed() {
                self.cancel.fire();
            }
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        // Still holding it: the call was dropped mid-way (its bound ran out) or failed at the
        // connection level.
        self.abandon();
    }
}

/// SQLSTATEs after which a session is not reused: `25006` read_only_sql_transaction (the
/// server is a standby now: a switchover brought the old primary back at the same address),
/// class `08` connection exceptions, and class `57P` (server shutting down, crashed, not
/// accepting connections, database dropped, idle session ended).
pub(crate) fn discards_connection(error: &StoreError) -> bool {
    match error {
        // The call was abandoned mid-statement on a peer that did not answer in time.
        StoreError::Timeout { .. } => true,
        // Closed, or an I/O error under it.
        StoreError::Unavailable { .. } => true,
        // A client-side protocol or encoding failure: the session's state is unknown, and a
        // new connection costs one handshake.
        StoreError::Query { .. } => true,
        StoreError::Database { .. } => error
            .sqlstate()
            .is_some_and(|code| code == "25006" || code.starts_with("08") || code.starts_with("57P")),
        StoreError::UnexpectedRow { .. } | StoreError::Migration { .. } => false,
    }
}
