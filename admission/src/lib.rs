//! dedupe-admission as a library: the webhook's app state, its two routers and the servers
//! behind them, so tests (and other binaries) can run the request path in-process. The
//! request path is traced in three hops in `main.rs`.

pub mod config;
pub mod decision;
pub mod error;
pub mod handler;
pub mod lookup;
pub mod metrics;
pub mod mutate;
pub mod orchestration_run;
pub mod reconcile;
pub mod review;
pub mod server;
pub mod startup;
pub mod tls;
pub mod verdict;

pub use handler::App;
pub use server::{ops_router, serve_https, serve_ops, webhook_router};
pub use startup::Server;
