//! The webhook's command line (flags with environment fallbacks), parsed once in `main`
//! and passed down as typed values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dedupe_store::cli::{ids, PoolSize, StoreArgs, StoreFlagDefaults};
use dedupe_store::config::{DEFAULT_PENDING_GRACE_SECONDS, MAX_PENDING_GRACE_SECONDS};
use dedupe_store::group_commit::{DEFAULT_IN_FLIGHT, DEFAULT_LINGER, DEFAULT_MAX_BATCH};
use dedupe_store::{ClaimScope, CommonArgs, GroupCommitConfig};

use crate::tls::selfmanaged::{
    SelfTlsConfigError, SelfTlsSettings, DEFAULT_CA_VALIDITY_SECONDS, DEFAULT_CERT_VALIDITY_SECONDS,
    DEFAULT_CHECK_SECONDS,
};

/// Default per-call store timeout: well under the webhook's `timeoutSeconds` (5 s by default)
/// so a slow store turns into a 503 the API server can act on, not a timed-out call.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 2_000;
/// Default size of the webhook's connection pool (bounded: a stuck store must not grow it).
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Largest AdmissionReview body accepted: 4 MiB. kube-apiserver decodes no write request
/// body over 3 MiB (`MaxRequestBodyBytes`, 3145728: twice etcd's 1.5 MiB request limit,
/// for JSON's overhead over protobuf; k8s.io/apiserver pkg/server/config.go, and
/// kubernetes/kubernetes#105863 "Request entity too large: limit is 3145728"), so a CREATE's
/// `object` is at most 3 MiB; an UPDATE's `object` and `oldObject` together are at most
/// 3 MiB for any update etcd can store (1.5 MiB each). The extra MiB is the envelope
/// (userInfo, options, JSON re-encoding). The body is buffered, so this bounds a request's memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// How many requests are read and decided at once; past it a request waits for a slot, then
/// gets a fast 503 (load shedding). Bodies are bounded separately
/// (`server::edge::MAX_BODIES_IN_MEMORY`, 16 of up to `--max-body-bytes`), and a request past its
/// parse holds a few hundred bytes, so this bounds the claims waiting on the store, not
/// memory. 64 is one full group-commit batch; too few slots, not the store, become the bound
/// on durable claims per second, as 16 did (docs/BENCHMARKS.md, "The defaults, and when to
/// change them").
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 64;
/// Bound on a request's headers (HTTP/1.1, from its first byte), and on waiting for a slot
/// plus reading its body: well under the chart's `timeoutSeconds: 5` (the API server's
/// default is 10 s), by when the API server has given up on the request anyway.
pub const DEFAULT_REQUEST_READ_TIMEOUT_MS: u64 = 3_000;
/// How long a keep-alive connection may sit with no request before the webhook closes it:
/// longer than the API server's HTTP client keeps one idle (90 s, Go's `IdleConnTimeout`), so
/// the client always closes first and never sends a create on a connection being closed
/// (it does not retry that POST: the create would be refused with `EOF`).
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 120;
/// How often the certificate files are re-read even without a change notification.
pub const DEFAULT_TLS_RELOAD_POLL_SECONDS: u64 = 30;
/// How long SIGTERM waits for in-flight requests before exiting anyway.
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 20;

/// Group commit is on: concurrent claims share one statement and one commit, so under load
/// a claim costs PostgreSQL a fraction of a lone insert and durable throughput rises with it
/// (measured in docs/BENCHMARKS.md, "Durable commits"). It adds no timer: a lone claim is
/// sent at once, by its own request. `--group-commit false` restores one statement per claim.
pub const DEFAULT_GROUP_COMMIT: bool = true;

/// Whether to ask the API server if a stale pending claim's run exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum KubeLookup {
    /// On when cluster configuration is found (in-cluster or kubeconfig), else off with a warning.
    #[default]
    Auto,
    On,
    Off,
}

/// Whether to run the reconciler (`admission/src/reconcile`): watch labelled runs and make the
/// claims agree with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Reconcile {
    /// On whenever an API-server client is configured (in-cluster or kubeconfig), else off.
    #[default]
    Auto,
    On,
    Off,
}

