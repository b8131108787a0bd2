//! dedupe-pruner: deletes expired dedupe claims in batches (run by a Kubernetes CronJob).

mod config;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = config::Args::parse();
    dedupe_shared::telemetry::init(args.common.log_format);
    tracing::info!(
        retention_days = args.retention_days,
        max_runtime = ?args.max_runtime(),
        "dedupe-pruner: flags parsed; pruning comes with the pruner issue"
    );
    Ok(())
}
