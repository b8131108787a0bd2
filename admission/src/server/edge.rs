//! The HTTPS edge: everything that bounds a connection and a request's bytes before the
//! handler decides anything.
//!
//! - a TLS handshake within [`HANDSHAKE_TIMEOUT`];
//! - a request's headers (HTTP/1.1: from the first byte of the request to its last header
//!   line) and then its body within `--request-read-timeout-ms` each;
//! - a connection with no request in progress for `--idle-timeout-seconds` is closed
//!   (HTTP/1.1 and HTTP/2 alike, by `serve_connection`'s idle check; HTTP/2 with a GOAWAY);
//! - at most `--max-concurrent-requests` requests are read and decided at once ([`Gate`]),
//!   and of those at most [`MAX_BODIES_IN_MEMORY`] hold their body (read or being parsed);
//! - the envelope every review route checks before parsing ([`read_body`]: content type,
//!   size, read deadline).
//!
//! The idle timeout is separate from the read timeout and longer than the API server's: its
//! HTTP client keeps an idle keep-alive connection for 90 s (Go's `IdleConnTimeout`, as
//! client-go sets it) and does not retry a POST that meets a connection the server is
//! closing, so a server that closed idle connections first would have creates refused with
//! `EOF`. hyper's own header-read timer starts as soon as a connection waits for a request,
//! idle or not, so it is off, and [`HeadWatch`] starts the header deadline at the request's
//! first byte instead.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use crate::error::HttpError;
use crate::metrics::Metrics;

/// A client that does not finish the TLS handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The HTTP/2 connection preface a client starts with (after TLS, with or without ALPN).
const H2_PREFACE_START: &[u8] = b"PRI ";

/// Request bodies held in memory at once: being read, or being parsed. Each is at most
/// `--max-body-bytes` (about twice that while it is gathered), so 16 × 4 MiB × 2 stays well
/// inside the chart's 256 Mi memory limit. A request gives its body slot back once parsed
/// (the decision keeps a few hundred bytes of owned fields), so many requests can wait on
/// the store at once while few bodies are in memory: with group commit, a claim waiting for
/// its group-commit batch costs memory and no connection.
pub const MAX_BODIES_IN_MEMORY: usize = 16;

/// What bounds one request before the handler sees it; parsed once from the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// `--max-body-bytes`: axum's body limit for the handlers' body extractor (413 past it).
    pub max_body_bytes: usize,
    /// `--max-concurrent-requests`: requests read and decided at once (of those, at most
    /// [`MAX_BODIES_IN_MEMORY`] hold their body).
    pub max_concurrent_requests: usize,
    /// `--request-read-timeout-ms`: bound on waiting for a slot and reading the body.
    pub read_timeout: Duration,
}

/// How long a connection may take over parts of a request, and sit between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    /// `--request-read-timeout-ms`: an HTTP/1.1 request's headers, from their first byte.
    /// (The body's deadline is [`admit_request`]'s, from the same flag.)
    pub read: Duration,
    /// `--idle-timeout-seconds`: no request in progress for this long closes the connection.
    pub idle: Duration,
}

/// The `--max-concurrent-requests` slots and the [`MAX_BODIES_IN_MEMORY`] body slots,
/// shared by every connection.
pub struct Gate {
    permits: Arc<Semaphore>,
    bodies: Arc<Semaphore>,
    limits: RequestLimits,
    metrics: Arc<Metrics>,
}

impl Gate {
    pub fn new(limits: RequestLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            bodies: Arc::new(Semaphore::new(
                MAX_BODIES_IN_MEMORY.min(limits.max_concurrent_requests),
            )),
            limits,
            metrics,
        }
    }
}

/// A request's body slot, handed to the handler in the request's extensions so it can give
/// the slot back as soon as the body is parsed ([`BodySlot::release`]); otherwise it goes
/// back when the request ends. It also carries the limits [`read_body`] names in its errors.
#[derive(Clone)]
pub struct BodySlot {
    permit: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    limits: RequestLimits,
}