/// dedupe-admission: validating admission webhook that lets each delivery create at most
/// one OrchestrationRun.
#[derive(Debug, Clone, Parser)]
#[command(name = "dedupe-admission", version, about, long_about = None)]
pub struct Args {
    /// HTTPS listen address (POST /validate).
    #[arg(
        long,
        env = "JANGAR_ORCHESTRATION_DEDUPE_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    pub listen: SocketAddr,

    /// Plain-HTTP listen address for /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "JANGAR_ORCHESTRATION_DEDUPE_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: SocketAddr,

    /// Serving certificate chain (PEM); reloaded when it changes.
    #[arg(
        long,
        env = "JANGAR_ORCHESTRATION_DEDUPE_TLS_CERT",
        default_value = "/etc/orchestration-dedupe/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,

    /// Serving private key (PEM); reloaded when it changes.
    #[arg(
        long,
        env = "JANGAR_ORCHESTRATION_DEDUPE_TLS_KEY",
        default_value = "/etc/orchestration-dedupe/tls/tls.key"
    )]
    pub tls_key: PathBuf,

    /// CA bundle (PEM) that client certificates must chain to; unset = no client certificate required.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds between certificate re-reads when no file change was noticed.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_TLS_RELOAD_POLL_SECONDS", default_value_t = DEFAULT_TLS_RELOAD_POLL_SECONDS, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_reload_poll_seconds: u64,

    /// Self-managed certificates: keep a CA and serving certificate in this Secret
    /// (NAMESPACE/NAME), created and rotated by the webhook; its certificate is written to
    /// --tls-cert/--tls-key (a writable directory) and served from there. Unset = the files
    /// come from elsewhere (cert-manager, a Secret).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_SECRET")]
    pub tls_self_secret: Option<String>,

    /// With --tls-self-secret: ValidatingWebhookConfigurations (comma-separated) whose every
    /// entry's caBundle is kept trusting the Secret's CAs.
    #[arg(
        long,
        env = "JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_VALIDATING_WEBHOOKS",
        value_delimiter = ','
    )]
    pub tls_self_validating_webhooks: Vec<String>,

    /// With --tls-self-secret: MutatingWebhookConfigurations (comma-separated) kept the same way.
    #[arg(
        long,
        env = "JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_MUTATING_WEBHOOKS",
        value_delimiter = ','
    )]
    pub tls_self_mutating_webhooks: Vec<String>,

    /// With --tls-self-secret: the serving certificate's names (comma-separated DNS names and
    /// IP addresses), e.g. the Service's `NAME.NAMESPACE.svc`.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_DNS", value_delimiter = ',')]
    pub tls_self_dns: Vec<String>,

    /// Validity of a self-managed CA; a new one is made after two thirds of it, the old one
    /// trusted alongside until it expires.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_CA_VALIDITY_SECONDS", default_value_t = DEFAULT_CA_VALIDITY_SECONDS, value_parser = clap::value_parser!(u64).range(3..))]
    pub tls_self_ca_validity_seconds: u64,

    /// Validity of a self-managed serving certificate; renewed after two thirds of it.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_CERT_VALIDITY_SECONDS", default_value_t = DEFAULT_CERT_VALIDITY_SECONDS, value_parser = clap::value_parser!(u64).range(3..))]
    pub tls_self_cert_validity_seconds: u64,

    /// Seconds between each replica's checks of the Secret and the registrations (under a
    /// third of the serving certificate's validity).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_TLS_SELF_CHECK_SECONDS", default_value_t = DEFAULT_CHECK_SECONDS, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_self_check_seconds: u64,

    /// Serve HTTP/2 as well as HTTP/1.1 (with rapid-reset limits). Off by default.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_HTTP2", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub http2: bool,

    /// Which parts of a run make up its claim key.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_CLAIM_SCOPE", value_enum, default_value_t = ClaimScope::Orchestration)]
    pub claim_scope: ClaimScope,

    /// Seconds a pending claim is left alone before its run may be looked up and the claim
    /// taken over (1 to 31536000, a year).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_PENDING_GRACE_SECONDS", default_value_t = DEFAULT_PENDING_GRACE_SECONDS, value_parser = clap::value_parser!(u64).range(1..=MAX_PENDING_GRACE_SECONDS))]
    pub pending_grace_seconds: u64,

    /// Ask the API server whether a stale pending claim's run exists (needs RBAC get on orchestrationruns).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_KUBE_LOOKUP", value_enum, default_value_t = KubeLookup::Auto)]
    pub kube_lookup: KubeLookup,

    /// Watch labelled OrchestrationRuns and make the claims agree with them (back-fill,
    /// confirm, report conflicts); needs RBAC get/list/watch on orchestrationruns.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_RECONCILE", value_enum, default_value_t = Reconcile::Auto)]
    pub reconcile: Reconcile,

    /// Namespaces whose runs the reconciler watches (comma-separated); unset = all
    /// namespaces, with one cluster-wide watch. Set it when RBAC is per-namespace Roles.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_NAMESPACES", value_delimiter = ',', value_parser = parse_namespace)]
    pub namespaces: Vec<String>,

    /// Group commit: claims arriving while earlier ones are in flight go to the store together,
    /// one statement and one transaction per batch (no timer: a claim never waits for company).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_GROUP_COMMIT", default_value_t = DEFAULT_GROUP_COMMIT, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub group_commit: bool,

    /// Most claims in one group-commit batch.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_GROUP_COMMIT_MAX_BATCH", default_value_t = DEFAULT_MAX_BATCH as u16, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub group_commit_max_batch: u16,

    /// Most group-commit batches in flight at once (each holds one pooled connection while it runs).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_GROUP_COMMIT_IN_FLIGHT", default_value_t = DEFAULT_IN_FLIGHT as u16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub group_commit_in_flight: u16,

    /// Microseconds a queued claim waits for a running group-commit batch before another starts for it.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_GROUP_COMMIT_LINGER_US", default_value_t = DEFAULT_LINGER.as_micros() as u64, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub group_commit_linger_us: u64,

    /// Largest request body accepted (bytes); larger gets 413.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Requests read and decided at once; past it a request waits up to the read timeout, then gets 503.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_MAX_CONCURRENT_REQUESTS", default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS, value_parser = parse_max_concurrent)]
    pub max_concurrent_requests: usize,

    /// Milliseconds allowed for a request's headers (from their first byte), and again for its body (408 past it).
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_REQUEST_READ_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_READ_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_read_timeout_ms: u64,

    /// Seconds a keep-alive connection may sit with no request before it is closed; keep it
    /// above the API server's 90 s idle-connection timeout.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_IDLE_TIMEOUT_SECONDS", default_value_t = DEFAULT_IDLE_TIMEOUT_SECONDS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout_seconds: u64,

    /// Seconds to wait for in-flight requests after SIGTERM.
    #[arg(long, env = "JANGAR_ORCHESTRATION_DEDUPE_SHUTDOWN_GRACE_SECONDS", default_value_t = DEFAULT_SHUTDOWN_GRACE_SECONDS)]
    pub shutdown_grace_seconds: u64,

    #[command(flatten)]
    pub common: CommonArgs,

    /// Last, so that `--help` can list each store flag where it always stood
    /// ([`AdmissionStoreFlags::HELP_PLACEMENT`]).
    #[command(flatten)]
    pub store: StoreArgs<AdmissionStoreFlags>,
}

