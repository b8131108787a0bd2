//! Self-managed certificates (`--tls-self-secret NAMESPACE/NAME`, the chart's
//! `admission.tls.mode: self`): the webhook keeps its own CA and serving certificate in a
//! Secret, keeps the registrations' `caBundle` current, and rotates both before they expire,
//! the way Gatekeeper's cert-controller and Kyverno do. No cert-manager, and nothing for a
//! GitOps tool to regenerate: the chart renders neither the Secret nor a `caBundle`.
//!
//! Every replica runs the same loop ([`SelfTls::sync_once`], every `--tls-self-check-seconds`):
//! 1. Read the Secret. Absent: make a CA and a serving certificate and *create* it; if another
//!    replica created it first (409), read theirs. Present: [`plan`] decides whether anything
//!    is due; if so, *replace* it carrying the `resourceVersion` read, so of replicas racing to
//!    rotate exactly one wins and the others (409) re-read and adopt its result. All replicas
//!    converge on the one Secret.
//! 2. Make every entry of each named Validating/MutatingWebhookConfiguration trust the
//!    Secret's CAs (a merge patch carrying the `resourceVersion` read, so a concurrent patch
//!    is never overwritten with a stale bundle).
//! 3. Only then write the Secret's certificate and key to `--tls-cert`/`--tls-key`; the
//!    existing reloader (`reload.rs`: directory watch + poll) swaps them in for new
//!    handshakes. A replica thus serves a certificate only after trying to make the
//!    registrations trust its issuer.
//!
//! Rotation: the serving certificate is renewed once two thirds of `--tls-self-cert-validity-
//! seconds` have passed (never valid past its CA). The CA is replaced once two thirds of its
//! validity have passed, with an overlap: the new CA goes first in `ca.crt` and the old one
//! stays after it until it expires, so the `caBundle` (old + new) verifies every serving
//! certificate any replica may still hold. The write that introduces a new CA keeps the
//! current serving certificate (when still valid); the next one due is signed by the new CA,
//! by when every replica has had a check interval to add the new CA to the registrations.
//! Entries of the `caBundle` made by this webhook (subject O = [`ORGANIZATION`]) and still
//! valid are kept even when the Secret no longer lists them, so a replica with a stale view
//! never removes a CA a newer certificate depends on; other certificates (cert-manager's,
//! an earlier mode's) are dropped.
//!
//! Before the first certificate is written the webhook does not serve at all (so `/readyz`
//! is not ready); the first sync is retried with backoff, logging what RBAC to grant when
//! the API server refuses. A missing webhook configuration is not fatal (a GitOps tool may
//! apply it after the Deployment): the patch is retried on every check.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use certs_dev::managed::{self, Ca};
use certs_dev::CertsError;
use dedupe_store::error::Chain;
use dedupe_store::shutdown::Shutdown;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// How long a new CA is valid: 3 years. Rotated after two thirds (2 years), the old one kept
/// in the `caBundle` for its last year.
pub const DEFAULT_CA_VALIDITY_SECONDS: u64 = 3 * 365 * 86_400;
/// How long a serving certificate is valid: 90 days, renewed after 60.
pub const DEFAULT_CERT_VALIDITY_SECONDS: u64 = 90 * 86_400;
/// How often each replica reads the Secret and the registrations: other replicas' rotations
/// are picked up within this, and a registration applied later gets its `caBundle` within it.
pub const DEFAULT_CHECK_SECONDS: u64 = 60;
/// A certificate is renewed when less than this fraction of its validity is left (1/3: at
/// two thirds of its life).
const RENEW_WHEN_LEFT_DIVISOR: i64 = 3;
/// Subject organization of the CAs this webhook makes (how its own `caBundle` entries are told
/// from others').
pub const ORGANIZATION: &str = "orchestration-dedupe self-managed";
/// Secret keys (a `kubernetes.io/tls` Secret, plus the CA bundle and the CA's key).
pub const KEY_TLS_CRT: &str = "tls.crt";
pub const KEY_TLS_KEY: &str = "tls.key";
pub const KEY_CA_CRT: &str = "ca.crt";
pub const KEY_CA_KEY: &str = "ca.key";
/// Label on the Secret this webhook creates.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "dedupe-admission");
/// Optimistic-concurrency retries within one sync before waiting for the next check.
const CONFLICT_ATTEMPTS: usize = 5;
/// Backoff between failed syncs (first sync and later ones): doubles up to the maximum.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What `--tls-self-*` asks for, parsed and checked once.
#[derive(Debug, Clone)]
pub struct SelfTlsSettings {
    pub namespace: String,
    pub name: String,
    pub validating: Vec<String>,
    pub mutating: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    pub check_interval: Duration,
    /// Where the serving certificate and key are written (`--tls-cert`, `--tls-key`).
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SelfTlsError {
    #[error(
        "the API server refused to {verb} {what}: grant the webhook's service account `{verb}` on it \
         (the chart's Role/ClusterRole for admission.tls.mode=self)"
    )]
    Forbidden {
        verb: &'static str,
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("could not {verb} {what}")]
    Api {
        verb: &'static str,
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "{what} kept changing under us ({CONFLICT_ATTEMPTS} conflicting writes); retrying at the next check"
    )]
    Conflicts { what: String },
    #[error("{what} does not exist (yet); its caBundle is set once it is applied")]
    NotFound { what: String },
    #[error("could not make the certificates")]
    Certs(#[source] CertsError),
    #[error("could not write the serving certificate")]
    Write(#[source] CertsError),
}

/// A `--tls-self-*` value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SelfTlsConfigError {
    #[error("--tls-self-secret `{0}`: expected NAMESPACE/NAME")]
    SecretRef(String),
    #[error("--tls-self-dns: at least one DNS name or IP address is needed with --tls-self-secret")]
    NoNames,
    #[error(
        "--tls-self-check-seconds ({check}) must be under a third of --tls-self-cert-validity-seconds ({cert}), \
         or a certificate could expire between two checks"
    )]
    CheckTooSlow { check: u64, cert: u64 },
}

