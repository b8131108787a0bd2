//! Asking the API server whether the run named by a stale pending claim exists. Behind a
//! small trait so the decision path does not depend on a cluster; tests point the real
//! kube client at a fake API server over HTTP.

use std::time::Duration;

use async_trait::async_trait;
use dedupe_shared::error::Chain;
use dedupe_shared::run::{GROUP, KIND, RESOURCE, VERSION};
use dedupe_shared::RunRef;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;

use crate::config::KubeLookup;

/// Does the run exist in the API server? Looked up by namespace/name, never by uid: a
/// retried create of the same name gets a new uid.
#[async_trait]
pub trait RunLookup: Send + Sync {
    async fn run_exists(&self, run: &RunRef) -> Result<bool, LookupError>;
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
    #[error("--kube-lookup on: no usable cluster configuration (in-cluster or kubeconfig)")]
    NoConfig(#[source] kube::config::InferConfigError),
    #[error("--kube-lookup: cannot build a client from the cluster configuration")]
    Client(#[source] kube::Error),
}

/// `GET /apis/orchestration.proompteng.ai/v1alpha1/namespaces/{ns}/orchestrationruns/{name}`.
pub struct KubeRunLookup {
    client: kube::Client,
    resource: ApiResource,
    timeout: Duration,
}

#[async_trait]
impl RunLookup for KubeRunLookup {
    async fn run_exists(&self, run: &RunRef) -> Result<bool, LookupError> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &run.namespace, &self.resource);
        match tokio::time::timeout(self.timeout, api.get_opt(&run.name)).await {
            Ok(Ok(found)) => Ok(found.is_some()),
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

/// Builds the lookup per `--kube-lookup`: `off` → none; `on` → required (error if no
/// cluster configuration); `auto` → used when configuration is found, else none with a
/// warning. With no lookup there is no take-over: stale pending claims hold until retention.
pub async fn from_flag(
    mode: KubeLookup,
    timeout: Duration,
) -> Result<Option<KubeRunLookup>, LookupSetupError> {
    if mode == KubeLookup::Off {
        return Ok(None);
    }
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(e) if mode == KubeLookup::Auto => {
            tracing::warn!(
                error = %Chain(&e),
                "no cluster configuration found: API-server lookup is off, so stale pending claims are never taken over"
            );
            return Ok(None);
        }
        Err(e) => return Err(LookupSetupError::NoConfig(e)),
    };
    let client = kube::Client::try_from(config).map_err(LookupSetupError::Client)?;
    let gvk = GroupVersionKind::gvk(GROUP, VERSION, KIND);
    Ok(Some(KubeRunLookup {
        client,
        resource: ApiResource::from_gvk_with_plural(&gvk, RESOURCE),
        timeout,
    }))
}
