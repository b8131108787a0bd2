//! `make demo`: the main job, locally. Makes dev certificates, starts the real webhook over
//! TLS against PostgreSQL (a schema of its own in `DATABASE_URL`, dropped at the end),
//! replays the recorded AdmissionReviews — a first delivery, its redelivery, a dry run, a
//! label change, a status patch, a delete — prints what the API server (and so kubectl)
//! would get back, shows the claims table, runs the pruner in dry-run mode, and stops
//! everything it started. A fake API server (the tests' only mock) stands in for the
//! cluster: it holds a run that predates the webhook (the reconciler back-fills its claim)
//! and every run the webhook admits (the reconciler confirms its claim on seeing it).

use std::process::ExitCode;

use anyhow::{Context, Result};
use dedupe_tests::binaries::binary;
use dedupe_tests::{Answer, FakeApiServer, FakeRun, Review, TestCerts, TestDb, Webhook};

const WEBHOOK_NAME: &str = "dedupe.orchestration.proompteng.ai";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Step {
    what: &'static str,
    review: Review,
    /// Whether the API server stores the run once the webhook allows it. The first create
    /// of run-bxm4w is answered but not stored yet, so its retry (a timed-out create sent
    /// again) is still a retry.
    stored: bool,
}

impl Step {
    fn new(what: &'static str, review: Review) -> Self {
        Self {
            what,
            review,
            stored: true,
        }
    }
}

async fn run() -> Result<()> {
    let db = TestDb::new().await.context("preparing a schema for the demo")?;
    let certs = TestCerts::new()?;
    println!("== orchestration-dedupe demo");
    println!(
        "   dev CA and serving certificate: {} (certs-dev)",
        certs.dir.path().display()
    );
    let api = FakeApiServer::start().await?;
    // A run created before the webhook was installed: it has no claim until the reconciler
    // back-fills one.
    let legacy = "9b1e4c2a-demo-before-install";
    api.put(FakeRun::new("jangar", "run-legacy", legacy).created("2026-11-20T08:00:00Z"));
    let kubeconfig = api.kubeconfig();
    let kubeconfig = kubeconfig.to_string_lossy();
    let mut webhook = Webhook::start(db.url(), &certs, &[], &[("KUBECONFIG", &kubeconfig)]).await?;
    wait_for_claim(&db, legacy, "confirmed").await?;
    println!(
        "   API server (fake): http://{}; reconciler on, lookup on",
        api.addr
    );
    println!("   run-legacy (delivery {legacy}) predates the webhook: the reconciler back-filled its claim");
    println!(
        "   webhook: https://{}/validate   ops: http://{}/readyz",
        webhook.addr, webhook.ops_addr
    );
    println!(
        "   store:   PostgreSQL schema {} (dropped when the demo ends)\n",
        db.schema()
    );

    // The recorded requests, with fresh request uids. The redelivery is the same delivery
    // arriving again: the submitter creates another run (generateName gives it a new name).
    let first = Review::load("create-generatename")?;
    let delivery = first.json()["request"]["object"]["metadata"]["labels"]
        ["jangar.proompteng.ai/delivery-id"]
        .as_str()
        .context("the recorded create-generatename request has no delivery-id label")?
        .to_owned();
    let steps = vec![
        Step {
            stored: false,
            ..Step::new("create run-bxm4w (delivery 0466d0d5…)", first.clone().new_uids())
        },
        Step::new(
            "redelivery: create run-q2v7k (same delivery)",
            Review::create(&delivery, "run-q2v7k")?,
        ),
        Step::new("retried create of run-bxm4w (new uid)", first.clone().new_uids()),
        Step::new(
            "create --dry-run=server (new delivery)",
            Review::load("create-dry-run")?
                .delivery("5d1c0ad2-demo-dry-run")
                .new_uids(),
        ),
        Step::new(
            "create --dry-run=server (delivery 0466d0d5…)",
            Review::load("create-dry-run")?.delivery(&delivery).new_uids(),
        ),
        Step::new(
            "create run-fixed (delivery cab75a61…)",
            Review::load("create-fixed-name")?.new_uids(),
        ),
        Step::new(
            "kubectl label --overwrite delivery-id",
            Review::load("update-label-changed")?.new_uids(),
        ),
        Step::new(
            "kubectl patch --subresource=status",
            Review::load("update-status-subresource")?.new_uids(),
        ),
        Step::new(
            "kubectl delete run-fixed",
            Review::load("delete")?
                .delivery("cab75a61-62fe-44c9-aca9-be29f735114a")
                .new_uids(),
        ),
        Step::new(
            "create run-fixed again (deleted run)",
            Review::load("create-fixed-name")?.new_uids(),
        ),
        Step::new(
            "redelivery of run-legacy's delivery",
            Review::create(legacy, "run-legacy-2")?,
        ),
    ];

    println!(
        "{:<3} {:<46} {:<10} {:<6} message",
        "#", "request", "decision", "answer"
    );
    println!("{}", "-".repeat(120));
    let client = webhook.client()?;
    let mut conn = client.connect().await?;
    let mut duplicate = None;
    for (i, step) in steps.iter().enumerate() {
        let reply = conn.review(step.review.json()).await?;
        let answer = Answer::from_reply(&reply)?;
        let verdict = if answer.allowed() {
            "allow".to_owned()
        } else {
            answer.code().to_string()
        };
        let message = if answer.allowed() {
            answer.warnings().join("; ")
        } else {
            answer.message().to_owned()
        };
        if answer.decision() == "duplicate" && duplicate.is_none() {
            duplicate = Some((answer.message().to_owned(), answer.details().clone()));
        }
        println!(
            "{:<3} {:<46} {:<10} {:<6} {}",
            i + 1,
            step.what,
            answer.decision(),
            verdict,
            shorten(&message, 110)
        );
        if step.stored {
            persist(&api, &db, &step.review, &answer).await?;
        }
    }

    if let Some((message, details)) = duplicate {
        println!("\nWhat the submitter sees for the redelivery (kubectl):");
        println!(
            "   Error from server (Conflict): error when creating \"run.yaml\": admission webhook \"{WEBHOOK_NAME}\" \
             denied the request: {message}"
        );
        println!(
            "\nAnd what a program reads beside it (status.details; docs/OPERATIONS.md shows how to use it):"
        );
        for line in serde_json::to_string_pretty(&details)?.lines() {
            println!("   {line}");
        }
    }

    println!("\nClaims table ({}.orchestration_dedupe_claims):", db.schema());
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT delivery_id, run_namespace || '/' || run_name, state, to_char(claimed_at, 'YYYY-MM-DD HH24:MI:SS') \
             FROM orchestration_dedupe_claims ORDER BY claimed_at",
            &[],
        )
        .await?;
    println!(
        "   {:<38} {:<18} {:<10} claimed_at (UTC)",
        "delivery_id", "run", "state"
    );
    for row in rows {
        let (d, run, state, at): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        println!("   {d:<38} {run:<18} {state:<10} {at}");
    }

    println!("\nDecision events in the webhook's log (`kubectl logs … | rg 'deliveryId|idempotent'`):");
    let decision_line = |l: &String| l.contains("\"deliveryId\"") && l.contains("idempotent");
    let logs = webhook.logs_when(|logs| logs.iter().any(decision_line)).await;
    for line in logs.iter().filter(|l| decision_line(l)).take(2) {
        println!("   {}", shorten(line, 200));
    }

    let pruner = binary("dedupe-pruner")?;
    println!("\nPruner, dry run (retention 7 days: nothing is old enough yet):");
    let dry_run_ok = run_pruner(&pruner, db.url(), &["--dry-run"]).await?;
    println!(
        "\nThe claim of run-fixed aged by 8 days, as if made last week; the pruner, dry run then for real:"
    );
    client
        .execute(
            "UPDATE orchestration_dedupe_claims SET claimed_at = claimed_at - interval '8 days', \
             updated_at = updated_at - interval '8 days' WHERE run_name = 'run-fixed'",
            &[],
        )
        .await?;
    let aged_dry_run_ok = run_pruner(&pruner, db.url(), &["--dry-run"]).await?;
    let prune_ok = run_pruner(&pruner, db.url(), &[]).await?;
    let left: i64 = client
        .query_one("SELECT count(*) FROM orchestration_dedupe_claims", &[])
        .await?
        .get(0);
    println!("   claims left: {left} (run-bxm4w's and run-legacy's, 0 days old)");

    let status = webhook.terminate().await?;
    println!(
        "\nWebhook stopped on SIGTERM (exit code {}). Demo done.",
        status.code().unwrap_or(-1)
    );
    anyhow::ensure!(dry_run_ok && aged_dry_run_ok && prune_ok, "the pruner failed");
    anyhow::ensure!(status.success(), "the webhook did not exit cleanly");
    Ok(())
}

