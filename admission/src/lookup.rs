//! Asking the API server for the run a claim names: whether a stale pending claim's run
//! exists (take-over), and whether an updated or deleted run's pending claim can be
//! confirmed. Behind a small trait so the decision path does not depend on a cluster; tests
//! point the real kube client at a fake API server.
//!
//! The lookup returns what it found, not a yes/no: "the holder exists" means a run with
//! that namespace/name exists *and* carries the claim's key ([`holds`]). A name reused by
//! another delivery's run is not the holder.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use async_trait::async_trait;
use dedupe_store::error::Chain;
use dedupe_store::{ClaimKey, RunRef, RunView};
use kube::api::Api;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::{KubeLookup, Reconcile};
use crate::orchestration_run::OrchestrationRun;
use crate::reconcile::activity::WatchActivityLayer;

/// Reads a run by namespace/name, never by uid: a retried create of the same name gets a
/// new uid.
#[async_trait]
pub trait RunLookup: Send + Sync {
    /// The run as the API server shows it, or `None` when there is no run of that name.
    async fn get_run(&self, run: &RunRef) -> Result<Option<RunView>, LookupError>;
}

/// True when `found` is the run `holder` names (same namespace/name) and carries `key`:
/// the same delivery id and, for the `orchestration` scope, the same orchestration.
pub fn holds(found: &RunView, holder: &RunRef, key: &ClaimKey) -> bool {
    found.namespace == holder.namespace
        && found.name == holder.name
        && found.claim_key(key.scope).as_ref() == Some(key)
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("API server lookup of {run} failed")]
    Failed {
        run: String,
        #[source]
        source: kube::Error,
    },
    #[error("API server lookup of {run} timed out after {timeout:?}")]
    Timeout { run: String, timeout: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum LookupSetupError {
    #[error("--{flag} on: no usable cluster configuration (in-cluster or kubeconfig): {reason}")]
    NoConfig { flag: &'static str, reason: String },
}

/// `GET /apis/orchestration.proompteng.ai/v1alpha1/namespaces/{ns}/orchestrationruns/{name}`.
pub struct KubeRunLookup {
    client: kube::Client,
    timeout: Duration,
}

impl KubeRunLookup {
    pub fn new(client: kube::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }
}

#[async_trait]
impl RunLookup for KubeRunLookup {
    async fn get_run(&self, run: &RunRef) -> Result<Option<RunView>, LookupError> {
        // The slim typed run: only the claim's fields are kept of what the API server sends.
        let api: Api<OrchestrationRun> = Api::namespaced(self.client.clone(), &run.namespace);
        match tokio::time::timeout(self.timeout, api.get_opt(&run.name)).await {
            Ok(Ok(found)) => Ok(found.map(OrchestrationRun::into_view)),
            Ok(Err(source)) => Err(LookupError::Failed {
                run: run.to_string(),
                source,
            }),
            Err(_) => Err(LookupError::Timeout {
                run: run.to_string(),
                timeout: self.timeout,
            }),
        }
    }
}

/// The API-server client shared by the lookup and the reconciler, per `--kube-lookup` and
/// `--reconcile`: none when both are off; when either is `on`, cluster configuration is
/// required; with `auto` a missing configuration turns that feature off with a warning.
/// Its watch responses stamp `watch_activity` as they arrive ([`WatchActivityLayer`]).
pub async fn cluster_client(
    lookup: KubeLookup,
    reconcile: Reconcile,
    watch_activity: Gauge<i64, AtomicI64>,
) -> Result<Option<kube::Client>, LookupSetupError> {
    if lookup == KubeLookup::Off && reconcile == Reconcile::Off {
        return Ok(None);
    }
    let required = if lookup == KubeLookup::On {
        Some("kube-lookup")
    } else if reconcile == Reconcile::On {
        Some("reconcile")
    } else {
        None
    };
    let config = match (kube::Config::infer().await, required) {
        (Ok(config), _) => config,
        (Err(e), None) => {
            if lookup == KubeLookup::Auto {
                tracing::warn!(
                    error = %Chain(&e),
                    "no cluster configuration found: API-server lookup is off, so stale pending claims are never taken over"
                );
            }
            if reconcile == Reconcile::Auto {
                tracing::warn!(
                    error = %Chain(&e),
                    "no cluster configuration found: the reconciler is off, so runs without claims are not back-filled"
                );
            }
            return Ok(None);
        }
        (Err(e), Some(flag)) => {
            return Err(LookupSetupError::NoConfig {
                flag,
                reason: e.to_string(),
            })
        }
    };
    let layer = WatchActivityLayer {
        last_received: watch_activity,
    };
    let built = kube::client::ClientBuilder::try_from(config).map(|b| b.with_layer(&layer).build());
    match (built, required) {
        (Ok(client), _) => Ok(Some(client)),
        (Err(e), Some(flag)) => Err(LookupSetupError::NoConfig {
            flag,
            reason: e.to_string(),
        }),
        // `auto` degrades the same way as without configuration.
        (Err(e), None) => {
            tracing::warn!(
                error = %e,
                "cluster configuration found but unusable: API-server lookup and reconciler are off"
            );
            Ok(None)
        }
    }
}
