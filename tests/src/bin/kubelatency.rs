//! What the webhook adds to a create through a real kube-apiserver (docs/BENCHMARKS.md,
//! "Through the API server"): `bash tests/bench/kubelatency.sh`.
//!
//! Starts a private control plane (etcd + kube-apiserver from `KUBEBUILDER_ASSETS`), the real
//! `dedupe-admission` (next to this binary: build both with the same profile) against
//! `DATABASE_URL`, and a **no-op webhook**: the same TLS and HTTP stack (rustls with ring,
//! hyper HTTP/1.1, TCP_NODELAY) answering `allowed` with the request's uid after reading the
//! body, without a store. Each is registered the same way (CREATE on orchestrationruns, the
//! objectSelector on the delivery label, `failurePolicy: Fail`), each for a namespace of its
//! own. Then, in interleaved rounds on one kube client (one kept-alive connection), sequential
//! creates of
//! - `unlabelled`: runs without the label in the dedupe webhook's namespace (the selector
//!   keeps them from any webhook: the API server's own cost),
//! - `floor`: labelled runs in the no-op webhook's namespace (what calling *any* webhook costs),
//! - `dedupe`: labelled runs, each a new delivery, in the dedupe webhook's namespace,
//!
//! and prints p50/p90/p99 per case and the dedupe webhook's latency beyond the floor, as JSON.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use dedupe_tests::kube::{register_webhook, ControlPlane, NewRun, WebhookRegistration};
use dedupe_tests::{new_delivery, TestCerts, TestDb, Webhook};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "kubelatency",
    about = "Create latency through a real kube-apiserver: no webhook, a no-op webhook, the dedupe webhook"
)]
struct Args {
    /// Creates per case (sequential), after the warm-up.
    #[arg(long, default_value_t = 300)]
    creates: usize,
    /// Creates per case before measuring (connections, caches).
    #[arg(long, default_value_t = 30)]
    warmup: usize,
    /// Creates per case in one round; the cases take turns round by round.
    #[arg(long, default_value_t = 10)]
    round: usize,
    /// Extra flags for dedupe-admission.
    #[arg(long, allow_hyphen_values = true, num_args = 0..)]
    webhook_args: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let mut plane = ControlPlane::start_private().await?;
    let client = plane.admin_client().await?;

    let db = TestDb::new().await?;
    let certs = TestCerts::new()?;
    let dedupe_ns = plane.namespace("dedupe").await?;
    let floor_ns = plane.namespace("floor").await?;
    let kubeconfig = plane.admin_kubeconfig();
    let mut webhook_args: Vec<&str> = vec!["--reconcile", "off", "--namespaces", &dedupe_ns];
    webhook_args.extend(args.webhook_args.iter().map(String::as_str));
    let webhook = Webhook::start(
        db.url(),
        &certs,
        &webhook_args,
        &[("KUBECONFIG", &kubeconfig.to_string_lossy())],
    )
    .await?;
    let dedupe_url = format!("https://127.0.0.1:{}", webhook.addr.port());
    register_webhook(
        &client,
        &WebhookRegistration::new(&dedupe_ns, &dedupe_url, certs.ca_pem()),
    )
    .await?;

    let noop_port = serve_noop(&certs).await?;
    let noop_url = format!("https://127.0.0.1:{noop_port}");
    // The no-op allows everything, including register_webhook's probe: register it without
    // waiting for a deny, then wait until a create there reaches it.
    let noop = NoopRegistration::new(&client, &floor_ns, &noop_url, certs.ca_pem()).await?;

    let cases = [Case::Unlabelled, Case::Floor, Case::Dedupe];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    let (mut done, total) = (0, args.warmup + args.creates);
    while done < total {
        let n = args.round.min(total - done);
        for (i, case) in cases.iter().enumerate() {
            for _ in 0..n {
                let (namespace, run) = case.run(&dedupe_ns, &floor_ns);
                let started = Instant::now();
                run.create(&client, namespace)
                    .await?
                    .with_context(|| format!("{case:?} create"))?;
                let took = started.elapsed();
                if done >= args.warmup {
                    samples[i].push(took);
                }
            }
        }
        done += n;
    }
    anyhow::ensure!(
        noop.calls() >= total as u64,
        "the no-op webhook was called {} times",
        noop.calls()
    );
    let claims = webhook
        .metric("orchestration_dedupe_requests_total{operation=\"CREATE\",decision=\"claimed\"}")
        .await?;
    anyhow::ensure!(
        claims >= total as f64,
        "the dedupe webhook claimed {claims} of {total}"
    );

