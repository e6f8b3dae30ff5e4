//! `HttpStepRunner` against tiny fake runners on real loopback sockets that
//! misbehave in one precise way each, checking that every misbehaviour becomes
//! the right `RunnerError`, that a slow or silent runner is waited for (the HTTP
//! runner has no clock of its own once connected), and what probes say.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ci_engine::{Probe, RunnerError, StepRequest, StepRunner, StepVerdict};
use ci_server::http_runner::{HttpRunnerConfig, HttpStepRunner, RunnerAddr};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const COMMIT: &str = "abcdef0123456789abcdef0123456789abcdef01";

/// A request as the fake runner received it.
#[derive(Debug)]
struct Received {
    /// Which connection of the fake it came on, from 1.
    connection: usize,
    /// The client's end of that connection.
    peer: Option<SocketAddr>,
    head: String,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// What the fake runner does once it has accepted a connection.
#[derive(Clone)]
enum Act {
    /// Read each request, write these bytes, keep the connection open for the
    /// next request (as a keep-alive server does).
    Reply(Vec<u8>),
    /// Read the request and close without a word.
    CloseAfterRequest,
    /// Read the request and reset the connection (RST).
    ResetAfterRequest,
    /// Close as soon as accepted, without reading anything.
    CloseAtOnce,
    /// Read the request, then never answer.
    Hang,
    /// Read the request, write these bytes, then never finish.
    ReplyThenHang(Vec<u8>),
    /// Read the request, write `first`, wait until `gate` holds `true`, then
    /// write `rest` (a runner whose answer takes as long as the test says).
    ReplyWhenReleased {
        first: Vec<u8>,
        rest: Vec<u8>,
        gate: watch::Receiver<bool>,
    },
}

/// A fake runner on `127.0.0.1:<port>`; aborted (all sockets closed) on drop.
struct Fake {
    addr: SocketAddr,
    received: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    async fn start(act: Act) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::on(listener, act)
    }

    fn on(listener: TcpListener, act: Act) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let (tx, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Every connection is a future owned by this task, so that aborting
            // the task closes the listener and all connections at once.
            let mut connections = FuturesUnordered::new();
            let mut count = 0;
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { return };
                        count += 1;
                        connections.push(serve_connection(stream, count, act.clone(), tx.clone()));
                    }
                    Some(()) = connections.next(), if !connections.is_empty() => {}
                }
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// Kills the fake as a dying runner process: listener and connections are
    /// closed when this returns.
    async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    fn runner(&self) -> HttpStepRunner {
        runner_at(RunnerAddr::from_socket_addr(self.addr), quick_config())
    }
}

