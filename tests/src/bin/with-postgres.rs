//! `with-postgres -- COMMAND...`: runs COMMAND with `DATABASE_URL` pointing at a PostgreSQL.
//!
//! Order: `DATABASE_URL` if set; else a server answering at 127.0.0.1:5432 as user
//! `postgres` without a password; else a private throwaway server started from the
//! installed binaries (removed when COMMAND ends, also when it fails); else one line
//! saying what to install. Exits with COMMAND's exit code.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dedupe_tests::TempPostgres;
use tokio::process::Command;

const LOCAL_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// How long the command gets to exit after a forwarded SIGTERM before it is killed.
const FORWARDED_SIGTERM_GRACE: Duration = Duration::from_secs(20);

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
    let args: Vec<String> = std::env::args().skip(1).skip_while(|a| a == "--").collect();
    let Some((program, rest)) = args.split_first() else {
        bail!("usage: with-postgres -- COMMAND [ARGS...]");
    };
    let mut command = Command::new(program);
    command.args(rest);

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

    let mut child = command.spawn().with_context(|| format!("starting `{program}`"))?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let status = tokio::select! {
        status = child.wait() => status?,
        // Ctrl-C reaches the whole process group, so the command sees it too; wait for it.
        _ = tokio::signal::ctrl_c() => child.wait().await?,
        // SIGTERM for the wrapper alone (a CI timeout, a supervisor): pass it on so the
        // command can clean up, and only kill it if it has not ended after a grace period.
        _ = sigterm.recv() => {
            if let Some(pid) = child.id() {
                let _ = dedupe_tests::signal::send(pid, dedupe_tests::signal::Signal::TERM);
            }
            match tokio::time::timeout(FORWARDED_SIGTERM_GRACE, child.wait()).await {
                Ok(status) => status?,
                Err(_) => {
                    let _ = child.start_kill();
                    child.wait().await?
                }
            }
        }
    };
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(1),
    })
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
