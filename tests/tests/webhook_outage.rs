//! The store goes away or gets slow: the webhook answers 503 (so the API server applies its
//! failurePolicy), turns unready, and recovers without a restart.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dedupe_tests::{Answer, Review, TempPostgres, TestCerts, TestDb, Webhook};

/// A webhook on a fresh schema with `--store-timeout-ms`, and one delivery claimed by
/// `run-first`.
async fn with_one_claim(store_timeout_ms: &str) -> Result<(TestDb, TestCerts, Webhook, String)> {
    let db = TestDb::new().await?;
    let certs = TestCerts::new()?;
    let webhook = Webhook::start(
        db.url(),
        &certs,
        &["--kube-lookup", "off", "--store-timeout-ms", store_timeout_ms],
        &[],
    )
    .await?;
    let d = uuid::Uuid::new_v4().to_string();
    let first = Answer::from_reply(&webhook.review(Review::create(&d, "run-first")?.json()).await?)?;
    anyhow::ensure!(first.decision() == "claimed", "{:?}", first.0);
    Ok((db, certs, webhook, d))
}

/// Holds the claims table locked against writers from a session of its own (an open
/// transaction), so the webhook's next claim statement waits.
struct TableLock {
    client: tokio_postgres::Client,
    pid: i32,
}

impl TableLock {
    async fn hold(db: &TestDb) -> Result<Self> {
        let client = db.client().await?;
        client.batch_execute("BEGIN").await?;
        // Not the claim's row lock: answering a duplicate is a read that takes none,
        // so a row lock no longer holds a claim up. A table lock that admits readers and no
        // writer does: every claim statement is an INSERT and waits for it.
        client
            .batch_execute("LOCK TABLE orchestration_dedupe_claims IN EXCLUSIVE MODE")
            .await?;
        let pid = client.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        Ok(Self { client, pid })
    }

    /// True once some session waits for this lock.
    async fn has_waiter(&self, observer: &tokio_postgres::Client) -> Result<bool> {
        let row = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                &[&self.pid],
            )
            .await?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    async fn release(self) -> Result<()> {
        self.client.batch_execute("ROLLBACK").await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_stopped_store_gives_503_and_unready_then_decisions_resume() -> Result<()> {
    let mut pg = tokio::task::spawn_blocking(TempPostgres::start).await??;
    let certs = TestCerts::new()?;
    let webhook = Webhook::start(
        &pg.url(),
        &certs,
        &["--kube-lookup", "off", "--store-timeout-ms", "500"],
        &[],
    )
    .await?;
    let d = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        Answer::from_reply(&webhook.review(Review::create(&d, "run-first")?.json()).await?)?.decision(),
        "claimed"
    );

    pg.stop_server()?;
    let started = Instant::now();
    let reply = webhook.review(Review::create(&d, "run-during")?.json()).await?;
    assert_eq!(
        reply.status.as_u16(),
        503,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let body = reply.json()?;
    let message = body["message"].as_str().context("no message in the error body")?;
    assert!(message.contains("no decision"), "{body}");
    let ready = webhook.ops("/readyz").await?;
    assert_eq!(ready.status.as_u16(), 503);
    assert_eq!(ready.json()?["ready"], false);

    // Updates and deletes never depend on the store: an older registration that still sends
    // them must not block annotation updates, finalizer removal or deletes in an outage.
    // A key change is still refused, which needs no store.
    for (what, review, decision) in [
        (
            "update keeping the key",
            Review::load("update-label-changed")?.delivery(&d).new_uids(),
            "allowed",
        ),
        (
            "delete",
            Review::load("delete")?.delivery(&d).new_uids(),
            "allowed",
        ),
        (
            "label change",
            Review::load("update-label-changed")?.new_uids(),
            "immutable",
        ),
    ] {
        let reply = webhook.review(review.json()).await?;
        assert_eq!(
            reply.status.as_u16(),
            200,
            "{what}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(Answer::from_reply(&reply)?.decision(), decision, "{what}");
    }

    pg.start_server()?;
    let mut ready_again = false;
    for _ in 0..100 {
        if webhook.ops("/readyz").await?.status.as_u16() == 200 {
            ready_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready_again, "/readyz did not recover: {:#?}", webhook.logs());
    let a = Answer::from_reply(&webhook.review(Review::create(&d, "run-after")?.json()).await?)?;
    assert_eq!((a.allowed(), a.code()), (false, 409));
    assert!(a.message().contains("jangar/run-first"), "{}", a.message());
    let fresh = Answer::from_reply(
        &webhook
            .review(Review::create(&uuid::Uuid::new_v4().to_string(), "run-new")?.json())
            .await?,
    )?;
    assert_eq!(fresh.decision(), "claimed");
    let metrics = String::from_utf8_lossy(&webhook.ops("/metrics").await?.body).into_owned();
    assert!(
        !metrics.contains("orchestration_dedupe_store_errors_total 0"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_store_slower_than_the_timeout_gives_503_not_a_deny() -> Result<()> {
    let (db, _certs, webhook, d) = with_one_claim("300").await?;
    let lock = TableLock::hold(&db).await?;
    let started = Instant::now();
    let reply = webhook.review(Review::create(&d, "run-second")?.json()).await?;
    assert_eq!(
        reply.status.as_u16(),
        503,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // Exactly one log line for the 503 (it used to be an ERROR and a WARN). Lines are written
    // by a background thread: wait for the first, then give a second one time to show up.
    let no_decision = || {
        webhook
            .logs()
            .into_iter()
            .filter(|l| l.contains("no decision"))
            .count()
    };
    for _ in 0..50 {
        if no_decision() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(no_decision(), 1, "{:#?}", webhook.logs());
    lock.release().await?;
    let a = Answer::from_reply(&webhook.review(Review::create(&d, "run-third")?.json()).await?)?;
    assert_eq!(a.code(), 409, "decisions resume once the lock is gone");
    Ok(())
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_before_exiting_0() -> Result<()> {
    let (db, _certs, mut webhook, d) = with_one_claim("5000").await?;
    // The next request waits on this lock, so it is still in flight when SIGTERM arrives.
    let lock = TableLock::hold(&db).await?;
    let mut conn = webhook.client()?.connect().await?;
    let review = Review::create(&d, "run-second")?;
    let in_flight = tokio::spawn(async move { conn.review(review.json()).await });
    // Wait until the webhook's claim statement is queued behind the lock, so the request is
    // provably in flight (not merely sent) when SIGTERM arrives.
    let observer = db.client().await?;
    let mut waiting = false;
    for _ in 0..200 {
        if lock.has_waiter(&observer).await? {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waiting, "the request never reached the database");
    let pid = webhook
        .pid()
        .ok_or_else(|| anyhow::anyhow!("webhook not running"))?;
    dedupe_tests::signal::send(pid, dedupe_tests::signal::Signal::TERM)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !in_flight.is_finished(),
        "the request should still be waiting on the row lock"
    );
    lock.release().await?;
    let answer = Answer::from_reply(&in_flight.await??)?;
    assert_eq!(
        (answer.allowed(), answer.code()),
        (false, 409),
        "the in-flight request got its real answer"
    );
    let status = webhook.wait(Duration::from_secs(20)).await?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}
