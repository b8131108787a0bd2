//! Store-level claim benchmark (docs/BENCHMARKS.md, "Group commit"): N concurrent callers
//! claim new deliveries through `ClaimStore::claim` for a fixed time, with or without group
//! commit, against `DATABASE_URL`; prints one JSON line (claims/s, latency percentiles, how
//! many claims each batch carried). No HTTP, no TLS: what the store path alone costs.
//!
//! `claimbench --callers 32 --pool-size 16 --group-commit --in-flight 4 --max-batch 64`

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use dedupe_store::{ClaimKey, ClaimOutcome, ClaimScope, ClaimStore, GroupCommitConfig, RunRef, StoreConfig};

#[derive(Debug, Parser)]
#[command(
    name = "claimbench",
    about = "Claims per second through ClaimStore, with or without group commit"
)]
struct Args {
    /// Concurrent callers (each one claim at a time, closed loop).
    #[arg(long, default_value_t = 32)]
    callers: usize,
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    #[arg(long)]
    group_commit: bool,
    #[arg(long, default_value_t = dedupe_store::group_commit::DEFAULT_IN_FLIGHT)]
    in_flight: usize,
    #[arg(long, default_value_t = dedupe_store::group_commit::DEFAULT_MAX_BATCH)]
    max_batch: usize,
    #[arg(long, default_value_t = dedupe_store::group_commit::DEFAULT_LINGER.as_micros() as u64)]
    linger_us: u64,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Every claim a duplicate of one delivery (a redelivery storm) instead of a new one.
    #[arg(long)]
    storm: bool,
    #[arg(long, default_value = "")]
    label: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL")?;
    let config = StoreConfig::new(&url, args.pool_size, Duration::from_secs(10))?;
    let mut store = ClaimStore::new(&config)?;
    store.migrate().await?;
    if args.group_commit {
        store = store.with_group_commit(GroupCommitConfig {
            max_batch: args.max_batch,
            in_flight: args.in_flight,
            linger: Duration::from_micros(args.linger_us),
        });
    }
    let storm_key = ClaimKey::new(
        ClaimScope::Orchestration,
        "agents",
        "codex",
        &uuid::Uuid::new_v4().to_string(),
    );
    if args.storm {
        store.claim(&storm_key, &run()).await?;
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_secs);
    let end = measure_from + Duration::from_secs(args.duration_secs);
    let before = store.group_commit_stats();
    let tasks: Vec<_> = (0..args.callers)
        .map(|_| {
            let (store, storm_key) = (store.clone(), storm_key.clone());
            let storm = args.storm;
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    let key = if storm {
                        storm_key.clone()
                    } else {
                        ClaimKey::new(
                            ClaimScope::Orchestration,
                            "agents",
                            "codex",
                            &uuid::Uuid::new_v4().to_string(),
                        )
                    };
                    let ok = match store.claim(&key, &run()).await {
                        Ok(ClaimOutcome::Claimed(_)) => !storm,
                        Ok(ClaimOutcome::HeldBy(_)) => storm,
                        _ => false,
                    };
                    if now >= measure_from {
                        if ok {
                            latencies.push(now.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    let after = store.group_commit_stats();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let per_batch = match (before, after) {
        (Some(b), Some(a)) if a.batches > b.batches => {
            Some((a.claims - b.claims) as f64 / (a.batches - b.batches) as f64)
        }
        _ => None,
    };
    println!(
        "{}",
        serde_json::json!({
            "label": args.label,
            "callers": args.callers,
            "pool_size": args.pool_size,
            "group_commit": args.group_commit,
            "in_flight": args.in_flight,
            "max_batch": args.max_batch,
            "linger_us": args.linger_us,
            "storm": args.storm,
            "claims_per_sec": all.len() as f64 / args.duration_secs as f64,
            "errors": errors,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "claims_per_batch": per_batch,
        })
    );
    Ok(())
}

fn run() -> RunRef {
    let uid = uuid::Uuid::new_v4().to_string();
    RunRef {
        namespace: "agents".into(),
        name: format!("run-{}", &uid[..8]),
        uid,
    }
}
