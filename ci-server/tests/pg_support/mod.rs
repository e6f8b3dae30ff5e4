//! A real PostgreSQL server for the tests that need one (`tests/pg_store.rs`,
//! `tests/cli.rs`, and later the failover tests): a throw-away cluster made
//! with `initdb` in a temporary directory, started with `pg_ctl` on a free
//! loopback port with its Unix socket in the same directory, and stopped
//! (`pg_ctl stop -m immediate`) and deleted when the last handle to it is
//! dropped.
//!
//! - The binaries are found by `pg_config --bindir`, else in the newest
//!   `/usr/lib/postgresql/*/bin` (Debian's layout). `.ci/test` installs
//!   Debian's `postgresql` package when they are missing.
//! - PostgreSQL refuses to run as root: when the tests do, `initdb`, `pg_ctl`
//!   and `psql` run as the `postgres` user (`runuser -u postgres --`), and the
//!   temporary directory is handed to that user.
//! - The cluster trusts local (Unix socket) connections and asks TCP ones for
//!   a password (`scram-sha-256`): the superuser [`SUPERUSER`] has
//!   [`PgCluster::password`], so stores under test connect over TCP with a
//!   URL as a deployment would, and a wrong password is refused.
//! - Missing binaries: under CI (`CI` set, not `false` or `0`) the test fails
//!   with a message that says what to install; elsewhere it is skipped with
//!   the reason printed.
//!
//! Nothing here sleeps to wait: `pg_ctl -w` waits for the server to accept
//! connections (it polls, with its own deadline given by `-t`).

#![allow(
    dead_code,
    reason = "each test crate uses a different part of the fixtures"
)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

/// The superuser of a test cluster.
pub const SUPERUSER: &str = "postgres";

/// The operating-system user the server runs as when the tests run as root.
const SERVER_OS_USER: &str = "postgres";

/// How long `pg_ctl` may wait for the server to start or stop, in seconds.
const PG_CTL_WAIT_SECS: &str = "60";

/// Whether this is a CI run (`CI` set, and not to `false` or `0`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// What to do when PostgreSQL cannot be had: fail under CI, else print why
/// and let the caller skip.
fn unavailable<T>(reason: &str) -> Option<T> {
    let message = format!(
        "PostgreSQL is needed for this test and {reason} (install Debian's `postgresql` \
         package, as .ci/test does, or put pg_config on PATH)"
    );
    assert!(!under_ci(), "{message}; CI must run this test");
    eprintln!("skipped: {message}");
    None
}

