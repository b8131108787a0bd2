//! Test support for the end-to-end tests in `tests/tests/`: a private PostgreSQL, a schema
//! per test, the real webhook binary over TLS, fixtures-based AdmissionReview bodies, a real
//! Kubernetes control plane (`kube`), and a fake API server (the only mock, for faults the
//! real one cannot be made to produce on demand); the other binaries run through one process
//! harness (`binaries`, `process`, `signal`, `pruner`).

pub mod binaries;
pub mod fake_apiserver;
pub mod fixtures;
pub mod https;
pub mod kube;
pub mod pg_cluster;
pub mod postgres;
pub mod process;
pub mod pruner;
pub mod signal;
pub mod tcp_proxy;
pub mod testdb;
pub mod wait;
pub mod webhook;
pub mod wrapper;

pub use fake_apiserver::{FakeApiServer, FakeRun};
pub use fixtures::{Answer, Review};
pub use https::HttpsClient;
pub use postgres::TempPostgres;
pub use process::Process;
pub use testdb::{agents_run, claim_key, new_delivery, unreachable_url, TestDb};
pub use wait::{eventually, eventually_within};
pub use webhook::{Memory, TestCerts, Webhook, RECONCILE_LAST_SYNC};
