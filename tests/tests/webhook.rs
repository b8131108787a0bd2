//! End-to-end: the real `dedupe-admission` binary over real TLS against real PostgreSQL
//! (a schema per test), fed AdmissionReview bodies derived from the recorded fixtures.
//! Here is what needs the process: TLS, signals, `kill -9`, exit codes, its log lines and
//! its kube client. The HTTP envelope and the decision paths run in-process in `router.rs`.

use std::time::Duration;

use anyhow::Result;
use dedupe_tests::{Answer, FakeApiServer, Review, TestCerts, TestDb, Webhook};
use serde_json::Value;

use dedupe_tests::new_delivery as delivery;

/// The same with the API-server lookup on, against `api` (a fake API server).
async fn start_with_api(api: FakeApiServer, args: &[&str]) -> Result<(TestDb, FakeApiServer, Webhook)> {
    let db = TestDb::new().await?;
    let certs = TestCerts::new()?;
    let kubeconfig = api.kubeconfig();
    let kubeconfig = kubeconfig.to_string_lossy();
    // The reconciler off: these tests are about the lookup (tests/tests/reconcile.rs has it on).
    let all: Vec<&str> = ["--kube-lookup", "on", "--reconcile", "off"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let webhook = Webhook::start(db.url(), &certs, &all, &[("KUBECONFIG", &kubeconfig)]).await?;
    Ok((db, api, webhook))
}

async fn answer(webhook: &Webhook, review: &Review) -> Result<Answer> {
    let answer = Answer::from_reply(&webhook.review(review.json()).await?)?;
    anyhow::ensure!(
        answer.uid() == review.request_uid(),
        "answer uid {} != request uid",
        answer.uid()
    );
    Ok(answer)
}

/// A first create of `name` for `delivery`, which must be claimed.
async fn claimed(webhook: &Webhook, delivery: &str, name: &str) -> Result<()> {
    let answer = answer(webhook, &Review::create(delivery, name)?).await?;
    anyhow::ensure!(answer.decision() == "claimed", "{name}: {:?}", answer.0);
    Ok(())
}

#[tokio::test]
async fn first_create_is_claimed_and_the_duplicate_is_denied_naming_it() -> Result<()> {
    let (db, _certs, webhook) = Webhook::start_fresh(&[]).await?;
    let d = delivery();

    let first = Review::create(&d, "run-first")?;
    let a = answer(&webhook, &first).await?;
    assert!(a.allowed(), "{:?}", a.0);
    assert_eq!(a.decision(), "claimed");
    assert_eq!(
        db.claim_rows(&d).await?,
        vec![("run-first".into(), first.object_uid(), "pending".into())]
    );

    let second = Review::create(&d, "run-second")?;
    let a = answer(&webhook, &second).await?;
    assert!(!a.allowed());
    assert_eq!(
        (a.code(), a.reason(), a.decision()),
        (409, "Conflict", "duplicate")
    );
    for part in [
        d.as_str(),
        "jangar/run-first",
        first.object_uid().as_str(),
        "claimed at",
        "idempotently",
    ] {
        assert!(
            a.message().contains(part),
            "{part:?} missing from {:?}",
            a.message()
        );
    }
    assert_eq!(db.claim_rows(&d).await?.len(), 1, "the duplicate wrote nothing");

    // The log has one decision event per request, findable with rg 'deliveryId|idempotent'.
    let decisions_in = |logs: &[String]| -> Vec<Value> {
        logs.iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["deliveryId"] == d.as_str())
            .collect()
    };
    let logs = webhook.logs_when(|l| decisions_in(l).len() >= 2).await;
    let decisions = decisions_in(&logs);
    assert_eq!(decisions.len(), 2, "{logs:#?}");
    assert_eq!(decisions[0]["decision"], "claimed");
    assert_eq!(decisions[1]["decision"], "duplicate");
    assert_eq!(decisions[1]["existingRun"], "jangar/run-first");
    // The request's identity rides along once, from the span.
    assert_eq!(decisions[1]["span"]["run"], "jangar/run-second");
    assert_eq!(decisions[1]["span"]["uid"], second.request_uid().as_str());
    assert!(decisions[1].get("spans").is_none(), "no duplicate span list");
    let message = decisions[1]["message"].as_str().expect("a message");
    assert!(message.contains("idempotently"), "{message}");
    let claim_key = decisions[1]["claimKey"].as_str().expect("a claimKey");
    assert!(claim_key.contains(&d), "{claim_key}");
    Ok(())
}

