//! When a watch last heard from the API server. kube's watcher consumes bookmarks without
//! yielding an event, so a quiet but healthy watch would look the same as a stuck one from
//! its events alone. This client layer wraps the body of every watch response
//! (`watch=true`) and sets a gauge to the current time on each chunk that arrives: an
//! event, or a bookmark, which the API server sends about once a minute on an idle watch.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicI64;
use std::task::{Context, Poll};

use axum::http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;

/// The layer: give it to `kube::client::ClientBuilder::with_layer`.
#[derive(Clone, Debug)]
pub struct WatchActivityLayer {
    pub last_received: Gauge<i64, AtomicI64>,
}

impl<S> tower_layer::Layer<S> for WatchActivityLayer {
    type Service = WatchActivity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WatchActivity {
            inner,
            last_received: self.last_received.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct WatchActivity<S> {
    inner: S,
    last_received: Gauge<i64, AtomicI64>,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for WatchActivity<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<Observed<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let watch = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true"));
        let gauge = watch.then(|| self.last_received.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| Observed { inner, gauge }))
        })
    }
}

/// A response body that stamps the gauge on each data chunk (watch responses only).
#[derive(Debug)]
pub struct Observed<B> {
    inner: B,
    gauge: Option<Gauge<i64, AtomicI64>>,
}

impl<B: Body + Unpin> Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(gauge)) = (&polled, &self.gauge) {
            if frame.is_data() {
                gauge.set(super::report::unix_now());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
