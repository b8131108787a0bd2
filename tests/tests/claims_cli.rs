//! End-to-end: the real `dedupe-claims` binary against real PostgreSQL (a schema per test),
//! reading and releasing claims that the real `dedupe-admission` made over TLS.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use chrono::{DateTime, Utc};
use dedupe_tests::{Answer, Review, TestCerts, TestDb, Webhook};
use serde_json::Value;

/// What one run of the CLI printed, and how it exited.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("stdout is not JSON: {self:?}"))
    }

    fn expect(self, code: i32) -> Result<Self> {
        ensure!(self.code == code, "expected exit {code}, got {self:#?}");
        Ok(self)
    }

    /// stderr is exactly one line.
    fn one_error_line(&self) -> Result<&str> {
        let lines: Vec<&str> = self.stderr.lines().collect();
        ensure!(lines.len() == 1, "expected one line on stderr: {self:#?}");
        Ok(lines[0])
    }
}

/// The knobs a developer's shell might have set, which would change what the CLI does.
const ENV_TO_CLEAR: &[&str] = &[
    "DATABASE_URL",
    "JANGAR_ORCHESTRATION_DEDUPE_DATABASE_CA",
    "JANGAR_ORCHESTRATION_DEDUPE_CLAIMS_STORE_TIMEOUT_MS",
    "JANGAR_ORCHESTRATION_DEDUPE_RETENTION_DAYS",
    "JANGAR_ORCHESTRATION_DEDUPE_PENDING_GRACE_SECONDS",
];

/// Runs `dedupe-claims ARGS` with `DATABASE_URL` = `url` (none when `None`).
async fn cli_with(url: Option<&str>, args: &[&str]) -> Result<Run> {
    let mut command = tokio::process::Command::new(dedupe_tests::binaries::binary("dedupe-claims")?);
    for name in ENV_TO_CLEAR {
        command.env_remove(name);
    }
    if let Some(url) = url {
        command.env("DATABASE_URL", url);
    }
    let out = command
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .context("dedupe-claims did not finish within 60 s")??;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout)?,
        stderr: String::from_utf8(out.stderr)?,
    })
}

async fn cli(db: &TestDb, args: &[&str]) -> Result<Run> {
    cli_with(Some(db.url()), args).await
}

use dedupe_tests::new_delivery as delivery;

async fn start_on(db: &TestDb, certs: &TestCerts, args: &[&str]) -> Result<Webhook> {
    Webhook::start_without_lookup(db, certs, args).await
}

/// Sends `review` and checks the decision.
async fn admit(webhook: &Webhook, review: &Review, decision: &str) -> Result<Answer> {
    let answer = Answer::from_reply(&webhook.review(review.json()).await?)?;
    ensure!(
        answer.decision() == decision,
        "expected {decision}, got {:?}",
        answer.0
    );
    Ok(answer)
}

/// Seeds a claim's state: how a claim becomes confirmed is the webhook's business
/// (tests/tests/webhook.rs); here only what the CLI shows of it matters.
async fn confirm(db: &TestDb, delivery: &str) -> Result<()> {
    db.client()
        .await?
        .execute(
            "UPDATE orchestration_dedupe_claims SET state = 'confirmed' WHERE delivery_id = $1",
            &[&delivery],
        )
        .await?;
    Ok(())
}

