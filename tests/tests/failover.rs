//! PostgreSQL failover: the real webhook in front of a primary and a streaming
//! standby started from the installed binaries (`dedupe_tests::pg_cluster`), under steady
//! concurrent claims with each delivery submitted twice under two names.
//!
//! Every scenario asserts: no acknowledged claim is missing on the new primary; no delivery
//! is allowed for two names (except the asynchronous case, which shows that window); nothing
//! is allowed while there is no primary; every answer then is a 503 within the store timeout;
//! claims succeed again within [`RECOVERY_BOUND`] of the new primary accepting connections.
//!
//! These tests start their own servers (they ignore `DATABASE_URL`) and take ~10-15 s each.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use dedupe_store::{ClaimStore, StoreConfig};
use dedupe_tests::binaries::binary;
use dedupe_tests::pg_cluster::{PgNode, PgPair, Replication};
use dedupe_tests::tcp_proxy::TcpProxy;
use dedupe_tests::{Answer, HttpsClient, Process, Review, TestCerts, Webhook};
use tokio::sync::watch;

/// The webhook's store timeout in these tests (shorter than the 2 s default, to keep the
/// tests short; the mechanism does not depend on it).
const STORE_TIMEOUT: Duration = Duration::from_millis(1_000);
const POOL_SIZE: usize = 8;
/// The bound: the first successful claim comes at most this long after the new
/// primary accepts connections. Measured here: 0.01-1.1 s with a 1 s store timeout (see
/// docs/OPERATIONS.md, "PostgreSQL failover"); the margin absorbs a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);
/// Slack on top of the store timeout for a 503 to reach the client (HTTP, TLS, a busy
/// 2-core machine running several test binaries): generous, so the bound does not flake.
const ANSWER_SLACK: Duration = Duration::from_secs(2);
/// Concurrent submitters; each submits every delivery twice, under two names, at once.
const SUBMITTERS: usize = 8;
/// Pause between one submitter's deliveries (bounds the load on a shared machine).
const SUBMIT_PAUSE: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------
// The load: steady concurrent claims, each delivery under two names.

#[derive(Debug, Clone)]
enum Outcome {
    /// Allowed: `claimed` (or `retry`).
    Allowed(String),
    /// A decision that denies (409 duplicate, ...).
    Denied(String),
    /// HTTP 503: no decision could be made.
    Unavailable(String),
    /// Anything else (connection error, unexpected status): a test failure.
    Broken(String),
}

#[derive(Debug, Clone)]
struct Record {
    delivery: String,
    name: String,
    sent: Instant,
    answered: Instant,
    outcome: Outcome,
}

impl Record {
    fn allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed(_))
    }
    fn decided(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed(_) | Outcome::Denied(_))
    }
}

struct Load {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Record>>>,
}

impl Load {
    fn start(webhook: &Webhook) -> Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for i in 0..SUBMITTERS {
            let client = webhook.client()?;
            tasks.push(tokio::spawn(submitter(i, client, stopped.clone())));
        }
        Ok(Self { stop, tasks })
    }

    async fn finish(self) -> Result<Vec<Record>> {
        let _ = self.stop.send(true);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(tokio::time::timeout(Duration::from_secs(30), task).await??);
        }
        Ok(all)
    }
}

async fn submitter(i: usize, client: HttpsClient, mut stopped: watch::Receiver<bool>) -> Vec<Record> {
    let mut records = Vec::new();
    let names = [format!("run-a-{i}"), format!("run-b-{i}")];
    while !*stopped.borrow() {
        let delivery = uuid::Uuid::new_v4().to_string();
        let (a, b) = tokio::join!(
            submit(&client, &delivery, &names[0]),
            submit(&client, &delivery, &names[1])
        );
        records.push(a);
        records.push(b);
        tokio::select! {
            () = tokio::time::sleep(SUBMIT_PAUSE) => {}
            _ = stopped.changed() => {}
        }
    }
    records
}

/// One CREATE review on its own connection (as the API server's requests arrive).
async fn submit(client: &HttpsClient, delivery: &str, name: &str) -> Record {
    let sent = Instant::now();
    let outcome = match review(client, delivery, name).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Broken(format!("{e:#}")),
    };
    Record {
        delivery: delivery.to_owned(),
        name: name.to_owned(),
        sent,
        answered: Instant::now(),
        outcome,
    }
}

