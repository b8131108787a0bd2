//! The reconciler inside the real `dedupe-admission` binary against a real kube-apiserver:
//! list + watch of labelled OrchestrationRuns, writes to real PostgreSQL. Runs that "got past
//! the webhook" are created before the webhook is registered, as a bypass would leave them.
//!
//! Runs under `with-kube`. Tests that stop and restart the API server start a private control
//! plane; the others work in a namespace of their own on the shared one. What the real
//! server cannot be made to do on demand (a 410 Gone, a volume back-fill with a kill -9 half
//! way) stays in `reconcile.rs`, against the fake.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dedupe_tests::kube::{denial, run_api, ControlPlane, NewRun, TestNamespace};
use dedupe_tests::{
    eventually, new_delivery, Answer, Review, TestCerts, TestDb, Webhook, RECONCILE_LAST_SYNC,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};

const ORCHESTRATION: &str = "codex-autonomous";

async fn count_claims(db: &TestDb) -> Result<i64> {
    db.claim_count("true").await
}

/// Creates `run` in `ns` with nobody admitting it (the webhook is not registered there).
async fn bypassing(ns: &TestNamespace, run: NewRun) -> Result<String> {
    Ok(run.create(&ns.client, &ns.name).await??.name_any())
}

#[tokio::test]
async fn pre_existing_runs_are_back_filled_and_a_duplicate_pair_is_reported() -> Result<()> {
    let ns = TestNamespace::new("backfill").await?;
    let (db, certs) = (TestDb::new().await?, TestCerts::new()?);
    let (solo, pair) = (new_delivery(), new_delivery());
    let solo_run = bypassing(&ns, NewRun::submitted(&solo, ORCHESTRATION).named("run-solo")).await?;
    // Two runs of one delivery that got in while the webhook was bypassed: the older holds
    // (creation timestamps have one-second resolution; a tie goes to the first name).
    bypassing(&ns, NewRun::submitted(&pair, ORCHESTRATION).named("run-pair-a")).await?;
    bypassing(&ns, NewRun::submitted(&pair, ORCHESTRATION).named("run-pair-b")).await?;
    // Not ours: no label.
    bypassing(
        &ns,
        NewRun {
            label: None,
            ..NewRun::submitted(&new_delivery(), ORCHESTRATION).named("run-unlabelled")
        },
    )
    .await?;

    let webhook = ns.start_webhook(&db, &certs, &["--reconcile", "on"]).await?;
    eventually("first sync", || webhook.synced_since(1.0)).await?;
    assert_eq!(db.claim(&solo).await?, Some((solo_run, "confirmed".into())));
    assert_eq!(
        db.claim(&pair).await?,
        Some(("run-pair-a".into(), "confirmed".into()))
    );
    assert_eq!(count_claims(&db).await?, 2, "the unlabelled run gets no claim");
    assert_eq!(
        webhook
            .metric("orchestration_dedupe_reconcile_backfilled_total")
            .await?,
        2.0
    );
    assert_eq!(
        webhook.metric("orchestration_dedupe_reconcile_conflicts").await?,
        1.0
    );
    assert_eq!(
        webhook
            .metric("orchestration_dedupe_reconcile_observed_runs")
            .await?,
        3.0
    );
    let warned_in = |logs: &[String]| -> Vec<Value> {
        logs.iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["level"] == "WARN" && v["deliveryId"] == pair.as_str())
            .collect()
    };
    let warned = warned_in(&webhook.logs_when(|l| !warned_in(l).is_empty()).await);
    assert_eq!(warned.len(), 1, "{:#?}", webhook.logs());
    assert_eq!(warned[0]["holder"], format!("{}/run-pair-a", ns.name));
    assert_eq!(warned[0]["others"], format!("{}/run-pair-b", ns.name));

    // Registered now: a redelivery of the back-filled delivery is denied naming its run.
    ns.register(&webhook).await?;
    let redelivery = NewRun::submitted(&solo, ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await?;
    let status = denial(&redelivery)?;
    assert_eq!(status.code, 409);
    assert_eq!(status.details.as_ref().context("details")?.name, "run-solo");
    assert_eq!(ns.runs_of(&solo).await?, vec!["run-solo".to_owned()]);
    Ok(())
}