impl BodySlot {
    /// The body is no longer held: let another request read one.
    pub fn release(&self) {
        if let Ok(mut permit) = self.permit.lock() {
            permit.take();
        }
    }
}

/// Before the body is read: take a request slot and a body slot (waiting at most the read
/// timeout for both, then 503 without reading the body), and give the body a deadline, so a
/// body still not read by then fails the read (408) instead of holding the slots and its
/// buffer.
pub async fn admit_request(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let timeout = gate.limits.read_timeout;
    let deadline = Instant::now() + timeout;
    let slots = async {
        let permit = gate.permits.clone().acquire_owned().await?;
        let body = gate.bodies.clone().acquire_owned().await?;
        Ok::<_, tokio::sync::AcquireError>((permit, body))
    };
    let (permit, body) = match tokio::time::timeout_at(deadline, slots).await {
        Ok(Ok(slots)) => slots,
        // Timed out, or (never: the semaphores are not closed) closed.
        Ok(Err(_)) | Err(_) => {
            return HttpError::Overloaded {
                limit: gate.limits.max_concurrent_requests,
            }
            .counted(&gate.metrics)
        }
    };
    request.extensions_mut().insert(BodySlot {
        permit: Arc::new(Mutex::new(Some(body))),
        limits: gate.limits,
    });
    let request = request.map(|body| Body::new(DeadlineBody::new(body, deadline, timeout)));
    let response = next.run(request).await;
    drop(permit);
    response
}

/// The envelope every review route checks: the content type (415), the body's size (413)
/// and its read deadline (408).
pub fn read_body(
    slot: &BodySlot,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, HttpError> {
    check_content_type(headers)?;
    // axum reads at most the limit (also when Content-Length claims more) and answers only
    // after reading, so a client still writing its body gets the 413, not a reset.
    body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            HttpError::PayloadTooLarge {
                limit: slot.limits.max_body_bytes,
            }
        }
        other if is_deadline(&other) => HttpError::RequestTimeout {
            after: slot.limits.read_timeout,
        },
        other => HttpError::Body(axum::Error::new(other)),
    })
}

/// True when reading the body failed because its deadline passed ([`BodyDeadline`],
/// somewhere in the rejection's causes).
fn is_deadline(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = cause {
        if e.is::<BodyDeadline>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn check_content_type(headers: &HeaderMap) -> Result<(), HttpError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("<not text>"))
        .unwrap_or("");
    let essence = value.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(HttpError::UnsupportedMediaType(value.to_owned()))
    }
}

/// The body was not fully read by the deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not read within {0:?}")]
pub struct BodyDeadline(pub Duration);

