//! In-process: the webhook's routers (`dedupe_admission::webhook_router`/`ops_router`)
//! called without a socket (`tower::ServiceExt::oneshot`) against real PostgreSQL (a schema
//! per test). They cover the HTTP envelope and the decision paths; what needs a process or
//! a socket (TLS, signals, `kill -9`, logs, the kube client) is in `webhook.rs`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use dedupe_admission::decision::Policy;
use dedupe_admission::lookup::{KubeRunLookup, RunLookup};
use dedupe_admission::metrics::Metrics;
use dedupe_admission::server::edge::RequestLimits;
use dedupe_admission::{ops_router, webhook_router, App};
use dedupe_store::shutdown::Shutdown;
use dedupe_store::ClaimScope;
use dedupe_tests::https::Reply;
use dedupe_tests::{Answer, FakeApiServer, Review, TestDb};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use dedupe_tests::new_delivery as delivery;

/// The webhook's state over a fresh schema, with the API-server lookup off.
struct InProcess {
    db: TestDb,
    app: Arc<App>,
    limits: RequestLimits,
}

impl InProcess {
    async fn new() -> Result<Self> {
        Self::with_body_limit(dedupe_admission::config::DEFAULT_MAX_BODY_BYTES).await
    }

    async fn with_body_limit(max_body_bytes: usize) -> Result<Self> {
        Self::build(max_body_bytes, None).await
    }

    /// With the API-server lookup on, pointed at `api` through the real kube client.
    async fn with_api(api: &FakeApiServer) -> Result<Self> {
        let kubeconfig = kube::config::Kubeconfig::read_from(api.kubeconfig())?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await?;
        let lookup = KubeRunLookup::new(kube::Client::try_from(config)?, Duration::from_secs(2));
        Self::build(
            dedupe_admission::config::DEFAULT_MAX_BODY_BYTES,
            Some(Arc::new(lookup) as Arc<dyn RunLookup>),
        )
        .await
    }

    async fn build(max_body_bytes: usize, lookup: Option<Arc<dyn RunLookup>>) -> Result<Self> {
        let db = TestDb::new().await?;
        let app = Arc::new(App {
            store: db.migrated_store().await?,
            lookup,
            policy: Policy {
                scope: ClaimScope::Orchestration,
                grace: Duration::from_secs(dedupe_store::config::DEFAULT_PENDING_GRACE_SECONDS),
            },
            metrics: Arc::new(Metrics::new()),
        });
        let limits = RequestLimits {
            max_body_bytes,
            max_concurrent_requests: dedupe_admission::config::DEFAULT_MAX_CONCURRENT_REQUESTS,
            read_timeout: Duration::from_millis(dedupe_admission::config::DEFAULT_REQUEST_READ_TIMEOUT_MS),
        };
        Ok(Self { db, app, limits })
    }

    fn webhook(&self) -> Router {
        webhook_router(self.app.clone(), self.limits)
    }

    async fn post(&self, path: &str, content_type: &str, body: impl Into<Body>) -> Result<Reply> {
        let mut request = Request::post(path);
        if !content_type.is_empty() {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        call(self.webhook(), request.body(body.into())?).await
    }

    /// One AdmissionReview; the answer must echo the request uid.
    async fn answer(&self, review: &Review) -> Result<Answer> {
        let reply = self
            .post(
                "/validate",
                "application/json",
                serde_json::to_vec(review.json())?,
            )
            .await?;
        let answer = Answer::from_reply(&reply)?;
        anyhow::ensure!(
            answer.uid() == review.request_uid(),
            "answer uid {} != request uid",
            answer.uid()
        );
        Ok(answer)
    }

    /// A first create of `name` for `delivery`, which must be claimed.
    async fn claimed(&self, delivery: &str, name: &str) -> Result<()> {
        let answer = self.answer(&Review::create(delivery, name)?).await?;
        anyhow::ensure!(answer.decision() == "claimed", "{name}: {:?}", answer.0);
        Ok(())
    }

    async fn ops(&self, path: &str) -> Result<Reply> {
        call(
            ops_router(self.app.clone()),
            Request::get(path).body(Body::empty())?,
        )
        .await
    }
}

async fn call(router: Router, request: Request<Body>) -> Result<Reply> {
    let response = router.oneshot(request).await?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .context("content-type is not text")?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        content_type,
        body,
    })
}

