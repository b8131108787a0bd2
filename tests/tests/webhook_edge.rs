//! The request edge under attack, against the real binary over real TLS: memory
//! bounded by the bytes read, a read deadline that cuts off trickled bodies, idle HTTP/2
//! connections closed, bad names answered 422 (not as a store outage), and log lines that
//! a request's values cannot break.
//!
//! The only time bounds here are the deadlines under test, each asserted with a generous,
//! stated margin; memory bounds are the targets (see docs/BENCHMARKS.md).

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use dedupe_tests::{Answer, Review, Webhook};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: i64 = 1024 * 1024;

use dedupe_tests::new_delivery as delivery;

/// (VmRSS, VmHWM) of the webhook.
fn rss(webhook: &Webhook) -> Result<(i64, i64)> {
    let memory = webhook.memory()?;
    Ok((memory.rss, memory.hwm))
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (`/proc/<pid>/clear_refs`, 5).
fn reset_peak(webhook: &Webhook) -> Result<()> {
    let pid = webhook.pid().ok_or_else(|| anyhow!("webhook exited"))?;
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("resetting VmHWM")
}

/// A valid create whose `spec.parameters` is `bytes` of tiny nested arrays (`[[]],` …): the
/// shape that cost ~85 bytes of heap per input byte when the whole object was parsed.
fn adversarial_review(delivery: &str, name: &str, bytes: usize) -> Result<(Review, Vec<u8>)> {
    let review = Review::create(delivery, name)?
        .edit(|v| v["request"]["object"]["spec"]["parameters"] = json!("PARAMETERS-HERE"));
    let text = serde_json::to_string(review.json())?;
    let mut arrays = String::with_capacity(bytes + 8);
    arrays.push('[');
    while arrays.len() < bytes {
        arrays.push_str("[[]],");
    }
    arrays.push_str("[]]");
    let body = text.replacen("\"PARAMETERS-HERE\"", &arrays, 1);
    ensure!(body.len() > bytes, "placeholder not replaced");
    Ok((review, body.into_bytes()))
}

async fn post_review(webhook: &Webhook, review: &Review, body: Vec<u8>) -> Result<Answer> {
    let reply = webhook
        .client()?
        .connect()
        .await?
        .post("/validate", "application/json", body)
        .await?;
    let answer = Answer::from_reply(&reply)?;
    ensure!(answer.uid() == review.request_uid(), "answer for another request");
    Ok(answer)
}

/// The memory bounds: one 7 MB adversarial review raises peak RSS by ≤ 40 MiB;
/// eight concurrent 3 MB ones by ≤ 96 MiB; afterwards RSS is back within 32 MiB of idle.
/// (The body itself is buffered, up to `--max-body-bytes`: raised here to take 7 MB.)
#[tokio::test]
async fn adversarial_reviews_cost_memory_bounded_by_their_size() -> Result<()> {
    let (_db, _certs, webhook) = Webhook::start_fresh(&["--max-body-bytes", "8388608"]).await?;
    // Warm up: TLS, the store pool, the first decision.
    let d = delivery();
    let warm = Review::create(&d, "run-warm")?;
    let body = serde_json::to_vec(warm.json())?;
    ensure!(post_review(&webhook, &warm, body).await?.decision() == "claimed");
    let (idle, _) = rss(&webhook)?;

    reset_peak(&webhook)?;
    let (review, body) = adversarial_review(&delivery(), "run-big", 7_000_000)?;
    let answer = post_review(&webhook, &review, body).await?;
    ensure!(answer.decision() == "claimed", "{:?}", answer.0);
    let (_, peak) = rss(&webhook)?;
    let one = peak - idle;
    println!(
        "one 7 MB review: idle {idle} B, peak {peak} B, +{:.1} MiB",
        one as f64 / MIB as f64
    );
    ensure!(
        one <= 40 * MIB,
        "one 7 MB review raised peak RSS by {one} B (> 40 MiB)"
    );

    let (before, _) = rss(&webhook)?;
    reset_peak(&webhook)?;
    let mut burst = Vec::new();
    for i in 0..8 {
        let (review, body) = adversarial_review(&delivery(), &format!("run-burst-{i}"), 3_000_000)?;
        let client = webhook.client()?;
        burst.push(tokio::spawn(async move {
            let reply = client
                .connect()
                .await?
                .post("/validate", "application/json", body)
                .await?;
            let answer = Answer::from_reply(&reply)?;
            ensure!(
                answer.uid() == review.request_uid() && answer.decision() == "claimed",
                "{:?}",
                answer.0
            );
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in burst {
        task.await??;
    }
    let (_, peak) = rss(&webhook)?;
    let eight = peak - before.min(idle);
    println!(
        "eight 3 MB reviews: peak {peak} B, +{:.1} MiB over idle",
        eight as f64 / MIB as f64
    );
    ensure!(
        eight <= 96 * MIB,
        "eight 3 MB reviews raised peak RSS by {eight} B (> 96 MiB)"
    );

    // Freed memory goes back to the kernel as the allocator trims; give it a moment.
    let mut after = rss(&webhook)?.0;
    for _ in 0..20 {
        if after - idle <= 32 * MIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = rss(&webhook)?.0;
    }
    println!(
        "after the burst: {after} B, +{:.1} MiB over idle",
        (after - idle) as f64 / MIB as f64
    );
    ensure!(
        after - idle <= 32 * MIB,
        "RSS stayed {} B above idle (> 32 MiB)",
        after - idle
    );
    Ok(())
}

/// Connections that send their headers and then trickle the body, a byte every 200 ms, are
/// cut off (408) at `--request-read-timeout-ms` while other clients are answered.
#[tokio::test]
async fn a_trickled_body_is_cut_off_at_the_deadline_while_others_are_served() -> Result<()> {
    const DEADLINE: Duration = Duration::from_millis(1_500);
    let (_db, _certs, webhook) = Webhook::start_fresh(&["--request-read-timeout-ms", "1500"]).await?;
    let mut trickles = Vec::new();
    for _ in 0..8 {
        let client = webhook.client()?;
        trickles.push(tokio::spawn(async move {
            let mut tls = client.tls(&[b"http/1.1"]).await?;
            let started = Instant::now();
            tls.write_all(
                b"POST /validate HTTP/1.1\r\nhost: webhook\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{",
            )
            .await?;
            let mut reply = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                tokio::select! {
                    read = tls.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => reply.extend_from_slice(&buf[..n]),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if tls.write_all(b" ").await.is_err() {
                            break;
                        }
                    }
                }
                // Never hang the test: far past the deadline, give up.
                if started.elapsed() > DEADLINE * 10 {
                    break;
                }
            }
            Ok::<_, anyhow::Error>((started.elapsed(), String::from_utf8_lossy(&reply).into_owned()))
        }));
    }
    // Meanwhile, other clients are served (each on a new connection).
    let served = Instant::now();
    let mut answered = 0;
    while served.elapsed() < DEADLINE {
        let review = Review::create(&delivery(), "run-other")?;
        let answer = Answer::from_reply(&webhook.review(review.json()).await?)?;
        ensure!(answer.decision() == "claimed", "{:?}", answer.0);
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        answered >= 3,
        "only {answered} reviews answered during the trickle"
    );
    for task in trickles {
        let (took, reply) = task.await??;
        ensure!(
            reply.starts_with("HTTP/1.1 408"),
            "trickle got {reply:?} after {took:?}"
        );
        // Cut at the deadline: not before it, and well before 5 × it (scheduling margin).
        ensure!(took >= DEADLINE && took < DEADLINE * 5, "cut off after {took:?}");
    }
    ensure!(webhook.metric("orchestration_dedupe_in_flight_requests").await? == 0.0);
    Ok(())
}

/// With `--http2`: a TLS connection that negotiates h2 and sends nothing, and an h2
/// connection left idle after a request, are both closed after the idle timeout (not the
/// shorter read timeout).
#[tokio::test]
async fn idle_http2_connections_are_closed() -> Result<()> {
    const IDLE: Duration = Duration::from_secs(2);
    let (_db, _certs, webhook) = Webhook::start_fresh(&[
        "--http2",
        "--request-read-timeout-ms",
        "500",
        "--idle-timeout-seconds",
        "2",
    ])
    .await?;

    // Idle time counts from the accept, so from before the connection is opened.
    let started = Instant::now();
    let mut silent = webhook.client()?.tls(&[b"h2"]).await?;
    ensure!(
        silent.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()),
        "h2 not negotiated"
    );
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(IDLE * 10, async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // a SETTINGS or GOAWAY frame
            }
        }
    })
    .await;
    ensure!(
        closed.is_ok(),
        "silent h2 connection still open after {:?}",
        IDLE * 10
    );
    ensure!(
        started.elapsed() >= IDLE,
        "closed before the idle timeout: {:?}",
        started.elapsed()
    );

    // A real h2 client: one review, then nothing. The server ends the connection (GOAWAY).
    let tls = webhook.client()?.tls(&[b"h2"]).await?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    let connection = tokio::spawn(connection);
    let review = Review::create(&delivery(), "run-h2")?;
    let request = hyper::Request::post("https://orchestration-dedupe.test.svc/validate")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(serde_json::to_vec(
            review.json(),
        )?)))?;
    // The server's idle clock restarts when it answers, which is after this.
    let sent = Instant::now();
    let response = sender.send_request(request).await?;
    ensure!(response.status() == 200, "h2 review got {}", response.status());
    let ended = tokio::time::timeout(IDLE * 10, connection).await;
    ensure!(
        ended.is_ok(),
        "idle h2 connection still open after {:?}",
        IDLE * 10
    );
    ensure!(
        sent.elapsed() >= IDLE,
        "closed before the idle timeout: {:?}",
        sent.elapsed()
    );
    Ok(())
}