async fn review(client: &HttpsClient, delivery: &str, name: &str) -> Result<Outcome> {
    let body = Review::create(delivery, name)?.new_uids();
    let reply = client.connect().await?.review(body.json()).await?;
    if reply.status == hyper::StatusCode::SERVICE_UNAVAILABLE {
        return Ok(Outcome::Unavailable(
            String::from_utf8_lossy(&reply.body).into_owned(),
        ));
    }
    let answer = Answer::from_reply(&reply)?;
    let decision = answer.decision().to_owned();
    Ok(if answer.allowed() {
        Outcome::Allowed(decision)
    } else {
        Outcome::Denied(decision)
    })
}

// ---------------------------------------------------------------------------------------
// The assertions.

/// No delivery allowed for two names.
fn assert_no_double_allow(records: &[Record]) -> Result<()> {
    let mut allowed: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.allowed()) {
        allowed.entry(&r.delivery).or_default().insert(&r.name);
    }
    let doubles: Vec<_> = allowed.iter().filter(|(_, names)| names.len() > 1).collect();
    ensure!(
        doubles.is_empty(),
        "deliveries allowed for two names: {doubles:?}"
    );
    Ok(())
}

/// What every kill-and-promote failover must show: no broken answer, no delivery allowed
/// twice, nothing allowed between losing the primary and promoting the standby (and some
/// requests sent then), every acknowledged claim on the new primary, and recovery within
/// [`RECOVERY_BOUND`] of it accepting writes.
async fn assert_healed_after_failover(
    label: &str,
    records: &[Record],
    lost: Instant,
    promoting: Instant,
    up: Instant,
    new_primary: &PgNode,
) -> Result<()> {
    assert_nothing_broken(records)?;
    assert_no_double_allow(records)?;
    let outage = assert_no_primary_window(records, lost, promoting)?;
    ensure!(outage > 0, "no request was sent while there was no primary");
    let acked = assert_acknowledged_present(records, new_primary).await?;
    let delay = assert_recovered(records, up)?;
    eprintln!(
        "{label}: {} requests, {acked} acknowledged claims all on the new primary, {outage} sent without a primary, first claim {delay:?} after promotion",
        records.len()
    );
    Ok(())
}

/// Every claim the webhook acknowledged (`claimed`) is on `primary`, held by that name.
async fn assert_acknowledged_present(records: &[Record], primary: &PgNode) -> Result<usize> {
    let client = primary.client().await?;
    let rows = client
        .query(
            "SELECT delivery_id, run_name FROM orchestration_dedupe_claims",
            &[],
        )
        .await?;
    let stored: BTreeMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let acknowledged: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(&r.outcome, Outcome::Allowed(d) if d == "claimed"))
        .collect();
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|r| stored.get(&r.delivery) != Some(&r.name))
        .map(|r| (&r.delivery, &r.name))
        .collect();
    ensure!(
        missing.is_empty(),
        "{} of {} acknowledged claims missing on the new primary: {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
    Ok(acknowledged.len())
}

/// Between `from` (the primary gone) and `to` (a new primary being made), nothing sent is
/// allowed, and everything sent is answered 503 within the store timeout (plus slack).
fn assert_no_primary_window(records: &[Record], from: Instant, to: Instant) -> Result<usize> {
    let mut n = 0;
    for r in records.iter().filter(|r| r.sent > from && r.sent < to) {
        n += 1;
        ensure!(
            !(r.allowed() && r.answered < to),
            "allowed while there was no primary: {r:?}"
        );
        if r.answered < to {
            ensure!(
                matches!(r.outcome, Outcome::Unavailable(_)),
                "not a 503 while there was no primary: {r:?}"
            );
            let took = r.answered - r.sent;
            ensure!(
                took <= STORE_TIMEOUT + ANSWER_SLACK,
                "a 503 took {took:?}, over the store timeout {STORE_TIMEOUT:?} + {ANSWER_SLACK:?}: {r:?}"
            );
        }
    }
    Ok(n)
}

