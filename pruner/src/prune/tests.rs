use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;
use crate::pacing::{PacingConfig, PacingMode};
use crate::policy::BatchPolicyConfig;
use crate::retry::RetryConfig;

type Script = Box<dyn FnMut(&Call) -> Result<PrunedBatch, StoreError> + Send>;

#[derive(Debug, Clone, PartialEq)]
struct Call {
    from: DateTime<Utc>,
    limit: u32,
}

/// A store that answers from a script and records what it was asked.
struct FakeStore {
    script: Mutex<VecDeque<Script>>,
    calls: Mutex<Vec<Call>>,
}

impl FakeStore {
    fn new(script: Vec<Script>) -> Self {
        Self {
            script: Mutex::new(script.into()),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }
}

impl BatchStore for FakeStore {
    async fn delete_batch(
        &self,
        from: DateTime<Utc>,
        _cutoff: DateTime<Utc>,
        limit: u32,
        _timeout: Duration,
    ) -> Result<PrunedBatch, StoreError> {
        let call = Call { from, limit };
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call.clone());
        }
        let next = self.script.lock().ok().and_then(|mut s| s.pop_front());
        match next {
            Some(mut answer) => answer(&call),
            None => Err(StoreError::UnexpectedRow("script ran out".into())),
        }
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_700_000_000 + secs, 0).expect("a timestamp in range")
}

/// A batch deleting `n`, the newest at `newest`, with more left behind it.
fn deleted(n: u64, newest: i64) -> Script {
    batch(n, newest, true)
}

/// The last batch: nothing expired left after it.
fn last(n: u64, newest: i64) -> Script {
    batch(n, newest, false)
}

fn batch(n: u64, newest: i64, more: bool) -> Script {
    Box::new(move |_| {
        Ok(PrunedBatch {
            deleted: n,
            next_from: (n > 0).then(|| at(newest)),
            more,
        })
    })
}

fn failing(e: fn() -> StoreError) -> Script {
    Box::new(move |_| Err(e()))
}

fn task() -> PruneTask {
    PruneTask {
        cutoff: at(1_000),
        batch_timeout: Duration::from_secs(1),
    }
}

fn policy(batch_size: u32, max_runtime: Duration) -> BatchPolicy {
    BatchPolicy::new(BatchPolicyConfig::new(
        batch_size,
        Duration::ZERO,
        max_runtime,
        RetryConfig {
            attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        },
    ))
}

const HOUR: Duration = Duration::from_secs(3600);

/// The loop with fixed pacing: the policy alone decides sizes and pauses.
async fn prune<S: BatchStore>(
    store: &S,
    task: &PruneTask,
    policy: BatchPolicy,
    shutdown: &mut Shutdown,
    jitter: impl FnMut() -> f64,
) -> Finished {
    let fixed = Pacer::new(PacingConfig {
        mode: PacingMode::Fixed,
        ..PacingConfig::default()
    });
    prune_paced(store, task, policy, fixed, shutdown, jitter).await
}

#[tokio::test]
async fn deletes_until_nothing_is_left_carrying_the_lower_bound_forward() {
    // The second batch is short (ties at its bound) but not the last.
    let store = FakeStore::new(vec![deleted(100, 10), deleted(98, 20), last(52, 30)]);
    let (_tx, mut shutdown) = Shutdown::manual();
    let f = prune(&store, &task(), policy(100, HOUR), &mut shutdown, || 0.5).await;
    assert_eq!(f.result.ok(), Some(StopReason::Done));
    assert_eq!((f.summary.deleted, f.summary.batches), (250, 3));
    assert_eq!(f.summary.remaining, Some(0), "ran out of them: none left");
    assert_eq!(f.summary.stopped, "done");
    let froms: Vec<DateTime<Utc>> = store.calls().iter().map(|c| c.from).collect();
    assert_eq!(froms, vec![floor(), at(10), at(20)]);
    assert!(store.calls().iter().all(|c| c.limit == 100));
}

