//! `--request-log`: a JSON line per step request received, per answer and for
//! the crash, in a file that several processes share.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures::future::join_all;
use serde_json::Value;
use tokio::time::timeout;

use crate::common::{DEADLINE, Sim, command, exchange, no_response, post, request};

/// Every line of the log, parsed; panics on a line that is not one JSON object.
fn read_log(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read the request log");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a partial last line: {text:?}"
    );
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                let head: String = line.chars().take(300).collect();
                panic!("not JSON ({e}): {head:?}…")
            });
            assert!(value.is_object(), "not an object: {line}");
            value
        })
        .collect()
}

fn text<'v>(line: &'v Value, key: &str) -> &'v str {
    line[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in {line}"))
}

fn number(line: &Value, key: &str) -> u64 {
    line[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key:?} in {line}"))
}

/// The most requests of `step` that one process held at once, by the order of
/// the lines (a crash ends all of that process's requests).
fn most_in_flight(lines: &[Value], step: &str) -> usize {
    let mut open: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut most = 0;
    for line in lines {
        let held = open.entry(number(line, "pid")).or_default();
        match text(line, "event") {
            "start" if text(line, "step") == step => {
                held.insert(number(line, "request"));
            }
            "end" => {
                held.remove(&number(line, "request"));
            }
            "crash" => held.clear(),
            _ => {}
        }
        most = most.max(held.len());
    }
    most
}

async fn step(sim: &Sim, name: &str, commit: &str) -> Value {
    let reply = post(
        sim.addr,
        &format!(r#"{{"step_name":"{name}","repo_path":"/r","commit_hash":"{commit}"}}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

#[tokio::test]
async fn each_request_has_a_start_and_an_end_line_with_its_answer() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let log = dir.path().join("requests.jsonl");
    let log_arg = log.to_str().expect("UTF-8 path");
    let sim = Sim::start(&[
        "--no-crash",
        "--lint-ms",
        "1000",
        "--build-ms",
        "1000",
        "--request-log",
        log_arg,
    ])
    .await;
    let requests = [
        ("lint", "l1"),
        ("lint", "l2"),
        ("lint", "l3"),
        ("build", "b1"),
        ("build", "b2"),
    ];
    let answers = join_all(
        requests
            .iter()
            .map(|(name, commit)| step(&sim, name, commit)),
    )
    .await;
    let unknown = post(sim.addr, r#"{"step_name":"deploy","commit_hash":"d1"}"#).await;
    assert_eq!(unknown.status, 400);
    let bad_json = post(sim.addr, "{").await;
    assert_eq!(bad_json.status, 400);

    let lines = read_log(&log);
    assert_eq!(lines.len(), 2 * (requests.len() + 1), "{lines:#?}");
    let mut numbers = BTreeSet::new();
    for start in lines.iter().filter(|l| text(l, "event") == "start") {
        let n = number(start, "request");
        assert!(numbers.insert(n), "request number {n} used twice");
        assert_eq!(number(start, "pid"), u64::from(sim.pid));
        assert_eq!(text(start, "addr"), sim.addr.to_string());
        let ends: Vec<&Value> = lines
            .iter()
            .filter(|l| text(l, "event") == "end" && number(l, "request") == n)
            .collect();
        assert_eq!(ends.len(), 1, "request {n}: {lines:#?}");
        let end = ends[0];
        assert_eq!(
            (text(end, "step"), text(end, "commit")),
            (text(start, "step"), text(start, "commit"))
        );
        assert!(number(end, "at_ms") >= number(start, "at_ms"));
        match requests
            .iter()
            .position(|(_, c)| *c == text(start, "commit"))
        {
            Some(i) => {
                assert_eq!(number(end, "status"), 200);
                assert_eq!(text(end, "step_status"), text(&answers[i], "status"));
            }
            None => {
                assert_eq!(
                    (text(start, "step"), text(start, "commit")),
                    ("deploy", "d1")
                );
                assert_eq!(number(end, "status"), 400);
                assert_eq!(end.get("step_status"), None);
            }
        }
    }
    assert_eq!(
        numbers,
        (1..=6).collect(),
        "numbered in arrival order from 1"
    );
    // Lints run side by side; builds queue for the runner's lock, but the log
    // counts requests the runner holds, waiting or not.
    assert_eq!(most_in_flight(&lines, "lint"), 3, "{lines:#?}");
    assert_eq!(most_in_flight(&lines, "build"), 2, "{lines:#?}");
}

#[tokio::test]
async fn the_end_line_is_in_the_file_when_the_client_has_its_answer() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let log = dir.path().join("requests.jsonl");
    let sim = Sim::start(&[
        "--no-crash",
        "--lint-ms",
        "0",
        "--build-ms",
        "0",
        "--request-log",
        log.to_str().expect("UTF-8 path"),
    ])
    .await;
    for i in 0..20 {
        let commit = format!("c{i}");
        step(&sim, if i % 2 == 0 { "lint" } else { "build" }, &commit).await;
        let lines = read_log(&log);
        let last = lines.last().expect("a line");
        assert_eq!(
            (text(last, "event"), text(last, "commit")),
            ("end", commit.as_str())
        );
        assert_eq!(lines.len(), 2 * (i + 1));
    }
}

#[tokio::test]
async fn a_crash_leaves_a_crash_line_and_starts_without_ends() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let log = dir.path().join("requests.jsonl");
    let mut sim = Sim::start(&[
        "--crash-rate",
        "1",
        "--test-ms",
        "5",
        "--request-log",
        log.to_str().expect("UTF-8 path"),
    ])
    .await;
    let addr = sim.addr;
    let build = tokio::spawn(async move {
        exchange(
            addr,
            &request(
                "POST",
                "/step/trigger",
                None,
                r#"{"step_name":"build","commit_hash":"b1","simulate_build_time":10000}"#,
            ),
        )
        .await
    });
    sim.wait_for_log(r#"step started step="build""#, 1).await;
    let test = exchange(
        addr,
        &request(
            "POST",
            "/step/trigger",
            None,
            r#"{"step_name":"test","commit_hash":"t1"}"#,
        ),
    )
    .await;
    assert!(
        no_response(&test),
        "the crashing test was answered: {test:?}"
    );
    assert!(no_response(&build.await.expect("client task")));
    assert_eq!(sim.exit_status().await.code(), Some(1));

    let lines = read_log(&log);
    let summary: Vec<(&str, &str, u64)> = lines
        .iter()
        .map(|l| (text(l, "event"), text(l, "commit"), number(l, "request")))
        .collect();
    assert_eq!(
        summary,
        [("start", "b1", 1), ("start", "t1", 2), ("crash", "t1", 2)]
    );
    let crash = &lines[2];
    assert_eq!(text(crash, "step"), "test");
    assert_eq!(number(crash, "pid"), u64::from(sim.pid));
    assert_eq!(text(crash, "addr"), addr.to_string());
}

#[tokio::test]
async fn two_processes_appending_to_one_file_interleave_whole_lines() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let log = dir.path().join("requests.jsonl");
    let log_arg = log.to_str().expect("UTF-8 path");
    let args = ["--no-crash", "--lint-ms", "0", "--request-log", log_arg];
    let sims = [Sim::start(&args).await, Sim::start(&args).await];
    // Long lines make a torn write likely if a line took more than one write.
    let filler = "x".repeat(3000);
    const PER_SIM: usize = 100;
    let calls = sims.iter().flat_map(|sim| {
        let filler = &filler;
        (0..PER_SIM).map(move |i| async move {
            step(sim, "lint", &format!("{}-{i}-{filler}", sim.pid)).await;
        })
    });
    join_all(calls).await;

    let lines = read_log(&log);
    assert_eq!(lines.len(), 2 * 2 * PER_SIM);
    for sim in &sims {
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|l| number(l, "pid") == u64::from(sim.pid))
            .collect();
        assert_eq!(mine.len(), 2 * PER_SIM, "pid {}", sim.pid);
        for event in ["start", "end"] {
            let numbers: BTreeSet<u64> = mine
                .iter()
                .filter(|l| text(l, "event") == event)
                .map(|l| number(l, "request"))
                .collect();
            assert_eq!(
                numbers,
                (1..=PER_SIM as u64).collect(),
                "pid {} {event}",
                sim.pid
            );
        }
        for line in &mine {
            assert_eq!(text(line, "addr"), sim.addr.to_string());
            assert!(text(line, "commit").starts_with(&format!("{}-", sim.pid)));
            assert!(text(line, "commit").ends_with(&filler));
        }
    }
}

