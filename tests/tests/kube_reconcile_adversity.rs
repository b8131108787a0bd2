//! The reconciler against a real kube-apiserver, under adversity: runs no claim can hold
//! (created while the webhook was bypassed) among many good ones, and runs deleted within
//! milliseconds of their create. Each test waits on a condition with a generous deadline,
//! never on a sleep.

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use dedupe_tests::kube::{denial, run_api, NewRun, TestNamespace};
use dedupe_tests::{eventually_within, new_delivery, TestCerts, TestDb};
use futures::stream::{self, StreamExt, TryStreamExt};
use kube::api::DeleteParams;
use serde_json::Value;

/// How long a test waits for the reconciler to reach a state before failing: far above
/// what it takes, so a loaded CI machine does not flake.
const DEADLINE: Duration = Duration::from_secs(90);
/// Creates in flight at once against the API server.
const CREATE_CONCURRENCY: usize = 16;

/// The webhook's flags here: the reconciler on, the lookup off (it watches the test's
/// namespace only: `TestNamespace::start_webhook`).
const RECONCILER_ONLY: &[&str] = &["--reconcile", "on", "--kube-lookup", "off"];

/// `(delivery_id, run_name, state)` of every claim.
async fn claims(db: &TestDb) -> Result<Vec<(String, String, String)>> {
    Ok(db
        .client()
        .await?
        .query(
            "SELECT delivery_id, run_name, state FROM orchestration_dedupe_claims ORDER BY delivery_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Runs the webhook's rules refuse, created while it is not registered (a bypass), among
/// a thousand good ones: every good run gets its claim, the bad ones are skipped, counted
/// by reason and logged once each; none holds back the batch it would have been in.
#[tokio::test]
async fn runs_no_claim_can_hold_are_skipped_and_reported_and_every_good_run_is_claimed() -> Result<()> {
    const GOOD: usize = 1_000;
    let slice = TestNamespace::new("adversity-poison").await?;
    let (client, ns) = (slice.client.clone(), slice.name.clone());
    let (db, certs) = (TestDb::new().await?, TestCerts::new()?);

    // What the API server itself accepts that the webhook's rules refuse.
    let incompressible: String = (0..84).map(|_| new_delivery()).collect::<String>()[..3_000].to_owned();
    let bad = [
        ("bad-nul", "co\u{0}dex".to_owned(), "invalid_orchestration"),
        ("bad-long", incompressible, "invalid_orchestration"),
        (
            "bad-not-dns",
            "Codex_Autonomous".to_owned(),
            "invalid_orchestration",
        ),
        (
            "bad-escape",
            "\u{1b}]0;owned\u{7}".to_owned(),
            "invalid_orchestration",
        ),
    ];
    let mut stored_bad = Vec::new();
    for (name, orchestration, reason) in &bad {
        let run = NewRun::submitted(&new_delivery(), orchestration).named(name);
        match run.create(&client, &ns).await? {
            Ok(_) => stored_bad.push((*name, *reason)),
            Err(e) => println!("the API server refused {name} itself: {e}"),
        }
    }
    let mismatch = NewRun {
        spec_delivery: Some(new_delivery()),
        ..NewRun::submitted(&new_delivery(), "codex")
    }
    .named("bad-mismatch");
    ensure!(
        mismatch.create(&client, &ns).await?.is_ok(),
        "the API server stores a spec/label mismatch"
    );
    stored_bad.push(("bad-mismatch", "delivery_id_mismatch"));
    ensure!(
        stored_bad.iter().any(|(n, _)| *n == "bad-nul") && stored_bad.iter().any(|(n, _)| *n == "bad-long"),
        "expected the API server to store a NUL byte and a 3,000-character name: {stored_bad:?}"
    );

    let good: Vec<String> = (0..GOOD).map(|_| new_delivery()).collect();
    stream::iter(good.iter().enumerate())
        .map(|(i, d)| {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                NewRun::submitted(d, "codex-autonomous")
                    .named(&format!("good-{i:04}"))
                    .create(&client, &ns)
                    .await?
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;

    let webhook = slice.start_webhook(&db, &certs, RECONCILER_ONLY).await?;
    eventually_within("in sync", DEADLINE, || webhook.synced_since(1.0)).await?;

    let claims = claims(&db).await?;
    let mut expected: Vec<(String, String, String)> = good
        .iter()
        .enumerate()
        .map(|(i, d)| (d.clone(), format!("good-{i:04}"), "confirmed".to_owned()))
        .collect();
    expected.sort();
    assert_eq!(claims.len(), GOOD, "one claim per good run, none for a bad one");
    assert_eq!(claims, expected);
    assert_eq!(
        webhook
            .metric("orchestration_dedupe_reconcile_backfilled_total")
            .await?,
        GOOD as f64
    );
    for reason in ["invalid_orchestration", "delivery_id_mismatch"] {
        let want = stored_bad.iter().filter(|(_, r)| *r == reason).count();
        let series = format!("orchestration_dedupe_reconcile_skipped_runs_total{{reason=\"{reason}\"}}");
        assert_eq!(webhook.metric(&series).await?, want as f64, "{series}");
    }
    assert_eq!(
        webhook
            .metric("orchestration_dedupe_reconcile_store_errors_total")
            .await?,
        0.0,
        "nothing refused reached the store"
    );
    assert!(
        webhook
            .metric("orchestration_dedupe_reconcile_last_event_timestamp_seconds")
            .await?
            > 0.0,
        "the watch's activity is stamped"
    );

    // One warning per bad run, naming it, with no control character in the line.
    let skipped_lines = |logs: &[String]| -> Vec<Value> {
        logs.iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("reconciler skipped a run"))
            })
            .collect()
    };
    let logs = webhook
        .logs_when(|l| skipped_lines(l).len() >= stored_bad.len())
        .await;
    let lines = skipped_lines(&logs);
    for (name, reason) in &stored_bad {
        let found: Vec<&Value> = lines
            .iter()
            .filter(|v| v["run"] == format!("{ns}/{name}").as_str())
            .collect();
        assert_eq!(found.len(), 1, "{name}: {lines:#?}");
        assert_eq!(found[0]["reason"], *reason);
    }
    for line in logs.iter().filter(|l| l.contains("reconciler skipped")) {
        assert!(
            !line.chars().any(|c| c.is_control()),
            "raw control character logged: {line:?}"
        );
    }
    Ok(())
}

/// Runs deleted within milliseconds of their create, with the lookup off: the reconciler
/// saw each (its create and its delete), so each claim ends `confirmed`, and a same-name
/// re-create of the delivery is denied rather than admitted as a retry.
#[tokio::test]
async fn a_run_deleted_right_after_its_create_still_confirms_its_claim() -> Result<()> {
    const RUNS: usize = 20;
    let slice = TestNamespace::new("adversity-quick-delete").await?;
    let (client, ns) = (slice.client.clone(), slice.name.clone());
    let (db, certs) = (TestDb::new().await?, TestCerts::new()?);
    let webhook = slice.start_webhook(&db, &certs, RECONCILER_ONLY).await?;
    slice.register(&webhook).await?;
    eventually_within("first sync", DEADLINE, || webhook.synced_since(1.0)).await?;

    let api = run_api(client.clone(), &ns);
    let runs: Vec<(String, NewRun)> = (0..RUNS)
        .map(|i| {
            let d = new_delivery();
            let run = NewRun::submitted(&d, "codex-autonomous").named(&format!("quick-{i:02}"));
            (d, run)
        })
        .collect();
    for (i, (_, run)) in runs.iter().enumerate() {
        let created = run.create(&client, &ns).await?;
        ensure!(created.is_ok(), "create {i}: {created:?}");
        // 0, 10, …, 50 ms between the create and the delete.
        tokio::time::sleep(Duration::from_millis((i % 6) as u64 * 10)).await;
        api.delete(&format!("quick-{i:02}"), &DeleteParams::default())
            .await?;
    }

    let took = eventually_within("every claim confirmed", DEADLINE, || async {
        let claims = claims(&db).await?;
        Ok(claims.len() == RUNS && claims.iter().all(|(_, _, state)| state == "confirmed"))
    })
    .await;
    if took.is_err() {
        bail!("claims: {:#?}", claims(&db).await?);
    }
    // A redelivery under the same name is a duplicate now, not a retry.
    for (i, (delivery, run)) in runs.iter().enumerate() {
        let again = run.create(&client, &ns).await?;
        let status = denial(&again)?;
        assert_eq!(status.code, 409, "re-create {i}: {status:?}");
        assert!(status.message.contains(delivery.as_str()), "{status:?}");
    }
    Ok(())
}
