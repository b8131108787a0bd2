//! The two listeners: HTTPS for `POST /validate` (a TLS accept loop that takes the current
//! certificate for every new handshake, so reloads need no restart) and plain HTTP for
//! `/healthz`, `/readyz` and `/metrics`. Both stop accepting on shutdown and let in-flight
//! requests finish.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dedupe_shared::error::Chain;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::error::HttpError;
use crate::handler::{self, App};
use crate::tls::TlsReloader;

/// A client that does not finish the TLS handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/1.1: time allowed to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 rapid-reset (CVE-2023-44487) limits, only relevant with `--http2`.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// Routes of the HTTPS listener.
/// Routes of the HTTPS listener. `--max-body-bytes` is axum's body limit for the
/// handler's body extractor (413 past it, see [`handler::validate`]).
pub fn webhook_router(app: Arc<App>) -> Router {
    let limit = app.max_body_bytes;
    Router::new()
        .route("/validate", post(handler::validate))
        .layer(DefaultBodyLimit::max(limit))
        .fallback(not_found)
        .with_state(app)
}

/// Routes of the plain-HTTP listener.
pub fn ops_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(app)
}

async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError::NotFound {
        path: uri.path().to_owned(),
    }
}

/// The process is alive and serving.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready while the claim store answers within the store timeout; unready (503) otherwise,
/// and ready again as soon as it answers — no restart needed.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({"ready": true}))).into_response(),
        Err(e) => {
            let reason = Chain(&e).to_string();
            tracing::warn!(error = %reason, "not ready: claim store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"ready": false, "reason": reason})),
            )
                .into_response()
        }
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

/// Serves HTTPS until `shutdown` turns true, then stops accepting and waits up to `grace`
/// for open connections to finish their requests.
pub async fn serve_https(
    listener: TcpListener,
    tls: TlsReloader,
    router: Router,
    http2: bool,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    if http2 {
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS);
    } else {
        builder = builder.http1_only();
    }
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small responses written in several TLS records must not wait for delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.current());
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting webhook connections; finishing in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("in-flight requests finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "in-flight requests did not finish in time"),
    }
}

/// Serves the plain-HTTP ops endpoints until `shutdown` turns true.
pub async fn serve_ops(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "ops listener failed");
    }
}