/// Serves one connection the way `act` says; `Reply` answers every request
/// on the connection (keep-alive).
async fn serve_connection(
    mut stream: TcpStream,
    connection: usize,
    act: Act,
    tx: mpsc::UnboundedSender<Received>,
) {
    if matches!(act, Act::CloseAtOnce) {
        return;
    }
    let peer = stream.peer_addr().ok();
    while let Some(mut request) = read_request(&mut stream).await {
        request.connection = connection;
        request.peer = peer;
        let _ = tx.send(request);
        match &act {
            Act::Reply(bytes) => {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Act::CloseAfterRequest | Act::CloseAtOnce => return,
            Act::ResetAfterRequest => {
                stream.set_zero_linger().expect("SO_LINGER");
                return;
            }
            Act::Hang => std::future::pending::<()>().await,
            Act::ReplyThenHang(bytes) => {
                let _ = stream.write_all(bytes).await;
                std::future::pending::<()>().await;
            }
            Act::ReplyWhenReleased { first, rest, gate } => {
                if stream.write_all(first).await.is_err() {
                    return;
                }
                let mut gate = gate.clone();
                if gate.wait_for(|open| *open).await.is_err() {
                    return;
                }
                if stream.write_all(rest).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body).
async fn read_request(stream: &mut TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        connection: 0,
        peer: None,
        head,
        body: buf[head_end..head_end + length].to_vec(),
    })
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn json_ok(body: &str) -> Act {
    Act::Reply(response("200 OK", "application/json", body))
}

fn text(status: &str, body: &str) -> Act {
    Act::Reply(response(status, "text/plain; charset=utf-8", body))
}

const GOOD_BODY: &str = "{\"build_logs\":\"step 'lint' build started!\\nLinting...\",\"status\":\"Success\",\"duration_ms\":81}\n";

fn quick_config() -> HttpRunnerConfig {
    HttpRunnerConfig {
        connect_timeout: Duration::from_secs(2),
        ..HttpRunnerConfig::default()
    }
}

/// A connect timeout far shorter than the waits the tests below check.
const SHORT_CONNECT: Duration = Duration::from_millis(100);

/// How long a call must still be pending for a test to say "it keeps waiting":
/// several connect timeouts.
const STILL_WAITING_AFTER: Duration = Duration::from_millis(600);

fn short_connect_config() -> HttpRunnerConfig {
    HttpRunnerConfig {
        connect_timeout: SHORT_CONNECT,
        ..HttpRunnerConfig::default()
    }
}

fn runner_at(addr: RunnerAddr, config: HttpRunnerConfig) -> HttpStepRunner {
    HttpStepRunner::new(addr, "/repos/demo".into(), config).expect("runner builds")
}

fn request(step: &str, attempt: u32) -> StepRequest {
    StepRequest {
        step: step.into(),
        commit: COMMIT.into(),
        attempt,
    }
}

/// Runs one lint against `act` and returns the error it must produce.
async fn error_for(act: Act) -> RunnerError {
    let fake = Fake::start(act).await;
    let result = fake.runner().run(&request("lint", 1)).await;
    result.expect_err("the fake runner misbehaves")
}

fn assert_names_the_attempt(error: &RunnerError) {
    let message = error.to_string();
    assert!(
        message.contains("abcdef01-lint-a1-"),
        "the request id is missing from {message:?}"
    );
}

#[tokio::test]
async fn a_good_answer_becomes_the_step_output_and_the_request_follows_the_protocol() {
    let mut fake = Fake::start(json_ok(GOOD_BODY)).await;
    let output = fake
        .runner()
        .run(&request("lint", 2))
        .await
        .expect("a good answer");
    assert_eq!(output.verdict, StepVerdict::Success);
    assert_eq!(output.logs, "step 'lint' build started!\nLinting...");
    assert_eq!(output.duration, Some(Duration::from_millis(81)));

    let received = fake
        .received
        .recv()
        .await
        .expect("the fake saw the request");
    assert!(
        received.head.starts_with("POST /step/trigger HTTP/1.1\r\n"),
        "{}",
        received.head
    );
    let id = received.header("x-request-id").expect("request id header");
    assert!(id.starts_with("abcdef01-lint-a2-"), "{id}");
    let body: serde_json::Value = serde_json::from_slice(&received.body).expect("JSON body");
    assert_eq!(
        body,
        serde_json::json!({"step_name": "lint", "repo_path": "/repos/demo", "commit_hash": COMMIT})
    );
}

#[tokio::test]
async fn a_failure_verdict_is_a_result_not_an_error() {
    let fake = Fake::start(json_ok(
        r#"{"build_logs":"Building...","status":"Failure","duration_ms":5}"#,
    ))
    .await;
    let output = fake
        .runner()
        .run(&request("build", 1))
        .await
        .expect("a verdict");
    assert_eq!(output.verdict, StepVerdict::Failure);
}

#[tokio::test]
async fn a_url_prefix_is_kept_and_each_attempt_has_its_own_id() {
    let mut fake = Fake::start(json_ok(GOOD_BODY)).await;
    let addr: RunnerAddr = format!("http://{}/runners/one/", fake.addr)
        .parse()
        .expect("valid URL");
    let runner = runner_at(addr, quick_config());
    runner.run(&request("lint", 1)).await.expect("ok");
    runner.run(&request("lint", 1)).await.expect("ok");
    let first = fake.received.recv().await.expect("first");
    let second = fake.received.recv().await.expect("second");
    assert!(
        first
            .head
            .starts_with("POST /runners/one/step/trigger HTTP/1.1"),
        "{}",
        first.head
    );
    assert_ne!(first.header("x-request-id"), second.header("x-request-id"));
}

/// Each attempt opens its own connection, even to a keep-alive runner: a pooled
/// connection might belong to a runner that died meanwhile, and a request
/// written to it would fail after "sending" and look `Lost` although the runner
/// never saw it.
#[tokio::test]
async fn connections_are_never_reused() {
    let mut fake = Fake::start(json_ok(GOOD_BODY)).await;
    let runner = fake.runner();
    for _ in 0..3 {
        runner.run(&request("lint", 1)).await.expect("ok");
    }
    let mut connections = Vec::new();
    for _ in 0..3 {
        connections.push(fake.received.recv().await.expect("request").connection);
    }
    assert_eq!(connections, [1, 2, 3]);
}

#[tokio::test]
async fn connection_refused_is_unreachable() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    }; // closed here: nobody listens on it now
    let runner = runner_at(RunnerAddr::from_socket_addr(port), quick_config());
    let error = runner.run(&request("lint", 1)).await.expect_err("refused");
    assert!(matches!(error, RunnerError::Unreachable(_)), "{error}");
    assert_names_the_attempt(&error);
}

#[tokio::test]
async fn closing_without_a_reply_is_lost() {
    let error = error_for(Act::CloseAfterRequest).await;
    assert!(matches!(error, RunnerError::Lost(_)), "{error}");
    assert_names_the_attempt(&error);
}

#[tokio::test]
async fn a_reset_connection_is_lost() {
    let error = error_for(Act::ResetAfterRequest).await;
    assert!(matches!(error, RunnerError::Lost(_)), "{error}");
    assert_names_the_attempt(&error);
}

#[tokio::test]
async fn a_connection_closed_before_reading_is_lost_not_unreachable() {
    // Connecting succeeded, so the request may have reached the runner.
    let error = error_for(Act::CloseAtOnce).await;
    assert!(matches!(error, RunnerError::Lost(_)), "{error}");
}

/// The engine's step timeout is the only clock on a request: a runner that says
/// nothing for many connect timeouts is still waited for, and its late answer
/// counts.
#[tokio::test]
async fn a_late_answer_is_waited_for_and_counts() {
    for (first, rest) in [
        // Nothing at all until released.
        (
            Vec::new(),
            response("200 OK", "application/json", GOOD_BODY),
        ),
        // The head and part of the body, then a stall in the middle of the body.
        split_in_body(response("200 OK", "application/json", GOOD_BODY), 10),
    ] {
        let (release, gate) = watch::channel(false);
        let mut fake = Fake::start(Act::ReplyWhenReleased { first, rest, gate }).await;
        let runner = runner_at(
            RunnerAddr::from_socket_addr(fake.addr),
            short_connect_config(),
        );
        let lint = request("lint", 1);
        let mut call = std::pin::pin!(runner.run(&lint));
        let early = tokio::time::timeout(STILL_WAITING_AFTER, &mut call).await;
        assert!(
            early.is_err(),
            "the call ended before the runner answered: {early:?}"
        );
        fake.received
            .recv()
            .await
            .expect("the request reached the runner");
        release.send(true).expect("the fake waits at the gate");
        let output = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the answer is read once it comes")
            .expect("a late answer is a good answer");
        assert_eq!(output.verdict, StepVerdict::Success);
        assert_eq!(output.logs, "step 'lint' build started!\nLinting...");
    }
}

/// A response split `into` bytes after the end of its head.
fn split_in_body(mut bytes: Vec<u8>, into: usize) -> (Vec<u8>, Vec<u8>) {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let rest = bytes.split_off(head_end + into);
    (bytes, rest)
}

/// A runner that accepted the request and never answers keeps the call pending:
/// the HTTP runner never cuts short a request the engine still holds open.
#[tokio::test]
async fn a_runner_that_never_answers_keeps_the_request_open() {
    let mut fake = Fake::start(Act::Hang).await;
    let runner = runner_at(
        RunnerAddr::from_socket_addr(fake.addr),
        short_connect_config(),
    );
    let lint = request("lint", 1);
    let mut call = std::pin::pin!(runner.run(&lint));
    let result = tokio::time::timeout(STILL_WAITING_AFTER, &mut call).await;
    assert!(result.is_err(), "the call ended by itself: {result:?}");
    fake.received
        .recv()
        .await
        .expect("the request reached the runner");
    // Still pending after the request is known to have arrived.
    let result = tokio::time::timeout(STILL_WAITING_AFTER, &mut call).await;
    assert!(result.is_err(), "the call ended by itself: {result:?}");
}

#[tokio::test]
async fn a_body_that_stalls_keeps_the_request_open() {
    let fake = Fake::start(Act::ReplyThenHang(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"build"
            .to_vec(),
    ))
    .await;
    let runner = runner_at(
        RunnerAddr::from_socket_addr(fake.addr),
        short_connect_config(),
    );
    let result = tokio::time::timeout(STILL_WAITING_AFTER, runner.run(&request("lint", 1))).await;
    assert!(result.is_err(), "the call ended by itself: {result:?}");
}

/// TCP keepalive is what ends a request to a machine that vanished; check that
/// the client's socket has its keepalive timer armed with the configured idle
/// time (Linux shows socket timers in `/proc/net/tcp`).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn requests_go_out_with_tcp_keepalive() {
    let mut fake = Fake::start(Act::Hang).await;
    let config = HttpRunnerConfig {
        keepalive_idle: Duration::from_secs(40),
        ..quick_config()
    };
    let runner = runner_at(RunnerAddr::from_socket_addr(fake.addr), config);
    let call = tokio::spawn(async move { runner.run(&request("lint", 1)).await });
    let received = fake.received.recv().await.expect("the request arrived");
    let client = received.peer.expect("the fake knows the client's address");
    // `tr` is 2 while the keepalive timer is pending; `tm->when` is in clock
    // ticks (USER_HZ, 100 a second), in hexadecimal.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (timer, when) = loop {
        let found = client_socket_timer(client, fake.addr);
        if let Some((2, when)) = found {
            break (2, when);
        }
        assert!(
            Instant::now() < deadline,
            "no keepalive timer on the client's socket {client}: {found:?}"
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(timer, 2);
    assert!(
        (30 * 100..=40 * 100).contains(&when),
        "the keepalive timer fires in {when} ticks, not within the configured 40 s"
    );
    call.abort();
}

/// The `tr` and `tm->when` columns of the established connection from `local`
/// to `remote`, from `/proc/net/tcp`. Both ends are matched: the local port
/// may still be listed in TIME_WAIT for an earlier connection to another
/// address (as a test running beside this one can leave it).
#[cfg(target_os = "linux")]
fn client_socket_timer(local: SocketAddr, remote: SocketAddr) -> Option<(u8, u64)> {
    let wanted_local = proc_net_tcp_address(local);
    let wanted_remote = proc_net_tcp_address(remote);
    const ESTABLISHED: &str = "01";
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&wanted_local.as_str())
            || fields.get(2) != Some(&wanted_remote.as_str())
            || fields.get(3) != Some(&ESTABLISHED)
        {
            return None;
        }
        let (timer, when) = fields.get(5)?.split_once(':')?;
        Some((
            u8::from_str_radix(timer, 16).ok()?,
            u64::from_str_radix(when, 16).ok()?,
        ))
    })
}

