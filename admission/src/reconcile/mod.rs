//! The reconciler: claims that agree with the cluster, whatever got past the webhook.
//!
//! It watches labelled OrchestrationRuns (kube's runtime watcher: list, then watch from the
//! list's resourceVersion, with bookmarks, relisting on 410 Gone, backing off on errors),
//! one watch per configured namespace or one cluster-wide, and keeps an [`index::Index`]
//! of the runs by claim key (`watch.rs`: events → index). Whenever runs appear (and for every
//! run after a relist) its flush task (`flush.rs`: index → store) writes one statement per
//! write batch of [`WRITE_BATCH_ROWS`] runs (`ClaimStore::reconcile_batch`):
//! - a key without a claim gets a `confirmed` claim naming its run (a back-fill);
//! - a pending claim naming an observed run (namespace/name, same key) is confirmed;
//! - several live runs on one key: the oldest (creationTimestamp, then name) is the one a
//!   back-fill names; the others are reported (metric, warning log), never touched.
//!
//! Every replica reconciles, without a Lease: the writes are idempotent (`ON CONFLICT DO
//! NOTHING`, and confirming is a no-op the second time), so several replicas — or one
//! restarted half-way through a back-fill — never make a second claim (the primary key
//! forbids it anyway). A Lease would save a few idempotent write batches per replica at start,
//! at the price of Lease RBAC, a failover gap and one more moving part.
//!
//! Admission never waits on it: it has its own one-connection pool, so it cannot take a
//! pooled connection from a review, and readiness does not depend on it. Its health is the
//! `orchestration_dedupe_reconcile_*` metrics.
//!
//! Why its own [`index::Index`] and not kube-runtime's reflector `Store`: a reflector keeps
//! every watched object whole, so memory would grow with what submitters put in runs
//! (parameters, annotations, status), and tens of thousands of runs are normal. The index
//! keeps per run only what a claim needs, in a compact fixed-size entry, and the watched
//! type ([`crate::orchestration_run::OrchestrationRun`]) never builds the rest; the index
//! also knows what a reflector does not: which runs are still unwritten, which key has a
//! conflict, and what a run that left before it was written still owes the store.

pub mod activity;
pub mod index;
pub mod metrics;

mod flush;
mod report;
mod watch;

pub use self::flush::{FLUSH_DELAY, STORE_RETRY, WRITE_BATCH_ROWS};

use std::sync::Arc;

use dedupe_store::{ClaimScope, ClaimStore};
use futures::StreamExt;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

use self::flush::Flusher;
use self::index::{Index, SharedIndex};
use self::metrics::ReconcileMetrics;
use self::watch::{watch_all, IndexFeed};

/// Connections the reconciler's own pool holds: one, so admission's pool is never touched.
pub const POOL_SIZE: usize = 1;

/// What the reconciler needs; built in `startup.rs` when `--reconcile` is on.
pub struct Reconciler {
    pub client: kube::Client,
    /// Empty: one cluster-wide watch.
    pub namespaces: Vec<String>,
    pub scope: ClaimScope,
    /// Its own small pool (see [`POOL_SIZE`]).
    pub store: ClaimStore,
    pub metrics: ReconcileMetrics,
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
    /// the index; the flush task writes what the index says is unwritten.
    pub async fn watch_and_write(self, mut stop: signal::Receiver<bool>) {
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
        let shared = Arc::new(SharedIndex::new(Index::new(self.scope, namespaces.len())));
        let _flusher = AbortOnDrop(tokio::spawn(
            Flusher {
                shared: shared.clone(),
                store: self.store.clone(),
                metrics: self.metrics.clone(),
            }
            .flush_until_stopped(stop.clone()),
        ));
        let mut events = watch_all(&self.client, &namespaces);
        let mut feed = IndexFeed {
            metrics: &self.metrics,
            namespaces: &namespaces,
            listed: vec![0; namespaces.len()],
        };
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                event = events.next() => match event {
                    Some((w, event)) => {
                        feed.apply(&shared, w, event);
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
}
