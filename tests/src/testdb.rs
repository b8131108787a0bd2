//! Per-test isolation: each test gets its own schema in the database named by
//! `DATABASE_URL` (set by `make test`), reached through `search_path`, and dropped after.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use dedupe_store::{ClaimKey, ClaimScope, ClaimStore, RunRef, StoreConfig};
use tokio_postgres::{GenericClient, NoTls};

/// A connection string to a loopback port nothing listens on (bound, then released): a
/// store that refuses connections, for outage tests.
pub fn unreachable_url() -> Result<String> {
    Ok(format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        crate::postgres::free_port()?
    ))
}

/// A new delivery id (a UUID, as GitHub's are).
pub fn new_delivery() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The claim key the store tests use: scope `orchestration`, `agents/codex-autonomous/<delivery>`.
pub fn claim_key(delivery: &str) -> ClaimKey {
    ClaimKey::new(ClaimScope::Orchestration, "agents", "codex-autonomous", delivery)
}

/// A run named `name` in namespace `agents`, with a fresh uid.
pub fn agents_run(name: &str) -> RunRef {
    RunRef {
        namespace: "agents".into(),
        name: name.into(),
        uid: uuid::Uuid::new_v4().to_string(),
    }
}

/// A schema of its own for one test.
pub struct TestDb {
    admin_url: String,
    schema: String,
    url: String,
}

/// The database the tests run against. `make test` sets it (starting a private server when
/// needed); running `cargo nextest` by hand needs it set.
pub fn admin_url() -> Result<String> {
    std::env::var("DATABASE_URL")
        .context("DATABASE_URL is not set: run the tests with `make test`, which provides a PostgreSQL")
}

impl TestDb {
    /// Creates a fresh, empty schema.
    pub async fn new() -> Result<Self> {
        let admin_url = admin_url()?;
        let schema = format!("t_{}_{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(&admin_url, NoTls)
            .await
            .context("connecting to DATABASE_URL")?;
        tokio::spawn(conn);
        client.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-csearch_path%3D{schema}");
        Ok(Self {
            admin_url,
            schema,
            url,
        })
    }

    /// A connection string whose sessions see only this test's schema.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A store over this schema (not yet migrated).
    pub fn store(&self, pool_size: usize, timeout: Duration) -> Result<ClaimStore> {
        Ok(ClaimStore::new(&StoreConfig::new(
            &self.url, pool_size, timeout,
        )?)?)
    }

    /// A migrated store with default bounds.
    pub async fn migrated_store(&self) -> Result<ClaimStore> {
        let store = self.store(16, Duration::from_secs(10))?;
        store.migrate().await?;
        Ok(store)
    }

    /// Moves a delivery's claim timestamps `secs` into the past, as if it had been made
    /// (and last touched) that long ago.
    pub async fn age_claim(&self, delivery: &str, secs: f64) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE orchestration_dedupe_claims SET claimed_at = claimed_at - make_interval(secs => $2), \
                 updated_at = updated_at - make_interval(secs => $2) WHERE delivery_id = $1",
                &[&delivery, &secs],
            )
            .await?;
        Ok(())
    }

    /// The claims of `delivery` as (run name, run uid, state), whichever scope made them.
    pub async fn claim_rows(&self, delivery: &str) -> Result<Vec<(String, String, String)>> {
        Ok(self
            .client()
            .await?
            .query(
                "SELECT run_name, run_uid, state FROM orchestration_dedupe_claims WHERE delivery_id = $1",
                &[&delivery],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// (run name, state) of the one claim of `delivery`, if any (an error if several).
    pub async fn claim(&self, delivery: &str) -> Result<Option<(String, String)>> {
        let rows = self.claim_rows(delivery).await?;
        anyhow::ensure!(rows.len() <= 1, "{} claims for {delivery}", rows.len());
        Ok(rows.into_iter().next().map(|(name, _uid, state)| (name, state)))
    }

    /// Seeds `n` confirmed claims; see [`seed_claims`].
    pub async fn seed_claims(&self, prefix: &str, n: i64, age: &str) -> Result<()> {
        seed_claims(&self.client().await?, prefix, n, age).await
    }

    /// Seeds one claim at an exact time; see [`seed_claim_at`].
    pub async fn seed_claim_at(&self, delivery: &str, at: DateTime<Utc>, state: &str) -> Result<()> {
        seed_claim_at(&self.client().await?, delivery, at, state).await
    }

    /// How many claims match the SQL condition `filter` (`"true"` for all).
    pub async fn claim_count(&self, filter: &str) -> Result<i64> {
        claim_count(&self.client().await?, filter).await
    }

    /// The delivery ids of all claims, oldest claim first.
    pub async fn delivery_ids(&self) -> Result<Vec<String>> {
        delivery_ids(&self.client().await?).await
    }

    /// A plain client on this schema, for seeding and inspecting rows.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime; do the async cleanup on a thread of its own.
        let admin_url = self.admin_url.clone();
        let schema = self.schema.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin_url, NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

// Seeding and inspecting through a given client, so a test can do it inside its own
// transaction; the `TestDb` methods of the same names open a connection of their own.

/// Inserts `n` confirmed cluster-scope claims `prefix-1..n`; claim i is `age` (an SQL
/// interval such as `'30 days'`) old minus i seconds, so they are in `claimed_at` order and
/// the oldest is `prefix-1`.
pub async fn seed_claims(client: &impl GenericClient, prefix: &str, n: i64, age: &str) -> Result<()> {
    client
        .execute(
            "INSERT INTO orchestration_dedupe_claims
                 (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state, claimed_at)
             SELECT $1 || '-' || i, 'cluster', '', '', 'agents', 'run-' || i, 'uid-' || i, 'confirmed',
                    now() - $3::text::interval + make_interval(secs => i)
               FROM generate_series(1, $2::bigint) i",
            &[&prefix, &n, &age],
        )
        .await
        .with_context(|| format!("seeding {n} claims {prefix}-*"))?;
    Ok(())
}

/// Inserts one cluster-scope claim of `delivery` (its run named the same) in `state`, made
/// at exactly `at`.
pub async fn seed_claim_at(
    client: &impl GenericClient,
    delivery: &str,
    at: DateTime<Utc>,
    state: &str,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO orchestration_dedupe_claims
                 (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state, claimed_at)
             VALUES ($1, 'cluster', '', '', 'agents', $1, 'uid', $3, $2)",
            &[&delivery, &at, &state],
        )
        .await
        .with_context(|| format!("seeding the claim {delivery}"))?;
    Ok(())
}

/// How many claims match the SQL condition `filter`.
pub async fn claim_count(client: &impl GenericClient, filter: &str) -> Result<i64> {
    Ok(client
        .query_one(
            &format!("SELECT count(*) FROM orchestration_dedupe_claims WHERE {filter}"),
            &[],
        )
        .await?
        .get(0))
}

/// The delivery ids of all claims, oldest claim first.
pub async fn delivery_ids(client: &impl GenericClient) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT delivery_id FROM orchestration_dedupe_claims ORDER BY claimed_at",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
