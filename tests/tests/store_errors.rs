//! Store errors an operator can act on, from every real binary: a closed port, a libpq-only
//! `sslmode`, a database whose schema was never migrated. Each message names where the store
//! is (host:port), never the password, says the cause once, and what to do; the exit codes
//! are each binary's documented ones.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use dedupe_tests::TestDb;

const PASSWORD: &str = "s3cret-pw";

/// What a binary printed (stdout and stderr together: the daemons log to stdout) and its exit.
struct Done {
    code: Option<i32>,
    output: String,
}

async fn run(binary: &str, args: &[&str]) -> Result<Done> {
    let mut command = tokio::process::Command::new(dedupe_tests::binaries::binary(binary)?);
    for (name, _) in std::env::vars() {
        if name == "DATABASE_URL" || name.starts_with("JANGAR_ORCHESTRATION_DEDUPE_") {
            command.env_remove(name);
        }
    }
    let out = command
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .with_context(|| format!("{binary} did not finish within 90 s"))??;
    Ok(Done {
        code: out.status.code(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// A closed port on loopback, with a password in the URL.
fn closed_port_url() -> Result<(String, String)> {
    let port = dedupe_tests::postgres::free_port()?;
    Ok((
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres?connect_timeout=5"),
        format!("127.0.0.1:{port}"),
    ))
}

/// The binaries' arguments that reach the store first, with `url`.
fn args_of<'a>(binary: &str, url: &'a str, migrations: &'a str) -> Vec<&'a str> {
    match binary {
        "dedupe-claims" => vec!["stats", "--database-url", url],
        "dedupe-pruner" => vec![
            "--database-url",
            url,
            "--connect-attempts",
            "1",
            "--migrations",
            migrations,
        ],
        _ => vec![
            "--database-url",
            url,
            "--migrations",
            migrations,
            "--kube-lookup",
            "off",
            "--reconcile",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    }
}

fn assert_says_once(output: &str, cause: &str) {
    // Every line that reports the failure says the cause once.
    for line in output.lines().filter(|l| l.contains(cause)) {
        assert_eq!(line.matches(cause).count(), 1, "the cause repeated: {line}");
    }
    assert!(output.contains(cause), "{output}");
}

#[tokio::test]
async fn a_closed_port_is_named_with_what_to_check_and_no_password() -> Result<()> {
    // The CLI fails at once; the pruner after its one attempt; the webhook after its
    // migration retries (bounded, about 15 s).
    for (binary, code) in [
        ("dedupe-claims", 1),
        ("dedupe-pruner", 1),
        ("dedupe-admission", 1),
    ] {
        let (url, where_) = closed_port_url()?;
        let done = run(binary, &args_of(binary, &url, "apply")).await?;
        let out = &done.output;
        assert_eq!(done.code, Some(code), "{binary}: {out}");
        assert!(
            out.contains(&format!(
                "cannot connect to {where_} (database postgres, user postgres)"
            )),
            "{binary}: {out}"
        );
        assert!(
            out.contains("Check the host and port of --database-url"),
            "{binary}: {out}"
        );
        assert!(!out.contains(PASSWORD), "{binary} printed the password: {out}");
        assert_says_once(out, "Connection refused");
        assert!(
            !out.contains("error connecting to server: error connecting"),
            "{binary}: {out}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn sslmode_verify_full_points_at_database_ca() -> Result<()> {
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/postgres?sslmode=verify-full");
    for binary in ["dedupe-claims", "dedupe-pruner", "dedupe-admission"] {
        let done = run(binary, &args_of(binary, &url, "apply")).await?;
        let out = &done.output;
        assert_eq!(done.code, Some(2), "{binary}: a configuration error: {out}");
        assert!(
            out.contains("sslmode=verify-full") && out.contains("--database-ca"),
            "{binary}: {out}"
        );
        assert!(!out.contains(PASSWORD), "{binary}: {out}");
    }
    Ok(())
}

#[tokio::test]
async fn an_unmigrated_schema_says_how_to_migrate() -> Result<()> {
    let db = TestDb::new().await?;
    for binary in ["dedupe-claims", "dedupe-pruner"] {
        let done = run(binary, &args_of(binary, db.url(), "skip")).await?;
        let out = &done.output;
        assert_eq!(done.code, Some(1), "{binary}: {out}");
        assert!(
            out.contains("the claims table is missing at 127.0.0.1:"),
            "{binary}: {out}"
        );
        assert!(
            out.contains("--migrations apply") && out.contains("not migrated"),
            "{binary}: {out}"
        );
        assert_says_once(out, "does not exist");
    }
    Ok(())
}