/// The first decision answered after `up` came within [`RECOVERY_BOUND`], and everything
/// sent from `up + RECOVERY_BOUND` on got a decision (no 503 for ever). Returns the delay.
fn assert_recovered(records: &[Record], up: Instant) -> Result<Duration> {
    let first = records
        .iter()
        .filter(|r| r.decided() && r.answered >= up)
        .map(|r| r.answered)
        .min()
        .with_context(|| {
            format!(
                "no claim succeeded after the new primary came up:\n{}",
                timeline(records, up)
            )
        })?;
    let delay = first - up;
    ensure!(
        delay <= RECOVERY_BOUND,
        "first successful claim {delay:?} after the new primary accepted connections (bound {RECOVERY_BOUND:?})"
    );
    let late: Vec<&Record> = records
        .iter()
        .filter(|r| r.sent >= up + RECOVERY_BOUND && !r.decided())
        .collect();
    ensure!(
        late.is_empty(),
        "{} requests after recovery got no decision, e.g. {:?}",
        late.len(),
        late.first()
    );
    Ok(delay)
}

/// Outcomes per half second relative to `t0` (for failure messages).
fn timeline(records: &[Record], t0: Instant) -> String {
    let mut buckets: BTreeMap<i64, (usize, usize, usize, String)> = BTreeMap::new();
    for r in records {
        let at = if r.sent >= t0 {
            ((r.sent - t0).as_millis() / 500) as i64
        } else {
            -(((t0 - r.sent).as_millis() / 500) as i64) - 1
        };
        let b = buckets.entry(at).or_default();
        match &r.outcome {
            Outcome::Allowed(_) | Outcome::Denied(_) => b.0 += 1,
            Outcome::Unavailable(m) => {
                b.1 += 1;
                b.3 = m.chars().take(160).collect();
            }
            Outcome::Broken(_) => b.2 += 1,
        }
    }
    buckets
        .iter()
        .map(|(k, (ok, unavailable, broken, last))| {
            format!(
                "{:+.1}s: {ok} decided, {unavailable} 503 ({last}), {broken} broken",
                *k as f64 / 2.0
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_nothing_broken(records: &[Record]) -> Result<()> {
    let broken: Vec<(&str, &str)> = records
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Broken(why) => Some((r.name.as_str(), why.as_str())),
            _ => None,
        })
        .collect();
    ensure!(
        broken.is_empty(),
        "{} broken answers, e.g. {:?}",
        broken.len(),
        broken.first()
    );
    Ok(())
}

async fn webhook_on(url: &str, certs: &TestCerts) -> Result<Webhook> {
    let timeout = STORE_TIMEOUT.as_millis().to_string();
    let pool = POOL_SIZE.to_string();
    Webhook::start(
        url,
        certs,
        &[
            "--kube-lookup",
            "off",
            "--store-timeout-ms",
            &timeout,
            "--pool-size",
            &pool,
        ],
        &[],
    )
    .await
}

fn blocking<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    tokio::task::block_in_place(f)
}

// ---------------------------------------------------------------------------------------
// The scenarios.

/// Kill the primary, promote the synchronous standby, through a multi-host URL with
/// `target_session_attrs=read-write`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_host_url_survives_kill_and_promote() -> Result<()> {
    let mut pair = PgPair::start(Replication::Synchronous).await?;
    let certs = TestCerts::new()?;
    let webhook = webhook_on(&pair.multi_host_url(), &certs).await?;
    let load = Load::start(&webhook)?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    blocking(|| pair.primary.kill())?;
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let promoting = Instant::now();
    blocking(|| pair.standby.promote())?;
    let up = pair.standby.wait_writable().await?;
    tokio::time::sleep(RECOVERY_BOUND + Duration::from_secs(1)).await;
    let records = load.finish().await?;

    assert_healed_after_failover("multi-host", &records, killed, promoting, up, &pair.standby).await?;
    Ok(())
}

/// One address (a Service) in front of the primary; the node is lost: open connections go
/// silent (black-holed), new ones get no answer until the Service points at the promoted
/// standby. Without discarding timed-out connections the webhook never recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_address_survives_a_lost_node() -> Result<()> {
    let mut pair = PgPair::start(Replication::Synchronous).await?;
    let proxy = TcpProxy::start(pair.primary.addr()).await?;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port());
    let certs = TestCerts::new()?;
    let webhook = webhook_on(&url, &certs).await?;
    let load = Load::start(&webhook)?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The node is lost: nothing more through its connections, no new ones answered.
    let lost = Instant::now();
    proxy.black_hole_existing();
    proxy.set_target(None);
    blocking(|| pair.primary.kill())?;
    // Longer than the store timeout, so every pooled connection is tried and given up.
    tokio::time::sleep(STORE_TIMEOUT * 2).await;
    let promoting = Instant::now();
    blocking(|| pair.standby.promote())?;
    let up = pair.standby.wait_writable().await?;
    // The Service's endpoints follow the new primary.
    proxy.set_target(Some(pair.standby.addr()));
    tokio::time::sleep(RECOVERY_BOUND + Duration::from_secs(1)).await;
    let records = load.finish().await?;

    assert_healed_after_failover("lost node", &records, lost, promoting, up, &pair.standby).await?;
    Ok(())
}

