//! The connection layer every store operation sits on: the bounded pool and its TCP
//! settings, one checked-out connection per call with its hygiene ([`checkout`]), the
//! per-call time bound, and the row readers shared by the statements that return a claim
//! ([`rows`]). It knows nothing of claims' rules: the claim path (`store/claims.rs`), group
//! commit, pruning, the reconciler's writes and the operators' reads are all built on it.

mod checkout;
pub(crate) mod rows;
#[cfg(test)]
mod tests;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::claim::ClaimKey;
use crate::config::{StoreConfig, TcpHealth};
use crate::error::{StoreError, StoreTarget};

pub(crate) use checkout::{discards_connection, Checkout};
pub(crate) use rows::read_claim;

/// tokio-postgres' own `keepalives_idle` when the connection string does not set one (2 h):
/// seeing it means "not set", so the flag applies.
const LIBRARY_DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// How much later than the client's bound the server's (`statement_timeout`) ends a
/// statement. The client's bound decides what a caller sees (`StoreError::Timeout`): with
/// equal bounds, a call stuck on a row lock would end as a timeout or as the server's
/// cancel (57014) depending on which timer fired first, the server's starting a moment
/// later but the client's firing up to a tick late. The server's is the backstop for a
/// statement whose cancel request did not get through.
const SERVER_TIMEOUT_MARGIN: Duration = Duration::from_millis(500);

/// The `application_name` of store sessions unless the connection string names one.
const APPLICATION_NAME: &str = "orchestration-dedupe";

/// The pool and the per-call bound. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub(crate) struct Db {
    pool: Pool,
    timeout: Duration,
    /// For cancel requests on abandoned calls (see [`Checkout`]).
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// Where the store is, for errors an operator reads (never the password).
    target: StoreTarget,
}

impl Db {
    /// Builds the bounded pool. Connections are opened on first use, so this does not fail
    /// when the store is down; the first call does, with [`StoreError`].
    pub(crate) fn new(config: &StoreConfig) -> Result<Self, StoreError> {
        let target = StoreTarget::of(&config.database);
        let mut pg = config.database.clone();
        // The server-side bound follows the client-side one, so a statement abandoned by a
        // timed-out call does not go on holding locks even when its cancel is lost.
        let ms = (config.timeout + SERVER_TIMEOUT_MARGIN).as_millis();
        let options = match pg.get_options() {
            Some(existing) => format!("{existing} -c statement_timeout={ms}"),
            None => format!("-c statement_timeout={ms}"),
        };
        pg.options(&options);
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(config.timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name(APPLICATION_NAME);
        }
        apply_tcp_health(&mut pg, &config.tcp_health);
        let manager = Manager::from_config(
            pg,
            config.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // LIFO: the connection used last goes out next, so steady load runs on as few
        // backends as it needs, each warm (its process scheduled, its caches and plan
        // cache hot), instead of rotating through every connection the pool once opened.
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(Self {
            pool,
            timeout: config.timeout,
            tls: config.tls.clone(),
            target,
        })
    }

    /// The per-call bound.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Where the store is (host:port, database, user), as errors name it.
    pub(crate) fn target(&self) -> &StoreTarget {
        &self.target
    }

    /// A pooled connection; a connection that cannot be made says where and what to do.
    pub(crate) async fn checkout(&self) -> Result<Checkout, StoreError> {
        Checkout::get(&self.pool, &self.tls, self.timeout)
            .await
            .map_err(|e| e.explain_connect(&self.target))
    }

    /// Bounds a wait that is not itself a call on a connection (a claim queued for group
    /// commit); the statements themselves run through [`Self::on_connection`].
    pub(crate) async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)))
    }

    /// Runs `work` on one pooled connection under `bound` (pool wait included). Every store
    /// call goes through here (or through [`Checkout`] directly), so every call path gets the
    /// connection hygiene: a connection whose call timed out, was cancelled, failed at the
    /// connection level or hit a read-only server is closed, never handed out again.
    pub(crate) async fn on_connection<T>(
        &self,
        bound: Duration,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let attempt = async {
            let mut checkout = self.checkout().await?;
            let result = match checkout.client() {
                Ok(client) => work(client).await,
                Err(e) => Err(e),
            };
            checkout.settle(&result);
            result
        };
        // On timeout the attempt future is dropped, and the checkout with it: discarded.
        tokio::time::timeout(bound, attempt)
            .await
            .unwrap_or(Err(StoreError::Timeout(bound)))
            .map_err(|e| e.explain_query(&self.target))
    }

    /// One prepared (cached) statement under the store timeout.
    pub(crate) async fn query(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.on_connection(self.timeout, async |client| {
            let prepared = client.prepare_cached(statement).await?;
            Ok(client.query(&prepared, params).await?)
        })
        .await
    }

    /// [`Self::query`] for a statement that returns exactly one row (`what` names it in the
    /// error when it returns none).
    pub(crate) async fn query_one_row(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Row, StoreError> {
        self.query(statement, params)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::UnexpectedRow(format!("{what} returned nothing")))
    }

    /// Runs a keyed statement: `$1..$4` are the claim key (delivery id, scope, namespace,
    /// orchestration), `rest` follows from `$5`.
    pub(crate) async fn query_keyed(
        &self,
        statement: &str,
        key: &ClaimKey,
        rest: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let scope = key.scope.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(4 + rest.len());
        params.extend_from_slice(&[&key.delivery_id, &scope, &key.namespace, &key.orchestration]);
        params.extend_from_slice(rest);
        self.query(statement, &params).await
    }
}

/// Applies the dead-peer detection settings, except those the connection string set itself.
fn apply_tcp_health(pg: &mut tokio_postgres::Config, tcp: &TcpHealth) {
    if pg.get_keepalives_idle() == LIBRARY_DEFAULT_KEEPALIVE_IDLE {
        pg.keepalives_idle(tcp.keepalive_idle);
    }
    if pg.get_keepalives_interval().is_none() {
        pg.keepalives_interval(tcp.keepalive_interval);
    }
    if pg.get_keepalives_retries().is_none() {
        pg.keepalives_retries(tcp.keepalive_retries);
    }
    if pg.get_tcp_user_timeout().is_none() && !tcp.user_timeout.is_zero() {
        pg.tcp_user_timeout(tcp.user_timeout);
    }
}
