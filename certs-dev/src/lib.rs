//! Development certificates for local runs, tests and the demo: a throwaway CA, a serving
//! certificate signed by it for the DNS names and IP addresses given, and optionally a client
//! certificate from the same CA (to exercise the webhook's mTLS mode).
//!
//! Keys are ECDSA P-256. Nothing here is meant for production: the CA key is never written
//! to disk, so a CA made here can only sign more certificates while its [`DevCerts`] is alive
//! (see [`DevCerts::reissue`]).
//!
//! ```no_run
//! let certs = certs_dev::generate(&certs_dev::CertRequest::localhost())?;
//! let files = certs.write_to(std::path::Path::new("/tmp/dev-tls"))?;
//! println!("caBundle: {}", certs.ca_bundle_base64());
//! # let _ = files;
//! # Ok::<(), certs_dev::CertsError>(())
//! ```

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

pub mod managed;

/// Validity of the certificates when `--days` is not given.
pub const DEFAULT_DAYS: u32 = 365;
/// Longest validity accepted (ten years).
pub const MAX_DAYS: u32 = 3650;

/// File names written by [`DevCerts::write_to`] (the names a Kubernetes TLS Secret uses).
pub const CA_CERT_FILE: &str = "ca.crt";
pub const TLS_CERT_FILE: &str = "tls.crt";
pub const TLS_KEY_FILE: &str = "tls.key";
pub const CLIENT_CERT_FILE: &str = "client.crt";
pub const CLIENT_KEY_FILE: &str = "client.key";

/// Certificates are valid from this long before "now", so small clock skews between the
/// machine that made them and the one that checks them do not matter.
pub(crate) const BACKDATE_SECONDS: i64 = 3600;

/// What to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    /// DNS subject alternative names of the serving certificate (e.g.
    /// `orchestration-dedupe.agents.svc`). A leading `*.` label is allowed.
    pub dns_names: Vec<String>,
    /// IP subject alternative names of the serving certificate.
    pub ips: Vec<IpAddr>,
    /// Validity in days, 1..=[`MAX_DAYS`].
    pub days: u32,
    /// Also make a client certificate (extended key usage clientAuth) with this name as its
    /// common name and DNS subject alternative name.
    pub client: Option<String>,
}

impl CertRequest {
    pub fn new(dns_names: Vec<String>, ips: Vec<IpAddr>) -> Self {
        Self {
            dns_names,
            ips,
            days: DEFAULT_DAYS,
            client: None,
        }
    }

