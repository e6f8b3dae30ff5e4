//! Crash recovery of the real server binary on a real git repository.
//!
//! A step-runner simulator runs as its own process for the whole test (it never
//! crashes, so every trouble comes from the server being killed). The server is
//! started on a SQLite database, killed with SIGKILL several times while a step
//! is in flight, and restarted; 30 commits are made along the way, some while
//! the server is down. At the end every commit must have exactly one run, every
//! run must be terminal and none `error`, no step may have succeeded twice, and
//! every attempt that was in flight at a kill must be recorded as interrupted
//! (unless it had finished before the kill) and retried.

use std::collections::{BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ci_engine::{RunQuery, RunStore};
use ci_server::cli::SIM_SUBCOMMAND;
use ci_server::server::parse_listening_line;
use ci_server::sqlite_store::SqliteStore;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

const BIN: &str = env!("CARGO_BIN_EXE_ci-server");
/// Commits made in all.
const COMMITS: usize = 30;
/// How long the whole scenario may take before the test gives up.
const DEADLINE: Duration = Duration::from_secs(240);
/// How long a process gets to print its startup line.
const STARTUP: Duration = Duration::from_secs(60);
/// Pause between two polls of the API.
const POLL: Duration = Duration::from_millis(20);

/// A small xorshift generator: the kill moments vary from run to run; its seed
/// is in every failure message, to tell which pattern of kills failed.
struct Dice(u64);

impl Dice {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        Self(u64::from(nanos) ^ (u64::from(std::process::id()) << 32) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A git repository in a temp dir, driven with the `git` program.
struct Repo {
    path: PathBuf,
    home: PathBuf,
    commits: Vec<String>,
}

impl Repo {
    fn new(root: &Path) -> Self {
        let repo = Self {
            path: root.join("repo"),
            home: root.join("home"),
            commits: Vec::new(),
        };
        std::fs::create_dir_all(&repo.path).expect("mkdir repo");
        std::fs::create_dir_all(&repo.home).expect("mkdir home");
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo
    }

    fn git(&self, args: &[&str]) -> String {
        let out = StdCommand::new("git")
            .args(args)
            .current_dir(&self.path)
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Crash Test")
            .env("GIT_AUTHOR_EMAIL", "crash@example.invalid")
            .env("GIT_COMMITTER_NAME", "Crash Test")
            .env("GIT_COMMITTER_EMAIL", "crash@example.invalid")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Makes one commit on the current branch and remembers its id.
    fn commit(&mut self) {
        let n = self.commits.len() + 1;
        // One new file per commit, so that branches merge without conflicts.
        let file = format!("change-{n}.txt");
        std::fs::write(self.path.join(&file), format!("change {n}\n")).expect("write");
        self.git(&["add", &file]);
        self.git(&["commit", "--quiet", "-m", &format!("commit {n}")]);
        self.commits.push(self.git(&["rev-parse", "HEAD"]));
    }

    fn commit_n(&mut self, n: usize) {
        for _ in 0..n {
            self.commit();
        }
    }
}

/// Reads lines from `stream` until one yields an address, then keeps draining
/// it in the background so the child never blocks on a full pipe.
async fn address_from<R>(stream: R, parse: impl Fn(&str) -> Option<SocketAddr>) -> SocketAddr
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let mut lines = BufReader::new(stream).lines();
    let found = timeout(STARTUP, async {
        while let Some(line) = lines.next_line().await.expect("read child output") {
            if let Some(addr) = parse(&line) {
                return Some(addr);
            }
        }
        None
    })
    .await
    .expect("no startup line in time")
    .expect("the process ended before its startup line");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

/// The simulator, as the server binary's hidden subcommand. It does not crash;
/// steps are short but long enough to be caught in flight.
async fn start_simulator() -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args([SIM_SUBCOMMAND, "--addr", "127.0.0.1:0", "--no-crash"])
        .args(["--lint-ms", "30", "--build-ms", "200", "--test-ms", "200"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the simulator");
    let stderr = child.stderr.take().expect("piped stderr");
    let addr = address_from(stderr, |line| {
        line.trim()
            .strip_prefix(step_runner_sim::LISTENING_PREFIX)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
    .await;
    (child, addr)
}

/// The server on `db`, logging to `log` (appended across restarts).
async fn start_server(repo: &Path, db: &Path, runner: SocketAddr, log: &Path) -> (Child, String) {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let mut child = Command::new(BIN)
        .arg(repo)
        .arg(runner.to_string())
        .args(["--listen", "127.0.0.1:0", "--initial", "all"])
        .arg("--db")
        .arg(db)
        .args(["--poll-interval", "100ms", "--retry-backoff", "50ms"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("start the server");
    let stdout = child.stdout.take().expect("piped stdout");
    let addr = address_from(stdout, parse_listening_line).await;
    (child, format!("http://{addr}"))
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The scenario's shared state and helpers.
struct Scenario {
    http: reqwest::Client,
    dice: Dice,
    seed: u64,
    deadline: Instant,
    log: PathBuf,
    /// Attempts seen in flight right before a kill: (run id, step, attempt
    /// number, wall-clock ms of the kill).
    killed_in_flight: Vec<(String, String, u64, i64)>,
}

impl Scenario {
    /// The log's last lines, for failure messages.
    fn context(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "(seed {}; server log tail:\n{})",
            self.seed,
            tail.join("\n")
        )
    }

    async fn get(&self, url: &str) -> Option<Value> {
        let response = self.http.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    fn check_deadline(&self, what: &str) {
        assert!(
            Instant::now() < self.deadline,
            "timed out {what} {}",
            self.context()
        );
    }

    /// Polls until some step is in flight (skipping a random number of
    /// sightings), then kills the server with SIGKILL at once.
    async fn kill_while_in_flight(&mut self, server: &mut Child, base: &str) {
        let mut skip = self.dice.below(4);
        loop {
            self.check_deadline("waiting for a step in flight");
            let running = self
                .get(&format!("{base}/runs?status=running&limit=10"))
                .await;
            let ids: Vec<String> = running
                .iter()
                .flat_map(|v| v["data"].as_array().cloned().unwrap_or_default())
                .filter_map(|r| r["id"].as_str().map(str::to_owned))
                .collect();
            for id in ids {
                let Some(run) = self.get(&format!("{base}/run/{id}")).await else {
                    continue;
                };
                let in_flight = run["steps"].as_array().into_iter().flatten().find_map(|s| {
                    let last = s["attempts"].as_array()?.last()?;
                    if last["outcome"] != "running" {
                        return None;
                    }
                    Some((s["name"].as_str()?.to_owned(), last["number"].as_u64()?))
                });
                if let Some((step, number)) = in_flight {
                    if skip > 0 {
                        skip -= 1;
                        break;
                    }
                    server.start_kill().expect("SIGKILL the server");
                    let killed_at = now_millis();
                    server.wait().await.expect("reap the server");
                    self.killed_in_flight.push((id, step, number, killed_at));
                    return;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until the server has a terminal run for every commit.
    async fn wait_until_all_terminal(&self, base: &str, commits: usize) -> Vec<Value> {
        loop {
            self.check_deadline("waiting for every run to finish");
            if let Some(list) = self.get(&format!("{base}/runs?limit=1000")).await {
                let runs = list["data"].as_array().cloned().unwrap_or_default();
                let done = runs
                    .iter()
                    .filter(|r| !matches!(r["status"].as_str(), Some("queued" | "running")))
                    .count();
                if list["total"].as_u64() == Some(commits as u64) && done == commits {
                    return runs;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_resumes_every_run_without_losing_or_repeating_any() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let db = tmp.path().join("runs.db");
    let mut repo = Repo::new(tmp.path());
    let (_simulator, runner) = start_simulator().await;
    let dice = Dice::new();
    let mut s = Scenario {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client"),
        seed: dice.0,
        dice,
        deadline: Instant::now() + DEADLINE,
        log: tmp.path().join("server.log"),
        killed_in_flight: Vec::new(),
    };

    // Before the first start: history on two branches.
    repo.commit_n(6);
    repo.git(&["checkout", "--quiet", "-b", "feature"]);
    repo.commit_n(2);
    repo.git(&["checkout", "--quiet", "main"]);

    let (mut server, base) = start_server(&repo.path, &db, runner, &s.log).await;
    repo.commit_n(4); // while it runs
    s.kill_while_in_flight(&mut server, &base).await;

    repo.git(&["checkout", "--quiet", "feature"]); // while it is down
    repo.commit_n(2);
    repo.git(&["checkout", "--quiet", "main"]);
    repo.commit_n(3);
    let (mut server, base) = start_server(&repo.path, &db, runner, &s.log).await;
    s.kill_while_in_flight(&mut server, &base).await;

    repo.commit_n(4);
    let (mut server, base) = start_server(&repo.path, &db, runner, &s.log).await;
    repo.commit_n(3);
    s.kill_while_in_flight(&mut server, &base).await;

    repo.commit_n(3);
    let (mut server, base) = start_server(&repo.path, &db, runner, &s.log).await;
    s.kill_while_in_flight(&mut server, &base).await;

    repo.git(&[
        "merge",
        "--quiet",
        "--no-ff",
        "-m",
        "merge feature",
        "feature",
    ]);
    repo.commits.push(repo.git(&["rev-parse", "HEAD"]));
    repo.commit_n(COMMITS - repo.commits.len());
    assert_eq!(repo.commits.len(), COMMITS);

    let (mut server, base) = start_server(&repo.path, &db, runner, &s.log).await;
    let runs = s.wait_until_all_terminal(&base, COMMITS).await;
    let ctx = s.context();

    // Every commit has exactly one run, and nothing else has one.
    let listed: Vec<String> = runs
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a commit has two runs {ctx}");
    let want: BTreeSet<&String> = repo.commits.iter().collect();
    assert_eq!(unique, want, "runs and commits differ {ctx}");

    let mut details = HashMap::new();
    let mut interrupted = 0;
    for id in &repo.commits {
        let run = s
            .get(&format!("{base}/run/{id}"))
            .await
            .unwrap_or_else(|| panic!("GET /run/{id} failed {ctx}"));
        let status = run["status"].as_str().unwrap_or_default().to_owned();
        assert!(
            matches!(status.as_str(), "success" | "failure"),
            "run {id} ended {status:?}: restarts alone must not make a run error {ctx}"
        );
        for step in run["steps"].as_array().expect("steps") {
            let name = step["name"].as_str().unwrap_or_default();
            let attempts = step["attempts"].as_array().cloned().unwrap_or_default();
            let outcome = |a: &Value| a["outcome"].as_str().unwrap_or_default().to_owned();
            let succeeded = attempts.iter().filter(|a| outcome(a) == "success").count();
            assert!(
                succeeded <= 1,
                "step {name} of {id} succeeded {succeeded} times {ctx}"
            );
            interrupted += attempts
                .iter()
                .filter(|a| outcome(a) == "interrupted")
                .count();
            let step_status = step["status"].as_str().unwrap_or_default();
            assert!(
                matches!(step_status, "success" | "failure" | "skipped"),
                "step {name} of {id} ended {step_status:?} {ctx}"
            );
            if matches!(step_status, "success" | "failure") {
                let last = attempts.last().map(outcome).unwrap_or_default();
                assert_eq!(
                    last, step_status,
                    "step {name} of {id}: its last attempt does not match its status {ctx}"
                );
            }
        }
        details.insert(id.clone(), run);
    }

    // Each attempt caught in flight by a kill was recorded as interrupted, unless
    // it had already finished (and been stored) before the kill.
    for (id, step, number, killed_at) in &s.killed_in_flight {
        let attempt = details[id]["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|st| st["name"] == step.as_str())
            .and_then(|st| st["attempts"].as_array())
            .and_then(|a| a.iter().find(|a| a["number"].as_u64() == Some(*number)))
            .unwrap_or_else(|| panic!("attempt {number} of {step} of {id} vanished {ctx}"));
        let finished_before_kill = attempt["finished_at"]
            .as_i64()
            .is_some_and(|f| f <= *killed_at);
        assert!(
            attempt["outcome"] == "interrupted" || finished_before_kill,
            "attempt {number} of {step} of {id}, in flight at a kill, is {attempt} {ctx}"
        );
    }
    assert_eq!(s.killed_in_flight.len(), 4, "four kills {ctx}");
    eprintln!(
        "seed {}: {interrupted} interrupted attempts after {} kills in flight",
        s.seed,
        s.killed_in_flight.len()
    );
    assert!(
        interrupted >= 1,
        "no interrupted attempt was recorded {ctx}"
    );

    // The file agrees with the API after a last SIGKILL (WAL replay on open).
    server.start_kill().expect("SIGKILL the server");
    server.wait().await.expect("reap the server");
    let store = Arc::new(SqliteStore::open(&db).await.expect("reopen the database"));
    let page = store
        .list_runs(&RunQuery {
            limit: 1000,
            ..RunQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(page.total, COMMITS as u64, "the database lost runs {ctx}");
    for run in &page.runs {
        let api = &details[run.id().as_str()];
        assert_eq!(
            api["status"],
            run.status.as_str(),
            "db and API disagree on {}",
            run.id()
        );
    }
    assert!(
        store
            .unfinished_runs()
            .await
            .expect("unfinished")
            .is_empty()
    );
}
