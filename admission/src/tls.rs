//! The webhook's TLS: a rustls server configuration built from the certificate and key files
//! (a mounted Secret), an optional client CA for mTLS, and live reload when the files change.
//!
//! Reload: the kubelet updates a mounted Secret by writing a new timestamped directory and
//! atomically renaming a `..data` symlink over the old one (`tls.crt -> ..data/tls.crt`), so the
//! file paths never change and their own mtimes are meaningless. We therefore watch the
//! *directories* holding the files (inotify through `notify`, non-recursive; any change →
//! short debounce → reload) and also re-read the files every `poll_interval` as a fallback
//! (watches can be lost, e.g. when a directory is replaced). A reload compares file contents,
//! and only swaps when the new certificate and key parse and belong together; otherwise the
//! previous configuration stays in use and the failure is reported.
//!
//! Each new TLS handshake should take [`TlsReloader::current`]; connections already
//! established keep the configuration they were made with.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// ALPN protocol id for HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// ALPN protocol id for HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// After a change notification, wait this long for the rest of a multi-file update.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Shortest accepted poll interval (a zero interval would spin).
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A consistent read needs the same bytes twice in a row; give up after this many tries.
const STABLE_READ_ATTEMPTS: usize = 3;
const STABLE_READ_PAUSE: Duration = Duration::from_millis(50);
/// Mounted Secrets are at most 1 MiB; anything larger is not a certificate file.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Where the TLS material comes from and how the server offers it.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle (PEM) client certificates must chain to; `None` = no client certificate asked.
    pub client_ca: Option<PathBuf>,
    /// How often the files are re-read even without a change notification.
    pub poll_interval: Duration,
    /// Offer HTTP/2 (`h2`) before HTTP/1.1 in ALPN.
    pub http2: bool,
}

/// Which of the configured files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Certificate,
    PrivateKey,
    ClientCa,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Certificate => "certificate",
            FileKind::PrivateKey => "private key",
            FileKind::ClientCa => "client CA",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} file {}: {source}", path.display())]
    Read {
        what: FileKind,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the TLS {what} file {} is not usable: {detail}", path.display())]
    Invalid {
        what: FileKind,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "the TLS private key {} does not match the certificate {} (different public keys: was only one of them replaced?)",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot build the TLS server configuration: {0}")]
    Config(#[source] rustls::Error),
}

impl TlsError {
    /// The file the error is about (the key file for a mismatch), if any.
    #[allow(dead_code)] // API for callers and tests; main only displays the error.
    pub fn path(&self) -> Option<&Path> {
        match self {
            TlsError::Read { path, .. } | TlsError::Invalid { path, .. } => Some(path),
            TlsError::KeyMismatch { key, .. } => Some(key),
            TlsError::Config(_) => None,
        }
    }
}

/// What the watcher reports after a reload attempt that changed something or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadEvent {
    /// New files were loaded; new handshakes use them. `not_after` is the new expiry.
    Reloaded { not_after: i64 },
    /// The files changed but could not be used; the previous configuration stays. Reported
    /// once per distinct broken state, not on every poll while it persists.
    Failed { error: String },
}

/// The webhook's current TLS configuration, reloadable. Cheap to clone (shared state).
#[derive(Clone)]
pub struct TlsReloader {
    inner: Arc<Inner>,
}

impl fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsReloader")
            .field("settings", &self.inner.settings)
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<ServerConfig>>,
    not_after: AtomicI64,
    /// Also serialises reloads.
    state: Mutex<ReloadState>,
}

struct ReloadState {
    /// The bytes behind `current`.
    material: Material,
    /// The last failure (bytes read, if any, and message), to report each broken state once.
    last_failure: Option<(Option<Material>, String)>,
}

/// The raw bytes of the configured files.
#[derive(Clone, PartialEq, Eq)]
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

enum Outcome {
    Unchanged,
    Swapped { not_after: i64 },
    Failed { error: TlsError, repeated: bool },
}