/// Against the fake API server, which records every request: what the webhook asks (by
/// namespace/name, never by uid; nothing inside the grace period), which the real one does
/// not show. The take-over itself through a real kube-apiserver: `kube_admission.rs`.
#[tokio::test]
async fn stale_pending_claim_of_a_run_that_never_appeared_is_taken_over() -> Result<()> {
    let (db, api, webhook) =
        start_with_api(FakeApiServer::start().await?, &["--pending-grace-seconds", "120"]).await?;
    let d = delivery();
    claimed(&webhook, &d, "run-ghost").await?;

    // Inside the grace period: a plain duplicate, and the API server is not asked.
    let a = answer(&webhook, &Review::create(&d, "run-new")?).await?;
    assert_eq!((a.allowed(), a.decision()), (false, "duplicate"));
    assert!(api.requests().is_empty());

    // Past the grace period, and run-ghost does not exist: taken over.
    db.age_claim(&d, 600.0).await?;
    let takeover = Review::create(&d, "run-new")?;
    let a = answer(&webhook, &takeover).await?;
    assert_eq!((a.allowed(), a.decision()), (true, "takeover"), "{:?}", a.0);
    assert!(a.warnings().iter().any(|w| w.contains("jangar/run-ghost")));
    assert_eq!(
        db.claim_rows(&d).await?,
        vec![("run-new".into(), takeover.object_uid(), "pending".into())]
    );
    // Looked up by namespace/name, never by uid.
    assert_eq!(
        api.requests(),
        vec![
            "/apis/orchestration.proompteng.ai/v1alpha1/namespaces/jangar/orchestrationruns/run-ghost"
                .to_owned()
        ]
    );
    let metrics = String::from_utf8_lossy(&webhook.ops("/metrics").await?.body).into_owned();
    assert!(
        metrics.contains("orchestration_dedupe_takeovers_total 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_delivery_over_https_have_exactly_one_winner() -> Result<()> {
    const CLIENTS: usize = 64;
    const ROUNDS: usize = 10;
    let (db, _certs, webhook) = Webhook::start_fresh(&["--pool-size", "32"]).await?;
    let client = webhook.client()?;
    for round in 0..ROUNDS {
        let d = delivery();
        // Connect first, then fire all requests together.
        let mut connections = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            connections.push(client.connect().await?);
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let mut tasks = Vec::new();
        for (i, mut conn) in connections.into_iter().enumerate() {
            let review = Review::create(&d, &format!("run-{round}-{i}"))?;
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let reply = conn.review(review.json()).await?;
                anyhow::Ok((format!("run-{round}-{i}"), Answer::from_reply(&reply)?))
            }));
        }
        let mut winners = Vec::new();
        let mut denied = Vec::new();
        for task in tasks {
            let (name, a) = task.await??;
            if a.allowed() {
                winners.push(name);
            } else {
                assert_eq!(a.code(), 409, "{:?}", a.0);
                denied.push(a.message().to_owned());
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(denied.len(), CLIENTS - 1);
        let winner = format!("jangar/{}", winners[0]);
        assert!(
            denied.iter().all(|m| m.contains(&winner)),
            "round {round}: a denial names another run"
        );
        assert_eq!(db.claim_rows(&d).await?.len(), 1);
    }
    Ok(())
}

#[tokio::test]
async fn a_killed_webhook_restarts_and_still_denies_the_duplicate() -> Result<()> {
    let (db, certs, mut webhook) = Webhook::start_fresh(&[]).await?;
    let d = delivery();
    claimed(&webhook, &d, "run-before").await?;
    webhook.kill9().await?;
    assert!(
        webhook.review(Review::create(&d, "run-x")?.json()).await.is_err(),
        "the old process is gone"
    );

    let webhook = Webhook::start(db.url(), &certs, &["--kube-lookup", "off"], &[]).await?;
    let a = answer(&webhook, &Review::create(&d, "run-after")?).await?;
    assert_eq!((a.allowed(), a.code()), (false, 409));
    assert!(a.message().contains("jangar/run-before"));
    Ok(())
}

/// Over a real connection (the envelope cases are in `router.rs`): an oversize body gets
/// its 413 (not a reset while the client is still writing), and errors do not close the
/// connection: a valid request on it is answered after them.
#[tokio::test]
async fn malformed_requests_get_json_errors_and_the_server_keeps_serving() -> Result<()> {
    let (_db, _certs, webhook) = Webhook::start_fresh(&["--max-body-bytes", "65536"]).await?;
    let mut conn = webhook.client()?.connect().await?;
    let valid = Review::create(&delivery(), "run-ok")?;
    let mut oversize = valid.json().clone();
    oversize["padding"] = "x".repeat(70_000).into();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not JSON", b"{not json".to_vec(), 400),
        ("oversize", serde_json::to_vec(&oversize)?, 413),
    ];
    for (what, body, status) in cases {
        let reply = conn.post("/validate", "application/json", body).await?;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{what}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()?["status"], status, "{what}");
    }
    assert!(Answer::from_reply(&conn.review(valid.json()).await?)?.allowed());
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_accepting_and_exits_zero() -> Result<()> {
    let (_db, _certs, mut webhook) = Webhook::start_fresh(&[]).await?;
    let mut open = webhook.client()?.connect().await?;
    assert!(Answer::from_reply(&open.review(Review::create(&delivery(), "run-a")?.json()).await?)?.allowed());
    let addr = webhook.addr;
    let status = webhook.terminate().await?;
    assert_eq!(status.code(), Some(0), "{:#?}", webhook.logs());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    Ok(())
}

#[tokio::test]
async fn bad_configuration_exits_2_naming_the_flag() -> Result<()> {
    let bin = dedupe_tests::binaries::binary("dedupe-admission")?;
    let out = tokio::process::Command::new(&bin)
        .args(["--claim-scope", "galaxy"])
        .env("DATABASE_URL", "postgres://127.0.0.1:1/x")
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--claim-scope"));
    let out = tokio::process::Command::new(&bin)
        .env("DATABASE_URL", "postgres://127.0.0.1:notaport/x")
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(2));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("DATABASE_URL"), "{all}");
    Ok(())
}

