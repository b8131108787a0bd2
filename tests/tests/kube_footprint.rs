//! The webhook's footprint on a real kube-apiserver (v1.32): one webhook call per duplicate
//! `generateName` create; with the webhook stopped, only creates of labelled runs are
//! refused while the chart's ValidatingAdmissionPolicy (its CEL file, loaded as shipped)
//! still guards the delivery key; no create refused with `EOF` at the idle-connection
//! boundary. What kubectl prints in each case is captured (with the `kubectl` on PATH, or
//! `KUBECTL`) and printed, so docs/OPERATIONS.md quotes real output.
//!
//! Runs under `with-kube` (`make test` with `KUBEBUILDER_ASSETS` set); each test in its own
//! namespace of the shared control plane, the policy bound to that namespace only.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use dedupe_tests::kube::{denial, webhook_entry, NewRun, TestNamespace, DELIVERY_LABEL, WEBHOOK_NAME};
use dedupe_tests::{new_delivery, TestCerts, TestDb, Webhook};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const ORCHESTRATION: &str = "codex-autonomous";

/// The chart's delivery-key policy (`spec` of its ValidatingAdmissionPolicy), as it ships.
const POLICY_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/orchestration-dedupe/files/delivery-key-policy.json"
);

/// kubectl with the admin's kubeconfig in the test's namespace: (exit ok, stdout, stderr).
async fn kubectl(ns: &TestNamespace, args: &[&str], stdin: Option<&Value>) -> Result<(bool, String, String)> {
    let binary = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let mut child = tokio::process::Command::new(&binary)
        .arg("--kubeconfig")
        .arg(ns.plane.admin_kubeconfig())
        .args(["-n", &ns.name])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {binary} (set KUBECTL to a kubectl binary)"))?;
    let mut input = child.stdin.take().context("kubectl stdin")?;
    if let Some(body) = stdin {
        input.write_all(serde_json::to_string(body)?.as_bytes()).await?;
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .context("kubectl did not finish in 60 s")??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    ))
}

/// What `kubectl create -f -` prints on stderr for `run`, which must be refused.
async fn kubectl_create_refused(ns: &TestNamespace, run: &NewRun) -> Result<String> {
    let object = serde_json::to_value(run.object(&ns.name)?)?;
    let (ok, stdout, stderr) = kubectl(ns, &["create", "-f", "-"], Some(&object)).await?;
    ensure!(!ok, "kubectl create was not refused: {stdout}");
    println!("kubectl create: {stderr}");
    Ok(stderr)
}

/// What `kubectl label --overwrite` prints on stderr when changing `run`'s delivery label,
/// which must be refused.
async fn kubectl_relabel_refused(ns: &TestNamespace, run: &str) -> Result<String> {
    let label = format!("{DELIVERY_LABEL}=another-delivery");
    let (ok, stdout, stderr) = kubectl(
        ns,
        &["label", "--overwrite", "orchestrationrun", run, &label],
        None,
    )
    .await?;
    ensure!(!ok, "kubectl label --overwrite was not refused: {stdout}");
    println!("kubectl label: {stderr}");
    Ok(stderr)
}