/// Switchover: the primary stops cleanly, the standby is promoted, and the old primary comes
/// back as a standby at the same address, which the Service still points at for a moment.
/// Writes there fail with SQLSTATE 25006 (read-only): each such connection answers one 503
/// and is discarded, so once the Service moves, claims succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switchover_with_the_old_primary_back_read_only() -> Result<()> {
    let mut pair = PgPair::start(Replication::Synchronous).await?;
    let proxy = TcpProxy::start(pair.primary.addr()).await?;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port());
    let certs = TestCerts::new()?;
    let webhook = webhook_on(&url, &certs).await?;
    let load = Load::start(&webhook)?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    blocking(|| pair.primary.stop())?;
    let stopped = Instant::now();
    blocking(|| pair.standby.promote())?;
    pair.standby.wait_writable().await?;
    let PgPair { primary, standby } = &mut pair;
    blocking(|| primary.follow(standby))?;
    // The old primary answers, read-only, at the address the webhook uses.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let switched = Instant::now();
    proxy.set_target(Some(pair.standby.addr()));
    tokio::time::sleep(RECOVERY_BOUND + Duration::from_secs(1)).await;
    let records = load.finish().await?;

    assert_nothing_broken(&records)?;
    assert_no_double_allow(&records)?;
    assert_no_primary_window(&records, stopped, switched)?;
    let read_only = |r: &&Record| matches!(&r.outcome, Outcome::Unavailable(m) if m.contains("25006"));
    let before = records
        .iter()
        .filter(|r| r.sent < switched)
        .filter(read_only)
        .count();
    ensure!(
        before > 0,
        "no write reached the read-only old primary: the scenario did not happen"
    );
    // Once the address moves, each pooled read-only connection answers at most one 503.
    let after: Vec<&Record> = records
        .iter()
        .filter(|r| r.sent >= switched && !r.decided())
        .collect();
    ensure!(
        after.len() <= POOL_SIZE,
        "{} requests after the switch got no decision (pool of {POOL_SIZE}): read-only connections were reused, e.g. {:?}",
        after.len(),
        after.first()
    );
    let acked = assert_acknowledged_present(&records, &pair.standby).await?;
    let delay = assert_recovered(&records, switched)?;
    eprintln!(
        "switchover: {} requests, {acked} acknowledged claims all on the new primary, {before} read-only 503s before the switch, {} without a decision after it, first claim {delay:?} after it",
        records.len(),
        after.len()
    );
    Ok(())
}

/// Asynchronous replication: claims acknowledged while the standby lagged are missing on
/// the promoted standby, and a redelivery of each under another name is allowed: a second
/// run. Made deterministic by stopping the standby's WAL receiver before those claims (a lag
/// that covers exactly them); with the synchronous standby of the tests above, the same
/// claims would have waited for the standby instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn asynchronous_replication_shows_the_duplicate_window() -> Result<()> {
    const N: usize = 20;
    let mut pair = PgPair::start(Replication::Asynchronous).await?;
    let certs = TestCerts::new()?;
    let webhook = webhook_on(&pair.multi_host_url(), &certs).await?;
    let client = webhook.client()?;

    let replicated: Vec<String> = (0..N).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let lagging: Vec<String> = (0..N).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for d in &replicated {
        ensure_outcome(&client, d, "run-first", "claimed").await?;
    }
    wait_caught_up(&pair).await?;
    pair.standby.stop_receiving().await?;
    for d in &lagging {
        ensure_outcome(&client, d, "run-first", "claimed").await?;
    }
    blocking(|| pair.primary.kill())?;
    blocking(|| pair.standby.promote())?;
    pair.standby.wait_writable().await?;

    // The redeliveries, under another name, after the failover.
    for d in &replicated {
        ensure_outcome(&client, d, "run-second", "duplicate").await?;
    }
    let mut second_runs = 0;
    for d in &lagging {
        ensure_outcome(&client, d, "run-second", "claimed").await?;
        second_runs += 1;
    }
    ensure!(second_runs == N);
    let stored: i64 = pair
        .standby
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM orchestration_dedupe_claims WHERE run_name = 'run-first'",
            &[],
        )
        .await?
        .get(0);
    ensure!(
        stored == N as i64,
        "the promoted standby holds {stored} first-run claims, expected only the {N} replicated ones"
    );
    eprintln!("asynchronous: {N} claims acknowledged during the lag were lost at failover and allowed again for a second run");
    Ok(())
}

