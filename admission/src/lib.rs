//! dedupe-admission as a library: the webhook's app state, its two routers and the servers
//! behind them, so tests (and other binaries) can run the request path in-process.
//!
//! The request path: [`run::run`] builds the [`App`] and starts [`server::serve_https`],
//! whose [`server::webhook_router`] sends `POST /validate` to [`handler::validate`], which
//! runs the pure decision table in [`decision`] against the claim store.

pub mod config;
pub mod decision;
pub mod error;
pub mod handler;
pub mod lookup;
pub mod metrics;
pub mod mutate;
pub mod reconcile;
pub mod review;
pub mod run;
pub mod server;
pub mod tls;

pub use handler::App;
pub use run::{run, RunError, Server};
pub use server::{ops_router, serve_https, serve_ops, webhook_router};