/// Applies the chart's policy, bound to this namespace only, and waits until it refuses an
/// unlabelled run carrying `spec.deliveryId` (a dry run).
async fn apply_chart_policy(ns: &TestNamespace) -> Result<String> {
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(POLICY_FILE)?)?;
    let name = format!("dedupe-delivery-key-{}", ns.name);
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}}},
        },
    }))?;
    Api::<ValidatingAdmissionPolicy>::all(ns.client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .context("creating the chart's ValidatingAdmissionPolicy")?;
    Api::<ValidatingAdmissionPolicyBinding>::all(ns.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .context("creating its binding")?;
    let probe = NewRun {
        label: None,
        ..NewRun::submitted("policy-probe", ORCHESTRATION)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match probe.create_dry_run(&ns.client, &ns.name).await? {
            Err(kube::Error::Api(status)) if status.message.contains("ValidatingAdmissionPolicy") => {
                return Ok(name)
            }
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => bail!("the policy never took effect: last answer {other:?}"),
        }
    }
}

async fn remove_policy(ns: &TestNamespace, name: &str) {
    let _ = Api::<ValidatingAdmissionPolicyBinding>::all(ns.client.clone())
        .delete(name, &DeleteParams::default())
        .await;
    let _ = Api::<ValidatingAdmissionPolicy>::all(ns.client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// What an outage must not block on a labelled run: an annotation update, a finalizer added,
/// a delete (the run turns terminating) and the finalizer removed (the run goes).
async fn updates_and_deletes_go_through(runs: &Api<kube::api::DynamicObject>, name: &str) -> Result<()> {
    let annotate = json!({"metadata": {"annotations": {"example.com/note": "during the outage"}}});
    runs.patch(name, &PatchParams::default(), &Patch::Merge(&annotate))
        .await
        .context("an annotation update")?;
    let finalizer = json!({"metadata": {"finalizers": ["example.com/hold"]}});
    runs.patch(name, &PatchParams::default(), &Patch::Merge(&finalizer))
        .await
        .context("adding a finalizer")?;
    runs.delete(name, &DeleteParams::default())
        .await
        .context("deleting a run with a finalizer (marks it terminating)")?;
    let unfinalize = json!({"metadata": {"finalizers": null}});
    runs.patch(name, &PatchParams::default(), &Patch::Merge(&unfinalize))
        .await
        .context("removing the finalizer from a terminating run")?;
    Ok(())
}

/// N duplicate `generateName` creates: N webhook calls, N decision lines, N counts. (With
/// the deny's reason `AlreadyExists`, the API server retried each with new names: 8 calls.)
#[tokio::test]
async fn each_duplicate_generatename_create_costs_one_webhook_call() -> Result<()> {
    const DUPLICATES: usize = 5;
    let (ns, _db, _certs, webhook) =
        TestNamespace::with_registered_webhook("footprint-dup", &["--reconcile", "off"]).await?;
    let d = new_delivery();
    let submitted = NewRun::submitted(&d, ORCHESTRATION);
    let first = submitted.create(&ns.client, &ns.name).await??;
    for _ in 0..DUPLICATES - 1 {
        let status = denial(&submitted.create(&ns.client, &ns.name).await?)?.clone();
        assert_eq!(
            (status.code, status.reason.as_str()),
            (409, "Conflict"),
            "{status:?}"
        );
        let details = status.details.as_ref().context("status.details")?;
        assert_eq!(
            (details.name.as_str(), details.uid.as_str()),
            (
                first.name_any().as_str(),
                first.uid().unwrap_or_default().as_str()
            )
        );
    }
    // The last one through kubectl, as an operator sees it.
    let stderr = kubectl_create_refused(&ns, &submitted).await?;
    let expected = format!(
        "Error from server (Conflict): error when creating \"STDIN\": admission webhook \"{WEBHOOK_NAME}\" denied the request: delivery {d} already has a run: orchestrationrun {}/{}",
        ns.name,
        first.name_any()
    );
    assert!(
        stderr.starts_with(&expected),
        "{stderr}\nexpected it to start with\n{expected}"
    );

    let duplicates = |logs: &[String]| {
        logs.iter()
            .filter(|l| l.contains("\"decision\":\"duplicate\""))
            .count()
    };
    let logs = webhook.logs_when(|l| duplicates(l) >= DUPLICATES).await;
    // Give a retry (a second call for one create) time to show before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = if duplicates(&webhook.logs()) > duplicates(&logs) {
        webhook.logs()
    } else {
        logs
    };
    assert_eq!(duplicates(&logs), DUPLICATES, "{logs:#?}");
    let counted = webhook
        .metric("orchestration_dedupe_requests_total{operation=\"CREATE\",decision=\"duplicate\"}")
        .await?;
    assert_eq!(counted, DUPLICATES as f64);
    let claimed = webhook
        .metric("orchestration_dedupe_requests_total{operation=\"CREATE\",decision=\"claimed\"}")
        .await?;
    assert_eq!(claimed, 1.0, "only the first create was claimed");
    assert_eq!(ns.runs_of(&d).await?, vec![first.name_any()]);
    Ok(())
}

/// The webhook stopped (registered for CREATE only, failurePolicy Fail, as the chart does):
/// creates of labelled runs are refused; annotation updates, finalizers added and removed,
/// and deletes of labelled runs go through; a label change and an unlabelled run carrying
/// `spec.deliveryId` are still refused, by the chart's policy.
#[tokio::test]
async fn with_the_webhook_stopped_only_creates_of_labelled_runs_are_refused() -> Result<()> {
    let (ns, _db, _certs, mut webhook) =
        TestNamespace::with_registered_webhook("footprint-down", &["--reconcile", "off"]).await?;
    let policy = apply_chart_policy(&ns).await?;
    let result = webhook_stopped(&ns, &mut webhook).await;
    remove_policy(&ns, &policy).await;
    result
}

async fn webhook_stopped(ns: &TestNamespace, webhook: &mut Webhook) -> Result<()> {
    let runs = ns.runs();
    let d = new_delivery();
    let held = NewRun::submitted(&d, ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await??;
    let other = NewRun::submitted(&new_delivery(), ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await??;
    let (held, other) = (held.name_any(), other.name_any());
    webhook.terminate().await?;

    // A labelled create: the API server cannot call the webhook, and Fail refuses it.
    let refused = NewRun::submitted(&new_delivery(), ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await?;
    let status = denial(&refused)?;
    assert_eq!(status.code, 500, "{status:?}");
    assert!(
        status
            .message
            .contains(&format!("failed calling webhook \"{WEBHOOK_NAME}\"")),
        "{}",
        status.message
    );
    let stderr = kubectl_create_refused(ns, &NewRun::submitted(&new_delivery(), ORCHESTRATION)).await?;
    assert!(
        stderr.starts_with("Error from server (InternalError): error when creating \"STDIN\": Internal error occurred: failed calling webhook"),
        "{stderr}"
    );

    // What still works on labelled runs.
    updates_and_deletes_go_through(&runs, &held).await?;
    let (ok, stdout, stderr) = kubectl(
        ns,
        &["annotate", "orchestrationrun", &other, "example.com/kubectl=yes"],
        None,
    )
    .await?;
    ensure!(ok, "kubectl annotate: {stdout} {stderr}");
    println!("kubectl annotate: {stdout}");

    // Still refused: the delivery key's invariants are the API server's own policy.
    let stderr = kubectl_relabel_refused(ns, &other).await?;
    assert!(stderr.contains("ValidatingAdmissionPolicy"), "{stderr}");
    assert!(stderr.contains("label is immutable"), "{stderr}");
    let unlabelled = NewRun {
        label: None,
        ..NewRun::submitted(&new_delivery(), ORCHESTRATION)
    };
    let stderr = kubectl_create_refused(ns, &unlabelled).await?;
    assert!(stderr.contains("ValidatingAdmissionPolicy"), "{stderr}");
    assert!(stderr.contains("label is missing"), "{stderr}");
    let mismatched = NewRun {
        spec_delivery: Some(new_delivery()),
        ..NewRun::submitted(&new_delivery(), ORCHESTRATION)
    };
    let status = denial(&mismatched.create(&ns.client, &ns.name).await?)?.clone();
    assert!(status.message.contains("differs from the"), "{status:?}");

    // A run that is not ours at all is created.
    let plain = NewRun {
        label: None,
        spec_delivery: None,
        ..NewRun::submitted("unused", ORCHESTRATION)
    };
    plain.create(&ns.client, &ns.name).await??;
    let (ok, stdout, stderr) = kubectl(ns, &["delete", "orchestrationrun", &other], None).await?;
    ensure!(ok, "kubectl delete: {stdout} {stderr}");
    println!("kubectl delete: {stdout}");
    Ok(())
}

/// The database down, the webhook up (it answers 503) and registered the way an older
/// chart did, for CREATE, UPDATE and DELETE: labelled creates are refused (the failurePolicy),
/// while annotation updates, finalizers and deletes of labelled runs go through, as the
/// webhook answers updates and deletes without the store; a label change is still refused
/// (by the webhook: it needs no store).
#[tokio::test]
async fn with_the_database_down_an_older_registration_blocks_only_creates() -> Result<()> {
    let ns = TestNamespace::new("footprint-nodb").await?;
    let certs = TestCerts::new()?;
    let runs = ns.runs();
    // Created before the webhook is registered: runs that exist when the outage starts.
    let held = NewRun::submitted(&new_delivery(), ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await??
        .name_any();
    let other = NewRun::submitted(&new_delivery(), ORCHESTRATION)
        .create(&ns.client, &ns.name)
        .await??
        .name_any();
    let kubeconfig = ns.plane.admin_kubeconfig();
    let webhook = Webhook::start(
        &dedupe_tests::unreachable_url()?,
        &certs,
        &[
            "--migrations",
            "skip",
            "--reconcile",
            "off",
            "--store-timeout-ms",
            "500",
            "--namespaces",
            &ns.name,
        ],
        &[("KUBECONFIG", &kubeconfig.to_string_lossy())],
    )
    .await?;
    let registration = ns
        .registration(&webhook)
        .operations(&["CREATE", "UPDATE", "DELETE"]);
    dedupe_tests::kube::register_webhook(&ns.client, &registration).await?;

    let status = denial(
        &NewRun::submitted(&new_delivery(), ORCHESTRATION)
            .create(&ns.client, &ns.name)
            .await?,
    )?
    .clone();
    assert_eq!(status.code, 500, "{status:?}");
    let stderr = kubectl_create_refused(&ns, &NewRun::submitted(&new_delivery(), ORCHESTRATION)).await?;
    assert!(
        stderr.starts_with("Error from server (InternalError): error when creating \"STDIN\": Internal error occurred: failed calling webhook"),
        "{stderr}"
    );

    updates_and_deletes_go_through(&runs, &held).await?;
    let stderr = kubectl_relabel_refused(&ns, &other).await?;
    assert!(stderr.contains("is immutable"), "{stderr}");
    let (ok, stdout, stderr) = kubectl(&ns, &["delete", "orchestrationrun", &other], None).await?;
    ensure!(ok, "kubectl delete: {stdout} {stderr}");
    let decisions = webhook
        .logs_when(|l| {
            l.iter()
                .filter(|l| l.contains("decision=allowed") || l.contains("\"decision\":\"allowed\""))
                .count()
                >= 4
        })
        .await;
    assert!(
        !decisions
            .iter()
            .any(|l| l.contains("no decision: claim store unavailable")
                && (l.contains("UPDATE") || l.contains("DELETE"))),
        "an update or delete waited on the store: {decisions:#?}"
    );
    Ok(())
}

/// With the optional mutating webhook registered (as `admission.mutating.enabled` does): a
/// run created with only `spec.deliveryId` gets the label from it, is claimed, and its
/// redelivery is a 409 like any other; the policy is satisfied because mutation comes first.
#[tokio::test]
async fn the_mutating_webhook_labels_a_spec_only_run_so_it_is_deduplicated() -> Result<()> {
    let (ns, db, _certs, webhook) =
        TestNamespace::with_registered_webhook("footprint-mutate", &["--reconcile", "off"]).await?;
    let policy = apply_chart_policy(&ns).await?;
    let result = mutated(&ns, &db, &webhook).await;
    remove_policy(&ns, &policy).await;
    let _ = Api::<MutatingWebhookConfiguration>::all(ns.client.clone())
        .delete(
            &format!("dedupe-test-mutate-{}", ns.name),
            &DeleteParams::default(),
        )
        .await;
    result
}

async fn mutated(ns: &TestNamespace, db: &TestDb, webhook: &Webhook) -> Result<()> {
    let mut entry = webhook_entry(
        "label.orchestration.proompteng.ai",
        &format!("https://127.0.0.1:{}/mutate", webhook.addr.port()),
        Some(&webhook.ca_pem),
        &ns.name,
        json!({"matchExpressions": [{"key": DELIVERY_LABEL, "operator": "DoesNotExist"}]}),
    );
    entry["sideEffects"] = json!("None");
    entry["reinvocationPolicy"] = json!("Never");
    let configuration: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": format!("dedupe-test-mutate-{}", ns.name)},
        "webhooks": [entry],
    }))?;
    Api::<MutatingWebhookConfiguration>::all(ns.client.clone())
        .create(&PostParams::default(), &configuration)
        .await
        .context("registering the mutating webhook")?;
    let d = new_delivery();
    let spec_only = NewRun {
        label: None,
        ..NewRun::submitted(&d, ORCHESTRATION)
    };
    // The registration takes a moment to be picked up; until then the policy refuses.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        match spec_only.create(&ns.client, &ns.name).await? {
            Ok(run) => break run,
            Err(e) if Instant::now() < deadline && e.to_string().contains("ValidatingAdmissionPolicy") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => bail!("the spec-only run was not labelled and admitted: {e}"),
        }
    };
    assert_eq!(first.labels().get(DELIVERY_LABEL), Some(&d), "{first:?}");
    assert_eq!(db.claim_rows(&d).await?.len(), 1, "the labelled run was claimed");
    let status = denial(&spec_only.create(&ns.client, &ns.name).await?)?.clone();
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "Conflict"),
        "{status:?}"
    );
    assert_eq!(ns.runs_of(&d).await?, vec![first.name_any()]);
    Ok(())
}