/// A request body that fails with [`BodyDeadline`] once `deadline` passes: a total bound on
/// reading it, not a per-chunk idle timer, which a body trickled a byte at a time would pass.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    fn new(inner: Body, deadline: Instant, timeout: Duration) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            timeout,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyDeadline(self.timeout).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One accepted TCP connection, from the TLS handshake to its end: the handshake bounded by
/// [`HANDSHAKE_TIMEOUT`], then HTTP on it until it ends, the server shuts down, it sits idle
/// for the idle timeout, or a request head is not read by its deadline.
pub(super) async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    timeouts: ConnectionTimeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let service = TowerToHyperService::new(Tracked {
        router,
        activity: activity.clone(),
    });
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
    let h2_negotiated = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let stream = HeadWatch {
        inner: stream,
        activity: activity.clone(),
        first_read: !h2_negotiated,
    };
    if h2_negotiated {
        activity.h2.store(true, Ordering::Release);
    }
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    // Until the connection ends: on shutdown, or once idle for the idle timeout, ask it to
    // finish (HTTP/2 GOAWAY; HTTP/1.1 close after the current response); a request head not
    // read by its deadline ends it at once.
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = shutdown.wait_for(|stop| *stop), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            // A head started: loop to sleep until its deadline instead.
            _ = activity.head_started.notified(), if !closing => {}
            _ = tokio::time::sleep_until(activity.next_check(timeouts)), if !closing => {
                if activity.head_overdue(timeouts.read) {
                    tracing::debug!(%peer, "request headers not read within the read timeout; closing");
                    break;
                }
                if activity.idle_for(timeouts.idle) {
                    tracing::debug!(%peer, "closing idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Requests in progress on one connection, when the last one started or ended, and when
/// the next one's head began to arrive.
struct Activity {
    in_progress: AtomicUsize,
    last: Mutex<Instant>,
    /// The first byte read while no request was in progress (an HTTP/1.1 request head on
    /// its way); cleared when the head is complete and the request starts.
    head_since: Mutex<Option<Instant>>,
    /// HTTP/2: frames (PING, SETTINGS) arrive between requests, so no header deadline.
    h2: AtomicBool,
    /// Wakes the connection task when a head starts, to check by its deadline.
    head_started: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_progress: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            head_since: Mutex::new(None),
            h2: AtomicBool::new(false),
            head_started: tokio::sync::Notify::new(),
        }
    }

    /// Bytes were read from the client.
    fn bytes_arrived(&self) {
        if self.in_progress.load(Ordering::Acquire) > 0 || self.h2.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut since) = self.head_since.lock() {
            if since.is_none() {
                *since = Some(Instant::now());
                self.head_started.notify_one();
            }
        }
    }

    fn head_since(&self) -> Option<Instant> {
        self.head_since.lock().ok().and_then(|since| *since)
    }

    /// A request head has been arriving for longer than `read` and is still not complete.
    fn head_overdue(&self, read: Duration) -> bool {
        self.in_progress.load(Ordering::Acquire) == 0
            && self.head_since().is_some_and(|since| since.elapsed() >= read)
    }

    /// The earlier of the head's deadline and the idle deadline.
    fn next_check(&self, timeouts: ConnectionTimeouts) -> Instant {
        let idle = self.idle_deadline(timeouts.idle);
        match self.head_since() {
            Some(since) if self.in_progress.load(Ordering::Acquire) == 0 => idle.min(since + timeouts.read),
            _ => idle,
        }
    }

    fn touch(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = Instant::now();
        }
    }

    fn last(&self) -> Instant {
        self.last.lock().map(|l| *l).unwrap_or_else(|_| Instant::now())
    }

    /// When to check again: `timeout` after the last request ended, or, while one is in
    /// progress, `timeout` from now (never in the past, so the check cannot spin). An idle
    /// connection is thus closed between one and two timeouts after its last request.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.in_progress.load(Ordering::Acquire) > 0 {
            Instant::now() + timeout
        } else {
            self.last() + timeout
        }
    }

    fn idle_for(&self, timeout: Duration) -> bool {
        self.in_progress.load(Ordering::Acquire) == 0 && self.last().elapsed() >= timeout
    }
}

/// The router, counting the connection's requests in [`Activity`] while they are answered.
#[derive(Clone)]
struct Tracked {
    router: Router,
    activity: Arc<Activity>,
}

/// One request in progress; ending it counts as activity.
struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

impl<B> tower_service::Service<axum::http::Request<B>> for Tracked
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A Router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        self.activity.in_progress.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut since) = self.activity.head_since.lock() {
            *since = None;
        }
        self.activity.touch();
        let guard = InProgress(self.activity.clone());
        let future = self.router.call(request);
        Box::pin(async move {
            let response = future.await;
            drop(guard);
            response
        })
    }
}

/// The connection's stream, telling [`Activity`] when bytes arrive: the first byte of an
/// HTTP/1.1 request head starts its deadline. Knows HTTP/2 by ALPN or by its preface.
struct HeadWatch<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Still to look at the first bytes for the HTTP/2 preface.
    first_read: bool,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HeadWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if matches!(polled, Poll::Ready(Ok(()))) && !read.is_empty() {
            if self.first_read {
                self.first_read = false;
                let n = read.len().min(H2_PREFACE_START.len());
                if read[..n] == H2_PREFACE_START[..n] {
                    self.activity.h2.store(true, Ordering::Release);
                }
            }
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HeadWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
