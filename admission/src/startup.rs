//! Starting the webhook process: the claim store and its migrations, the serving certificate
//! and its reloader, the API-server lookup, both listeners, and a graceful stop. [`serve`] is
//! what `main` calls; [`Server`] splits it into start and serve so a test can run the whole
//! webhook in-process and stop it with a [`Shutdown::manual`] of its own.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dedupe_store::retry::{self, NotReached, RetryConfig};
use dedupe_store::shutdown::Shutdown;
use dedupe_store::{ClaimStore, ConfigError, MigrationMode, StoreConfig, StoreError};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Args, KubeLookup, Reconcile};
use crate::decision::Policy;
use crate::handler::App;
use crate::lookup::{self, KubeRunLookup, LookupSetupError, RunLookup};
use crate::metrics::{Metrics, ResultLabels};
use crate::reconcile::{self, Reconciler};
use crate::server::edge::{ConnectionTimeouts, RequestLimits};
use crate::server::{self, ServerConfig};
use crate::tls::selfmanaged::{SelfTls, SelfTlsConfigError};
use crate::tls::{ReloadEvent, TlsError, TlsReloader, TlsSettings};

/// Attempts to reach the store for migrations at start (1 s, 2 s, 4 s, 8 s apart) before
/// giving up.
const MIGRATION_RETRY: RetryConfig = RetryConfig {
    attempts: 5,
    base_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(8),
};

