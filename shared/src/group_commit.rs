//! Group commit at the application level: claims that arrive while the previous batches are
//! still running go to PostgreSQL together, as one [`sql::CLAIM_BATCH`] statement in one
//! transaction, and each caller gets its own key's row.
//!
//! "Batch" in this module is always a claim batch: the claims that go to the store in one
//! statement.
//!
//! Why: every claim is a transaction, and with durable commits each one waits for a WAL
//! flush; on a busy server each also pays a statement's parse/plan/execute and a round
//! trip. A batch pays those once for all its claims, so the larger the batches, the less
//! PostgreSQL CPU a claim costs.
//!
//! How a batch forms: [`GroupCommitConfig::in_flight`] workers share one queue. A worker
//! that is free decides whether to take what is queued ([`next_batch`], a pure function):
//! - *No other batch in flight*: the queue goes at once. At low load a claim never waits for
//!   company: one that finds the queue empty and nothing in flight is sent by its caller
//!   itself, alone, as without group commit, holding a batch slot while it runs. Under load
//!   the worker that just finished a batch takes everything that arrived during it, straight
//!   away, without a hand-off to another task.
//! - *Batches in flight*: claims wait for one of them to finish, and then go together, unless
//!   a full batch ([`GroupCommitConfig::max_batch`]) is queued or the oldest has waited
//!   [`GroupCommitConfig::linger`]: then another worker starts a batch beside the running
//!   ones. (Starting one for fewer would make two batches run at once for little gain:
//!   concurrent batches contend in PostgreSQL for the same index pages and the WAL.) So
//!   while commits are fast, one batch at a time collects everything that arrived during
//!   the previous one (the largest batches, the least CPU per claim); while commits
//!   are slow (a synchronous standby, a row lock, a busy disk), more batches run at once and
//!   no claim waits much more than `linger` for a free worker.
//!
//! The promises of the single-claim path hold:
//! - *One winner per key*: the table's primary key decides, as before. Two claims for the
//!   same key in one batch are not both sent: the first (in arrival order) goes in the
//!   statement, the others are answered as if they ran right after it: they see its outcome's
//!   holder (and a retried create of the same run is then counted, as always).
//! - *No deadlock between batches*: keys are sent sorted, so two batches that wait on each
//!   other's uncommitted inserts do so in one order.
//! - *Each claim fails only as it would alone.* A batch waits at most [`CLAIM_BATCH_LOCK_WAIT`] on
//!   a row lock: a key whose row another session holds (an operator's open `DELETE`, a
//!   transaction stuck on a slow commit) fails the statement with 55P03 instead of holding
//!   the batch's other claims until the store timeout. Then, as when the server refuses the
//!   statement itself (a constraint on one request's data), every claim of the batch goes
//!   alone, all at once and off the worker: the others are answered at once, the contested
//!   one waits (bounded by the store timeout) exactly as it would have without group commit.
//!   A lost connection or a timeout fails the batch's callers alike, each with a
//!   [`StoreError`] (the webhook's 503).
//! - *Bounded*: each caller still waits at most the store timeout ([`crate::ClaimStore`]
//!   bounds the call); a batch whose callers all gave up is skipped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::claim::{Claim, ClaimKey, RunRef};
use crate::db::{read_claim, Db};
use crate::error::{Cause, Chain, StoreError};
use crate::sql;

/// Largest claim batch: 64 claims are ~20 KB of parameters, still one short statement, and
/// larger batches save no more per claim than they add to the wait of the claims in them.
pub const DEFAULT_MAX_BATCH: usize = 64;
/// Most batches in flight at once (each on its own pooled connection). Only slow commits
/// bring more than one: see [`DEFAULT_LINGER`].
pub const DEFAULT_IN_FLIGHT: usize = 4;
/// Longest a queued claim waits for a running batch before another batch starts for it:
/// the extra latency batching may add to a claim when batches are in flight.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(1);

