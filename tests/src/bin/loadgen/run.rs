//! Running: the connections, the open-loop pacer, the statistics and the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dedupe_tests::https::{Connection, HttpsClient, Reply};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::body::{random_uuid, run_name, Fields, Template};
use crate::{Deliveries, Mode, RunArgs, CONTENT_TYPE, PATH, UUID_LEN};

#[derive(Default)]
pub(crate) struct Stats {
    /// Latency of each measured request, ns: from the scheduled send (fixed-rate) or the
    /// actual send (max-rate).
    latency: Vec<u64>,
    /// Service time (actual send → answer), ns; fixed-rate only (same as latency otherwise).
    service: Vec<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// Completed requests including the warm-up (to divide CPU time by).
    completed_all: u64,
    /// Fixed-rate: scheduled requests never sent (the drain ran out).
    missed: u64,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.latency.extend(other.latency);
        self.service.extend(other.service);
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.completed_all += other.completed_all;
        self.missed += other.missed;
    }
    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }
}

/// Shared, read-only plan of the run.
pub(crate) struct Plan {
    client: HttpsClient,
    template: Template,
    deliveries: Deliveries,
    duplicate_set: Vec<[u8; UUID_LEN]>,
    timeout: Duration,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    drain: Duration,
    /// Print requests slower than this to stderr (diagnosis of stalls); None = never.
    slow: Option<Duration>,
    /// Closed loop: requests left to send over all connections (`--requests`); None = until
    /// the end.
    budget: Option<std::sync::atomic::AtomicU64>,
}

/// Fast check of an answer: HTTP 200, the request's uid echoed, the expected decision.
/// Anything else is classified (parsing the JSON only on that rare path).
pub(crate) fn classify(reply: &Reply, request_uid: &[u8], deliveries: Deliveries) -> Option<String> {
    if reply.status != hyper::StatusCode::OK {
        return Some(format!("http {}", reply.status.as_u16()));
    }
    let body = reply.body.as_ref();
    let decision = format!("\"decision\":\"{}\"", deliveries.expected_decision());
    let allowed = format!("\"allowed\":{}", deliveries.expected_allowed());
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    if contains(decision.as_bytes()) && contains(allowed.as_bytes()) && contains(request_uid) {
        return None;
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Some("answer not JSON".into());
    };
    let response = &v["response"];
    if response["uid"].as_str().map(str::as_bytes) != Some(request_uid) {
        return Some("uid not echoed".into());
    }
    Some(format!(
        "decision {} (allowed {})",
        response["auditAnnotations"]["decision"]
            .as_str()
            .unwrap_or("<none>"),
        response["allowed"]
    ))
}

/// When a connection sends: back-to-back (max-rate), or at the times the pacer hands it.
pub(crate) enum Schedule {
    Closed,
    Open(mpsc::UnboundedReceiver<Instant>),
}

/// The open-loop clock (fixed-rate): a plain thread that sleeps to each scheduled send time
/// (`start + k/rate`, to within the OS timer slack, well under the tokio timer's 1 ms tick)
/// and hands it to connection `k mod N`. A connection still busy with its previous request
/// finds the time queued and sends late: the delay counts in that request's latency.
pub(crate) fn pace(start: Instant, end: Instant, rate: f64, senders: Vec<mpsc::UnboundedSender<Instant>>) {
    let period = 1.0 / rate;
    for k in 0u64.. {
        let at = start + Duration::from_secs_f64(k as f64 * period);
        if at >= end {
            break;
        }
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let Some(sender) = senders.get((k % senders.len() as u64) as usize) else {
            break;
        };
        let _ = sender.send(at);
    }
}

