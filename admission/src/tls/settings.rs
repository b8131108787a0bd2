//! Where the TLS material comes from and how the server offers it, and what can go wrong
//! reading it: the types `config.rs` and `reload.rs` share, in a module of their own so
//! neither depends on `tls/mod.rs`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
