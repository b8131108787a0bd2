//! Admission through a real kube-apiserver: the webhook (the real binary, real TLS, real
//! PostgreSQL) registered with a ValidatingWebhookConfiguration, and runs created the way the
//! submitter creates them (`generateName`, the delivery label, `spec.deliveryId`). What a
//! client receives here is what a client in a cluster receives.
//!
//! Runs under `with-kube` (`make test` with `KUBEBUILDER_ASSETS` set); each test in its own
//! namespace of the shared control plane.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use dedupe_tests::kube::{denial, NewRun, TestNamespace, DELIVERY_LABEL, WEBHOOK_NAME};
use dedupe_tests::new_delivery;
use k8s_openapi::api::core::v1::ResourceQuota;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

const ORCHESTRATION: &str = "codex-autonomous";

/// Creates that pass admission and are then refused by the API server itself: a
/// ResourceQuota of zero OrchestrationRuns. ResourceQuota admits after the validating
/// webhooks, so the webhook has claimed by then. No controller-manager runs here to fill in
/// the quota's status, so the test writes it (the admission plugin reads `status.hard`).
async fn refuse_creates_after_admission(ns: &TestNamespace) -> Result<()> {
    let quotas: Api<ResourceQuota> = Api::namespaced(ns.client.clone(), &ns.name);
    let resource = "count/orchestrationruns.orchestration.proompteng.ai";
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-runs"},
        "spec": {"hard": {resource: "0"}},
    }))?;
    quotas.create(&PostParams::default(), &quota).await?;
    let status = json!({"status": {"hard": {resource: "0"}, "used": {resource: "0"}}});
    quotas
        .patch_status("no-runs", &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

async fn allow_creates_again(ns: &TestNamespace) -> Result<()> {
    let quotas: Api<ResourceQuota> = Api::namespaced(ns.client.clone(), &ns.name);
    quotas.delete("no-runs", &DeleteParams::default()).await?;
    Ok(())
}

/// Creates `run` until the quota's refusal shows (the quota cache catches up in a moment).
async fn create_refused_by_quota(ns: &TestNamespace, run: &NewRun) -> Result<()> {
    for _ in 0..100 {
        match run.create(&ns.client, &ns.name).await? {
            Err(kube::Error::Api(status)) if status.message.contains("exceeded quota") => return Ok(()),
            Err(kube::Error::Api(status)) if status.message.contains("status unknown for quota") => {}
            other => anyhow::bail!("expected the quota to refuse {run:?}, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the quota never refused {run:?}")
}

#[tokio::test]
async fn a_redelivered_create_is_denied_and_the_client_receives_the_existing_run() -> Result<()> {
    let (ns, db, _certs, webhook) =
        TestNamespace::with_registered_webhook("dup", &["--reconcile", "off"]).await?;
    let d = new_delivery();
    let submitted = NewRun::submitted(&d, ORCHESTRATION);
    let first = submitted.create(&ns.client, &ns.name).await??;
    let first_name = first.name_any();
    let first_uid = first.uid().context("the created run has a uid")?;
    assert_eq!(
        db.claim_rows(&d).await?,
        vec![(first_name.clone(), first_uid.clone(), "pending".into())]
    );

    let second = submitted.create(&ns.client, &ns.name).await?;
    let status = denial(&second)?;
    assert_eq!(status.code, 409, "{status:?}");
    assert!(
        status.message.starts_with(&format!(
            "admission webhook \"{WEBHOOK_NAME}\" denied the request: "
        )),
        "{}",
        status.message
    );
    assert!(
        status.message.contains(&format!("{}/{first_name}", ns.name)),
        "{}",
        status.message
    );
    assert!(status.message.contains(&d), "{}", status.message);
    // What a program reads to return the existing run instead of failing.
    let details = status.details.as_ref().context("status.details")?;
    assert_eq!(details.name, first_name);
    assert_eq!(details.uid, first_uid);
    assert_eq!(details.group, "orchestration.proompteng.ai");
    assert_eq!(details.kind, "orchestrationruns");
    let cause = details.causes.first().context("a cause")?;
    assert_eq!(cause.reason, "FieldValueDuplicate");
    assert_eq!(cause.field, format!("metadata.labels[\"{DELIVERY_LABEL}\"]"));
    assert!(
        cause.message.contains(&format!("namespace {}", ns.name)),
        "{}",
        cause.message
    );

    assert_eq!(ns.runs_of(&d).await?, vec![first_name.clone()]);
    assert_eq!(db.claim_rows(&d).await?.len(), 1);
    let logs = webhook
        .logs_when(|l| l.iter().any(|l| l.contains("\"decision\":\"duplicate\"")))
        .await;
    assert!(
        logs.iter()
            .any(|l| l.contains("\"decision\":\"duplicate\"") && l.contains(&first_name)),
        "{logs:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_delivery_through_the_api_server_make_exactly_one_run() -> Result<()> {
    const CLIENTS: usize = 12;
    const ROUNDS: usize = 3;
    let (ns, db, _certs, _webhook) =
        TestNamespace::with_registered_webhook("race", &["--reconcile", "off"]).await?;
    for round in 0..ROUNDS {
        let d = new_delivery();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (client, namespace, barrier) = (ns.client.clone(), ns.name.clone(), barrier.clone());
            let run = NewRun::submitted(&d, ORCHESTRATION);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                run.create(&client, &namespace).await
            }));
        }
        let mut created = Vec::new();
        for task in tasks {
            match task.await?? {
                Ok(run) => created.push(run.name_any()),
                Err(kube::Error::Api(status)) => {
                    ensure!(status.code == 409, "round {round}: {status:?}");
                }
                Err(other) => anyhow::bail!("round {round}: {other}"),
            }
        }
        assert_eq!(created.len(), 1, "round {round}: {created:?}");
        assert_eq!(ns.runs_of(&d).await?, created, "round {round}");
        let rows = db.claim_rows(&d).await?;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, created[0], "the claim names the run that exists");
    }
    Ok(())
}

