//! The claim store against a real PostgreSQL (one schema per test).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use dedupe_store::{Claim, ClaimKey, ClaimOutcome, ClaimScope, ClaimState, ClaimStore, RunRef};
use dedupe_tests::testdb::seed_claim_at;
use dedupe_tests::TestDb;
use tokio::sync::Barrier;

fn run(ns: &str, name: &str) -> RunRef {
    RunRef {
        namespace: ns.into(),
        name: name.into(),
        uid: uuid::Uuid::new_v4().to_string(),
    }
}

use dedupe_tests::claim_key as key;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_one_key_have_exactly_one_winner() -> Result<()> {
    const CLAIMANTS: usize = 64;
    const ROUNDS: usize = 20;
    let db = TestDb::new().await?;
    // One connection per claimant, so all 64 really race in the database.
    let store = db.store(CLAIMANTS, Duration::from_secs(30))?;
    store.migrate().await?;
    for _ in 0..CLAIMANTS {
        store.ping().await?;
    }
    for round in 0..ROUNDS {
        let delivery = format!("race-{round}-{}", uuid::Uuid::new_v4());
        let barrier = Arc::new(Barrier::new(CLAIMANTS));
        let mut tasks = Vec::new();
        for i in 0..CLAIMANTS {
            let (store, barrier, k) = (store.clone(), barrier.clone(), key(&delivery));
            let r = run("agents", &format!("run-{i}"));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store.claim(&k, &r).await.map(|o| (r, o))
            }));
        }
        let mut winners = Vec::new();
        let mut holders = HashSet::new();
        let mut held = 0;
        for t in tasks {
            let (r, outcome) = t.await??;
            match outcome {
                ClaimOutcome::Claimed(c) => {
                    assert_eq!(c.holder, r);
                    winners.push(r)
                }
                ClaimOutcome::HeldBy(c) => {
                    held += 1;
                    holders.insert(c.holder.name.clone());
                }
                ClaimOutcome::SameRun(c) => panic!("distinct runs cannot be SameRun: {c:?}"),
                ClaimOutcome::Changed => panic!("nothing prunes, confirms or takes over here"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        assert_eq!(held, CLAIMANTS - 1);
        assert_eq!(
            holders.into_iter().collect::<Vec<_>>(),
            vec![winners[0].name.clone()],
            "round {round}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_claim_survives_a_new_pool() -> Result<()> {
    let db = TestDb::new().await?;
    let first = run("agents", "run-a");
    {
        let store = db.migrated_store().await?;
        assert!(matches!(
            store.claim(&key("d-durable"), &first).await?,
            ClaimOutcome::Claimed(_)
        ));
    } // the pool and its connections are gone, as after a process restart
    let store = db.migrated_store().await?;
    match store.claim(&key("d-durable"), &run("agents", "run-b")).await? {
        ClaimOutcome::HeldBy(c) => assert_eq!(c.holder, first),
        other => panic!("expected HeldBy, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn retried_create_of_the_same_run_is_same_run_and_keeps_the_first_uid() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    let first = run("agents", "run-a");
    let Claimed(c) = store.claim(&key("d-retry"), &first).await? else {
        panic!("first claim")
    };
    assert_eq!(c.state, ClaimState::Pending);
    assert_eq!(c.admissions, 0);
    let retry = RunRef {
        uid: "new-uid".into(),
        ..first.clone()
    };
    match store.claim(&key("d-retry"), &retry).await? {
        ClaimOutcome::SameRun(c) => {
            // The retried create usually fails with the API server's own AlreadyExists (the
            // first one was stored): the live run is the first uid's, so that uid stays.
            assert_eq!(c.holder.uid, first.uid);
            assert_eq!(c.admissions, 1);
        }
        other => panic!("expected SameRun, got {other:?}"),
    }
    // Once confirmed, the same name is no longer a retry: the run existed.
    assert!(store.confirm(&key("d-retry"), &first).await?);
    assert!(
        !store.confirm(&key("d-retry"), &first).await?,
        "confirm is idempotent"
    );
    match store.claim(&key("d-retry"), &first).await? {
        ClaimOutcome::HeldBy(c) => assert_eq!(c.state, ClaimState::Confirmed),
        other => panic!("expected HeldBy(confirmed), got {other:?}"),
    }
    Ok(())
}
use ClaimOutcome::Claimed;

#[tokio::test]
async fn lookup_reads_without_writing() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    assert_eq!(store.lookup(&key("d-look")).await?, None);
    assert_eq!(
        store.lookup(&key("d-look")).await?,
        None,
        "lookup must not create a claim"
    );
    let r = run("agents", "run-a");
    store.claim(&key("d-look"), &r).await?;
    let c = store.lookup(&key("d-look")).await?.map(|c| c.holder);
    assert_eq!(c, Some(r));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_take_overs_of_a_stale_claim_have_one_winner() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    let k = key("d-stale");
    store.claim(&k, &run("agents", "run-dead")).await?;
    db.age_claim("d-stale", 600.0).await?;
    let stale: Claim = store
        .lookup(&k)
        .await?
        .ok_or_else(|| anyhow::anyhow!("claim gone"))?;
    let grace = Duration::from_secs(120);
    let barrier = Arc::new(Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (store, barrier, k, stale) = (store.clone(), barrier.clone(), k.clone(), stale.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .take_over(&k, &stale, grace, &run("agents", &format!("run-new-{i}")))
                .await
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        if let Some(c) = t.await?? {
            won.push(c);
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    let now = store
        .lookup(&k)
        .await?
        .ok_or_else(|| anyhow::anyhow!("claim gone"))?;
    assert_eq!(now.holder, won[0].holder);
    assert_eq!((now.takeovers, now.state), (1, ClaimState::Pending));
    assert!(
        now.claimed_at > stale.claimed_at,
        "a take-over restarts retention"
    );
    Ok(())
}

#[tokio::test]
async fn take_over_refuses_a_claim_inside_its_grace_period() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    let k = key("d-young");
    store.claim(&k, &run("agents", "run-a")).await?;
    db.age_claim("d-young", 60.0).await?;
    let young = store
        .lookup(&k)
        .await?
        .ok_or_else(|| anyhow::anyhow!("claim gone"))?;
    let taken = store
        .take_over(&k, &young, Duration::from_secs(120), &run("agents", "run-b"))
        .await?;
    assert_eq!(taken, None, "the database clock says the claim is only 60 s old");
    Ok(())
}

#[tokio::test]
async fn confirm_holder_only_confirms_the_holder_that_was_read() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    let k = key("d-holder");
    let a = run("agents", "run-a");
    store.claim(&k, &a).await?;
    let other_uid = RunRef {
        uid: "someone-else".into(),
        ..a.clone()
    };
    assert!(!store.confirm_holder(&k, &other_uid).await?);
    assert!(store.confirm_holder(&k, &a).await?);
    assert_eq!(
        store.lookup(&k).await?.map(|c| c.state),
        Some(ClaimState::Confirmed)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_two_pools_at_once_both_succeed_once() -> Result<()> {
    let db = TestDb::new().await?;
    let (a, b) = (
        db.store(2, Duration::from_secs(10))?,
        db.store(2, Duration::from_secs(10))?,
    );
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let (ra, rb) = (ra?, rb?);
    let mut applied = [ra.applied.clone(), rb.applied.clone()];
    applied.sort();
    assert_eq!(
        applied[0],
        Vec::<i32>::new(),
        "one of them found the schema current"
    );
    assert_eq!(applied[1], vec![1], "the other applied it");
    assert!(a.migrate().await?.applied.is_empty(), "re-running is a no-op");
    let client = db.client().await?;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 \
             AND table_name = 'orchestration_dedupe_claims'",
            &[&db.schema()],
        )
        .await?
        .get(0);
    assert_eq!(tables, 1);
    let history: i64 = client
        .query_one("SELECT count(*) FROM orchestration_dedupe_migrations", &[])
        .await?
        .get(0);
    assert_eq!(history, 1);
    Ok(())
}

#[tokio::test]
async fn scopes_build_keys_that_collide_exactly_where_they_should() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    let claim = |scope, ns: &'static str, orch: &'static str, name: &'static str| {
        let store: ClaimStore = store.clone();
        async move {
            store
                .claim(&ClaimKey::new(scope, ns, orch, "same-delivery"), &run(ns, name))
                .await
        }
    };
    use ClaimScope::*;
    // orchestration scope: other orchestration or namespace is independent.
    assert!(matches!(
        claim(Orchestration, "a", "o1", "r1").await?,
        ClaimOutcome::Claimed(_)
    ));
    assert!(matches!(
        claim(Orchestration, "a", "o2", "r2").await?,
        ClaimOutcome::Claimed(_)
    ));
    assert!(matches!(
        claim(Orchestration, "b", "o1", "r3").await?,
        ClaimOutcome::Claimed(_)
    ));
    assert!(matches!(
        claim(Orchestration, "a", "o1", "r4").await?,
        ClaimOutcome::HeldBy(_)
    ));
    // namespace scope: the orchestration no longer matters.
    assert!(matches!(
        claim(Namespace, "a", "o1", "r5").await?,
        ClaimOutcome::Claimed(_)
    ));
    assert!(matches!(
        claim(Namespace, "a", "o2", "r6").await?,
        ClaimOutcome::HeldBy(_)
    ));
    assert!(matches!(
        claim(Namespace, "b", "o2", "r7").await?,
        ClaimOutcome::Claimed(_)
    ));
    // cluster scope: one claim per delivery, anywhere.
    assert!(matches!(
        claim(Cluster, "a", "o1", "r8").await?,
        ClaimOutcome::Claimed(_)
    ));
    match claim(Cluster, "z", "o9", "r9").await? {
        ClaimOutcome::HeldBy(c) => assert_eq!(c.holder.to_string(), "a/r8"),
        other => panic!("expected HeldBy, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn odd_but_valid_delivery_ids_round_trip_exactly() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    let max = format!("a{}z", "-_.9".repeat(15)); // 62
    let max = format!("{max}Z"); // 63, the label value limit
    assert_eq!(max.len(), 63);
    for id in [
        max.as_str(),
        "A",
        "a.b_c-d",
        "0",
        "UPPER.lower_9-x",
        "7f0c2b9e-4c1d-4b8a-9a57-0b5b1f3f2e11",
    ] {
        let k = ClaimKey::new(ClaimScope::Cluster, "agents", "o", id);
        assert!(
            matches!(
                store.claim(&k, &run("agents", "r")).await?,
                ClaimOutcome::Claimed(_)
            ),
            "{id}"
        );
        let client = db.client().await?;
        let stored: String = client
            .query_one(
                "SELECT delivery_id FROM orchestration_dedupe_claims WHERE delivery_id = $1",
                &[&id],
            )
            .await?
            .get(0);
        assert_eq!(stored, id);
        assert!(store.lookup(&k).await?.is_some());
    }
    // 64 characters is not a label value: the table refuses it.
    let too_long = "x".repeat(64);
    assert!(store
        .claim(
            &ClaimKey::new(ClaimScope::Cluster, "a", "o", &too_long),
            &run("a", "r")
        )
        .await
        .is_err());
    Ok(())
}

#[tokio::test]
async fn batch_delete_takes_only_rows_older_than_the_cutoff_and_at_most_n() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    // Prune batches run only on the pruner lock's session.
    let mut lock = store
        .try_pruner_lock()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the pruner lock is held elsewhere"))?;
    let client = db.client().await?;
    let cutoff = chrono::DateTime::parse_from_rfc3339("2026-01-10T00:00:00Z")?.to_utc();
    let second = chrono::Duration::seconds(1);
    // 10 rows 1 s before the cutoff, one exactly at it, 3 rows 1 s after it.
    for i in 1..=10 {
        seed_claim_at(&client, &format!("old-{i}"), cutoff - second, "confirmed").await?;
    }
    seed_claim_at(&client, "at-cutoff", cutoff, "confirmed").await?;
    for i in 1..=3 {
        seed_claim_at(&client, &format!("young-{i}"), cutoff + second, "pending").await?;
    }
    let epoch = chrono::DateTime::UNIX_EPOCH;
    let first = lock.prune_batch(epoch, cutoff, 4, Duration::from_secs(5)).await?;
    assert_eq!(first.deleted, 4, "at most N");
    assert_eq!(first.next_from, Some(cutoff - chrono::Duration::seconds(1)));
    let rest = lock
        .prune_batch(epoch, cutoff, 100, Duration::from_secs(5))
        .await?;
    assert_eq!(
        rest.deleted, 6,
        "the other old rows, nothing at or after the cutoff"
    );
    let none = lock
        .prune_batch(epoch, cutoff, 100, Duration::from_secs(5))
        .await?;
    assert_eq!((none.deleted, none.next_from), (0, None));
    let left: Vec<String> = client
        .query(
            "SELECT delivery_id FROM orchestration_dedupe_claims ORDER BY delivery_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec!["at-cutoff", "young-1", "young-2", "young-3"]);
    let count = store.count_expired(cutoff + chrono::Duration::seconds(1)).await?;
    assert_eq!((count.expired, count.oldest), (1, Some(cutoff)));
    Ok(())
}

#[tokio::test]
async fn prune_cutoff_comes_from_the_database_clock() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    let cutoff = store.prune_cutoff(7).await?;
    let client = db.client().await?;
    let db_now: chrono::DateTime<chrono::Utc> = client.query_one("SELECT now()", &[]).await?.get(0);
    let age = db_now - cutoff;
    assert!(
        age >= chrono::Duration::days(7) && age < chrono::Duration::days(7) + chrono::Duration::seconds(5),
        "{age}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_store_fails_within_the_timeout() -> Result<()> {
    // A port nothing listens on: connection refused, reported as a store error, no hang.
    let cfg =
        dedupe_store::StoreConfig::new(&dedupe_tests::unreachable_url()?, 2, Duration::from_millis(500))?;
    let store = ClaimStore::new(&cfg)?;
    let started = std::time::Instant::now();
    assert!(store.claim(&key("d"), &run("a", "r")).await.is_err());
    assert!(store.ping().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}
