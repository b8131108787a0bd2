//! Live reload: the current configuration, swapped when the files change (directory
//! watch + poll), kept when the new files are unusable.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use dedupe_store::error::Chain;

use super::config::{build, read_stable, warn_if_expired, Material};
use super::settings::{TlsError, TlsSettings};

/// After a change notification, wait this long for the rest of a multi-file update.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Shortest accepted poll interval (a zero interval would spin).
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);

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

pub(super) enum Outcome {
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

    pub(super) fn spawn_watcher_with(
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
                let error = Chain(&error).to_string();
                tracing::warn!(
                    trigger,
                    %error,
                    "TLS reload failed; still serving the previous certificate"
                );
                on_event(ReloadEvent::Failed { error });
            }
            Outcome::Failed {
                error,
                repeated: true,
            } => tracing::debug!(trigger, error = %Chain(&error), "TLS files still unusable"),
        }
    }

    pub(super) fn reload_outcome(&self) -> Outcome {
        let inner = &*self.inner;
        let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        fn fail(state: &mut ReloadState, material: Option<Material>, error: TlsError) -> Outcome {
            let key = (material, Chain(&error).to_string());
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
pub(super) fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The directories holding the configured files (where the kubelet swaps `..data`).
pub(super) fn watch_dirs(settings: &TlsSettings) -> Vec<PathBuf> {
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
