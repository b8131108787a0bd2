//! Tests of the TLS configuration and its reload, over real handshakes on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::config::PROTOCOL_VERSIONS;
use super::reload::{is_change, watch_dirs, Outcome};
use super::*;
use certs_dev::{CertRequest, DevCerts};
use notify::event::{AccessKind, AccessMode};
use notify::EventKind;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{RootCertStore, SupportedProtocolVersion};
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
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

/// Fresh certificates mounted the kubelet's way, a reloader on them with its directory
/// watch running (polling effectively off, so reloads come from the watch), and an echo
/// server presenting what the reloader holds.
struct WatchedMount {
    dir: tempfile::TempDir,
    first: DevCerts,
    reloader: TlsReloader,
    events: mpsc::UnboundedReceiver<ReloadEvent>,
    stop: watch::Sender<bool>,
    watcher: JoinHandle<()>,
    addr: SocketAddr,
}

impl WatchedMount {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let first = localhost_certs();
        kubelet_mount(dir.path(), "2026_01_01_00_00_00.1", &first);
        let reloader = TlsReloader::load(settings(dir.path(), LONG)).unwrap();
        let (on_event, events) = recorder();
        let (stop, stop_rx) = watch::channel(false);
        let watcher = reloader.spawn_watcher(on_event, stop_rx);
        let (addr, _errors) = echo_server(reloader.clone()).await;
        Self {
            dir,
            first,
            reloader,
            events,
            stop,
            watcher,
            addr,
        }
    }
}

/// Signals the watcher to stop and waits for it.
async fn stop_watcher(stop: &watch::Sender<bool>, watcher: JoinHandle<()>) {
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("watcher stops on shutdown")
        .unwrap();
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
    // Polling effectively off: this must come from the directory watch.
    let WatchedMount {
        dir,
        first,
        reloader,
        mut events,
        stop,
        watcher,
        addr,
    } = WatchedMount::start().await;
    let root = dir.path();

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

    stop_watcher(&stop, watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_replacement_keeps_the_old_certificate_and_reports_failed() {
    let WatchedMount {
        dir,
        first,
        reloader,
        mut events,
        stop: _stop,
        watcher: _watcher,
        addr,
    } = WatchedMount::start().await;
    let root = dir.path();

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

    stop_watcher(&stop_tx, watcher).await;
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
