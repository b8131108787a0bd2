//! The reconciler: claims that agree with the cluster, whatever got past the webhook.
//!
//! It watches labelled OrchestrationRuns (kube's runtime watcher: list, then watch from the
//! list's resourceVersion, with bookmarks, relisting on 410 Gone, backing off on errors),
//! one watch per configured namespace or one cluster-wide, and keeps an [`index::Index`]
//! of the runs by claim key. Whenever runs appear (and for every run after a relist) it
//! writes one batch statement per [`BATCH_ROWS`] runs (`ClaimStore::reconcile_batch`):
//! - a key without a claim gets a `confirmed` claim naming its run (a back-fill);
//! - a pending claim naming an observed run (namespace/name, same key) is confirmed;
//! - several live runs on one key: the oldest (creationTimestamp, then name) is the one a
//!   back-fill names; the others are reported (metric, warning log), never touched.
//!
//! Every replica reconciles, without a Lease: the writes are idempotent (`ON CONFLICT DO
//! NOTHING`, and confirming is a no-op the second time), so several replicas — or one
//! restarted half-way through a back-fill — never make a second claim (the primary key
//! forbids it anyway). A Lease would save a few idempotent batches per replica at start,
//! at the price of Lease RBAC, a failover gap and one more moving part.
//!
//! Admission never waits on it: it has its own one-connection pool, so it cannot take a
//! pooled connection from a review, and readiness does not depend on it. Its health is the
//! `orchestration_dedupe_reconcile_*` metrics.

pub mod activity;
pub mod index;
pub mod metrics;
pub mod resource;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dedupe_store::error::Chain;
use dedupe_store::run::escaped;
use dedupe_store::{ClaimScope, ClaimStore, ObservedRun, DELIVERY_ID_LABEL};
use futures::stream::{select_all, BoxStream};
use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::{watch as signal, Notify};
use tokio::task::JoinHandle;

use self::index::{Batch, Conflict, Index, Skipped};
use self::metrics::{ReconcileMetrics, SkipLabels, GONE_OVERFLOW, STORE_REJECTED};
use self::resource::OrchestrationRun;

/// Runs per store statement: the watcher's list page size, so a relist of N runs costs
/// about N/500 statements, each well inside the store timeout.
pub const BATCH_ROWS: usize = 500;
/// How long the first change after a quiet spell waits for company before it is written:
/// short next to the 2 s in which a pending claim is confirmed after its run appears, long
/// enough to batch a burst. Under steady churn changes are written at this pace.
pub const FLUSH_DELAY: Duration = Duration::from_millis(100);
/// After a failed store write, the first and the longest wait before writing again.
pub const STORE_RETRY_FIRST: Duration = Duration::from_millis(500);
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(30);
/// Connections the reconciler's own pool holds: one, so admission's pool is never touched.
pub const POOL_SIZE: usize = 1;
/// Longest part of a run's text (name, field value, rule) a report quotes.
const REPORT_MAX_CHARS: usize = 256;

/// What the reconciler needs; built in `run.rs` when `--reconcile` is on.
pub struct Reconciler {
    pub client: kube::Client,
    /// Empty: one cluster-wide watch.
    pub namespaces: Vec<String>,
    pub scope: ClaimScope,
    /// Its own small pool (see [`POOL_SIZE`]).
    pub store: ClaimStore,
    pub metrics: ReconcileMetrics,
}

type Watched = (usize, Result<Event<OrchestrationRun>, watcher::Error>);

/// The index and the flusher's doorbell, shared by the watch task and the flush task.
struct Shared {
    index: Mutex<Index>,
    wake: Notify,
}

