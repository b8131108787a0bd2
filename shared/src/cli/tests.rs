use clap::{CommandFactory, Parser};

use super::*;

struct Flagged;

impl StoreFlagDefaults for Flagged {
    const STORE_TIMEOUT_ENV: &'static str = "DEDUPE_TEST_STORE_TIMEOUT_MS";
    const STORE_TIMEOUT_MS: u64 = 2_000;
    const STORE_TIMEOUT_MAX_MS: Option<u64> = None;
    const STORE_TIMEOUT_HELP: &'static str = "Bound on each store call";
    const POOL_SIZE: PoolSize = PoolSize::Flag {
        env: "DEDUPE_TEST_POOL_SIZE",
        default: 16,
        help: "Connections",
    };
    const APPLICATION_NAME: Option<&'static str> = Some("dedupe-test");
    const HELP_PLACEMENT: &'static [(&'static str, &'static str)] =
        &[(ids::STORE_TIMEOUT_MS, "first"), (ids::DATABASE_CA, "second")];
}

struct Fixed;

impl StoreFlagDefaults for Fixed {
    const STORE_TIMEOUT_ENV: &'static str = "DEDUPE_TEST_FIXED_STORE_TIMEOUT_MS";
    const STORE_TIMEOUT_MS: u64 = 10_000;
    const STORE_TIMEOUT_MAX_MS: Option<u64> = Some(600_000);
    const STORE_TIMEOUT_HELP: &'static str = "Bound on each store call, in milliseconds";
    const POOL_SIZE: PoolSize = PoolSize::Fixed(1);
    const TCP_FLAGS: bool = false;
    const DATABASE_URL_REQUIRED: bool = false;
}

#[derive(Debug, Parser)]
struct FlaggedCli {
    #[arg(long, default_value_t = 0)]
    first: u32,
    #[arg(long, default_value_t = 0)]
    second: u32,
    #[command(flatten)]
    store: StoreArgs<Flagged>,
}

#[derive(Debug, Parser)]
struct FixedCli {
    #[command(flatten)]
    store: StoreArgs<Fixed>,
}

#[test]
fn defaults_and_values_come_through() -> Result<(), Box<dyn std::error::Error>> {
    let cli = FlaggedCli::try_parse_from(["t", "--database-url", "postgres://h/db"])?;
    assert_eq!(cli.store.store_timeout_ms, 2_000);
    assert_eq!(cli.store.pool_size, 16);
    assert_eq!(cli.store.tcp_health, TcpHealth::default());
    let cli = FlaggedCli::try_parse_from([
        "t",
        "--database-url",
        "postgres://h/db",
        "--store-timeout-ms",
        "250",
        "--pool-size",
        "3",
        "--database-keepalive-retries",
        "7",
    ])?;
    let config = cli.store.to_config()?;
    assert_eq!(config.timeout, Duration::from_millis(250));
    assert_eq!(config.pool_size, 3);
    assert_eq!(config.tcp_health.keepalive_retries, 7);
    assert_eq!(config.database.get_application_name(), Some("dedupe-test"));
    Ok(())
}

#[test]
fn bounds_are_checked_by_clap_naming_the_flag() {
    for (flag, value) in [
        ("--store-timeout-ms", "0"),
        ("--pool-size", "0"),
        ("--pool-size", "1025"),
    ] {
        let err = FlaggedCli::try_parse_from(["t", "--database-url", "postgres://h/db", flag, value]).err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains(flag), "{flag} {value}: {text}");
    }
    assert!(FixedCli::try_parse_from(["t", "--store-timeout-ms", "600001"]).is_err());
}

#[test]
fn a_fixed_pool_has_no_flag_and_an_optional_url_is_checked_when_building() -> Result<(), clap::Error> {
    let mut cli = FixedCli::try_parse_from(["t"])?;
    assert_eq!(cli.store.pool_size, 1);
    assert!(FixedCli::try_parse_from(["t", "--pool-size", "2"]).is_err());
    assert!(FixedCli::try_parse_from(["t", "--database-keepalive-retries", "2"]).is_err());
    // As if DATABASE_URL were unset (make test sets it for the whole run).
    cli.store.database_url = None;
    let err = cli.store.to_config().err().map(|e| e.to_string());
    assert_eq!(err.as_deref(), Some("--database-url (DATABASE_URL): is required"));
    let required = |cmd: clap::Command| {
        cmd.get_arguments()
            .any(|a| a.get_id() == ids::DATABASE_URL && a.is_required_set())
    };
    assert!(required(FlaggedCli::command()));
    assert!(!required(FixedCli::command()));
    Ok(())
}

#[test]
fn help_lists_each_placed_flag_after_its_anchor() {
    let help = FlaggedCli::command().render_help().to_string();
    let options = help.split_once("Options:").map_or("", |(_, options)| options);
    let at = |flag: &str| options.find(flag).unwrap_or(usize::MAX);
    let order = [
        "--first",
        "--store-timeout-ms",
        "--second",
        "--database-ca",
        "--database-url",
        "--pool-size",
        "--database-keepalive-idle-seconds",
    ];
    for pair in order.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{pair:?} in\n{help}");
    }
}
