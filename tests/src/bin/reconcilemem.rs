//! The reconciler's memory while it back-fills many runs, and after relists: creates
//! `--runs` OrchestrationRuns (each with a `--param-bytes` parameter) on a private real
//! kube-apiserver (loopback only, `--concurrency` creates in flight), then for each
//! `--binary LABEL=PATH` starts that `dedupe-admission` with `--reconcile on --kube-lookup
//! off` on a fresh claims schema and samples `/proc/PID/status` (VmHWM, VmRSS): idle (an
//! empty namespace), the back-fill's peak, after the list, and after each API-server
//! restart (a relist). Run under `with-postgres` with `KUBEBUILDER_ASSETS` set:
//! `tests/bench/reconcile_memory.sh` does it. Prints one JSON line per binary.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use dedupe_tests::kube::{run_api, ControlPlane, NewRun};
use dedupe_tests::{new_delivery, TestCerts, TestDb, Webhook, RECONCILE_LAST_SYNC};
use futures::stream::{self, StreamExt, TryStreamExt};
use kube::api::PostParams;

#[derive(Parser)]
struct Args {
    /// Runs to create.
    #[arg(long, default_value_t = 10_000)]
    runs: usize,
    /// Size of the `spec.parameters.prompt` each run carries.
    #[arg(long, default_value_t = 4096)]
    param_bytes: usize,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// API-server restarts (each makes the reconciler relist) after the back-fill.
    #[arg(long, default_value_t = 2)]
    relists: usize,
    /// `LABEL=PATH` of a dedupe-admission binary to measure; repeatable, measured in order.
    #[arg(long = "binary", required = true)]
    binaries: Vec<String>,
    /// How long to wait for a sync before giving up on a binary.
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
}

/// Peak and current resident memory of a process, MiB.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    hwm: f64,
    rss: f64,
}

fn mem(webhook: &Webhook) -> Result<Mem> {
    let mib = |bytes: i64| bytes as f64 / (1024.0 * 1024.0);
    let memory = webhook.memory()?;
    Ok(Mem {
        hwm: mib(memory.hwm),
        rss: mib(memory.rss),
    })
}

/// Waits until the last-sync metric passes `after`, sampling memory every 50 ms; returns
/// the seconds it took and the highest RSS seen.
async fn until_synced(webhook: &Webhook, after: f64, timeout: Duration) -> Result<(f64, f64)> {
    let started = Instant::now();
    let mut peak_rss: f64 = 0.0;
    let mut polls = 0u32;
    loop {
        peak_rss = peak_rss.max(mem(webhook)?.rss);
        polls += 1;
        if polls.is_multiple_of(5) && webhook.metric(RECONCILE_LAST_SYNC).await? > after {
            return Ok((started.elapsed().as_secs_f64(), peak_rss));
        }
        if started.elapsed() > timeout {
            bail!("no sync within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// RSS after `settle`, sampled at its end.
async fn settled(webhook: &Webhook, settle: Duration) -> Result<Mem> {
    tokio::time::sleep(settle).await;
    mem(webhook)
}

const SETTLE: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut cp = ControlPlane::start_private().await?;
    let idle_ns = cp.namespace("bench-idle").await?;
    let ns = cp.namespace("bench-runs").await?;
    let client = cp.admin_client().await?;
    let param = "p".repeat(args.param_bytes);
    let started = Instant::now();
    let created = std::sync::atomic::AtomicUsize::new(0);
    stream::iter(0..args.runs)
        .map(|i| {
            let (client, ns, param, created) = (client.clone(), ns.clone(), &param, &created);
            async move {
                let mut object = NewRun::submitted(&new_delivery(), "codex-autonomous")
                    .named(&format!("run-{i:06}"))
                    .object(&ns)?;
                object.data["spec"]["parameters"]["prompt"] = serde_json::Value::String(param.clone());
                run_api(client, &ns)
                    .create(&PostParams::default(), &object)
                    .await
                    .with_context(|| format!("creating run {i}"))?;
                let n = created.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_multiple_of(10_000) {
                    eprintln!("created {n} runs in {:.0} s", started.elapsed().as_secs_f64());
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    let create_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "created {} runs with a {} B parameter in {create_seconds:.0} s",
        args.runs, args.param_bytes
    );
    let kubeconfig = cp.admin_kubeconfig();
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let certs = TestCerts::new()?;
    let timeout = Duration::from_secs(args.timeout_seconds);

    for spec in &args.binaries {
        let (label, path) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--binary wants LABEL=PATH, got {spec}"))?;
        // The harness starts the binary this names (tests/src/binaries.rs).
        std::env::set_var("DEDUPE_ADMISSION_BIN", path);
        let start = |db: TestDb, namespace: String| {
            let (certs, kubeconfig) = (&certs, &kubeconfig);
            async move {
                let webhook = Webhook::start(
                    db.url(),
                    certs,
                    &[
                        "--reconcile",
                        "on",
                        "--kube-lookup",
                        "off",
                        "--namespaces",
                        &namespace,
                    ],
                    &[("KUBECONFIG", kubeconfig.as_str())],
                )
                .await?;
                anyhow::Ok((db, webhook))
            }
        };

        let (_idle_db, mut idle) = start(TestDb::new().await?, idle_ns.clone()).await?;
        until_synced(&idle, 0.0, timeout).await?;
        let idle_mem = settled(&idle, SETTLE).await?;
        idle.terminate().await?;

        let (_db, mut webhook) = start(TestDb::new().await?, ns.clone()).await?;
        let (backfill_seconds, _) = until_synced(&webhook, 0.0, timeout).await?;
        let backfill_peak = mem(&webhook)?.hwm;
        let after_list = settled(&webhook, SETTLE).await?;
        let mut after_relists = Vec::new();
        for _ in 0..args.relists {
            let before = webhook.metric(RECONCILE_LAST_SYNC).await?;
            // The sync metric has one-second resolution: let a second pass so a new sync shows.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            cp.stop_apiserver()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            cp.start_apiserver().await?;
            match until_synced(&webhook, before, timeout).await {
                Ok(_) => after_relists.push(settled(&webhook, SETTLE).await?),
                Err(e) => {
                    eprintln!("{label}: {e} after an API-server restart");
                    break;
                }
            }
        }
        let last = after_relists.last().copied().unwrap_or(after_list);
        let listed = webhook
            .logs()
            .iter()
            .filter(|l| l.contains("reconciler listed runs"))
            .count();
        println!(
            "{}",
            serde_json::json!({
                "binary": label,
                "runs": args.runs,
                "param_bytes": args.param_bytes,
                "idle_rss_mib": round(idle_mem.rss),
                "backfill_seconds": round(backfill_seconds),
                "backfill_peak_mib": round(backfill_peak),
                "after_list_rss_mib": round(after_list.rss),
                "after_relists_rss_mib": after_relists.iter().map(|m| round(m.rss)).collect::<Vec<_>>(),
                "peak_overall_mib": round(last.hwm),
                "lists_logged": listed,
            })
        );
        webhook.terminate().await?;
    }
    cp.stop();
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