/// `NAMESPACE/NAME` → (namespace, name).
pub fn parse_secret_ref(s: &str) -> Result<(String, String), SelfTlsConfigError> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(SelfTlsConfigError::SecretRef(s.to_owned())),
    }
}

impl SelfTlsSettings {
    /// Splits `names` into DNS names and IP addresses and checks the timings.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        secret: &str,
        validating: Vec<String>,
        mutating: Vec<String>,
        names: &[String],
        ca_validity_seconds: u64,
        cert_validity_seconds: u64,
        check_seconds: u64,
        cert_path: PathBuf,
        key_path: PathBuf,
    ) -> Result<Self, SelfTlsConfigError> {
        let (namespace, name) = parse_secret_ref(secret)?;
        let mut dns_names = Vec::new();
        let mut ips = Vec::new();
        for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            match n.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns_names.push(n.to_owned()),
            }
        }
        if dns_names.is_empty() && ips.is_empty() {
            return Err(SelfTlsConfigError::NoNames);
        }
        if check_seconds.saturating_mul(RENEW_WHEN_LEFT_DIVISOR.unsigned_abs()) >= cert_validity_seconds {
            return Err(SelfTlsConfigError::CheckTooSlow {
                check: check_seconds,
                cert: cert_validity_seconds,
            });
        }
        Ok(Self {
            namespace,
            name,
            validating,
            mutating,
            dns_names,
            ips,
            ca_validity: Duration::from_secs(ca_validity_seconds),
            cert_validity: Duration::from_secs(cert_validity_seconds),
            check_interval: Duration::from_secs(check_seconds),
            cert_path,
            key_path,
        })
    }

    fn secret_display(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }
}

/// One certificate of a PEM bundle, with what the plan needs.
#[derive(Debug, Clone)]
struct CertInfo {
    pem: String,
    not_after: i64,
    ours: bool,
}

