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

pub mod index;
pub mod metrics;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dedupe_store::{ClaimKey, ClaimScope, ClaimStore, DELIVERY_ID_LABEL};
use futures::stream::{select_all, BoxStream};
use futures::{Stream, StreamExt};
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::watch as signal;
use tokio::time::Instant;

use self::index::{Conflict, Index};
use self::metrics::ReconcileMetrics;
use crate::lookup::run_resource;

/// Runs per store statement: the watcher's list page size, so a relist of N runs costs
/// about N/500 statements, each well inside the store timeout.
pub const BATCH_ROWS: usize = 500;
/// How long a lone change waits for company before it is written: short next to the 2 s
/// in which a pending claim is confirmed after its run appears, long enough to batch a burst.
pub const FLUSH_DELAY: Duration = Duration::from_millis(100);
/// After a failed store write, the first and the longest wait before writing again.
pub const STORE_RETRY_FIRST: Duration = Duration::from_millis(500);
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(30);
/// Connections the reconciler's own pool holds: one, so admission's pool is never touched.
pub const POOL_SIZE: usize = 1;

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

type Watched = (usize, Result<Event<DynamicObject>, watcher::Error>);

/// One watch's progress through its (re)list.
struct WatchState {
    namespace: Option<String>,
    /// Objects of a list in progress (between `Init` and `InitDone`).
    listing: Option<Vec<DynamicObject>>,
    /// Has completed at least one list.
    synced: bool,
}

impl Reconciler {
    /// Watches and writes until `stop` turns true.
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
        let streams: Vec<BoxStream<'static, Watched>> = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                watch_runs(&self.client, ns.as_deref())
                    .map(move |e| (i, e))
                    .boxed()
            })
            .collect();
        let mut states: Vec<WatchState> = namespaces
            .into_iter()
            .map(|namespace| WatchState {
                namespace,
                listing: None,
                synced: false,
            })
            .collect();
        let mut events = select_all(streams);
        let mut index = Index::new(self.scope);
        let mut quiet_since = Instant::now();
        let mut retry_at = Instant::now();
        let mut retry_delay = STORE_RETRY_FIRST;
        // A list finished whose runs are not all written yet.
        let mut sync_pending = false;
        let mut blocked = false;
        loop {
            // Nothing to write until a watch has listed; and after a flush that left keys
            // whose watch has not listed yet, nothing until the next event.
            let flush_at = if blocked || !states.iter().any(|s| s.synced) || index.dirty_keys() == 0 {
                None
            } else if index.dirty_keys() >= BATCH_ROWS {
                Some(retry_at)
            } else {
                Some(retry_at.max(quiet_since + FLUSH_DELAY))
            };
            tokio::select! {
                _ = stop.changed() => break,
                event = events.next() => match event {
                    Some((i, event)) => {
                        quiet_since = Instant::now();
                        blocked = false;
                        if self.on_event(&mut index, &mut states[i], event) {
                            sync_pending = true;
                        }
                    }
                    None => break,
                },
                _ = sleep_until(flush_at) => {
                    match self.flush(&mut index, &states).await {
                        Ok(()) => {
                            retry_delay = STORE_RETRY_FIRST;
                            blocked = index.dirty_keys() > 0;
                        }
                        Err(()) => {
                            retry_at = Instant::now() + retry_delay;
                            retry_delay = (retry_delay * 2).min(STORE_RETRY_MAX);
                        }
                    }
                }
            }
            // A list completed and everything it showed is written (also when it showed
            // nothing, or only runs already written).
            if sync_pending && states.iter().all(|s| s.synced) && index.dirty_keys() == 0 {
                sync_pending = false;
                self.metrics.last_sync.set(unix_now());
                tracing::info!(
                    runs = index.runs(),
                    conflicts = index.conflicts(),
                    "reconciler in sync with the API server"
                );
            }
            if *stop.borrow() {
                break;
            }
        }
        tracing::info!("reconciler stopped");
    }

    /// Feeds one watch event to the index; true when a list just completed.
    fn on_event(
        &self,
        index: &mut Index,
        state: &mut WatchState,
        event: Result<Event<DynamicObject>, watcher::Error>,
    ) -> bool {
        if event.is_ok() {
            self.metrics.last_event.set(unix_now());
        }
        match event {
            Ok(Event::Init) => state.listing = Some(Vec::new()),
            Ok(Event::InitApply(object)) => state.listing.get_or_insert_with(Vec::new).push(object),
            Ok(Event::InitDone) => {
                let listed = state.listing.take().unwrap_or_default();
                index.replace(state.namespace.as_deref(), &listed);
                state.synced = true;
                self.metrics.observed_runs.set(gauge(index.runs()));
                tracing::info!(
                    namespace = state.namespace.as_deref().unwrap_or("all"),
                    listed = listed.len(),
                    "reconciler listed runs"
                );
                return true;
            }
            Ok(Event::Apply(object)) => {
                index.apply(&object);
                self.metrics.observed_runs.set(gauge(index.runs()));
            }
            Ok(Event::Delete(object)) => {
                index.delete(&object);
                self.metrics.observed_runs.set(gauge(index.runs()));
            }
            Err(e) => {
                self.metrics.watch_errors.inc();
                tracing::warn!(
                    namespace = state.namespace.as_deref().unwrap_or("all"),
                    error = %e,
                    "reconciler watch failed; retrying with backoff (admission is not affected)"
                );
            }
        }
        false
    }

    /// Writes every dirty key, a batch at a time. On a store failure the failed batch's keys
    /// stay dirty and the caller waits before trying again.
    async fn flush(&self, index: &mut Index, states: &[WatchState]) -> Result<(), ()> {
        loop {
            let before = index.dirty_keys();
            let (rows, conflicts) = index.take_batch_where(BATCH_ROWS, |key| self.ready(states, key));
            if index.dirty_keys() == before {
                // Only keys whose watch has not listed yet are left.
                break;
            }
            report(&conflicts);
            self.metrics.conflicts.set(gauge(index.conflicts()));
            match self.store.reconcile_batch(&rows).await {
                Ok(counts) => {
                    self.metrics.backfilled.inc_by(counts.backfilled);
                    self.metrics.confirmed.inc_by(counts.confirmed);
                    if counts.backfilled + counts.confirmed > 0 {
                        tracing::info!(
                            runs = rows.len(),
                            backfilled = counts.backfilled,
                            confirmed = counts.confirmed,
                            "reconciler wrote claims for observed runs"
                        );
                    }
                }
                Err(e) => {
                    index.mark_dirty(&rows);
                    self.metrics.store_errors.inc();
                    tracing::warn!(error = %e, runs = rows.len(), "reconciler could not write to the claim store; will retry");
                    return Err(());
                }
            }
        }
        Ok(())
    }
}