#[tokio::test]
async fn retried_create_of_the_same_name_is_a_retry_and_keeps_the_first_uid() -> Result<()> {
    let w = InProcess::new().await?;
    let d = delivery();
    let first = Review::load("create-fixed-name")?.delivery(&d).new_uids();
    assert_eq!(w.answer(&first).await?.decision(), "claimed");
    let retry = first.clone().new_uids();
    assert_ne!(retry.object_uid(), first.object_uid());
    let a = w.answer(&retry).await?;
    assert!(a.allowed());
    assert_eq!(a.decision(), "retry");
    // The API server refuses the retry itself when the first create was stored (the name
    // exists): the retry's uid would name no run.
    assert_eq!(
        w.db.claim_rows(&d).await?,
        vec![("run-fixed".into(), first.object_uid(), "pending".into())]
    );
    Ok(())
}

/// Updates and deletes are answered without the store and without the API server: a
/// review's word never confirms a claim (anything reaching the port can forge one), and the
/// reconciler's watch confirms what the API server shows. Deleting a run does not free its
/// delivery.
#[tokio::test]
async fn updates_and_deletes_touch_neither_the_store_nor_the_api_server() -> Result<()> {
    let api = FakeApiServer::start().await?;
    let w = InProcess::with_api(&api).await?;
    let d = delivery();
    let create = Review::load("create-fixed-name")?.delivery(&d).new_uids();
    assert_eq!(w.answer(&create).await?.decision(), "claimed");
    api.add_run("jangar", "run-fixed", &d);

    // An UPDATE that keeps the key (the recorded label change, with the label left alone).
    let update = Review::load("update-label-changed")?.delivery(&d).new_uids();
    let a = w.answer(&update).await?;
    assert_eq!((a.allowed(), a.decision()), (true, "allowed"), "{:?}", a.0);
    let delete = Review::load("delete")?.delivery(&d).new_uids();
    let a = w.answer(&delete).await?;
    assert_eq!((a.allowed(), a.decision()), (true, "allowed"), "{:?}", a.0);
    assert_eq!(
        w.db.claim_rows(&d).await?,
        vec![("run-fixed".into(), create.object_uid(), "pending".into())],
        "the claim is left as it was, and kept"
    );
    assert_eq!(api.gets().len(), 0, "{:?}", api.requests());
    Ok(())
}

/// The duplicate's 409 names the holder for programs in `status.details`, beside the
/// unchanged human message.
#[tokio::test]
async fn the_duplicate_answer_has_details_naming_the_holder() -> Result<()> {
    let w = InProcess::new().await?;
    let d = delivery();
    let first = Review::create(&d, "run-first")?;
    assert_eq!(w.answer(&first).await?.decision(), "claimed");
    let a = w.answer(&Review::create(&d, "run-second")?).await?;
    assert_eq!((a.code(), a.reason()), (409, "Conflict"));
    assert!(a.message().contains("idempotently") && a.message().contains("jangar/run-first"));
    let details = a.details();
    assert_eq!(
        details,
        &serde_json::json!({
            "group": "orchestration.proompteng.ai",
            "kind": "orchestrationruns",
            "name": "run-first",
            "uid": first.object_uid(),
            "causes": [{
                "reason": "FieldValueDuplicate",
                "field": "metadata.labels[\"jangar.proompteng.ai/delivery-id\"]",
                "message": "the delivery is held by orchestrationrun run-first in namespace jangar"
            }]
        })
    );
    // An allowed answer carries no details; nor does a 422.
    let allowed = w.answer(&Review::create(&delivery(), "run-other")?).await?;
    assert!(allowed.details().is_null(), "{:?}", allowed.0);
    Ok(())
}