/// The webhook's store flags: a short timeout (a slow store must become a 503 before the API
/// server's own timeout), and a pool sized by flag.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionStoreFlags;

impl StoreFlagDefaults for AdmissionStoreFlags {
    const STORE_TIMEOUT_ENV: &'static str = "JANGAR_ORCHESTRATION_DEDUPE_STORE_TIMEOUT_MS";
    const STORE_TIMEOUT_MS: u64 = DEFAULT_STORE_TIMEOUT_MS;
    const STORE_TIMEOUT_MAX_MS: Option<u64> = None;
    const STORE_TIMEOUT_HELP: &'static str =
        "Bound on each store call; past it the webhook answers 503 and the failurePolicy applies";
    const POOL_SIZE: PoolSize = PoolSize::Flag {
        env: "JANGAR_ORCHESTRATION_DEDUPE_POOL_SIZE",
        default: DEFAULT_POOL_SIZE,
        help: "Maximum PostgreSQL connections held by this replica",
    };
    const HELP_PLACEMENT: &'static [(&'static str, &'static str)] = &[
        (ids::STORE_TIMEOUT_MS, "namespaces"),
        (ids::POOL_SIZE, "namespaces"),
        (ids::DATABASE_URL, "shutdown_grace_seconds"),
        (ids::DATABASE_CA, "migrations"),
        (ids::KEEPALIVE_IDLE_SECONDS, "log_format"),
        (ids::KEEPALIVE_INTERVAL_SECONDS, "log_format"),
        (ids::KEEPALIVE_RETRIES, "log_format"),
        (ids::TCP_USER_TIMEOUT_MS, "log_format"),
    ];
}

