//! The real `dedupe-pruner` binary against a real PostgreSQL (one schema per test): what it
//! deletes, its exit codes, its lock, its signals, and claims made while it runs.
//!
//! The binary is `target/<profile>/dedupe-pruner`; integration tests of this package do not
//! build other packages' binaries, so build it first (`cargo build --workspace`; `make test`
//! does). Nothing here asserts on speed except generous "not stuck" bounds.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use chrono::{DateTime, Utc};
use dedupe_store::{ClaimKey, ClaimOutcome, ClaimScope, RunRef};
use dedupe_tests::pruner::{app_name, pruner_url, run, run_with_env, str_field, u64_field, Live, RUN_BOUND};
use dedupe_tests::signal::Signal;
use dedupe_tests::testdb::{claim_count, delivery_ids, seed_claim_at, seed_claims};
use dedupe_tests::TestDb;

// ---------------------------------------------------------------------------------------
// Seeding and inspecting (the rest is in dedupe_tests::{pruner, testdb})
// ---------------------------------------------------------------------------------------

/// A fresh, migrated schema and a plain client on it.
async fn migrated() -> Result<(TestDb, tokio_postgres::Client)> {
    let db = TestDb::new().await?;
    db.migrated_store().await?;
    let client = db.client().await?;
    Ok((db, client))
}

/// A trigger that makes the pruner's DELETE wait, inside its transaction, when it reaches
/// `delivery`, for as long as some session holds the advisory lock `gate`.
async fn install_gate(client: &tokio_postgres::Client, delivery: &str, gate: i64) -> Result<()> {
    client
        .batch_execute(&format!(
            "CREATE FUNCTION prune_gate() RETURNS trigger LANGUAGE plpgsql AS $fn$
             BEGIN
                 IF OLD.delivery_id = '{delivery}' THEN
                     PERFORM pg_advisory_lock_shared({gate});
                     PERFORM pg_advisory_unlock_shared({gate});
                 END IF;
                 RETURN OLD;
             END $fn$;
             CREATE TRIGGER prune_gate BEFORE DELETE ON orchestration_dedupe_claims
                 FOR EACH ROW EXECUTE FUNCTION prune_gate();"
        ))
        .await?;
    Ok(())
}

/// Waits until one of the pruner's sessions is waiting for an advisory lock (the gate).
async fn wait_until_gated(client: &tokio_postgres::Client, app: &str) -> Result<()> {
    let deadline = Instant::now() + RUN_BOUND;
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = $1 AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
                &[&app],
            )
            .await?
            .get(0);
        if waiting > 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the pruner's batch never reached the gate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