/// The only synchronous standby is gone: commits wait. Every claim that must write is
/// answered 503 within the store timeout, and never allowed. A duplicate of a claim that was
/// acknowledged before the standby left is a read (no row lock, no commit to wait for), so it
/// is still denied 409. The abandoned claim is cancelled, so its backend does not wait on for
/// the standby: its commit stays local, an orphan claim (pending, for a run that was answered
/// 503). A redelivery under another name racing that cancel is answered 503 (the orphan still
/// in flight) or 409 (the orphan visible: the documented window of docs/OPERATIONS.md,
/// bounded by the pending grace period like any orphan). Once the standby is back, the same
/// run is admitted as a retry and another name is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_only_synchronous_standby_gone_means_503_and_an_orphan_claim() -> Result<()> {
    let mut pair = PgPair::start(Replication::Synchronous).await?;
    let certs = TestCerts::new()?;
    let webhook = webhook_on(&pair.primary.url(), &certs).await?;
    let client = webhook.client()?;
    ensure_outcome(&client, "before", "run-a", "claimed").await?;

    blocking(|| pair.standby.stop())?;
    for (delivery, name) in [("orphan", "run-a"), ("before", "run-b"), ("orphan", "run-b")] {
        let sent = Instant::now();
        let answer = review(&client, delivery, name).await?;
        let took = sent.elapsed();
        let expected = match (delivery, name) {
            // The holder was acknowledged before the standby left: a durable claim, read.
            ("before", _) => matches!(&answer, Outcome::Denied(d) if d == "duplicate"),
            ("orphan", "run-b") => {
                matches!(&answer, Outcome::Unavailable(_))
                    || matches!(&answer, Outcome::Denied(d) if d == "duplicate")
            }
            _ => matches!(answer, Outcome::Unavailable(_)),
        };
        ensure!(
            expected,
            "{delivery} for {name} without the synchronous standby was answered {answer:?}"
        );
        ensure!(
            took <= STORE_TIMEOUT + ANSWER_SLACK,
            "the 503 took {took:?}, over the store timeout {STORE_TIMEOUT:?} + {ANSWER_SLACK:?}"
        );
    }
    // Cancelled, the abandoned claims' backends stop waiting: the orphan is committed locally
    // (visible to a plain read on the primary) and nobody waits for the standby any more.
    let primary = pair.primary.client().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let orphan = primary
            .query_opt(
                "SELECT run_name, state FROM orchestration_dedupe_claims WHERE delivery_id = 'orphan'",
                &[],
            )
            .await?
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)));
        let waiting: i64 = primary
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                &[],
            )
            .await?
            .get(0);
        if orphan == Some(("run-a".into(), "pending".into())) && waiting == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "after the 503s: orphan {orphan:?}, {waiting} backends still waiting for the standby"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    blocking(|| pair.standby.start())?;
    pair.primary.wait_for_standby(true).await?;
    ensure_outcome(&client, "orphan", "run-a", "retry").await?;
    ensure_outcome(&client, "orphan", "run-b", "duplicate").await?;
    Ok(())
}

