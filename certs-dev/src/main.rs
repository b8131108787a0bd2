//! certs-dev: writes a development CA (`ca.crt`), a serving certificate and key (`tls.crt`,
//! `tls.key`) signed by it, optionally a client certificate (`client.crt`, `client.key`), and
//! prints the base64 `caBundle` as the last line on stdout:
//!
//! ```text
//! CA_BUNDLE=$(certs-dev --out /tmp/dev-tls --dns localhost --ip 127.0.0.1)
//! ```
//!
//! For local runs and tests only.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use certs_dev::{CertRequest, DEFAULT_DAYS, MAX_DAYS};
use clap::Parser;

/// Makes a development CA and a serving certificate signed by it (never for production).
#[derive(Debug, Parser)]
#[command(name = "certs-dev", version, about, long_about = None)]
struct Args {
    /// Directory to write ca.crt, tls.crt, tls.key (and client.crt, client.key) into; created if missing.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// DNS name of the serving certificate (repeatable, or comma-separated).
    #[arg(long = "dns", value_name = "NAME", value_delimiter = ',')]
    dns: Vec<String>,

    /// IP address of the serving certificate (repeatable, or comma-separated).
    #[arg(long = "ip", value_name = "ADDR", value_delimiter = ',')]
    ip: Vec<IpAddr>,

    /// Validity of the certificates in days.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
    days: u32,

    /// Also write a client certificate with this name (client.crt, client.key) for testing mTLS.
    #[arg(long, value_name = "NAME")]
    client: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(bundle) => {
            println!("{bundle}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("certs-dev: error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<String, certs_dev::CertsError> {
    let req = CertRequest {
        dns_names: args.dns.clone(),
        ips: args.ip.clone(),
        days: args.days,
        client: args.client.clone(),
    };
    let certs = certs_dev::generate(&req)?;
    let files = certs.write_to(&args.out)?;
    let sans: Vec<String> = args
        .dns
        .iter()
        .cloned()
        .chain(args.ip.iter().map(ToString::to_string))
        .collect();
    eprintln!(
        "certs-dev: wrote {}, {}, {} (SANs: {}; valid for {} days)",
        files.ca_cert.display(),
        files.tls_cert.display(),
        files.tls_key.display(),
        sans.join(", "),
        args.days
    );
    if let (Some(cert), Some(key)) = (&files.client_cert, &files.client_key) {
        eprintln!(
            "certs-dev: wrote client certificate {}, {}",
            cert.display(),
            key.display()
        );
    }
    eprintln!("certs-dev: caBundle (base64 of ca.crt) follows on stdout");
    Ok(certs.ca_bundle_base64())
}