/// The directory of the PostgreSQL server binaries: `pg_config --bindir`
/// when it has `initdb` and `pg_ctl`, else the newest
/// `/usr/lib/postgresql/<version>/bin` that has them.
pub fn find_bindir() -> Option<PathBuf> {
    let usable = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "psql"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|d| usable(d));
    if from_pg_config.is_some() {
        return from_pg_config;
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| usable(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// A free TCP port on loopback (bound, then released for the server).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A password nobody guesses, for the cluster's superuser.
fn new_password() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "pw{:x}{:x}{:x}",
        nanos,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running throw-away PostgreSQL cluster. Stopped and deleted on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    password: String,
    /// Whether the programs run as [`SERVER_OS_USER`] (the tests run as root).
    as_server_user: bool,
    databases: AtomicU64,
}

impl PgCluster {
    /// A cluster for this test binary: the one already running if another
    /// test holds it, else a new one. `None` when PostgreSQL is missing and
    /// this is not CI (the reason is printed); under CI that panics.
    pub fn shared() -> Option<Arc<Self>> {
        static SHARED: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cluster) = shared.upgrade() {
            return Some(cluster);
        }
        let cluster = Arc::new(Self::start()?);
        *shared = Arc::downgrade(&cluster);
        Some(cluster)
    }

    /// A new cluster of its own (see [`shared`](Self::shared) for `None`).
    pub fn start() -> Option<Self> {
        let Some(bindir) = find_bindir() else {
            return unavailable(
                "no initdb/pg_ctl was found (pg_config --bindir, /usr/lib/postgresql/*/bin)",
            );
        };
        let dir = tempfile::Builder::new()
            .prefix("ci-pg-")
            .tempdir()
            .expect("temporary directory");
        let as_root = fs::metadata(dir.path()).expect("temp dir").uid() == 0;
        if as_root {
            let known = Command::new("id")
                .arg("-u")
                .arg(SERVER_OS_USER)
                .output()
                .is_ok_and(|o| o.status.success());
            if !known {
                return unavailable(&format!(
                    "the tests run as root, which PostgreSQL refuses, and there is no \
                     `{SERVER_OS_USER}` user to run it as"
                ));
            }
            run_checked(
                Command::new("chown")
                    .arg(format!("{SERVER_OS_USER}:"))
                    .arg(dir.path()),
                "chown the cluster directory",
            );
        }
        let mut cluster = Self {
            dir,
            bindir,
            port: 0,
            password: new_password(),
            as_server_user: as_root,
            databases: AtomicU64::new(0),
        };
        cluster.init();
        // Another process may take the port between the probe and the
        // server's bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            match cluster.pg_ctl_start() {
                Ok(()) => return Some(cluster),
                Err(e) => last = e,
            }
        }
        panic!("the test PostgreSQL did not start: {last}");
    }

    /// `initdb`: UTF-8, C locale, trust on the socket, scram-sha-256 over
    /// TCP, the superuser's password from a file that is then removed.
    fn init(&self) {
        let pwfile = self.dir.path().join("pwfile");
        fs::write(&pwfile, format!("{}\n", self.password)).expect("password file");
        if self.as_server_user {
            run_checked(
                Command::new("chown")
                    .arg(format!("{SERVER_OS_USER}:"))
                    .arg(&pwfile),
                "chown the password file",
            );
        }
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "--username",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb runs");
        let _ = fs::remove_file(&pwfile);
        assert!(out.status.success(), "initdb failed: {}", output_text(&out));
    }

    /// `pg_ctl start -w` on [`port`](Self::port), listening on 127.0.0.1
    /// only, the socket in the cluster's directory, and durability off (a
    /// test's data is thrown away).
    fn pg_ctl_start(&self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-o", &options, "-w", "-t", PG_CTL_WAIT_SECS, "start"])
            .output()
            .map_err(|e| format!("pg_ctl does not run: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}; server log: {}",
                output_text(&out),
                self.log_tail()
            ))
        }
    }

    /// A command of the cluster's binaries, run as the server's user when
    /// the tests run as root, in the cluster's directory.
    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        let mut command = if self.as_server_user {
            let mut c = Command::new("runuser");
            c.args(["-u", SERVER_OS_USER, "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        command
            .current_dir(self.dir.path())
            .env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGUSER")
            .env_remove("PGPASSWORD")
            .env_remove("PGDATABASE");
        command
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password (TCP connections need it).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The URL of `database` as the superuser, over TCP with the password.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Runs `sql` with `psql` in `database` as the superuser over the Unix
    /// socket (trusted); returns its output, unaligned and without headers.
    /// Panics when psql fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
            ])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new empty database named after `label` (made unique), whose URL
    /// [`url`](Self::url) gives.
    pub fn create_database(&self, label: &str) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let clean: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let name = format!("t{n}_{clean}");
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        name
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let stopped = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", PG_CTL_WAIT_SECS, "stop"])
            .output();
        match stopped {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("pg_ctl stop failed: {}", output_text(&out)),
            Err(e) => eprintln!("pg_ctl stop did not run: {e}"),
        }
        // The directory (owned by the server's user) goes with `dir`: root
        // may delete it, and so may the user who made it otherwise.
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn run_checked(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}", output_text(&out));
}
