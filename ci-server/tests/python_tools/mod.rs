//! Shared by the tests that check the OpenAPI document with Python tools
//! (`tests/api_fuzz.rs`: schemathesis; `tests/python_client.rs`:
//! openapi-python-client): finding the tools `.ci/test` installs, and a
//! `ci-server` process with finished runs, some of them failed.

#![allow(
    dead_code,
    reason = "each test crate uses a different part of the fixtures"
)]

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::e2e_support::{GitRepo, Server, TWINS, temp_file, wait_for_terminal};

/// Bound on waiting for the runs of one start of the server to finish.
const FINISH_WITHIN: Duration = Duration::from_secs(60);

/// Where `.ci/test` installs the Python tools, relative to the target
/// directory.
const VENV: &str = "ci-python";

/// The directory of the tools' virtual environment's programs: the
/// `CI_PYTHON_BIN` environment variable (set by `.ci/test`), or else
/// `ci-python/bin` in the target directory this test was built in.
fn venv_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CI_PYTHON_BIN").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    // This test is TARGET/debug/deps/NAME-HASH.
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?.parent()?;
    Some(target.join(VENV).join("bin"))
}

/// The program `name` of the tools' virtual environment, or the path in the
/// environment variable `override_var` when it is set.
pub fn find_tool(name: &str, override_var: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(override_var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let path = venv_bin()?.join(name);
    path.is_file().then_some(path)
}

/// [`find_tool`], or `None` after saying the test is skipped. With
/// `CI=true` a missing tool fails the test instead: CI must run it.
pub fn tool_or_skip(name: &str, override_var: &str) -> Option<PathBuf> {
    let found = find_tool(name, override_var);
    if found.is_none() {
        let why = format!(
            "`{name}` not found (set {override_var}, or CI_PYTHON_BIN to the directory of \
             the virtual environment's programs; `bash .ci/test` installs it in \
             TARGET/{VENV})"
        );
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}; CI=true, so this test must not be skipped"
        );
        eprintln!("skipped: {why}");
    }
    found
}

/// A token for `CI_API_TOKEN`: 128 random bits in hex.
pub fn random_token() -> String {
    let mut token = String::new();
    for part in 0..2u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(part);
        hasher.write_u32(std::process::id());
        token.push_str(&format!("{:016x}", hasher.finish()));
    }
    token
}

/// A running `ci-server` with a record to show: successful runs, failed
/// runs and two runs whose commits share a prefix (`TWIN_PREFIX`), with
/// `CI_API_TOKEN` set to `token`.
pub struct ServerWithRuns {
    /// The server, started a second time on the same store.
    pub server: Server,
    /// The token in the server's `CI_API_TOKEN`.
    pub token: String,
    /// `GET /runs?limit=1000` once every run finished.
    pub runs: Vec<Value>,
    _repo: GitRepo,
    _db: tempfile::TempDir,
}

/// The bundled simulator's arguments: quick steps, no crash, builds and
/// tests that fail with probability `fail_rate`.
fn sim_args(fail_rate: &str) -> String {
    format!("--no-crash --fail-rate {fail_rate} --lint-ms 1 --build-ms 1 --test-ms 1")
}

/// Starts a server whose runs all succeed, then, on the same store, one
/// whose builds all fail, so that the record has both whatever the order
/// of the steps.
pub async fn server_with_runs() -> ServerWithRuns {
    let repo = GitRepo::new();
    let token = random_token();
    let env = [("CI_API_TOKEN", token.as_str())];
    let (db_dir, db) = temp_file("runs.db");
    let db = db.display().to_string();
    let start = |fail_rate: &str| {
        let sim = sim_args(fail_rate);
        Server::start_with_env(
            repo.path(),
            &["--db", &db, "--initial", "all", "--sim-args", &sim],
            &env,
        )
    };

    let first = repo.commit("green 1");
    repo.commit("green 2");
    for (i, (message, id)) in TWINS.iter().enumerate() {
        assert_eq!(
            &repo.commit_tree(&[], message),
            id,
            "git hashes commits differently here"
        );
        repo.update_branch(&format!("twin-{i}"), id);
    }
    let mut server = start("0");
    wait_for_terminal(&server, &repo.all_commits(), FINISH_WITHIN).await;
    assert_eq!(
        server.proc.terminate(Duration::from_secs(20)),
        Some(0),
        "the first server did not stop cleanly:\n{}",
        server.proc.stderr_tail()
    );
    drop(server);

    server = start("1");
    let red = repo.chain(&repo.git(&["rev-parse", "main"]), 2, "red");
    repo.update_branch("main", red.last().expect("2 commits"));
    let feature = repo.chain(&first, 1, "feature red");
    repo.update_branch("feature", feature.last().expect("a commit"));
    let expected: BTreeSet<String> = repo.all_commits();
    let runs = wait_for_terminal(&server, &expected, FINISH_WITHIN).await;
    let statuses: BTreeSet<&str> = runs.iter().filter_map(|r| r["status"].as_str()).collect();
    assert!(
        statuses.contains("success") && statuses.contains("failure"),
        "the record lacks a success or a failure: {statuses:?}"
    );
    ServerWithRuns {
        server,
        token,
        runs,
        _repo: repo,
        _db: db_dir,
    }
}

/// The output of a program run to its end.
pub struct Output {
    /// Whether it exited with 0.
    pub success: bool,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// Standard output and standard error, in that order.
    pub text: String,
}

/// Runs `program args…` in `dir` with `env` added and no input, and waits
/// for it at most `within`; a program still running then is killed and the
/// test fails.
pub async fn run(
    program: &Path,
    args: &[&str],
    dir: &Path,
    env: &[(&str, &str)],
    within: Duration,
) -> Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));
    let out = tokio::time::timeout(within, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} still ran after {within:?}", program.display()))
        .unwrap_or_else(|e| panic!("{} {args:?}: {e}", program.display()));
    Output {
        success: out.status.success(),
        code: out.status.code(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
