//! Answering a redelivery is a read: a duplicate never takes the holder's row lock, so
//! concurrent redeliveries of one delivery do not queue on one row.

use std::time::Duration;

use anyhow::Result;
use dedupe_store::{ClaimOutcome, GroupCommitConfig, RunRef};
use dedupe_tests::TestDb;

use dedupe_tests::{agents_run as run, claim_key as key};

#[tokio::test]
async fn a_duplicate_is_answered_while_another_session_holds_the_row_locked() -> Result<()> {
    let db = TestDb::new().await?;
    let holder = run("run-a");
    db.migrated_store()
        .await?
        .claim(&key("d-locked"), &holder)
        .await?;
    // Another session holds the holder's row lock (as a take-over, a confirm or a retried
    // create does for the length of its statement) until this test ends.
    let locker = db.client().await?;
    locker.batch_execute("BEGIN").await?;
    locker
        .execute(
            "SELECT 1 FROM orchestration_dedupe_claims WHERE delivery_id = $1 FOR UPDATE",
            &[&"d-locked"],
        )
        .await?;
    // With a lock wait the claims below would run into this timeout and fail.
    let plain = db.store(2, Duration::from_secs(2))?;
    let batched = db
        .store(2, Duration::from_secs(2))?
        .with_group_commit(GroupCommitConfig::default());
    for store in [plain, batched] {
        for i in 0..3 {
            match store.claim(&key("d-locked"), &run(&format!("run-b{i}"))).await? {
                ClaimOutcome::HeldBy(c) => assert_eq!(c.holder, holder),
                other => panic!("expected HeldBy, got {other:?}"),
            }
        }
    }
    locker.batch_execute("ROLLBACK").await?;
    Ok(())
}

#[tokio::test]
async fn a_retried_create_after_a_confirm_is_a_duplicate_and_writes_nothing() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    let first = run("run-a");
    store.claim(&key("d-confirmed"), &first).await?;
    assert!(store.confirm(&key("d-confirmed"), &first).await?);
    let before = store.lookup(&key("d-confirmed")).await?;
    let retry = RunRef {
        uid: "new-uid".into(),
        ..first.clone()
    };
    match store.claim(&key("d-confirmed"), &retry).await? {
        ClaimOutcome::HeldBy(c) => assert_eq!(c.holder, first),
        other => panic!("expected HeldBy, got {other:?}"),
    }
    let after = store.lookup(&key("d-confirmed")).await?;
    assert_eq!(
        before.map(|c| (c.holder, c.updated_at, c.admissions)),
        after.map(|c| (c.holder, c.updated_at, c.admissions))
    );
    Ok(())
}
