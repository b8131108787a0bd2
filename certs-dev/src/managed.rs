//! A CA and serving certificates with validities in seconds, for a webhook that manages its
//! own certificates (`dedupe-admission --tls-self-secret`): the CA's key is kept (PEM) so any
//! replica can sign the next serving certificate, and an issuer is rebuilt from the stored CA
//! certificate itself, so nothing but the two PEM blocks needs to be stored.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use time::OffsetDateTime;

use crate::{ca_params, check_dns_name, dns_san, leaf_params, CertsError};

/// A CA certificate and its private key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct Ca {
    pub cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Ca {
    pub fn from_pem(cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        Self {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

/// A serving certificate and its private key (PEM), and its expiry (unix seconds).
#[derive(Clone, PartialEq, Eq)]
pub struct Serving {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: i64,
}

impl fmt::Debug for Serving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serving")
            .field("cert_pem", &self.cert_pem)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn lifetime(valid_for: Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX / 2))
}

/// A new self-signed CA (ECDSA P-256) valid for `valid_for` from now, its subject
/// `O=organization, CN=organization CA <nanoseconds>` (unique, so a rotated CA never shares
/// a subject with the one it replaces).
pub fn new_ca(organization: &str, valid_for: Duration) -> Result<Ca, CertsError> {
    let now = OffsetDateTime::now_utc();
    let key = KeyPair::generate().map_err(|source| CertsError::Generate {
        what: "CA key",
        source,
    })?;
    let common_name = format!("{organization} CA {}", now.unix_timestamp_nanos());
    let params = ca_params(organization, &common_name, now, lifetime(valid_for));
    let cert = params.self_signed(&key).map_err(|source| CertsError::Generate {
        what: "CA certificate",
        source,
    })?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate (fresh key, EKU serverAuth) for `dns_names` and `ips`, signed by
/// `ca`, valid for `valid_for` from now.
pub fn issue_serving(
    ca: &Ca,
    dns_names: &[String],
    ips: &[IpAddr],
    valid_for: Duration,
) -> Result<Serving, CertsError> {
    if dns_names.is_empty() && ips.is_empty() {
        return Err(CertsError::NoNames);
    }
    let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
    for name in dns_names {
        check_dns_name(name).map_err(|reason| CertsError::InvalidDnsName {
            name: name.clone(),
            reason,
        })?;
        sans.push(dns_san(name, false)?);
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|source| CertsError::Generate {
        what: "CA key (reading)",
        source,
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|source| CertsError::Generate {
        what: "issuer from the CA certificate",
        source,
    })?;
    let now = OffsetDateTime::now_utc();
    let common_name = dns_names
        .first()
        .cloned()
        .or_else(|| ips.first().map(ToString::to_string))
        .unwrap_or_default();
    let params = leaf_params(
        &common_name,
        sans,
        ExtendedKeyUsagePurpose::ServerAuth,
        now,
        lifetime(valid_for),
    );
    let not_after = params.not_after.unix_timestamp();
    let key = KeyPair::generate().map_err(|source| CertsError::Generate {
        what: "serving key",
        source,
    })?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| CertsError::Generate {
            what: "serving certificate",
            source,
        })?;
    Ok(Serving {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::RootCertStore;
    use std::sync::Arc;

    #[test]
    fn a_serving_certificate_from_a_stored_ca_verifies_and_expires_as_asked() {
        let ca = new_ca("orchestration-dedupe", Duration::from_secs(3600)).unwrap();
        // As another replica would: only the two PEM blocks.
        let stored = Ca::from_pem(ca.cert_pem.clone(), ca.key_pem().to_owned());
        let serving = issue_serving(
            &stored,
            &["webhook.agents.svc".to_owned()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(20),
        )
        .unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            (19..=21).contains(&(serving.not_after - now)),
            "{}",
            serving.not_after - now
        );
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(serving.cert_pem.as_bytes()).unwrap();
        for name in ["webhook.agents.svc", "127.0.0.1"] {
            verifier
                .verify_server_cert(
                    &leaf,
                    &[],
                    &ServerName::try_from(name).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .unwrap();
        }
        let other = new_ca("orchestration-dedupe", Duration::from_secs(3600)).unwrap();
        assert_ne!(other.cert_pem, ca.cert_pem);
        assert!(!format!("{ca:?}{serving:?}").contains("PRIVATE KEY"));
        assert!(issue_serving(&ca, &[], &[], Duration::from_secs(1)).is_err());
    }
}