/// Longest a batch statement waits on a row lock before its claims go alone. Commits of
/// concurrent batches (another replica's claim of the same key) take a few milliseconds;
/// past this, a lock is held by something slow, and the batch's other claims must not wait
/// on it. PostgreSQL's `lock_timeout` text, as the statement sets it (`$8`).
pub const CLAIM_BATCH_LOCK_WAIT: &str = "50ms";

/// SQLSTATE `lock_not_available`: the batch's [`CLAIM_BATCH_LOCK_WAIT`] ran out.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    pub max_batch: usize,
    pub in_flight: usize,
    pub linger: Duration,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
            in_flight: DEFAULT_IN_FLIGHT,
            linger: DEFAULT_LINGER,
        }
    }
}

/// How many queued claims to send as a new batch now, if any: the dispatcher's whole policy.
/// `oldest_waited` is how long the first queued claim has been waiting.
pub(crate) fn next_claim_batch(
    config: &GroupCommitConfig,
    queued: usize,
    running: usize,
    oldest_waited: Duration,
) -> Option<usize> {
    let go = queued > 0
        && running < config.in_flight
        && (running == 0 || queued >= config.max_batch || oldest_waited >= config.linger);
    go.then(|| queued.min(config.max_batch))
}

/// What the insert step found for one caller: `(written, claim)`, or `None` when the key was
/// taken by a holder the statement's snapshot could not see (the caller reads it afresh).
pub(crate) type Inserted = Option<(bool, Claim)>;

struct Pending {
    key: ClaimKey,
    run: RunRef,
    queued_at: Instant,
    reply: oneshot::Sender<Result<Inserted, StoreError>>,
}

/// The batcher. Workers start on first use (inside the caller's runtime) and end when the
/// last [`crate::ClaimStore`] clone holding this is dropped, after the queue is empty.
pub(crate) struct GroupCommit {
    config: GroupCommitConfig,
    /// Runs the batches on the store's pool.
    executor: Db,
    shared: Arc<Shared>,
    started: Once,
}

/// What the callers and the workers share.
struct Shared {
    state: Mutex<State>,
    /// Wakes one idle worker: the queue became non-empty, or reached a full batch. (A worker
    /// that finishes a batch looks at the queue itself.) On drop: every worker.
    wake: Notify,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    /// Batches being run.
    running: usize,
    /// No more claims will come: workers return once the queue is empty.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A worker never panics while holding the lock (no call in it can), and the state
        // stays consistent at every step anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Batches run and claims they carried, since start.
#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    claims: AtomicU64,
}

impl Counters {
    fn count(&self, claims: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.claims.fetch_add(claims as u64, Ordering::Relaxed);
    }
}

/// A handle on group commit's counters that keeps nothing else alive (the metrics read it).
#[derive(Debug, Clone)]
pub struct GroupCommitCounters(Arc<Counters>);

impl GroupCommitCounters {
    /// Claim batches run and claims they carried, so far.
    pub fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.0.batches.load(Ordering::Relaxed),
            claims: self.0.claims.load(Ordering::Relaxed),
        }
    }
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
    pub(crate) fn new(config: GroupCommitConfig, executor: Db) -> Self {
        Self {
            config: GroupCommitConfig {
                max_batch: config.max_batch.max(1),
                in_flight: config.in_flight.max(1),
                linger: config.linger,
            },
            executor,
            shared: Arc::new(Shared {
                state: Mutex::default(),
                wake: Notify::new(),
                counters: Arc::default(),
            }),
            started: Once::new(),
        }
    }

    pub(crate) fn counters(&self) -> GroupCommitCounters {
        GroupCommitCounters(self.shared.counters.clone())
    }

    pub(crate) fn config(&self) -> GroupCommitConfig {
        self.config
    }

    /// The insert step of one claim ([`sql::CLAIM_INSERT`]'s answer), batched with whatever
    /// else is waiting. Not bounded here: the caller bounds it with the store timeout.
    pub(crate) async fn insert(&self, key: &ClaimKey, run: &RunRef) -> Result<Inserted, StoreError> {
        self.start_workers();
        if let Some(_slot) = InlineSlot::take(&self.shared) {
            // A batch of one, which a worker would send at once: the caller sends it itself.
            // Same statement as a claim alone, one batch slot taken while it runs, but no
            // hand-off to a worker task and back (two task wake-ups, each possibly on the
            // other core, on every claim while the load is light).
            self.shared.counters.count(1);
            return insert_alone(&self.executor, key, run).await;
        }
        let (reply, answer) = oneshot::channel();
        let queued = {
            let mut state = self.shared.lock();
            state.queue.push_back(Pending {
                key: key.clone(),
                run: run.clone(),
                queued_at: Instant::now(),
                reply,
            });
            state.queue.len()
        };
        // Only the changes an idle worker acts on: a queue to take or to start the linger
        // clock for, and enough claims for a batch beside the running ones.
        if queued == 1 || queued == self.config.max_batch {
            self.shared.wake.notify_one();
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable("group commit batch was dropped".into()))?
    }

    fn start_workers(&self) {
        self.started.call_once(|| {
            for _ in 0..self.config.in_flight {
                tokio::spawn(worker(self.shared.clone(), self.executor.clone(), self.config));
            }
        });
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_waiters();
    }
}