#[tokio::test]
async fn dry_run_answers_the_same_and_never_writes() -> Result<()> {
    let w = InProcess::new().await?;
    let d = delivery();
    let dry = Review::load("create-dry-run")?.delivery(&d).new_uids();
    let a = w.answer(&dry).await?;
    assert_eq!((a.allowed(), a.decision()), (true, "dry-run"));
    assert!(w.db.claim_rows(&d).await?.is_empty(), "a dry run must not claim");

    w.claimed(&d, "run-real").await?;
    let a = w.answer(&dry.clone().new_uids()).await?;
    assert_eq!((a.allowed(), a.code(), a.decision()), (false, 409, "duplicate"));
    assert!(a.message().contains("jangar/run-real"));
    // A dry-run UPDATE/DELETE does not confirm either.
    let del = Review::load("delete")?
        .delivery(&d)
        .name("run-real")
        .new_uids()
        .dry_run(true);
    assert!(w.answer(&del).await?.allowed());
    assert_eq!(w.db.claim_rows(&d).await?[0].2, "pending");
    Ok(())
}

#[tokio::test]
async fn bad_keys_are_422_and_key_changes_on_update_are_immutable() -> Result<()> {
    let w = InProcess::new().await?;
    let empty = Review::create("x", "run-a")?.edit(|v| {
        v["request"]["object"]["metadata"]["labels"]["jangar.proompteng.ai/delivery-id"] = "".into();
        v["request"]["object"]["spec"]["deliveryId"] = Value::Null;
    });
    let a = w.answer(&empty).await?;
    assert_eq!(
        (a.allowed(), a.code(), a.reason(), a.decision()),
        (false, 422, "Invalid", "invalid")
    );
    assert!(
        a.message().contains("jangar.proompteng.ai/delivery-id"),
        "{}",
        a.message()
    );

    let d = delivery();
    let mismatch =
        Review::create(&d, "run-b")?.edit(|v| v["request"]["object"]["spec"]["deliveryId"] = "other".into());
    let a = w.answer(&mismatch).await?;
    assert_eq!((a.code(), a.decision()), (422, "invalid"));
    assert!(a.message().contains("spec.deliveryId"));
    assert!(w.db.claim_rows(&d).await?.is_empty());

    // The recorded `kubectl label --overwrite` of the delivery-id label.
    let relabel = Review::load("update-label-changed")?.new_uids();
    let a = w.answer(&relabel).await?;
    assert_eq!(
        (a.allowed(), a.code(), a.reason(), a.decision()),
        (false, 422, "Invalid", "immutable")
    );
    assert!(a.message().contains("immutable"), "{}", a.message());
    Ok(())
}