fn pem_block(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The certificates of a PEM bundle that parse (others are skipped).
fn parse_bundle(bytes: &[u8]) -> Vec<CertInfo> {
    Pem::iter_from_buffer(bytes)
        .filter_map(Result::ok)
        .filter(|pem| pem.label == "CERTIFICATE")
        .filter_map(|pem| {
            let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
            let ours = cert
                .subject()
                .iter_organization()
                .any(|o| o.as_str().ok() == Some(ORGANIZATION));
            Some(CertInfo {
                pem: pem_block(&pem.contents),
                not_after: cert.validity().not_after.timestamp(),
                ours,
            })
        })
        .collect()
}

/// The serving certificate's expiry, its SANs (DNS names and IPs, as strings) and whether
/// `ca_pem`'s subject issued it.
fn serving_info(cert_pem: &[u8], ca_pem: &str) -> Option<(i64, Vec<String>, bool)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).ok()?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_pem.contents).ok()?;
    let mut sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(|a| IpAddr::from(a).to_string()),
                        16 => <[u8; 16]>::try_from(*b).ok().map(|a| IpAddr::from(a).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    sans.sort();
    Some((
        cert.validity().not_after.timestamp(),
        sans,
        cert.issuer() == ca.subject(),
    ))
}

/// The Secret's data as this module writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// Current CA first, then older CAs still valid.
    pub ca_bundle: String,
    pub ca_key: String,
    pub tls_crt: String,
    pub tls_key: String,
}

impl Material {
    fn from_data(data: &BTreeMap<String, ByteString>) -> Option<Self> {
        let get = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .filter(|s| !s.trim().is_empty())
        };
        Some(Self {
            ca_bundle: get(KEY_CA_CRT)?,
            ca_key: get(KEY_CA_KEY)?,
            tls_crt: get(KEY_TLS_CRT).unwrap_or_default(),
            tls_key: get(KEY_TLS_KEY).unwrap_or_default(),
        })
    }

    fn to_data(&self) -> BTreeMap<String, ByteString> {
        [
            (KEY_CA_CRT, &self.ca_bundle),
            (KEY_CA_KEY, &self.ca_key),
            (KEY_TLS_CRT, &self.tls_crt),
            (KEY_TLS_KEY, &self.tls_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect()
    }
}

/// What a sync decided to write, and why (for the log).
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Keep,
    Write {
        material: Material,
        reason: &'static str,
    },
}

/// The policy [`plan`] applies.
#[derive(Debug, Clone)]
pub struct Policy {
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub ca_validity: Duration,
    pub cert_validity: Duration,
}

impl Policy {
    fn wanted_sans(&self) -> Vec<String> {
        let mut sans: Vec<String> = self
            .dns_names
            .iter()
            .cloned()
            .chain(self.ips.iter().map(ToString::to_string))
            .collect();
        sans.sort();
        sans
    }