    /// `localhost`, `127.0.0.1` and `::1`: what a loopback test or demo needs.
    pub fn localhost() -> Self {
        Self::new(
            vec!["localhost".to_owned()],
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)],
        )
    }

    /// The same request, also asking for a client certificate named `name`.
    pub fn with_client(mut self, name: impl Into<String>) -> Self {
        self.client = Some(name.into());
        self
    }

    /// The same request with a different validity.
    pub fn with_days(mut self, days: u32) -> Self {
        self.days = days;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("no subject alternative names: give at least one --dns NAME or --ip ADDR")]
    NoNames,
    #[error("invalid DNS name `{name}` (--dns): {reason}")]
    InvalidDnsName { name: String, reason: &'static str },
    #[error("invalid client name `{name}` (--client): {reason}")]
    InvalidClientName { name: String, reason: &'static str },
    #[error("invalid validity {days} days (--days): must be between 1 and {MAX_DAYS}")]
    InvalidDays { days: u32 },
    #[error("could not generate the {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A client certificate and its key (PEM), signed by the same CA as the serving certificate.
#[derive(Clone)]
pub struct ClientCert {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("name", &self.name)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The generated CA certificate, serving certificate and key (and client certificate), PEM.
#[derive(Clone)]
pub struct DevCerts {
    pub ca_cert_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client: Option<ClientCert>,
    /// Unix seconds at which the serving certificate expires.
    pub not_after: i64,
    ca_common_name: String,
    ca_key_pem: String,
}

impl fmt::Debug for DevCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCerts")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("server_cert_pem", &self.server_cert_pem)
            .field("server_key_pem", &"<redacted>")
            .field("client", &self.client)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Where [`DevCerts::write_to`] put each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFiles {
    pub ca_cert: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Makes a new CA and, signed by it, the serving certificate (and client certificate).
pub fn generate(req: &CertRequest) -> Result<DevCerts, CertsError> {
    validate(req)?;
    let now = OffsetDateTime::now_utc();
    let ca_common_name = format!("orchestration-dedupe dev CA {}", now.unix_timestamp_nanos());
    let ca_key = KeyPair::generate().map_err(|source| CertsError::Generate {
        what: "CA key",
        source,
    })?;
    let ca_params = ca_params(DEV_ORGANIZATION, &ca_common_name, now, days(req.days));
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| CertsError::Generate {
            what: "CA certificate",
            source,
        })?;
    let ca_cert_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);
    issue(req, now, &issuer, ca_common_name, ca_cert_pem, ca_key_pem)
}

impl DevCerts {
    /// The CA certificate PEM, base64-encoded: the `caBundle` of a ValidatingWebhookConfiguration.
    pub fn ca_bundle_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.ca_cert_pem.as_bytes())
    }

    /// New serving (and client) certificates with fresh keys, signed by this same CA: a
    /// certificate rotation as cert-manager would do it. Clients that trust this CA trust the
    /// new certificates.
    pub fn reissue(&self, req: &CertRequest) -> Result<DevCerts, CertsError> {
        validate(req)?;
        let now = OffsetDateTime::now_utc();
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(|source| CertsError::Generate {
            what: "CA key (reloading)",
            source,
        })?;
        // An issuer needs the CA's subject, key usages and key-identifier method; they are
        // rebuilt exactly as `generate` made them.
        let issuer = Issuer::new(
            ca_params(DEV_ORGANIZATION, &self.ca_common_name, now, days(req.days)),
            ca_key,
        );
        issue(
            req,
            now,
            &issuer,
            self.ca_common_name.clone(),
            self.ca_cert_pem.clone(),
            self.ca_key_pem.clone(),
        )
    }

    /// Writes `ca.crt`, `tls.crt`, `tls.key` (and `client.crt`, `client.key`) into `dir`,
    /// creating it if needed. Keys get mode 0600, certificates 0644. Each file is written to a
    /// temporary name and renamed into place, so a reader never sees a half-written file.
    pub fn write_to(&self, dir: &Path) -> Result<WrittenFiles, CertsError> {
        fs::create_dir_all(dir).map_err(|source| CertsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let ca_cert = write_file(dir, CA_CERT_FILE, &self.ca_cert_pem, 0o644)?;
        let tls_key = write_file(dir, TLS_KEY_FILE, &self.server_key_pem, 0o600)?;
        let tls_cert = write_file(dir, TLS_CERT_FILE, &self.server_cert_pem, 0o644)?;
        let (client_cert, client_key) = match &self.client {
            Some(client) => (
                Some(write_file(dir, CLIENT_CERT_FILE, &client.cert_pem, 0o644)?),
                Some(write_file(dir, CLIENT_KEY_FILE, &client.key_pem, 0o600)?),
            ),
            None => (None, None),
        };
        Ok(WrittenFiles {
            ca_cert,
            tls_cert,
            tls_key,
            client_cert,
            client_key,
        })
    }
}

fn validate(req: &CertRequest) -> Result<(), CertsError> {
    if req.dns_names.is_empty() && req.ips.is_empty() {
        return Err(CertsError::NoNames);
    }
    if req.days == 0 || req.days > MAX_DAYS {
        return Err(CertsError::InvalidDays { days: req.days });
    }
    for name in &req.dns_names {
        check_dns_name(name).map_err(|reason| CertsError::InvalidDnsName {
            name: name.clone(),
            reason,
        })?;
    }
    if let Some(name) = &req.client {
        check_dns_name(name).map_err(|reason| CertsError::InvalidClientName {
            name: name.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// A DNS name as a certificate SAN: ASCII letters, digits, `-` and `.`, non-empty labels of
/// at most 63 characters, at most 253 in all, optionally `*.` in front.
pub(crate) fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err("this is an IP address: pass it with --ip");
    }
    let rest = name.strip_prefix("*.").unwrap_or(name);
    for label in rest.split('.') {
        if label.is_empty() {
            return Err("empty label (leading, trailing or doubled `.`)");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("only ASCII letters, digits, `-` and `.` are allowed (and a leading `*.`)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with `-`");
        }
    }
    Ok(())
}

/// The development CA's organization.
const DEV_ORGANIZATION: &str = "orchestration-dedupe (development only)";

fn days(days: u32) -> time::Duration {
    time::Duration::days(i64::from(days))
}

fn validity(params: &mut CertificateParams, now: OffsetDateTime, lifetime: time::Duration) {
    params.not_before = now - time::Duration::seconds(BACKDATE_SECONDS);
    params.not_after = now + lifetime;
}

pub(crate) fn ca_params(
    organization: &str,
    common_name: &str,
    now: OffsetDateTime,
    lifetime: time::Duration,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // Path length 0: this CA signs end-entity certificates only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, now, lifetime);
    params
}

pub(crate) fn leaf_params(
    common_name: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
    now: OffsetDateTime,
    lifetime: time::Duration,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, lifetime);
    params
}

pub(crate) fn dns_san(name: &str, client: bool) -> Result<SanType, CertsError> {
    let ia5 = rcgen::string::Ia5String::try_from(name).map_err(|_| {
        let reason = "not an ASCII (IA5) string";
        if client {
            CertsError::InvalidClientName {
                name: name.to_owned(),
                reason,
            }
        } else {
            CertsError::InvalidDnsName {
                name: name.to_owned(),
                reason,
            }
        }
    })?;
    Ok(SanType::DnsName(ia5))
}

fn issue(
    req: &CertRequest,
    now: OffsetDateTime,
    issuer: &Issuer<'_, KeyPair>,
    ca_common_name: String,
    ca_cert_pem: String,
    ca_key_pem: String,
) -> Result<DevCerts, CertsError> {
    let mut sans = Vec::with_capacity(req.dns_names.len() + req.ips.len());
    for name in &req.dns_names {
        sans.push(dns_san(name, false)?);
    }
    sans.extend(req.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let common_name = req
        .dns_names
        .first()
        .cloned()
        .or_else(|| req.ips.first().map(ToString::to_string))
        .unwrap_or_else(|| "orchestration-dedupe webhook".to_owned());
    let server_params = leaf_params(
        &common_name,
        sans,
        ExtendedKeyUsagePurpose::ServerAuth,
        now,
        days(req.days),
    );
    let not_after = server_params.not_after.unix_timestamp();
    let server_key = KeyPair::generate().map_err(|source| CertsError::Generate {
        what: "serving key",
        source,
    })?;
    let server_cert =
        server_params
            .signed_by(&server_key, issuer)
            .map_err(|source| CertsError::Generate {
                what: "serving certificate",
                source,
            })?;

    let client = match &req.client {
        None => None,
        Some(name) => {
            let params = leaf_params(
                name,
                vec![dns_san(name, true)?],
                ExtendedKeyUsagePurpose::ClientAuth,
                now,
                days(req.days),
            );
            let key = KeyPair::generate().map_err(|source| CertsError::Generate {
                what: "client key",
                source,
            })?;
            let cert = params
                .signed_by(&key, issuer)
                .map_err(|source| CertsError::Generate {
                    what: "client certificate",
                    source,
                })?;
            Some(ClientCert {
                name: name.clone(),
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        }
    };

    Ok(DevCerts {
        ca_cert_pem,
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        client,
        not_after,
        ca_common_name,
        ca_key_pem,
    })
}

fn write_file(dir: &Path, name: &str, contents: &str, mode: u32) -> Result<PathBuf, CertsError> {
    let path = dir.join(name);
    write_atomic(&path, contents, mode)?;
    Ok(path)
}

/// Writes `contents` to `path` with exactly `mode`, through a temporary file in the same
/// directory renamed into place: a reader (the webhook's certificate reloader) never sees a
/// half-written file.
pub fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), CertsError> {
    let path = path.to_path_buf();
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let err = |source| CertsError::Write {
        path: path.clone(),
        source,
    };
    let result = (|| {
        // Created with the final mode, so a key is never readable by others, not even briefly.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` above is filtered by the umask and ignored for an existing file: set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err(source));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;
    use std::sync::Arc;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn roots(ca_pem: &str) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(der(ca_pem)).unwrap();
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn server_verify(certs: &DevCerts, ca_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca_pem), provider())
            .build()
            .unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(&der(&certs.server_cert_pem), &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn serving_chain_verifies_for_each_dns_name_and_ip() {
        let req = CertRequest::new(
            vec!["localhost".into(), "webhook.agents.svc".into()],
            vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        );
        let certs = generate(&req).unwrap();
        for name in ["localhost", "webhook.agents.svc", "127.0.0.1", "::1"] {
            server_verify(&certs, &certs.ca_cert_pem, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // Names not asked for are refused, and another CA does not vouch for it.
        assert!(server_verify(&certs, &certs.ca_cert_pem, "other.example").is_err());
        assert!(server_verify(&certs, &certs.ca_cert_pem, "10.0.0.1").is_err());
        let other = generate(&req).unwrap();
        assert!(server_verify(&certs, &other.ca_cert_pem, "localhost").is_err());
    }

    #[test]
    fn certificates_carry_sans_usages_and_constraints() {
        let req = CertRequest::new(
            vec!["webhook.agents.svc".into()],
            vec!["10.1.2.3".parse().unwrap()],
        )
        .with_days(30);
        let certs = generate(&req).unwrap();

        let ca_der = der(&certs.ca_cert_pem);
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        let bc = ca.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign());

        let leaf_der = der(&certs.server_cert_pem);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        let sans = &leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert!(sans
            .iter()
            .any(|n| matches!(n, GeneralName::DNSName("webhook.agents.svc"))));
        assert!(sans
            .iter()
            .any(|n| matches!(n, GeneralName::IPAddress(b) if *b == [10, 1, 2, 3])));
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
        assert_eq!(leaf.issuer(), ca.subject());
        assert_eq!(leaf.validity().not_after.timestamp(), certs.not_after);
        let days = (certs.not_after - OffsetDateTime::now_utc().unix_timestamp()) / 86_400;
        assert!((29..=30).contains(&days), "{days}");
    }

    #[test]
    fn client_certificate_is_accepted_by_a_client_verifier_for_the_ca() {
        let certs = generate(&CertRequest::localhost().with_client("apiserver")).unwrap();
        let client = certs.client.as_ref().unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(&certs.ca_cert_pem), provider())
            .build()
            .unwrap();
        verifier
            .verify_client_cert(&der(&client.cert_pem), &[], UnixTime::now())
            .unwrap();
        // The serving certificate is not a client certificate (EKU serverAuth only).
        assert!(verifier
            .verify_client_cert(&der(&certs.server_cert_pem), &[], UnixTime::now())
            .is_err());
        let client_der = der(&client.cert_pem);
        let (_, leaf) = X509Certificate::from_der(&client_der).unwrap();
        assert!(leaf.extended_key_usage().unwrap().unwrap().value.client_auth);
    }

    #[test]
    fn reissue_keeps_the_ca_and_changes_the_key() {
        let first = generate(&CertRequest::localhost()).unwrap();
        let second = first.reissue(&CertRequest::localhost()).unwrap();
        assert_eq!(first.ca_cert_pem, second.ca_cert_pem);
        assert_ne!(first.server_cert_pem, second.server_cert_pem);
        assert_ne!(first.server_key_pem, second.server_key_pem);
        server_verify(&second, &first.ca_cert_pem, "localhost").unwrap();
    }

    #[test]
    fn write_to_writes_every_file_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested/tls");
        let certs = generate(&CertRequest::localhost().with_client("apiserver")).unwrap();
        let files = certs.write_to(&out).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(files.tls_key, out.join("tls.key"));
        assert_eq!(mode(&files.tls_key), 0o600);
        assert_eq!(mode(files.client_key.as_ref().unwrap()), 0o600);
        assert_eq!(mode(&files.ca_cert), 0o644);
        assert_eq!(mode(&files.tls_cert), 0o644);
        assert_eq!(
            fs::read_to_string(&files.tls_cert).unwrap(),
            certs.server_cert_pem
        );
        assert_eq!(fs::read_to_string(&files.tls_key).unwrap(), certs.server_key_pem);
        // A key file left world-readable by an earlier run is tightened on overwrite.
        fs::set_permissions(&files.tls_key, fs::Permissions::from_mode(0o644)).unwrap();
        certs.write_to(&out).unwrap();
        assert_eq!(mode(&files.tls_key), 0o600);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 5, "{names:?}");

        let bundle = base64::engine::general_purpose::STANDARD
            .decode(certs.ca_bundle_base64())
            .unwrap();
        assert_eq!(bundle, fs::read(&files.ca_cert).unwrap());
    }

    #[test]
    fn unwritable_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("a-file");
        fs::write(&blocker, b"x").unwrap();
        let out = blocker.join("tls");
        let certs = generate(&CertRequest::localhost()).unwrap();
        let err = certs.write_to(&out).unwrap_err();
        assert!(matches!(err, CertsError::Write { ref path, .. } if *path == out));
        assert!(err.to_string().contains(&out.display().to_string()), "{err}");
    }

    #[test]
    fn bad_requests_are_refused_clearly() {
        let err = generate(&CertRequest::new(vec![], vec![])).unwrap_err();
        assert!(matches!(err, CertsError::NoNames));
        for bad in ["", "a..b", "-a.b", "bad name", "ünï.example", "1.2.3.4", ".x"] {
            let err = generate(&CertRequest::new(vec![bad.into()], vec![])).unwrap_err();
            assert!(matches!(err, CertsError::InvalidDnsName { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("--dns"), "{err}");
        }
        let err = generate(&CertRequest::localhost().with_days(0)).unwrap_err();
        assert!(err.to_string().contains("--days"), "{err}");
        let err = generate(&CertRequest::localhost().with_days(MAX_DAYS + 1)).unwrap_err();
        assert!(matches!(err, CertsError::InvalidDays { .. }));
        let err = generate(&CertRequest::localhost().with_client("a b")).unwrap_err();
        assert!(err.to_string().contains("--client"), "{err}");
        // Wildcards are fine.
        generate(&CertRequest::new(vec!["*.agents.svc".into()], vec![])).unwrap();
    }

    #[test]
    fn debug_output_redacts_keys() {
        let certs = generate(&CertRequest::localhost().with_client("c")).unwrap();
        let shown = format!("{certs:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
}