#[tokio::test]
async fn the_environment_names_the_log_unless_the_flag_does() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let from_env = dir.path().join("env.jsonl");
    let from_flag = dir.path().join("flag.jsonl");
    let env_value = from_env.to_str().expect("UTF-8 path");
    let sim = Sim::start_raw(
        &["--addr", "127.0.0.1:0", "--no-crash", "--lint-ms", "0"],
        &[("STEP_RUNNER_REQUEST_LOG", env_value)],
    )
    .await;
    step(&sim, "lint", "e1").await;
    assert_eq!(read_log(&from_env).len(), 2);
    let sim = Sim::start_raw(
        &[
            "--addr",
            "127.0.0.1:0",
            "--no-crash",
            "--lint-ms",
            "0",
            "--request-log",
            from_flag.to_str().expect("UTF-8 path"),
        ],
        &[("STEP_RUNNER_REQUEST_LOG", env_value)],
    )
    .await;
    step(&sim, "lint", "f1").await;
    assert_eq!(
        read_log(&from_env).len(),
        2,
        "the flag wins over the variable"
    );
    let flagged = read_log(&from_flag);
    assert_eq!(flagged.len(), 2);
    assert_eq!(text(&flagged[0], "commit"), "f1");
}

#[tokio::test]
async fn a_log_that_cannot_be_opened_exits_2_with_one_line() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let unusable = dir.path().join("no-such-folder").join("requests.jsonl");
    let unusable = unusable.to_str().expect("UTF-8 path");
    let output = timeout(
        DEADLINE,
        command(&["--addr", "127.0.0.1:0", "--request-log", unusable], &[]).output(),
    )
    .await
    .expect("exits in time")
    .expect("run step-runner-sim");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8 stderr");
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "step-runner-sim: cannot open the request log {unusable}: "
        )),
        "{stderr}"
    );
}