/// The batch slot a caller sending its own claim holds ([`GroupCommit::insert`]). Given
/// back when the claim ends or its caller gives up: claims that queued meanwhile waited for
/// it, so a worker is woken to take them.
struct InlineSlot<'a>(&'a Shared);

impl<'a> InlineSlot<'a> {
    /// The slot, when nothing is queued and no batch runs.
    fn take(shared: &'a Shared) -> Option<Self> {
        let mut state = shared.lock();
        if !state.queue.is_empty() || state.running > 0 {
            return None;
        }
        state.running += 1;
        Some(Self(shared))
    }
}

impl Drop for InlineSlot<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.running -= 1;
        let queued = !state.queue.is_empty();
        drop(state);
        if queued {
            self.0.wake.notify_one();
        }
    }
}

/// What a free worker does next.
enum Step {
    Run(Vec<Pending>),
    /// Until woken, or until the instant the oldest queued claim has lingered.
    Wait(Option<Instant>),
    /// The store was dropped and the queue is empty.
    Stop,
}

/// Takes batches as [`next_claim_batch`] allows and runs them, until the store is dropped and the
/// queue is empty.
async fn worker(shared: Arc<Shared>, executor: Db, config: GroupCommitConfig) {
    loop {
        let batch = {
            // Registered before looking at the queue, so a wake-up sent in between is not
            // lost. Dropped before the batch runs: a registered waiter that is not waiting
            // would swallow the next wake-up for as long as its batch takes (tokio passes a
            // wake-up on only when the waiter is dropped).
            let notified = shared.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match next_step(&shared, &config) {
                Step::Run(batch) => batch,
                Step::Stop => return,
                Step::Wait(Some(linger_until)) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(linger_until) => {}
                    }
                    continue;
                }
                Step::Wait(None) => {
                    notified.await;
                    continue;
                }
            }
        };
        run_and_answer(&executor, batch, &shared.counters).await;
        shared.lock().running -= 1;
    }
}

/// Under the lock: a batch to run now, or how long to wait.
fn next_step(shared: &Shared, config: &GroupCommitConfig) -> Step {
    let mut state = shared.lock();
    let waited = state.queue.front().map(|p| p.queued_at.elapsed());
    match waited.and_then(|w| next_claim_batch(config, state.queue.len(), state.running, w)) {
        Some(n) => {
            state.running += 1;
            Step::Run(state.queue.drain(..n).collect())
        }
        None if state.closed && state.queue.is_empty() => Step::Stop,
        // Claims wait beside running batches: wake when the oldest has lingered.
        None => Step::Wait(
            state
                .queue
                .front()
                .filter(|_| state.running < config.in_flight)
                .map(|p| p.queued_at + config.linger),
        ),
    }
}

