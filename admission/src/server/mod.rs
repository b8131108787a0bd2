//! The two listeners: HTTPS for `POST /validate` (a TLS accept loop that takes the current
//! certificate for every new handshake, so reloads need no restart) and plain HTTP for
//! `/healthz`, `/readyz` and `/metrics`. Both stop accepting on shutdown and let in-flight
//! requests finish. What bounds a connection and a request's bytes on the HTTPS side is
//! [`edge`].
//!
//! The drain is hand-rolled (every connection task holds a sender of one channel; the last
//! one dropped means every connection is closed) rather than hyper-util's
//! `GracefulShutdown`: that one takes the connection behind a sealed trait, whose only
//! trigger is the server-wide shutdown, so the edge could no longer ask one connection to
//! close gracefully when it has sat idle for the idle timeout (HTTP/2: with a GOAWAY).

pub mod edge;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dedupe_store::error::Chain;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use self::edge::{ConnectionTimeouts, Gate, RequestLimits};
use crate::error::HttpError;
use crate::handler::{self, App};
use crate::tls::TlsReloader;

/// HTTP/2: a PING every this often on a connection, so a peer that vanished (no FIN, no
/// RST) is noticed while a request is in progress; idle connections are closed anyway.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// HTTP/2: the PING's answer must arrive within this, or the connection is closed.
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 rapid-reset (CVE-2023-44487) limits, only relevant with `--http2`.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// The HTTPS server's own settings, built once from the flags (`startup.rs`):
/// none of them is the handler's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// `--http2`: offer HTTP/2 by ALPN (HTTP/1.1 only otherwise).
    pub http2: bool,
    pub limits: RequestLimits,
    pub timeouts: ConnectionTimeouts,
    /// `--shutdown-grace-seconds`: how long a stop waits for open connections.
    pub drain: Duration,
}

/// Routes of the HTTPS listener. `limits.max_body_bytes` is axum's body limit for the
/// handlers' body extractor (413 past it, see [`edge::read_body`]); [`edge::admit_request`]
/// runs first and bounds how many requests are read at once and how long reading takes.
pub fn webhook_router(app: Arc<App>, limits: RequestLimits) -> Router {
    let gate = Arc::new(Gate::new(limits, app.metrics.clone()));
    Router::new()
        .route("/validate", post(handler::validate))
        // The optional mutating webhook; only called when the chart registers it.
        .route("/mutate", post(crate::mutate::mutate))
        .route_layer(middleware::from_fn_with_state(gate, edge::admit_request))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
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
    let ping = app.store.ping().await;
    app.metrics.store_reachable.set(i64::from(ping.is_ok()));
    match ping {
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

/// Serves HTTPS until `shutdown` turns true, then stops accepting and waits up to
/// `config.drain` for open connections to finish their requests.
pub async fn serve_https(
    listener: TcpListener,
    tls: TlsReloader,
    router: Router,
    config: ServerConfig,
    shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Off (hyper's default is 30 s): hyper starts this timer whenever the connection waits
    // for a request, so it would close idle keep-alive connections at the read timeout.
    // The edge applies the header deadline from the first byte instead.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None);
    if config.http2 {
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS);
    } else {
        builder = builder.http1_only();
    }
    // Every connection task holds a sender; when all are gone, every connection is closed.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
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
        let connection = edge::serve_connection(
            tcp,
            peer,
            TlsAcceptor::from(tls.current()),
            builder.clone(),
            router.clone(),
            config.timeouts,
            shutdown.clone(),
        );
        let open = open_tx.clone();
        tokio::spawn(async move {
            let _open = open;
            connection.await;
        });
    }
    drop(listener);
    drop(open_tx);
    tracing::info!("stopped accepting webhook connections; finishing in-flight requests");
    let grace = config.drain;
    tokio::select! {
        _ = open_rx.recv() => tracing::info!("in-flight requests finished"),
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
