//! The request/response rows of the protocol: exact bodies, headers and status codes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::common::{DEADLINE, Sim, parse_reply, post, request, send};

const TEXT: &str = "text/plain; charset=utf-8";

#[tokio::test]
async fn a_lint_answer_is_byte_for_byte_the_originals() {
    let sim = Sim::start(&["--lint-ms", "5"]).await;
    let reply = post(
        sim.addr,
        r#"{"step_name":"lint","repo_path":"/r","commit_hash":"abc"}"#,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    let prefix = "{\"build_logs\":\"step 'lint' build started!\\nRepo path: /r\\nCommit hash: abc\\nLinting...\\nStep 'lint' completed with status: Success\",\"status\":\"Success\",\"duration_ms\":";
    assert!(reply.body.starts_with(prefix), "{}", reply.body);
    assert!(reply.body.ends_with("}\n") && !reply.body.ends_with("\n\n"));
    let duration = reply.json()["duration_ms"]
        .as_u64()
        .expect("integer duration");
    assert!(duration >= 5, "lint of 5 ms reported {duration} ms");
}

#[tokio::test]
async fn build_and_test_logs_follow_the_original() {
    let sim = Sim::start(&["--build-ms", "1", "--test-ms", "1", "--no-crash"]).await;
    for (step, doing) in [("build", "Building..."), ("test", "Testing...")] {
        let body =
            format!(r#"{{"step_name":"{step}","repo_path":"/repo","commit_hash":"c0ffee"}}"#);
        let reply = post(sim.addr, &body).await;
        assert_eq!(reply.status, 200);
        let json = reply.json();
        let status = json["status"].as_str().expect("status string");
        assert!(status == "Success" || status == "Failure", "{status}");
        assert_eq!(
            json["build_logs"],
            format!(
                "step '{step}' build started!\nRepo path: /repo\nCommit hash: c0ffee\n{doing}\nSimulating build for step '{step}'...\nStep '{step}' completed with status: {status}"
            )
        );
    }
}

#[tokio::test]
async fn bad_bodies_get_the_go_decoder_message_as_plain_text() {
    let sim = Sim::start(&["--no-crash"]).await;
    let cases = [
        ("", "EOF"),
        (" \n ", "EOF"),
        (r#"{"step_name": "li"#, "unexpected EOF"),
        (r#"{"step_name": "lint","#, "unexpected EOF"),
        (
            "not json",
            "invalid character 'o' in literal null (expecting 'u')",
        ),
        (
            "{'step_name':'lint'}",
            r"invalid character '\'' looking for beginning of object key string",
        ),
        (
            r#"{"step_name" "lint"}"#,
            r#"invalid character '"' after object key"#,
        ),
        (
            r#"{"step_name":1}"#,
            "json: cannot unmarshal number into Go struct field StepPayload.step_name of type string",
        ),
        (
            r#"{"step_name":"test","simulate_build_time":"5"}"#,
            "json: cannot unmarshal string into Go struct field StepPayload.simulate_build_time of type int",
        ),
        (
            r#"{"step_name":"test","simulate_build_time":2.5}"#,
            "json: cannot unmarshal number 2.5 into Go struct field StepPayload.simulate_build_time of type int",
        ),
        (
            r#"["lint"]"#,
            "json: cannot unmarshal array into Go value of type main.StepPayload",
        ),
        (r#"{"step_name":"Lint"}"#, "Unknown step!"),
        (r#"{"step_name":"deploy"}"#, "Unknown step!"),
        ("{}", "Unknown step!"),
        ("null", "Unknown step!"),
    ];
    for (body, message) in cases {
        let reply = post(sim.addr, body).await;
        assert_eq!(reply.status, 400, "body {body:?}");
        assert_eq!(reply.header("Content-Type"), Some(TEXT), "body {body:?}");
        assert_eq!(reply.header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(reply.body, format!("{message}\n"), "body {body:?}");
    }
}

#[tokio::test]
async fn other_methods_and_paths_are_refused_like_go() {
    let sim = Sim::start(&[]).await;
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let reply = send(sim.addr, method, "/step/trigger", None, "").await;
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("Content-Type"), Some(TEXT));
        assert_eq!(reply.body, "Invalid request method\n");
    }
    for path in [
        "/",
        "/step",
        "/step/trigger/",
        "/step/triggers",
        "/Step/trigger",
    ] {
        let reply = send(sim.addr, "POST", path, Some("application/json"), "{}").await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.header("Content-Type"), Some(TEXT));
        assert_eq!(reply.body, "404 page not found\n");
    }
    let reply = send(sim.addr, "POST", "//step/./trigger?x=1", None, "{}").await;
    assert_eq!(reply.status, 301);
    assert_eq!(reply.header("Location"), Some("/step/trigger?x=1"));
}

#[tokio::test]
async fn lenient_inputs_are_accepted() {
    let sim = Sim::start(&["--lint-ms", "0"]).await;
    let cases = [
        (
            Some("text/plain"),
            r#"{"step_name":"lint"}"#,
            "Repo path: \n",
        ),
        (
            None,
            r#"{"step_name":"lint","unknown":[1,{"a":null}]}"#,
            "Commit hash: \n",
        ),
        (
            Some("application/json"),
            r#"{"STEP_NAME":"lint","Repo_Path":"/up"} and then garbage"#,
            "Repo path: /up\n",
        ),
        (
            Some("application/json"),
            r#"{"step_name":"lint","repo_path":"<&>"}"#,
            "Repo path: <&>\n",
        ),
    ];
    for (content_type, body, expected_log) in cases {
        let reply = send(sim.addr, "POST", "/step/trigger", content_type, body).await;
        assert_eq!(reply.status, 200, "body {body:?}");
        let logs = reply.json()["build_logs"]
            .as_str()
            .expect("logs string")
            .to_owned();
        assert!(
            logs.contains(expected_log),
            "{logs:?} lacks {expected_log:?}"
        );
    }
    // Go's encoder escapes HTML characters.
    let reply = post(sim.addr, r#"{"step_name":"lint","repo_path":"<&>"}"#).await;
    assert!(
        reply.body.contains(r"Repo path: \u003c\u0026\u003e"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn simulate_status_and_build_time_are_honoured() {
    let sim = Sim::start(&[
        "--build-ms",
        "3000",
        "--test-ms",
        "3000",
        "--fail-rate",
        "1",
        "--no-crash",
    ])
    .await;
    for step in ["build", "test"] {
        let body = format!(
            r#"{{"step_name":"{step}","simulate_status":"Custom status","simulate_build_time":20}}"#
        );
        let reply = post(sim.addr, &body).await;
        let json = reply.json();
        assert_eq!(json["status"], "Custom status");
        let duration = json["duration_ms"].as_u64().expect("integer duration");
        assert!((20..3000).contains(&duration), "{step}: {duration} ms");
        let forced_success = post(
            sim.addr,
            &format!(
                r#"{{"step_name":"{step}","simulate_status":"Success","simulate_build_time":0}}"#
            ),
        )
        .await;
        assert_eq!(forced_success.json()["status"], "Success");
    }
    // With fail rate 1 and no override, builds fail.
    let reply = post(sim.addr, r#"{"step_name":"build","simulate_build_time":0}"#).await;
    assert_eq!(reply.json()["status"], "Failure");
    // Lint ignores both fields.
    let lint = post(
        sim.addr,
        r#"{"step_name":"lint","simulate_status":"Failure","simulate_build_time":5000}"#,
    )
    .await;
    let json = lint.json();
    assert_eq!(json["status"], "Success");
    assert!(json["duration_ms"].as_u64().expect("integer duration") < 5000);
}

#[tokio::test]
async fn one_connection_serves_several_requests() {
    let sim = Sim::start(&["--lint-ms", "0"]).await;
    let mut stream = TcpStream::connect(sim.addr).await.expect("connect");
    let body = r#"{"step_name":"lint"}"#;
    let keep_alive = format!(
        "POST /step/trigger HTTP/1.1\r\nHost: sim\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for round in 0..3 {
        stream
            .write_all(keep_alive.as_bytes())
            .await
            .expect("write on the kept-alive connection");
        let mut buffer = Vec::new();
        let reply = timeout(DEADLINE, async {
            loop {
                if let Some((reply, _)) = parse_reply(&buffer) {
                    return reply;
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "server closed the connection in round {round}");
                buffer.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("answer in time");
        assert_eq!(reply.status, 200, "round {round}");
    }
    let mut closing = request("GET", "/step/trigger", None, "");
    stream.write_all(&closing).await.expect("write");
    closing.clear();
    timeout(DEADLINE, stream.read_to_end(&mut closing))
        .await
        .expect("server closes after Connection: close")
        .expect("read");
    assert!(String::from_utf8_lossy(&closing).starts_with("HTTP/1.1 405"));
}