/// A few hundred creates spaced around the old 3 s idle boundary, so the API server reuses
/// keep-alive connections to the webhook that sat idle about that long: none is refused (a
/// webhook closing idle connections at 3 s had some refused with `EOF`). The API server
/// keeps one connection pool per webhook address and reuses the most recently idle
/// connection, so concurrent creates to one webhook would keep its connections busy: each
/// stream here is sequential and has a webhook (process, port, namespace) of its own.
/// `DEDUPE_FOOTPRINT_WEBHOOK_ARGS` adds flags to the webhooks (`--idle-timeout-seconds 3`
/// shows the boundary).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_spaced_around_the_old_idle_boundary_are_never_refused_with_eof() -> Result<()> {
    // 200 creates over ~1 minute: ten streams of twenty.
    const STREAMS: usize = 10;
    const CREATES_PER_STREAM: usize = 20;
    let extra: Vec<String> = std::env::var("DEDUPE_FOOTPRINT_WEBHOOK_ARGS")
        .map(|a| a.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut args = vec!["--reconcile", "off"];
    args.extend(extra.iter().map(String::as_str));
    let db = TestDb::new().await?;
    let certs = TestCerts::new()?;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let ns = TestNamespace::new("footprint-idle").await?;
        let webhook = ns.start_webhook(&db, &certs, &args).await?;
        ns.register(&webhook).await?;
        streams.push((ns, webhook));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (stream, (ns, _)) in streams.iter().enumerate() {
        let (client, namespace) = (ns.client.clone(), ns.name.clone());
        tasks.push(tokio::spawn(async move {
            let mut refused = Vec::new();
            // 2.95 s .. 3.05 s at 1 ms steps, pseudo-random per stream: the webhook call
            // comes a few milliseconds after the create, so some land on the old boundary.
            let mut state = 0x9e37_79b9_u64.wrapping_mul(stream as u64 + 1);
            for _ in 0..CREATES_PER_STREAM {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let spacing = 2_950 + (state >> 33) % 100;
                tokio::time::sleep(Duration::from_millis(spacing)).await;
                let run = NewRun::submitted(&new_delivery(), ORCHESTRATION);
                if let Err(e) = run.create(&client, &namespace).await? {
                    refused.push(e.to_string());
                }
            }
            Ok::<_, anyhow::Error>(refused)
        }));
    }
    let mut refused = Vec::new();
    for task in tasks {
        refused.extend(task.await??);
    }
    let eof = refused.iter().filter(|e| e.contains("EOF")).count();
    println!(
        "{} creates in {:?}: {} refused, {eof} with EOF",
        STREAMS * CREATES_PER_STREAM,
        started.elapsed(),
        refused.len()
    );
    assert_eq!(eof, 0, "{refused:#?}");
    assert!(refused.is_empty(), "{refused:#?}");
    drop(streams);
    Ok(())
}
