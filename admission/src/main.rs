//! dedupe-admission: the HTTPS validating admission webhook.
//!
//! The request path: `main` builds the [`handler::App`] and starts [`server::serve_https`],
//! whose router sends `POST /validate` to [`handler::validate`], which runs the pure
//! decision table in [`decision`] against the claim store.

mod config;
mod decision;
mod handler;
mod lookup;
mod metrics;
mod review;
mod server;
mod tls;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dedupe_shared::{ClaimStore, MigrationMode, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Args;
use crate::decision::Policy;
use crate::handler::App;
use crate::metrics::{Metrics, ResultLabels};
use crate::tls::{ReloadEvent, TlsReloader, TlsSettings};

/// Exit code for a configuration error (bad flag value, unreadable connection string).
const EXIT_CONFIG: u8 = 2;
/// Attempts to reach the store for migrations at start (1 s, 2 s, 4 s, 8 s apart) before
/// exiting, so a database that starts a little after the webhook does not crash-loop it.
const MIGRATION_ATTEMPTS: u32 = 5;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let _log_writer = dedupe_shared::telemetry::init_non_blocking(args.common.log_format);
    // Exactly one rustls crypto provider, chosen here: with two compiled in, rustls panics
    // at first use unless one is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store_config = match StoreConfig::new(&args.common.database_url, args.pool_size, args.store_timeout())
        .and_then(|config| config.with_database_ca(args.common.database_ca.as_deref()))
    {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run(args, store_config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("dedupe-admission failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, store_config: StoreConfig) -> anyhow::Result<()> {
    let mut store = ClaimStore::new(&store_config)?;
    if let Some(group_commit) = args.group_commit() {
        store = store.with_group_commit(group_commit);
    }
    if args.common.migrations == MigrationMode::Apply {
        migrate(&store).await?;
    }
    let metrics = Arc::new(Metrics::new());
    let tls = TlsReloader::load(TlsSettings {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        client_ca: args.tls_client_ca.clone(),
        poll_interval: Duration::from_secs(args.tls_reload_poll_seconds),
        http2: args.http2,
    })
    .context("loading the serving certificate")?;
    metrics.certificate_expiry.set(tls.not_after());

    let lookup = lookup::from_flag(args.kube_lookup, args.store_timeout()).await?;
    let policy = Policy {
        scope: args.claim_scope,
        grace: args.pending_grace(),
        lookup_enabled: lookup.is_some(),
    };
    tracing::info!(
        scope = policy.scope.as_str(),
        grace_seconds = policy.grace.as_secs(),
        lookup = policy.lookup_enabled,
        "claim policy"
    );
    let app = Arc::new(App {
        store,
        lookup: lookup.map(|l| Arc::new(l) as Arc<dyn lookup::RunLookup>),
        policy,
        metrics: metrics.clone(),
        max_body_bytes: args.max_body_bytes,
    });

    let webhook = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let ops = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding --metrics-listen {}", args.metrics_listen))?;
    tracing::info!(
        listen = %webhook.local_addr()?,
        metrics_listen = %ops.local_addr()?,
        "dedupe-admission serving"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = tls.spawn_watcher(
        Arc::new(move |event| match event {
            ReloadEvent::Reloaded { not_after } => {
                metrics
                    .tls_reloads
                    .get_or_create(&ResultLabels { result: "success" })
                    .inc();
                metrics.certificate_expiry.set(not_after);
            }
            ReloadEvent::Failed { .. } => {
                metrics
                    .tls_reloads
                    .get_or_create(&ResultLabels { result: "failure" })
                    .inc();
            }
        }),
        stop_rx.clone(),
    );
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        let _ = stop_tx.send(true);
    });
    let grace = Duration::from_secs(args.shutdown_grace_seconds);
    tokio::join!(
        server::serve_https(
            webhook,
            tls,
            server::webhook_router(app.clone()),
            args.http2,
            stop_rx.clone(),
            grace
        ),
        server::serve_ops(ops, server::ops_router(app), stop_rx),
    );
    watcher.abort();
    tracing::info!("dedupe-admission stopped");
    Ok(())
}

async fn migrate(store: &ClaimStore) -> anyhow::Result<()> {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=MIGRATION_ATTEMPTS {
        match store.migrate().await {
            Ok(report) => {
                tracing::info!(applied = ?report.applied, "schema migrations up to date");
                return Ok(());
            }
            Err(e) if attempt < MIGRATION_ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "claim store not reachable for migrations; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e).context("applying schema migrations"),
        }
    }
    Ok(())
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
