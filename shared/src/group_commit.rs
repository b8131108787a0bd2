//! Group commit at the application level: claims that arrive while the previous batches are
//! still running go to PostgreSQL together, as one [`sql::CLAIM_BATCH`] statement in one
//! transaction, and each caller gets its own key's row.
//!
//! Why: every claim is a transaction, and with durable commits each one waits for a WAL
//! flush; on a busy server each also pays a statement's parse/plan/execute and a round
//! trip. A batch pays those once for all its claims.
//!
//! How a batch forms (no timer): a fixed number of workers ([`GroupCommitConfig::in_flight`])
//! each take whatever claims are queued the moment they become free, up to
//! [`GroupCommitConfig::max_batch`], and run them. A claim that arrives while a worker is
//! idle goes at once, alone, so at low load nobody waits for company; only when every
//! worker is busy do claims queue, and then the next free worker takes them all.
//!
//! The promises of the single-claim path hold:
//! - *One winner per key*: the table's primary key decides, as before. Two claims for the
//!   same key in one batch are not both sent: the first (in arrival order) goes in the
//!   statement, the others are answered as if they ran right after it: they see its outcome's
//!   holder (and a retried create of the same run then records its uid, as always).
//! - *No deadlock between batches*: keys are sent sorted, so two batches that wait on each
//!   other's uncommitted inserts do so in one order.
//! - *A failed batch fails only its callers*, each with a [`StoreError`] (the webhook's 503).
//!   When the server refuses the statement itself (a constraint on one request's data), each
//!   request is retried alone, so only the offending one fails.
//! - *Bounded*: each caller still waits at most the store timeout ([`crate::ClaimStore`]
//!   bounds the call); a batch whose callers all gave up is skipped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::types::ToSql;

use crate::claim::{Claim, ClaimKey, RunRef};
use crate::error::{Cause, Chain, StoreError};
use crate::sql;
use crate::store::{read_claim, ClaimStore};

/// Largest batch a worker takes: 64 claims are ~20 KB of parameters, one short statement;
/// larger batches stopped paying on the store-level measurement (docs/BENCHMARKS.md).
pub const DEFAULT_MAX_BATCH: usize = 64;
/// Batches in flight at once (each on its own pooled connection). Fewer means larger
/// batches under load, more means less queueing behind a slow batch; see
/// docs/BENCHMARKS.md for the measurement behind the default.
pub const DEFAULT_IN_FLIGHT: usize = 4;

/// The knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    pub max_batch: usize,
    pub in_flight: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
            in_flight: DEFAULT_IN_FLIGHT,
        }
    }
}

/// What the insert step found for one caller: `(written, claim)`, or `None` when the key was
/// taken by a holder the statement's snapshot could not see (the caller reads it afresh).
pub(crate) type Inserted = Option<(bool, Claim)>;

struct Pending {
    key: ClaimKey,
    run: RunRef,
    reply: oneshot::Sender<Result<Inserted, StoreError>>,
}

/// The batcher. Workers start on first use (inside the caller's runtime) and end when the
/// last [`ClaimStore`] clone holding this is dropped.
pub(crate) struct GroupCommit {
    config: GroupCommitConfig,
    /// Runs the batches; a store without group commit, sharing the pool.
    executor: ClaimStore,
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
    counters: Arc<Counters>,
}

/// Batches run and claims they carried, since start.
#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    claims: AtomicU64,
}

