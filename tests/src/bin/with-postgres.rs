//! `with-postgres -- COMMAND...`: runs COMMAND with `DATABASE_URL` pointing at a PostgreSQL.
//!
//! Order: `DATABASE_URL` if set; else a server answering at 127.0.0.1:5432 as user
//! `postgres` without a password; else a private throwaway server started from the
//! installed binaries (removed when COMMAND ends, also when it fails); else one line
//! saying what to install. Exits with COMMAND's exit code.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use dedupe_tests::TempPostgres;

const LOCAL_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("with-postgres: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run() -> Result<ExitCode> {
    let mut command = dedupe_tests::wrapper::command_from_args("with-postgres")?;

    let _private; // kept alive until the command ends, then stopped and removed
    if std::env::var_os("DATABASE_URL").is_some() {
        eprintln!("with-postgres: using DATABASE_URL from the environment");
    } else if local_server_answers().await {
        eprintln!("with-postgres: using the PostgreSQL at 127.0.0.1:5432");
        command.env("DATABASE_URL", LOCAL_SERVER_URL);
    } else {
        let started = std::time::Instant::now();
        let pg = tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .context("starting PostgreSQL")??;
        eprintln!(
            "with-postgres: started a private PostgreSQL on 127.0.0.1:{} in {:.1}s (removed on exit)",
            pg.port(),
            started.elapsed().as_secs_f64()
        );
        command.env("DATABASE_URL", pg.url());
        command.env("PG_BIN", pg.bin_dir());
        _private = pg;
    }

    dedupe_tests::wrapper::run_to_end(command).await
}

async fn local_server_answers() -> bool {
    let attempt = tokio_postgres::connect(LOCAL_SERVER_URL, tokio_postgres::NoTls);
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            client.simple_query("SELECT 1").await.is_ok()
        }
        _ => false,
    }
}
