//! Prometheus metrics, served as text on `/metrics`: the webhook's own, all named
//! `orchestration_dedupe_*` (with `orchestration_dedupe_build_info{version,commit}`), and the
//! standard `process_*` metrics every Prometheus client library exports, read from `/proc` at
//! each scrape. Label values are static strings or numbers, so counting a request allocates
//! nothing.

use std::sync::atomic::AtomicI64;

use dedupe_store::{ClaimStore, GroupCommitCounters};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub commit: &'static str,
}

/// The crate version this binary was built from.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this binary was built from (`git rev-parse --short HEAD` at build time, or the
/// `DEDUPE_BUILD_COMMIT` environment variable; `unknown` without either: see build.rs).
pub const BUILD_COMMIT: &str = env!("DEDUPE_BUILD_COMMIT");

/// The prefix of the webhook's own metrics.
const PREFIX: &str = "orchestration_dedupe";

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
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix(PREFIX);
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: BUILD_VERSION,
                commit: BUILD_COMMIT,
            })
            .set(1);
        registry.register(
            "build_info",
            "The version and commit this webhook was built from (always 1)",
            build_info,
        );
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
        reconcile.register(registry);
        Self {
            registry: root,
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
            .sub_registry_with_prefix(PREFIX)
            .register_collector(Box::new(GroupCommitCollector(store.group_commit_counters())));
        self
    }

    pub fn http_error(&self, status: u16) {
        self.http_errors.get_or_create(&StatusLabels { status }).inc();
    }
}

/// Reads the store's group-commit counters when scraped (`None`: group commit is off): the
/// mean batch size is `claims / batches`, what an operator tunes `--group-commit-linger-us`
/// and `--group-commit-in-flight` by (docs/OPERATIONS.md). Holds the counters only, not a
/// store clone.
#[derive(Debug)]
struct GroupCommitCollector(Option<GroupCommitCounters>);

impl Collector for GroupCommitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (batches, claims) = self
            .0
            .as_ref()
            .map(GroupCommitCounters::stats)
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

/// The standard process metrics (names and meanings as the Prometheus client libraries
/// export them), read from `/proc/self` at each scrape. Where `/proc` is not there (not
/// Linux), nothing is exported rather than zeros.
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of `/proc/<pid>/stat`'s times: the kernel's USER_HZ, 100 on every
/// Linux architecture Kubernetes runs on (Prometheus' own procfs library assumes the same;
/// asking `sysconf` would need `unsafe`, which this workspace forbids).
const USER_HZ: f64 = 100.0;

/// What `/proc` says about this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub start_time_seconds: f64,
    pub virtual_memory_bytes: u64,
    pub resident_memory_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// Reads `/proc/self/{stat,status,fd,limits}` and `/proc/stat`; `None` without `/proc`.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let mut stats = Self::parse(&stat, &boot, &status, limits.as_deref())?;
        stats.open_fds = open_fds;
        Some(stats)
    }

    /// The figures in the files' texts (`open_fds` is left 0: it is a directory listing).
    fn parse(stat: &str, boot: &str, status: &str, limits: Option<&str>) -> Option<Self> {
        // Fields after the command name, which is in parentheses and may hold spaces: the
        // first of these is field 3 (state) of proc(5).
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        let utime = field(14)?;
        let stime = field(15)?;
        let start_ticks = field(22)?;
        let vsize = field(23)?;
        let btime: u64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let max_fds = limits.and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            // "Max open files   <soft>   <hard>   files": the soft limit applies.
            line.trim_start_matches("Max open files")
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
        Some(Self {
            cpu_seconds: (utime + stime) as f64 / USER_HZ,
            start_time_seconds: btime as f64 + start_ticks as f64 / USER_HZ,
            virtual_memory_bytes: vsize,
            resident_memory_bytes: rss_kib * 1024,
            open_fds: 0,
            max_fds,
        })
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        let metric = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?;
        cpu.encode(metric)?;
        let gauges: [(&str, &str, Option<f64>); 5] = [
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                Some(s.start_time_seconds),
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                Some(s.resident_memory_bytes as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                Some(s.virtual_memory_bytes as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                Some(s.open_fds as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds.map(|n| n as f64),
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_procfs_documents_them() {
        // A command name with spaces and a parenthesis, as `comm` may be.
        let stat = "4242 (dedupe (adm) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 123456 104857600 2048 18446744073709551615";
        let boot = "cpu  1 2 3\nbtime 1800000000\nprocesses 10\n";
        let status = "Name:\tdedupe-admission\nVmSize:\t  102400 kB\nVmRSS:\t    8192 kB\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1048576              1048576              files\n";
        let s = ProcessStats::parse(stat, boot, status, Some(limits)).expect("parsed");
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.start_time_seconds, 1_800_000_000.0 + 1234.56);
        assert_eq!(s.virtual_memory_bytes, 104_857_600);
        assert_eq!(s.resident_memory_bytes, 8192 * 1024);
        assert_eq!(s.max_fds, Some(1_048_576));
        assert!(ProcessStats::parse("garbage", boot, status, None).is_none());
    }

    #[test]
    fn the_exposition_has_build_info_and_process_metrics_unprefixed() {
        let text = Metrics::new().encode();
        let build = format!(
            "orchestration_dedupe_build_info{{version=\"{BUILD_VERSION}\",commit=\"{BUILD_COMMIT}\"}} 1"
        );
        assert!(text.contains(&build), "{text}");
        assert!(!BUILD_COMMIT.is_empty());
        if std::path::Path::new("/proc/self/stat").exists() {
            for name in [
                "process_cpu_seconds_total ",
                "process_start_time_seconds ",
                "process_resident_memory_bytes ",
                "process_virtual_memory_bytes ",
                "process_open_fds ",
                "process_max_fds ",
            ] {
                assert!(
                    text.lines().any(|l| l.starts_with(name)),
                    "{name} missing:\n{text}"
                );
            }
        }
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(
            text.contains("orchestration_dedupe_in_flight_requests 0"),
            "{text}"
        );
    }
}
