use std::time::Duration;

use super::*;
use crate::config::TcpHealth;

fn server(code: &str) -> StoreError {
    StoreError::Database {
        code: code.into(),
        source: "ERROR: x".into(),
    }
}

#[test]
fn connection_level_failures_and_read_only_servers_discard_the_connection() {
    assert!(discards_connection(&StoreError::Timeout(Duration::from_secs(1))));
    assert!(discards_connection(&StoreError::Unavailable(
        "connection closed".into()
    )));
    assert!(discards_connection(&server("25006")), "read_only_sql_transaction");
    assert!(discards_connection(&server("57P01")), "admin_shutdown");
    assert!(discards_connection(&server("08006")), "connection_failure");
}

#[test]
fn ordinary_server_errors_keep_the_connection() {
    // A statement or lock timeout, a conflict, a constraint: the session is sound.
    for code in ["57014", "55P03", "40001", "23505", "42P01"] {
        assert!(!discards_connection(&server(code)), "{code}");
    }
    assert!(!discards_connection(&StoreError::UnexpectedRow("x".into())));
}

#[test]
fn tcp_health_fills_what_the_connection_string_left_unset() -> Result<(), tokio_postgres::Error> {
    let tcp = TcpHealth::default();
    let mut pg: tokio_postgres::Config = "host=h dbname=d".parse()?;
    apply_tcp_health(&mut pg, &tcp);
    assert_eq!(pg.get_keepalives_idle(), tcp.keepalive_idle);
    assert_eq!(pg.get_keepalives_interval(), Some(tcp.keepalive_interval));
    assert_eq!(pg.get_keepalives_retries(), Some(tcp.keepalive_retries));
    assert_eq!(pg.get_tcp_user_timeout(), Some(&tcp.user_timeout));

    // tokio-postgres reads `tcp_user_timeout` in seconds (libpq: milliseconds).
    let mut pg: tokio_postgres::Config =
        "host=h keepalives_idle=30 keepalives_interval=7 keepalives_retries=9 tcp_user_timeout=4".parse()?;
    apply_tcp_health(&mut pg, &tcp);
    assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(30));
    assert_eq!(pg.get_keepalives_interval(), Some(Duration::from_secs(7)));
    assert_eq!(pg.get_keepalives_retries(), Some(9));
    assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(4)));
    Ok(())
}