#[tokio::test]
async fn a_signal_during_a_batch_lets_it_commit_then_stops() {
    let (tx, mut shutdown) = Shutdown::manual();
    let signal_mid_batch: Script = Box::new(move |_| {
        let _ = tx.send(Some("SIGTERM"));
        Ok(PrunedBatch {
            deleted: 100,
            next_from: Some(at(20)),
            more: true,
        })
    });
    let store = FakeStore::new(vec![deleted(100, 10), signal_mid_batch, deleted(100, 30)]);
    let f = prune(&store, &task(), policy(100, HOUR), &mut shutdown, || 0.5).await;
    assert_eq!(f.result.ok(), Some(StopReason::Signal));
    assert_eq!(
        (f.summary.deleted, f.summary.batches),
        (200, 2),
        "the batch in flight counts, no batch after it"
    );
    assert_eq!(store.calls().len(), 2);
    assert_eq!(f.summary.stopped, "signal");
}

#[tokio::test]
async fn a_signal_during_a_long_pause_stops_without_waiting_it_out() {
    let (tx, mut shutdown) = Shutdown::manual();
    let store = FakeStore::new(vec![deleted(100, 10), deleted(100, 20)]);
    let slow = BatchPolicy::new(BatchPolicyConfig::new(
        100,
        HOUR,
        HOUR * 24,
        RetryConfig {
            attempts: 1,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        },
    ));
    let started = std::time::Instant::now();
    let task = task();
    let run = prune(&store, &task, slow, &mut shutdown, || 0.5);
    let signal = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = tx.send(Some("SIGINT"));
    };
    let (f, ()) = tokio::join!(run, signal);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(f.result.ok(), Some(StopReason::Signal));
    assert_eq!(f.summary.batches, 1);
}

#[tokio::test]
async fn repeated_timeouts_shrink_the_batch_and_the_prune_goes_on() {
    let timeout = || StoreError::Database {
        code: "57014".into(),
        source: "ERROR: canceling statement due to statement timeout".into(),
    };
    let store = FakeStore::new(vec![
        failing(timeout),
        failing(timeout),
        failing(timeout),
        deleted(10, 10),
        last(3, 11),
    ]);
    let (_tx, mut shutdown) = Shutdown::manual();
    let f = prune(&store, &task(), policy(100, HOUR), &mut shutdown, || 0.5).await;
    assert_eq!(f.result.ok(), Some(StopReason::Done));
    let limits: Vec<u32> = store.calls().iter().map(|c| c.limit).collect();
    assert_eq!(limits, vec![100, 100, 100, 10, 10]);
    assert_eq!((f.summary.deleted, f.summary.batches), (13, 2));
}

#[tokio::test]
async fn a_failing_batch_ends_the_run_with_what_was_done_so_far() {
    let store = FakeStore::new(vec![
        deleted(100, 10),
        failing(|| StoreError::Database {
            code: "42501".into(),
            source: "ERROR: permission denied".into(),
        }),
    ]);
    let (_tx, mut shutdown) = Shutdown::manual();
    let f = prune(&store, &task(), policy(100, HOUR), &mut shutdown, || 0.5).await;
    match f.result {
        Err(PruneError::Batch { batch, .. }) => assert_eq!(batch, 2),
        other => panic!("expected a batch failure, got {other:?}"),
    }
    assert_eq!((f.summary.deleted, f.summary.stopped), (100, "failed"));
}

/// A [`FakeStore`] that also answers traffic samples from a script (`None`: the sample failed).
struct WithTraffic {
    store: FakeStore,
    samples: Mutex<VecDeque<Option<TrafficSample>>>,
    asked_since: Mutex<Vec<Option<DateTime<Utc>>>>,
}

impl BatchStore for WithTraffic {
    fn delete_batch(
        &self,
        from: DateTime<Utc>,
        cutoff: DateTime<Utc>,
        limit: u32,
        timeout: Duration,
    ) -> impl Future<Output = Result<PrunedBatch, StoreError>> {
        self.store.delete_batch(from, cutoff, limit, timeout)
    }

    async fn claim_traffic(&self, since: Option<DateTime<Utc>>) -> Option<TrafficSample> {
        if let Ok(mut asked) = self.asked_since.lock() {
            asked.push(since);
        }
        self.samples.lock().ok().and_then(|mut s| s.pop_front()).flatten()
    }
}

fn sample(keyed_scans: i64, recent_sessions: i64, secs: i64) -> Option<TrafficSample> {
    Some(TrafficSample {
        keyed_scans,
        recent_sessions,
        sampled_at: at(secs),
    })
}

