//! What a denied submitter is told, through a real kube-apiserver: the 409's message and
//! `status.details` must be true. A retried fixed-name create (which the API server refuses
//! itself, after the webhook allowed it) must not change the uid later duplicates are given;
//! a create of the name a confirmed claim names must not be told the run was deleted while
//! it exists.
//!
//! Runs under `with-kube` (`make test` with `KUBEBUILDER_ASSETS` set); each test in its own
//! namespace of the shared control plane.

use anyhow::{Context, Result};
use dedupe_tests::kube::{denial, NewRun, TestNamespace, WEBHOOK_NAME};
use dedupe_tests::{eventually, new_delivery};
use kube::api::DeleteParams;
use kube::ResourceExt;

const ORCHESTRATION: &str = "codex-autonomous";

/// Whether a refusal came from this webhook (the API server prefixes its denials).
fn from_webhook(message: &str) -> bool {
    message.starts_with(&format!(
        "admission webhook \"{WEBHOOK_NAME}\" denied the request: "
    ))
}

/// Deletes `name` and waits until the API server no longer shows it.
async fn delete_run(ns: &TestNamespace, name: &str) -> Result<()> {
    ns.runs().delete(name, &DeleteParams::default()).await?;
    let runs = ns.runs();
    eventually(&format!("{name} deleted"), || {
        let runs = runs.clone();
        async move { Ok(runs.get_opt(name).await?.is_none()) }
    })
    .await?;
    Ok(())
}

/// A fixed-name create, the client's retry of it (allowed by the webhook as a retried
/// create, then refused by the API server itself: the name exists), then a redelivery: the
/// redelivery's `status.details.uid` is the live run's, not the failed retry's.
#[tokio::test]
async fn after_a_retried_fixed_name_create_the_details_name_the_live_run() -> Result<()> {
    let (ns, db, _certs, _webhook) =
        TestNamespace::with_registered_webhook("retried", &["--reconcile", "off"]).await?;
    let d = new_delivery();
    let fixed = NewRun::submitted(&d, ORCHESTRATION).named("run-fixed");
    let live = fixed.create(&ns.client, &ns.name).await??;
    let live_uid = live.uid().context("the created run has a uid")?;

    let retry = fixed.create(&ns.client, &ns.name).await?;
    let status = denial(&retry)?;
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists"),
        "{status:?}"
    );
    assert!(
        !from_webhook(&status.message),
        "the webhook allows a retried create; the API server refuses it: {}",
        status.message
    );

    let redelivery = NewRun::submitted(&d, ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await?;
    let status = denial(&redelivery)?;
    assert!(from_webhook(&status.message), "{}", status.message);
    let details = status.details.as_ref().context("status.details")?;
    assert_eq!(details.name, "run-fixed");
    assert_eq!(details.uid, live_uid, "the uid of the run that exists");
    assert!(status.message.contains(&live_uid), "{}", status.message);
    // The API server showed the run at the retry: the claim is confirmed, with its uid.
    assert_eq!(
        db.claim_rows(&d).await?,
        vec![("run-fixed".into(), live_uid, "confirmed".into())]
    );
    assert_eq!(ns.runs_of(&d).await?, vec!["run-fixed".to_owned()]);
    Ok(())
}

/// A create of the name a confirmed claim names: while the run exists the denial says so;
/// once it is deleted, the denial says it existed and was deleted.
#[tokio::test]
async fn a_same_name_create_is_told_whether_the_run_exists_or_was_deleted() -> Result<()> {
    let (ns, db, _certs, _webhook) =
        TestNamespace::with_registered_webhook("samename", &["--reconcile", "off"]).await?;
    let d = new_delivery();
    let fixed = NewRun::submitted(&d, ORCHESTRATION).named("run-fixed");
    fixed.create(&ns.client, &ns.name).await??;
    // The retry confirms the claim (the API server shows the run).
    denial(&fixed.create(&ns.client, &ns.name).await?)?;
    assert_eq!(db.claim_rows(&d).await?[0].2, "confirmed");

    let again = fixed.create(&ns.client, &ns.name).await?;
    let status = denial(&again)?;
    assert!(from_webhook(&status.message), "{}", status.message);
    assert_eq!(status.code, 409);
    assert!(status.message.contains("that run exists"), "{}", status.message);
    assert!(!status.message.contains("deleted"), "{}", status.message);

    delete_run(&ns, "run-fixed").await?;
    let after_delete = fixed.create(&ns.client, &ns.name).await?;
    let status = denial(&after_delete)?;
    assert!(from_webhook(&status.message), "{}", status.message);
    assert!(
        status.message.contains("existed and was deleted"),
        "{}",
        status.message
    );
    assert!(ns.runs_of(&d).await?.is_empty(), "the delivery stays used");
    Ok(())
}

/// Without the lookup (the reconciler confirms instead), the webhook cannot know whether
/// the run still exists: the denial says either may be the case, never that it was deleted.
#[tokio::test]
async fn without_the_lookup_a_same_name_create_is_told_something_true_either_way() -> Result<()> {
    let (ns, db, _certs, _webhook) =
        TestNamespace::with_registered_webhook("samenameoff", &["--kube-lookup", "off", "--reconcile", "on"])
            .await?;
    let d = new_delivery();
    let fixed = NewRun::submitted(&d, ORCHESTRATION).named("run-fixed");
    fixed.create(&ns.client, &ns.name).await??;
    eventually("the reconciler confirms the claim", || {
        let db = &db;
        let d = &d;
        async move {
            Ok(db
                .claim_rows(d)
                .await?
                .first()
                .is_some_and(|r| r.2 == "confirmed"))
        }
    })
    .await?;

    let again = fixed.create(&ns.client, &ns.name).await?;
    let status = denial(&again)?;
    assert!(from_webhook(&status.message), "{}", status.message);
    assert!(
        status.message.contains("still exists or was deleted"),
        "{}",
        status.message
    );
    assert!(
        !status.message.contains("existed and was deleted"),
        "{}",
        status.message
    );
    Ok(())
}