impl TlsReloader {
    /// Reads the certificate, key (and client CA) once and builds the configuration; any
    /// problem is an error naming the file, so a misconfigured webhook fails at start.
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let material = read_stable(&settings)?;
        let (config, not_after) = build(&settings, &provider, &material)?;
        warn_if_expired(&settings.cert, not_after);
        tracing::info!(
            cert = %settings.cert.display(),
            key = %settings.key.display(),
            client_ca = ?settings.client_ca.as_ref().map(|p| p.display().to_string()),
            not_after,
            http2 = settings.http2,
            "TLS certificate loaded"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                provider,
                current: RwLock::new(config),
                not_after: AtomicI64::new(not_after),
                state: Mutex::new(ReloadState {
                    material,
                    last_failure: None,
                }),
            }),
        })
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Expiry of the serving certificate in use (unix seconds).
    pub fn not_after(&self) -> i64 {
        self.inner.not_after.load(Ordering::Relaxed)
    }

    /// Re-reads the files. `Ok(true)`: something changed and the new configuration is in use;
    /// `Ok(false)`: nothing changed; `Err`: the files could not be used and the previous
    /// configuration stays. Blocking (file reads; may pause briefly while files are being
    /// replaced): from async code call it through `spawn_blocking`.
    #[allow(dead_code)] // API (e.g. a SIGHUP handler); main relies on `spawn_watcher`.
    pub fn reload(&self) -> Result<bool, TlsError> {
        match self.reload_outcome() {
            Outcome::Unchanged => Ok(false),
            Outcome::Swapped { .. } => Ok(true),
            Outcome::Failed { error, .. } => Err(error),
        }
    }

    /// Starts watching the files' directories (and polling) and reloading on change, until
    /// `shutdown` becomes `true` or its sender is dropped. Must be called inside a tokio
    /// runtime. `on_event` is called for each swap and each new failure (e.g. to count
    /// reloads and set the expiry metric); it runs on a runtime thread and must not block.
    pub fn spawn_watcher(
        &self,
        on_event: Arc<dyn Fn(ReloadEvent) + Send + Sync>,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        self.spawn_watcher_with(on_event, shutdown, true)
    }

    fn spawn_watcher_with(
        &self,
        on_event: Arc<dyn Fn(ReloadEvent) + Send + Sync>,
        mut shutdown: watch::Receiver<bool>,
        use_notify: bool,
    ) -> JoinHandle<()> {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        // Set up synchronously so that changes made right after this call are seen.
        let watcher = if use_notify {
            self.start_notify(tx.clone())
        } else {
            None
        };
        let poll_interval = self.inner.settings.poll_interval.max(MIN_POLL_INTERVAL);
        let this = self.clone();
        tokio::spawn(async move {
            // Both live as long as the task: dropping the watcher stops notifications, and
            // holding a sender keeps `rx.recv()` pending rather than closed.
            let _watcher = watcher;
            let _tx = tx;
            let mut poll =
                tokio::time::interval_at(tokio::time::Instant::now() + poll_interval, poll_interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tracing::debug!(
                poll_interval = ?poll_interval,
                notify = _watcher.is_some(),
                "TLS reload watcher started"
            );
            loop {
                if *shutdown.borrow_and_update() {
                    break;
                }
                let trigger = tokio::select! {
                    changed = shutdown.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        continue;
                    }
                    Some(()) = rx.recv() => {
                        tokio::time::sleep(DEBOUNCE).await;
                        while rx.try_recv().is_ok() {}
                        "file change"
                    }
                    _ = poll.tick() => "poll",
                };
                this.reload_and_report(trigger, &on_event).await;
            }
            tracing::debug!("TLS reload watcher stopped");
        })
    }

    async fn reload_and_report(
        &self,
        trigger: &'static str,
        on_event: &Arc<dyn Fn(ReloadEvent) + Send + Sync>,
    ) {
        let this = self.clone();
        let outcome = match tokio::task::spawn_blocking(move || this.reload_outcome()).await {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::error!(%error, "TLS reload task failed");
                return;
            }
        };
        let settings = &self.inner.settings;
        match outcome {
            Outcome::Unchanged => tracing::trace!(trigger, "TLS files unchanged"),
            Outcome::Swapped { not_after } => {
                tracing::info!(
                    trigger,
                    cert = %settings.cert.display(),
                    not_after,
                    "TLS certificate reloaded; new connections use it"
                );
                warn_if_expired(&settings.cert, not_after);
                on_event(ReloadEvent::Reloaded { not_after });
            }
            Outcome::Failed {
                error,
                repeated: false,
            } => {
                tracing::warn!(
                    trigger,
                    %error,
                    "TLS reload failed; still serving the previous certificate"
                );
                on_event(ReloadEvent::Failed {
                    error: error.to_string(),
                });
            }
            Outcome::Failed {
                error,
                repeated: true,
            } => tracing::debug!(trigger, %error, "TLS files still unusable"),
        }
    }

    fn reload_outcome(&self) -> Outcome {
        let inner = &*self.inner;
        let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        fn fail(state: &mut ReloadState, material: Option<Material>, error: TlsError) -> Outcome {
            let key = (material, error.to_string());
            let repeated = state.last_failure.as_ref() == Some(&key);
            state.last_failure = Some(key);
            Outcome::Failed { error, repeated }
        }
        let material = match read_stable(&inner.settings) {
            Ok(material) => material,
            Err(error) => return fail(&mut state, None, error),
        };
        if material == state.material {
            state.last_failure = None;
            return Outcome::Unchanged;
        }
        match build(&inner.settings, &inner.provider, &material) {
            Ok((config, not_after)) => {
                *inner.current.write().unwrap_or_else(PoisonError::into_inner) = config;
                inner.not_after.store(not_after, Ordering::Relaxed);
                state.material = material;
                state.last_failure = None;
                Outcome::Swapped { not_after }
            }
            Err(error) => fail(&mut state, Some(material), error),
        }
    }

    fn start_notify(&self, tx: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(event) if is_change(&event.kind) => {
                // Full means a reload is already pending: nothing lost.
                let _ = tx.try_send(());
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "TLS file watch error; reloading to be safe");
                let _ = tx.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::warn!(%error, "cannot watch the TLS files; relying on polling");
                return None;
            }
        };
        let mut watching = 0;
        for dir in watch_dirs(&self.inner.settings) {
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => watching += 1,
                Err(error) => tracing::warn!(
                    dir = %dir.display(),
                    %error,
                    "cannot watch a TLS directory; relying on polling for it"
                ),
            }
        }
        (watching > 0).then_some(watcher)
    }
}

