//! The crash: a test kills the whole process, every request in flight gets an
//! empty reply, later connections are refused; and the switches that turn it off.

use std::collections::HashSet;

use tokio::net::TcpStream;

use crate::common::{Sim, exchange, no_response, request};

#[tokio::test]
async fn a_crashing_test_takes_the_process_and_every_request_with_it() {
    let mut sim = Sim::start(&["--crash-rate", "1", "--test-ms", "5"]).await;
    let addr = sim.addr;
    let in_flight = tokio::spawn(async move {
        exchange(
            addr,
            &request(
                "POST",
                "/step/trigger",
                None,
                r#"{"step_name":"build","simulate_build_time":10000}"#,
            ),
        )
        .await
    });
    sim.wait_for_log(r#"step started step="build""#, 1).await;
    let crashed = exchange(
        addr,
        &request(
            "POST",
            "/step/trigger",
            None,
            r#"{"step_name":"test","simulate_status":"Success"}"#,
        ),
    )
    .await;
    assert!(
        no_response(&crashed),
        "the crashing test was answered: {crashed:?}"
    );
    let other = in_flight.await.expect("client task");
    assert!(
        no_response(&other),
        "the in-flight build was answered: {other:?}"
    );
    assert_eq!(sim.exit_status().await.code(), Some(1));
    let refused = TcpStream::connect(addr).await;
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    assert!(
        sim.logs()
            .iter()
            .any(|l| l.contains("Oh no! The tests caused a server crash!"))
    );
}

/// Runs 200 tests on a runner that would crash on every one unless switched off,
/// over one pooled client; returns the statuses seen.
async fn two_hundred_tests(sim: &Sim) -> HashSet<String> {
    let client = reqwest::Client::new();
    let url = format!("http://{}/step/trigger", sim.addr);
    let mut statuses = HashSet::new();
    for i in 0..200 {
        let response = client
            .post(&url)
            .json(&serde_json::json!({"step_name": "test", "repo_path": "/r", "commit_hash": i.to_string()}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("test #{i} got no answer: {e}"));
        assert_eq!(response.status().as_u16(), 200);
        let body: serde_json::Value = response.json().await.expect("JSON answer");
        statuses.insert(body["status"].as_str().expect("status").to_owned());
    }
    statuses
}

fn both_outcomes() -> HashSet<String> {
    ["Success".to_owned(), "Failure".to_owned()].into()
}

#[tokio::test]
async fn no_crash_flag_turns_the_crash_off() {
    let sim = Sim::start(&["--no-crash", "--crash-rate", "1", "--test-ms", "0"]).await;
    assert_eq!(two_hundred_tests(&sim).await, both_outcomes());
}

#[tokio::test]
async fn crashable_false_in_the_environment_turns_the_crash_off() {
    for var in ["CI_SERVER_CRASHABLE", "ORCA_CI_SERVER_CRASHABLE"] {
        let sim = Sim::start_raw(
            &[
                "--addr",
                "127.0.0.1:0",
                "--crash-rate",
                "1",
                "--test-ms",
                "0",
            ],
            &[(var, "false")],
        )
        .await;
        assert_eq!(two_hundred_tests(&sim).await, both_outcomes(), "{var}");
    }
}

#[tokio::test]
async fn crashable_other_than_false_keeps_the_crash() {
    let mut sim = Sim::start_raw(
        &[
            "--addr",
            "127.0.0.1:0",
            "--crash-rate",
            "1",
            "--test-ms",
            "0",
        ],
        &[("CI_SERVER_CRASHABLE", "true")],
    )
    .await;
    let reply = exchange(
        sim.addr,
        &request("POST", "/step/trigger", None, r#"{"step_name":"test"}"#),
    )
    .await;
    assert!(no_response(&reply));
    assert_eq!(sim.exit_status().await.code(), Some(1));
}
