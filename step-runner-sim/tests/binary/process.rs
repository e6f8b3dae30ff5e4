//! The program around the server: seeds, signals, configuration, exit codes, help.

use std::time::Duration;

use tokio::time::timeout;

use crate::common::{DEADLINE, Sim, command, post};

/// Runs `builds` builds and `lints` lints on a fresh process with `seed`;
/// returns the build statuses and the planned lint durations from the log.
async fn outcomes(seed: &str, builds: usize, lints: usize) -> (Vec<String>, Vec<String>) {
    let mut sim = Sim::start(&["--seed", seed, "--no-crash", "--build-ms", "0"]).await;
    let mut statuses = Vec::new();
    for _ in 0..builds {
        let reply = post(sim.addr, r#"{"step_name":"build"}"#).await;
        statuses.push(reply.json()["status"].as_str().expect("status").to_owned());
    }
    for _ in 0..lints {
        assert_eq!(post(sim.addr, r#"{"step_name":"lint"}"#).await.status, 200);
    }
    sim.wait_for_log(r#"step finished step="lint""#, lints)
        .await;
    let planned = sim
        .logs()
        .iter()
        .filter(|l| l.contains(r#"step started step="lint""#))
        .filter_map(|l| l.split("planned_ms=").nth(1).map(str::to_owned))
        .collect();
    (statuses, planned)
}

#[tokio::test]
async fn a_seed_reproduces_outcomes_and_durations_across_processes() {
    let first = outcomes("42", 40, 8).await;
    let second = outcomes("42", 40, 8).await;
    assert_eq!(first, second);
    assert_eq!(first.1.len(), 8);
    assert!(first.0.contains(&"Success".to_owned()) && first.0.contains(&"Failure".to_owned()));
    let other = outcomes("43", 40, 0).await;
    assert_ne!(
        first.0, other.0,
        "seeds 42 and 43 gave the same 40 outcomes"
    );
}

#[tokio::test]
async fn sigterm_exits_with_143() {
    let mut sim = Sim::start(&[]).await;
    sim.signal("TERM");
    assert_eq!(sim.exit_status().await.code(), Some(143));
}

#[tokio::test]
async fn ctrl_c_exits_with_0() {
    let mut sim = Sim::start(&[]).await;
    sim.signal("INT");
    assert_eq!(sim.exit_status().await.code(), Some(0));
}

/// Runs the binary expecting it to refuse to start; returns its stderr.
async fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = timeout(DEADLINE, command(args, env).output())
        .await
        .expect("exits in time")
        .expect("run step-runner-sim");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8 stderr");
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(stderr.starts_with("step-runner-sim: "), "{stderr}");
    stderr
}

#[tokio::test]
async fn bad_configuration_exits_2_with_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--addr", "127.0.0.1:0", "--crash-rate", "1.5"],
            "--crash-rate",
        ),
        (
            &["--addr", "127.0.0.1:0", "--fail-rate", "-0.1"],
            "--fail-rate",
        ),
        (&["--addr", "127.0.0.1:0", "--fail-rate", "half"], "half"),
        (&["--addr", "127.0.0.1:0", "--lint-ms", "-3"], "--lint-ms"),
        (&["--addr", "127.0.0.1:0", "--seed", "x"], "--seed"),
        (&["--addr", "127.0.0.1:0", "--bogus"], "--bogus"),
        (&["--addr", "nowhere"], "missing port"),
        (&["--addr", "127.0.0.1:99999"], "invalid port"),
        (&["--addr", "example.com:80"], "not an IP address"),
    ];
    for (args, mentions) in cases {
        let stderr = refused(args, &[]).await;
        assert!(stderr.contains(mentions), "{args:?}: {stderr}");
    }
    let stderr = refused(&[], &[("STEP_RUNNER_SERVER_ADDR", "8080")]).await;
    assert!(stderr.contains("missing port"), "{stderr}");
}

#[tokio::test]
async fn a_port_in_use_exits_2_with_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = taken.local_addr().expect("bound address").to_string();
    let stderr = refused(&["--addr", &addr], &[]).await;
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_address_comes_from_the_environment_unless_a_flag_gives_it() {
    for var in ["STEP_RUNNER_SERVER_ADDR", "ORCA_STEP_RUNNER_SERVER_ADDR"] {
        let sim = Sim::start_raw(&[], &[(var, "127.0.0.1:0")]).await;
        assert!(sim.addr.ip().is_loopback(), "{var}: {}", sim.addr);
        assert_ne!(sim.addr.port(), 0);
    }
    // The flag wins over a bad environment value; the newer name over the older.
    let sim = Sim::start_raw(
        &["--addr", "127.0.0.1:0"],
        &[("STEP_RUNNER_SERVER_ADDR", "garbage")],
    )
    .await;
    assert!(sim.addr.ip().is_loopback());
    let sim = Sim::start_raw(
        &[],
        &[
            ("STEP_RUNNER_SERVER_ADDR", "127.0.0.1:0"),
            ("ORCA_STEP_RUNNER_SERVER_ADDR", "garbage"),
        ],
    )
    .await;
    assert!(sim.addr.ip().is_loopback());
}

#[tokio::test]
async fn help_documents_every_flag_and_variable() {
    let output = timeout(DEADLINE, command(&["--help"], &[]).output())
        .await
        .expect("exits in time")
        .expect("run step-runner-sim");
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8(output.stdout).expect("UTF-8 help");
    for item in [
        "--addr",
        "--no-crash",
        "--seed",
        "--fail-rate",
        "--crash-rate",
        "--lint-ms",
        "--build-ms",
        "--test-ms",
        "STEP_RUNNER_SERVER_ADDR",
        "ORCA_STEP_RUNNER_SERVER_ADDR",
        "CI_SERVER_CRASHABLE",
        "ORCA_CI_SERVER_CRASHABLE",
        "--request-log",
        "STEP_RUNNER_REQUEST_LOG",
        "143",
    ] {
        assert!(help.contains(item), "--help lacks {item}:\n{help}");
    }
}

#[tokio::test]
async fn the_startup_line_names_the_bound_port() {
    let sim = Sim::start(&[]).await;
    let line = sim
        .logs()
        .into_iter()
        .find(|l| l.starts_with(step_runner_sim::LISTENING_PREFIX))
        .expect("startup line");
    assert_eq!(line, format!("step-runner-sim listening on {}", sim.addr));
    // The port really is served.
    let connected = timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(sim.addr),
    )
    .await
    .expect("connect in time");
    assert!(connected.is_ok());
}
