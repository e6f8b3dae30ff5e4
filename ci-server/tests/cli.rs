//! The `ci-server` binary's command line: `--help` documents every option, and
//! each kind of startup error gives one clear line on stderr and exit code 2;
//! a valid pipeline file is used.

mod e2e_support;
mod pg_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_support::{
    DATABASE_URL_ENV, GitRepo, Server, get_json, is_terminal, run_to_end, run_to_end_with,
    wait_for_terminal,
};
use pg_support::PgCluster;

const WITHIN: Duration = Duration::from_secs(30);

/// Runs the binary, expects exit code 2 and exactly one line on stderr
/// containing `needle`; returns that line.
fn expect_startup_error(args: &[&str], needle: &str) -> String {
    expect_startup_error_with(args, &[], None, needle)
}

/// [`expect_startup_error`] with the environment variables `env` and, when
/// given, in the working directory `cwd`.
fn expect_startup_error_with(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: Option<&Path>,
    needle: &str,
) -> String {
    let (code, stdout, stderr) = run_to_end_with(args, env, cwd, WITHIN);
    assert_eq!(code, Some(2), "{args:?}: stderr {stderr:?}");
    assert!(stdout.is_empty(), "{args:?}: printed {stdout:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {stderr:?}");
    assert!(lines[0].starts_with("ci-server: "), "{:?}", lines[0]);
    assert!(
        lines[0].contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        lines[0]
    );
    lines[0].to_owned()
}

#[test]
fn help_explains_every_option() {
    let (code, help, _) = run_to_end(&["--help"], WITHIN);
    assert_eq!(code, Some(0));
    for item in [
        "<REPO_PATH>",
        "[RUNNER_ADDR]",
        "--listen",
        "0.0.0.0:9000",
        "--db",
        ":memory:",
        "postgres://",
        "CI_DATABASE_URL",
        "--initial",
        "--poll-interval",
        "--no-watch",
        "--step-timeout",
        "--abandon-limit",
        "--max-attempts",
        "--retry-backoff",
        "--max-in-flight",
        "--unreachable-limit",
        "--shutdown-grace",
        "--sim-args",
        "--runner",
        "repo=PATH",
        "--sims",
        "sim-1",
        "--pipeline",
        "--api-token-file",
        "--api-token",
        "CI_API_TOKEN",
        "other users",
        "on each runner",
        "bundled step-runner simulator",
        "RUST_LOG",
        "Exit codes",
    ] {
        assert!(
            help.contains(item),
            "--help does not mention {item}:\n{help}"
        );
    }
    assert!(
        !help.contains("__step-runner-sim"),
        "the hidden subcommand shows"
    );
}

#[test]
fn a_missing_path_is_a_startup_error() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("nowhere");
    let line = expect_startup_error(
        &[
            missing.to_str().expect("UTF-8 path"),
            "--listen",
            "127.0.0.1:0",
        ],
        "does not exist",
    );
    assert!(line.contains("nowhere"), "{line}");
}

#[test]
fn a_directory_that_is_not_a_repository_is_a_startup_error() {
    let dir = tempfile::tempdir().expect("temporary directory");
    expect_startup_error(
        &[
            dir.path().to_str().expect("UTF-8 path"),
            "--listen",
            "127.0.0.1:0",
        ],
        "not a git repository",
    );
}

#[test]
fn an_unparsable_runner_address_is_a_startup_error() {
    let repo = GitRepo::new();
    let path = repo.path().to_str().expect("UTF-8 path");
    for bad in ["not an address", "ftp://runner:21", ":99999"] {
        expect_startup_error(
            &[path, bad, "--listen", "127.0.0.1:0"],
            "invalid runner address",
        );
    }
}

#[test]
fn a_port_in_use_is_a_startup_error() {
    let repo = GitRepo::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = taken.local_addr().expect("bound").to_string();
    expect_startup_error(
        &[
            repo.path().to_str().expect("UTF-8 path"),
            ":8080",
            "--listen",
            &addr,
        ],
        "cannot listen on",
    );
}

#[test]
fn bad_options_are_startup_errors() {
    let repo = GitRepo::new();
    let path = repo.path().to_str().expect("UTF-8 path");
    expect_startup_error(&[path, "--listen", "everywhere"], "invalid listen address");
    expect_startup_error(&[path, "--initial", "some"], "--initial");
    expect_startup_error(&[path, "--max-attempts", "0"], "--max-attempts");
    expect_startup_error(&[path, "--step-timeout", "50ms"], "--step-timeout");
    expect_startup_error(&[path, "--abandon-limit", "later"], "--abandon-limit");
    let line = expect_startup_error(&[path, "--abandon-limit", "0s"], "--abandon-limit");
    assert!(line.contains("longer than zero"), "{line}");
    expect_startup_error(&[path, "--poll-interval", "soon"], "--poll-interval");
    expect_startup_error(&[path, "--sim-args", "--test-ms never"], "--sim-args");
    expect_startup_error(&[path, ":8080", "--sim-args", "--no-crash"], "--sim-args");
    expect_startup_error(&[], "REPO_PATH");
}

