//! A fake Kubernetes API server over plain HTTP on loopback — the only mock the tests use.
//! It answers `GET` of one OrchestrationRun by namespace/name (200 or 404) and records every
//! path it was asked for, so tests can check the webhook looks runs up by name.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Result;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

#[derive(Default)]
struct Inner {
    existing: HashSet<(String, String)>,
    requests: Vec<String>,
}

/// The fake API server; dropped with the test (its task ends with the runtime).
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
    kubeconfig: Arc<tempfile::NamedTempFile>,
}

impl FakeApiServer {
    /// Plain HTTP.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// HTTPS with a dev certificate for 127.0.0.1, its CA in the kubeconfig — the way a real
    /// API server is reached, so the webhook's kube client TLS stack is exercised too.
    pub async fn start_tls() -> Result<Self> {
        let certs = certs_dev::generate(&certs_dev::CertRequest::localhost())?;
        Self::start_with(Some(certs)).await
    }

    async fn start_with(tls: Option<certs_dev::DevCerts>) -> Result<Self> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let router = Router::new()
            .route(
                "/apis/orchestration.proompteng.ai/v1alpha1/namespaces/{namespace}/orchestrationruns/{name}",
                get(get_run),
            )
            .fallback(other)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cluster = match &tls {
            None => {
                tokio::spawn(async move {
                    let _ = axum::serve(listener, router).await;
                });
                format!("server: http://{addr}")
            }
            Some(certs) => {
                let acceptor = tls_acceptor(certs)?;
                tokio::spawn(serve_tls(listener, acceptor, router));
                format!(
                    "server: https://{addr}\n    certificate-authority-data: {}",
                    certs.ca_bundle_base64()
                )
            }
        };
        let kubeconfig = tempfile::Builder::new()
            .prefix("kubeconfig-")
            .suffix(".yaml")
            .tempfile()?;
        std::fs::write(
            kubeconfig.path(),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    {cluster}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
                 current-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\n"
            ),
        )?;
        Ok(Self {
            inner,
            addr,
            kubeconfig: Arc::new(kubeconfig),
        })
    }

    /// A kubeconfig pointing at this server (pass as `KUBECONFIG`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.path().to_path_buf()
    }

    /// Makes run `namespace/name` exist.
    pub fn add_run(&self, namespace: &str, name: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.existing.insert((namespace.to_owned(), name.to_owned()));
        }
    }

    /// Paths requested so far.
    pub fn requests(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .requests
            .clone()
    }
}

async fn get_run(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((namespace, name)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    let exists = match inner.lock() {
        Ok(mut inner) => {
            inner.requests.push(uri.path().to_owned());
            inner.existing.contains(&(namespace.clone(), name.clone()))
        }
        Err(_) => false,
    };
    if exists {
        Json(json!({
            "apiVersion": "orchestration.proompteng.ai/v1alpha1",
            "kind": "OrchestrationRun",
            "metadata": {"name": name, "namespace": namespace, "uid": "fake-uid"},
            "spec": {"orchestrationRef": {"name": "demo-orchestration"}}
        }))
        .into_response()
    } else {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("orchestrationruns.orchestration.proompteng.ai \"{name}\" not found"),
            "reason": "NotFound", "details": {"name": name, "group": "orchestration.proompteng.ai", "kind": "orchestrationruns"},
            "code": 404
        });
        (StatusCode::NOT_FOUND, Json(status)).into_response()
    }
}

async fn other(State(inner): State<Arc<Mutex<Inner>>>, uri: Uri) -> Response {
    if let Ok(mut inner) = inner.lock() {
        inner.requests.push(uri.path().to_owned());
    }
    (StatusCode::NOT_FOUND, "not served by the fake API server").into_response()
}

fn tls_acceptor(certs: &certs_dev::DevCerts) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain =
        CertificateDer::pem_slice_iter(certs.server_cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(certs.server_key_pem.as_bytes())?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve_tls(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor, router: Router) {
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