    fn fresh(&self) -> Result<Material, CertsError> {
        let ca = managed::new_ca(ORGANIZATION, self.ca_validity)?;
        let serving = managed::issue_serving(&ca, &self.dns_names, &self.ips, self.cert_validity)?;
        Ok(Material {
            ca_bundle: ca.cert_pem.clone(),
            ca_key: ca.key_pem().to_owned(),
            tls_crt: serving.cert_pem,
            tls_key: serving.key_pem,
        })
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// The pure decision: given the Secret's data (or none) at `now` (unix seconds), what to
/// write. Rules in the module comment.
pub fn plan(
    now: i64,
    data: Option<&BTreeMap<String, ByteString>>,
    policy: &Policy,
) -> Result<Plan, CertsError> {
    let Some(stored) = data.and_then(Material::from_data) else {
        let reason = if data.is_some() {
            "the Secret has no usable CA: replaced"
        } else {
            "no Secret yet"
        };
        return Ok(Plan::Write {
            material: policy.fresh()?,
            reason,
        });
    };
    let bundle = parse_bundle(stored.ca_bundle.as_bytes());
    let Some(current) = bundle.first().filter(|c| c.not_after > now).cloned() else {
        return Ok(Plan::Write {
            material: policy.fresh()?,
            reason: "the Secret's CA is unreadable or expired: replaced",
        });
    };
    let older: Vec<CertInfo> = bundle[1..]
        .iter()
        .filter(|c| c.not_after > now)
        .cloned()
        .collect();
    let serving = serving_info(stored.tls_crt.as_bytes(), &current.pem);
    let serving_valid = serving.as_ref().is_some_and(|(not_after, _, _)| *not_after > now);

    let ca_left = current.not_after - now;
    if ca_left <= secs(policy.ca_validity) / RENEW_WHEN_LEFT_DIVISOR {
        let ca = managed::new_ca(ORGANIZATION, policy.ca_validity)?;
        let mut ca_bundle = ca.cert_pem.clone();
        for c in std::iter::once(&current).chain(&older) {
            ca_bundle.push_str(&c.pem);
        }
        // Keep serving the current certificate (signed by the old CA, which stays in the
        // bundle) so no replica serves the new CA's before the registrations trust it.
        let (tls_crt, tls_key) = if serving_valid {
            (stored.tls_crt.clone(), stored.tls_key.clone())
        } else {
            let s = managed::issue_serving(&ca, &policy.dns_names, &policy.ips, policy.cert_validity)?;
            (s.cert_pem, s.key_pem)
        };
        return Ok(Plan::Write {
            material: Material {
                ca_bundle,
                ca_key: ca.key_pem().to_owned(),
                tls_crt,
                tls_key,
            },
            reason:
                "CA rotation (two thirds of its validity passed; the old CA stays trusted until it expires)",
        });
    }

    let reissue = match &serving {
        None => Some("no usable serving certificate"),
        Some((not_after, _, _))
            if *not_after - now <= secs(policy.cert_validity) / RENEW_WHEN_LEFT_DIVISOR =>
        {
            Some("serving certificate renewal (two thirds of its validity passed)")
        }
        Some((_, sans, _)) if *sans != policy.wanted_sans() => {
            Some("the serving certificate's names changed")
        }
        Some(_) => None,
    };
    let mut ca_bundle = current.pem.clone();
    for c in &older {
        ca_bundle.push_str(&c.pem);
    }
    if let Some(reason) = reissue {
        let ca = Ca::from_pem(current.pem.clone(), stored.ca_key.clone());
        // Never valid past its CA: the bundle would stop vouching for it.
        let valid_for = policy
            .cert_validity
            .min(Duration::from_secs(u64::try_from(ca_left).unwrap_or(0)));
        let s = managed::issue_serving(&ca, &policy.dns_names, &policy.ips, valid_for)?;
        return Ok(Plan::Write {
            material: Material {
                ca_bundle,
                ca_key: stored.ca_key,
                tls_crt: s.cert_pem,
                tls_key: s.key_pem,
            },
            reason,
        });
    }
    if older.len() + 1 != bundle.len() {
        return Ok(Plan::Write {
            material: Material { ca_bundle, ..stored },
            reason: "an expired CA dropped from ca.crt",
        });
    }
    Ok(Plan::Keep)
}

/// The `caBundle` an entry should have: the Secret's CAs, then this webhook's own CAs the
/// entry already trusts that are still valid (see the module comment).
pub fn desired_bundle(secret_ca: &str, current: Option<&[u8]>, now: i64) -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for c in parse_bundle(secret_ca.as_bytes()) {
        seen.push(c.pem.clone());
        out.push_str(&c.pem);
    }
    for c in parse_bundle(current.unwrap_or_default()) {
        if c.ours && c.not_after > now && !seen.contains(&c.pem) {
            seen.push(c.pem.clone());
            out.push_str(&c.pem);
        }
    }
    out
}

fn api_error(verb: &'static str, what: String, source: kube::Error) -> SelfTlsError {
    match &source {
        kube::Error::Api(status) if status.code == 403 => SelfTlsError::Forbidden { verb, what, source },
        _ => SelfTlsError::Api { verb, what, source },
    }
}

/// 409: the `resourceVersion` read is no longer current, or the object was created meanwhile.
fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// The self-managed certificate loop of one replica.
pub struct SelfTls {
    client: kube::Client,
    settings: SelfTlsSettings,
    policy: Policy,
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub secret_written: Option<&'static str>,
    pub bundles_patched: usize,
    pub files_written: bool,
    /// Registrations that could not be patched (missing, forbidden, …); retried next check.
    pub registration_errors: Vec<String>,
}

impl SelfTls {
    pub fn new(client: kube::Client, settings: SelfTlsSettings) -> Self {
        let policy = Policy {
            dns_names: settings.dns_names.clone(),
            ips: settings.ips.clone(),
            ca_validity: settings.ca_validity,
            cert_validity: settings.cert_validity,
        };
        Self {
            client,
            settings,
            policy,
        }
    }