#[tokio::test]
async fn requests_that_are_not_ours_are_allowed_and_write_nothing() -> Result<()> {
    let w = InProcess::new().await?;
    let status = Review::load("update-status-subresource")?.new_uids();
    let a = w.answer(&status).await?;
    assert_eq!((a.allowed(), a.decision()), (true, "ignored"));

    let d = delivery();
    let unlabelled =
        Review::create(&d, "run-u")?.edit(|v| v["request"]["object"]["metadata"]["labels"] = Value::Null);
    let a = w.answer(&unlabelled).await?;
    assert_eq!((a.allowed(), a.decision()), (true, "ignored"));
    assert!(
        a.warnings().iter().any(|w| w.contains("not deduplicated")),
        "{:?}",
        a.warnings()
    );

    let pod = Review::create(&d, "run-p")?.edit(|v| v["request"]["resource"]["resource"] = "pods".into());
    assert_eq!(w.answer(&pod).await?.decision(), "ignored");
    assert!(w.db.claim_rows(&d).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn with_lookup_off_a_stale_claim_holds_and_says_so() -> Result<()> {
    let w = InProcess::new().await?;
    let d = delivery();
    w.claimed(&d, "run-ghost").await?;
    w.db.age_claim(&d, 6_000.0).await?;
    let a = w.answer(&Review::create(&d, "run-new")?).await?;
    assert_eq!((a.allowed(), a.code()), (false, 409));
    assert!(a.message().contains("lookup is off"), "{}", a.message());
    Ok(())
}

/// Every way a request can fail before a decision gets a JSON body naming the problem and
/// its status, counted per status; a valid request after them is still answered.
#[tokio::test]
async fn malformed_requests_get_json_errors() -> Result<()> {
    let w = InProcess::with_body_limit(65_536).await?;
    let valid = Review::create(&delivery(), "run-ok")?;
    let mut wrong_version = valid.json().clone();
    wrong_version["apiVersion"] = "admission.k8s.io/v1beta1".into();
    let mut wrong_kind = valid.json().clone();
    wrong_kind["kind"] = "Pod".into();
    let mut no_request = valid.json().clone();
    no_request["request"] = Value::Null;
    let mut no_object = valid.json().clone();
    no_object["request"]["object"] = Value::Null;
    let mut padded = valid.json().clone();
    padded["padding"] = "x".repeat(70_000).into();
    let json = "application/json";
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "not JSON",
            json,
            b"{not json".to_vec(),
            400,
            "not a JSON AdmissionReview",
        ),
        (
            "binary",
            json,
            vec![0xff, 0x00, 0x13],
            400,
            "not a JSON AdmissionReview",
        ),
        (
            "wrong apiVersion",
            json,
            serde_json::to_vec(&wrong_version)?,
            400,
            "admission.k8s.io/v1beta1",
        ),
        (
            "wrong kind",
            json,
            serde_json::to_vec(&wrong_kind)?,
            400,
            "kind `Pod`",
        ),
        (
            "no request",
            json,
            serde_json::to_vec(&no_request)?,
            400,
            "no request",
        ),
        (
            "no object",
            json,
            serde_json::to_vec(&no_object)?,
            400,
            "no object",
        ),
        (
            "charset parameter",
            "application/json; charset=utf-8",
            b"{not json".to_vec(),
            400,
            "not a JSON AdmissionReview",
        ),
        (
            "wrong content type",
            "text/plain",
            serde_json::to_vec(valid.json())?,
            415,
            "application/json",
        ),
        (
            "no content type",
            "",
            serde_json::to_vec(valid.json())?,
            415,
            "application/json",
        ),
        (
            "oversize",
            json,
            serde_json::to_vec(&padded)?,
            413,
            "limit of 65536 bytes",
        ),
    ];
    for (what, content_type, body, status, needle) in cases {
        let reply = w.post("/validate", content_type, body).await?;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{what}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.content_type.as_deref(), Some("application/json"), "{what}");
        let json = reply.json()?;
        assert_eq!(json["status"], status, "{what}");
        assert_eq!(
            json["error"],
            StatusCode::from_u16(status)?.canonical_reason().unwrap_or("?"),
            "{what}"
        );
        let message = json["message"]
            .as_str()
            .with_context(|| format!("{what}: no message in {json}"))?;
        assert!(message.contains(needle), "{what}: {message:?} lacks {needle:?}");
    }
    // Unknown path: JSON 404. Then a valid request is still answered.
    let reply = w.post("/mutated", json, "{}").await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()?["message"], "no route for /mutated");
    assert!(w.answer(&valid).await?.allowed());
    let metrics = String::from_utf8_lossy(&w.ops("/metrics").await?.body).into_owned();
    for needle in [
        "orchestration_dedupe_http_errors_total{status=\"400\"} 7",
        "orchestration_dedupe_http_errors_total{status=\"415\"} 2",
        "orchestration_dedupe_http_errors_total{status=\"413\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
    Ok(())
}

/// A body exactly at the limit is read; one byte more is a 413.
#[tokio::test]
async fn the_body_limit_is_inclusive() -> Result<()> {
    let body = serde_json::to_vec(Review::create(&delivery(), "run-limit")?.json())?;
    let w = InProcess::with_body_limit(body.len()).await?;
    let reply = w.post("/validate", "application/json", body.clone()).await?;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let w = InProcess::with_body_limit(body.len() - 1).await?;
    let reply = w.post("/validate", "application/json", body).await?;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    Ok(())
}

#[tokio::test]
async fn ops_endpoints_report_health_and_metrics() -> Result<()> {
    let w = InProcess::new().await?;
    assert_eq!(w.ops("/healthz").await?.status, StatusCode::OK);
    let ready = w.ops("/readyz").await?;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()?["ready"], true);
    let d = delivery();
    w.claimed(&d, "run-1").await?;
    assert_eq!(
        w.answer(&Review::create(&d, "run-2")?).await?.decision(),
        "duplicate"
    );
    let metrics = w.ops("/metrics").await?;
    assert_eq!(
        metrics.content_type.as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = String::from_utf8_lossy(&metrics.body);
    for needle in [
        "orchestration_dedupe_requests_total{operation=\"CREATE\",decision=\"claimed\"} 1",
        "orchestration_dedupe_requests_total{operation=\"CREATE\",decision=\"duplicate\"} 1",
        "orchestration_dedupe_request_duration_seconds_bucket",
        "orchestration_dedupe_in_flight_requests 0",
        "orchestration_dedupe_store_errors_total 0",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let reply = w.ops("/nope").await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()?["status"], 404);
    Ok(())
}

