//! `loadgen`: load generator for the webhook benchmark (`tests/bench/webhook.sh`).
//!
//! `loadgen run` sends AdmissionReview CREATEs over N keep-alive HTTPS connections (real
//! rustls TLS trusting the dev CA, the same client the end-to-end tests use) to a webhook
//! on loopback, in one of two modes:
//! - `max-rate`: every connection sends its next request as soon as the previous answer
//!   arrived (closed loop); latency is the service time of each request.
//! - `fixed-rate`: an open-loop schedule of `--rate` requests/s spread evenly over the
//!   connections; latency is measured from each request's *scheduled* send time, so a slow
//!   answer that delays the following requests is charged to them too (no coordinated
//!   omission). A plain thread keeps the schedule (the tokio timer ticks in whole
//!   milliseconds, too coarse here). The service time (from the actual send) is reported
//!   beside it.
//!
//! Bodies are built once from the recorded fixture (`Review::create`) and serialised to a
//! template; each request copies the template and overwrites the delivery id, run name and
//! uids in place (fixed-length fields), so generating a request costs a memcpy, not a JSON
//! serialisation. `--deliveries new` gives every request a new delivery (→ `claimed`);
//! `--deliveries duplicate` claims a small set of deliveries once before the warm-up and then
//! sends only duplicates of them under new run names (→ 409 `duplicate`).
//!
//! The run is bounded: warm-up (not recorded), then `--duration-secs` measured, then at most
//! a short drain; it stops by itself. Only loopback targets are accepted.
//!
//! `loadgen pgbench-script` writes the pgbench baseline: the webhook's own claim statement
//! (`dedupe_shared::sql::CLAIM_INSERT`, verbatim, `$n` → pgbench variables; or with
//! `--statement insert` a bare `INSERT … ON CONFLICT DO NOTHING`, the durable baseline) with the same key parts
//! as the fixture, for new or duplicate deliveries.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use dedupe_tests::https::{Connection, HttpsClient, Reply};
use dedupe_tests::Review;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

