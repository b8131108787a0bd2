//! A small HTTPS/1.1 client over rustls + hyper for the tests and the load generator:
//! real TLS, keep-alive connections, trusting only the dev CA.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Trusts one CA; optionally presents a client certificate (mTLS).
#[derive(Clone)]
pub struct HttpsClient {
    connector: TlsConnector,
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    server_name: ServerName<'static>,
}

/// The answer to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("reply is not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing PEM certificates")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl HttpsClient {
    /// A client for `addr` that trusts `ca_pem` and checks the certificate for `server_name`.
    pub fn new(addr: SocketAddr, ca_pem: &str, server_name: &str) -> Result<Self> {
        Self::build(addr, ca_pem, server_name, None)
    }

    /// Same, presenting a client certificate.
    pub fn with_client_cert(
        addr: SocketAddr,
        ca_pem: &str,
        server_name: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self> {
        Self::build(addr, ca_pem, server_name, Some((cert_pem, key_pem)))
    }

    fn build(
        addr: SocketAddr,
        ca_pem: &str,
        server_name: &str,
        client: Option<(&str, &str)>,
    ) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs(ca_pem)? {
            roots.add(cert)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let key =
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).context("parsing the PEM private key")?;
                builder.with_client_auth_cert(certs(cert)?, key)?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        Ok(Self {
            connector: TlsConnector::from(config.clone()),
            config,
            addr,
            server_name: ServerName::try_from(server_name.to_owned())?,
        })
    }

    /// Opens one keep-alive connection (TCP + TLS handshake).
    pub async fn connect(&self) -> Result<Connection> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        let peer_certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            sender,
            host: self.server_name.to_str().into_owned(),
            peer_certificate,
        })
    }

    /// A TLS connection offering `alpn` (e.g. `h2`) and nothing on top: for tests that
    /// write raw bytes, or speak HTTP/2 themselves.
    pub async fn tls(&self, alpn: &[&[u8]]) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(Arc::new(config))
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")
    }

    /// One request on a fresh connection.
    pub async fn post(&self, path: &str, content_type: &str, body: impl Into<Bytes>) -> Result<Reply> {
        self.connect().await?.post(path, content_type, body).await
    }
}

/// One open HTTPS connection; requests on it reuse the TLS session.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    /// DER of the certificate the server presented in this connection's handshake.
    pub peer_certificate: Option<Vec<u8>>,
}

impl Connection {
    pub async fn post(&mut self, path: &str, content_type: &str, body: impl Into<Bytes>) -> Result<Reply> {
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::USER_AGENT, "kube-apiserver-admission")
            .body(Full::new(body.into()))?;
        self.sender.ready().await?;
        read_reply(self.sender.send_request(request).await?).await
    }

    /// An AdmissionReview POST as the API server sends it.
    pub async fn review(&mut self, body: &serde_json::Value) -> Result<Reply> {
        self.post(
            "/validate?timeout=5s",
            "application/json",
            serde_json::to_vec(body)?,
        )
        .await
    }
}

/// A plain-HTTP GET (for `/healthz`, `/readyz`, `/metrics`).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<Reply> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    read_reply(sender.send_request(request).await?).await
}

async fn read_reply(response: hyper::Response<hyper::body::Incoming>) -> Result<Reply> {
    let status = response.status();
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        content_type,
        body,
    })
}