async fn rows(db: &TestDb, delivery: &str) -> Result<Vec<(String, String)>> {
    Ok(db
        .client()
        .await?
        .query(
            "SELECT scope, run_name FROM orchestration_dedupe_claims WHERE delivery_id = $1 ORDER BY scope",
            &[&delivery],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

fn time(v: &Value) -> Result<DateTime<Utc>> {
    let text = v.as_str().with_context(|| format!("not a string: {v}"))?;
    Ok(DateTime::parse_from_rfc3339(text)?.with_timezone(&Utc))
}

/// Nothing cut (no `…`) and no value continued on a line of its own.
fn assert_nothing_cut(text: &str) {
    assert!(!text.contains('…'), "a value was cut: {text}");
    for line in text.lines() {
        assert!(
            line.is_empty() || !line.starts_with(' ') || line.starts_with("  "),
            "a continuation line: {line:?}\n{text}"
        );
    }
}

/// A table's lines split into cells (kubectl's layout: cells hold no spaces, three or more
/// spaces between columns), checking every line has one cell per header.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let rows: Vec<Vec<String>> = text
        .lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect();
    for row in &rows {
        assert_eq!(row.len(), rows[0].len(), "a ragged table:\n{text}");
    }
    rows
}

#[tokio::test]
async fn get_shows_the_claim_in_a_table_and_in_json() -> Result<()> {
    let (db, _certs, webhook) = Webhook::start_fresh(&[]).await?;
    let d = delivery();
    let first = Review::create(&d, "run-first")?;
    admit(&webhook, &first, "claimed").await?;
    // A retried create of the same name: counted as an admission, the first uid kept.
    let retry = first.clone().new_uids();
    admit(&webhook, &retry, "retry").await?;

    let json = cli(&db, &["get", &d, "-o", "json"]).await?.expect(0)?.json()?;
    assert_eq!(json["deliveryId"], d.as_str());
    assert_eq!(json["retentionDays"], 7);
    let claims = json["claims"].as_array().context("claims")?;
    assert_eq!(claims.len(), 1, "{json:#}");
    let c = &claims[0];
    assert_eq!(c["deliveryId"], d.as_str());
    assert_eq!(c["scope"], "orchestration");
    assert_eq!(c["namespace"], "jangar");
    assert_eq!(c["orchestration"], "demo-orchestration");
    assert_eq!(
        c["key"],
        format!("orchestration:jangar/demo-orchestration/{d}").as_str()
    );
    assert_eq!(c["run"]["namespace"], "jangar");
    assert_eq!(c["run"]["name"], "run-first");
    assert_eq!(c["run"]["uid"], first.object_uid().as_str());
    assert_eq!(c["state"], "pending");
    assert_eq!(
        (c["admissions"].as_i64(), c["takeovers"].as_i64()),
        (Some(1), Some(0))
    );
    assert_eq!(c["pendingPastGrace"], false);
    let claimed_at = time(&c["claimedAt"])?;
    assert!(time(&c["updatedAt"])? >= claimed_at);
    assert_eq!(time(&c["prunableAfter"])? - claimed_at, chrono::Duration::days(7));
    assert!(c["ageSeconds"].as_i64().is_some_and(|s| s >= 0), "{c}");

    // The same row as the database has it.
    let row = db
        .client()
        .await?
        .query_one(
            "SELECT claimed_at, admissions FROM orchestration_dedupe_claims WHERE delivery_id = $1",
            &[&d],
        )
        .await?;
    assert_eq!(claimed_at, row.get::<_, DateTime<Utc>>(0));
    assert_eq!(c["admissions"].as_i64(), Some(i64::from(row.get::<_, i32>(1))));

    // Retention and grace come from the flags (or their environment variables).
    let json = cli(&db, &["get", &d, "-o", "json", "--retention-days", "30"])
        .await?
        .expect(0)?
        .json()?;
    assert_eq!(
        time(&json["claims"][0]["prunableAfter"])? - claimed_at,
        chrono::Duration::days(30)
    );

    // As kubectl get: a header and one line per claim, the columns in a fixed order, nothing
    // cut; -o wide adds columns after them; --no-headers drops the header only.
    let table = cli(&db, &["get", &d]).await?.expect(0)?.stdout;
    let rows = table_rows(&table);
    assert_eq!(rows[0], ["DELIVERY", "SCOPE", "STATE", "RUN", "AGE"], "{table}");
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(
        rows[1][..4],
        [d.as_str(), "orchestration", "pending", "jangar/run-first"],
        "{table}"
    );
    let wide = table_rows(&cli(&db, &["get", &d, "-o", "wide"]).await?.expect(0)?.stdout);
    assert_eq!(wide[0][..5], rows[0][..], "the default columns come first");
    assert_eq!(
        wide[0][5..],
        [
            "ORCHESTRATION",
            "RUN-UID",
            "IDLE",
            "ADMISSIONS",
            "TAKEOVERS",
            "PRUNED-AFTER"
        ]
    );
    assert_eq!(wide[1][5..7], ["demo-orchestration", first.object_uid().as_str()]);
    assert_eq!(wide[1][8], "1", "admissions");
    let bare = cli(&db, &["get", &d, "--no-headers"]).await?.expect(0)?.stdout;
    assert_eq!(
        bare,
        table
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    // -o name prints what get/describe/release take back.
    let name = cli(&db, &["get", &d, "-o", "name"]).await?.expect(0)?.stdout;
    assert_eq!(name, format!("claim/{d}\n"));
    let again = cli(&db, &["get", name.trim(), "-o", "json"])
        .await?
        .expect(0)?
        .json()?;
    assert_eq!(again["claims"][0]["deliveryId"], d.as_str());
    // -o yaml is the JSON document.
    let yaml = cli(&db, &["get", &d, "-o", "yaml"]).await?.expect(0)?.stdout;
    let from_yaml: Value = serde_saphyr::from_str(&yaml)?;
    let mut from_json = cli(&db, &["get", &d, "-o", "json"]).await?.expect(0)?.json()?;
    for doc in [&mut from_json] {
        // Read a moment apart: only the clock-derived fields may differ.
        for field in ["observedAt", "ageSeconds", "idleSeconds"] {
            doc["claims"][0][field] = from_yaml["claims"][0][field].clone();
        }
    }
    assert_eq!(from_yaml, from_json, "{yaml}");

    let table = cli(&db, &["describe", &d]).await?.expect(0)?.stdout;
    for part in [
        format!("delivery {d}: 1 claim"),
        "jangar/run-first".to_owned(),
        first.object_uid(),
        "pending, idle".to_owned(),
        "demo-orchestration".to_owned(),
        "retention 7 d".to_owned(),
    ] {
        assert!(table.contains(&part), "{part:?} missing from\n{table}");
    }
    assert!(table.contains("admissions     1"), "{table}");
    assert_nothing_cut(&table);
    Ok(())
}

#[tokio::test]
async fn a_delivery_held_in_two_scopes_shows_both_and_release_must_pick_one() -> Result<()> {
    let (db, certs, by_orchestration) = Webhook::start_fresh(&[]).await?;
    let by_namespace = start_on(
        &db,
        &certs,
        &["--claim-scope", "namespace", "--migrations", "skip"],
    )
    .await?;
    let d = delivery();
    admit(&by_orchestration, &Review::create(&d, "run-a")?, "claimed").await?;
    admit(&by_namespace, &Review::create(&d, "run-b")?, "claimed").await?;

    let json = cli(&db, &["get", &d, "-o", "json"]).await?.expect(0)?.json()?;
    let scopes: Vec<(&str, &str, &str)> = json["claims"]
        .as_array()
        .context("claims")?
        .iter()
        .map(|c| {
            (
                c["scope"].as_str().unwrap_or("?"),
                c["orchestration"].as_str().unwrap_or("?"),
                c["run"]["name"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        scopes,
        vec![
            ("namespace", "", "run-b"),
            ("orchestration", "demo-orchestration", "run-a")
        ]
    );
    let table = cli(&db, &["get", &d, "--no-headers"]).await?.expect(0)?.stdout;
    let lines = table_rows(&table);
    assert_eq!(
        lines
            .iter()
            .map(|r| (r[1].as_str(), r[3].as_str()))
            .collect::<Vec<_>>(),
        [("namespace", "jangar/run-b"), ("orchestration", "jangar/run-a")],
        "{table}"
    );
    let table = cli(&db, &["describe", &d]).await?.expect(0)?.stdout;
    assert!(table.contains(&format!("delivery {d}: 2 claims")), "{table}");
    assert_nothing_cut(&table);

    // Ambiguous: refused with and without --yes, nothing deleted, the matches shown.
    for extra in [&[][..], &["--yes"][..]] {
        let args: Vec<&str> = ["release", d.as_str()].iter().chain(extra).copied().collect();
        let run = cli(&db, &args).await?.expect(4)?;
        assert!(run.one_error_line()?.contains("2 claims"), "{run:#?}");
        let matches = table_rows(&run.stdout);
        assert_eq!(matches.len(), 3, "a header and one line per match: {run:#?}");
        assert!(
            run.stdout.contains("namespace") && run.stdout.contains("run-a"),
            "{run:#?}"
        );
        assert_eq!(
            rows(&db, &d).await?.len(),
            2,
            "an ambiguous release deletes nothing"
        );
    }
    let run = cli(
        &db,
        &["release", &d, "--yes", "--namespace", "jangar", "-o", "json"],
    )
    .await?
    .expect(4)?;
    assert_eq!(run.json()?["released"], false);
    assert_eq!(run.json()?["claims"].as_array().map(Vec::len), Some(2));

    // Picking the scope picks one: exactly that row goes.
    let run = cli(
        &db,
        &["release", &d, "--scope", "namespace", "--yes", "-o", "json"],
    )
    .await?
    .expect(0)?;
    let json = run.json()?;
    assert_eq!(json["released"], true);
    assert_eq!(json["claims"][0]["scope"], "namespace");
    assert_eq!(json["claims"][0]["run"]["name"], "run-b");
    assert_eq!(
        rows(&db, &d).await?,
        vec![("orchestration".to_owned(), "run-a".to_owned())]
    );
    Ok(())
}

#[tokio::test]
async fn release_without_yes_deletes_nothing_and_with_yes_frees_the_delivery() -> Result<()> {
    let (db, _certs, webhook) = Webhook::start_fresh(&[]).await?;
    let d = delivery();
    let other = delivery();
    admit(&webhook, &Review::create(&d, "run-first")?, "claimed").await?;
    admit(&webhook, &Review::create(&other, "run-other")?, "claimed").await?;
    admit(&webhook, &Review::create(&d, "run-second")?, "duplicate").await?;

    let preview = cli(&db, &["release", &d]).await?.expect(0)?;
    assert!(preview.stdout.contains("nothing deleted"), "{preview:#?}");
    assert!(preview.stdout.contains("jangar/run-first"), "{preview:#?}");
    assert_nothing_cut(&preview.stdout);
    let json = cli(&db, &["release", &d, "-o", "json"])
        .await?
        .expect(0)?
        .json()?;
    assert_eq!(json["released"], false);
    assert_eq!(json["claims"][0]["run"]["name"], "run-first");
    assert_eq!(rows(&db, &d).await?.len(), 1, "no --yes: nothing deleted");
    admit(
        &webhook,
        &Review::create(&d, "run-second")?.new_uids(),
        "duplicate",
    )
    .await?;

    let released = cli(&db, &["release", &d, "--yes"]).await?.expect(0)?;
    assert!(released.stdout.contains("released"), "{released:#?}");
    assert!(released.stdout.contains("jangar/run-first"), "{released:#?}");
    assert_nothing_cut(&released.stdout);
    assert!(rows(&db, &d).await?.is_empty(), "the claim is gone");
    assert_eq!(rows(&db, &other).await?.len(), 1, "and only that one");

    // The delivery can be created again, by a new run.
    admit(&webhook, &Review::create(&d, "run-again")?, "claimed").await?;
    assert_eq!(
        rows(&db, &d).await?,
        vec![("orchestration".to_owned(), "run-again".to_owned())]
    );

    // Releasing what is not there: no such claim, one line.
    let gone = delivery();
    let run = cli(&db, &["release", &gone, "--yes"]).await?.expect(3)?;
    assert!(run.one_error_line()?.contains(&gone), "{run:#?}");
    let run = cli(&db, &["release", &d, "--scope", "cluster", "--yes"])
        .await?
        .expect(3)?;
    assert!(run.one_error_line()?.contains("matches"), "{run:#?}");
    assert_eq!(
        rows(&db, &d).await?.len(),
        1,
        "a selector that matches nothing deletes nothing"
    );
    Ok(())
}

#[tokio::test]
async fn list_filters_orders_newest_first_and_says_when_the_limit_cut_it() -> Result<()> {
    let (db, _certs, webhook) = Webhook::start_fresh(&[]).await?;
    // Five claims, made in this order: two aged (one older than 2 days, one older than 1 h),
    // one in another namespace, one for another orchestration, one confirmed.
    let ds: Vec<String> = (0..5).map(|_| delivery()).collect();
    admit(&webhook, &Review::create(&ds[0], "run-0")?, "claimed").await?;
    admit(&webhook, &Review::create(&ds[1], "run-1")?, "claimed").await?;
    admit(
        &webhook,
        &Review::create(&ds[2], "run-2")?.namespace("other").new_uids(),
        "claimed",
    )
    .await?;
    admit(
        &webhook,
        &Review::create(&ds[3], "run-3")?.orchestration("nightly"),
        "claimed",
    )
    .await?;
    admit(&webhook, &Review::create(&ds[4], "run-4")?, "claimed").await?;
    db.age_claim(&ds[0], 3.0 * 86_400.0).await?;
    db.age_claim(&ds[1], 2.0 * 3_600.0).await?;
    confirm(&db, &ds[4]).await?;

    let deliveries = |json: &Value| -> Vec<String> {
        json["claims"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        c["deliveryId"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| panic!("a claim without a deliveryId: {c}"))
                    })
                    .collect()
            })
            .unwrap_or_else(|| panic!("no claims array in {json}"))
    };
    let list = |args: &'static [&'static str]| {
        let db = &db;
        async move {
            let all: Vec<&str> = ["list", "-o", "json"].iter().chain(args).copied().collect();
            let run = cli(db, &all).await?.expect(0)?;
            run.json()
        }
    };

    let all = list(&[]).await?;
    // Newest first: 4, 3, 2 (claimed in that reverse order), then 1 (2 h), then 0 (3 d).
    assert_eq!(
        deliveries(&all),
        vec![&ds[4], &ds[3], &ds[2], &ds[1], &ds[0]]
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
    );
    assert_eq!(
        (all["truncated"].as_bool(), all["limit"].as_u64()),
        (Some(false), Some(100))
    );

    assert_eq!(
        deliveries(&list(&["--state", "confirmed"]).await?),
        vec![ds[4].clone()]
    );
    assert_eq!(deliveries(&list(&["--state", "pending"]).await?).len(), 4);
    assert_eq!(
        deliveries(&list(&["--older-than", "1h"]).await?),
        vec![ds[1].clone(), ds[0].clone()]
    );
    assert_eq!(
        deliveries(&list(&["--older-than", "2d"]).await?),
        vec![ds[0].clone()]
    );
    assert_eq!(
        deliveries(&list(&["--namespace", "other"]).await?),
        vec![ds[2].clone()]
    );
    assert_eq!(
        deliveries(&list(&["--orchestration", "nightly"]).await?),
        vec![ds[3].clone()]
    );
    assert_eq!(
        deliveries(
            &list(&[
                "--namespace",
                "jangar",
                "--state",
                "pending",
                "--older-than",
                "1h"
            ])
            .await?
        ),
        vec![ds[1].clone(), ds[0].clone()]
    );
    assert!(deliveries(&list(&["--namespace", "nowhere"]).await?).is_empty());

    let cut = list(&["--limit", "2"]).await?;
    assert_eq!(deliveries(&cut), vec![ds[4].clone(), ds[3].clone()]);
    assert_eq!(cut["truncated"], true);
    let exact = list(&["--limit", "5"]).await?;
    assert_eq!(
        (deliveries(&exact).len(), exact["truncated"].as_bool()),
        (5, Some(false))
    );

    // The table on stdout, one line per claim; that the limit cut it, and how to go on, on
    // stderr (a pipe sees only claims).
    let cut = cli(&db, &["list", "--limit", "2"]).await?.expect(0)?;
    let rows = table_rows(&cut.stdout);
    assert_eq!(rows[0][0], "DELIVERY", "{cut:#?}");
    assert_eq!(
        rows[1..].iter().map(|r| r[0].clone()).collect::<Vec<_>>(),
        [ds[4].clone(), ds[3].clone()]
    );
    let hint = cut.one_error_line()?;
    assert!(hint.contains("showing 2 claims; more claims match"), "{cut:#?}");
    let token = hint
        .split_once("--continue ")
        .map(|(_, t)| t.trim().to_owned())
        .with_context(|| format!("no token in {hint:?}"))?;
    let table = cli(&db, &["list"]).await?.expect(0)?;
    assert_eq!(table_rows(&table.stdout).len(), 6, "{table:#?}");
    assert!(table.stderr.is_empty(), "nothing cut, nothing said: {table:#?}");
    assert!(
        table.stdout.contains("other/run-2") && table.stdout.contains("confirmed"),
        "{table:#?}"
    );
    assert_nothing_cut(&table.stdout);
    let empty = cli(&db, &["list", "--namespace", "nowhere"]).await?.expect(0)?;
    assert_eq!(
        (empty.stdout.as_str(), empty.stderr.as_str()),
        ("", "No claims found.\n")
    );

    // Paging: the token from the table's hint, then the JSON's `continue`, walk every claim
    // once, newest first, and the last page has no token.
    let next = cli(&db, &["list", "--limit", "2", "--continue", &token, "-o", "json"])
        .await?
        .expect(0)?
        .json()?;
    assert_eq!(deliveries(&next), vec![ds[2].clone(), ds[1].clone()]);
    let last_token = next["continue"].as_str().context("a continue token")?.to_owned();
    let last = cli(
        &db,
        &["list", "--limit", "2", "--continue", &last_token, "-o", "json"],
    )
    .await?
    .expect(0)?
    .json()?;
    assert_eq!(deliveries(&last), vec![ds[0].clone()]);
    assert_eq!(
        (last["truncated"].as_bool(), last["continue"].is_null()),
        (Some(false), true)
    );
    // A filter applies on every page.
    let confirmed = cli(
        &db,
        &[
            "list",
            "--limit",
            "1",
            "--continue",
            &token,
            "--state",
            "confirmed",
            "-o",
            "json",
        ],
    )
    .await?
    .expect(0)?
    .json()?;
    assert!(deliveries(&confirmed).is_empty(), "{confirmed}");

    // Claims made in the same microsecond (one transaction's now()): the key breaks the tie,
    // so pages of one never skip or repeat a claim.
    db.client()
        .await?
        .execute(
            "UPDATE orchestration_dedupe_claims SET claimed_at = '2026-01-01T00:00:00Z'",
            &[],
        )
        .await?;
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let mut args = vec!["list", "--limit", "1", "-o", "json"];
        if let Some(t) = &after {
            args.extend(["--continue", t.as_str()]);
        }
        let page = cli(&db, &args).await?.expect(0)?.json()?;
        walked.extend(deliveries(&page));
        match page["continue"].as_str() {
            Some(t) => after = Some(t.to_owned()),
            None => break,
        }
    }
    let mut expected = ds.clone();
    expected.sort();
    assert_eq!(walked, expected, "every claim once, by key within one instant");
    Ok(())
}

#[tokio::test]
async fn stats_match_the_table() -> Result<()> {
    let (db, certs, webhook) = Webhook::start_fresh(&[]).await?;
    let by_cluster = start_on(&db, &certs, &["--claim-scope", "cluster", "--migrations", "skip"]).await?;
    let ds: Vec<String> = (0..6).map(|_| delivery()).collect();
    for (i, d) in ds.iter().enumerate() {
        let hook = if i < 4 { &webhook } else { &by_cluster };
        admit(hook, &Review::create(d, &format!("run-{i}"))?, "claimed").await?;
    }
    confirm(&db, &ds[1]).await?;
    confirm(&db, &ds[5]).await?;
    db.age_claim(&ds[0], 8.0 * 86_400.0).await?; // past the 7-day retention, pending
    db.age_claim(&ds[2], 300.0).await?; // pending, past the 120 s grace
    db.age_claim(&ds[5], 10.0 * 86_400.0).await?; // past retention, confirmed, the oldest

    let json = cli(&db, &["stats", "-o", "json"]).await?.expect(0)?.json()?;
    let client = db.client().await?;
    let one = |sql: &'static str| {
        let client = &client;
        async move { Ok::<i64, anyhow::Error>(client.query_one(sql, &[]).await?.get(0)) }
    };
    assert_eq!(
        json["total"].as_i64(),
        Some(one("SELECT count(*) FROM orchestration_dedupe_claims").await?)
    );
    assert_eq!(json["total"], 6);
    assert_eq!(
        (json["pending"].as_u64(), json["confirmed"].as_u64()),
        (Some(4), Some(2))
    );
    let groups: Vec<(String, String, i64)> = client
        .query(
            "SELECT scope, state, count(*) FROM orchestration_dedupe_claims GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let reported: Vec<(String, String, i64)> = json["byScopeAndState"]
        .as_array()
        .context("byScopeAndState")?
        .iter()
        .map(|g| {
            (
                g["scope"].as_str().unwrap_or("?").to_owned(),
                g["state"].as_str().unwrap_or("?").to_owned(),
                g["claims"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(reported, groups);
    assert_eq!(
        json["pastRetention"].as_i64(),
        Some(
            one("SELECT count(*) FROM orchestration_dedupe_claims WHERE claimed_at < now() - interval '7 days'")
                .await?
        )
    );
    assert_eq!(json["pastRetention"], 2);
    assert_eq!(
        json["pendingPastGrace"].as_i64(),
        Some(
            one("SELECT count(*) FROM orchestration_dedupe_claims WHERE state = 'pending' AND updated_at < now() - interval '120 seconds'")
                .await?
        )
    );
    assert_eq!(
        json["pendingPastGrace"], 2,
        "the 8-day-old pending claim and the 300 s one"
    );
    assert_eq!(json["oldest"]["deliveryId"], ds[5].as_str());
    assert_eq!(json["oldest"]["scope"], "cluster");
    assert_eq!(
        json["tableBytes"].as_i64(),
        Some(one("SELECT pg_total_relation_size('orchestration_dedupe_claims')").await?)
    );
    assert_eq!(
        json["migrationVersion"].as_i64(),
        Some(i64::from(
            client
                .query_one("SELECT max(version) FROM orchestration_dedupe_migrations", &[])
                .await?
                .get::<_, i32>(0)
        ))
    );
    assert_eq!(
        (
            json["retentionDays"].as_u64(),
            json["pendingGraceSeconds"].as_u64()
        ),
        (Some(7), Some(120))
    );

    // The flags move the thresholds.
    let json = cli(
        &db,
        &[
            "stats",
            "-o",
            "json",
            "--retention-days",
            "9",
            "--pending-grace-seconds",
            "600",
        ],
    )
    .await?
    .expect(0)?
    .json()?;
    assert_eq!(
        (json["pastRetention"].as_u64(), json["pendingPastGrace"].as_u64()),
        (Some(1), Some(1))
    );

    let table = cli(&db, &["stats"]).await?.expect(0)?.stdout;
    for part in [
        "6 (pending 4, confirmed 2)".to_owned(),
        format!("{} (cluster)", ds[5]),
        "2 (older than 7 d".to_owned(),
        "2 (pending, idle longer than the 120 s grace)".to_owned(),
        "schema version 1".to_owned(),
    ] {
        assert!(table.contains(&part), "{part:?} missing from\n{table}");
    }
    assert_nothing_cut(&table);
    Ok(())
}

#[tokio::test]
async fn usage_errors_exit_2_naming_the_flag_or_argument() -> Result<()> {
    let db = TestDb::new().await?;
    for (args, names) in [
        (&["get", ""][..], "DELIVERY_ID"),
        (&["get", "not a delivery!"][..], "DELIVERY_ID"),
        (&["release", "--yes"][..], "DELIVERY_ID"),
        (&["list", "--older-than", "7"][..], "--older-than"),
        (&["list", "--limit", "0"][..], "--limit"),
        (&["list", "--state", "expired"][..], "--state"),
        (&["stats", "--frobnicate"][..], "--frobnicate"),
        (&["stats", "--migrations", "apply"][..], "--migrations"),
        (&["list", "--continue", "garbage"][..], "--continue"),
        (&["stats", "-o", "name"][..], "--output"),
        (&[][..], "Usage"),
    ] {
        let run = cli(&db, args).await?.expect(2)?;
        assert!(run.stderr.contains(names), "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
    }
    let run = cli_with(None, &["stats"]).await?.expect(2)?;
    assert!(
        run.one_error_line()?.contains("--database-url (DATABASE_URL)"),
        "{run:#?}"
    );
    let help = cli(&db, &["--help"]).await?.expect(0)?.stdout;
    for code in [
        "0  success",
        "1  the claim store failed",
        "2  usage",
        "3  no such claim",
        "4  ambiguous",
    ] {
        assert!(help.contains(code), "{code:?} missing from --help:\n{help}");
    }
    Ok(())
}

#[tokio::test]
async fn no_such_claim_exits_3_with_one_line() -> Result<()> {
    let db = TestDb::new().await?;
    db.migrated_store().await?;
    let d = delivery();
    for format in ["table", "json"] {
        let run = cli(&db, &["get", &d, "-o", format]).await?.expect(3)?;
        assert_eq!(run.one_error_line()?, format!("error: no claim for delivery {d}"));
        assert!(run.stdout.is_empty(), "{run:#?}");
    }
    Ok(())
}

#[tokio::test]
async fn store_failures_exit_1_with_one_line() -> Result<()> {
    let down = format!("{}?connect_timeout=5", dedupe_tests::unreachable_url()?);
    for args in [
        &["get", "d1"][..],
        &["list"][..],
        &["release", "d1", "--yes"][..],
        &["stats", "-o", "json"][..],
    ] {
        let run = cli_with(Some(&down), args).await?.expect(1)?;
        let line = run.one_error_line()?;
        assert!(
            line.starts_with("error: ") && line.contains("unavailable"),
            "{args:?}: {run:#?}"
        );
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
    }

    // Reachable, but the schema was never migrated (the CLI never migrates): a store failure.
    let db = TestDb::new().await?;
    let run = cli(&db, &["stats"]).await?.expect(1)?;
    assert!(
        run.one_error_line()?.contains("orchestration_dedupe_claims"),
        "{run:#?}"
    );
    let tables: i64 = db
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&db.schema()],
        )
        .await?
        .get(0);
    assert_eq!(tables, 0, "the CLI created nothing");
    Ok(())
}

/// Durations past what the store can represent are usage errors naming the flag, not store
/// failures ("timestamp out of range") after a round trip.
#[tokio::test]
async fn out_of_range_durations_exit_2_naming_the_flag() -> Result<()> {
    let db = TestDb::new().await?;
    db.migrated_store().await?;
    for (args, flag) in [
        (&["list", "--older-than", "1000000000000d"][..], "--older-than"),
        (&["list", "--older-than", "36501d"][..], "--older-than"),
        (
            &["stats", "--pending-grace-seconds", "1000000000000"][..],
            "--pending-grace-seconds",
        ),
        (
            &["get", "d1", "--pending-grace-seconds", "31536001"][..],
            "--pending-grace-seconds",
        ),
    ] {
        let run = cli(&db, args).await?.expect(2)?;
        assert!(run.stderr.contains(flag), "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
    }
    // The largest accepted values work.
    cli(&db, &["list", "--older-than", "36500d"]).await?.expect(0)?;
    cli(&db, &["stats", "--pending-grace-seconds", "31536000"])
        .await?
        .expect(0)?;
    Ok(())
}

/// The bytes of `text` that a terminal would act on: C0 controls other than the newline,
/// DEL, C1 controls, and the bidirectional overrides and isolates.
fn terminal_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}')
        })
        .collect()
}

/// A claim written past the webhook (straight into the table, as a bypassed webhook or a
/// hand-made row could) with terminal escape sequences in its fields: every human output
/// shows them escaped, never raw; JSON keeps the exact values.
#[tokio::test]
async fn terminal_escapes_in_a_claim_are_shown_escaped() -> Result<()> {
    let db = TestDb::new().await?;
    db.migrated_store().await?;
    let d = delivery();
    let osc = "\u{1b}]0;owned\u{7}";
    let csi = "\u{1b}[2J\u{1b}[31m";
    let c1 = "\u{9b}1m\u{7f}";
    let bidi = "\u{202e}gnp.exe";
    let name = format!("run-{osc}{csi}");
    let insert = "INSERT INTO orchestration_dedupe_claims \
           (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state) \
         VALUES ($1, 'orchestration', $2, $3, $4, $5, $6, 'pending')";
    let client = db.client().await?;
    client
        .execute(
            insert,
            &[
                &d,
                &format!("agents{c1}"),
                &format!("codex{bidi}\n\rfake line"),
                &format!("ns{csi}"),
                &name,
                &format!("uid{osc}\t"),
            ],
        )
        .await?;
    // A second claim of the same delivery (another orchestration): release must list both.
    let mut d2 = d.clone();
    client
        .execute(
            insert,
            &[
                &d,
                &"agents",
                &format!("other{osc}"),
                &"agents",
                &format!("b{csi}"),
                &"u2",
            ],
        )
        .await?;
    // And one whose delivery id itself carries them, for `list` and `stats`.
    d2.push_str(csi);
    client
        .execute(insert, &[&d2, &"agents", &"codex", &"agents", &"r", &"u3"])
        .await?;
    client
        .execute(
            "UPDATE orchestration_dedupe_claims SET claimed_at = claimed_at - interval '1 day' WHERE delivery_id = $1",
            &[&d2],
        )
        .await?;

    for (args, code) in [
        (vec!["get", &d], 0),
        (vec!["get", &d, "-o", "wide"], 0),
        (vec!["describe", &d], 0),
        (vec!["list"], 0),
        (vec!["stats"], 0),
        (vec!["release", &d], 4),
        (
            vec![
                "release",
                &d,
                "--orchestration",
                "codex\u{202e}gnp.exe\n\rfake line",
            ],
            0,
        ),
    ] {
        let run = cli(&db, &args).await?.expect(code)?;
        assert!(!run.stdout.is_empty(), "{args:?}: {run:#?}");
        let raw = terminal_controls(&run.stdout);
        assert!(raw.is_empty(), "{args:?} printed raw {raw:?}:\n{}", run.stdout);
        let raw = terminal_controls(&run.stderr);
        assert!(raw.is_empty(), "{args:?} printed raw {raw:?} on stderr");
    }
    let get = cli(&db, &["describe", &d]).await?.expect(0)?.stdout;
    assert!(
        get.contains(r"uid\x1b]0;owned\x07\x09"),
        "shown escaped, not dropped:\n{get}"
    );
    assert!(
        get.contains(r"codex\u{202e}gnp.exe"),
        "bidi override escaped:\n{get}"
    );
    assert!(
        !get.contains("\nfake line"),
        "no line of the operator's output is forged:\n{get}"
    );

    // JSON escapes them all (DEL, C1 and the bidi marks too): the exact values, one parse away.
    let run = cli(&db, &["get", &d, "-o", "json"]).await?.expect(0)?;
    let raw = terminal_controls(&run.stdout);
    assert!(raw.is_empty(), "-o json printed raw {raw:?}:\n{}", run.stdout);
    let json = run.json()?;
    let orchestrations: Vec<&str> = json["claims"]
        .as_array()
        .context("-o json has claims")?
        .iter()
        .filter_map(|c| c["orchestration"].as_str())
        .collect();
    assert!(
        orchestrations.contains(&format!("codex{bidi}\n\rfake line").as_str()),
        "{json}"
    );
    let names: Vec<&str> = json["claims"]
        .as_array()
        .context("-o json has claims")?
        .iter()
        .filter_map(|c| c["run"]["name"].as_str())
        .collect();
    assert!(names.contains(&name.as_str()), "{json}");
    Ok(())
}