/// One CREATE that must answer `decision` (retrying 503s for a few seconds: the webhook may
/// still be reconnecting after a failover).
async fn ensure_outcome(client: &HttpsClient, delivery: &str, name: &str, decision: &str) -> Result<()> {
    let deadline = Instant::now() + RECOVERY_BOUND * 2;
    loop {
        match review(client, delivery, name).await? {
            Outcome::Allowed(d) | Outcome::Denied(d) if d == decision => return Ok(()),
            Outcome::Unavailable(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => bail!("{delivery} for {name}: expected `{decision}`, got {other:?}"),
        }
    }
}

/// Waits until the standby has replayed everything the primary has written so far.
async fn wait_caught_up(pair: &PgPair) -> Result<()> {
    let primary = pair.primary.client().await?;
    let standby = pair.standby.client().await?;
    let target: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done: bool = standby
            .query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&target])
            .await?
            .get(0);
        if done {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the standby did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The pruner across a restart.

/// Records every delete statement on the claims table: which session (application_name),
/// and whether that session held the pruner's advisory lock at that moment. It commits
/// with the batch, so only committed batches are recorded.
const AUDIT_DELETES: &str = "
CREATE TABLE prune_audit (
    id      bigserial PRIMARY KEY,
    app     text NOT NULL,
    held    boolean NOT NULL,
    deleted bigint NOT NULL
);
CREATE FUNCTION audit_prune() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO prune_audit (app, held, deleted)
    SELECT current_setting('application_name'),
           EXISTS (SELECT 1 FROM pg_locks
                   WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                     AND classid = 1886549358 AND objsubid = 2),
           (SELECT count(*) FROM gone);
    RETURN NULL;
END $$;
CREATE TRIGGER audit_prune AFTER DELETE ON orchestration_dedupe_claims
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION audit_prune();
";

/// Expired claims to prune; at the batch size below the prune takes several seconds.
const EXPIRED: i64 = 40_000;

struct Pruner {
    process: Process,
}

impl Pruner {
    fn start(url: &str, app: &str) -> Result<Self> {
        let mut command = tokio::process::Command::new(binary("dedupe-pruner")?);
        command
            .args([
                "--retention-days",
                "7",
                "--batch-size",
                "200",
                "--batch-pause-ms",
                "10",
                // Fixed pacing: adaptive pacing would see no claim traffic and finish the
                // whole backlog in a few large batches, before the restart these tests need.
                "--pacing",
                "fixed",
                "--log-format",
                "json",
            ])
            .env("DATABASE_URL", format!("{url}?application_name={app}"));
        Ok(Self {
            process: Process::spawn(command, "dedupe-pruner")?,
        })
    }

    async fn exit(&mut self) -> Result<(i32, String)> {
        let status = self.process.wait(Duration::from_secs(60)).await?;
        Ok((status.code().unwrap_or(-1), self.process.output()))
    }
}

/// A server with the schema, the delete audit, and [`EXPIRED`] expired claims.
async fn seeded_node() -> Result<PgNode> {
    let node = blocking(|| PgNode::primary(Replication::Asynchronous))?;
    let store = ClaimStore::new(&StoreConfig::new(&node.url(), 1, Duration::from_secs(10))?)?;
    store.migrate().await?;
    drop(store);
    let client = node.client().await?;
    client.batch_execute(AUDIT_DELETES).await?;
    client
        .execute(
            "INSERT INTO orchestration_dedupe_claims
                 (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid,
                  state, claimed_at, updated_at)
             SELECT 'old-' || i, 'orchestration', 'ns', 'orch', 'ns', 'run-' || i, 'uid',
                    'confirmed', now() - interval '30 days' + i * interval '1 ms', now()
             FROM generate_series(1, $1::bigint) AS i",
            &[&EXPIRED],
        )
        .await?;
    Ok(node)
}

/// Waits until `n` delete batches have committed.
async fn wait_for_batches(node: &PgNode, n: i64) -> Result<()> {
    let client = node.client().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: i64 = client
            .query_one("SELECT count(*) FROM prune_audit", &[])
            .await?
            .get(0);
        if done >= n {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the pruner committed {done} batches, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A lone pruner across a restart takes its lock back on a new session and finishes, every
/// batch under the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_pruner_takes_its_lock_back_after_a_restart() -> Result<()> {
    let mut node = seeded_node().await?;
    let mut pruner = Pruner::start(&node.url(), "pruner-alone")?;
    wait_for_batches(&node, 10).await?;
    blocking(|| {
        node.stop()?;
        node.start()
    })?;
    let (code, out) = pruner.exit().await?;
    ensure!(code == 0, "exit {code}:\n{out}");
    ensure!(
        out.contains("took the lock again"),
        "no line about the lock:\n{out}"
    );
    let client = node.client().await?;
    let unlocked: i64 = client
        .query_one("SELECT count(*) FROM prune_audit WHERE NOT held", &[])
        .await?
        .get(0);
    ensure!(unlocked == 0, "{unlocked} batches deleted without the lock");
    let left: i64 = client
        .query_one("SELECT count(*) FROM orchestration_dedupe_claims", &[])
        .await?
        .get(0);
    ensure!(left == 0, "{left} expired claims left");
    Ok(())
}

/// A pruner is running when PostgreSQL restarts; a second pruner starts right after. Every
/// committed delete ran on a session holding the lock, the two never interleave, each says
/// how it ended, and the expired claims are all gone at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruners_never_interleave_across_a_restart() -> Result<()> {
    let mut node = seeded_node().await?;
    let mut first = Pruner::start(&node.url(), "pruner-first")?;
    // Let it commit some batches, then restart PostgreSQL under it.
    wait_for_batches(&node, 10).await?;
    blocking(|| {
        node.stop()?;
        node.start()
    })?;
    let mut second = Pruner::start(&node.url(), "pruner-second")?;
    let (first_code, first_out) = first.exit().await?;
    let (second_code, second_out) = second.exit().await?;

    let client = node.client().await?;
    let audit = client
        .query("SELECT app, held, deleted FROM prune_audit ORDER BY id", &[])
        .await?;
    let unlocked: Vec<String> = audit
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    ensure!(unlocked.is_empty(), "deletes without the lock by {unlocked:?}");
    let apps: Vec<String> = audit.iter().map(|r| r.get(0)).collect();
    let switches = apps.windows(2).filter(|w| w[0] != w[1]).count();
    ensure!(
        switches <= 1,
        "the pruners' batches interleaved ({switches} switches): {apps:?}"
    );
    let left: i64 = client
        .query_one("SELECT count(*) FROM orchestration_dedupe_claims", &[])
        .await?
        .get(0);
    ensure!(left == 0, "{left} expired claims left after both pruners");

    // Each ended with a line saying how, and a documented code.
    let retook = first_out.contains("took the lock again");
    let yielded = first_out.contains("another pruner holds the lock now");
    let gave_up = first_out.contains("the next run carries on");
    ensure!(
        (first_code == 0 && (retook || yielded)) || (first_code == 1 && gave_up),
        "first pruner: exit {first_code}, output:\n{first_out}"
    );
    ensure!(
        second_code == 0,
        "second pruner: exit {second_code}, output:\n{second_out}"
    );
    if retook {
        let second_batches = apps.iter().filter(|app| *app == "pruner-second").count();
        ensure!(
            second_batches == 0,
            "the first pruner took the lock back, yet the second deleted too:\n{second_out}"
        );
    }
    eprintln!(
        "pruners: {} batches, first pruner {} (exit {first_code}), second exit {second_code}",
        audit.len(),
        if retook {
            "took the lock back"
        } else if yielded {
            "yielded to the second"
        } else {
            "gave up"
        }
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Keepalives on the store's sockets.

/// The webhook's connections to PostgreSQL carry TCP keepalives at the configured idle time
/// (read back from the kernel with `ss`), not the system default of two hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_connections_carry_the_configured_keepalives() -> Result<()> {
    const IDLE_SECONDS: u64 = 3;
    let node = blocking(|| PgNode::primary(Replication::Asynchronous))?;
    let certs = TestCerts::new()?;
    let idle = IDLE_SECONDS.to_string();
    let webhook = Webhook::start(
        &node.url(),
        &certs,
        &["--kube-lookup", "off", "--database-keepalive-idle-seconds", &idle],
        &[],
    )
    .await?;
    ensure_outcome(&webhook.client()?, "keepalive-probe", "run-a", "claimed").await?;
    let filter = format!("( dport = :{} )", node.port());
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established", &filter])
        .output()
        .context("running ss (iproute2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // e.g. `timer:(keepalive,2.9sec,0)` or `(keepalive,119min,0)` for the system default:
    // the time left before the next probe.
    let timers: Vec<f64> = text
        .split("timer:(keepalive,")
        .skip(1)
        .filter_map(|rest| seconds(rest.split(',').next()?))
        .collect();
    ensure!(
        !timers.is_empty(),
        "no store connection with a keepalive timer:\n{text}"
    );
    ensure!(
        timers.iter().all(|left| *left <= IDLE_SECONDS as f64),
        "keepalive timers {timers:?} exceed the configured {IDLE_SECONDS}s idle:\n{text}"
    );
    Ok(())
}

/// `ss`'s timer value (`2.9sec`, `950ms`, `119min`) in seconds.
fn seconds(value: &str) -> Option<f64> {
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    match unit {
        "ms" => Some(number / 1_000.0),
        "sec" => Some(number),
        "min" => Some(number * 60.0),
        _ => None,
    }
}