#[tokio::test]
async fn missing_certificate_fails_at_start_naming_the_file() -> Result<()> {
    let db = TestDb::new().await?;
    let certs = TestCerts::new()?;
    let missing = certs.dir.path().join("nope.crt");
    let result = Webhook::start_with(
        db.url(),
        &missing,
        &certs.key(),
        certs.ca_pem(),
        &["--kube-lookup", "off"],
        &[],
    )
    .await;
    let error = format!("{:#}", result.err().expect("a missing certificate is refused"));
    assert!(error.contains("nope.crt"), "{error}");
    Ok(())
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_get_in() -> Result<()> {
    let db = TestDb::new().await?;
    let certs = TestCerts::new()?;
    let ca = certs.dir.path().join("ca.crt");
    let ca = ca.to_string_lossy();
    let webhook = Webhook::start(
        db.url(),
        &certs,
        &["--kube-lookup", "off", "--tls-client-ca", &ca],
        &[],
    )
    .await?;
    let review = Review::create(&delivery(), "run-mtls")?;
    assert!(
        webhook.review(review.json()).await.is_err(),
        "no client certificate: refused"
    );
    let client_cert = certs
        .certs
        .client
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no client cert"))?;
    let mtls = dedupe_tests::HttpsClient::with_client_cert(
        webhook.addr,
        certs.ca_pem(),
        dedupe_tests::webhook::SERVER_NAME,
        &client_cert.cert_pem,
        &client_cert.key_pem,
    )?;
    let a = Answer::from_reply(&mtls.connect().await?.review(review.json()).await?)?;
    assert!(a.allowed());
    Ok(())
}

#[tokio::test]
async fn replaced_certificate_files_are_served_to_new_handshakes_without_a_restart() -> Result<()> {
    let db = TestDb::new().await?;
    let certs = TestCerts::new()?;
    // The kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>/, swapped atomically.
    let mount = tempfile::tempdir()?;
    let write_generation = |name: &str, c: &certs_dev::DevCerts| -> Result<()> {
        let dir = mount.path().join(name);
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join("tls.crt"), &c.server_cert_pem)?;
        std::fs::write(dir.join("tls.key"), &c.server_key_pem)?;
        Ok(())
    };
    write_generation("..gen1", &certs.certs)?;
    std::os::unix::fs::symlink("..gen1", mount.path().join("..data"))?;
    std::os::unix::fs::symlink("..data/tls.crt", mount.path().join("tls.crt"))?;
    std::os::unix::fs::symlink("..data/tls.key", mount.path().join("tls.key"))?;
    let webhook = Webhook::start_with(
        db.url(),
        &mount.path().join("tls.crt"),
        &mount.path().join("tls.key"),
        certs.ca_pem(),
        &["--kube-lookup", "off", "--tls-reload-poll-seconds", "1"],
        &[],
    )
    .await?;
    let client = webhook.client()?;
    let mut before = client.connect().await?;
    let first_cert = before.peer_certificate.clone();

    let renewed = certs.certs.reissue(&certs_dev::CertRequest::new(
        vec![dedupe_tests::webhook::SERVER_NAME.into()],
        vec!["127.0.0.1".parse()?],
    ))?;
    write_generation("..gen2", &renewed)?;
    std::os::unix::fs::symlink("..gen2", mount.path().join("..data_tmp"))?;
    std::fs::rename(mount.path().join("..data_tmp"), mount.path().join("..data"))?;

    let mut seen_new = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let conn = client.connect().await?;
        if conn.peer_certificate != first_cert {
            seen_new = true;
            break;
        }
    }
    assert!(
        seen_new,
        "new handshakes still see the old certificate: {:#?}",
        webhook.logs()
    );
    // The connection opened before the swap keeps working.
    assert!(Answer::from_reply(
        &before
            .review(Review::create(&delivery(), "run-old-conn")?.json())
            .await?
    )?
    .allowed());
    let metrics = String::from_utf8_lossy(&webhook.ops("/metrics").await?.body).into_owned();
    assert!(
        metrics.contains("orchestration_dedupe_tls_reloads_total{result=\"success\"}"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn http2_is_served_only_behind_its_flag() -> Result<()> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

    async fn negotiated(webhook: &Webhook) -> Result<Option<Vec<u8>>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(webhook.ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(webhook.addr).await?;
        let name = ServerName::try_from(dedupe_tests::webhook::SERVER_NAME)?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if alpn.as_deref() == Some(b"h2") {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            let body = serde_json::to_vec(Review::create(&delivery(), "run-h2")?.json())?;
            let request =
                hyper::Request::post(format!("https://{}/validate", dedupe_tests::webhook::SERVER_NAME))
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(bytes::Bytes::from(body)))?;
            let response = sender.send_request(request).await?;
            anyhow::ensure!(response.status() == 200, "h2 request got {}", response.status());
            let body = response.into_body().collect().await?.to_bytes();
            let answer: Value = serde_json::from_slice(&body)?;
            anyhow::ensure!(answer["response"]["allowed"] == true, "{answer}");
        }
        Ok(alpn)
    }

    let (_db, _certs, webhook) = Webhook::start_fresh(&[]).await?;
    assert_eq!(
        negotiated(&webhook).await?.as_deref(),
        Some(&b"http/1.1"[..]),
        "HTTP/1.1 only by default"
    );
    let (_db2, _certs2, webhook2) = Webhook::start_fresh(&["--http2"]).await?;
    assert_eq!(negotiated(&webhook2).await?.as_deref(), Some(&b"h2"[..]));
    Ok(())
}
/// A grace period past what a timestamp can hold is refused at start (exit 2 naming the
/// flag), not a panic on the first duplicate; the largest accepted one works, and a
/// duplicate against a pending claim is told when a take-over becomes possible.
#[tokio::test]
async fn pending_grace_is_bounded_at_start_and_the_largest_works() -> Result<()> {
    let bin = dedupe_tests::binaries::binary("dedupe-admission")?;
    for huge in ["1000000000000", "31536001"] {
        let out = tokio::process::Command::new(&bin)
            .args(["--pending-grace-seconds", huge])
            .env("DATABASE_URL", "postgres://127.0.0.1:1/x")
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{huge}: {stderr}");
        assert!(stderr.contains("--pending-grace-seconds"), "{huge}: {stderr}");
    }
    let (_db, _api, webhook) = start_with_api(
        FakeApiServer::start().await?,
        &["--pending-grace-seconds", "31536000"],
    )
    .await?;
    let d = delivery();
    claimed(&webhook, &d, "run-a").await?;
    let a = answer(&webhook, &Review::create(&d, "run-b")?).await?;
    assert_eq!(
        (a.allowed(), a.code(), a.decision()),
        (false, 409, "duplicate"),
        "{:?}",
        a.0
    );
    assert!(a.message().contains("can take it over"), "{}", a.message());
    Ok(())
}
