//! A primary and a streaming standby started from the installed PostgreSQL binaries, for the
//! failover tests (`tests/tests/failover.rs`): `initdb` for the primary, `pg_basebackup -R`
//! for the standby (synchronous when asked: `synchronous_standby_names = '*'`), then kill,
//! stop, promote, and bring an old primary back as a standby of the new one.
//!
//! Like [`crate::TempPostgres`]: a temp dir per node, run as the `postgres` user when root
//! (initdb refuses root), loopback ports, no Unix socket. Unlike it, commits are durable in
//! the sense the tests need: `synchronous_commit = on`, so a synchronous standby has the WAL
//! of every acknowledged commit. `fsync` stays off: the tests kill processes, not the
//! machine, and the page cache survives a process kill.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::postgres::{find_bin_dir, free_port, is_root, run, server_command, INITDB_ARGS, INSTALL_HINT};

/// How long a node may take to start, or a standby to start streaming.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Settings of every node (copied to the standby by `pg_basebackup`).
const NODE_SETTINGS: &str = "
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 100
shared_buffers = 32MB
fsync = off
full_page_writes = off
synchronous_commit = on
wal_level = replica
max_wal_senders = 10
wal_keep_size = 256MB
hot_standby = on
wal_receiver_status_interval = 1s
";

/// How a standby replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// Every commit waits for the standby to have flushed its WAL.
    Synchronous,
    /// Commits do not wait: the standby may lag.
    Asynchronous,
}

/// One PostgreSQL server of the pair.
pub struct PgNode {
    pub name: &'static str,
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres_user: bool,
    running: bool,
}

impl PgNode {
    fn new(name: &'static str) -> Result<Self> {
        let found = find_bin_dir().context(INSTALL_HINT)?;
        // initdb on PATH may be a symlink into the real directory (which also has
        // pg_basebackup): use the real one.
        let bin = std::fs::canonicalize(found.join("initdb"))
            .ok()
            .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
            .unwrap_or(found);
        let as_postgres_user = is_root();
        let dir = tempfile::Builder::new()
            .prefix("dedupe-pgha-")
            .tempdir()
            .context("creating a temp dir")?;
        if as_postgres_user {
            run(Command::new("chown").arg("postgres:").arg(dir.path()))?;
        }
        Ok(Self {
            name,
            bin,
            dir,
            port: free_port()?,
            as_postgres_user,
            running: false,
        })
    }

