//! Group commit (`--group-commit`) against a real PostgreSQL: the claim store's promises
//! hold when concurrent claims go to the database in batches.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use dedupe_store::{ClaimOutcome, ClaimStore, GroupCommitConfig, RunRef, StoreError};
use dedupe_tests::TestDb;
use proptest::prelude::*;
use tokio::sync::Barrier;

use dedupe_tests::{agents_run as run, claim_key as key};

/// With one batch in flight, everything that arrives while it runs queues and goes together
/// in the next one, so concurrent claims really share batches. With more, a claim queued
/// beside a running batch starts another at once (no linger): the most batches racing each
/// other that `in_flight` allows.
fn batching(in_flight: usize) -> GroupCommitConfig {
    GroupCommitConfig {
        max_batch: 64,
        in_flight,
        linger: Duration::ZERO,
    }
}

/// Some batch carried more than one claim (else the test proved nothing about batching).
fn assert_batched(store: &ClaimStore) {
    let stats = store.group_commit_stats();
    assert!(
        stats.is_some_and(|s| s.claims > s.batches),
        "no batch carried two claims: {stats:?}"
    );
}

async fn store(db: &TestDb, config: GroupCommitConfig) -> Result<ClaimStore> {
    let store = db.store(16, Duration::from_secs(30))?;
    store.migrate().await?;
    Ok(store.with_group_commit(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_one_key_have_exactly_one_winner_in_shared_batches() -> Result<()> {
    const CLAIMANTS: usize = 64;
    let db = TestDb::new().await?;
    for in_flight in [1, 4] {
        let store = store(&db, batching(in_flight)).await?;
        for round in 0..10 {
            let delivery = format!("race-{in_flight}-{round}");
            let barrier = Arc::new(Barrier::new(CLAIMANTS));
            let tasks: Vec<_> = (0..CLAIMANTS)
                .map(|i| {
                    let (store, barrier, k, r) = (
                        store.clone(),
                        barrier.clone(),
                        key(&delivery),
                        run(&format!("run-{i}")),
                    );
                    tokio::spawn(async move {
                        barrier.wait().await;
                        store.claim(&k, &r).await.map(|o| (r, o))
                    })
                })
                .collect();
            let mut winners = Vec::new();
            let mut holders = HashSet::new();
            for t in tasks {
                match t.await?? {
                    (r, ClaimOutcome::Claimed(c)) => {
                        assert_eq!(c.holder, r);
                        assert_eq!(c.admissions, 0);
                        winners.push(r);
                    }
                    (_, ClaimOutcome::HeldBy(c)) => {
                        holders.insert(c.holder.name);
                    }
                    (r, other) => panic!("{r:?}: distinct runs cannot be {other:?}"),
                }
            }
            assert_eq!(
                winners.len(),
                1,
                "in flight {in_flight}, round {round}: {winners:?}"
            );
            assert_eq!(holders, HashSet::from([winners[0].name.clone()]));
        }
        assert_batched(&store);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_create_in_the_same_batch_as_its_first_create_is_same_run() -> Result<()> {
    let db = TestDb::new().await?;
    let store = store(&db, batching(1)).await?;
    for round in 0..20 {
        let k = key(&format!("retry-{round}"));
        let first = run("run-a");
        let retry = RunRef {
            uid: uuid::Uuid::new_v4().to_string(),
            ..first.clone()
        };
        let (a, b) = tokio::join!(store.claim(&k, &first), store.claim(&k, &retry));
        let outcomes = [a?, b?];
        let claimed = outcomes
            .iter()
            .filter(|o| matches!(o, ClaimOutcome::Claimed(_)))
            .count();
        let same = outcomes
            .iter()
            .filter(|o| matches!(o, ClaimOutcome::SameRun(_)))
            .count();
        assert_eq!((claimed, same), (1, 1), "round {round}: {outcomes:?}");
        let stored = store
            .lookup(&k)
            .await?
            .ok_or_else(|| anyhow::anyhow!("claim vanished"))?;
        assert_eq!(stored.admissions, 1);
        // Whichever went first holds the claim, and its uid stays: a retried create does not
        // replace it.
        let ClaimOutcome::Claimed(first_in) = outcomes
            .iter()
            .find(|o| matches!(o, ClaimOutcome::Claimed(_)))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no Claimed"))?
        else {
            unreachable!()
        };
        assert_eq!(stored.holder.uid, first_in.holder.uid);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_the_server_refuses_fails_alone_and_its_batch_mates_are_answered() -> Result<()> {
    let db = TestDb::new().await?;
    let store = store(&db, batching(1)).await?;
    // 64 characters: the table's CHECK refuses it (the webhook never sends one, it validates first).
    let bad = key(&"x".repeat(64));
    let barrier = Arc::new(Barrier::new(17));
    let mut tasks = Vec::new();
    for i in 0..17 {
        let (store, barrier) = (store.clone(), barrier.clone());
        let k = if i == 8 {
            bad.clone()
        } else {
            key(&format!("good-{i}"))
        };
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.claim(&k, &run(&format!("run-{i}"))).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let result = t.await?;
        if i == 8 {
            match result {
                Err(StoreError::Database { code, .. }) => assert_eq!(code, "23514"),
                other => panic!("the bad request: {other:?}"),
            }
        } else {
            assert!(
                matches!(result, Ok(ClaimOutcome::Claimed(_))),
                "request {i}: {result:?}"
            );
        }
    }
    assert_batched(&store);
    Ok(())
}

/// Slow commits bring more batches: a batch stuck behind another session's uncommitted insert
/// of its key (another replica's claim, say) does not hold up claims of other keys. They
/// wait about the linger, then go in a batch of their own beside the stuck one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_batch_does_not_hold_up_other_keys_past_the_linger() -> Result<()> {
    let db = TestDb::new().await?;
    let store = store(&db, GroupCommitConfig::default()).await?;
    let other_replica = db.client().await?;
    other_replica.batch_execute("BEGIN").await?;
    other_replica
        .execute(
            "INSERT INTO orchestration_dedupe_claims \
               (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state) \
             VALUES ('contended', 'orchestration', 'agents', 'codex-autonomous', 'agents', 'run-elsewhere', 'u-x', 'pending')",
            &[],
        )
        .await?;
    let stuck = tokio::spawn({
        let store = store.clone();
        async move { store.claim(&key("contended"), &run("run-here")).await }
    });
    // The stuck claim's batch is running (waiting on the row) before the others arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !stuck.is_finished(),
        "the contended claim did not wait for the other session"
    );
    let started = std::time::Instant::now();
    for i in 0..5 {
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            store.claim(&key(&format!("free-{i}")), &run(&format!("run-{i}"))),
        )
        .await??;
        assert!(matches!(outcome, ClaimOutcome::Claimed(_)), "{outcome:?}");
    }
    // Well under the store timeout (30 s here) and the time the other session stays open.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "claims of free keys waited {:?} behind the stuck batch",
        started.elapsed()
    );
    assert!(!stuck.is_finished());
    other_replica.batch_execute("COMMIT").await?;
    match stuck.await?? {
        ClaimOutcome::HeldBy(claim) => assert_eq!(claim.holder.name, "run-elsewhere"),
        other => panic!("the contended claim: {other:?}"),
    }
    Ok(())
}

/// An operator's open transaction on a claim row (OPERATIONS' manual release: `BEGIN;
/// DELETE … RETURNING *;` then a pause before `COMMIT`) makes every claim of that key wait.
/// Redeliveries of that key keep arriving beside claims of other keys, so they share
/// batches: the other keys' claims must not wait with them (each claim fails only as it
/// would alone), and the locked key's claims end as they would alone: a store timeout while
/// the transaction stays open, the claim once it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_waiting_on_a_locked_row_does_not_hold_its_batch_mates() -> Result<()> {
    const STORE_TIMEOUT: Duration = Duration::from_secs(2);
    let db = TestDb::new().await?;
    let store = db.store(16, STORE_TIMEOUT)?;
    store.migrate().await?;
    let store = store.with_group_commit(GroupCommitConfig::default());
    store.claim(&key("locked"), &run("run-first")).await?;
    let operator = db.client().await?;
    let release = "DELETE FROM orchestration_dedupe_claims \
                   WHERE delivery_id = 'locked' AND scope = 'orchestration' \
                     AND namespace = 'agents' AND orchestration = 'codex-autonomous' RETURNING *";
    operator.batch_execute("BEGIN").await?;
    assert_eq!(operator.query(release, &[]).await?.len(), 1);

    let timed = |k: String, r: RunRef| {
        let store = store.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let outcome = store.claim(&key(&k), &r).await;
            (outcome, started.elapsed())
        })
    };
    let (mut unrelated, mut locked) = (Vec::new(), Vec::new());
    for i in 0..60 {
        if i % 4 == 0 {
            locked.push(timed("locked".into(), run(&format!("redelivery-{i}"))));
        }
        unrelated.push(timed(format!("free-{i}"), run(&format!("run-{i}"))));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut slowest = Duration::ZERO;
    for t in unrelated {
        let (outcome, took) = t.await?;
        assert!(
            matches!(outcome, Ok(ClaimOutcome::Claimed(_))),
            "an unrelated claim: {outcome:?} after {took:?}"
        );
        slowest = slowest.max(took);
    }
    assert!(
        slowest < STORE_TIMEOUT / 4,
        "unrelated claims waited up to {slowest:?} beside the locked key"
    );
    // Alone, a claim of the locked key waits for the operator until the store timeout.
    for t in locked {
        let (outcome, took) = t.await?;
        assert!(
            matches!(outcome, Err(StoreError::Timeout(_))),
            "the locked key's claim: {outcome:?} after {took:?}"
        );
        assert!(took >= STORE_TIMEOUT - Duration::from_millis(50), "{took:?}");
    }
    operator.batch_execute("ROLLBACK").await?;

    // The operator commits the release while a redelivery waits on it, among other claims:
    // alone, that claim would get the key once the delete commits.
    operator.batch_execute("BEGIN").await?;
    assert_eq!(operator.query(release, &[]).await?.len(), 1);
    let waiting = timed("locked".into(), run("redelivery-after-release"));
    let mates: Vec<_> = (0..8)
        .map(|i| timed(format!("mate-{i}"), run(&format!("mate-{i}"))))
        .collect();
    for t in mates {
        let (outcome, took) = t.await?;
        assert!(matches!(outcome, Ok(ClaimOutcome::Claimed(_))), "{outcome:?}");
        assert!(took < STORE_TIMEOUT / 4, "a batch mate waited {took:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    operator.batch_execute("COMMIT").await?;
    match waiting.await?.0 {
        Ok(ClaimOutcome::Claimed(claim)) => assert_eq!(claim.holder.name, "redelivery-after-release"),
        other => panic!("the claim waiting on the release: {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn an_unreachable_store_fails_every_caller_within_the_timeout() -> Result<()> {
    let cfg =
        dedupe_store::StoreConfig::new(&dedupe_tests::unreachable_url()?, 2, Duration::from_millis(500))?;
    let store = ClaimStore::new(&cfg)?.with_group_commit(batching(1));
    let started = std::time::Instant::now();
    let results = futures_join(&store, 8).await;
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

async fn futures_join(store: &ClaimStore, n: usize) -> Vec<Result<ClaimOutcome, StoreError>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.claim(&key(&format!("d-{i}")), &run("r")).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(StoreError::Query(Box::new(e)))));
    }
    out
}

/// One request of a generated workload: which key, which run (by name; a run claims again
/// with a fresh uid, as a retried create does).
#[derive(Debug, Clone)]
struct Request {
    key: u8,
    run: u8,
}

fn workload() -> impl Strategy<Value = (Vec<u8>, Vec<Request>)> {
    (
        // Keys claimed beforehand by a run outside the workload.
        proptest::collection::vec(0u8..6, 0..3),
        proptest::collection::vec(
            (0u8..6, 0u8..3).prop_map(|(key, run)| Request { key, run }),
            1..40,
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever mix of keys, runs and retries arrives at once, and however it is batched:
    /// per key exactly one claim is made (none if it was held before), every other answer names
    /// that holder, a run's own retry is SameRun and nobody else's is, and the row agrees.
    #[test]
    fn batched_claims_keep_every_promise((held, requests) in workload(), in_flight in 1usize..4) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        rt.block_on(async {
            let db = TestDb::new().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let store = store(&db, batching(in_flight)).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let plain = db.store(2, Duration::from_secs(30)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for k in &held {
                plain.claim(&key(&format!("k{k}")), &run("outsider")).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let barrier = Arc::new(Barrier::new(requests.len()));
            let tasks: Vec<_> = requests.iter().cloned().map(|r| {
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let outcome = store.claim(&key(&format!("k{}", r.key)), &run(&format!("run-{}", r.run))).await;
                    (r, outcome)
                })
            }).collect();
            let mut by_key: HashMap<u8, Vec<(u8, ClaimOutcome)>> = HashMap::new();
            for t in tasks {
                let (r, outcome) = t.await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let outcome = outcome.map_err(|e| TestCaseError::fail(e.to_string()))?;
                by_key.entry(r.key).or_default().push((r.run, outcome));
            }
            for (k, answers) in &by_key {
                let winners: Vec<u8> = answers.iter().filter(|(_, o)| matches!(o, ClaimOutcome::Claimed(_))).map(|(r, _)| *r).collect();
                let holder = if held.contains(k) {
                    prop_assert!(winners.is_empty(), "key {}: held before, yet claimed by {:?}", k, winners);
                    "outsider".to_owned()
                } else {
                    prop_assert_eq!(winners.len(), 1, "key {}: {:?}", k, answers);
                    format!("run-{}", winners[0])
                };
                for (r, outcome) in answers {
                    // Nothing prunes, confirms or takes over here: every claim is decided.
                    let (ClaimOutcome::Claimed(claim) | ClaimOutcome::SameRun(claim) | ClaimOutcome::HeldBy(claim)) = outcome else {
                        return Err(TestCaseError::fail(format!("key {k}: run {r}'s claim changed under it")));
                    };
                    prop_assert_eq!(&claim.holder.name, &holder, "key {}", k);
                    let own = format!("run-{r}") == holder;
                    match outcome {
                        ClaimOutcome::Claimed(_) => {}
                        ClaimOutcome::SameRun(_) => prop_assert!(own, "key {}: SameRun for {}", k, r),
                        ClaimOutcome::HeldBy(_) => prop_assert!(!own, "key {}: its own run {} was denied", k, r),
                        ClaimOutcome::Changed => {}
                    }
                }
                let row = plain.lookup(&key(&format!("k{k}"))).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let row = row.ok_or_else(|| TestCaseError::fail(format!("key {k}: no row")))?;
                prop_assert_eq!(&row.holder.name, &holder);
                if !held.contains(k) {
                    let retries = answers.iter().filter(|(_, o)| matches!(o, ClaimOutcome::SameRun(_))).count();
                    prop_assert_eq!(usize::try_from(row.admissions).unwrap_or(usize::MAX), retries, "key {}", k);
                }
            }
            Ok(())
        })?;
    }
}
