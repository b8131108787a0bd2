//! TLS to PostgreSQL: encrypted by default when the server offers it, verified against a CA
//! bundle when one is given, refused when the certificate does not chain to it.

use std::time::Duration;

use anyhow::Result;
use dedupe_store::{ClaimKey, ClaimOutcome, ClaimScope, ClaimStore, RunRef, StoreConfig};
use dedupe_tests::TempPostgres;

fn run() -> RunRef {
    RunRef {
        namespace: "agents".into(),
        name: "run-tls".into(),
        uid: "u".into(),
    }
}

fn key() -> ClaimKey {
    ClaimKey::new(
        ClaimScope::Cluster,
        "agents",
        "o",
        &uuid::Uuid::new_v4().to_string(),
    )
}

/// How many of the store's sessions (application_name orchestration-dedupe) use TLS.
async fn encrypted_sessions(pg: &TempPostgres) -> Result<(i64, i64)> {
    let (client, conn) =
        tokio_postgres::connect(&format!("{}?sslmode=disable", pg.url()), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'orchestration-dedupe'",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

fn store(url: &str, ca: Option<&std::path::Path>) -> Result<ClaimStore> {
    let config = StoreConfig::new(url, 2, Duration::from_secs(5))?.with_database_ca(ca)?;
    Ok(ClaimStore::new(&config)?)
}

#[tokio::test]
async fn the_store_encrypts_when_the_server_offers_tls_and_verifies_with_a_ca() -> Result<()> {
    let certs = certs_dev::generate(&certs_dev::CertRequest::localhost())?;
    let pg = {
        let (cert, key) = (certs.server_cert_pem.clone(), certs.server_key_pem.clone());
        tokio::task::spawn_blocking(move || TempPostgres::start_with_tls(&cert, &key)).await??
    };
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &certs.ca_cert_pem)?;

    // sslmode=require without a CA: encrypted, certificate not verified (libpq semantics).
    let required = store(&format!("{}?sslmode=require", pg.url()), None)?;
    required.migrate().await?;
    assert!(matches!(
        required.claim(&key(), &run()).await?,
        ClaimOutcome::Claimed(_)
    ));
    let (encrypted, total) = encrypted_sessions(&pg).await?;
    assert!(
        total >= 1 && encrypted == total,
        "{encrypted} of {total} sessions encrypted"
    );
    drop(required);

    // The default (prefer) encrypts too, and a CA that signed the server's certificate verifies.
    let verified = store(&pg.url(), Some(&ca))?;
    assert!(matches!(
        verified.claim(&key(), &run()).await?,
        ClaimOutcome::Claimed(_)
    ));

    // A CA that did not sign it: refused, with a message that says why.
    let other = certs_dev::generate(&certs_dev::CertRequest::localhost())?;
    let wrong = dir.path().join("wrong-ca.crt");
    std::fs::write(&wrong, &other.ca_cert_pem)?;
    let error = store(&pg.url(), Some(&wrong))?
        .ping()
        .await
        .err()
        .map(|e| dedupe_store::error::Chain(&e).to_string())
        .expect("a server certificate from another CA is refused");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    Ok(())
}

#[tokio::test]
async fn require_against_a_server_without_tls_fails_and_a_bad_ca_file_is_a_config_error() -> Result<()> {
    let pg = tokio::task::spawn_blocking(TempPostgres::start).await??;
    assert!(store(&format!("{}?sslmode=require", pg.url()), None)?
        .ping()
        .await
        .is_err());
    assert!(
        store(&pg.url(), None)?.ping().await.is_ok(),
        "prefer falls back to plain TCP"
    );
    let missing = std::path::Path::new("/nonexistent/ca.crt");
    let error = StoreConfig::new(&pg.url(), 2, Duration::from_secs(5))?
        .with_database_ca(Some(missing))
        .err()
        .map(|e| e.to_string())
        .expect("a missing --database-ca file is refused");
    assert!(
        error.contains("--database-ca") && error.contains("/nonexistent/ca.crt"),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn a_ca_bundle_makes_tls_required_and_refuses_sslmode_disable() -> Result<()> {
    // A server without TLS: with a CA configured the store must not fall back to plain text.
    let pg = tokio::task::spawn_blocking(TempPostgres::start).await??;
    let certs = certs_dev::generate(&certs_dev::CertRequest::localhost())?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &certs.ca_cert_pem)?;
    assert!(
        store(&pg.url(), Some(&ca))?.ping().await.is_err(),
        "no plain-text fallback with a CA"
    );
    let error = StoreConfig::new(
        &format!("{}?sslmode=disable", pg.url()),
        2,
        Duration::from_secs(5),
    )?
    .with_database_ca(Some(&ca))
    .err()
    .map(|e| e.to_string())
    .expect("--database-ca with sslmode=disable is refused");
    assert!(error.contains("sslmode=disable"), "{error}");
    Ok(())
}
