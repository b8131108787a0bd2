//! A private, throwaway PostgreSQL started from the installed server binaries: `initdb`
//! into a temporary directory (as the `postgres` user when running as root, since initdb
//! refuses root), a free loopback port, no Unix socket, fast non-durable settings for tests.
//! Stopped and removed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// One line telling the user what to install when no server binaries are found.
pub const INSTALL_HINT: &str =
    "no PostgreSQL server binaries found (looked for initdb on PATH, in $PG_BIN and in \
     /usr/lib/postgresql/*/bin): install them (Debian/Ubuntu: `apt-get install postgresql`, \
     Fedora: `dnf install postgresql-server`, macOS: `brew install postgresql@15`) or set DATABASE_URL";

/// Set to `1` to start the server with durable commits (`fsync=on`, `synchronous_commit=on`,
/// `full_page_writes=on`), for benchmarks that compare against durable commits.
pub const DURABLE_ENV: &str = "WITH_POSTGRES_DURABLE";

/// A running private PostgreSQL.
pub struct TempPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres_user: bool,
    running: bool,
    ssl: bool,
}

impl TempPostgres {
    /// Finds the binaries, initialises a cluster and starts it.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// The same, serving TLS with the given certificate and key (PEM) as well as plain TCP.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Result<Self> {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Result<Self> {
        let bin = find_bin_dir().context(INSTALL_HINT)?;
        let as_postgres_user = is_root();
        let dir = tempfile::Builder::new()
            .prefix("dedupe-pg-")
            .tempdir()
            .context("creating a temp dir")?;
        if as_postgres_user {
            run(Command::new("chown").arg("postgres:").arg(dir.path()))
                .context("handing the temp dir to the postgres user (initdb refuses to run as root)")?;
        }
        let mut pg = Self {
            bin,
            dir,
            port: free_port()?,
            as_postgres_user,
            running: false,
            ssl: tls.is_some(),
        };
        let data = pg.data_dir();
        run(pg.command("initdb").arg("-D").arg(&data).args(INITDB_ARGS)).context("initdb")?;
        if let Some((cert, key)) = tls {
            pg.install_server_certificate(cert, key)?;
        }
        pg.start_server()?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server binaries directory (for pgbench, psql).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Writes `server.crt`/`server.key` into the data directory, owned by the server's user
    /// with the key private (PostgreSQL refuses a key others can read).
    fn install_server_certificate(&self, cert: &str, key: &str) -> Result<()> {
        let data = self.data_dir();
        std::fs::write(data.join("server.crt"), cert)?;
        std::fs::write(data.join("server.key"), key)?;
        run(Command::new("chmod").arg("0600").arg(data.join("server.key")))?;
        if self.as_postgres_user {
            run(Command::new("chown")
                .arg("postgres:")
                .arg(data.join("server.crt"))
                .arg(data.join("server.key")))?;
        }
        Ok(())
    }

    /// (Re)starts the server on the same port and data directory. Durable (`fsync=on`) only
    /// when [`DURABLE_ENV`] is `1`.
    pub fn start_server(&mut self) -> Result<()> {
        // Tests want speed, not durability; the durable benchmarks (WITH_POSTGRES_DURABLE=1,
        // docs/BENCHMARKS.md) want commits that wait for the WAL flush, as in production.
        let durability = if std::env::var_os(DURABLE_ENV).is_some_and(|v| v == "1") {
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
        } else {
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        };
        let settings = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=400 \
             {durability} -c shared_buffers=128MB",
            self.port
        );
        let settings = if self.ssl {
            format!("{settings} -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key")
        } else {
            settings
        };
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-o", &settings, "-l"])
            .arg(self.log_file())
            .args(["-w", "-t", "30", "start"])
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            let log =
                std::fs::read_to_string(self.log_file()).unwrap_or_else(|e| format!("(no server log: {e})"));
            bail!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                log
            );
        }
        self.running = true;
        Ok(())
    }

    /// Stops the server (fast shutdown: open sessions are terminated), keeping the data.
    pub fn stop_server(&mut self) -> Result<()> {
        if self.running {
            run(self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "fast", "-w", "stop"]))?;
            self.running = false;
        }
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        server_command(&self.bin, program, self.as_postgres_user)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
        // The TempDir removes the directory after this.
    }
}

/// `initdb`'s arguments for every throwaway server the tests start: superuser `postgres`,
/// trust authentication on loopback, no fsync while creating it.
pub(crate) const INITDB_ARGS: [&str; 8] = [
    "-U",
    "postgres",
    "--auth=trust",
    "--no-sync",
    "-E",
    "UTF8",
    "--no-locale",
    "--no-instructions",
];

/// `program` from the server binaries in `bin`, run as the `postgres` user when the tests run
/// as root (initdb and postgres refuse root).
pub(crate) fn server_command(bin: &Path, program: &str, as_postgres_user: bool) -> Command {
    let path = bin.join(program);
    if as_postgres_user {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// Runs `cmd` to its end; its output, or an error carrying what it printed.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `$PG_BIN`, then `initdb` on PATH, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| d.join("initdb").exists()) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