#[tokio::test]
async fn adaptive_pacing_runs_larger_unpaused_batches_only_while_nobody_claims() {
    let store = WithTraffic {
        store: FakeStore::new(vec![deleted(500, 1), deleted(100, 2)]),
        samples: Mutex::new(
            vec![
                sample(10, 0, 0), // quiet
                sample(10, 2, 1), // a claim session
            ]
            .into(),
        ),
        asked_since: Mutex::new(Vec::new()),
    };
    let pacer = Pacer::new(PacingConfig {
        mode: PacingMode::Adaptive,
        quiet_batch_factor: 5,
    });
    // A one-hour pause: a gentle batch's pause would hit the test's bound; quiet ones have none.
    let policy = BatchPolicy::new(BatchPolicyConfig::new(
        100,
        HOUR,
        HOUR * 24,
        RetryConfig {
            attempts: 3,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        },
    ));
    let (tx, mut shutdown) = Shutdown::manual();
    let task = task();
    let run = prune_paced(&store, &task, policy, pacer, &mut shutdown, || 0.5);
    // The gentle batch's hour-long pause is cut short by a signal: the loop stops there.
    let signal = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = tx.send(Some("SIGTERM"));
    };
    let (f, ()) = tokio::join!(run, signal);
    let limits: Vec<u32> = store.store.calls().iter().map(|c| c.limit).collect();
    // Quiet: 500 and no pause, straight into the next sample; claims: 100, then the pause.
    assert_eq!(limits, vec![500, 100], "{f:?}");
    assert_eq!(f.result.ok(), Some(StopReason::Signal));
    let asked = store.asked_since.lock().map(|a| a.clone()).unwrap_or_default();
    assert_eq!(
        asked,
        vec![None, Some(at(0))],
        "each sample looks from the previous one"
    );
}

#[tokio::test]
async fn adaptive_pacing_keeps_gentle_batches_and_back_offs_when_samples_fail() {
    let store = WithTraffic {
        store: FakeStore::new(vec![
            deleted(100, 1),
            failing(|| StoreError::Unavailable("connection closed".into())),
            last(3, 2),
        ]),
        samples: Mutex::new(vec![None, sample(1, 0, 1), sample(1, 0, 2)].into()),
        asked_since: Mutex::new(Vec::new()),
    };
    let pacer = Pacer::new(PacingConfig {
        mode: PacingMode::Adaptive,
        quiet_batch_factor: 5,
    });
    let (_tx, mut shutdown) = Shutdown::manual();
    let f = prune_paced(&store, &task(), policy(100, HOUR), pacer, &mut shutdown, || 0.5).await;
    assert_eq!(f.result.ok(), Some(StopReason::Done));
    let limits: Vec<u32> = store.store.calls().iter().map(|c| c.limit).collect();
    assert_eq!(limits, vec![100, 500, 500]);
    assert_eq!(f.summary.deleted, 103);
}

#[tokio::test]
async fn a_store_that_stays_away_is_given_up_on_and_a_brief_loss_is_not() {
    let lost = || StoreError::Unavailable("connection closed".into());
    let store = FakeStore::new(vec![failing(lost), deleted(100, 10), last(0, 0)]);
    let (_tx, mut shutdown) = Shutdown::manual();
    let f = prune(&store, &task(), policy(100, HOUR), &mut shutdown, || 0.5).await;
    assert_eq!(f.result.ok(), Some(StopReason::Done));
    assert_eq!(f.summary.deleted, 100);

    let store = FakeStore::new(vec![failing(lost), failing(lost), failing(lost)]);
    let f = prune(&store, &task(), policy(100, HOUR), &mut shutdown, || 0.5).await;
    assert!(
        matches!(f.result, Err(PruneError::LostStore { attempts: 3, .. })),
        "{:?}",
        f.result
    );
}

#[tokio::test]
async fn the_runtime_limit_stops_between_batches() {
    let slow_batch: Script = Box::new(|_| {
        std::thread::sleep(Duration::from_millis(20));
        Ok(PrunedBatch {
            deleted: 100,
            next_from: Some(at(1)),
            more: true,
        })
    });
    let store = FakeStore::new(vec![slow_batch, deleted(100, 2)]);
    let (_tx, mut shutdown) = Shutdown::manual();
    let f = prune(
        &store,
        &task(),
        policy(100, Duration::from_millis(10)),
        &mut shutdown,
        || 0.5,
    )
    .await;
    assert_eq!(f.result.ok(), Some(StopReason::MaxRuntime));
    assert_eq!(f.summary.batches, 1);
    assert_eq!(
        f.summary.remaining, None,
        "stopped early: left for the caller to count"
    );
}
