//! Test support for the end-to-end tests in `tests/tests/`: a private PostgreSQL, a schema
//! per test, and (later) helpers to run the real binaries.

pub mod postgres;
pub mod testdb;

pub use postgres::TempPostgres;
pub use testdb::TestDb;