#[test]
fn runner_options_are_startup_errors() {
    let repo = GitRepo::new();
    let path = repo.path().to_str().expect("UTF-8 path");
    let line = expect_startup_error(
        &[path, "--runner", ":8080,colour=red"],
        "unknown option `colour`",
    );
    assert!(
        line.contains(":8080,colour=red"),
        "names the runner: {line}"
    );
    expect_startup_error(&[path, "--runner", ":8080,repo="], "repo= needs a path");
    expect_startup_error(&[path, ":8080,repo=/a,repo=/b"], "repo= is given twice");
    expect_startup_error(
        &[path, ":8080", "--runner", "http://127.0.0.1:8080"],
        "runner http://127.0.0.1:8080 is given twice",
    );
    expect_startup_error(
        &[
            path,
            "--runner",
            ":8081",
            "--runner",
            ":8081,repo=/srv/repo",
        ],
        "given twice",
    );
    expect_startup_error(&[path, "--runner", "nowhere"], "invalid runner address");
    expect_startup_error(&[path, "--sims", "0"], "--sims");
    expect_startup_error(&[path, "--sims", "65"], "--sims");
    let line = expect_startup_error(
        &[path, "--sims", "2", "--runner", ":8080"],
        "--sims starts bundled simulators",
    );
    assert!(line.contains("remove --sims or the runners"), "{line}");
    expect_startup_error(&[path, ":8080", "--sims", "2"], "--sims");
    expect_startup_error(
        &[path, "--runner", ":8080", "--sim-args", "--no-crash"],
        "--sim-args only applies to the bundled simulators",
    );
}

#[test]
fn a_bad_pipeline_file_is_a_startup_error_naming_the_file() {
    let repo = GitRepo::new();
    let path = repo.path().to_str().expect("UTF-8 path");
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().expect("UTF-8 path");
    expect_startup_error(
        &[path, "--pipeline", missing],
        &format!("ci-server: {missing}: "),
    );
    let garbage = dir.path().join("garbage.toml");
    std::fs::write(&garbage, "this is = = not TOML [\n").expect("written");
    let garbage = garbage.to_str().expect("UTF-8 path");
    let line = expect_startup_error(&[path, "--pipeline", garbage], garbage);
    assert!(
        line.starts_with(&format!("ci-server: {garbage}")),
        "the message starts with the file: {line}"
    );
    // Nothing was written: the server stopped before opening its store.
    assert!(!repo.path().join(".git/ci-server").exists());
}

#[test]
fn an_unusable_api_token_is_a_startup_error_that_never_shows_it() {
    let repo = GitRepo::new();
    let path = repo.path().to_str().expect("UTF-8 path");
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("no-token");
    let missing = missing.to_str().expect("UTF-8 path");
    let line = expect_startup_error(&[path, "--api-token-file", missing], "cannot read");
    assert!(line.contains(missing), "names the file: {line}");
    for (name, content) in [("empty", ""), ("newline", "\n")] {
        let file = dir.path().join(name);
        std::fs::write(&file, content).expect("written");
        let file = file.to_str().expect("UTF-8 path");
        let line = expect_startup_error(&[path, "--api-token-file", file], "is empty");
        assert!(line.contains(file), "names the file: {line}");
    }
    let two_lines = dir.path().join("two-lines");
    std::fs::write(&two_lines, "secret-one\nsecret-two\n").expect("written");
    let line = expect_startup_error(
        &[
            path,
            "--api-token-file",
            two_lines.to_str().expect("UTF-8 path"),
        ],
        "second line",
    );
    assert!(!line.contains("secret-"), "the token shows: {line}");
    expect_startup_error(&[path, "--api-token", ""], "is empty");
    let line = expect_startup_error(
        &[
            path,
            "--api-token",
            "flag-secret",
            "--api-token-file",
            missing,
        ],
        "cannot be used with",
    );
    assert!(
        line.contains("--api-token-file") && !line.contains("flag-secret"),
        "{line}"
    );
    // A server must not start when the token file is unreadable: nothing
    // was written.
    assert!(!repo.path().join(".git/ci-server").exists());
}