/// An HTTP/1.1 keep-alive connection idle for longer than the read timeout is still
/// usable (the API server's client keeps idle connections for 90 s and does not retry a
/// POST that meets a closing one), and is closed only past the idle timeout.
#[tokio::test]
async fn a_keep_alive_connection_idle_past_the_read_timeout_is_still_usable() -> Result<()> {
    const READ: Duration = Duration::from_millis(500);
    const IDLE: Duration = Duration::from_secs(3);
    let (_db, _certs, webhook) =
        Webhook::start_fresh(&["--request-read-timeout-ms", "500", "--idle-timeout-seconds", "3"]).await?;
    let mut connection = webhook.client()?.connect().await?;
    let first = Answer::from_reply(
        &connection
            .review(Review::create(&delivery(), "run-a")?.json())
            .await?,
    )?;
    ensure!(first.decision() == "claimed", "{:?}", first.0);
    tokio::time::sleep(READ * 3).await;
    let second = connection
        .review(Review::create(&delivery(), "run-b")?.json())
        .await
        .context("a request on a connection idle for 3 read timeouts")?;
    ensure!(Answer::from_reply(&second)?.decision() == "claimed");
    // Past the idle timeout (checked between one and two of them), the server has closed it.
    tokio::time::sleep(IDLE * 2 + READ).await;
    ensure!(
        connection
            .review(Review::create(&delivery(), "run-c")?.json())
            .await
            .is_err(),
        "the connection outlived twice the idle timeout"
    );
    Ok(())
}

