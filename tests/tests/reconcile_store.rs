//! `ClaimStore::reconcile_batch` (shared/sql/reconcile_batch.sql) against a real PostgreSQL:
//! what one batch confirms, back-fills and leaves alone, and that running it again — a
//! second replica, or a restart — changes nothing.

use anyhow::Result;
use dedupe_store::{ClaimOutcome, ClaimState, ObservedRun, ReconcileCounts, RunRef};
use dedupe_tests::TestDb;

use dedupe_tests::claim_key as key;

fn observed(delivery: &str, name: &str, holds: bool) -> ObservedRun {
    ObservedRun {
        key: key(delivery),
        namespace: "agents".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        holds,
    }
}

fn run(name: &str) -> RunRef {
    RunRef {
        namespace: "agents".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    }
}

#[tokio::test]
async fn a_batch_confirms_back_fills_leaves_other_claims_alone_and_is_idempotent() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    // d-pending: a pending claim naming a run the batch shows → confirmed.
    assert!(matches!(
        store.claim(&key("d-pending"), &run("r-pending")).await?,
        ClaimOutcome::Claimed(_)
    ));
    // d-other: a pending claim naming another run than the one observed → left as it is.
    assert!(matches!(
        store.claim(&key("d-other"), &run("r-ghost")).await?,
        ClaimOutcome::Claimed(_)
    ));
    let batch = vec![
        observed("d-pending", "r-pending", true),
        observed("d-other", "r-real", true),
        // d-new: no claim → back-filled for the holder, not for the younger run.
        observed("d-new", "r-old", true),
        observed("d-new", "r-young", false),
    ];
    assert_eq!(
        store.reconcile_batch(&batch).await?,
        ReconcileCounts {
            confirmed: 1,
            backfilled: 1
        }
    );
    let state = |d: &'static str| {
        let store = store.clone();
        async move {
            store
                .lookup(&key(d))
                .await
                .map(|c| c.map(|c| (c.holder.name, c.state)))
        }
    };
    assert_eq!(
        state("d-pending").await?,
        Some(("r-pending".into(), ClaimState::Confirmed))
    );
    assert_eq!(
        state("d-other").await?,
        Some(("r-ghost".into(), ClaimState::Pending))
    );
    assert_eq!(
        state("d-new").await?,
        Some(("r-old".into(), ClaimState::Confirmed))
    );

    // Again, as another replica or a restarted one would: nothing changes.
    assert_eq!(store.reconcile_batch(&batch).await?, ReconcileCounts::default());
    let count: i64 = db
        .client()
        .await?
        .query_one("SELECT count(*) FROM orchestration_dedupe_claims", &[])
        .await?
        .get(0);
    assert_eq!(count, 3);
    assert_eq!(store.reconcile_batch(&[]).await?, ReconcileCounts::default());
    Ok(())
}

/// Rows the store refuses for their data — a NUL byte (SQLSTATE 22021), a name too long for
/// the key's index (54000) — fail `reconcile_batch` whole; `reconcile_isolating` splits the
/// batch until each is alone, writes every other row and returns the refused ones.
#[tokio::test]
async fn rows_the_store_refuses_are_isolated_and_the_rest_of_the_batch_is_written() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    let mut batch: Vec<ObservedRun> = (0..500)
        .map(|i| observed(&format!("d-{i:03}"), &format!("r-{i:03}"), true))
        .collect();
    let mut nul = observed("d-nul", "r-nul", true);
    nul.key.orchestration = "co\0dex".into();
    let mut long = observed("d-long", "r-long", true);
    // Incompressible (a repeated letter would be compressed into the index and fit).
    long.key.orchestration =
        (0..84).map(|_| dedupe_tests::new_delivery()).collect::<String>()[..3_000].to_owned();
    batch.insert(17, nul);
    batch.insert(333, long);

    let whole = store.reconcile_batch(&batch).await;
    assert!(
        whole.as_ref().is_err_and(|e| e.is_data_error()),
        "one bad row fails the plain batch: {whole:?}"
    );
    let done = store.reconcile_isolating(&batch).await?;
    assert_eq!(done.counts.backfilled, 500);
    let mut refused: Vec<(String, Option<String>)> = done
        .rejected
        .iter()
        .map(|(row, e)| (row.name.clone(), e.sqlstate().map(str::to_owned)))
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            ("r-long".to_owned(), Some("54000".to_owned())),
            ("r-nul".to_owned(), Some("22021".to_owned())),
        ]
    );
    // Idempotent: again, nothing more is written and the same two are refused.
    let again = store.reconcile_isolating(&batch).await?;
    assert_eq!(
        (again.counts, again.rejected.len()),
        (ReconcileCounts::default(), 2)
    );
    Ok(())
}

/// A retried create keeps the first create's uid; when only the retry landed (the first
/// create never did), the run the API server shows has the retry's uid, and confirming the
/// claim records it: the claim names the live run.
#[tokio::test]
async fn confirming_records_the_uid_the_api_server_shows() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    let first = RunRef {
        uid: "uid-first-attempt".into(),
        ..run("r-fixed")
    };
    assert!(matches!(
        store.claim(&key("d-retried"), &first).await?,
        ClaimOutcome::Claimed(_)
    ));
    let retry = run("r-fixed");
    match store.claim(&key("d-retried"), &retry).await? {
        ClaimOutcome::SameRun(c) => assert_eq!(c.holder.uid, "uid-first-attempt"),
        other => panic!("a retried create: {other:?}"),
    }
    let counts = store
        .reconcile_batch(&[observed("d-retried", "r-fixed", true)])
        .await?;
    assert_eq!(counts.confirmed, 1);
    let claim = store
        .lookup(&key("d-retried"))
        .await?
        .ok_or_else(|| anyhow::anyhow!("claim vanished"))?;
    assert_eq!(
        (claim.holder.uid.as_str(), claim.state),
        ("uid-r-fixed", ClaimState::Confirmed)
    );
    Ok(())
}