/// An IPv4 socket address as `/proc/net/tcp` writes it: the address as a
/// little-endian word and the port, both in upper-case hexadecimal.
#[cfg(target_os = "linux")]
fn proc_net_tcp_address(address: SocketAddr) -> String {
    let SocketAddr::V4(v4) = address else {
        panic!("the test uses IPv4 loopback only, not {address}")
    };
    let ip = u32::from_le_bytes(v4.ip().octets());
    format!("{ip:08X}:{:04X}", v4.port())
}

#[tokio::test]
async fn a_body_cut_short_is_lost() {
    let bytes =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"build"
            .to_vec();
    let mut fake = Fake::start(Act::Reply(bytes)).await;
    let runner = fake.runner();
    let call = tokio::spawn(async move { runner.run(&request("lint", 1)).await });
    // Once the request has arrived, the runner dies with the body half sent.
    fake.received.recv().await.expect("request arrived");
    fake.kill().await;
    let error = call
        .await
        .expect("task")
        .expect_err("cut short by the runner's death");
    assert!(matches!(error, RunnerError::Lost(_)), "{error}");
}

#[tokio::test]
async fn a_reply_that_is_not_http_is_a_protocol_error() {
    let error = error_for(Act::Reply(b"hello, this is not HTTP\r\n\r\n".to_vec())).await;
    assert!(matches!(error, RunnerError::Protocol(_)), "{error}");
    assert_names_the_attempt(&error);
}