/// Rows one second and one day either side of the cutoff the pruner took from the database
/// clock: exactly the older ones go. To seed around the pruner's own cutoff, the test holds
/// the table in EXCLUSIVE mode (reads pass, the pruner's DELETE waits), reads the cutoff
/// from the pruner's start event, inserts the rows and lets the pruner go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_claims_older_than_the_cutoff_go_to_the_second_and_the_day() -> Result<()> {
    let db = TestDb::new().await?;
    db.migrated_store().await?;
    let mut holder = db.client().await?;
    let tx = holder.transaction().await?;
    tx.batch_execute("LOCK TABLE orchestration_dedupe_claims IN EXCLUSIVE MODE")
        .await?;

    let url = pruner_url(&db);
    let mut live = Live::spawn(&[
        "--database-url",
        &url,
        "--log-format",
        "json",
        "--retention-days",
        "7",
        "--batch-size",
        "2",
        "--batch-pause-ms",
        "0",
        "--batch-timeout-ms",
        "60000",
    ])?;
    let start = live.wait_for("prune starting").await?;
    let cutoff: DateTime<Utc> = DateTime::parse_from_rfc3339(str_field(&start, "cutoff")?)?.to_utc();
    let now: DateTime<Utc> = tx.query_one("SELECT clock_timestamp()", &[]).await?.get(0);
    let age = now - cutoff;
    ensure!(
        age >= chrono::Duration::days(7) && age < chrono::Duration::days(7) + chrono::Duration::minutes(1),
        "the cutoff is the database clock minus 7 days, got {cutoff} at {now}"
    );
    let second = chrono::Duration::seconds(1);
    let day = chrono::Duration::days(1);
    for (delivery, at) in [
        ("older-by-a-day", cutoff - day),
        ("older-by-a-second", cutoff - second),
        (
            "older-by-a-microsecond",
            cutoff - chrono::Duration::microseconds(1),
        ),
        ("at-the-cutoff", cutoff),
        ("younger-by-a-second", cutoff + second),
        ("younger-by-a-day", cutoff + day),
    ] {
        seed_claim_at(&tx, delivery, at, "confirmed").await?;
    }
    seed_claims(&tx, "fresh", 3, "1 hour").await?;
    tx.commit().await?;

    let done = live.finish().await?;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    let summary = done.summary()?;
    assert_eq!(u64_field(summary, "deleted")?, 3, "{summary}");
    assert_eq!(str_field(summary, "stopped")?, "done");
    assert_eq!(
        delivery_ids(&holder).await?,
        vec![
            "at-the-cutoff",
            "younger-by-a-second",
            "younger-by-a-day",
            "fresh-1",
            "fresh-2",
            "fresh-3"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn dry_run_reports_the_count_and_the_oldest_and_deletes_nothing() -> Result<()> {
    let (db, client) = migrated().await?;
    seed_claims(&client, "old", 37, "40 days").await?; // 40 days .. 40 days − 37 s old
    seed_claims(&client, "young", 5, "6 days").await?;
    seed_claims(&client, "new", 4, "1 minute").await?;

    let url = pruner_url(&db);
    let done = run(&["--database-url", &url, "--log-format", "json", "--dry-run"]).await?;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    let report = done.one("dry run")?;
    assert_eq!(u64_field(report, "would_delete")?, 37, "{report}");
    let age = report["oldest_age_days"]
        .as_f64()
        .with_context(|| format!("no oldest_age_days in {report}"))?;
    assert!((39.99..=40.01).contains(&age), "oldest is 40 days old: {report}");
    assert!(done.with_message("batch committed").is_empty());
    assert!(done.with_message("prune finished").is_empty());
    assert_eq!(
        claim_count(&client, "true").await?,
        46,
        "dry run deleted something"
    );

    // And JANGAR_ORCHESTRATION_DEDUPE_PRUNE_DRY_RUN=true means the same.
    let done = run_with_env(
        &["--database-url", &url, "--log-format", "json"],
        &[("JANGAR_ORCHESTRATION_DEDUPE_PRUNE_DRY_RUN", "true")],
    )
    .await?;
    assert_eq!(done.code, Some(0));
    assert_eq!(u64_field(done.one("dry run")?, "would_delete")?, 37);
    assert_eq!(claim_count(&client, "true").await?, 46);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pruners_at_once_one_prunes_the_other_exits_0_saying_the_lock_is_held() -> Result<()> {
    let (db, client) = migrated().await?;
    seed_claims(&client, "old", 3_000, "30 days").await?;
    seed_claims(&client, "young", 10, "1 day").await?;

    // 30 batches with 100 ms pauses: the winner holds the lock for seconds.
    let url = pruner_url(&db);
    let args = [
        "--database-url",
        &url,
        "--log-format",
        "json",
        "--batch-size",
        "100",
        "--batch-pause-ms",
        "100",
    ];
    let (a, b) = tokio::join!(run(&args), run(&args));
    let (a, b) = (a?, b?);
    assert_eq!((a.code, b.code), (Some(0), Some(0)), "{a:?}\n{b:?}");
    let (winner, loser) = if a.with_message("prune finished").is_empty() {
        (b, a)
    } else {
        (a, b)
    };
    assert_eq!(
        loser.with_message("another prune holds the lock").len(),
        1,
        "{}",
        loser.stdout
    );
    assert!(loser.with_message("batch committed").is_empty());
    assert_eq!(u64_field(winner.summary()?, "deleted")?, 3_000);
    assert_eq!(claim_count(&client, "delivery_id LIKE 'old-%'").await?, 0);
    assert_eq!(claim_count(&client, "delivery_id LIKE 'young-%'").await?, 10);

    // The lock went with the winner: a third run finds nothing to do and says so.
    let again = run(&args).await?;
    assert_eq!(again.code, Some(0));
    assert_eq!(u64_field(again.summary()?, "deleted")?, 0);
    Ok(())
}

/// SIGTERM while a batch is in flight: the batch commits (whole), the summary is printed,
/// exit 0. The test holds the 4th batch inside its transaction with a gate, so the signal
/// provably lands mid-batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_batch_commits_that_batch_prints_the_summary_and_exits_0() -> Result<()> {
    const BATCH: u64 = 50;
    let (db, client) = migrated().await?;
    seed_claims(&client, "old", 1_000, "30 days").await?;
    let gate: i64 = rand::random();
    // old-151 is the first row of the 4th batch of 50 (oldest first).
    install_gate(&client, "old-151", gate).await?;
    client.execute("SELECT pg_advisory_lock($1)", &[&gate]).await?;

    let url = pruner_url(&db);
    let mut live = Live::spawn(&[
        "--database-url",
        &url,
        "--log-format",
        "json",
        "--batch-size",
        &BATCH.to_string(),
        "--batch-pause-ms",
        "0",
        "--batch-timeout-ms",
        "60000",
    ])?;
    wait_until_gated(&client, &app_name(&db)).await?;
    assert_eq!(
        claim_count(&client, "true").await?,
        1_000 - 3 * BATCH as i64,
        "three batches committed before the gate"
    );
    live.signal(Signal::TERM)?;
    // The batch in flight cannot finish while the gate is shut, so neither may the pruner.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(live.still_running()?, "the pruner exited with a batch in flight");
    client.execute("SELECT pg_advisory_unlock($1)", &[&gate]).await?;

    let done = live.finish().await?;
    assert_eq!(done.code, Some(0), "documented: SIGTERM exits 0\n{}", done.stdout);
    let summary = done.summary()?;
    assert_eq!(str_field(summary, "stopped")?, "signal");
    assert_eq!(u64_field(summary, "batches")?, 4, "{summary}");
    assert_eq!(
        u64_field(summary, "deleted")?,
        4 * BATCH,
        "the gated batch committed whole"
    );
    assert_eq!(done.with_message("batch committed").len(), 4);
    assert_eq!(
        u64_field(summary, "remaining_expired_estimate")?,
        1_000 - 4 * BATCH
    );
    assert_eq!(claim_count(&client, "true").await?, 1_000 - 4 * BATCH as i64);
    assert_eq!(
        claim_count(&client, "delivery_id = 'old-151'").await?,
        0,
        "the gated row went with its batch"
    );
    Ok(())
}

/// SIGINT during a long pause: the pause is cut short, no new batch starts.
#[tokio::test]
async fn sigint_during_a_long_pause_stops_at_once_with_whole_batches() -> Result<()> {
    let (db, client) = migrated().await?;
    seed_claims(&client, "old", 500, "30 days").await?;
    let url = pruner_url(&db);
    let mut live = Live::spawn(&[
        "--database-url",
        &url,
        "--log-format",
        "json",
        "--batch-size",
        "40",
        "--batch-pause-ms",
        "600000",
    ])?;
    live.wait_for("batch committed").await?;
    let signalled = Instant::now();
    live.signal(Signal::INT)?;
    let done = live.finish().await?;
    assert!(
        signalled.elapsed() < Duration::from_secs(30),
        "waited out the 10-minute pause"
    );
    assert_eq!(done.code, Some(0), "{}", done.stdout);
    let summary = done.summary()?;
    assert_eq!(str_field(summary, "stopped")?, "signal");
    assert_eq!(u64_field(summary, "deleted")?, 40);
    assert_eq!(claim_count(&client, "true").await?, 460);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_store_exits_1_with_one_clear_error() -> Result<()> {
    let url = dedupe_tests::unreachable_url()?;
    let started = Instant::now();
    let done = run(&[
        "--database-url",
        &url,
        "--log-format",
        "json",
        "--connect-attempts",
        "3",
    ])
    .await?;
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(done.code, Some(1), "{}\n{}", done.stdout, done.stderr);
    let errors = done.levels("ERROR");
    assert_eq!(errors.len(), 1, "one error line:\n{}", done.stdout);
    let message = str_field(errors[0], "error")?;
    assert!(
        message.contains("claim store unreachable after 3 attempt(s)") && message.contains("refused"),
        "{message}"
    );
    assert_eq!(done.levels("WARN").len(), 2, "one warning per retry");
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
    Ok(())
}

#[tokio::test]
async fn bad_flags_and_values_exit_2_naming_the_flag() -> Result<()> {
    let url = "postgres://postgres@127.0.0.1:1/postgres";
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--database-url", url, "--batch-size", "0"],
            vec![],
            "--batch-size",
        ),
        (
            vec!["--database-url", url, "--batch-sise", "10"],
            vec![],
            "--batch-sise",
        ),
        (
            vec!["--database-url", url, "--retention-days", "0"],
            vec![],
            "--retention-days",
        ),
        (
            vec!["--database-url", url, "--log-format", "yaml"],
            vec![],
            "--log-format",
        ),
        (
            vec!["--database-url", url, "--dry-run", "maybe"],
            vec![],
            "--dry-run",
        ),
        (
            vec!["--database-url", url, "--max-runtime-seconds=-5"],
            vec![],
            "--max-runtime-seconds",
        ),
        (
            vec!["--database-url", url],
            vec![("JANGAR_ORCHESTRATION_DEDUPE_PRUNE_BATCH_SIZE", "lots")],
            "--batch-size",
        ),
        (
            vec!["--database-url", url],
            vec![("JANGAR_ORCHESTRATION_DEDUPE_RETENTION_DAYS", "0")],
            "--retention-days",
        ),
        (vec![], vec![], "--database-url"),
        (
            vec![],
            vec![("DATABASE_URL", "postgres://h:notaport/db")],
            "--database-url",
        ),
        (
            vec!["--database-url", "host=/x port=ninety"],
            vec![],
            "--database-url",
        ),
    ];
    for (args, env, flag) in cases {
        let done = run_with_env(&args, &env).await?;
        assert_eq!(
            done.code,
            Some(2),
            "{args:?} {env:?}: {}{}",
            done.stdout,
            done.stderr
        );
        assert!(
            done.stderr.contains(flag),
            "{args:?} {env:?} should name {flag}: {}",
            done.stderr
        );
        assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
    }
    // Flags win over the environment.
    let done = run_with_env(
        &["--database-url", url, "--batch-size", "0"],
        &[("JANGAR_ORCHESTRATION_DEDUPE_PRUNE_BATCH_SIZE", "10")],
    )
    .await?;
    assert_eq!(done.code, Some(2));
    // --help documents the exit codes and exits 0.
    let help = run(&["--help"]).await?;
    assert_eq!(help.code, Some(0));
    for needle in [
        "Exit codes",
        "0  done",
        "SIGTERM",
        "1  runtime failure",
        "2  configuration error",
    ] {
        assert!(help.stdout.contains(needle), "--help lacks {needle:?}");
    }
    Ok(())
}

/// Claims made while the pruner runs: none waits long, and none that is young is deleted
/// (also not a fresh claim of a delivery whose expired claim the pruner just removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_made_during_a_prune_are_never_blocked_long_and_young_ones_survive() -> Result<()> {
    const EXPIRED: i64 = 40_000;
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    let client = db.client().await?;
    seed_claims(&client, "exp", EXPIRED, "30 days").await?;
    client
        .batch_execute("ANALYZE orchestration_dedupe_claims")
        .await?;

    let url = pruner_url(&db);
    let live = Live::spawn(&[
        "--database-url",
        &url,
        "--log-format",
        "json",
        "--batch-size",
        "500",
        "--batch-pause-ms",
        "10",
    ])?;

    let running = Arc::new(AtomicBool::new(true));
    let mut claimants = Vec::new();
    for worker in 0..4u32 {
        let (store, running) = (store.clone(), running.clone());
        claimants.push(tokio::spawn(async move {
            let mut young: Vec<String> = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut made = 0u64;
            let mut i = 0u64;
            while running.load(Ordering::Relaxed) {
                i += 1;
                // Half brand-new deliveries, half deliveries whose expired claim the pruner
                // is deleting around now (worker-spread so they hit rows across the table).
                let delivery = if i.is_multiple_of(2) {
                    format!("new-{worker}-{i}")
                } else {
                    format!(
                        "exp-{}",
                        (i * 997 + u64::from(worker) * 7_919) % EXPIRED as u64 + 1
                    )
                };
                let key = ClaimKey::new(ClaimScope::Cluster, "agents", "o", &delivery);
                let run = RunRef {
                    namespace: "agents".into(),
                    name: format!("live-{worker}-{i}"),
                    uid: format!("uid-{worker}-{i}"),
                };
                let t = Instant::now();
                let outcome = store.claim(&key, &run).await?;
                slowest = slowest.max(t.elapsed());
                made += 1;
                if let ClaimOutcome::Claimed(_) = outcome {
                    young.push(delivery);
                }
            }
            anyhow::Ok((young, slowest, made))
        }));
    }

    let done = live.finish().await?;
    running.store(false, Ordering::Relaxed);
    let mut young = HashSet::new();
    let mut slowest = Duration::ZERO;
    let mut made = 0;
    for c in claimants {
        let (y, s, m) = c.await??;
        young.extend(y);
        slowest = slowest.max(s);
        made += m;
    }
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    let summary = done.summary()?;
    let batches = u64_field(summary, "batches")?;
    assert!(batches > 10, "a real multi-batch prune: {summary}");
    assert!(made > 50, "claims overlapped the prune (only {made})");
    assert!(
        slowest < Duration::from_secs(5),
        "a claim waited {slowest:?} during the prune (longest batch {} ms)",
        summary["longest_batch_ms"]
    );

    // Every claim this test won is still there and young.
    let present: HashSet<String> = client
        .query(
            "SELECT delivery_id FROM orchestration_dedupe_claims WHERE claimed_at > now() - interval '1 hour'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&String> = young.difference(&present).collect();
    assert!(lost.is_empty(), "young claims deleted: {lost:?}");
    let reclaimed = young.iter().filter(|d| d.starts_with("exp-")).count();
    assert!(reclaimed > 0, "some expired deliveries were claimed afresh");

    // A second run with no traffic takes whatever expired is left (rows the first run's
    // batches waited on and re-checked included) and nothing young.
    let again = run(&["--database-url", &url, "--log-format", "json"]).await?;
    assert_eq!(again.code, Some(0));
    assert_eq!(
        claim_count(&client, "claimed_at < now() - interval '7 days'").await?,
        0
    );
    assert_eq!(
        claim_count(&client, "true").await?,
        young.len() as i64,
        "exactly the young claims remain"
    );
    Ok(())
}

#[tokio::test]
async fn the_runtime_limit_ends_the_run_between_batches_with_exit_0() -> Result<()> {
    let (db, client) = migrated().await?;
    seed_claims(&client, "old", 500, "30 days").await?;
    let url = pruner_url(&db);
    let done = run(&[
        "--database-url",
        &url,
        "--log-format",
        "json",
        "--batch-size",
        "10",
        "--batch-pause-ms",
        "5000",
        "--max-runtime-seconds",
        "1",
    ])
    .await?;
    assert_eq!(done.code, Some(0), "{}", done.stdout);
    let summary = done.summary()?;
    assert_eq!(str_field(summary, "stopped")?, "max-runtime");
    assert_eq!(u64_field(summary, "deleted")?, 10);
    assert_eq!(u64_field(summary, "remaining_expired_estimate")?, 490);
    assert_eq!(claim_count(&client, "true").await?, 490);
    Ok(())
}

/// Batches that keep hitting their statement timeout shrink tenfold (and say so); the
/// timed-out batches roll back whole and the prune completes at the smaller size.
#[tokio::test]
async fn repeated_batch_timeouts_shrink_the_batch_and_the_prune_completes() -> Result<()> {
    let (db, client) = migrated().await?;
    seed_claims(&client, "old", 60, "30 days").await?;
    // 20 ms per deleted row: 60 rows take 1.2 s (> 600 ms timeout), 10 rows 0.2 s.
    client
        .batch_execute(
            "CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS $fn$
             BEGIN PERFORM pg_sleep(0.02); RETURN OLD; END $fn$;
             CREATE TRIGGER slow_delete BEFORE DELETE ON orchestration_dedupe_claims
                 FOR EACH ROW EXECUTE FUNCTION slow_delete();",
        )
        .await?;
    let url = pruner_url(&db);
    let done = run(&[
        "--database-url",
        &url,
        "--log-format",
        "json",
        "--batch-size",
        "100",
        "--batch-pause-ms",
        "0",
        "--batch-timeout-ms",
        "600",
    ])
    .await?;
    assert_eq!(done.code, Some(0), "{}", done.stdout);
    assert_eq!(done.with_message("batch timed out").len(), 3, "{}", done.stdout);
    let shrink = done.one("batches keep timing out")?;
    assert_eq!((u64_field(shrink, "from")?, u64_field(shrink, "to")?), (100, 10));
    let summary = done.summary()?;
    assert_eq!(u64_field(summary, "deleted")?, 60);
    assert_eq!(claim_count(&client, "true").await?, 0);
    for batch in done.with_message("batch committed") {
        assert!(u64_field(batch, "deleted")? <= 10, "{batch}");
    }
    Ok(())
}

#[tokio::test]
async fn nothing_to_do_exits_0_and_text_logs_are_plain_lines() -> Result<()> {
    let db = TestDb::new().await?;
    db.migrated_store().await?;
    let url = pruner_url(&db);
    let done = run(&["--database-url", &url, "--log-format", "text"]).await?;
    assert_eq!(done.code, Some(0), "{}", done.stdout);
    assert!(done.events.is_empty(), "text, not JSON: {}", done.stdout);
    let line = done
        .stdout
        .lines()
        .find(|l| l.contains("prune finished"))
        .ok_or_else(|| anyhow!("no summary line:\n{}", done.stdout))?;
    assert!(line.contains("INFO"), "{line}");
    assert!(
        line.contains("deleted") && line.contains("rows_per_second"),
        "{line}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The range-delete primitive the pruner's batches use (PrunerLock::prune_batch)
// ---------------------------------------------------------------------------------------

fn t(secs: i64) -> DateTime<Utc> {
    // 2026-01-01
    DateTime::<Utc>::from_timestamp(1_767_225_600 + secs, 0)
        .unwrap_or_else(|| panic!("{secs} s after 2026-01-01 is out of range"))
}

#[tokio::test]
async fn a_range_batch_never_exceeds_its_limit_and_never_splits_a_timestamp() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    // Prune batches run only on the pruner lock's session.
    let mut lock = store
        .try_pruner_lock()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the pruner lock is held elsewhere"))?;
    let client = db.client().await?;
    // Three rows at each of t(1), t(2), t(3); the cutoff is t(4); two rows at/after it.
    for (ts, n) in [(1, 3), (2, 3), (3, 3)] {
        for i in 0..n {
            seed_claim_at(&client, &format!("t{ts}-{i}"), t(ts), "confirmed").await?;
        }
    }
    seed_claim_at(&client, "at-cutoff", t(4), "confirmed").await?;
    seed_claim_at(&client, "young", t(5), "confirmed").await?;
    let cutoff = t(4);
    let timeout = Duration::from_secs(5);

    // Limit 4: the 5th oldest is at t(2), so only the t(1) rows go (3 ≤ 4), more remain,
    // and the next batch starts at that bound.
    let b = lock.prune_batch(t(-100), cutoff, 4, timeout).await?;
    assert_eq!((b.deleted, b.next_from, b.more), (3, Some(t(2)), true));
    let b = lock.prune_batch(t(2), cutoff, 4, timeout).await?;
    assert_eq!((b.deleted, b.next_from, b.more), (3, Some(t(3)), true));
    // Three left, fewer than the limit: all go, and nothing is left behind them.
    let b = lock.prune_batch(t(3), cutoff, 4, timeout).await?;
    assert_eq!((b.deleted, b.next_from, b.more), (3, None, false));
    let b = lock.prune_batch(t(3), cutoff, 4, timeout).await?;
    assert_eq!((b.deleted, b.next_from, b.more), (0, None, false));
    assert_eq!(delivery_ids(&client).await?, vec!["at-cutoff", "young"]);
    Ok(())
}

#[tokio::test]
async fn more_rows_sharing_one_timestamp_than_the_limit_still_go_limit_at_a_time() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    // Prune batches run only on the pruner lock's session.
    let mut lock = store
        .try_pruner_lock()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the pruner lock is held elsewhere"))?;
    let client = db.client().await?;
    // Seven claims made in one transaction share claimed_at: a range cannot split them.
    for i in 0..7 {
        seed_claim_at(&client, &format!("same-{i}"), t(1), "confirmed").await?;
    }
    seed_claim_at(&client, "young", t(10), "confirmed").await?;
    let timeout = Duration::from_secs(5);
    let mut from = t(-100);
    let mut sizes = Vec::new();
    loop {
        let b = lock.prune_batch(from, t(5), 3, timeout).await?;
        sizes.push(b.deleted);
        assert!(b.deleted <= 3, "{b:?}");
        if let Some(next) = b.next_from {
            from = next;
        }
        if !b.more || b.deleted == 0 {
            break;
        }
    }
    assert_eq!(sizes, vec![3, 3, 1]);
    assert_eq!(delivery_ids(&client).await?, vec!["young"]);
    Ok(())
}