#[tokio::test]
async fn a_server_side_dry_run_gets_the_real_answer_and_writes_nothing() -> Result<()> {
    let (ns, db, _certs, _webhook) =
        TestNamespace::with_registered_webhook("dry", &["--reconcile", "off"]).await?;
    let d = new_delivery();
    let run = NewRun::submitted(&d, ORCHESTRATION);

    run.create_dry_run(&ns.client, &ns.name).await??;
    assert!(db.claim_rows(&d).await?.is_empty(), "a dry run claims nothing");
    assert!(ns.runs_of(&d).await?.is_empty());

    let first = run.create(&ns.client, &ns.name).await??;
    let dry_duplicate = run.create_dry_run(&ns.client, &ns.name).await?;
    let status = denial(&dry_duplicate)?;
    assert_eq!(status.code, 409);
    assert!(status.message.contains(&first.name_any()), "{}", status.message);
    assert_eq!(db.claim_rows(&d).await?.len(), 1);
    assert_eq!(ns.runs_of(&d).await?, vec![first.name_any()]);
    Ok(())
}

#[tokio::test]
async fn a_create_refused_after_admission_can_be_retried_under_its_name() -> Result<()> {
    let (ns, db, _certs, _webhook) =
        TestNamespace::with_registered_webhook("retry", &["--reconcile", "off"]).await?;
    let d = new_delivery();
    let run = NewRun::submitted(&d, ORCHESTRATION).named("run-retried");

    refuse_creates_after_admission(&ns).await?;
    create_refused_by_quota(&ns, &run).await?;
    // The webhook claimed before the quota refused: a pending claim naming a run that
    // never came to exist.
    let rows = db.claim_rows(&d).await?;
    assert_eq!(
        (rows.len(), rows[0].0.as_str(), rows[0].2.as_str()),
        (1, "run-retried", "pending")
    );
    assert!(ns.runs_of(&d).await?.is_empty());

    allow_creates_again(&ns).await?;
    let mut created = None;
    for _ in 0..100 {
        match run.create(&ns.client, &ns.name).await? {
            Ok(run) => {
                created = Some(run);
                break;
            }
            // The quota's deletion reaches the admission cache a moment later.
            Err(kube::Error::Api(status)) if status.message.contains("quota") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(other) => anyhow::bail!("the retried create was refused: {other}"),
        }
    }
    let created = created.context("the retried create never got past the quota")?;
    assert_eq!(ns.runs_of(&d).await?, vec!["run-retried".to_owned()]);

    // A redelivery is denied naming the run that exists, with its uid.
    let redelivery = NewRun::submitted(&d, ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await?;
    let status = denial(&redelivery)?;
    assert_eq!(status.code, 409);
    let details = status.details.as_ref().context("status.details")?;
    assert_eq!(details.name, "run-retried");
    assert_eq!(Some(details.uid.clone()), created.uid());
    Ok(())
}

#[tokio::test]
async fn a_stale_pending_claim_whose_run_never_appeared_is_taken_over() -> Result<()> {
    let (ns, db, _certs, webhook) =
        TestNamespace::with_registered_webhook("takeover", &["--reconcile", "off", "--kube-lookup", "on"])
            .await?;
    let d = new_delivery();
    refuse_creates_after_admission(&ns).await?;
    create_refused_by_quota(&ns, &NewRun::submitted(&d, ORCHESTRATION).named("run-ghost")).await?;
    allow_creates_again(&ns).await?;

    // Inside the grace period: the ghost's claim holds.
    let early = NewRun::submitted(&d, ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await?;
    let status = denial(&early)?;
    assert!(status.message.contains("run-ghost"), "{}", status.message);

    // Past it, the API server shows no run-ghost: the next create takes the claim over.
    db.age_claim(&d, 600.0).await?;
    let mut taken = None;
    for _ in 0..100 {
        match NewRun::submitted(&d, ORCHESTRATION)
            .create(&ns.client, &ns.name)
            .await?
        {
            Ok(run) => {
                taken = Some(run);
                break;
            }
            Err(kube::Error::Api(status)) if status.message.contains("quota") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(other) => anyhow::bail!("the take-over was refused: {other}"),
        }
    }
    let taken = taken.context("the take-over never got past the quota")?;
    assert_eq!(ns.runs_of(&d).await?, vec![taken.name_any()]);
    let rows = db.claim_rows(&d).await?;
    assert_eq!(
        (rows[0].0.clone(), Some(rows[0].1.clone())),
        (taken.name_any(), taken.uid())
    );
    let metrics = String::from_utf8_lossy(&webhook.ops("/metrics").await?.body).into_owned();
    assert!(
        metrics.contains("orchestration_dedupe_takeovers_total 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_stale_pending_claim_whose_run_exists_is_confirmed_and_the_create_denied() -> Result<()> {
    let (ns, db, _certs, _webhook) =
        TestNamespace::with_registered_webhook("alive", &["--reconcile", "off", "--kube-lookup", "on"])
            .await?;
    let d = new_delivery();
    let alive = NewRun::submitted(&d, ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await??;
    assert_eq!(
        db.claim_rows(&d).await?[0].2,
        "pending",
        "no reconciler: still pending"
    );
    db.age_claim(&d, 600.0).await?;

    let late = NewRun::submitted(&d, ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await?;
    let status = denial(&late)?;
    assert_eq!(status.code, 409);
    assert!(status.message.contains(&alive.name_any()), "{}", status.message);
    let rows = db.claim_rows(&d).await?;
    assert_eq!(
        (rows[0].0.as_str(), rows[0].2.as_str()),
        (alive.name_any().as_str(), "confirmed")
    );
    assert_eq!(ns.runs_of(&d).await?, vec![alive.name_any()]);
    Ok(())
}

/// A stale pending claim names `run-x` for delivery A; `run-x` then exists, but for delivery
/// B. The holder check compares the delivery, so A's next create takes the claim over.
#[tokio::test]
async fn a_holder_name_reused_by_another_delivery_is_taken_over() -> Result<()> {
    let (ns, db, _certs, _webhook) =
        TestNamespace::with_registered_webhook("reused", &["--reconcile", "off", "--kube-lookup", "on"])
            .await?;
    let (a, b) = (new_delivery(), new_delivery());
    refuse_creates_after_admission(&ns).await?;
    create_refused_by_quota(&ns, &NewRun::submitted(&a, ORCHESTRATION).named("run-x")).await?;
    allow_creates_again(&ns).await?;
    let mut reused = None;
    for _ in 0..100 {
        match NewRun::submitted(&b, ORCHESTRATION)
            .named("run-x")
            .create(&ns.client, &ns.name)
            .await?
        {
            Ok(run) => {
                reused = Some(run);
                break;
            }
            Err(kube::Error::Api(status)) if status.message.contains("quota") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(other) => anyhow::bail!("B's run-x was refused: {other}"),
        }
    }
    reused.context("B's run-x never got past the quota")?;
    db.age_claim(&a, 600.0).await?;

    let taken = NewRun::submitted(&a, ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await??;
    let rows = db.claim_rows(&a).await?;
    assert_eq!(
        (rows[0].0.clone(), rows[0].2.as_str()),
        (taken.name_any(), "pending")
    );
    assert_eq!(ns.runs_of(&a).await?, vec![taken.name_any()]);
    Ok(())
}