/// How much batching happened: claims per batch is `claims / batches`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitStats {
    pub batches: u64,
    pub claims: u64,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    pub(crate) fn new(config: GroupCommitConfig, executor: ClaimStore) -> Self {
        Self {
            config: GroupCommitConfig {
                max_batch: config.max_batch.max(1),
                in_flight: config.in_flight.max(1),
            },
            executor,
            queue: OnceLock::new(),
            counters: Arc::default(),
        }
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            claims: self.counters.claims.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn config(&self) -> GroupCommitConfig {
        self.config
    }

    /// The insert step of one claim ([`sql::CLAIM_INSERT`]'s answer), batched with whatever
    /// else is waiting. Not bounded here: the caller bounds it with the store timeout.
    pub(crate) async fn insert(&self, key: &ClaimKey, run: &RunRef) -> Result<Inserted, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            key: key.clone(),
            run: run.clone(),
            reply,
        };
        self.queue()
            .send(pending)
            .map_err(|_| StoreError::Unavailable("group commit workers stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("group commit batch was dropped".into()))?
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Pending> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..self.config.in_flight {
                tokio::spawn(worker(
                    rx.clone(),
                    self.executor.clone(),
                    self.config.max_batch,
                    self.counters.clone(),
                ));
            }
            tx
        })
    }
}

/// Takes what is queued when it is free, runs it, answers; until every sender is gone.
async fn worker(
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>,
    executor: ClaimStore,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    loop {
        let mut batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        // Callers that already gave up (store timeout) need no claim.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.claims.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let requests: Vec<(&ClaimKey, &RunRef)> = batch.iter().map(|p| (&p.key, &p.run)).collect();
        match run_batch(&executor, &requests).await {
            Ok(answers) => {
                for (p, answer) in batch.into_iter().zip(answers) {
                    let _ = p.reply.send(Ok(answer));
                }
            }
            // The server refused the statement (a constraint, say): one request's data can do
            // that, so each request goes alone and only its own fails. A lost connection or a
            // timeout would hit each of them alike: they all get the error at once.
            Err(StoreError::Database { .. }) if batch.len() > 1 => {
                for p in batch {
                    let answer = executor.insert_one(&p.key, &p.run).await;
                    let _ = p.reply.send(answer);
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(copy_error(&e)));
                }
            }
        }
    }
}

/// Which request goes into the statement for each distinct key (the first to arrive), and
/// which of the statement's elements answers each request. Keys come out sorted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BatchPlan {
    /// Index into the requests of each statement element, in key order.
    pub(crate) sent: Vec<usize>,
    /// For each request: the statement element (0-based) that answers it, and whether the
    /// request is that element's own (false: a later request for a key already in the batch).
    pub(crate) answered_by: Vec<(usize, bool)>,
}

pub(crate) fn plan_batch(keys: &[&ClaimKey]) -> BatchPlan {
    let mut first_of: BTreeMap<(&str, &str, &str, &str), usize> = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        first_of
            .entry((
                key.delivery_id.as_str(),
                key.scope.as_str(),
                key.namespace.as_str(),
                key.orchestration.as_str(),
            ))
            .or_insert(i);
    }
    let sent: Vec<usize> = first_of.values().copied().collect();
    let mut element_of_request = vec![0usize; keys.len()];
    for (element, &request) in sent.iter().enumerate() {
        element_of_request[request] = element;
    }
    let answered_by = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let first = first_of
                .get(&(
                    key.delivery_id.as_str(),
                    key.scope.as_str(),
                    key.namespace.as_str(),
                    key.orchestration.as_str(),
                ))
                .copied()
                .unwrap_or(i);
            (element_of_request[first], first == i)
        })
        .collect();
    BatchPlan { sent, answered_by }
}

/// Answers every request from the statement's per-element results: its own element's for
/// the first request of a key; for a later request of the same key, the holder that element
/// left (never `written`: the key was taken by the request before it).
pub(crate) fn distribute(plan: &BatchPlan, elements: &[Inserted]) -> Vec<Inserted> {
    plan.answered_by
        .iter()
        .map(|&(element, own)| {
            let result = elements.get(element).cloned().flatten();
            if own {
                result
            } else {
                result.map(|(_, claim)| (false, claim))
            }
        })
        .collect()
}

