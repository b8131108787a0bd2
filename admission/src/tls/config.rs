//! TLS configuration from files: read them (bounded, consistently), parse the PEM and
//! X.509, and build the rustls `ServerConfig` (optional client CA, ALPN).

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::settings::{FileKind, TlsError, TlsSettings, ALPN_H2, ALPN_HTTP11};

/// A consistent read needs the same bytes twice in a row; give up after this many tries.
const STABLE_READ_ATTEMPTS: usize = 3;
const STABLE_READ_PAUSE: Duration = Duration::from_millis(50);
/// Mounted Secrets are at most 1 MiB; anything larger is not a certificate file.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The raw bytes of the configured files.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

fn read_file(what: FileKind, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(TlsError::Invalid {
            what,
            path: path.to_path_buf(),
            detail: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

fn read_all(settings: &TlsSettings) -> Result<Material, TlsError> {
    Ok(Material {
        cert: read_file(FileKind::Certificate, &settings.cert)?,
        key: read_file(FileKind::PrivateKey, &settings.key)?,
        client_ca: settings
            .client_ca
            .as_deref()
            .map(|path| read_file(FileKind::ClientCa, path))
            .transpose()?,
    })
}

/// Reads all files until two reads in a row agree, so a reload does not pair a certificate
/// from before a replacement with a key from after it.
pub(super) fn read_stable(settings: &TlsSettings) -> Result<Material, TlsError> {
    let mut material = read_all(settings)?;
    for _ in 0..STABLE_READ_ATTEMPTS {
        let again = read_all(settings)?;
        if again == material {
            break;
        }
        material = again;
        std::thread::sleep(STABLE_READ_PAUSE);
    }
    Ok(material)
}

fn invalid(what: FileKind, path: &Path, detail: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn parse_certs(bytes: &[u8], what: FileKind, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(what, path, "no PEM `CERTIFICATE` block found"));
    }
    for (i, cert) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(cert) {
            return Err(invalid(
                what,
                path,
                format!("certificate #{} is not valid X.509: {e}", i + 1),
            ));
        }
    }
    Ok(certs)
}

fn parse_key(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => invalid(
            FileKind::PrivateKey,
            path,
            "no PEM private key found (expected `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)",
        ),
        other => invalid(FileKind::PrivateKey, path, format!("not valid PEM: {other}")),
    })
}

fn leaf_not_after(leaf: &CertificateDer<'_>, path: &Path) -> Result<i64, TlsError> {
    x509_parser::parse_x509_certificate(leaf)
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .map_err(|e| invalid(FileKind::Certificate, path, format!("not valid X.509: {e}")))
}

fn alpn(http2: bool) -> Vec<Vec<u8>> {
    if http2 {
        vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
    } else {
        vec![ALPN_HTTP11.to_vec()]
    }
}

pub(super) static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

pub(super) fn build(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
    material: &Material,
) -> Result<(Arc<ServerConfig>, i64), TlsError> {
    let chain = parse_certs(&material.cert, FileKind::Certificate, &settings.cert)?;
    let not_after = match chain.first() {
        Some(leaf) => leaf_not_after(leaf, &settings.cert)?,
        None => return Err(invalid(FileKind::Certificate, &settings.cert, "no certificate")),
    };
    let key = parse_key(&material.key, &settings.key)?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => TlsError::KeyMismatch {
            cert: settings.cert.clone(),
            key: settings.key.clone(),
        },
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => invalid(
            FileKind::Certificate,
            &settings.cert,
            format!("rustls cannot use it: {e}"),
        ),
        other => invalid(
            FileKind::PrivateKey,
            &settings.key,
            format!("rustls cannot use it: {other}"),
        ),
    })?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsError::Config)?;
    let builder = match (&settings.client_ca, &material.client_ca) {
        (Some(path), Some(bytes)) => {
            let mut roots = RootCertStore::empty();
            for (i, ca) in parse_certs(bytes, FileKind::ClientCa, path)?
                .into_iter()
                .enumerate()
            {
                roots.add(ca).map_err(|e| {
                    invalid(
                        FileKind::ClientCa,
                        path,
                        format!("certificate #{} is not a usable trust anchor: {e}", i + 1),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| invalid(FileKind::ClientCa, path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = alpn(settings.http2);
    Ok((Arc::new(config), not_after))
}

pub(super) fn warn_if_expired(path: &Path, not_after: i64) {
    let now = chrono::Utc::now().timestamp();
    if not_after <= now {
        tracing::warn!(
            cert = %path.display(),
            not_after,
            "the TLS serving certificate has expired; the API server will refuse it"
        );
    }
}
