//! Starting the simulator binary, reading its stderr, and speaking raw HTTP/1.1.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::time::timeout;

/// How long any single wait in these tests may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Environment variables the simulator reads; cleared so the caller's
/// environment cannot change a test.
const SIM_VARS: [&str; 5] = [
    "STEP_RUNNER_SERVER_ADDR",
    "ORCA_STEP_RUNNER_SERVER_ADDR",
    "CI_SERVER_CRASHABLE",
    "ORCA_CI_SERVER_CRASHABLE",
    "STEP_RUNNER_REQUEST_LOG",
];

/// The simulator binary, configured with `args` and `env`, not yet started.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_step-runner-sim"));
    for var in SIM_VARS {
        command.env_remove(var);
    }
    command
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A running simulator process; killed when dropped.
pub struct Sim {
    child: Child,
    /// The process id.
    pub pid: u32,
    /// The address from the startup line.
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    line_count: watch::Receiver<usize>,
}

impl Sim {
    /// Starts the binary on 127.0.0.1:0 with extra `args`.
    pub async fn start(args: &[&str]) -> Sim {
        let mut all = vec!["--addr", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Sim::start_raw(&all, &[]).await
    }

    /// Starts the binary with exactly `args` and `env` and waits for its startup line.
    pub async fn start_raw(args: &[&str], env: &[(&str, &str)]) -> Sim {
        let mut child = command(args, env).spawn().expect("spawn step-runner-sim");
        let pid = child.id().expect("a process just started has an id");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, line_count) = watch::channel(0usize);
        let (addr_tx, addr_rx) = oneshot::channel();
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut addr_tx = Some(addr_tx);
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(addr) = step_runner_sim::parse_listening_line(&line)
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(addr);
                }
                let mut all = sink.lock().expect("log lock");
                all.push(line);
                count_tx.send_replace(all.len());
            }
        });
        let addr = match timeout(DEADLINE, addr_rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!(
                "no startup line; stderr: {:?}",
                lines.lock().expect("log lock")
            ),
        };
        Sim {
            child,
            pid,
            addr,
            lines,
            line_count,
        }
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().expect("log lock").clone()
    }

    /// Waits (up to the deadline) until at least `count` stderr lines contain `needle`.
    pub async fn wait_for_log(&mut self, needle: &str, count: usize) {
        let found = timeout(DEADLINE, async {
            loop {
                let seen = self.logs().iter().filter(|l| l.contains(needle)).count();
                if seen >= count {
                    return;
                }
                if self.line_count.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let seen = self.logs().iter().filter(|l| l.contains(needle)).count();
        assert!(
            found.is_ok() && seen >= count,
            "expected {count} log lines with {needle:?}, got {seen}: {:#?}",
            self.logs()
        );
    }

    /// Sends a signal (by `kill -s NAME`) to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("process still running");
        let status = std::process::Command::new("kill")
            .args(["-s", name, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits (up to the deadline) for the process to exit.
    pub async fn exit_status(&mut self) -> ExitStatus {
        timeout(DEADLINE, self.child.wait())
            .await
            .expect("process exits in time")
            .expect("wait for process")
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header lines as (name, value), in wire order.
    pub headers: Vec<(String, String)>,
    /// The body bytes as text.
    pub body: String,
}

impl Reply {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The JSON body of a 200 answer.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

/// Parses one complete response (headers and a Content-Length body) from `bytes`;
/// returns it and how many bytes it used, or `None` if incomplete.
pub fn parse_reply(bytes: &[u8]) -> Option<(Reply, usize)> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().expect("numeric Content-Length"));
    let end = head_end + length;
    if bytes.len() < end {
        return None;
    }
    let body = String::from_utf8(bytes[head_end..end].to_vec()).expect("UTF-8 body");
    Some((
        Reply {
            status,
            headers,
            body,
        },
        end,
    ))
}

/// Sends raw request bytes on a fresh connection and reads until the server
/// closes it. `Ok(empty)` or an error means the server sent no response.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    timeout(DEADLINE, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        Ok(reply)
    })
    .await
    .expect("exchange finishes in time")
}

/// A request with `Connection: close`, so the server closes after answering.
pub fn request(method: &str, path: &str, content_type: Option<&str>, body: &str) -> Vec<u8> {
    let content_type = content_type
        .map(|ct| format!("Content-Type: {ct}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// POSTs `body` to `/step/trigger` and parses the answer.
pub async fn post(addr: SocketAddr, body: &str) -> Reply {
    send(
        addr,
        "POST",
        "/step/trigger",
        Some("application/json"),
        body,
    )
    .await
}

/// Sends one request and parses the answer (panics if there is none).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Reply {
    let bytes = exchange(addr, &request(method, path, content_type, body))
        .await
        .expect("server answers");
    let (reply, used) = parse_reply(&bytes).expect("a complete HTTP response");
    assert_eq!(used, bytes.len(), "bytes after the response");
    reply
}

/// Whether an exchange got no response at all (empty reply or reset).
pub fn no_response(result: &std::io::Result<Vec<u8>>) -> bool {
    match result {
        Ok(bytes) => bytes.is_empty(),
        Err(_) => true,
    }
}