/// Opening and reading files (our own reloads included) is not a change.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The directories holding the configured files (where the kubelet swaps `..data`).
fn watch_dirs(settings: &TlsSettings) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let files = [
        Some(&settings.cert),
        Some(&settings.key),
        settings.client_ca.as_ref(),
    ];
    for file in files.into_iter().flatten() {
        let dir = match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
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
fn read_stable(settings: &TlsSettings) -> Result<Material, TlsError> {
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

static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

fn build(
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

fn warn_if_expired(path: &Path, not_after: i64) {
    let now = chrono::Utc::now().timestamp();
    if not_after <= now {
        tracing::warn!(
            cert = %path.display(),
            not_after,
            "the TLS serving certificate has expired; the API server will refuse it"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use certs_dev::{CertRequest, DevCerts};
    use std::fs;
    use std::net::SocketAddr;
    use std::os::unix::fs::symlink;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{client, TlsAcceptor, TlsConnector};

    const LONG: Duration = Duration::from_secs(3600);

    fn settings(dir: &Path, poll_interval: Duration) -> TlsSettings {
        TlsSettings {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            client_ca: None,
            poll_interval,
            http2: false,
        }
    }

    fn localhost_certs() -> DevCerts {
        certs_dev::generate(&CertRequest::localhost().with_client("apiserver")).unwrap()
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    /// A Secret volume as the kubelet lays it out: `..data -> ..<ts>`, `tls.crt -> ..data/tls.crt`.
    fn kubelet_mount(root: &Path, ts: &str, certs: &DevCerts) {
        let data = root.join(format!("..{ts}"));
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("tls.crt"), &certs.server_cert_pem).unwrap();
        fs::write(data.join("tls.key"), &certs.server_key_pem).unwrap();
        fs::write(data.join("ca.crt"), &certs.ca_cert_pem).unwrap();
        symlink(format!("..{ts}"), root.join("..data")).unwrap();
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
    }

    /// The kubelet's update: new timestamped dir, new `..data_tmp` symlink renamed over
    /// `..data` (atomic), old dir removed.
    fn kubelet_swap(root: &Path, old_ts: &str, new_ts: &str, cert_pem: &str, key_pem: &str) {
        let data = root.join(format!("..{new_ts}"));
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("tls.crt"), cert_pem).unwrap();
        fs::write(data.join("tls.key"), key_pem).unwrap();
        symlink(format!("..{new_ts}"), root.join("..data_tmp")).unwrap();
        fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        fs::remove_dir_all(root.join(format!("..{old_ts}"))).unwrap();
    }

    /// An echo server over TLS, taking `current()` for each new connection; server-side
    /// handshake errors are sent to the returned channel.
    async fn echo_server(reloader: TlsReloader) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (err_tx, err_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = TlsAcceptor::from(reloader.current());
                let err_tx = err_tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(mut tls) => {
                            let mut buf = [0u8; 1024];
                            loop {
                                match tls.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => {
                                        if tls.write_all(&buf[..n]).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            let _ = err_tx.send(e.to_string());
                        }
                    }
                });
            }
        });
        (addr, err_rx)
    }

    struct Client<'a> {
        ca_pems: Vec<&'a str>,
        identity: Option<(&'a str, &'a str)>,
        alpn: Vec<Vec<u8>>,
        tls12_only: bool,
        name: &'a str,
    }

    impl<'a> Client<'a> {
        fn trusting(ca_pem: &'a str) -> Self {
            Self {
                ca_pems: vec![ca_pem],
                identity: None,
                alpn: Vec::new(),
                tls12_only: false,
                name: "localhost",
            }
        }

        async fn connect(&self, addr: SocketAddr) -> io::Result<client::TlsStream<TcpStream>> {
            let mut roots = RootCertStore::empty();
            for pem in &self.ca_pems {
                roots
                    .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
                    .unwrap();
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let versions: &[&SupportedProtocolVersion] = if self.tls12_only {
                &[&rustls::version::TLS12]
            } else {
                PROTOCOL_VERSIONS
            };
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots);
            let mut config = match self.identity {
                Some((cert, key)) => builder
                    .with_client_auth_cert(
                        vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                    )
                    .unwrap(),
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = self.alpn.clone();
            let tcp = TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from(self.name.to_owned()).unwrap();
            TlsConnector::from(Arc::new(config)).connect(name, tcp).await
        }
    }

    fn peer_leaf(stream: &client::TlsStream<TcpStream>) -> Vec<u8> {
        stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    async fn echo(stream: &mut client::TlsStream<TcpStream>, msg: &[u8]) -> io::Result<()> {
        stream.write_all(msg).await?;
        stream.flush().await?;
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "echo timed out"))??;
        assert_eq!(buf, msg);
        Ok(())
    }

    /// Collects watcher events for assertions.
    fn recorder() -> (
        Arc<dyn Fn(ReloadEvent) + Send + Sync>,
        mpsc::UnboundedReceiver<ReloadEvent>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(move |event| {
                let _ = tx.send(event);
            }),
            rx,
        )
    }

    async fn next_event(rx: &mut mpsc::UnboundedReceiver<ReloadEvent>) -> ReloadEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no reload event within 10 s")
            .unwrap()
    }

    #[test]
    fn loads_good_files_and_reports_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let certs = localhost_certs();
        certs.write_to(dir.path()).unwrap();
        let reloader = TlsReloader::load(settings(dir.path(), LONG)).unwrap();
        assert_eq!(reloader.not_after(), certs.not_after);
        let config = reloader.current();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(Arc::ptr_eq(&config, &reloader.current()));
        assert!(!reloader.reload().unwrap(), "nothing changed");
        assert!(Arc::ptr_eq(&config, &reloader.current()));
    }

    #[test]
    fn missing_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), LONG);
        let err = TlsReloader::load(s.clone()).unwrap_err();
        assert!(
            matches!(err, TlsError::Read { what: FileKind::Certificate, ref path, .. } if *path == s.cert),
            "{err}"
        );
        assert!(err.to_string().contains(&s.cert.display().to_string()), "{err}");

        fs::write(&s.cert, localhost_certs().server_cert_pem).unwrap();
        let err = TlsReloader::load(s.clone()).unwrap_err();
        assert_eq!(err.path(), Some(s.key.as_path()), "{err}");
        assert!(err.to_string().contains("private key"), "{err}");

        let certs = localhost_certs();
        certs.write_to(dir.path()).unwrap();
        let missing_ca = dir.path().join("no-such-ca.crt");
        let err = TlsReloader::load(TlsSettings {
            client_ca: Some(missing_ca.clone()),
            ..s
        })
        .unwrap_err();
        assert!(
            matches!(err, TlsError::Read { what: FileKind::ClientCa, ref path, .. } if *path == missing_ca),
            "{err}"
        );
    }

    #[test]
    fn garbage_files_name_the_path_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let certs = localhost_certs();
        let s = settings(dir.path(), LONG);
        let load_with = |cert: &str, key: &str| {
            fs::write(&s.cert, cert).unwrap();
            fs::write(&s.key, key).unwrap();
            TlsReloader::load(s.clone()).unwrap_err()
        };
        let good_cert = certs.server_cert_pem.as_str();
        let good_key = certs.server_key_pem.as_str();

        let err = load_with("hello, not a certificate\n", good_key);
        assert_eq!(err.path(), Some(s.cert.as_path()));
        assert!(err.to_string().contains("no PEM `CERTIFICATE` block"), "{err}");

        // The key where the certificate belongs.
        let err = load_with(good_key, good_key);
        assert_eq!(err.path(), Some(s.cert.as_path()), "{err}");

        // A certificate cut off half way (a partial write).
        let err = load_with(&good_cert[..good_cert.len() / 2], good_key);
        assert_eq!(err.path(), Some(s.cert.as_path()), "{err}");
        assert!(err.to_string().contains("PEM"), "{err}");

        // Well-formed PEM around bytes that are not a certificate.
        let err = load_with(
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
            good_key,
        );
        assert!(err.to_string().contains("X.509"), "{err}");

        let err = load_with(good_cert, "garbage");
        assert!(
            matches!(err, TlsError::Invalid { what: FileKind::PrivateKey, ref path, .. } if *path == s.key),
            "{err}"
        );
        assert!(err.to_string().contains("no PEM private key"), "{err}");
        let err = load_with(good_cert, "");
        assert_eq!(err.path(), Some(s.key.as_path()), "{err}");

        // An empty client CA bundle.
        fs::write(&s.cert, good_cert).unwrap();
        fs::write(&s.key, good_key).unwrap();
        let ca = dir.path().join("ca.crt");
        fs::write(&ca, "").unwrap();
        let err = TlsReloader::load(TlsSettings {
            client_ca: Some(ca.clone()),
            ..s.clone()
        })
        .unwrap_err();
        assert!(
            matches!(err, TlsError::Invalid { what: FileKind::ClientCa, ref path, .. } if *path == ca),
            "{err}"
        );
    }

    #[test]
    fn a_key_from_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), LONG);
        fs::write(&s.cert, localhost_certs().server_cert_pem).unwrap();
        fs::write(&s.key, localhost_certs().server_key_pem).unwrap();
        let err = TlsReloader::load(s.clone()).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&s.cert.display().to_string()), "{msg}");
        assert!(msg.contains(&s.key.display().to_string()), "{msg}");
    }

    #[test]
    fn reload_swaps_good_files_and_keeps_the_old_config_on_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), LONG);
        let first = localhost_certs();
        first.write_to(dir.path()).unwrap();
        let reloader = TlsReloader::load(s.clone()).unwrap();
        let original = reloader.current();

        // Only the certificate replaced: the key no longer matches.
        let second = first.reissue(&CertRequest::localhost().with_days(10)).unwrap();
        fs::write(&s.cert, &second.server_cert_pem).unwrap();
        assert!(matches!(reloader.reload(), Err(TlsError::KeyMismatch { .. })));
        assert!(Arc::ptr_eq(&original, &reloader.current()));
        assert_eq!(reloader.not_after(), first.not_after);
        // Still broken: still an error (the watcher reports it only once).
        assert!(reloader.reload().is_err());
        assert!(matches!(
            reloader.reload_outcome(),
            Outcome::Failed { repeated: true, .. }
        ));

        // The key arrives too.
        fs::write(&s.key, &second.server_key_pem).unwrap();
        assert!(reloader.reload().unwrap());
        assert!(!Arc::ptr_eq(&original, &reloader.current()));
        assert_eq!(reloader.not_after(), second.not_after);
        assert!(!reloader.reload().unwrap());

        // A file that disappears is an error too, and changes nothing.
        let swapped = reloader.current();
        fs::remove_file(&s.key).unwrap();
        assert!(matches!(reloader.reload(), Err(TlsError::Read { .. })));
        assert!(Arc::ptr_eq(&swapped, &reloader.current()));
    }

    #[tokio::test]
    async fn handshake_presents_the_certificate_with_http11_only_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let certs = localhost_certs();
        certs.write_to(dir.path()).unwrap();
        let reloader = TlsReloader::load(settings(dir.path(), LONG)).unwrap();
        let (addr, _errors) = echo_server(reloader).await;

        let mut client = Client::trusting(&certs.ca_cert_pem);
        client.alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut stream = client.connect(addr).await.unwrap();
        assert_eq!(peer_leaf(&stream), der(&certs.server_cert_pem));
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        echo(&mut stream, b"hello").await.unwrap();

        // A client that offers only h2 is refused rather than silently downgraded.
        client.alpn = vec![b"h2".to_vec()];
        assert!(client.connect(addr).await.is_err());

        // TLS 1.2 is accepted; by IP address too.
        let mut client = Client::trusting(&certs.ca_cert_pem);
        client.tls12_only = true;
        client.name = "127.0.0.1";
        let mut stream = client.connect(addr).await.unwrap();
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        echo(&mut stream, b"tls12").await.unwrap();
    }

    #[tokio::test]
    async fn http2_flag_offers_h2_then_http11() {
        let dir = tempfile::tempdir().unwrap();
        let certs = localhost_certs();
        certs.write_to(dir.path()).unwrap();
        let reloader = TlsReloader::load(TlsSettings {
            http2: true,
            ..settings(dir.path(), LONG)
        })
        .unwrap();
        assert_eq!(
            reloader.current().alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let (addr, _errors) = echo_server(reloader).await;
        let mut client = Client::trusting(&certs.ca_cert_pem);
        client.alpn = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
        let stream = client.connect(addr).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        client.alpn = vec![b"http/1.1".to_vec()];
        let stream = client.connect(addr).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kubelet_symlink_swap_is_picked_up_without_dropping_connections() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let first = localhost_certs();
        kubelet_mount(root, "2026_01_01_00_00_00.1", &first);
        // Polling effectively off: this must come from the directory watch.
        let reloader = TlsReloader::load(settings(root, LONG)).unwrap();
        let (on_event, mut events) = recorder();
        let (stop_tx, stop_rx) = watch::channel(false);
        let watcher = reloader.spawn_watcher(on_event, stop_rx);
        let (addr, _errors) = echo_server(reloader.clone()).await;

        let client = Client::trusting(&first.ca_cert_pem);
        let mut before = client.connect(addr).await.unwrap();
        assert_eq!(peer_leaf(&before), der(&first.server_cert_pem));
        echo(&mut before, b"before").await.unwrap();

        let second = first.reissue(&CertRequest::localhost()).unwrap();
        kubelet_swap(
            root,
            "2026_01_01_00_00_00.1",
            "2026_02_01_00_00_00.2",
            &second.server_cert_pem,
            &second.server_key_pem,
        );
        assert_eq!(
            next_event(&mut events).await,
            ReloadEvent::Reloaded {
                not_after: second.not_after
            }
        );
        assert_eq!(reloader.not_after(), second.not_after);

        let mut after = client.connect(addr).await.unwrap();
        assert_eq!(peer_leaf(&after), der(&second.server_cert_pem));
        echo(&mut after, b"after").await.unwrap();
        // The connection made before the swap still works, with the old certificate.
        echo(&mut before, b"still here").await.unwrap();
        assert_eq!(peer_leaf(&before), der(&first.server_cert_pem));

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("watcher stops on shutdown")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broken_replacement_keeps_the_old_certificate_and_reports_failed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let first = localhost_certs();
        kubelet_mount(root, "2026_01_01_00_00_00.1", &first);
        let reloader = TlsReloader::load(settings(root, LONG)).unwrap();
        let (on_event, mut events) = recorder();
        let (_stop_tx, stop_rx) = watch::channel(false);
        let _watcher = reloader.spawn_watcher(on_event, stop_rx);
        let (addr, _errors) = echo_server(reloader.clone()).await;

        // New certificate, but the key of a different one.
        let second = first.reissue(&CertRequest::localhost()).unwrap();
        let other = first.reissue(&CertRequest::localhost()).unwrap();
        kubelet_swap(
            root,
            "2026_01_01_00_00_00.1",
            "2026_02_01_00_00_00.2",
            &second.server_cert_pem,
            &other.server_key_pem,
        );
        match next_event(&mut events).await {
            ReloadEvent::Failed { error } => {
                assert!(error.contains("does not match"), "{error}")
            }
            event => panic!("expected Failed, got {event:?}"),
        }
        let client = Client::trusting(&first.ca_cert_pem);
        let mut stream = client.connect(addr).await.unwrap();
        assert_eq!(peer_leaf(&stream), der(&first.server_cert_pem));
        echo(&mut stream, b"old cert still served").await.unwrap();
        assert_eq!(reloader.not_after(), first.not_after);

        // A good replacement afterwards is picked up.
        kubelet_swap(
            root,
            "2026_02_01_00_00_00.2",
            "2026_03_01_00_00_00.3",
            &second.server_cert_pem,
            &second.server_key_pem,
        );
        assert_eq!(
            next_event(&mut events).await,
            ReloadEvent::Reloaded {
                not_after: second.not_after
            }
        );
        let stream = client.connect(addr).await.unwrap();
        assert_eq!(peer_leaf(&stream), der(&second.server_cert_pem));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn polling_picks_up_changes_without_notifications() {
        let dir = tempfile::tempdir().unwrap();
        let first = localhost_certs();
        first.write_to(dir.path()).unwrap();
        let reloader = TlsReloader::load(settings(dir.path(), Duration::from_millis(200))).unwrap();
        let (on_event, mut events) = recorder();
        let (stop_tx, stop_rx) = watch::channel(false);
        let watcher = reloader.spawn_watcher_with(on_event, stop_rx, false);

        let second = first.reissue(&CertRequest::localhost()).unwrap();
        second.write_to(dir.path()).unwrap();
        assert_eq!(
            next_event(&mut events).await,
            ReloadEvent::Reloaded {
                not_after: second.not_after
            }
        );
        let (addr, _errors) = echo_server(reloader.clone()).await;
        let stream = Client::trusting(&first.ca_cert_pem).connect(addr).await.unwrap();
        assert_eq!(peer_leaf(&stream), der(&second.server_cert_pem));

        // A persistently broken file is reported once, not on every poll.
        fs::write(dir.path().join("tls.key"), "broken").unwrap();
        assert!(matches!(
            next_event(&mut events).await,
            ReloadEvent::Failed { .. }
        ));
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(events.try_recv().is_err(), "failure reported again");

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("watcher stops on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn watcher_stops_when_the_shutdown_sender_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        localhost_certs().write_to(dir.path()).unwrap();
        let reloader = TlsReloader::load(settings(dir.path(), LONG)).unwrap();
        let (on_event, _events) = recorder();
        let (stop_tx, stop_rx) = watch::channel(false);
        let watcher = reloader.spawn_watcher(on_event, stop_rx);
        drop(stop_tx);
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("watcher stops")
            .unwrap();
    }

    #[tokio::test]
    async fn client_ca_mode_requires_a_client_certificate_from_that_ca() {
        let dir = tempfile::tempdir().unwrap();
        let certs = localhost_certs();
        let files = certs.write_to(dir.path()).unwrap();
        let reloader = TlsReloader::load(TlsSettings {
            client_ca: Some(files.ca_cert.clone()),
            ..settings(dir.path(), LONG)
        })
        .unwrap();
        let (addr, mut errors) = echo_server(reloader).await;

        // No client certificate: refused.
        let client = Client::trusting(&certs.ca_cert_pem);
        let refused = match client.connect(addr).await {
            Err(_) => true,
            Ok(mut stream) => echo(&mut stream, b"let me in").await.is_err(),
        };
        assert!(refused, "a client without a certificate got through");
        let server_error = tokio::time::timeout(Duration::from_secs(5), errors.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            server_error.to_lowercase().contains("certificate"),
            "{server_error}"
        );

        // A certificate from another CA: refused.
        let stranger = localhost_certs();
        let stranger_id = stranger.client.as_ref().unwrap();
        let mut client = Client::trusting(&certs.ca_cert_pem);
        client.identity = Some((&stranger_id.cert_pem, &stranger_id.key_pem));
        let refused = match client.connect(addr).await {
            Err(_) => true,
            Ok(mut stream) => echo(&mut stream, b"let me in").await.is_err(),
        };
        assert!(refused, "a client certificate from another CA got through");

        // certs-dev --client: accepted.
        let id = certs.client.as_ref().unwrap();
        client.identity = Some((&id.cert_pem, &id.key_pem));
        let mut stream = client.connect(addr).await.unwrap();
        echo(&mut stream, b"welcome").await.unwrap();
    }

    #[test]
    fn watches_the_directories_not_the_files() {
        let s = TlsSettings {
            cert: PathBuf::from("/etc/tls/tls.crt"),
            key: PathBuf::from("/etc/tls/tls.key"),
            client_ca: Some(PathBuf::from("/etc/client-ca/ca.crt")),
            poll_interval: LONG,
            http2: false,
        };
        assert_eq!(
            watch_dirs(&s),
            vec![PathBuf::from("/etc/tls"), PathBuf::from("/etc/client-ca")]
        );
        let relative = TlsSettings {
            cert: PathBuf::from("tls.crt"),
            key: PathBuf::from("tls.key"),
            client_ca: None,
            ..s
        };
        assert_eq!(watch_dirs(&relative), vec![PathBuf::from(".")]);
        assert!(!is_change(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
    }
}