/// Runs `dedupe-pruner` (retention 7 days) with `args`, prints its output; true on exit 0.
async fn run_pruner(pruner: &std::path::Path, database_url: &str, args: &[&str]) -> Result<bool> {
    let out = tokio::process::Command::new(pruner)
        .args(["--retention-days", "7"])
        .args(args)
        .env("DATABASE_URL", database_url)
        .output()
        .await
        .context("running dedupe-pruner")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "   $ dedupe-pruner --retention-days 7{}",
        args.iter().map(|a| format!(" {a}")).collect::<String>()
    );
    for line in stdout.lines().chain(stderr.lines()) {
        println!("   {line}");
    }
    println!("   (exit code {})", out.status.code().unwrap_or(-1));
    Ok(out.status.success())
}

/// What the API server does after an allowed request: a create stores the run (and the
/// reconciler, watching, confirms its claim — waited for here so the output is the same on
/// every run), a delete removes it.
async fn persist(api: &FakeApiServer, db: &TestDb, review: &Review, answer: &Answer) -> Result<()> {
    let request = &review.json()["request"];
    if !answer.allowed() || request["dryRun"].as_bool() == Some(true) {
        return Ok(());
    }
    let object = match request["operation"].as_str() {
        Some("CREATE") => &request["object"],
        Some("DELETE") => {
            let old = &request["oldObject"]["metadata"];
            api.delete(
                old["namespace"].as_str().unwrap_or_default(),
                old["name"].as_str().unwrap_or_default(),
            );
            return Ok(());
        }
        _ => return Ok(()),
    };
    let metadata = &object["metadata"];
    let Some(delivery) = metadata["labels"]["jangar.proompteng.ai/delivery-id"].as_str() else {
        return Ok(());
    };
    let (namespace, name) = (
        metadata["namespace"].as_str().unwrap_or("jangar"),
        metadata["name"].as_str().unwrap_or_default(),
    );
    api.put(FakeRun::new(namespace, name, delivery));
    wait_for_claim(db, delivery, "confirmed").await
}

/// Waits (up to 30 s) for the claim of `delivery` to reach `state`.
async fn wait_for_claim(db: &TestDb, delivery: &str, state: &str) -> Result<()> {
    let client = db.client().await?;
    for _ in 0..1500 {
        let rows = client
            .query(
                "SELECT 1 FROM orchestration_dedupe_claims WHERE delivery_id = $1 AND state = $2",
                &[&delivery, &state],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    anyhow::bail!("the claim of {delivery} did not become {state}")
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}