#[tokio::test]
async fn a_pending_claim_is_confirmed_within_two_seconds_of_its_run_appearing() -> Result<()> {
    let ns = TestNamespace::new("confirm").await?;
    let (db, certs) = (TestDb::new().await?, TestCerts::new()?);
    let webhook = ns
        .start_webhook(&db, &certs, &["--reconcile", "on", "--kube-lookup", "off"])
        .await?;
    ns.register(&webhook).await?;
    eventually("first sync", || webhook.synced_since(1.0)).await?;

    let d = new_delivery();
    let started = Instant::now();
    let run = NewRun::submitted(&d, ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await??;
    eventually("confirmed", || async {
        Ok(db.claim(&d).await? == Some((run.name_any(), "confirmed".into())))
    })
    .await?;
    let took = started.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "confirmed {took:?} after the create"
    );
    assert_eq!(
        webhook
            .metric("orchestration_dedupe_reconcile_confirmed_total")
            .await?,
        1.0
    );
    assert_eq!(
        webhook
            .metric("orchestration_dedupe_reconcile_backfilled_total")
            .await?,
        0.0
    );

    // A forged review (straight to the webhook's port) claims for a run the API server never
    // shows: that claim stays pending, whatever else the watch sees.
    let forged = new_delivery();
    let review = Review::create(&forged, "run-ghost")?
        .namespace(&ns.name)
        .orchestration(ORCHESTRATION);
    let a = Answer::from_reply(&webhook.review(review.json()).await?)?;
    assert_eq!(a.decision(), "claimed");
    let marker = NewRun::submitted(&new_delivery(), ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await??;
    eventually("marker confirmed", || async {
        Ok(webhook
            .metric("orchestration_dedupe_reconcile_confirmed_total")
            .await?
            >= 2.0)
    })
    .await?;
    assert_eq!(
        db.claim(&forged).await?,
        Some(("run-ghost".into(), "pending".into()))
    );
    assert_ne!(marker.name_any(), "run-ghost");
    Ok(())
}

#[tokio::test]
async fn per_namespace_watches_see_only_their_namespaces() -> Result<()> {
    let plane = ControlPlane::shared()?;
    let client = plane.admin_client().await?;
    let (agents, ci, other) = (
        plane.namespace("agents").await?,
        plane.namespace("ci").await?,
        plane.namespace("elsewhere").await?,
    );
    let (in_agents, in_ci, in_other) = (new_delivery(), new_delivery(), new_delivery());
    for (ns, d) in [(&agents, &in_agents), (&ci, &in_ci), (&other, &in_other)] {
        NewRun::submitted(d, ORCHESTRATION).create(&client, ns).await??;
    }
    let (db, certs) = (TestDb::new().await?, TestCerts::new()?);
    let watched = format!("{agents},{ci}");
    let kubeconfig = plane.admin_kubeconfig();
    let webhook = Webhook::start(
        db.url(),
        &certs,
        &["--reconcile", "on", "--namespaces", &watched],
        &[("KUBECONFIG", &kubeconfig.to_string_lossy())],
    )
    .await?;
    eventually("synced", || webhook.synced_since(1.0)).await?;
    assert!(db.claim(&in_agents).await?.is_some());
    assert!(db.claim(&in_ci).await?.is_some());
    assert_eq!(db.claim(&in_other).await?, None, "namespace not watched");
    assert_eq!(
        webhook
            .metric("orchestration_dedupe_reconcile_observed_runs")
            .await?,
        2.0
    );
    Ok(())
}

/// The webhook runs as an ordinary user whom a Role lets read runs in one namespace only: the
/// namespace it cannot list holds back only its own keys.
#[tokio::test]
async fn a_namespace_without_rbac_does_not_hold_back_the_others() -> Result<()> {
    let plane = ControlPlane::shared()?;
    let admin = plane.admin_client().await?;
    let (allowed, forbidden) = (
        plane.namespace("granted").await?,
        plane.namespace("denied").await?,
    );
    let (in_allowed, in_forbidden) = (new_delivery(), new_delivery());
    NewRun::submitted(&in_allowed, ORCHESTRATION)
        .create(&admin, &allowed)
        .await??;
    NewRun::submitted(&in_forbidden, ORCHESTRATION)
        .create(&admin, &forbidden)
        .await??;

    let user = format!(
        "dedupe-webhook-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "read-runs"},
        "rules": [{
            "apiGroups": ["orchestration.proompteng.ai"],
            "resources": ["orchestrationruns"],
            "verbs": ["get", "list", "watch"],
        }],
    }))?;
    Api::<Role>::namespaced(admin.clone(), &allowed)
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "read-runs"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-runs"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))?;
    Api::<RoleBinding>::namespaced(admin.clone(), &allowed)
        .create(&PostParams::default(), &binding)
        .await?;
    let kubeconfig = plane.user_kubeconfig(&user, &[])?;
    // The identity really is limited: listing the other namespace is forbidden.
    let as_user = dedupe_tests::kube::client_from(&kubeconfig).await?;
    let refused = run_api(as_user, &forbidden).list(&Default::default()).await;
    assert_eq!(denial(&refused)?.code, 403);

    let (db, certs) = (TestDb::new().await?, TestCerts::new()?);
    let watched = format!("{allowed},{forbidden}");
    let webhook = Webhook::start(
        db.url(),
        &certs,
        &[
            "--reconcile",
            "on",
            "--kube-lookup",
            "off",
            "--namespaces",
            &watched,
        ],
        &[("KUBECONFIG", &kubeconfig.to_string_lossy())],
    )
    .await?;
    eventually("the granted namespace back-filled", || async {
        Ok(db.claim(&in_allowed).await?.is_some())
    })
    .await?;
    eventually("the denied namespace's watch errors counted", || async {
        Ok(webhook
            .metric("orchestration_dedupe_reconcile_watch_errors_total")
            .await?
            >= 1.0)
    })
    .await?;
    assert_eq!(db.claim(&in_forbidden).await?, None);
    assert_eq!(
        webhook.metric(RECONCILE_LAST_SYNC).await?,
        0.0,
        "not a complete sync while one namespace cannot be listed"
    );
    Ok(())
}