const PATH: &str = "/validate?timeout=10s";
const CONTENT_TYPE: &str = "application/json";
/// Run names are `lg-` + 16 hex digits: fixed length, so they can be patched in place.
const NAME_LEN: usize = 19;
const UUID_LEN: usize = 36;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Webhook load generator and pgbench baseline script"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send AdmissionReview CREATEs to the webhook and report throughput and latency.
    Run(RunArgs),
    /// Write the pgbench script that runs the webhook's claim statement.
    PgbenchScript(ScriptArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Each connection sends back-to-back (closed loop).
    MaxRate,
    /// Open loop at --rate requests/s over all connections.
    FixedRate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Deliveries {
    /// Every request a new delivery id: each is claimed.
    New,
    /// A fixed set of deliveries claimed before the warm-up; every request a duplicate.
    Duplicate,
}

impl Deliveries {
    fn as_str(self) -> &'static str {
        match self {
            Deliveries::New => "new",
            Deliveries::Duplicate => "duplicate",
        }
    }
    /// The decision every answer must carry.
    fn expected_decision(self) -> &'static str {
        match self {
            Deliveries::New => "claimed",
            Deliveries::Duplicate => "duplicate",
        }
    }
    fn expected_allowed(self) -> bool {
        self == Deliveries::New
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Webhook HTTPS address; loopback only.
    #[arg(long, default_value = "127.0.0.1:8443")]
    target: SocketAddr,
    /// CA certificate (PEM) the serving certificate chains to (certs-dev's ca.crt).
    #[arg(long)]
    ca: PathBuf,
    /// Name checked against the serving certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[arg(long, value_enum, default_value_t = Mode::MaxRate)]
    mode: Mode,
    #[arg(long, value_enum, default_value_t = Deliveries::New)]
    deliveries: Deliveries,
    /// Keep-alive connections (HTTP/1.1, one request in flight each).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Requests per second over all connections (fixed-rate mode).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured duration, after the warm-up.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration_secs: u64,
    /// Warm-up before measuring (same load, not recorded).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup_secs: u64,
    /// How many deliveries the duplicate mode claims up front and then repeats.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    duplicate_set: u32,
    /// Per-request timeout; a timed-out request counts as an error and its connection is replaced.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Fixed-rate: after the end, requests still behind schedule get this long to go out;
    /// the rest count as `missed`.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
    /// Runtime worker threads of the generator (it shares the machine with what it measures).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,
    /// Print each measured request slower than this many ms to stderr (to line stalls up
    /// with other observations).
    #[arg(long)]
    slow_ms: Option<u64>,
    /// A label echoed in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ScriptArgs {
    #[arg(long, value_enum)]
    deliveries: Deliveries,
    /// Size of the duplicate set (delivery ids `1`..=N, pre-claimed by the setup SQL).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    duplicate_set: u32,
    /// The statement each transaction runs.
    #[arg(long, value_enum, default_value_t = Statement::Claim)]
    statement: Statement,
    /// Where to write the pgbench script; the duplicate variant also writes `<out>.setup.sql`.
    /// The `-D name=value` arguments pgbench needs are printed on stdout, one per line.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_blocking(args),
        Command::PgbenchScript(args) => pgbench_script(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_blocking(args: RunArgs) -> Result<()> {
    ensure!(
        args.target.ip().is_loopback(),
        "refusing to load {}: only loopback targets (127.0.0.0/8, ::1) are allowed",
        args.target
    );
    if args.mode == Mode::FixedRate {
        ensure!(
            args.rate.is_finite() && args.rate > 0.0 && args.rate <= 1_000_000.0,
            "--rate must be between 0 and 1000000 requests/s"
        );
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads as usize)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(args))
}

// ---------------------------------------------------------------------------------------
// Bodies: one serialised template, fields patched in place.

/// Byte ranges of each fixed-length field in the serialised template.
struct Template {
    bytes: Vec<u8>,
    delivery: Vec<usize>,
    name: Vec<usize>,
    request_uid: Vec<usize>,
    object_uid: Vec<usize>,
}

/// The values that make one request.
struct Fields<'a> {
    delivery: &'a [u8; UUID_LEN],
    name: &'a [u8; NAME_LEN],
    request_uid: &'a [u8; UUID_LEN],
    object_uid: &'a [u8; UUID_LEN],
}