impl Args {
    pub fn store_timeout(&self) -> Duration {
        self.store.timeout()
    }

    /// The group commit settings, when it is on.
    pub fn group_commit(&self) -> Option<GroupCommitConfig> {
        self.group_commit.then_some(GroupCommitConfig {
            max_batch: usize::from(self.group_commit_max_batch),
            in_flight: usize::from(self.group_commit_in_flight),
            linger: Duration::from_micros(self.group_commit_linger_us),
        })
    }

    pub fn request_read_timeout(&self) -> Duration {
        Duration::from_millis(self.request_read_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }

    pub fn pending_grace(&self) -> Duration {
        Duration::from_secs(self.pending_grace_seconds)
    }

    /// The self-managed certificate settings, when `--tls-self-secret` is given.
    pub fn self_tls(&self) -> Result<Option<SelfTlsSettings>, SelfTlsConfigError> {
        let Some(secret) = &self.tls_self_secret else {
            return Ok(None);
        };
        SelfTlsSettings::new(
            secret,
            self.tls_self_validating_webhooks.clone(),
            self.tls_self_mutating_webhooks.clone(),
            &self.tls_self_dns,
            self.tls_self_ca_validity_seconds,
            self.tls_self_cert_validity_seconds,
            self.tls_self_check_seconds,
            self.tls_cert.clone(),
            self.tls_key.clone(),
        )
        .map(Some)
    }
}

fn parse_max_concurrent(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=4096).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a request count between 1 and 4096")),
    }
}

/// A namespace name: a DNS-1123 label, checked as the webhook checks a run's namespace.
fn parse_namespace(s: &str) -> Result<String, String> {
    let s = s.trim();
    match dedupe_store::run::dns1123_label_problem(s) {
        None => Ok(s.to_owned()),
        Some(problem) => Err(format!("namespace `{s}` {problem}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["dedupe-admission", "--database-url", "postgres://u@127.0.0.1/db"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    #[test]
    fn group_commit_is_on_by_default_with_the_documented_bounds() -> Result<(), clap::Error> {
        assert_eq!(
            parse(&[])?.group_commit(),
            Some(GroupCommitConfig {
                max_batch: DEFAULT_MAX_BATCH,
                in_flight: DEFAULT_IN_FLIGHT,
                linger: DEFAULT_LINGER,
            })
        );
        assert_eq!(
            parse(&["--group-commit"])?.group_commit(),
            Some(GroupCommitConfig {
                max_batch: DEFAULT_MAX_BATCH,
                in_flight: DEFAULT_IN_FLIGHT,
                linger: DEFAULT_LINGER,
            })
        );
        assert_eq!(parse(&["--group-commit", "false"])?.group_commit(), None);
        let tuned = parse(&[
            "--group-commit",
            "--group-commit-max-batch",
            "8",
            "--group-commit-in-flight",
            "2",
            "--group-commit-linger-us",
            "250",
        ])?;
        assert_eq!(
            tuned.group_commit(),
            Some(GroupCommitConfig {
                max_batch: 8,
                in_flight: 2,
                linger: Duration::from_micros(250),
            })
        );
        assert!(parse(&["--group-commit-max-batch", "0"]).is_err());
        assert!(parse(&["--group-commit-in-flight", "0"]).is_err());
        Ok(())
    }

    #[test]
    fn namespaces_are_comma_separated_and_checked() -> Result<(), clap::Error> {
        assert_eq!(parse(&[])?.namespaces, Vec::<String>::new());
        assert_eq!(parse(&[])?.reconcile, Reconcile::Auto);
        assert_eq!(
            parse(&["--namespaces", "agents,ci"])?.namespaces,
            vec!["agents", "ci"]
        );
        assert!(parse(&["--namespaces", "Agents"]).is_err());
        assert!(parse(&["--namespaces", "agents,"]).is_err());
        assert_eq!(parse(&["--reconcile", "off"])?.reconcile, Reconcile::Off);
        Ok(())
    }
}
