//! Shared fixtures of the process-level tests (`tests/e2e.rs`, `tests/cli.rs`):
//! a git repository in a temporary directory driven by the `git` program with a
//! fixed identity and clock, the `ci-server` binary (and its bundled simulator) as
//! child processes that are stopped on drop, and HTTP helpers that poll with a
//! deadline.

#![allow(
    dead_code,
    reason = "each test crate uses a different part of the fixtures"
)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `ci-server` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ci-server");

/// The id of git's empty tree (SHA-1).
pub const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

/// Two root commits (empty tree, the fixed identity and clock below, messages
/// `twin 1244` and `twin 1637`) whose ids share the 5-digit prefix `fc0f9`: a
/// prefix that is ambiguous on purpose.
pub const TWINS: [(&str, &str); 2] = [
    ("twin 1244", "fc0f9ffbdcd4aed73c6f2c78196789d037e70cfa"),
    ("twin 1637", "fc0f934fd7adb7d52267c9257999491a6b468114"),
];
/// The prefix the twins share.
pub const TWIN_PREFIX: &str = "fc0f9";

/// A git repository in a temporary directory, on branch `main`.
pub struct GitRepo {
    dir: tempfile::TempDir,
}

impl GitRepo {
    /// `git init` on branch `main`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let repo = Self { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    /// The work tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `git args…` in the repository with a fixed identity and clock and no
    /// user or system configuration; returns its trimmed stdout. Panics when git fails.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(self.path())
            .env("HOME", self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "CI Test")
            .env("GIT_AUTHOR_EMAIL", "ci@example.invalid")
            .env("GIT_AUTHOR_DATE", "1700000000 +0000")
            .env("GIT_COMMITTER_NAME", "CI Test")
            .env("GIT_COMMITTER_EMAIL", "ci@example.invalid")
            .env("GIT_COMMITTER_DATE", "1700000000 +0000")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("git prints UTF-8")
            .trim()
            .to_owned()
    }

    /// An empty commit on the current branch (moves the branch); returns its id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// A commit object with the empty tree and `parents`, referenced by nothing
    /// yet (so a watcher cannot see it); returns its id.
    pub fn commit_tree(&self, parents: &[&str], message: &str) -> String {
        let mut args = vec!["commit-tree", EMPTY_TREE, "-m", message];
        for p in parents {
            args.push("-p");
            args.push(p);
        }
        self.git(&args)
    }

    /// Points `refs/heads/<branch>` at `id` in one ref update.
    pub fn update_branch(&self, branch: &str, id: &str) {
        self.git(&["update-ref", &format!("refs/heads/{branch}"), id]);
    }

    /// `n` commits on top of `parent`, made without touching any ref; returns
    /// them oldest first.
    pub fn chain(&self, parent: &str, n: usize, label: &str) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        let mut last = parent.to_owned();
        for i in 0..n {
            last = self.commit_tree(&[&last], &format!("{label} {i}"));
            ids.push(last.clone());
        }
        ids
    }

    /// Every commit reachable from any branch.
    pub fn all_commits(&self) -> BTreeSet<String> {
        self.git(&["rev-list", "--branches"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A child process that is stopped when dropped: SIGTERM (so `ci-server` stops
/// its bundled simulator), then SIGKILL if it is still running after a while.
pub struct Proc {
    child: Child,
    name: String,
    /// Everything the process wrote on stderr so far.
    pub stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Everything the process wrote on stderr so far.
    pub fn stderr_all(&self) -> String {
        self.stderr.lock().expect("stderr buffer").clone()
    }

    /// The last 40 lines of what the process wrote on stderr so far.
    pub fn stderr_tail(&self) -> String {
        let all = self.stderr.lock().expect("stderr buffer").clone();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (a name `kill` knows: `STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} {} failed",
            self.child.id()
        );
    }

    /// Whether the process has ended (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the exit code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if self.terminate(Duration::from_secs(10)).is_none() {
            eprintln!("{} did not stop after SIGTERM; killing it", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The variable that gives `ci-server` its API token: removed from the
/// environment of every process the tests start, unless a test sets it.
pub const TOKEN_ENV: &str = "CI_API_TOKEN";

/// The environment variable that names the server's PostgreSQL database;
/// never inherited by the processes started here (a developer's own would
/// send the tests' runs to their database).
pub const DATABASE_URL_ENV: &str = "CI_DATABASE_URL";

/// Spawns `BIN args…` with piped output, `RUST_LOG=info`, the variables of
/// `env` and no inherited [`TOKEN_ENV`] or [`DATABASE_URL_ENV`]; every line it writes on stderr is
/// kept in `stderr`, and lines are also sent on the returned channels.
fn spawn(
    name: &str,
    args: &[String],
    env: &[(&str, &str)],
) -> (Proc, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    spawn_with_log(name, args, env, Some("info"))
}

/// [`spawn`] with `RUST_LOG` set to `log`, or unset when it is `None` (the
/// programs' own defaults).
fn spawn_with_log(
    name: &str,
    args: &[String],
    env: &[(&str, &str)],
    log: Option<&str>,
) -> (Proc, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut command = Command::new(BIN);
    match log {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    let mut child = command
        .args(args)
        .env_remove(TOKEN_ENV)
        .env_remove(DATABASE_URL_ENV)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = Arc::new(Mutex::new(String::new()));
    let (out_tx, out_rx) = mpsc::channel();
    let (err_tx, err_rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(line);
        }
    });
    let pipe = child.stderr.take().expect("piped stderr");
    let buffer = Arc::clone(&stderr);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut b) = buffer.lock() {
                b.push_str(&line);
                b.push('\n');
            }
            let _ = err_tx.send(line);
        }
    });
    let proc = Proc {
        child,
        name: name.to_owned(),
        stderr,
    };
    (proc, out_rx, err_rx)
}

/// Waits (bounded) for a line that `parse` accepts.
fn wait_line<T>(
    proc: &Proc,
    lines: &mpsc::Receiver<String>,
    within: Duration,
    parse: impl Fn(&str) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(value) = parse(&line) {
                    return value;
                }
            }
            Err(_) => panic!(
                "{} printed no startup line within {within:?}; stderr:\n{}",
                proc.name,
                proc.stderr_tail()
            ),
        }
    }
}

/// A running `ci-server` and the base URL of its API.
pub struct Server {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The startup line.
    pub startup_line: String,
}

impl Server {
    /// Starts `ci-server <repo> args…` on a free loopback port, with a short
    /// shutdown grace, and waits for its startup line.
    pub fn start(repo: &Path, args: &[&str]) -> Self {
        Self::start_with_env(repo, args, &[])
    }

    /// [`start`](Self::start) with the environment variables `env` set.
    pub fn start_with_env(repo: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with_log(repo, args, env, Some("info"))
    }

    /// [`start`](Self::start) with `RUST_LOG` unset: the log a user gets
    /// without asking for one.
    pub fn start_with_default_log(repo: &Path, args: &[&str]) -> Self {
        Self::start_with_log(repo, args, &[], None)
    }

    fn start_with_log(repo: &Path, args: &[&str], env: &[(&str, &str)], log: Option<&str>) -> Self {
        let mut argv = vec![
            repo.display().to_string(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--shutdown-grace".to_owned(),
            "1s".to_owned(),
        ];
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        let (proc, stdout, _stderr) = spawn_with_log("ci-server", &argv, env, log);
        let (addr, line) = wait_line(&proc, &stdout, Duration::from_secs(30), |line| {
            ci_server::server::parse_listening_line(line).map(|a| (a, line.to_owned()))
        });
        Self {
            proc,
            base: format!("http://{addr}"),
            startup_line: line,
        }
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A step-runner simulator run by itself (the binary's hidden subcommand), as an
/// external runner would be, on a free loopback port.
pub fn start_simulator(args: &[&str]) -> (Proc, SocketAddr) {
    let mut argv = vec![
        ci_server::cli::SIM_SUBCOMMAND.to_owned(),
        "--addr".to_owned(),
        "127.0.0.1:0".to_owned(),
    ];
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    let (proc, _stdout, stderr) = spawn("step-runner-sim", &argv, &[]);
    let addr = wait_line(
        &proc,
        &stderr,
        Duration::from_secs(30),
        step_runner_sim::parse_listening_line,
    );
    (proc, addr)
}

/// Runs `BIN args…` to completion (bounded) and returns (exit code, stdout, stderr).
pub fn run_to_end(args: &[&str], within: Duration) -> (Option<i32>, String, String) {
    run_to_end_with(args, &[], None, within)
}

/// [`run_to_end`] with the environment variables `env` set and, when given,
/// in the working directory `cwd`.
pub fn run_to_end_with(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: Option<&Path>,
    within: Duration,
) -> (Option<i32>, String, String) {
    let mut command = Command::new(BIN);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = command
        .args(args)
        .env_remove(TOKEN_ENV)
        .env_remove(DATABASE_URL_ENV)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "ci-server {args:?} still ran after {within:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `GET url`: the status and the body.
pub async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("the server answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("a body"))
}

/// `GET url`, parsed as JSON (panics when the body is not JSON or is `null`).
pub async fn get_json(url: &str) -> (u16, Value) {
    let (status, body) = get(url).await;
    let value: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body}"));
    assert!(!value.is_null(), "{url} answered {status} null");
    (status, value)
}

/// Whether a run status is final.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "success" | "failure" | "error" | "cancelled")
}

/// Polls `GET /runs` until every commit of `expected` has a run in a terminal
/// status, and returns the list then. Panics (with the server's log) after `within`.
pub async fn wait_for_terminal(
    server: &Server,
    expected: &BTreeSet<String>,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let (status, body) = get_json(&server.url("/runs?limit=1000")).await;
        assert_eq!(status, 200, "{body}");
        let data = body["data"].as_array().cloned().unwrap_or_default();
        let done: BTreeSet<String> = data
            .iter()
            .filter(|r| r["status"].as_str().is_some_and(is_terminal))
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect();
        if expected.is_subset(&done) {
            return data;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| {
            !last["data"].as_array().is_some_and(|d| {
                d.iter().any(|r| {
                    r["id"] == id.as_str() && r["status"].as_str().is_some_and(is_terminal)
                })
            })
        })
        .collect();
    panic!(
        "not every commit finished within {within:?}; unfinished or missing: {missing:?}\nlast /runs: {last}\nserver log:\n{}",
        server.proc.stderr_tail()
    );
}

/// Path to a file in a fresh temporary directory (kept alive by the returned guard).
pub fn temp_file(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(name);
    (dir, path)
}

/// `GET /run/{id}` for each of `ids` (each must answer `200`), by id.
pub async fn run_details(
    server: &Server,
    ids: impl IntoIterator<Item = &String>,
) -> std::collections::BTreeMap<String, Value> {
    let mut runs = std::collections::BTreeMap::new();
    for id in ids {
        let (status, run) = get_json(&server.url(&format!("/run/{id}"))).await;
        assert_eq!(status, 200, "GET /run/{id}: {run}");
        runs.insert(id.clone(), run);
    }
    runs
}

/// `GET /runners` (must answer `200` with an array).
pub async fn runners(server: &Server) -> Vec<Value> {
    let (status, body) = get_json(&server.url("/runners")).await;
    assert_eq!(status, 200, "GET /runners: {body}");
    body.as_array()
        .unwrap_or_else(|| panic!("GET /runners is not an array: {body}"))
        .clone()
}

/// One line of a simulator's request log (the format is in
/// `docs/step-runner-sim.md`).
#[derive(Clone, Debug)]
pub struct SimLogLine {
    /// Its line number in the file, from 1.
    pub line: usize,
    /// `start`, `end` or `crash`.
    pub event: String,
    /// Wall-clock time, Unix milliseconds.
    pub at_ms: i64,
    /// The simulator's process id.
    pub pid: u64,
    /// The address it listens on, `IP:PORT`.
    pub addr: String,
    /// The process's number for the request.
    pub request: u64,
    /// `step_name` of the request.
    pub step: String,
    /// `commit_hash` of the request.
    pub commit: String,
    /// `end` only: the HTTP status of the answer.
    pub status: Option<u64>,
    /// `end` of a step that ran only: the answer's `status`.
    pub step_status: Option<String>,
}

/// Reads a request log written by one or more simulators, in file order.
/// Panics (naming the line) on a line that is not a complete log entry.
pub fn read_request_log(path: &Path) -> Vec<SimLogLine> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("the request log {} cannot be read: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, raw)| {
            let line = i + 1;
            let value: Value = serde_json::from_str(raw)
                .unwrap_or_else(|e| panic!("request log line {line} is not JSON ({e}): {raw}"));
            let text = |key: &str| {
                value[key]
                    .as_str()
                    .unwrap_or_else(|| {
                        panic!("request log line {line} has no string {key:?}: {raw}")
                    })
                    .to_owned()
            };
            let number = |key: &str| {
                value[key].as_u64().unwrap_or_else(|| {
                    panic!("request log line {line} has no number {key:?}: {raw}")
                })
            };
            SimLogLine {
                line,
                event: text("event"),
                at_ms: value["at_ms"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("request log line {line} has no at_ms: {raw}")),
                pid: number("pid"),
                addr: text("addr"),
                request: number("request"),
                step: text("step"),
                commit: text("commit"),
                status: value["status"].as_u64(),
                step_status: value["step_status"].as_str().map(str::to_owned),
            }
        })
        .collect()
}