impl Reconciler {
    /// Whether `key` may be written: every run that can carry it has been listed. Keys of
    /// the `orchestration` and `namespace` scopes live in one namespace, so its watch is
    /// enough (a namespace whose watch cannot list — RBAC missing there — does not hold
    /// the others back); a `cluster` key can span namespaces and waits for every watch.
    fn ready(&self, states: &[WatchState], key: &ClaimKey) -> bool {
        if self.scope == ClaimScope::Cluster {
            return states.iter().all(|s| s.synced);
        }
        states
            .iter()
            .any(|s| s.synced && s.namespace.as_deref().is_none_or(|n| n == key.namespace))
    }
}

/// One watch of labelled runs, in `namespace` or all, with the runtime's default backoff
/// (exponential, with jitter) between failed lists and watches.
fn watch_runs(
    client: &kube::Client,
    namespace: Option<&str>,
) -> impl Stream<Item = Result<Event<DynamicObject>, watcher::Error>> + Send + 'static {
    let resource = run_resource();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    // An existence selector: every run with the label, whatever its value (bad values are
    // left out by the index).
    let config = watcher::Config::default().labels(DELIVERY_ID_LABEL);
    watcher::watcher(api, config).default_backoff()
}

fn report(conflicts: &[Conflict]) {
    for c in conflicts {
        let others: Vec<String> = c.others.iter().map(ToString::to_string).collect();
        tracing::warn!(
            deliveryId = %c.key.delivery_id,
            claimKey = %c.key,
            holder = %c.holder,
            others = %others.join(","),
            "several live runs carry one delivery (they got in while the webhook was bypassed): the oldest holds the claim; the others are left as they are"
        );
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