    let stats: Vec<_> = samples.iter_mut().map(|s| Percentiles::of(s)).collect();
    let out = json!({
        "creates_per_case": args.creates,
        "unlabelled": stats[0].json(),
        "floor": stats[1].json(),
        "dedupe": stats[2].json(),
        "floor_minus_unlabelled_p50_ms": ms(stats[1].p50.saturating_sub(stats[0].p50)),
        "dedupe_minus_floor_p50_ms": signed_ms(stats[2].p50, stats[1].p50),
        "dedupe_minus_floor_p99_ms": signed_ms(stats[2].p99, stats[1].p99),
    });
    println!("{out}");
    plane.stop();
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Case {
    Unlabelled,
    Floor,
    Dedupe,
}

impl Case {
    fn run<'a>(self, dedupe_ns: &'a str, floor_ns: &'a str) -> (&'a str, NewRun) {
        let run = NewRun::submitted(&new_delivery(), "codex-autonomous");
        match self {
            Case::Unlabelled => (
                dedupe_ns,
                NewRun {
                    label: None,
                    spec_delivery: None,
                    ..run
                },
            ),
            Case::Floor => (floor_ns, run),
            Case::Dedupe => (dedupe_ns, run),
        }
    }
}

struct Percentiles {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

impl Percentiles {
    fn of(samples: &mut [Duration]) -> Self {
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
            samples.get(i).copied().unwrap_or_default()
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"p50_ms": ms(self.p50), "p90_ms": ms(self.p90), "p99_ms": ms(self.p99), "max_ms": ms(self.max)})
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `a - b` in milliseconds, negative when `b` is larger.
fn signed_ms(a: Duration, b: Duration) -> f64 {
    ((a.as_secs_f64() - b.as_secs_f64()) * 1e6).round() / 1e3
}

/// The no-op webhook's registration, and a count of the reviews it answered.
struct NoopRegistration {
    calls: Arc<std::sync::atomic::AtomicU64>,
}

static NOOP_CALLS: std::sync::OnceLock<Arc<std::sync::atomic::AtomicU64>> = std::sync::OnceLock::new();

impl NoopRegistration {
    async fn new(client: &kube::Client, namespace: &str, url: &str, ca_pem: &str) -> Result<Self> {
        use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
        let registration = WebhookRegistration::new(namespace, url, ca_pem);
        let mut configuration: ValidatingWebhookConfiguration = serde_json::from_value(
            json!({"metadata": {"name": registration.object_name()}, "webhooks": []}),
        )?;
        let mut entry = dedupe_tests::kube::webhook_entry(
            "noop.orchestration.proompteng.ai",
            &format!("{url}/validate"),
            Some(ca_pem),
            namespace,
            json!({"matchExpressions": [{"key": dedupe_tests::kube::DELIVERY_LABEL, "operator": "Exists"}]}),
        );
        entry["sideEffects"] = json!("None");
        configuration.webhooks = Some(vec![serde_json::from_value(entry)?]);
        kube::Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .create(&Default::default(), &configuration)
            .await?;
        let calls = NOOP_CALLS.get_or_init(Default::default).clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let before = calls.load(std::sync::atomic::Ordering::Relaxed);
            NewRun::submitted(&new_delivery(), "codex-autonomous")
                .create_dry_run(client, namespace)
                .await??;
            if calls.load(std::sync::atomic::Ordering::Relaxed) > before {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the no-op webhook was never called");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        calls.store(0, std::sync::atomic::Ordering::Relaxed);
        Ok(Self { calls })
    }

    fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Serves the no-op webhook on a loopback port; returns the port.
async fn serve_noop(certs: &TestCerts) -> Result<u16> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(certs.certs.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(certs.certs.server_key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let calls = NOOP_CALLS.get_or_init(Default::default).clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let (acceptor, calls) = (acceptor.clone(), calls.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let calls = calls.clone();
                    async move {
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let uid = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["request"]["uid"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let answer = json!({
                            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                            "response": {"uid": uid, "allowed": true},
                        });
                        let response = hyper::Response::builder()
                            .header(hyper::header::CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from(answer.to_string())))
                            .unwrap_or_default();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(port)
}
