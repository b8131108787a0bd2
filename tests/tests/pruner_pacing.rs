//! The real `dedupe-pruner` with adaptive pacing (the default) against a real PostgreSQL:
//! full speed (larger batches, no pause) when nobody claims, the configured batch size and
//! pause while claims flow. Build the binary first (`cargo build --workspace`; `make test`
//! does). Nothing here asserts on speed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use dedupe_store::{ClaimKey, ClaimScope, RunRef};
use dedupe_tests::pruner::run_with_env;
use dedupe_tests::TestDb;
use serde_json::Value;
use tokio_postgres::NoTls;

/// Runs the pruner to its end (the shared harness, bounded); returns its JSON events.
async fn run_pruner(url: &str, extra: &[&str]) -> Result<Vec<Value>> {
    let mut args = vec!["--database-url", url, "--log-format", "json"];
    args.extend_from_slice(extra);
    // Adaptive pacing is what these tests are about; the shared harness pins `fixed` for the
    // others. A `--pacing` flag in `extra` still wins over this.
    let finished = run_with_env(&args, &[("JANGAR_ORCHESTRATION_DEDUPE_PRUNE_PACING", "adaptive")]).await?;
    ensure!(
        finished.code == Some(0),
        "pruner exited {:?}: {}{}",
        finished.code,
        finished.stdout,
        finished.stderr
    );
    Ok(finished.events)
}

/// (pace, batch_size, deleted) of every committed batch.
fn batches(events: &[Value]) -> Result<Vec<(String, u64, u64)>> {
    events
        .iter()
        .filter(|e| e["message"] == "batch committed")
        .map(|e| {
            Ok((
                e["pace"].as_str().context("pace")?.to_owned(),
                e["batch_size"].as_u64().context("batch_size")?,
                e["deleted"].as_u64().context("deleted")?,
            ))
        })
        .collect()
}

async fn seed_expired(client: &tokio_postgres::Client, n: i64) -> Result<()> {
    client
        .execute(
            "INSERT INTO orchestration_dedupe_claims
                 (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state,
                  claimed_at, updated_at)
             SELECT 'old-' || i, 'orchestration', 'agents', 'codex', 'agents', 'run-' || i, 'uid', 'confirmed',
                    now() - interval '30 days' + make_interval(secs => i), now() - interval '30 days'
               FROM generate_series(1, $1::bigint) i",
            &[&n],
        )
        .await?;
    Ok(())
}

/// A database of its own: other tests' claims on the same server (sessions of this test
/// binary and others, in other schemas of the shared test database) must not look like
/// traffic here.
struct OwnDatabase {
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

impl OwnDatabase {
    async fn new() -> Result<Self> {
        let admin_url = dedupe_tests::testdb::admin_url()?;
        let (admin, conn) = tokio_postgres::connect(&admin_url, NoTls).await?;
        tokio::spawn(conn);
        let name = format!("pacing_{}", uuid::Uuid::new_v4().simple());
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await?;
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url.as_str(), String::new()),
        };
        let root = base
            .rsplit_once('/')
            .map(|(root, _)| root)
            .ok_or_else(|| anyhow!("cannot find the database name in {admin_url}"))?;
        Ok(Self {
            admin,
            url: format!("{root}/{name}{query}"),
            name,
        })
    }

    /// The pruner's dry run applies the migrations (creates the table) and deletes nothing;
    /// then `n` expired claims are seeded from a session that is gone before the pruner
    /// looks, so it sees no claim traffic anywhere.
    async fn migrate_and_seed_expired(&self, n: i64) -> Result<()> {
        run_pruner(&self.url, &["--dry-run"]).await?;
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await?;
        let conn = tokio::spawn(conn);
        seed_expired(&client, n).await?;
        drop(client);
        conn.await??;
        Ok(())
    }

    async fn drop_it(self) -> Result<()> {
        self.admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn with_nobody_claiming_batches_are_larger_and_unpaused() -> Result<()> {
    let db = OwnDatabase::new().await?;
    db.migrate_and_seed_expired(3_000).await?;
    let events = run_pruner(
        &db.url,
        &[
            "--batch-size",
            "100",
            "--batch-pause-ms",
            "60000",
            "--quiet-batch-factor",
            "5",
        ],
    )
    .await?;
    let seen = batches(&events)?;
    ensure!(!seen.is_empty(), "no batches: {events:?}");
    for (pace, size, _) in &seen {
        assert_eq!((pace.as_str(), *size), ("full", 500), "{seen:?}");
    }
    assert_eq!(seen.iter().map(|b| b.2).sum::<u64>(), 3_000);
    // A 60 s pause between batches would have hit the 90 s bound: there was none.
    db.drop_it().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_claims_flow_the_configured_size_and_pause_hold() -> Result<()> {
    let db = TestDb::new().await?;
    let store = db.migrated_store().await?;
    let client = db.client().await?;
    seed_expired(&client, 1_000).await?;
    let running = Arc::new(AtomicBool::new(true));
    let claimants: Vec<_> = (0..4)
        .map(|w| {
            let (store, running) = (store.clone(), running.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while running.load(Ordering::Relaxed) {
                    i += 1;
                    let key = ClaimKey::new(
                        ClaimScope::Orchestration,
                        "agents",
                        "codex",
                        &format!("live-{w}-{i}"),
                    );
                    let run = RunRef {
                        namespace: "agents".into(),
                        name: format!("run-{w}-{i}"),
                        uid: format!("uid-{w}-{i}"),
                    };
                    store.claim(&key, &run).await?;
                }
                anyhow::Ok(i)
            })
        })
        .collect();
    // Let the claims get going before the pruner's first look.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = run_pruner(db.url(), &["--batch-size", "200", "--batch-pause-ms", "20"]).await;
    running.store(false, Ordering::Relaxed);
    for c in claimants {
        ensure!(c.await?? > 0, "a claimant made no claims");
    }
    let seen = batches(&events?)?;
    assert_eq!(seen.len(), 5, "{seen:?}");
    for (pace, size, _) in &seen {
        assert_eq!((pace.as_str(), *size), ("gentle", 200), "{seen:?}");
    }
    Ok(())
}

#[tokio::test]
async fn fixed_pacing_never_changes_the_batch_size() -> Result<()> {
    let db = OwnDatabase::new().await?;
    db.migrate_and_seed_expired(500).await?;
    let events = run_pruner(
        &db.url,
        &[
            "--batch-size",
            "100",
            "--batch-pause-ms",
            "0",
            "--pacing",
            "fixed",
        ],
    )
    .await?;
    let seen = batches(&events)?;
    assert_eq!(seen.len(), 5, "{seen:?}");
    for (pace, size, _) in &seen {
        assert_eq!((pace.as_str(), *size), ("gentle", 100), "{seen:?}");
    }
    db.drop_it().await
}
