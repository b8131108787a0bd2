//! The pgbench baseline.

use std::fmt::Write as _;

use anyhow::{ensure, Context, Result};
use dedupe_tests::Review;

use crate::{Deliveries, ScriptArgs};

/// What the fixture's claim key is made of (for the pgbench side).
pub(crate) struct KeyParts {
    namespace: String,
    orchestration: String,
}

pub(crate) fn key_parts() -> Result<KeyParts> {
    let review = Review::create("00000000-0000-4000-8000-000000000000", "run")?;
    let request = &review.json()["request"];
    let namespace = request["namespace"]
        .as_str()
        .context("the fixture has no request.namespace")?
        .to_owned();
    let orchestration = request["object"]["spec"]["orchestrationRef"]["name"]
        .as_str()
        .context("the fixture has no spec.orchestrationRef.name")?
        .to_owned();
    ensure!(
        !namespace.is_empty() && !orchestration.is_empty(),
        "fixture lacks a namespace or orchestrationRef"
    );
    Ok(KeyParts {
        namespace,
        orchestration,
    })
}

/// The durable baseline: the least a claim can be, one unique insert that
/// ignores a conflict, one transaction (and with `fsync=on` one WAL flush) per claim.
/// Not the product's SQL: the benchmark's yardstick.
const DURABLE_INSERT: &str = "INSERT INTO orchestration_dedupe_claims
        (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state)
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')
    ON CONFLICT (delivery_id, scope, namespace, orchestration) DO NOTHING";

/// Which statement the pgbench script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Statement {
    /// The webhook's own claim statement (the same-SQL comparison).
    Claim,
    /// A bare `INSERT … ON CONFLICT DO NOTHING` (the durable-insert baseline).
    Insert,
}

/// Replaces `$n` placeholders with pgbench `:variables` (longest number first is not
/// needed: a placeholder ends at the first non-digit).
pub(crate) fn to_pgbench(sql: &str, names: &[&str]) -> Result<String> {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(&(_, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            digits.push(d);
            chars.next();
        }
        let n: usize = digits.parse().with_context(|| "a `$` not followed by a number")?;
        let name = names
            .get(n.wrapping_sub(1))
            .with_context(|| format!("no variable for ${n}"))?;
        out.push(':');
        out.push_str(name);
    }
    Ok(out)
}

pub(crate) fn pgbench_script(args: &ScriptArgs) -> Result<()> {
    let names = [
        "delivery",
        "scope",
        "namespace",
        "orchestration",
        "run_namespace",
        "run_name",
        "run_uid",
    ];
    let (sql, what) = match args.statement {
        Statement::Claim => (
            dedupe_store::sql::CLAIM_INSERT,
            "The webhook's claim statement (dedupe_store::sql::CLAIM_INSERT)",
        ),
        Statement::Insert => (
            DURABLE_INSERT,
            "One unique INSERT … ON CONFLICT DO NOTHING per claim",
        ),
    };
    let claim = to_pgbench(sql, &names)?;
    let parts = key_parts()?;
    let mut script = String::new();
    let _ = writeln!(script, "-- {what}, parameters as pgbench variables.");
    match args.deliveries {
        // 19-digit random ids: a new delivery every time (collisions: ~1e-8 over a run).
        Deliveries::New => {
            script.push_str("\\set delivery random(1000000000000000000, 9223372036854775806)\n")
        }
        // Ids `1`..=N, claimed by the setup SQL under other run names: every call a duplicate.
        Deliveries::Duplicate => {
            let _ = writeln!(script, "\\set delivery random(1, {})", args.duplicate_set);
        }
    }
    script.push_str(&claim);
    script.push_str(";\n");
    std::fs::write(&args.out, script).with_context(|| format!("writing {}", args.out.display()))?;
    if args.deliveries == Deliveries::Duplicate {
        let setup = format!(
            "INSERT INTO orchestration_dedupe_claims \
             (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state) \
             SELECT g::text, 'orchestration', '{ns}', '{orch}', '{ns}', 'pgbench-holder-' || g, md5(g::text), 'pending' \
             FROM generate_series(1, {n}) g ON CONFLICT DO NOTHING;\n",
            ns = parts.namespace.replace('\'', "''"),
            orch = parts.orchestration.replace('\'', "''"),
            n = args.duplicate_set,
        );
        let mut path = args.out.clone().into_os_string();
        path.push(".setup.sql");
        std::fs::write(&path, setup).context("writing the setup SQL")?;
    }
    // Fixed values for the other parameters: the fixture's key parts, scope `orchestration`
    // (the webhook's default), and a run that is not the holder.
    for (name, value) in [
        ("scope", "orchestration"),
        ("namespace", parts.namespace.as_str()),
        ("orchestration", parts.orchestration.as_str()),
        ("run_namespace", parts.namespace.as_str()),
        ("run_name", "pgbench-run"),
        ("run_uid", "3f2a9c4e-8b1d-4c7a-9e55-1d2b3c4d5e6f"),
    ] {
        println!("{name}={value}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_variables() -> Result<()> {
        let out = to_pgbench(
            "VALUES ($1, $2) WHERE x = $1 AND y = $10",
            &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
        )?;
        assert_eq!(out, "VALUES (:a, :b) WHERE x = :a AND y = :j");
        assert!(to_pgbench("$3", &["a"]).is_err());
        Ok(())
    }
}