/// Runs one batch and hands each caller its answer.
async fn run_and_answer(executor: &Db, mut batch: Vec<Pending>, counters: &Counters) {
    // Callers that already gave up (store timeout) need no claim.
    batch.retain(|p| !p.reply.is_closed());
    if batch.is_empty() {
        return;
    }
    counters.count(batch.len());
    let requests: Vec<(&ClaimKey, &RunRef)> = batch.iter().map(|p| (&p.key, &p.run)).collect();
    match run_claim_batch(executor, &requests).await {
        Ok(answers) => {
            for (p, answer) in batch.into_iter().zip(answers) {
                let _ = p.reply.send(Ok(answer));
            }
        }
        // A row lock held past CLAIM_BATCH_LOCK_WAIT, or the server refused the statement (a
        // constraint: one request's data can do that): each request goes alone, so only its
        // own fails or waits. A lost connection or a timeout would hit each of them alike:
        // they all get the error at once.
        Err(e) if goes_alone(&e, batch.len()) => {
            for p in batch {
                tokio::spawn(alone(executor.clone(), p));
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.reply.send(Err(copy_error(&e)));
            }
        }
    }
}

/// Whether a failed batch's claims are sent again one by one: after a lock wait ran out
/// (even for one claim: alone, it waits as long as the store timeout allows), or when the
/// server refused a statement of several claims.
fn goes_alone(error: &StoreError, claims: usize) -> bool {
    match error {
        StoreError::Database { .. } if error.sqlstate() == Some(LOCK_NOT_AVAILABLE) => true,
        StoreError::Database { .. } => claims > 1,
        _ => false,
    }
}

/// One claim of a failed batch on its own, as without group commit: a task of its own, so a
/// claim waiting on a lock holds neither the others nor a worker. It stops when its caller
/// gives up (the caller's store timeout), which cancels the statement.
async fn alone(executor: Db, pending: Pending) {
    let Pending {
        key, run, mut reply, ..
    } = pending;
    let answer = tokio::select! {
        answer = insert_alone(&executor, &key, &run) => answer,
        () = reply.closed() => return,
    };
    let _ = reply.send(answer);
}

/// Which request goes into the statement for each distinct key (the first to arrive), and
/// which of the statement's elements answers each request. Keys come out sorted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClaimBatchPlan {
    /// Index into the requests of each statement element, in key order.
    pub(crate) sent: Vec<usize>,
    /// For each request: the statement element (0-based) that answers it, and whether the
    /// request is that element's own (false: a later request for a key already in the batch).
    pub(crate) answered_by: Vec<(usize, bool)>,
}

pub(crate) fn plan_claim_batch(keys: &[&ClaimKey]) -> ClaimBatchPlan {
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
    ClaimBatchPlan { sent, answered_by }
}

/// Answers every request from the statement's per-element results: its own element's for
/// the first request of a key; for a later request of the same key, the holder that element
/// left (never `written`: the key was taken by the request before it).
pub(crate) fn distribute(plan: &ClaimBatchPlan, elements: &[Inserted]) -> Vec<Inserted> {
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

/// The insert step of a claim alone ([`sql::CLAIM_INSERT`]): what a claim does without
/// group commit, and each claim of a failed batch.
pub(crate) async fn insert_alone(db: &Db, key: &ClaimKey, run: &RunRef) -> Result<Inserted, StoreError> {
    db.query_keyed(sql::CLAIM_INSERT, key, &[&run.namespace, &run.name, &run.uid])
        .await?
        .first()
        .map(read_claim)
        .transpose()
}

/// One claim batch: one statement (its own implicit transaction) on one pooled connection.
async fn run_claim_batch(
    executor: &Db,
    requests: &[(&ClaimKey, &RunRef)],
) -> Result<Vec<Inserted>, StoreError> {
    let keys: Vec<&ClaimKey> = requests.iter().map(|(k, _)| *k).collect();
    let plan = plan_claim_batch(&keys);
    let mut columns = sql::ClaimColumns::default();
    for &i in &plan.sent {
        let (key, run) = requests[i];
        columns.push(key, &run.namespace, &run.name, &run.uid);
    }
    let [a, b, c, d, e, f, g] = columns.params();
    let rows = executor
        .query(sql::CLAIM_BATCH, &[a, b, c, d, e, f, g, &CLAIM_BATCH_LOCK_WAIT])
        .await?;
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
mod tests;