/// The whole webhook (store, migrations, certificate, both listeners) started and stopped
/// in-process through the library, as `main` does; one request over real TLS in between.
#[tokio::test]
async fn the_library_runs_the_whole_webhook_in_process() -> Result<()> {
    use clap::Parser;
    let db = TestDb::new().await?;
    let certs = dedupe_tests::TestCerts::new()?;
    let (cert, key) = (certs.cert(), certs.key());
    let args = dedupe_admission::config::Args::try_parse_from([
        "dedupe-admission",
        "--database-url",
        db.url(),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert.to_string_lossy(),
        "--tls-key",
        &key.to_string_lossy(),
        "--kube-lookup",
        "off",
    ])?;
    let (stop, mut shutdown) = Shutdown::manual();
    let server = dedupe_admission::Server::start(&args, &mut shutdown).await?;
    let (addr, ops_addr) = (server.webhook_addr()?, server.ops_addr()?);
    let serving = tokio::spawn(server.serve(shutdown));

    let client = dedupe_tests::HttpsClient::new(addr, certs.ca_pem(), dedupe_tests::webhook::SERVER_NAME)?;
    let review = Review::create(&delivery(), "run-in-process")?;
    let answer = Answer::from_reply(&client.connect().await?.review(review.json()).await?)?;
    assert_eq!((answer.allowed(), answer.decision()), (true, "claimed"));
    let metrics = dedupe_tests::https::http_get(ops_addr, "/metrics").await?;
    let text = String::from_utf8_lossy(&metrics.body);
    let expiry = format!(
        "orchestration_dedupe_serving_certificate_expiry_timestamp_seconds {}",
        certs.certs.not_after
    );
    assert!(text.contains(&expiry), "{expiry} missing from\n{text}");

    stop.send(Some("the test"))?;
    tokio::time::timeout(Duration::from_secs(30), serving).await??;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting after the stop"
    );
    Ok(())
}

/// `POST /mutate` (the optional mutating webhook): an unlabelled run carrying
/// `spec.deliveryId` gets the label by JSON patch; nothing is claimed (the validating
/// webhook, called after it, does that); a labelled run is left as it is.
#[tokio::test]
async fn mutate_labels_a_run_from_its_spec_and_writes_nothing() -> Result<()> {
    let w = InProcess::new().await?;
    let d = delivery();
    let unlabelled = Review::create(&d, "run-spec-only")?.edit(|v| {
        v["request"]["object"]["metadata"]["labels"] = serde_json::json!({"team": "a"});
    });
    let reply = w
        .post(
            "/mutate",
            "application/json",
            serde_json::to_vec(unlabelled.json())?,
        )
        .await?;
    assert_eq!(reply.status, StatusCode::OK);
    let review = reply.json()?;
    let response = &review["response"];
    assert_eq!(response["uid"], unlabelled.request_uid().as_str());
    assert_eq!(
        (&response["allowed"], &response["patchType"]),
        (&Value::Bool(true), &Value::from("JSONPatch"))
    );
    let bytes: Vec<u8> = serde_json::from_value(response["patch"].clone())?;
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes)?,
        serde_json::json!([{"op": "add", "path": "/metadata/labels/jangar.proompteng.ai~1delivery-id", "value": d}])
    );
    assert!(
        w.db.claim_rows(&d).await?.is_empty(),
        "the mutating webhook claims nothing"
    );

    let labelled = Review::create(&delivery(), "run-labelled")?;
    let reply = w
        .post(
            "/mutate",
            "application/json",
            serde_json::to_vec(labelled.json())?,
        )
        .await?;
    let review = reply.json()?;
    assert_eq!(review["response"]["allowed"], true);
    assert!(review["response"].get("patch").is_none(), "{review}");
    Ok(())
}
