//! The watch side: labelled runs from the API server (kube's runtime watcher) → the index.
//! No store here: what the index says is unwritten is the flush task's (`flush.rs`).

use dedupe_store::error::Chain;
use dedupe_store::DELIVERY_ID_LABEL;
use futures::stream::{select_all, BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;

use super::index::SharedIndex;
use super::metrics::{ReconcileMetrics, SkipLabels, GONE_OVERFLOW};
use super::report::{self, gauge, unix_now};
use crate::orchestration_run::OrchestrationRun;

/// Feeds the events of the reconciler's watches (one per namespace, or one cluster-wide)
/// to the index, counting and reporting as it goes.
pub(super) struct IndexFeed<'a> {
    pub(super) metrics: &'a ReconcileMetrics,
    /// Watch `w` is `namespaces[w]` (`None`: all namespaces).
    pub(super) namespaces: &'a [Option<String>],
    /// Runs listed so far in each watch's current (re)list, for its "listed" log line.
    pub(super) listed: Vec<usize>,
}

impl IndexFeed<'_> {
    /// Feeds one event of watch `w` to the shared index.
    pub(super) fn apply(
        &mut self,
        shared: &SharedIndex,
        w: usize,
        event: Result<Event<OrchestrationRun>, watcher::Error>,
    ) {
        let namespace = self.namespaces.get(w).and_then(Option::as_deref).unwrap_or("all");
        if let Err(e) = &event {
            self.metrics.watch_errors.inc();
            tracing::warn!(
                namespace,
                error = %Chain(e),
                "reconciler watch failed; retrying with backoff (admission is not affected)"
            );
            return;
        }
        self.metrics.last_event.set(unix_now());
        let mut index = shared.index();
        match event {
            Ok(Event::Init) => {
                index.init(w);
                if let Some(n) = self.listed.get_mut(w) {
                    *n = 0;
                }
            }
            Ok(Event::InitApply(run)) => {
                if let Some(n) = self.listed.get_mut(w) {
                    *n += 1;
                }
                if let Some(skipped) = index.apply(w, run) {
                    report::skipped(self.metrics, &skipped);
                }
            }
            Ok(Event::Apply(run)) => {
                if let Some(skipped) = index.apply(w, run) {
                    report::skipped(self.metrics, &skipped);
                }
            }
            Ok(Event::Delete(run)) => index.delete(w, run),
            Ok(Event::InitDone) => {
                let gone = index.init_done(w);
                tracing::info!(
                    namespace,
                    listed = self.listed.get(w).copied().unwrap_or(0),
                    gone,
                    "reconciler listed runs"
                );
            }
            Err(_) => {}
        }
        self.metrics.observed_runs.set(gauge(index.runs()));
        let dropped = index.take_gone_dropped();
        if dropped > 0 {
            self.metrics
                .skipped
                .get_or_create(&SkipLabels {
                    reason: GONE_OVERFLOW,
                })
                .inc_by(dropped);
            tracing::warn!(
                dropped,
                "reconciler dropped runs that left before they were written: too many were waiting for the claim store"
            );
        }
    }
}

/// One watch of labelled runs, in `namespace` or all, with the runtime's default backoff
/// (exponential, with jitter) between failed lists and watches.
fn watch_runs(
    client: &kube::Client,
    namespace: Option<&str>,
) -> impl Stream<Item = Result<Event<OrchestrationRun>, watcher::Error>> + Send + 'static {
    let api: Api<OrchestrationRun> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // An existence selector: every run with the label, whatever its value (runs that cannot
    // hold a claim are skipped and reported by the index).
    let config = watcher::Config::default().labels(DELIVERY_ID_LABEL);
    watcher::watcher(api, config).default_backoff()
}

/// One event of watch number `w` (an index into the reconciler's namespaces).
pub(super) type Watched = (usize, Result<Event<OrchestrationRun>, watcher::Error>);

/// Every watch's events (one per namespace, `None` for cluster-wide), merged, each tagged
/// with its watch's number.
pub(super) fn watch_all(
    client: &kube::Client,
    namespaces: &[Option<String>],
) -> SelectAll<BoxStream<'static, Watched>> {
    select_all(namespaces.iter().enumerate().map(|(w, ns)| {
        watch_runs(client, ns.as_deref())
            .map(move |event| (w, event))
            .boxed()
    }))
}
