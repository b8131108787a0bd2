//! Prometheus metrics, all named `orchestration_dedupe_*`, served as text on `/metrics`.
//! Label values are static strings or numbers, so counting a request allocates nothing.

use std::sync::atomic::AtomicI64;

use dedupe_store::ClaimStore;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: &'static str,
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every metric the webhook exports.
pub struct Metrics {
    registry: Registry,
    /// Answered AdmissionReviews by operation and decision.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to answer an AdmissionReview, by operation.
    pub latency: Family<OperationLabels, Histogram>,
    pub in_flight: Gauge,
    /// Requests answered with an HTTP error instead of a decision (400, 413, 415, 503).
    pub http_errors: Family<StatusLabels, Counter>,
    /// Store calls that failed or timed out.
    pub store_errors: Counter,
    /// Stale pending claims taken over.
    pub takeovers: Counter,
    /// API-server lookups that failed (the claim was kept).
    pub lookup_errors: Counter,
    /// Certificate reloads by result (`success`, `failure`).
    pub tls_reloads: Family<ResultLabels, Counter>,
    /// notAfter of the serving certificate, unix seconds.
    pub certificate_expiry: Gauge<i64, AtomicI64>,
    /// 1 when the last `/readyz` reached the store, else 0 (also before the first). Scraped
    /// from unready pods too, so a store outage stays visible after the pods leave the
    /// Service and the 503s stop.
    pub store_reachable: Gauge,
    /// The reconciler's (`orchestration_dedupe_reconcile_*`); registered whether or not it
    /// runs, so dashboards see zeros rather than gaps.
    pub reconcile: crate::reconcile::metrics::ReconcileMetrics,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~4 s: a claim is a millisecond or two; the API server gives up at 5 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 14,
    ))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orchestration_dedupe");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<OperationLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let in_flight = Gauge::default();
        let http_errors = Family::<StatusLabels, Counter>::default();
        let store_errors = Counter::default();
        let takeovers = Counter::default();
        let lookup_errors = Counter::default();
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        let certificate_expiry = Gauge::<i64, AtomicI64>::default();
        let store_reachable = Gauge::default();
        registry.register(
            "store_reachable",
            "1 when the last readiness check reached the claim store, else 0",
            store_reachable.clone(),
        );
        registry.register(
            "requests",
            "AdmissionReviews answered, by operation and decision",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer an AdmissionReview",
            latency.clone(),
        );
        registry.register(
            "in_flight_requests",
            "AdmissionReviews being answered now",
            in_flight.clone(),
        );
        registry.register(
            "http_errors",
            "Requests answered with an HTTP error status",
            http_errors.clone(),
        );
        registry.register(
            "store_errors",
            "Claim store calls that failed or timed out",
            store_errors.clone(),
        );
        registry.register(
            "takeovers",
            "Stale pending claims taken over for a new run",
            takeovers.clone(),
        );
        registry.register(
            "lookup_errors",
            "API-server lookups that failed (the claim was kept)",
            lookup_errors.clone(),
        );
        registry.register(
            "tls_reloads",
            "Serving certificate reloads, by result",
            tls_reloads.clone(),
        );
        registry.register(
            "serving_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate (unix seconds)",
            certificate_expiry.clone(),
        );
        let reconcile = crate::reconcile::metrics::ReconcileMetrics::default();
        reconcile.register(&mut registry);
        Self {
            registry,
            requests,
            latency,
            in_flight,
            http_errors,
            store_reachable,
            store_errors,
            takeovers,
            lookup_errors,
            tls_reloads,
            certificate_expiry,
            reconcile,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Exports group commit's batch counts read from `store` at each scrape
    /// (`group_commit_batches_total`, `group_commit_claims_total`; zeros when it is off).
    pub fn with_group_commit(mut self, store: &ClaimStore) -> Self {
        self.registry
            .register_collector(Box::new(GroupCommitCollector(store.clone())));
        self
    }

    pub fn http_error(&self, status: u16) {
        self.http_errors.get_or_create(&StatusLabels { status }).inc();
    }
}

/// Reads the store's group-commit counters when scraped: the mean batch size is
/// `claims / batches`, what an operator tunes `--group-commit-linger-us` and
/// `--group-commit-in-flight` by (docs/OPERATIONS.md).
#[derive(Debug)]
struct GroupCommitCollector(ClaimStore);

impl Collector for GroupCommitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (batches, claims) = self
            .0
            .group_commit_stats()
            .map_or((0, 0), |s| (s.batches, s.claims));
        for (name, help, value) in [
            (
                "group_commit_batches",
                "Group-commit batches sent to the claim store",
                batches,
            ),
            (
                "group_commit_claims",
                "Claims carried by group-commit batches (claims / batches: the mean batch size)",
                claims,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
