//! The certs-dev binary as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use base64::Engine;

fn certs_dev(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_certs-dev"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn writes_files_and_prints_the_ca_bundle_last() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let out_s = out.to_str().unwrap();
    let output = certs_dev(&[
        "--out",
        out_s,
        "--dns",
        "localhost",
        "--dns",
        "webhook.agents.svc",
        "--ip",
        "127.0.0.1,::1",
        "--days",
        "2",
        "--client",
        "apiserver",
    ]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let bundle = base64::engine::general_purpose::STANDARD.decode(last).unwrap();
    assert_eq!(bundle, std::fs::read(out.join("ca.crt")).unwrap());
    for name in ["tls.crt", "tls.key", "client.crt", "client.key"] {
        assert!(out.join(name).is_file(), "{name}");
    }
    let mode = std::fs::metadata(out.join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn bad_ip_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let output = certs_dev(&["--out", dir.path().to_str().unwrap(), "--ip", "notanip"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--ip") && stderr.contains("notanip"), "{stderr}");
    assert!(!dir.path().join("ca.crt").exists());
}

#[test]
fn no_names_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = certs_dev(&["--out", dir.path().to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--dns") && stderr.contains("--ip"), "{stderr}");
}

#[test]
fn unwritable_out_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("tls");
    let output = certs_dev(&["--out", out.to_str().unwrap(), "--dns", "localhost"]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(out.to_str().unwrap()), "{stderr}");
}

#[test]
fn bad_days_and_dns_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let output = certs_dev(&["--out", d, "--dns", "localhost", "--days", "0"]);
    assert!(!output.status.success());
    assert!(String::from_utf8(output.stderr).unwrap().contains("--days"));
    let output = certs_dev(&["--out", d, "--dns", "bad name"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("--dns") && stderr.contains("bad name"),
        "{stderr}"
    );
}
