//! The control plane's certificates, made in-process with rcgen: one CA that signs the API
//! server's serving certificate and every client certificate (the admin's, with
//! `O=system:masters`, and ordinary users' that RBAC governs), and the service-account
//! signing key. Kept as PEM so a test process can reload the CA from the control plane's
//! directory and sign a user certificate of its own.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The CA's subject; an issuer is rebuilt from it when a test signs with a reloaded key.
const CA_COMMON_NAME: &str = "orchestration-dedupe test control plane CA";
/// Long enough for any test run; short enough that nobody mistakes them for real ones.
const VALID_DAYS: i64 = 7;

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The control plane's CA.
pub struct Ca {
    pub cert_pem: String,
    key_pem: String,
}

impl Ca {
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = ca_params()
            .self_signed(&key)
            .context("self-signing the CA certificate")?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA from its PEM files' contents (as written into the control plane's directory).
    pub fn from_pem(cert_pem: String, key_pem: String) -> Self {
        Self { cert_pem, key_pem }
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A serving certificate for `127.0.0.1` and `localhost`.
    pub fn serving(&self) -> Result<KeyedCert> {
        let sans = vec![
            SanType::IpAddress("127.0.0.1".parse()?),
            SanType::DnsName("localhost".try_into()?),
        ];
        self.sign("localhost", &[], sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate: the API server takes the common name as the user and each
    /// organization as a group (`system:masters` is the admin group).
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<KeyedCert> {
        self.sign(user, groups, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<KeyedCert> {
        let ca_key = KeyPair::from_pem(&self.key_pem).context("reading the CA key")?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for organization in organizations {
            dn.push(DnType::OrganizationName, *organization);
        }
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("signing the certificate for {common_name}"))?;
        Ok(KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The service-account token signing key pair (ECDSA P-256): the private key (PKCS#8 PEM)
/// and the public key (SubjectPublicKeyInfo PEM), which the API server wants in a file of
/// its own.
pub fn service_account_keys() -> Result<KeyedPair> {
    let key = KeyPair::generate().context("generating the service-account key")?;
    Ok(KeyedPair {
        private_pem: key.serialize_pem(),
        public_pem: key.public_key_pem(),
    })
}

pub struct KeyedPair {
    pub private_pem: String,
    pub public_pem: String,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    params
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    // Backdated an hour, as certs-dev does, against small clock differences.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(VALID_DAYS);
}