impl Shared {
    /// The index, also after a panic elsewhere left the lock poisoned (the index is
    /// consistent between calls, and a missed write is healed by the next relist).
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Aborts the task when dropped, so stopping the reconciler stops its flusher.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Reconciler {
    /// Watches and writes until `stop` turns true: this task feeds the watches' events to
    /// the index; a task of its own writes what the index says is unwritten.
    pub async fn run(self, mut stop: signal::Receiver<bool>) {
        let namespaces: Vec<Option<String>> = if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        };
        tracing::info!(
            namespaces = %if self.namespaces.is_empty() { "all".to_owned() } else { self.namespaces.join(",") },
            scope = self.scope.as_str(),
            "reconciler watching labelled OrchestrationRuns"
        );
        let shared = Arc::new(Shared {
            index: Mutex::new(Index::new(self.scope, namespaces.len())),
            wake: Notify::new(),
        });
        let _flusher = AbortOnDrop(tokio::spawn(
            Flusher {
                shared: shared.clone(),
                store: self.store.clone(),
                metrics: self.metrics.clone(),
            }
            .run(stop.clone()),
        ));
        let streams: Vec<BoxStream<'static, Watched>> = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                watch_runs(&self.client, ns.as_deref())
                    .map(move |e| (i, e))
                    .boxed()
            })
            .collect();
        let mut events = select_all(streams);
        let mut listed = vec![0usize; namespaces.len()];
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                event = events.next() => match event {
                    Some((w, event)) => {
                        self.on_event(&shared, &namespaces, &mut listed, w, event);
                        shared.wake.notify_one();
                    }
                    None => break,
                },
            }
            if *stop.borrow() {
                break;
            }
        }
        tracing::info!("reconciler stopped");
    }

    /// Feeds one watch event to the index.
    fn on_event(
        &self,
        shared: &Shared,
        namespaces: &[Option<String>],
        listed: &mut [usize],
        w: usize,
        event: Result<Event<OrchestrationRun>, watcher::Error>,
    ) {
        let namespace = namespaces.get(w).and_then(Option::as_deref).unwrap_or("all");
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
                if let Some(n) = listed.get_mut(w) {
                    *n = 0;
                }
            }
            Ok(Event::InitApply(run)) => {
                if let Some(n) = listed.get_mut(w) {
                    *n += 1;
                }
                if let Some(skipped) = index.apply(w, run) {
                    self.report_skipped(&skipped);
                }
            }
            Ok(Event::Apply(run)) => {
                if let Some(skipped) = index.apply(w, run) {
                    self.report_skipped(&skipped);
                }
            }
            Ok(Event::Delete(run)) => index.delete(w, run),
            Ok(Event::InitDone) => {
                let gone = index.init_done(w);
                tracing::info!(
                    namespace,
                    listed = listed.get(w).copied().unwrap_or(0),
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

    fn report_skipped(&self, skipped: &Skipped) {
        let reason = skipped.rejection.reason.as_str();
        self.metrics.skipped.get_or_create(&SkipLabels { reason }).inc();
        tracing::warn!(
            run = %escaped(&format!("{}/{}", skipped.namespace, skipped.name), REPORT_MAX_CHARS),
            reason,
            field = skipped.rejection.field,
            problem = %escaped(&skipped.rejection.problem, REPORT_MAX_CHARS),
            "reconciler skipped a run it cannot claim (the webhook would refuse its key): no claim is written for it; the other runs are not held back"
        );
    }
}

/// Writes what the index says is unwritten, in batches, backing off while the store fails.
struct Flusher {
    shared: Arc<Shared>,
    store: ClaimStore,
    metrics: ReconcileMetrics,
}

impl Flusher {
    async fn run(self, mut stop: signal::Receiver<bool>) {
        let mut retry_delay = STORE_RETRY_FIRST;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.shared.wake.notified() => {}
            }
            if self.shared.index().unwritten() < BATCH_ROWS {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(FLUSH_DELAY) => {}
                }
            }
            loop {
                let batch = self.shared.index().take_batch(BATCH_ROWS);
                if batch.rows.is_empty() {
                    break;
                }
                if self.write(batch).await {
                    retry_delay = STORE_RETRY_FIRST;
                } else {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(retry_delay) => {}
                    }
                    retry_delay = (retry_delay * 2).min(STORE_RETRY_MAX);
                }
            }
            let mut index = self.shared.index();
            if index.take_sync() {
                self.metrics.last_sync.set(unix_now());
                tracing::info!(
                    runs = index.runs(),
                    conflicts = index.conflicts(),
                    "reconciler in sync with the API server"
                );
            }
        }
    }

    /// Writes one batch; false when the store failed (the rows are put back).
    async fn write(&self, batch: Batch) -> bool {
        report(&batch.conflicts);
        self.metrics.conflicts.set(gauge(self.shared.index().conflicts()));
        match self.store.reconcile_isolating(&batch.rows).await {
            Ok(done) => {
                let counts = done.counts;
                self.metrics.backfilled.inc_by(counts.backfilled);
                self.metrics.confirmed.inc_by(counts.confirmed);
                if counts.backfilled + counts.confirmed > 0 {
                    tracing::info!(
                        runs = batch.rows.len(),
                        backfilled = counts.backfilled,
                        confirmed = counts.confirmed,
                        "reconciler wrote claims for observed runs"
                    );
                }
                for (row, error) in &done.rejected {
                    report_rejected(&self.metrics, row, error);
                }
                true
            }
            Err(e) => {
                self.shared.index().requeue(&batch.rows);
                self.metrics.store_errors.inc();
                tracing::warn!(error = %Chain(&e), runs = batch.rows.len(), "reconciler could not write to the claim store; will retry");
                false
            }
        }
    }
}

fn report_rejected(metrics: &ReconcileMetrics, row: &ObservedRun, error: &dedupe_store::StoreError) {
    metrics
        .skipped
        .get_or_create(&SkipLabels {
            reason: STORE_REJECTED,
        })
        .inc();
    tracing::warn!(
        run = %escaped(&format!("{}/{}", row.namespace, row.name), REPORT_MAX_CHARS),
        claimKey = %escaped(&row.key.to_string(), REPORT_MAX_CHARS),
        reason = STORE_REJECTED,
        error = %escaped(&Chain(error).to_string(), REPORT_MAX_CHARS),
        "the claim store refused a run's row: no claim is written for it; the rest of its batch was written"
    );
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

fn report(conflicts: &[Conflict]) {
    for c in conflicts {
        tracing::warn!(
            deliveryId = %c.key.delivery_id,
            claimKey = %c.key,
            holder = %c.holder,
            others = %c.others.join(","),
            "several live runs carry one delivery (they got in while the webhook was bypassed): the oldest holds the claim; the others are left as they are"
        );
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
