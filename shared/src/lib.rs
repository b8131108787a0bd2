//! Shared by the webhook, the pruner and `dedupe-claims`: the claim model, the PostgreSQL
//! claim store (its schema, migrations and every SQL statement) on its connection layer
//! (`db`), configuration, back-off and telemetry. The flag groups the binaries share are
//! behind the `cli` feature (`cli.rs`); without it the crate does not depend on clap.

pub mod backoff;
pub mod claim;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
mod db;
pub mod error;
pub mod group_commit;
pub mod inspect;
pub mod json_log;
pub mod log_writer;
pub mod migrate;
pub mod reconcile_store;
pub mod retry;
pub mod run;
pub mod shutdown;
pub mod sql;
pub mod store;
pub mod store_tls;
pub mod telemetry;
#[cfg(test)]
mod test_sink;

pub use backoff::{Backoff, BackoffWaits};
pub use claim::{Claim, ClaimKey, ClaimOutcome, ClaimScope, ClaimState, ExpiredCount, RunRef, UnknownScope};
#[cfg(feature = "cli")]
pub use cli::{CommonArgs, StoreArgs, StoreFlagDefaults};
pub use config::{LogFormat, MigrationMode, StoreConfig, TcpHealth};
pub use error::{ConfigError, StoreError, StoreTarget};
pub use group_commit::{GroupCommitConfig, GroupCommitCounters, GroupCommitStats};
pub use migrate::MigrationReport;
pub use reconcile_store::{Isolated, ObservedRun, ReconcileCounts};
pub use run::{KeyRejection, RejectReason, RunView, DELIVERY_ID_LABEL};
pub use store::{ClaimStore, ClaimTraffic, PrunedBatch, PrunerLock};