/// One connection's worth of the load, until the plan's end.
pub(crate) async fn drive(
    plan: std::sync::Arc<Plan>,
    mut conn: Option<Connection>,
    index: u32,
    mut schedule: Schedule,
) -> Stats {
    let mut stats = Stats::default();
    // Not the thread-local generator: this future moves between worker threads.
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut seq: u64 = 0;
    let open_loop = matches!(schedule, Schedule::Open(_));
    loop {
        let scheduled = match &mut schedule {
            Schedule::Closed => {
                let now = Instant::now();
                if now >= plan.end {
                    break;
                }
                let spent = plan.budget.as_ref().is_some_and(|left| {
                    left.fetch_update(
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                        |n| n.checked_sub(1),
                    )
                    .is_err()
                });
                if spent {
                    break;
                }
                now
            }
            Schedule::Open(times) => match times.recv().await {
                None => break,
                // So far behind that the drain is over: never sent.
                Some(_) if Instant::now() > plan.end + plan.drain => {
                    stats.missed += 1;
                    continue;
                }
                Some(at) => at,
            },
        };
        let measured = scheduled >= plan.measure_from;
        if conn.is_none() {
            match tokio::time::timeout(plan.timeout, plan.client.connect()).await {
                Ok(Ok(c)) => conn = Some(c),
                _ => {
                    if measured {
                        stats.error("connect failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        // Build the body before taking the send time.
        seq += 1;
        let delivery = match plan.deliveries {
            Deliveries::New => random_uuid(&mut rng),
            Deliveries::Duplicate => {
                plan.duplicate_set[(rng.random::<u64>() % plan.duplicate_set.len() as u64) as usize]
            }
        };
        let name = run_name((u64::from(index) << 40) | seq);
        let request_uid = random_uuid(&mut rng);
        let object_uid = random_uuid(&mut rng);
        let body = plan.template.render(&Fields {
            delivery: &delivery,
            name: &name,
            request_uid: &request_uid,
            object_uid: &object_uid,
        });
        let sent = Instant::now();
        let result = tokio::time::timeout(plan.timeout, c.post(PATH, CONTENT_TYPE, body)).await;
        let done = Instant::now();
        let failure = match &result {
            Ok(Ok(reply)) => classify(reply, &request_uid, plan.deliveries),
            Ok(Err(e)) => Some(format!("transport: {}", e.root_cause())),
            Err(_) => Some("timeout".into()),
        };
        if !matches!(result, Ok(Ok(_))) {
            conn = None; // the connection's state is unknown: replace it
        }
        stats.completed_all += 1;
        if measured {
            match failure {
                None => {
                    stats.ok += 1;
                    let latency = done.saturating_duration_since(scheduled);
                    if plan.slow.is_some_and(|slow| latency >= slow) {
                        eprintln!(
                            "slow request: sent at +{:.3} s, answered at +{:.3} s, {:.1} ms, connection {index}",
                            sent.saturating_duration_since(plan.start).as_secs_f64(),
                            done.saturating_duration_since(plan.start).as_secs_f64(),
                            latency.as_secs_f64() * 1e3
                        );
                    }
                    stats
                        .latency
                        .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
                    if open_loop {
                        let service = done.saturating_duration_since(sent);
                        stats
                            .service
                            .push(u64::try_from(service.as_nanos()).unwrap_or(u64::MAX));
                    }
                }
                Some(kind) => stats.error(kind),
            }
        }
    }
    stats
}

/// Claims the duplicate set once, before the warm-up, on one connection.
pub(crate) async fn claim_duplicate_set(
    client: &HttpsClient,
    template: &Template,
    size: u32,
) -> Result<Vec<[u8; UUID_LEN]>> {
    let mut rng = rand::rng();
    let mut conn = client.connect().await?;
    let mut set = Vec::with_capacity(size as usize);
    for i in 0..size {
        let delivery = random_uuid(&mut rng);
        let request_uid = random_uuid(&mut rng);
        let body = template.render(&Fields {
            delivery: &delivery,
            name: &run_name(0xffff_0000_0000 | u64::from(i)),
            request_uid: &request_uid,
            object_uid: &random_uuid(&mut rng),
        });
        let reply = conn.post(PATH, CONTENT_TYPE, body).await?;
        if let Some(problem) = classify(&reply, &request_uid, Deliveries::New) {
            bail!("claiming the duplicate set: expected `claimed`, got {problem}");
        }
        set.push(delivery);
    }
    Ok(set)
}

/// User + system CPU seconds of this process so far (Linux; USER_HZ is 100).
pub(crate) fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let ca = std::fs::read_to_string(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let client = HttpsClient::new(args.target, &ca, &args.server_name)?;
    let template = Template::new()?;
    let duplicate_set = match args.deliveries {
        Deliveries::New => Vec::new(),
        Deliveries::Duplicate => claim_duplicate_set(&client, &template, args.duplicate_set).await?,
    };
    // Open every connection (TCP + TLS) before the clock starts.
    let mut opened = Vec::with_capacity(args.connections as usize);
    for _ in 0..args.connections {
        opened.push(client.connect().await?);
    }
    let cpu_before = cpu_seconds();
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs(args.warmup_secs);
    let plan = std::sync::Arc::new(Plan {
        client,
        template,
        deliveries: args.deliveries,
        duplicate_set,
        timeout: Duration::from_millis(args.timeout_ms),
        start,
        measure_from,
        end: measure_from + Duration::from_secs(args.duration_secs),
        drain: Duration::from_secs(args.drain_secs),
        slow: args.slow_ms.map(Duration::from_millis),
        budget: args.requests.map(std::sync::atomic::AtomicU64::new),
    });
    let mut schedules = Vec::with_capacity(opened.len());
    let mut pacer = None;
    match args.mode {
        Mode::MaxRate => schedules.resize_with(opened.len(), || Schedule::Closed),
        Mode::FixedRate => {
            let (senders, receivers): (Vec<_>, Vec<_>) =
                (0..opened.len()).map(|_| mpsc::unbounded_channel()).unzip();
            schedules.extend(receivers.into_iter().map(Schedule::Open));
            let (start, end, rate) = (plan.start, plan.end, args.rate);
            pacer = Some(
                std::thread::Builder::new()
                    .name("pacer".into())
                    .spawn(move || pace(start, end, rate, senders))
                    .context("starting the pacer thread")?,
            );
        }
    }
    let tasks: Vec<_> = opened
        .into_iter()
        .zip(schedules)
        .zip(0..)
        .map(|((conn, schedule), i)| tokio::spawn(drive(plan.clone(), Some(conn), i, schedule)))
        .collect();
    let mut stats = Stats::default();
    for task in tasks {
        stats.merge(task.await.context("a connection task panicked")?);
    }
    if let Some(pacer) = pacer {
        let _ = pacer.join();
    }
    let elapsed_all = start.elapsed().as_secs_f64();
    let cpu = match (cpu_before, cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    report(&args, stats, elapsed_all, cpu);
    Ok(())
}

pub(crate) fn percentiles(mut ns: Vec<u64>) -> Value {
    if ns.is_empty() {
        return Value::Null;
    }
    ns.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * ns.len() as f64).ceil() as usize).clamp(1, ns.len());
        ns[rank - 1] as f64 / 1e6
    };
    let mean = ns.iter().map(|&v| v as f64).sum::<f64>() / ns.len() as f64 / 1e6;
    json!({
        "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p99_9": at(0.999),
        "max": at(1.0), "mean": mean,
    })
}

pub(crate) fn report(args: &RunArgs, stats: Stats, elapsed_all: f64, cpu: Option<f64>) {
    let errors: u64 = stats.errors.values().sum();
    let requests = stats.ok + errors;
    let throughput = stats.ok as f64 / args.duration_secs as f64;
    let latency = percentiles(stats.latency);
    let service = percentiles(stats.service);
    let cpu_per_request_us = cpu.map(|c| c * 1e6 / stats.completed_all.max(1) as f64);
    let out = json!({
        "label": args.label,
        "mode": match args.mode { Mode::MaxRate => "max-rate", Mode::FixedRate => "fixed-rate" },
        "deliveries": args.deliveries.as_str(),
        "connections": args.connections,
        "rate": (args.mode == Mode::FixedRate).then_some(args.rate),
        "warmup_secs": args.warmup_secs,
        "duration_secs": args.duration_secs,
        "requests": requests,
        "ok": stats.ok,
        "errors": errors,
        "errors_by_kind": stats.errors,
        "missed": stats.missed,
        "throughput_rps": throughput,
        "latency_ms": latency,
        "service_time_ms": service,
        "completed_including_warmup": stats.completed_all,
        "elapsed_including_warmup_secs": elapsed_all,
        "loadgen_cpu_secs": cpu,
        "loadgen_cpu_us_per_request": cpu_per_request_us,
    });
    if args.json {
        println!("{out}");
        return;
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "loadgen {}: {} {} deliveries, {} connections{}, {} s warm-up + {} s measured",
        args.label,
        out["mode"].as_str().unwrap_or_default(),
        args.deliveries.as_str(),
        args.connections,
        if args.mode == Mode::FixedRate {
            format!(" at {} req/s", args.rate)
        } else {
            String::new()
        },
        args.warmup_secs,
        args.duration_secs
    );
    let _ = writeln!(
        text,
        "  requests {requests}, ok {}, errors {errors}, missed {}; throughput {throughput:.1} req/s",
        stats.ok, stats.missed
    );
    for (kind, n) in &stats.errors {
        let _ = writeln!(text, "    error {kind}: {n}");
    }
    let line = |name: &str, v: &Value| {
        if v.is_null() {
            format!("  {name}: no successful requests\n")
        } else {
            format!(
                "  {name} ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}\n",
                v["p50"].as_f64().unwrap_or_default(),
                v["p90"].as_f64().unwrap_or_default(),
                v["p99"].as_f64().unwrap_or_default(),
                v["p99_9"].as_f64().unwrap_or_default(),
                v["max"].as_f64().unwrap_or_default(),
                v["mean"].as_f64().unwrap_or_default(),
            )
        }
    };
    text.push_str(&line(
        if args.mode == Mode::FixedRate {
            "latency (from scheduled send)"
        } else {
            "latency"
        },
        &out["latency_ms"],
    ));
    if args.mode == Mode::FixedRate {
        text.push_str(&line("service time (from actual send)", &out["service_time_ms"]));
    }
    if let Some(us) = cpu_per_request_us {
        let _ = writeln!(text, "  loadgen CPU {us:.1} µs/request");
    }
    print!("{text}");
}