/// The header deadline counts from a request's first byte, not from when the connection
/// went idle: a connection idle for twice the read timeout that then trickles a request
/// head is closed about one read timeout after the head's first byte.
#[tokio::test]
async fn a_trickled_request_head_is_cut_off_a_read_timeout_after_its_first_byte() -> Result<()> {
    const READ: Duration = Duration::from_millis(1_000);
    let (_db, _certs, webhook) = Webhook::start_fresh(&[
        "--request-read-timeout-ms",
        "1000",
        "--idle-timeout-seconds",
        "60",
    ])
    .await?;
    let mut tls = webhook.client()?.tls(&[b"http/1.1"]).await?;
    tokio::time::sleep(READ * 2).await;
    let started = Instant::now();
    tls.write_all(b"POST /validate HTTP/1.1\r\nhost: webhook\r\n")
        .await
        .context("the idle connection was closed before the head started")?;
    let mut buf = [0u8; 1024];
    let ended = tokio::time::timeout(READ * 10, async {
        loop {
            tokio::select! {
                read = tls.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if tls.write_all(b"x").await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let took = started.elapsed();
    ensure!(ended.is_ok(), "a trickled head was still read after {took:?}");
    ensure!(took >= READ && took < READ * 5, "cut off after {took:?}");
    Ok(())
}

/// NUL bytes, over-long and mis-shaped names are the submitter's error: 422 naming the
/// field and the rule, decision `invalid`, nothing claimed, and no store error counted.
#[tokio::test]
async fn malformed_names_are_422_not_store_errors() -> Result<()> {
    let (db, _certs, webhook) = Webhook::start_fresh(&[]).await?;
    let long = "a".repeat(3_000);
    let cases: Vec<(Review, &str)> = vec![
        (
            Review::create(&delivery(), "run-a")?.orchestration("co\0dex"),
            "spec.orchestrationRef.name is not a DNS-1123 subdomain",
        ),
        (
            Review::create(&delivery(), "run-b")?.orchestration(&long),
            "spec.orchestrationRef.name is 3000 characters long",
        ),
        (
            Review::create(&delivery(), "run-c")?.orchestration("Codex_Flow"),
            "spec.orchestrationRef.name is not a DNS-1123 subdomain",
        ),
        (
            Review::create(&delivery(), "run\0d")?,
            "metadata.name is not a DNS-1123 subdomain",
        ),
        (
            Review::create(&delivery(), &long)?,
            "metadata.name is 3000 characters long",
        ),
        (
            Review::create(&delivery(), "run-f")?.namespace("Team.A"),
            "metadata.namespace is not a DNS-1123 label",
        ),
        (
            Review::create("bad\0id", "run-g")?,
            "metadata.labels[\"jangar.proompteng.ai/delivery-id\"] may contain only",
        ),
    ];
    for (review, message) in &cases {
        let answer = Answer::from_reply(&webhook.review(review.json()).await?)?;
        ensure!(
            !answer.allowed() && answer.code() == 422 && answer.decision() == "invalid",
            "{message}: {:?}",
            answer.0
        );
        ensure!(
            answer.message().starts_with(message),
            "{:?} does not start with {message:?}",
            answer.message()
        );
    }
    ensure!(webhook.metric("orchestration_dedupe_store_errors_total").await? == 0.0);
    let claims: i64 = db
        .client()
        .await?
        .query_one("SELECT count(*) FROM orchestration_dedupe_claims", &[])
        .await?
        .get(0);
    ensure!(claims == 0, "{claims} claims written for invalid runs");
    Ok(())
}

/// A newline (and ANSI escapes) in `request.name` cannot start or colour a log line, in
/// the text format and in JSON.
#[tokio::test]
async fn a_newline_in_a_logged_field_produces_no_extra_line() -> Result<()> {
    for format in ["text", "json"] {
        let (_db, _certs, webhook) = Webhook::start_fresh(&["--log-format", format]).await?;
        let marker = format!("FORGED-{}", uuid::Uuid::new_v4().simple());
        let name = format!("run-x\nINFO {marker} \u{1b}[2Jcleared");
        // No delivery label: answered `ignored`, and the one decision line names the run.
        let review = Review::create(&delivery(), "run-x")?.edit(|v: &mut Value| {
            v["request"]["name"] = json!(name);
            v["request"]["object"]["metadata"]["labels"] = json!({});
        });
        let answer = Answer::from_reply(&webhook.review(review.json()).await?)?;
        ensure!(answer.allowed(), "{:?}", answer.0);
        // The decision line is written by a background thread: wait for it (bounded).
        let uid = review.request_uid();
        let mut lines = Vec::new();
        for _ in 0..50 {
            lines = webhook
                .logs()
                .into_iter()
                .filter(|l| l.contains(&marker) || l.contains(&uid))
                .collect();
            if !lines.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(lines.len() == 1, "{format}: expected one line, got {lines:#?}");
        let line = &lines[0];
        ensure!(line.contains(&marker) && line.contains(&uid), "{format}: {line}");
        ensure!(!line.contains('\u{1b}'), "{format}: raw ESC in {line:?}");
        ensure!(
            !webhook
                .logs()
                .iter()
                .any(|l| l.starts_with("INFO") || l.trim_start().starts_with(&marker)),
            "{format}: a forged line"
        );
    }
    Ok(())
}

/// A request gives its body slot back once the body is parsed, so more requests than
/// `server::edge::MAX_BODIES_IN_MEMORY` (16) can wait on a slow store at once, up to
/// `--max-concurrent-requests` (64 by default), and all are decided when it frees up.
#[tokio::test]
async fn requests_waiting_on_the_store_do_not_hold_body_slots() -> Result<()> {
    const WAITING: usize = 24;
    let (db, _certs, webhook) = Webhook::start_fresh(&["--store-timeout-ms", "10000"]).await?;
    let lock = db.client().await?;
    // The table must exist before it is locked: one claim first.
    let first = Answer::from_reply(
        &webhook
            .review(Review::create(&delivery(), "run-0")?.json())
            .await?,
    )?;
    ensure!(first.decision() == "claimed", "{:?}", first.0);
    lock.batch_execute("BEGIN").await?;
    lock.batch_execute("LOCK TABLE orchestration_dedupe_claims IN EXCLUSIVE MODE")
        .await?;
    let mut waiting = Vec::new();
    for i in 0..WAITING {
        let review = Review::create(&delivery(), &format!("run-{}", i + 1))?;
        let client = webhook.client()?;
        waiting.push(tokio::spawn(async move {
            client.connect().await?.review(review.json()).await
        }));
    }
    let mut all_in = false;
    for _ in 0..200 {
        if webhook.metric("orchestration_dedupe_in_flight_requests").await? == WAITING as f64 {
            all_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    ensure!(
        all_in,
        "only {} of {WAITING} requests got in while the store was held",
        webhook.metric("orchestration_dedupe_in_flight_requests").await?
    );
    lock.batch_execute("ROLLBACK").await?;
    for request in waiting {
        let answer = Answer::from_reply(&request.await??)?;
        ensure!(answer.decision() == "claimed", "{:?}", answer.0);
    }
    Ok(())
}

/// Past `--max-concurrent-requests`, a request waits for a slot up to the read timeout and
/// then gets 503 without its body being read; once the slot frees up, requests are decided.
/// The slot is held by a decision waiting on a locked claim row (a slow store): slots held
/// only by slow bodies free up in time, as every body's deadline counts from its arrival and
/// waiters are served first come, first served.
#[tokio::test]
async fn past_the_concurrency_cap_a_request_gets_503() -> Result<()> {
    let (db, _certs, webhook) = Webhook::start_fresh(&[
        "--max-concurrent-requests",
        "1",
        "--request-read-timeout-ms",
        "1000",
        "--store-timeout-ms",
        "10000",
    ])
    .await?;
    let d = delivery();
    let first = Answer::from_reply(&webhook.review(Review::create(&d, "run-first")?.json()).await?)?;
    ensure!(first.decision() == "claimed", "{:?}", first.0);
    let lock = db.client().await?;
    lock.batch_execute("BEGIN").await?;
    // Not the claim's row lock: a duplicate is a read that takes none. A table lock that
    // admits readers and no writer holds every claim statement (an INSERT) up.
    lock.batch_execute("LOCK TABLE orchestration_dedupe_claims IN EXCLUSIVE MODE")
        .await?;
    // Takes the only slot and waits on the lock.
    let blocked = Review::create(&d, "run-second")?;
    let client = webhook.client()?;
    let holder = tokio::spawn(async move { client.connect().await?.review(blocked.json()).await });
    let mut waiting = false;
    for _ in 0..100 {
        if webhook.metric("orchestration_dedupe_in_flight_requests").await? == 1.0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(waiting, "the first request never got in flight");
    let reply = webhook
        .review(Review::create(&delivery(), "run-waiting")?.json())
        .await?;
    ensure!(
        reply.status.as_u16() == 503,
        "got {} {:?}",
        reply.status,
        reply.body
    );
    let message = reply.json()?["message"].as_str().unwrap_or_default().to_owned();
    ensure!(
        message.contains("too many requests in progress (limit 1)"),
        "{message}"
    );
    ensure!(webhook.metric("orchestration_dedupe_store_errors_total").await? == 0.0);
    lock.batch_execute("ROLLBACK").await?;
    let held = Answer::from_reply(&holder.await??)?;
    ensure!(held.decision() == "duplicate", "{:?}", held.0);
    let answer = Answer::from_reply(
        &webhook
            .review(Review::create(&delivery(), "run-after")?.json())
            .await?,
    )?;
    ensure!(answer.decision() == "claimed", "{:?}", answer.0);
    Ok(())
}
