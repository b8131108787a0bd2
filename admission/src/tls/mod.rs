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
//!
//! `config.rs` reads, parses and builds (files → rustls `ServerConfig`); `reload.rs` holds the
//! current configuration and the watcher; `tests.rs` covers both, including the kubelet's
//! symlink swap and a broken replacement that keeps the old certificate.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod config;
mod reload;
pub mod selfmanaged;
#[cfg(test)]
mod tests;

pub use reload::{ReloadEvent, TlsReloader};

/// ALPN protocol id for HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// ALPN protocol id for HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

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
    #[error("cannot read the TLS {what} file {}", path.display())]
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
    #[error("cannot build the TLS server configuration")]
    Config(#[source] rustls::Error),
}

impl TlsError {
    /// The file the error is about (the key file for a mismatch), if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            TlsError::Read { path, .. } | TlsError::Invalid { path, .. } => Some(path),
            TlsError::KeyMismatch { key, .. } => Some(key),
            TlsError::Config(_) => None,
        }
    }
}