/// One batch: one statement (its own implicit transaction) on one pooled connection.
async fn run_batch(
    executor: &ClaimStore,
    requests: &[(&ClaimKey, &RunRef)],
) -> Result<Vec<Inserted>, StoreError> {
    let keys: Vec<&ClaimKey> = requests.iter().map(|(k, _)| *k).collect();
    let plan = plan_batch(&keys);
    let column = |f: &dyn Fn(&ClaimKey, &RunRef) -> String| -> Vec<String> {
        plan.sent
            .iter()
            .map(|&i| f(requests[i].0, requests[i].1))
            .collect()
    };
    let delivery = column(&|k, _| k.delivery_id.clone());
    let scope = column(&|k, _| k.scope.as_str().to_owned());
    let namespace = column(&|k, _| k.namespace.clone());
    let orchestration = column(&|k, _| k.orchestration.clone());
    let run_namespace = column(&|_, r| r.namespace.clone());
    let run_name = column(&|_, r| r.name.clone());
    let run_uid = column(&|_, r| r.uid.clone());
    let params: [&(dyn ToSql + Sync); 7] = [
        &delivery,
        &scope,
        &namespace,
        &orchestration,
        &run_namespace,
        &run_name,
        &run_uid,
    ];
    let rows = executor.query_batch(sql::CLAIM_BATCH, &params).await?;
    let mut elements: Vec<Inserted> = vec![None; plan.sent.len()];
    for row in &rows {
        let ord: i64 = row.try_get("ord")?;
        let slot = usize::try_from(ord)
            .ok()
            .and_then(|o| o.checked_sub(1))
            .and_then(|o| elements.get_mut(o))
            .ok_or_else(|| StoreError::UnexpectedRow(format!("batch row for element {ord}")))?;
        if slot.is_some() {
            return Err(StoreError::UnexpectedRow(format!(
                "two batch rows for element {ord}"
            )));
        }
        *slot = Some(read_claim(row)?);
    }
    Ok(distribute(&plan, &elements))
}

/// Every caller of a failed batch gets its own copy of the error. Causes are not `Clone`:
/// each copy carries the original's cause chain as text, and keeps its kind (and SQLSTATE).
fn copy_error(e: &StoreError) -> StoreError {
    let cause = || -> Cause {
        match std::error::Error::source(e) {
            Some(source) => Chain(source).to_string().into(),
            None => e.to_string().into(),
        }
    };
    match e {
        StoreError::Timeout(d) => StoreError::Timeout(*d),
        StoreError::Unavailable(_) => StoreError::Unavailable(cause()),
        StoreError::Database { code, .. } => StoreError::Database {
            code: code.clone(),
            source: cause(),
        },
        StoreError::UnexpectedRow(m) => StoreError::UnexpectedRow(m.clone()),
        _ => StoreError::Query(cause()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claim::ClaimScope;

    fn key(d: &str) -> ClaimKey {
        ClaimKey::new(ClaimScope::Orchestration, "agents", "codex", d)
    }

    #[test]
    fn distinct_keys_are_sent_sorted_and_each_answered_by_its_own_element() {
        let (b, a, c) = (key("b"), key("a"), key("c"));
        let plan = plan_batch(&[&b, &a, &c]);
        assert_eq!(plan.sent, vec![1, 0, 2]);
        assert_eq!(plan.answered_by, vec![(1, true), (0, true), (2, true)]);
    }

    #[test]
    fn a_repeated_key_is_sent_once_and_its_later_requests_see_the_first_ones_outcome() {
        let (a, b) = (key("a"), key("b"));
        let plan = plan_batch(&[&b, &a, &b, &b]);
        assert_eq!(plan.sent, vec![1, 0]);
        assert_eq!(
            plan.answered_by,
            vec![(1, true), (0, true), (1, false), (1, false)]
        );
    }

    #[test]
    fn the_same_delivery_under_another_scope_is_another_key() {
        let a = key("a");
        let b = ClaimKey::new(ClaimScope::Cluster, "agents", "codex", "a");
        assert_eq!(plan_batch(&[&a, &b]).sent.len(), 2);
    }
}