/// The API server down at the webhook's start and restarted mid-watch: admission and
/// readiness never depend on it, and the reconciler catches up when it is back.
#[tokio::test]
async fn the_webhook_answers_while_the_api_server_is_down_and_reconciles_across_its_restarts() -> Result<()> {
    let plane = ControlPlane::start_private().await?;
    let ns = TestNamespace::on(plane, "restart").await?;
    let (db, certs) = (TestDb::new().await?, TestCerts::new()?);
    let early = new_delivery();
    let early_run = bypassing(&ns, NewRun::submitted(&early, ORCHESTRATION)).await?;
    let mut ns = ns;
    ns.plane.stop_apiserver()?;

    let webhook = ns
        .start_webhook(&db, &certs, &["--reconcile", "on", "--kube-lookup", "off"])
        .await?;
    eventually("watch errors counted", || async {
        Ok(webhook
            .metric("orchestration_dedupe_reconcile_watch_errors_total")
            .await?
            >= 1.0)
    })
    .await?;
    let during = new_delivery();
    let review = Review::create(&during, "run-during")?
        .namespace(&ns.name)
        .orchestration(ORCHESTRATION);
    let a = Answer::from_reply(&webhook.review(review.json()).await?)?;
    assert_eq!(a.decision(), "claimed");
    assert_eq!(webhook.ops("/readyz").await?.status, 200);
    assert_eq!(db.claim(&early).await?, None);

    ns.plane.start_apiserver().await?;
    eventually("back-filled after the outage", || async {
        Ok(db.claim(&early).await? == Some((early_run.clone(), "confirmed".into())))
    })
    .await?;

    // Restart mid-watch: the watch breaks and resumes (or relists), and what was created
    // after the restart is reconciled; nothing is claimed twice.
    ns.plane.stop_apiserver()?;
    ns.plane.start_apiserver().await?;
    let late = new_delivery();
    let late_run = bypassing(&ns, NewRun::submitted(&late, ORCHESTRATION)).await?;
    eventually("late run back-filled after the restart", || async {
        Ok(db.claim(&late).await? == Some((late_run.clone(), "confirmed".into())))
    })
    .await?;
    assert_eq!(count_claims(&db).await?, 3);
    assert_eq!(
        db.claim(&during).await?,
        Some(("run-during".into(), "pending".into()))
    );
    Ok(())
}
