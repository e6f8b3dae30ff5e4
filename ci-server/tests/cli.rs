//! The `ci-server` binary's command line: `--help` documents every option, and
//! each kind of startup error gives one clear line on stderr and exit code 2.

mod e2e_support;

use std::time::Duration;

use e2e_support::{GitRepo, run_to_end};

const WITHIN: Duration = Duration::from_secs(30);

/// Runs the binary, expects exit code 2 and exactly one line on stderr
/// containing `needle`; returns that line.
fn expect_startup_error(args: &[&str], needle: &str) -> String {
    let (code, stdout, stderr) = run_to_end(args, WITHIN);
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