/// The example pipeline file of the documentation.
fn example_pipeline() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/pipeline.example.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_pipeline_file_gives_every_run_its_steps() {
    let file = example_pipeline();
    let pipeline = ci_engine::Pipeline::load(&file)
        .unwrap_or_else(|e| panic!("the documented example must be a valid pipeline: {e}"));
    let steps: Vec<String> = pipeline.steps().iter().map(|s| s.name.clone()).collect();
    let repo = GitRepo::new();
    let commit = repo.commit("first");
    let server = Server::start(
        repo.path(),
        &[
            "--db",
            ":memory:",
            "--pipeline",
            file.to_str().expect("UTF-8 path"),
            "--sim-args",
            "--no-crash --lint-ms 1 --build-ms 1 --test-ms 1",
        ],
    );
    assert!(
        server
            .startup_line
            .contains(&format!("pipeline: {}", steps.join(", "))),
        "{}",
        server.startup_line
    );
    let deadline = Instant::now() + WITHIN;
    let run = loop {
        let (code, run) = get_json(&server.url(&format!("/run/{commit}"))).await;
        if code == 200 {
            break run;
        }
        assert!(Instant::now() < deadline, "no run for {commit}: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let listed: BTreeSet<&str> = run["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["name"].as_str().expect("a name"))
        .collect();
    let expected: BTreeSet<&str> = steps.iter().map(String::as_str).collect();
    assert_eq!(listed, expected, "{run}");
}

#[test]
fn an_unusable_database_is_a_startup_error() {
    let repo = GitRepo::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    // A directory where the database file should be.
    expect_startup_error(
        &[
            repo.path().to_str().expect("UTF-8 path"),
            ":8080",
            "--listen",
            "127.0.0.1:0",
            "--db",
            dir.path().to_str().expect("UTF-8 path"),
        ],
        "cannot open the database",
    );
}

/// Two servers on one SQLite file would run the same commits and clash on
/// every write: the second is refused at start, naming the first by its
/// process id, and the first goes on. Once the first is killed with SIGKILL,
/// the system lets go of its lock, and a new server on the file starts and
/// serves the first one's run.
/// A second server on one SQLite file waits as a standby: it says so first,
/// serves reads, reports its role and the active server, points at it for
/// what only the active one knows, and takes over once the first is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_database_file_waits_as_a_standby_and_takes_over() {
    let repo = GitRepo::new();
    let first_commit = repo.commit("first");
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("runs.db");
    let db = db.to_str().expect("UTF-8 path");
    let sim = [
        "--sim-args",
        "--no-crash --lint-ms 1 --build-ms 1 --test-ms 1",
    ];
    let args = [&["--db", db][..], &sim[..]].concat();
    let mut first = Server::start(repo.path(), &args);
    wait_for_terminal(&first, &BTreeSet::from([first_commit.clone()]), WITHIN).await;
    let second = Server::start(repo.path(), &args);

    let said_first = second.proc.stderr_tail();
    let first_line = said_first.lines().next().unwrap_or_default().to_owned();
    assert!(
        first_line.contains("standby") && first_line.contains(&first.url("")),
        "the standby's first log line: {first_line:?}"
    );
    let (code, health) = get_json(&second.url("/healthz")).await;
    assert_eq!(code, 200, "a healthy standby: {health}");
    assert_eq!(health["role"], "standby", "{health}");
    let active = health["active_server"].as_str().unwrap_or_default();
    assert!(active.contains(&first.url("")), "{health}");
    let (_, health) = get_json(&first.url("/healthz")).await;
    assert_eq!(health["role"], "primary", "{health}");
    // Reads come from the database.
    let (code, run) = get_json(&second.url(&format!("/run/{first_commit}"))).await;
    assert_eq!(code, 200, "{run}");
    assert_eq!(run["id"], first_commit.as_str(), "{run}");
    assert!(
        is_terminal(run["status"].as_str().unwrap_or_default()),
        "{run}"
    );
    // What only the active server knows points at it.
    let (code, body) = get_json(&second.url("/events")).await;
    assert_eq!(code, 503, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("standby") && message.contains(&first.url("")),
        "{message}"
    );
    let (code, body) = get_json(&second.url("/runners")).await;
    assert_eq!(code, 503, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(&first.url("")), "{message}");

    first.proc.kill_hard();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(5);
    loop {
        let (code, health) = get_json(&second.url("/healthz")).await;
        if code == 200 && health["role"] == "primary" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no takeover within 5 s of the kill: {health}\n{}",
            second.proc.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let next = repo.commit("second");
    wait_for_terminal(&second, &BTreeSet::from([next]), WITHIN).await;
}

/// A loopback port nobody listens on (bound, then released).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn a_database_url_that_does_not_parse_is_a_startup_error_never_a_path() {
    let repo = GitRepo::new();
    let path = repo.path().to_str().expect("UTF-8 path");
    let cwd = tempfile::tempdir().expect("temporary directory");
    for (url, needle) in [
        ("postgres://ci:s3cret@127.0.0.1:notaport/runs", "port"),
        ("postgresql://ci:s3cret@127.0.0.1/runs?colour=red", "colour"),
        ("postgres://ci:s3cret@/runs", "no host"),
        ("mysql://ci:s3cret@127.0.0.1/runs", "not postgres"),
    ] {
        let line = expect_startup_error_with(
            &[path, ":8080", "--listen", "127.0.0.1:0", "--db", url],
            &[],
            Some(cwd.path()),
            "--db: invalid database URL",
        );
        assert!(line.contains(needle), "{url}: {line}");
        assert!(!line.contains("s3cret"), "the password shows: {line}");
        let line = expect_startup_error_with(
            &[path, ":8080", "--listen", "127.0.0.1:0"],
            &[(DATABASE_URL_ENV, url)],
            Some(cwd.path()),
            "CI_DATABASE_URL: invalid database URL",
        );
        assert!(!line.contains("s3cret"), "the password shows: {line}");
    }
    // A path in the variable is refused too: it is for URLs only.
    expect_startup_error_with(
        &[path, ":8080", "--listen", "127.0.0.1:0"],
        &[(DATABASE_URL_ENV, "runs.db")],
        Some(cwd.path()),
        "CI_DATABASE_URL: invalid database URL",
    );
    // No URL became a file or folder (`postgres:`, `mysql:`) anywhere.
    let left: Vec<_> = std::fs::read_dir(cwd.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "files appeared: {left:?}");
    assert!(!repo.path().join(".git/ci-server").exists());
}

