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
//! `settings.rs` says where the material comes from (and what can go wrong with it);
//! `config.rs` reads, parses and builds (files → rustls `ServerConfig`); `reload.rs` holds the
//! current configuration and the watcher; `tests.rs` covers both, including the kubelet's
//! symlink swap and a broken replacement that keeps the old certificate.

mod config;
mod reload;
pub mod selfmanaged;
mod settings;
#[cfg(test)]
mod tests;

pub use reload::{ReloadEvent, TlsReloader};
pub use settings::{FileKind, TlsError, TlsSettings, ALPN_H2, ALPN_HTTP11};