/// Why the webhook could not start. [`StartupError::is_config`] tells a configuration error
/// (exit 2) from a runtime failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("opening the claim store")]
    Store(#[source] StoreError),
    #[error("applying schema migrations")]
    Migrations(#[source] StoreError),
    #[error("loading the serving certificate")]
    Tls(#[source] TlsError),
    #[error(transparent)]
    SelfTlsConfig(#[from] SelfTlsConfigError),
    #[error("--tls-self-secret needs an API-server client (in-cluster or KUBECONFIG)")]
    SelfTlsClient(#[source] kube::Error),
    #[error(transparent)]
    Lookup(#[from] LookupSetupError),
    #[error("cannot listen for SIGTERM/SIGINT")]
    Signals(#[source] io::Error),
    /// SIGTERM or SIGINT before the webhook was serving (e.g. while waiting for the store).
    #[error("stopped before serving")]
    Interrupted,
    #[error("binding {flag} {addr}")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl StartupError {
    /// A bad flag or environment value, as opposed to a failure at run time.
    pub fn is_config(&self) -> bool {
        matches!(self, StartupError::Config(_) | StartupError::SelfTlsConfig(_))
    }
}

/// Runs the webhook until SIGTERM or SIGINT, then drains in-flight requests. A signal
/// before it serves (while waiting for the store) stops it too, without an error.
pub async fn serve(args: Args) -> Result<(), StartupError> {
    // Before anything is announced: from here on a signal means "drain", not "die".
    let mut shutdown = Shutdown::install().map_err(StartupError::Signals)?;
    match Server::start(&args, &mut shutdown).await {
        Ok(server) => {
            server.serve(shutdown).await;
            Ok(())
        }
        Err(StartupError::Interrupted) => {
            tracing::info!("stopped before serving");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A started webhook: store ready, certificate loaded, both listeners bound.
pub struct Server {
    app: Arc<App>,
    tls: TlsReloader,
    webhook: TcpListener,
    ops: TcpListener,
    server: ServerConfig,
    reconciler: Option<Reconciler>,
    self_tls: Option<SelfTls>,
}

impl Server {
    /// Everything up to serving: store (and migrations), certificate, lookup, listeners.
    /// `shutdown` cuts the wait for the store short ([`StartupError::Interrupted`]).
    pub async fn start(args: &Args, shutdown: &mut Shutdown) -> Result<Self, StartupError> {
        install_crypto_provider();
        let store_config = args.store.to_config()?;
        let mut store = ClaimStore::new(&store_config).map_err(StartupError::Store)?;
        if let Some(group_commit) = args.group_commit() {
            store = store.with_group_commit(group_commit);
        }
        if args.common.migrations == MigrationMode::Apply {
            migrate(&store, shutdown).await?;
        }
        let metrics = Arc::new(Metrics::new().with_group_commit(&store));
        // Self-managed certificates: nothing is served (so /readyz does not answer) until the
        // Secret's certificate is on disk for the reloader below.
        let self_tls = match args.self_tls()? {
            Some(settings) => {
                let client = kube::Client::try_default()
                    .await
                    .map_err(StartupError::SelfTlsClient)?;
                let self_tls = SelfTls::new(client, settings);
                self_tls
                    .first_sync(shutdown)
                    .await
                    .map_err(|()| StartupError::Interrupted)?;
                Some(self_tls)
            }
            None => None,
        };
        let tls = TlsReloader::load(TlsSettings {
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
            client_ca: args.tls_client_ca.clone(),
            poll_interval: Duration::from_secs(args.tls_reload_poll_seconds),
            http2: args.http2,
        })
        .map_err(StartupError::Tls)?;
        metrics.certificate_expiry.set(tls.not_after());

        let client = lookup::cluster_client(
            args.kube_lookup,
            args.reconcile,
            metrics.reconcile.last_event.clone(),
        )
        .await?;
        let lookup = client
            .clone()
            .filter(|_| args.kube_lookup != KubeLookup::Off)
            .map(|c| KubeRunLookup::new(c, args.store_timeout()));
        // Its own one-connection pool: the reconciler's write batches never wait for, or hold, a
        // connection a review needs.
        let reconciler = match client.filter(|_| args.reconcile != Reconcile::Off) {
            Some(client) => Some(Reconciler {
                client,
                namespaces: args.namespaces.clone(),
                scope: args.claim_scope,
                store: ClaimStore::new(&StoreConfig {
                    pool_size: reconcile::POOL_SIZE,
                    ..store_config.clone()
                })
                .map_err(StartupError::Store)?,
                metrics: metrics.reconcile.clone(),
            }),
            None => None,
        };
        let policy = Policy {
            scope: args.claim_scope,
            grace: args.pending_grace(),
        };
        tracing::info!(
            scope = policy.scope.as_str(),
            grace_seconds = policy.grace.as_secs(),
            lookup = lookup.is_some(),
            reconcile = reconciler.is_some(),
            "claim policy"
        );
        let app = Arc::new(App {
            store,
            lookup: lookup.map(|l| Arc::new(l) as Arc<dyn RunLookup>),
            policy,
            metrics,
        });
        let bind = |flag, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartupError::Bind { flag, addr, source })
        };
        let webhook = bind("--listen", args.listen).await?;
        let ops = bind("--metrics-listen", args.metrics_listen).await?;
        Ok(Self {
            app,
            tls,
            webhook,
            ops,
            server: server_config(args),
            reconciler,
            self_tls,
        })
    }

    /// The HTTPS address (`--listen`, with the kernel's port when it was 0).
    pub fn webhook_addr(&self) -> io::Result<SocketAddr> {
        self.webhook.local_addr()
    }

    /// The plain-HTTP ops address (`--metrics-listen`).
    pub fn ops_addr(&self) -> io::Result<SocketAddr> {
        self.ops.local_addr()
    }

    /// The state every request sees.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves both listeners until `shutdown` is requested, then stops accepting and lets
    /// in-flight requests finish (up to `--shutdown-grace-seconds`).
    pub async fn serve(self, mut shutdown: Shutdown) {
        let Self {
            app,
            tls,
            webhook,
            ops,
            server: https,
            reconciler,
            self_tls,
        } = self;
        if let (Ok(listen), Ok(metrics_listen)) = (webhook.local_addr(), ops.local_addr()) {
            tracing::info!(%listen, %metrics_listen, "dedupe-admission serving");
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let metrics = app.metrics.clone();
        let watcher = tls.spawn_watcher(
            Arc::new(move |event| {
                let result = match event {
                    ReloadEvent::Reloaded { not_after } => {
                        metrics.certificate_expiry.set(not_after);
                        "success"
                    }
                    ReloadEvent::Failed { .. } => "failure",
                };
                metrics.tls_reloads.get_or_create(&ResultLabels { result }).inc();
            }),
            stop_rx.clone(),
        );
        // Not awaited by anything on the request path: admission answers whether or not the
        // reconciler can reach the API server or the store.
        let reconciling = reconciler.map(|r| tokio::spawn(r.watch_and_write(stop_rx.clone())));
        let self_tls = self_tls.map(|s| tokio::spawn(s.check_until_stopped(stop_rx.clone())));
        tokio::spawn(async move {
            shutdown.wait().await;
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
            let _ = stop_tx.send(true);
        });
        tokio::join!(
            server::serve_https(
                webhook,
                tls,
                server::webhook_router(app.clone(), https.limits),
                https,
                stop_rx.clone(),
            ),
            server::serve_ops(ops, server::ops_router(app), stop_rx),
        );
        watcher.abort();
        if let Some(reconciling) = reconciling {
            reconciling.abort();
        }
        if let Some(self_tls) = self_tls {
            self_tls.abort();
        }
        tracing::info!("dedupe-admission stopped");
    }
}

/// The HTTPS server's settings, from the flags: the edge's bounds, HTTP/2, the drain on
/// shutdown. Built here rather than in `config.rs` so the flags module does not depend on the
/// server.
fn server_config(args: &Args) -> ServerConfig {
    ServerConfig {
        http2: args.http2,
        limits: RequestLimits {
            max_body_bytes: args.max_body_bytes,
            max_concurrent_requests: args.max_concurrent_requests,
            read_timeout: args.request_read_timeout(),
        },
        timeouts: ConnectionTimeouts {
            read: args.request_read_timeout(),
            idle: args.idle_timeout(),
        },
        drain: Duration::from_secs(args.shutdown_grace_seconds),
    }
}

/// Exactly one rustls crypto provider, chosen here: with two compiled in, rustls panics at
/// first use unless one is installed. Installing again (a second server in one process) is
/// a no-op.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Applies the migrations, retrying while the store cannot be reached: a database that
/// starts a little after the webhook must not crash-loop it.
async fn migrate(store: &ClaimStore, shutdown: &mut Shutdown) -> Result<(), StartupError> {
    let retrying = |_: &StoreError| true;
    match retry::until_reachable(&MIGRATION_RETRY, shutdown, retrying, || store.migrate()).await {
        Ok(report) => {
            tracing::info!(applied = ?report.applied, "schema migrations up to date");
            Ok(())
        }
        Err(NotReached::Interrupted) => Err(StartupError::Interrupted),
        Err(NotReached::Exhausted { last, .. } | NotReached::Fatal(last)) => {
            Err(StartupError::Migrations(last))
        }
    }
}