    /// Syncs until the serving certificate is on disk, retrying with backoff; `Err(())` when
    /// `shutdown` came first.
    pub async fn first_sync(&self, shutdown: &mut Shutdown) -> Result<(), ()> {
        let mut delay = RETRY_FIRST;
        loop {
            match self.sync_once().await {
                Ok(report) => {
                    self.log(&report);
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(
                        error = %Chain(&error),
                        retry_in = ?delay,
                        "self-managed TLS: no serving certificate yet; not serving until there is one"
                    );
                }
            }
            tokio::select! {
                _ = shutdown.wait() => return Err(()),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// Checks every `--tls-self-check-seconds` (sooner, with backoff, after a failure) until
    /// `stop` becomes `true`.
    pub async fn check_until_stopped(self, mut stop: watch::Receiver<bool>) {
        let mut delay = self.settings.check_interval;
        loop {
            tokio::select! {
                changed = stop.changed() => if changed.is_err() || *stop.borrow() { return },
                _ = tokio::time::sleep(delay) => {}
            }
            match self.sync_once().await {
                Ok(report) => {
                    self.log(&report);
                    delay = self.settings.check_interval;
                }
                Err(error) => {
                    delay = if delay >= self.settings.check_interval {
                        RETRY_FIRST
                    } else {
                        (delay * 2).min(self.settings.check_interval)
                    };
                    tracing::warn!(error = %Chain(&error), retry_in = ?delay, "self-managed TLS check failed; still serving the current certificate");
                }
            }
        }
    }

    fn log(&self, report: &SyncReport) {
        if let Some(reason) = report.secret_written {
            tracing::info!(secret = %self.settings.secret_display(), reason, "self-managed TLS: Secret written");
        }
        if report.bundles_patched > 0 {
            tracing::info!(
                configurations = report.bundles_patched,
                "self-managed TLS: caBundle updated in the webhook configurations"
            );
        }
        if report.files_written {
            tracing::info!(
                cert = %self.settings.cert_path.display(),
                "self-managed TLS: serving certificate written; the reloader swaps it in"
            );
        }
        for error in &report.registration_errors {
            tracing::warn!(%error, "self-managed TLS: caBundle not injected; retrying at the next check");
        }
    }

    /// One pass: the Secret, the registrations, the files.
    pub async fn sync_once(&self) -> Result<SyncReport, SelfTlsError> {
        let mut report = SyncReport::default();
        let (material, written) = self.sync_secret().await?;
        report.secret_written = written;
        let now = chrono::Utc::now().timestamp();
        for name in &self.settings.validating {
            match self
                .patch_bundle::<ValidatingWebhookConfiguration>(name, &material.ca_bundle, now)
                .await
            {
                Ok(patched) => report.bundles_patched += usize::from(patched),
                Err(e) => report.registration_errors.push(Chain(&e).to_string()),
            }
        }
        for name in &self.settings.mutating {
            match self
                .patch_bundle::<MutatingWebhookConfiguration>(name, &material.ca_bundle, now)
                .await
            {
                Ok(patched) => report.bundles_patched += usize::from(patched),
                Err(e) => report.registration_errors.push(Chain(&e).to_string()),
            }
        }
        report.files_written = self.write_files(&material).await?;
        Ok(report)
    }

    async fn sync_secret(&self) -> Result<(Material, Option<&'static str>), SelfTlsError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let what = self.settings.secret_display();
        for _ in 0..CONFLICT_ATTEMPTS {
            let existing = api
                .get_opt(&self.settings.name)
                .await
                .map_err(|e| api_error("get", what.clone(), e))?;
            let now = chrono::Utc::now().timestamp();
            let data = existing.as_ref().map(|s| s.data.clone().unwrap_or_default());
            match plan(now, data.as_ref(), &self.policy).map_err(SelfTlsError::Certs)? {
                Plan::Keep => {
                    let material = data
                        .as_ref()
                        .and_then(Material::from_data)
                        .ok_or_else(|| SelfTlsError::Conflicts { what: what.clone() })?;
                    return Ok((material, None));
                }
                Plan::Write { material, reason } => {
                    let result = match existing {
                        None => {
                            let secret = Secret {
                                metadata: ObjectMeta {
                                    name: Some(self.settings.name.clone()),
                                    namespace: Some(self.settings.namespace.clone()),
                                    labels: Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into()),
                                    ..ObjectMeta::default()
                                },
                                type_: Some("kubernetes.io/tls".to_owned()),
                                data: Some(material.to_data()),
                                ..Secret::default()
                            };
                            api.create(&PostParams::default(), &secret)
                                .await
                                .map_err(|e| ("create", e))
                        }
                        Some(mut secret) => {
                            // Carries the resourceVersion read: a concurrent writer makes this 409.
                            secret.data = Some(material.to_data());
                            api.replace(&self.settings.name, &PostParams::default(), &secret)
                                .await
                                .map_err(|e| ("update", e))
                        }
                    };
                    match result {
                        Ok(_) => return Ok((material, Some(reason))),
                        Err((_, e)) if is_conflict(&e) => {
                            tracing::debug!(secret = %what, "another replica wrote the Secret first; re-reading");
                        }
                        Err((verb, e)) => return Err(api_error(verb, what, e)),
                    }
                }
            }
        }
        Err(SelfTlsError::Conflicts { what })
    }

    /// Makes every entry of configuration `name` trust `secret_ca`. `Ok(true)` when patched.
    /// A merge patch of the whole `webhooks` list carrying the `resourceVersion` read: a
    /// concurrent change makes it 409 and it is re-read, never overwritten.
    async fn patch_bundle<K>(&self, name: &str, secret_ca: &str, now: i64) -> Result<bool, SelfTlsError>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let what = format!("{} {name}", K::kind(&()));
        let b64 = base64::engine::general_purpose::STANDARD;
        for _ in 0..CONFLICT_ATTEMPTS {
            let Some(object) = api
                .get_opt(name)
                .await
                .map_err(|e| api_error("get", what.clone(), e))?
            else {
                return Err(SelfTlsError::NotFound { what });
            };
            let version = object.meta().resource_version.clone().unwrap_or_default();
            let mut value = serde_json::to_value(&object).map_err(|e| SelfTlsError::Api {
                verb: "read",
                what: what.clone(),
                source: kube::Error::SerdeError(e),
            })?;
            let mut changed = false;
            if let Some(webhooks) = value.get_mut("webhooks").and_then(|w| w.as_array_mut()) {
                for webhook in webhooks {
                    let current = webhook
                        .pointer("/clientConfig/caBundle")
                        .and_then(|b| b.as_str())
                        .and_then(|b| b64.decode(b).ok());
                    let desired = desired_bundle(secret_ca, current.as_deref(), now);
                    if current.as_deref() != Some(desired.as_bytes()) {
                        if let Some(config) = webhook.get_mut("clientConfig").and_then(|c| c.as_object_mut())
                        {
                            config.insert("caBundle".to_owned(), json!(b64.encode(desired.as_bytes())));
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                return Ok(false);
            }
            let patch = json!({
                "metadata": {"resourceVersion": version},
                "webhooks": value.get("webhooks").cloned().unwrap_or_default(),
            });
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) if is_conflict(&e) => {
                    tracing::debug!(configuration = %what, "changed since read; re-reading");
                }
                Err(e) => return Err(api_error("patch", what, e)),
            }
        }
        Err(SelfTlsError::Conflicts { what })
    }

    /// Writes the key, then the certificate, when they differ from what is on disk.
    async fn write_files(&self, material: &Material) -> Result<bool, SelfTlsError> {
        let cert_path = self.settings.cert_path.clone();
        let key_path = self.settings.key_path.clone();
        let (cert, key) = (material.tls_crt.clone(), material.tls_key.clone());
        let task = tokio::task::spawn_blocking(move || {
            let same = |path: &PathBuf, want: &str| std::fs::read(path).is_ok_and(|b| b == want.as_bytes());
            if same(&cert_path, &cert) && same(&key_path, &key) {
                return Ok(false);
            }
            certs_dev::write_atomic(&key_path, &key, 0o600)?;
            certs_dev::write_atomic(&cert_path, &cert, 0o644)?;
            Ok(true)
        });
        match task.await {
            Ok(result) => result.map_err(SelfTlsError::Write),
            Err(e) => Err(SelfTlsError::Write(CertsError::Write {
                path: self.settings.cert_path.clone(),
                source: std::io::Error::other(e.to_string()),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const DAY: u64 = 86_400;

    fn policy(ca_days: u64, cert_days: u64) -> Policy {
        Policy {
            dns_names: vec!["webhook.agents.svc".to_owned()],
            ips: vec!["127.0.0.1".parse().unwrap()],
            ca_validity: Duration::from_secs(ca_days * DAY),
            cert_validity: Duration::from_secs(cert_days * DAY),
        }
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn written(plan: Plan) -> (Material, &'static str) {
        match plan {
            Plan::Write { material, reason } => (material, reason),
            Plan::Keep => panic!("expected a write"),
        }
    }

    #[test]
    fn no_secret_makes_a_ca_and_a_serving_certificate_it_signed() {
        let p = policy(300, 90);
        let (m, reason) = written(plan(now(), None, &p).unwrap());
        assert_eq!(reason, "no Secret yet");
        let (not_after, sans, by_ca) = serving_info(m.tls_crt.as_bytes(), &m.ca_bundle).unwrap();
        assert!(by_ca);
        assert_eq!(
            sans,
            vec!["127.0.0.1".to_owned(), "webhook.agents.svc".to_owned()]
        );
        assert!((not_after - now() - (90 * DAY) as i64).abs() < 10);
        assert_eq!(parse_bundle(m.ca_bundle.as_bytes()).len(), 1);
        assert!(parse_bundle(m.ca_bundle.as_bytes())[0].ours);
        // Then nothing is due.
        assert_eq!(plan(now(), Some(&m.to_data()), &p).unwrap(), Plan::Keep);
    }

    #[test]
    fn the_serving_certificate_is_renewed_after_two_thirds_with_the_same_ca() {
        let p = policy(300, 90);
        let (m, _) = written(plan(now(), None, &p).unwrap());
        let data = m.to_data();
        assert_eq!(
            plan(now() + (59 * DAY) as i64, Some(&data), &p).unwrap(),
            Plan::Keep
        );
        let (renewed, reason) = written(plan(now() + (61 * DAY) as i64, Some(&data), &p).unwrap());
        assert!(reason.contains("renewal"), "{reason}");
        assert_eq!(renewed.ca_bundle, m.ca_bundle);
        assert_eq!(renewed.ca_key, m.ca_key);
        assert_ne!(renewed.tls_crt, m.tls_crt);
        assert_ne!(renewed.tls_key, m.tls_key);
    }

    #[test]
    fn changed_names_reissue_and_an_unusable_secret_is_replaced() {
        let (m, _) = written(plan(now(), None, &policy(300, 90)).unwrap());
        let mut other = policy(300, 90);
        other.dns_names.push("extra.agents.svc".to_owned());
        let (_, reason) = written(plan(now(), Some(&m.to_data()), &other).unwrap());
        assert!(reason.contains("names"), "{reason}");
        let mut broken = m.to_data();
        broken.insert(KEY_CA_CRT.to_owned(), ByteString(b"garbage".to_vec()));
        let (_, reason) = written(plan(now(), Some(&broken), &other).unwrap());
        assert!(reason.contains("replaced"), "{reason}");
    }

    #[test]
    fn ca_rotation_keeps_the_old_ca_trusted_and_the_serving_certificate_until_due() {
        let p = policy(300, 90);
        let (m, _) = written(plan(now(), None, &p).unwrap());
        let old_ca = parse_bundle(m.ca_bundle.as_bytes())[0].pem.clone();
        // 201 days in: the CA is past two thirds, the serving certificate (90 days) has expired
        // in this jump, so the rotation issues one from the new CA.
        let later = now() + (201 * DAY) as i64;
        let (rotated, reason) = written(plan(later, Some(&m.to_data()), &p).unwrap());
        assert!(reason.contains("CA rotation"), "{reason}");
        let bundle = parse_bundle(rotated.ca_bundle.as_bytes());
        assert_eq!(bundle.len(), 2);
        assert_ne!(bundle[0].pem, old_ca);
        assert_eq!(bundle[1].pem, old_ca);
        assert_ne!(rotated.ca_key, m.ca_key);

        // With a serving certificate still valid (here: one made for 250 days), the rotation
        // keeps it (the old CA signed it and stays in the bundle).
        let long = policy(300, 250);
        let (long_lived, _) = written(plan(now(), None, &long).unwrap());
        let (rotated, _) = written(plan(later, Some(&long_lived.to_data()), &long).unwrap());
        assert_eq!(rotated.tls_crt, long_lived.tls_crt);
        assert_eq!(parse_bundle(rotated.ca_bundle.as_bytes()).len(), 2);
        // The old CA leaves ca.crt once it has expired.
        let after_old = now() + (301 * DAY) as i64;
        let (pruned, reason) = written(plan(after_old, Some(&rotated.to_data()), &p).unwrap());
        assert_eq!(parse_bundle(pruned.ca_bundle.as_bytes()).len(), 1, "{reason}");
    }

    #[test]
    fn a_serving_certificate_never_outlives_its_ca() {
        let p = policy(30, 20);
        let (m, _) = written(plan(now(), None, &p).unwrap());
        // 14 days in: serving due (renew at <= 6.67 days left of 20? no: 20-14 = 6 left), CA has 16 left (> 10).
        let t = now() + (14 * DAY) as i64;
        let (renewed, _) = written(plan(t, Some(&m.to_data()), &p).unwrap());
        let ca_after = parse_bundle(renewed.ca_bundle.as_bytes())[0].not_after;
        let (cert_after, _, _) = serving_info(renewed.tls_crt.as_bytes(), &renewed.ca_bundle).unwrap();
        assert!(cert_after <= ca_after, "{cert_after} > {ca_after}");
    }

    #[test]
    fn the_bundle_keeps_our_valid_cas_and_drops_foreign_ones() {
        let p = policy(300, 90);
        let (a, _) = written(plan(now(), None, &p).unwrap());
        let (b, _) = written(plan(now(), None, &p).unwrap());
        let foreign = certs_dev::generate(&certs_dev::CertRequest::localhost())
            .unwrap()
            .ca_cert_pem;
        // The registration trusts A (from a replica's older view) and a foreign CA; the
        // Secret now says B.
        let current = format!("{}{}", a.ca_bundle, foreign);
        let desired = desired_bundle(&b.ca_bundle, Some(current.as_bytes()), now());
        let certs = parse_bundle(desired.as_bytes());
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].pem, parse_bundle(b.ca_bundle.as_bytes())[0].pem);
        assert_eq!(certs[1].pem, parse_bundle(a.ca_bundle.as_bytes())[0].pem);
        // Stable: applying it again changes nothing.
        assert_eq!(
            desired_bundle(&b.ca_bundle, Some(desired.as_bytes()), now()),
            desired
        );
        // Expired ones go.
        let desired = desired_bundle(&b.ca_bundle, Some(current.as_bytes()), now() + (400 * DAY) as i64);
        assert_eq!(parse_bundle(desired.as_bytes()).len(), 1);
    }

    #[test]
    fn settings_are_checked() {
        let s = |secret: &str, names: &[&str], cert: u64, check: u64| {
            SelfTlsSettings::new(
                secret,
                vec![],
                vec![],
                &names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
                DEFAULT_CA_VALIDITY_SECONDS,
                cert,
                check,
                "tls.crt".into(),
                "tls.key".into(),
            )
        };
        let ok = s("agents/webhook-tls", &["webhook.agents.svc", "127.0.0.1"], 90, 10).unwrap();
        assert_eq!(
            (ok.namespace.as_str(), ok.name.as_str()),
            ("agents", "webhook-tls")
        );
        assert_eq!(ok.ips, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert!(matches!(
            s("webhook-tls", &["a"], 90, 10),
            Err(SelfTlsConfigError::SecretRef(_))
        ));
        assert!(matches!(
            s("a/b/c", &["a"], 90, 10),
            Err(SelfTlsConfigError::SecretRef(_))
        ));
        assert!(matches!(s("a/b", &[], 90, 10), Err(SelfTlsConfigError::NoNames)));
        assert!(matches!(
            s("a/b", &["a"], 90, 30),
            Err(SelfTlsConfigError::CheckTooSlow { .. })
        ));
    }
}