fn offsets(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

fn random_uuid(rng: &mut impl Rng) -> [u8; UUID_LEN] {
    let uuid = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
    let mut out = [0u8; UUID_LEN];
    uuid.hyphenated().encode_lower(&mut out);
    out
}

fn run_name(n: u64) -> [u8; NAME_LEN] {
    let mut out = [0u8; NAME_LEN];
    let text = format!("lg-{n:016x}");
    out.copy_from_slice(text.as_bytes());
    out
}

impl Template {
    fn new() -> Result<Self> {
        let mut rng = rand::rng();
        // Random placeholders cannot collide with anything in the fixture.
        let delivery = random_uuid(&mut rng);
        let name = run_name(rng.random());
        let (delivery_s, name_s) = (std::str::from_utf8(&delivery)?, std::str::from_utf8(&name)?);
        let review = Review::create(delivery_s, name_s)?;
        let (request_uid, object_uid) = (review.request_uid(), review.object_uid());
        let bytes = serde_json::to_vec(review.json())?;
        let template = Self {
            delivery: offsets(&bytes, &delivery),
            name: offsets(&bytes, &name),
            request_uid: offsets(&bytes, request_uid.as_bytes()),
            object_uid: offsets(&bytes, object_uid.as_bytes()),
            bytes,
        };
        ensure!(
            template.delivery.len() >= 2
                && template.name.len() >= 2
                && template.request_uid.len() == 1
                && !template.object_uid.is_empty()
                && request_uid.len() == UUID_LEN
                && object_uid.len() == UUID_LEN,
            "the fixture does not have the expected delivery/name/uid fields"
        );
        template.self_check()?;
        Ok(template)
    }

    fn render(&self, fields: &Fields<'_>) -> Bytes {
        let mut out = self.bytes.clone();
        for &at in &self.delivery {
            out[at..at + UUID_LEN].copy_from_slice(fields.delivery);
        }
        for &at in &self.name {
            out[at..at + NAME_LEN].copy_from_slice(fields.name);
        }
        for &at in &self.request_uid {
            out[at..at + UUID_LEN].copy_from_slice(fields.request_uid);
        }
        for &at in &self.object_uid {
            out[at..at + UUID_LEN].copy_from_slice(fields.object_uid);
        }
        Bytes::from(out)
    }

    /// A patched body must equal the same review built through `Review`.
    fn self_check(&self) -> Result<()> {
        let mut rng = rand::rng();
        let (delivery, request_uid, object_uid) = (
            random_uuid(&mut rng),
            random_uuid(&mut rng),
            random_uuid(&mut rng),
        );
        let name = run_name(42);
        let body = self.render(&Fields {
            delivery: &delivery,
            name: &name,
            request_uid: &request_uid,
            object_uid: &object_uid,
        });
        let patched: Value = serde_json::from_slice(&body)?;
        let (request_uid, object_uid) = (
            std::str::from_utf8(&request_uid)?.to_owned(),
            std::str::from_utf8(&object_uid)?.to_owned(),
        );
        let expected =
            Review::create(std::str::from_utf8(&delivery)?, std::str::from_utf8(&name)?)?.edit(|v| {
                v["request"]["uid"] = request_uid.into();
                v["request"]["object"]["metadata"]["uid"] = object_uid.into();
            });
        ensure!(
            &patched == expected.json(),
            "patched template differs from the review built from the fixture"
        );
        Ok(())
    }
}

/// What the fixture's claim key is made of (for the pgbench side).
struct KeyParts {
    namespace: String,
    orchestration: String,
}

fn key_parts() -> Result<KeyParts> {
    let review = Review::create("00000000-0000-4000-8000-000000000000", "run")?;
    let request = &review.json()["request"];
    let namespace = request["namespace"].as_str().unwrap_or_default().to_owned();
    let orchestration = request["object"]["spec"]["orchestrationRef"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        !namespace.is_empty() && !orchestration.is_empty(),
        "fixture lacks a namespace or orchestrationRef"
    );
    Ok(KeyParts {
        namespace,
        orchestration,
    })
}

// ---------------------------------------------------------------------------------------
// Running.

#[derive(Default)]
struct Stats {
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
struct Plan {
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
}

/// Fast check of an answer: HTTP 200, the request's uid echoed, the expected decision.
/// Anything else is classified (parsing the JSON only on that rare path).
fn classify(reply: &Reply, request_uid: &[u8], deliveries: Deliveries) -> Option<String> {
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
enum Schedule {
    Closed,
    Open(mpsc::UnboundedReceiver<Instant>),
}

/// The open-loop clock (fixed-rate): a plain thread that sleeps to each scheduled send time
/// (`start + k/rate`, to within the OS timer slack, well under the tokio timer's 1 ms tick)
/// and hands it to connection `k mod N`. A connection still busy with its previous request
/// finds the time queued and sends late: the delay counts in that request's latency.
fn pace(start: Instant, end: Instant, rate: f64, senders: Vec<mpsc::UnboundedSender<Instant>>) {
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
async fn drive(
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
async fn claim_duplicate_set(
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
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

async fn run(args: RunArgs) -> Result<()> {
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

fn percentiles(mut ns: Vec<u64>) -> Value {
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

fn report(args: &RunArgs, stats: Stats, elapsed_all: f64, cpu: Option<f64>) {
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

// ---------------------------------------------------------------------------------------
// The pgbench baseline.

/// The durable baseline of issue 10: the least a claim can be, one unique insert that
/// ignores a conflict, one transaction (and with `fsync=on` one WAL flush) per claim.
/// Not the product's SQL: the benchmark's yardstick.
const DURABLE_INSERT: &str = "INSERT INTO orchestration_dedupe_claims
        (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state)
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')
    ON CONFLICT (delivery_id, scope, namespace, orchestration) DO NOTHING";

/// Which statement the pgbench script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Statement {
    /// The webhook's own claim statement (the same-SQL comparison).
    Claim,
    /// A bare `INSERT … ON CONFLICT DO NOTHING` (the durable-insert baseline).
    Insert,
}

/// Replaces `$n` placeholders with pgbench `:variables` (longest number first is not
/// needed: a placeholder ends at the first non-digit).
fn to_pgbench(sql: &str, names: &[&str]) -> Result<String> {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(&(_, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            digits.push(d);
            chars.next();
        }
        let n: usize = digits.parse().with_context(|| "a `$` not followed by a number")?;
        let name = names
            .get(n.wrapping_sub(1))
            .with_context(|| format!("no variable for ${n}"))?;
        out.push(':');
        out.push_str(name);
    }
    Ok(out)
}

fn pgbench_script(args: &ScriptArgs) -> Result<()> {
    let names = [
        "delivery",
        "scope",
        "namespace",
        "orchestration",
        "run_namespace",
        "run_name",
        "run_uid",
    ];
    let (sql, what) = match args.statement {
        Statement::Claim => (
            dedupe_shared::sql::CLAIM_INSERT,
            "The webhook's claim statement (dedupe_shared::sql::CLAIM_INSERT)",
        ),
        Statement::Insert => (
            DURABLE_INSERT,
            "One unique INSERT … ON CONFLICT DO NOTHING per claim",
        ),
    };
    let claim = to_pgbench(sql, &names)?;
    let parts = key_parts()?;
    let mut script = String::new();
    let _ = writeln!(script, "-- {what}, parameters as pgbench variables.");
    match args.deliveries {
        // 19-digit random ids: a new delivery every time (collisions: ~1e-8 over a run).
        Deliveries::New => {
            script.push_str("\\set delivery random(1000000000000000000, 9223372036854775806)\n")
        }
        // Ids `1`..=N, claimed by the setup SQL under other run names: every call a duplicate.
        Deliveries::Duplicate => {
            let _ = writeln!(script, "\\set delivery random(1, {})", args.duplicate_set);
        }
    }
    script.push_str(&claim);
    script.push_str(";\n");
    std::fs::write(&args.out, script).with_context(|| format!("writing {}", args.out.display()))?;
    if args.deliveries == Deliveries::Duplicate {
        let setup = format!(
            "INSERT INTO orchestration_dedupe_claims \
             (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state) \
             SELECT g::text, 'orchestration', '{ns}', '{orch}', '{ns}', 'pgbench-holder-' || g, md5(g::text), 'pending' \
             FROM generate_series(1, {n}) g ON CONFLICT DO NOTHING;\n",
            ns = parts.namespace.replace('\'', "''"),
            orch = parts.orchestration.replace('\'', "''"),
            n = args.duplicate_set,
        );
        let mut path = args.out.clone().into_os_string();
        path.push(".setup.sql");
        std::fs::write(&path, setup).context("writing the setup SQL")?;
    }
    // Fixed values for the other parameters: the fixture's key parts, scope `orchestration`
    // (the webhook's default), and a run that is not the holder.
    for (name, value) in [
        ("scope", "orchestration"),
        ("namespace", parts.namespace.as_str()),
        ("orchestration", parts.orchestration.as_str()),
        ("run_namespace", parts.namespace.as_str()),
        ("run_name", "pgbench-run"),
        ("run_uid", "3f2a9c4e-8b1d-4c7a-9e55-1d2b3c4d5e6f"),
    ] {
        println!("{name}={value}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_variables() -> Result<()> {
        let out = to_pgbench(
            "VALUES ($1, $2) WHERE x = $1 AND y = $10",
            &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
        )?;
        assert_eq!(out, "VALUES (:a, :b) WHERE x = :a AND y = :j");
        assert!(to_pgbench("$3", &["a"]).is_err());
        Ok(())
    }

    #[test]
    fn the_template_patches_to_the_fixture_review() -> Result<()> {
        Template::new().map(|_| ())
    }
}