#[tokio::test]
async fn a_200_that_is_not_the_json_is_a_protocol_error_quoting_the_start_of_the_body() {
    let body = format!("<html>{}</html>", "é".repeat(300));
    let error = error_for(Act::Reply(response("200 OK", "text/html", &body))).await;
    let RunnerError::Protocol(message) = &error else {
        panic!("expected a protocol error, got {error}");
    };
    assert!(message.contains("<html>éé"), "{message}");
    assert!(
        !message.contains("</html>"),
        "the whole body was quoted: {message}"
    );
    assert!(
        message.contains(&format!("({} bytes)", body.len())),
        "{message}"
    );
    assert_names_the_attempt(&error);
}

#[tokio::test]
async fn an_unknown_status_is_a_protocol_error() {
    let error = error_for(json_ok(
        r#"{"build_logs":"","status":"Cancelled","duration_ms":1}"#,
    ))
    .await;
    assert!(matches!(error, RunnerError::Protocol(_)), "{error}");
    assert!(error.to_string().contains("Cancelled"), "{error}");
}

#[tokio::test]
async fn a_missing_field_is_a_protocol_error() {
    let error = error_for(json_ok(r#"{"status":"Success","duration_ms":1}"#)).await;
    assert!(matches!(error, RunnerError::Protocol(_)), "{error}");
    assert!(error.to_string().contains("build_logs"), "{error}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_protocol_error() {
    let fake = Fake::start(json_ok(&format!(
        r#"{{"build_logs":"{}","status":"Success"}}"#,
        "x".repeat(5000)
    )))
    .await;
    let config = HttpRunnerConfig {
        max_body_bytes: 1000,
        ..quick_config()
    };
    let runner = runner_at(RunnerAddr::from_socket_addr(fake.addr), config);
    let error = runner.run(&request("lint", 1)).await.expect_err("too big");
    assert!(matches!(error, RunnerError::Protocol(_)), "{error}");
    assert!(
        error.to_string().contains("larger than 1000 bytes"),
        "{error}"
    );
}

#[tokio::test]
async fn client_errors_are_rejected_with_the_runner_text() {
    for (status, body) in [
        ("400 Bad Request", "Unknown step!"),
        ("400 Bad Request", "unexpected EOF"),
        ("404 Not Found", "404 page not found"),
        ("405 Method Not Allowed", "Invalid request method"),
    ] {
        let error = error_for(text(status, &format!("{body}\n"))).await;
        let RunnerError::Rejected(message) = &error else {
            panic!("{status}: expected Rejected, got {error}");
        };
        assert!(message.contains(body), "{message}");
        assert!(message.contains(&status[..3]), "{message}");
        assert_names_the_attempt(&error);
    }
}

#[tokio::test]
async fn server_errors_are_lost() {
    let error = error_for(text("500 Internal Server Error", "boom")).await;
    assert!(matches!(error, RunnerError::Lost(_)), "{error}");
    assert!(error.to_string().contains("boom"), "{error}");
    let error = error_for(text("503 Service Unavailable", "busy")).await;
    assert!(matches!(error, RunnerError::Lost(_)), "{error}");
}

#[tokio::test]
async fn other_statuses_are_protocol_errors_and_redirects_are_not_followed() {
    let error = error_for(Act::Reply(
        b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n"
            .to_vec(),
    ))
    .await;
    assert!(matches!(error, RunnerError::Protocol(_)), "{error}");
    let error = error_for(text("204 No Content", "")).await;
    assert!(matches!(error, RunnerError::Protocol(_)), "{error}");
}

/// A runner that died between two requests must never make the second one look
/// `Lost` (it was never sent): no stale pooled connection may be used. The first
/// runner keeps its connection open after answering, as a keep-alive server does.
#[tokio::test]
async fn a_runner_killed_between_requests_is_unreachable_then_reachable_again_on_the_same_port() {
    let mut first = Fake::start(json_ok(GOOD_BODY)).await;
    let addr = first.addr;
    let runner = first.runner();
    runner.run(&request("lint", 1)).await.expect("first answer");
    first.received.recv().await.expect("first request");
    first.kill().await; // the runner dies: listener and connections closed

    let error = runner
        .run(&request("lint", 1))
        .await
        .expect_err("nobody listens");
    assert!(
        matches!(error, RunnerError::Unreachable(_)),
        "a dead runner must be unreachable, got {error}"
    );

    // Restarted on the same port.
    let listener = bind_again(addr).await;
    let mut second = Fake::on(listener, json_ok(GOOD_BODY));
    let output = runner
        .run(&request("lint", 1))
        .await
        .expect("the restarted runner answers");
    assert_eq!(output.verdict, StepVerdict::Success);
    second.received.recv().await.expect("second runner got it");
}

#[tokio::test]
async fn a_runner_restarted_between_requests_answers_the_next_one() {
    let first = Fake::start(json_ok(GOOD_BODY)).await;
    let addr = first.addr;
    let runner = first.runner();
    runner.run(&request("lint", 1)).await.expect("first");
    first.kill().await;
    let listener = bind_again(addr).await;
    let _second = Fake::on(listener, json_ok(GOOD_BODY));
    let result = runner.run(&request("lint", 1)).await;
    assert!(result.is_ok(), "must not be lost: {result:?}");
}

/// Binds `addr` again (the killed fake has released it; `SO_REUSEADDR` lets the
/// port be reused while old connections linger in `TIME_WAIT`).
async fn bind_again(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot bind {addr} again: {e}"))
}

#[tokio::test]
async fn calls_may_run_concurrently() {
    let fake = Fake::start(json_ok(GOOD_BODY)).await;
    let runner = std::sync::Arc::new(fake.runner());
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let runner = std::sync::Arc::clone(&runner);
            tokio::spawn(async move { runner.run(&request("lint", i + 1)).await })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("each call succeeds");
    }
}

#[tokio::test]
async fn a_probe_runs_no_step_and_any_http_answer_means_up() {
    for (status, body) in [
        ("404 Not Found", "404 page not found"),
        ("200 OK", "hello"),
        ("503 Service Unavailable", "busy"),
    ] {
        let mut fake = Fake::start(text(status, body)).await;
        let probe = fake.runner().probe().await;
        assert_eq!(probe, Probe::Up, "{status}");
        let received = fake.received.recv().await.expect("the probe arrived");
        assert!(
            received.head.starts_with("GET / HTTP/1.1\r\n"),
            "{}",
            received.head
        );
        let id = received.header("x-request-id").expect("a request id");
        assert!(id.starts_with("probe-"), "{id}");
    }
}

#[tokio::test]
async fn a_probe_of_a_closed_port_is_down() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    }; // closed here: nobody listens on it now
    let runner = runner_at(RunnerAddr::from_socket_addr(port), quick_config());
    let probe = runner.probe().await;
    let Probe::Down(reason) = &probe else {
        panic!("expected Down, got {probe:?}");
    };
    assert!(reason.contains("cannot connect"), "{reason}");
    assert!(
        reason.contains(&port.to_string()),
        "the address is named: {reason}"
    );
}

