//! `with-kube -- COMMAND...`: runs COMMAND beside a real Kubernetes control plane.
//!
//! With `KUBEBUILDER_ASSETS` naming a directory holding `kube-apiserver` and `etcd`
//! (envtest's layout), starts both on loopback with the OrchestrationRun CRD established,
//! runs COMMAND with `DEDUPE_TEST_KUBE_DIR` naming the control plane's directory (see
//! `dedupe_tests::kube`), and stops them and removes their data when COMMAND ends, also when
//! it fails. Without `KUBEBUILDER_ASSETS`, runs COMMAND as it is. A `KUBEBUILDER_ASSETS` that
//! does not hold both binaries is an error: a run that asked for the real API server never
//! silently goes without it. Exits with COMMAND's exit code.

use std::process::ExitCode;

use anyhow::{Context, Result};
use dedupe_tests::kube::{assets_from_env, ControlPlane, KUBE_DIR_ENV};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("with-kube: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run() -> Result<ExitCode> {
    let mut command = dedupe_tests::wrapper::command_from_args("with-kube")?;
    let Some(assets) = assets_from_env()? else {
        return dedupe_tests::wrapper::run_to_end(command).await;
    };
    let started = std::time::Instant::now();
    let mut plane = ControlPlane::start(&assets)
        .await
        .with_context(|| format!("starting kube-apiserver and etcd from {}", assets.display()))?;
    eprintln!(
        "with-kube: started kube-apiserver at {} (etcd, OrchestrationRun CRD) from {} in {:.1}s (removed on exit)",
        plane.server(),
        assets.display(),
        started.elapsed().as_secs_f64()
    );
    command.env(KUBE_DIR_ENV, plane.dir());
    let code = dedupe_tests::wrapper::run_to_end(command).await;
    plane.stop();
    code
}