#[test]
fn a_refused_database_connection_is_a_startup_error() {
    let repo = GitRepo::new();
    let url = format!("postgres://ci:s3cret@127.0.0.1:{}/runs", unused_port());
    let line = expect_startup_error(
        &[
            repo.path().to_str().expect("UTF-8 path"),
            ":8080",
            "--listen",
            "127.0.0.1:0",
            "--db",
            &url,
        ],
        "cannot connect to the run database postgres://ci:***@127.0.0.1:",
    );
    assert!(line.to_lowercase().contains("refused"), "{line}");
    assert!(!line.contains("s3cret"), "the password shows: {line}");
    assert!(
        !repo.path().join(".git/ci-server").exists(),
        "fell back to SQLite"
    );
}

#[test]
fn a_wrong_database_password_is_a_startup_error_that_never_shows_it() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let repo = GitRepo::new();
    let path = repo.path().to_str().expect("UTF-8 path");
    let wrong = format!(
        "postgres://postgres:wrong-{}@127.0.0.1:{}/postgres",
        cluster.password(),
        cluster.port()
    );
    let line = expect_startup_error(
        &[path, ":8080", "--listen", "127.0.0.1:0", "--db", &wrong],
        "password authentication failed",
    );
    assert!(line.contains("postgres:***@127.0.0.1"), "{line}");
    assert!(
        !line.contains(cluster.password()),
        "the password shows: {line}"
    );
    let line = expect_startup_error_with(
        &[path, ":8080", "--listen", "127.0.0.1:0"],
        &[(DATABASE_URL_ENV, &wrong)],
        None,
        "password authentication failed",
    );
    assert!(
        !line.contains(cluster.password()),
        "the password shows: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_from_the_environment_keeps_the_runs() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let database = cluster.create_database("cli_runs");
    let url = cluster.url(&database);
    let repo = GitRepo::new();
    let commit = repo.commit("first");
    let server = Server::start_with_env(
        repo.path(),
        &[
            "--sim-args",
            "--no-crash --lint-ms 1 --build-ms 1 --test-ms 1",
        ],
        &[(DATABASE_URL_ENV, &url)],
    );
    assert!(
        server.startup_line.contains(&format!(
            "store: postgres://postgres:***@127.0.0.1:{}/{database}",
            cluster.port()
        )),
        "{}",
        server.startup_line
    );
    assert!(!server.startup_line.contains(cluster.password()));
    let runs = wait_for_terminal(&server, &BTreeSet::from([commit.clone()]), WITHIN).await;
    let status = runs
        .iter()
        .find(|r| r["id"] == commit.as_str())
        .and_then(|r| r["status"].as_str())
        .expect("the run is listed")
        .to_owned();
    assert_eq!(
        cluster.psql(
            &database,
            &format!("SELECT status FROM runs WHERE id = '{commit}'")
        ),
        status,
        "the run is in PostgreSQL as the API shows it"
    );
    assert!(
        !repo.path().join(".git/ci-server").exists(),
        "no SQLite file was made"
    );
    let log = server.proc.stderr_tail();
    assert!(
        !log.contains(cluster.password()),
        "the log shows the password"
    );
}