/// A socket that accepts and never answers (a hung runner, or the simulator
/// after a crash) is down once the probe timeout is over, not later.
#[tokio::test]
async fn a_probe_of_a_runner_that_never_answers_is_down_within_the_probe_timeout() {
    let probe_timeout = Duration::from_millis(300);
    let fake = Fake::start(Act::Hang).await;
    let config = HttpRunnerConfig {
        probe_timeout,
        ..quick_config()
    };
    let runner = runner_at(RunnerAddr::from_socket_addr(fake.addr), config);
    let started = Instant::now();
    let probe = tokio::time::timeout(Duration::from_secs(10), runner.probe())
        .await
        .expect("the probe ends by itself");
    let took = started.elapsed();
    let Probe::Down(reason) = &probe else {
        panic!("expected Down, got {probe:?}");
    };
    assert!(reason.contains("probe timeout"), "{reason}");
    assert!(took >= probe_timeout, "down after only {took:?}");
    assert!(
        took < probe_timeout + Duration::from_secs(2),
        "down only after {took:?}"
    );
}

#[tokio::test]
async fn a_probe_answered_by_something_that_is_not_http_or_by_a_close_is_down() {
    for act in [
        Act::Reply(b"hello, this is not HTTP\r\n\r\n".to_vec()),
        Act::CloseAfterRequest,
        Act::CloseAtOnce,
    ] {
        let fake = Fake::start(act).await;
        let probe = tokio::time::timeout(Duration::from_secs(10), fake.runner().probe())
            .await
            .expect("the probe ends by itself");
        assert!(matches!(probe, Probe::Down(_)), "{probe:?}");
    }
}