    /// A new primary: `initdb`, the shared settings, `synchronous_standby_names = '*'` when
    /// its standby is to be synchronous; started.
    pub fn primary(replication: Replication) -> Result<Self> {
        let mut node = Self::new("primary")?;
        run(node
            .command("initdb")
            .arg("-D")
            .arg(node.data_dir())
            .args(INITDB_ARGS))
        .context("initdb")?;
        let sync = match replication {
            Replication::Synchronous => "synchronous_standby_names = '*'\n",
            Replication::Asynchronous => "",
        };
        node.append_conf("postgresql.conf", &format!("{NODE_SETTINGS}{sync}"))?;
        node.start()?;
        Ok(node)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started, and streaming (and
    /// counted as synchronous when the primary asks for one) before this returns.
    pub fn standby_of(primary: &PgNode) -> Result<Self> {
        let mut node = Self::new("standby")?;
        run(node
            .command("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(node.data_dir())
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]))
        .context("pg_basebackup")?;
        // The primary's settings came along. Once promoted, this node has no standby of its
        // own: it must not wait for one (as CloudNativePG with `dataDurability: preferred`
        // drops the synchronous standby requirement when none is left).
        node.append_conf("postgresql.auto.conf", "\nsynchronous_standby_names = ''\n")?;
        node.start()?;
        Ok(node)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_else(|e| format!("(no server log: {e})"))
    }

    fn append_conf(&self, file: &str, text: &str) -> Result<()> {
        use std::io::Write;
        let path = self.data_dir().join(file);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Starts the server (and waits until it accepts connections; a standby, read-only).
    pub fn start(&mut self) -> Result<()> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-o", &format!("-p {}", self.port), "-l"])
            .arg(self.log_file())
            .args(["-w", "-t", &READY_WITHIN.as_secs().to_string(), "start"])
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "{}: pg_ctl start failed: {}\n{}",
                self.name,
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        self.running = true;
        Ok(())
    }

    /// Immediate stop: every server process exits at once, no checkpoint, open sessions
    /// see their socket close — a crashed primary.
    pub fn kill(&mut self) -> Result<()> {
        self.stop_mode("immediate")
    }

    /// Fast stop: sessions terminated, a shutdown checkpoint, and (on a primary) the WAL up
    /// to it sent to the standbys first — a clean switchover.
    pub fn stop(&mut self) -> Result<()> {
        self.stop_mode("fast")
    }

    fn stop_mode(&mut self, mode: &str) -> Result<()> {
        if self.running {
            run(self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", mode, "-w", "stop"]))?;
            self.running = false;
        }
        Ok(())
    }

    /// `pg_ctl promote -w`: returns once the standby has left recovery.
    pub fn promote(&self) -> Result<()> {
        run(self.command("pg_ctl").arg("-D").arg(self.data_dir()).args([
            "-w",
            "-t",
            &READY_WITHIN.as_secs().to_string(),
            "promote",
        ]))
        .map(|_| ())
    }

    /// Makes this stopped (cleanly) old primary a standby of `primary` and starts it: the
    /// switchover's second half, without `pg_rewind` since a clean stop leaves nothing the
    /// promoted standby has not got.
    pub fn follow(&mut self, primary: &PgNode) -> Result<()> {
        anyhow::ensure!(!self.running, "stop {} before making it a standby", self.name);
        std::fs::write(self.data_dir().join("standby.signal"), "")?;
        if self.as_postgres_user {
            run(Command::new("chown")
                .arg("postgres:")
                .arg(self.data_dir().join("standby.signal")))?;
        }
        self.append_conf(
            "postgresql.auto.conf",
            &format!(
                "\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={}'\n",
                primary.port, self.name
            ),
        )?;
        self.start()
    }

    /// A plain session (test set-up and checks).
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {}", self.name))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Waits until this primary has a standby streaming (counted as `sync` when `sync`).
    pub async fn wait_for_standby(&self, sync: bool) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let rows = client
                .query(
                    "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .await?;
            let ready = rows.iter().any(|row| {
                let state: Option<String> = row.get(0);
                !sync || state.as_deref() == Some("sync")
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{}: no standby streaming within {READY_WITHIN:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this node answers `pg_is_in_recovery() = false` on a new connection
    /// (a promoted standby accepting writes); the instant it did.
    pub async fn wait_writable(&self) -> Result<Instant> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(client) = self.client().await {
                if let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await {
                    if !row.get::<_, bool>(0) {
                        return Ok(Instant::now());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("{} did not accept writes within {READY_WITHIN:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops this standby's WAL receiver (an empty `primary_conninfo`, reloaded): from now on
    /// it lags behind its primary by every commit made.
    pub async fn stop_receiving(&self) -> Result<()> {
        let client = self.client().await?;
        // Two statements: ALTER SYSTEM refuses to run in a (multi-statement) transaction.
        client
            .batch_execute("ALTER SYSTEM SET primary_conninfo = ''")
            .await?;
        client.batch_execute("SELECT pg_reload_conf()").await?;
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let n: i64 = client
                .query_one("SELECT count(*) FROM pg_stat_wal_receiver", &[])
                .await?
                .get(0);
            if n == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{}: the WAL receiver did not stop", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn command(&self, program: &str) -> Command {
        server_command(&self.bin, program, self.as_postgres_user)
    }

    /// The server binaries directory.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }
}

impl Drop for PgNode {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// A primary and its standby.
pub struct PgPair {
    pub primary: PgNode,
    pub standby: PgNode,
}

impl PgPair {
    /// Starts both and returns once the standby streams (as `sync` when synchronous).
    pub async fn start(replication: Replication) -> Result<Self> {
        // initdb, pg_basebackup and pg_ctl block: off the async threads (multi-thread
        // runtime, as the failover tests use).
        let primary = tokio::task::block_in_place(|| PgNode::primary(replication))?;
        let standby = tokio::task::block_in_place(|| PgNode::standby_of(&primary))?;
        primary
            .wait_for_standby(replication == Replication::Synchronous)
            .await?;
        Ok(Self { primary, standby })
    }

    /// `postgres://postgres@127.0.0.1:P1,127.0.0.1:P2/postgres?target_session_attrs=read-write`
    pub fn multi_host_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
            self.primary.port, self.standby.port
        )
    }
}
