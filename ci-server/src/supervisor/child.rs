//! One child process of the supervisor: spawning it, waiting until it listens,
//! and forwarding its output to `tracing`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, info};

/// The phrase the simulator prints once it listens: `step-runner-sim listening on ADDR`.
const LISTENING: &str = "listening on ";

/// How many lines of a child's output are kept to explain a failed start.
const TAIL_LINES: usize = 20;

/// A child that printed its listening line and accepts connections.
pub(super) struct ReadyChild {
    pub(super) child: Child,
    /// The write end of the child's standard input, kept open while the child
    /// is ours; it closes when this process ends, however it ends.
    _parent_pipe: Option<tokio::process::ChildStdin>,
    pub(super) addr: SocketAddr,
}

/// Why a child did not become ready.
#[derive(Debug)]
pub(super) enum StartFailure {
    /// The program could not be started at all.
    Spawn(std::io::Error),
    /// It exited before it listened.
    Exited { status: ExitStatus, output: String },
    /// It did not listen within the start timeout (it has been killed).
    Timeout { after: Duration, output: String },
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Spawn(e) => write!(f, "cannot start the program: {e}"),
            Self::Exited { status, output } => {
                write!(f, "it exited ({status}) before listening")?;
                write_output(f, output)
            }
            Self::Timeout { after, output } => {
                write!(
                    f,
                    "it did not print `{LISTENING}ADDR` and accept connections within {after:?}"
                )?;
                write_output(f, output)
            }
        }
    }
}

fn write_output(f: &mut std::fmt::Formatter<'_>, output: &str) -> std::fmt::Result {
    if output.is_empty() {
        write!(f, "; it printed nothing")
    } else {
        write!(f, "; its last output:\n{output}")
    }
}

/// Starts `program args… --addr <addr>` and waits until it listens, at most
/// `timeout`. The child is killed if this future is dropped or the start fails.
pub(super) async fn start_child(
    program: &Path,
    args: &[String],
    addr: SocketAddr,
    timeout: Duration,
) -> Result<ReadyChild, StartFailure> {
    let deadline = Instant::now() + timeout;
    let mut child = Command::new(program)
        .args(args)
        .arg("--addr")
        .arg(addr.to_string())
        // The simulator has no use for the server's API token.
        .env_remove(crate::API_TOKEN_ENV)
        // A pipe that stays open as long as this process holds the child: the
        // bundled simulator exits at its end-of-file (see EXIT_WITH_PARENT_FLAG).
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(StartFailure::Spawn)?;
    // Held apart from `child`: tokio closes a child's stdin when waiting on it.
    let parent_pipe = child.stdin.take();
    let pid = child.id();
    let (lines_tx, mut lines_rx) = mpsc::unbounded_channel();
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward_output(stdout, pid, lines_tx.clone()).in_current_span());
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_output(stderr, pid, lines_tx).in_current_span());
    }

    let mut tail = Vec::new();
    let listening = loop {
        tokio::select! {
            line = lines_rx.recv() => match line {
                Some(line) => {
                    if let Some(addr) = parse_listening_line(&line) {
                        break addr;
                    }
                    if tail.len() == TAIL_LINES {
                        tail.remove(0);
                    }
                    tail.push(line);
                }
                // Both pipes closed: the child is exiting; `wait` tells how.
                None => {
                    let status = tokio::select! {
                        status = child.wait() => status,
                        () = tokio::time::sleep_until(deadline) => {
                            return Err(StartFailure::Timeout { after: timeout, output: tail.join("\n") });
                        }
                    };
                    return Err(exited(status, &tail));
                }
            },
            status = child.wait() => {
                // Collect what it printed before dying (the pipes end soon after).
                while let Ok(Some(line)) =
                    tokio::time::timeout_at(deadline, lines_rx.recv()).await
                {
                    tail.push(line);
                }
                return Err(exited(status, &tail));
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(StartFailure::Timeout { after: timeout, output: tail.join("\n") });
            }
        }
    };

    // The line is printed after binding, so connecting should succeed at once;
    // poll anyway, up to the deadline, so that "ready" means "accepts connections".
    loop {
        tokio::select! {
            status = child.wait() => return Err(exited(status, &tail)),
            connected = TcpStream::connect(listening) => {
                if connected.is_ok() {
                    return Ok(ReadyChild {
                        child,
                        addr: listening,
                        _parent_pipe: parent_pipe,
                    });
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(StartFailure::Timeout {
                after: timeout,
                output: tail.join("\n"),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn exited(status: std::io::Result<ExitStatus>, tail: &[String]) -> StartFailure {
    match status {
        Ok(status) => StartFailure::Exited {
            status,
            output: tail.join("\n"),
        },
        Err(e) => StartFailure::Spawn(e),
    }
}

/// Logs one line of the child's log again, at its level; a line that is not
/// a log line (no level) is logged at `info`.
fn relay(line: &str, pid: Option<u32>) {
    const TARGET: &str = "ci_server::runner_process";
    let (level, message) = split_log_line(line);
    match level {
        Some("ERROR") => tracing::error!(target: TARGET, pid, "{message}"),
        Some("WARN") => tracing::warn!(target: TARGET, pid, "{message}"),
        Some("DEBUG") => tracing::debug!(target: TARGET, pid, "{message}"),
        Some("TRACE") => tracing::trace!(target: TARGET, pid, "{message}"),
        _ => info!(target: TARGET, pid, "{message}"),
    }
}

/// Splits a line of `tracing`'s default format (`TIMESTAMP  LEVEL rest`, as
/// the simulator writes it) into its level and the rest; the timestamp is
/// dropped. A line of another shape comes back whole, with no level.
fn split_log_line(line: &str) -> (Option<&str>, &str) {
    let mut rest = line.trim_start();
    if let Some((first, after)) = rest.split_once(' ') {
        let looks_like_time = first.len() >= 20
            && first.ends_with('Z')
            && first.as_bytes().get(4) == Some(&b'-')
            && first.contains('T');
        if looks_like_time {
            rest = after.trim_start();
        }
    }
    for level in ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"] {
        if let Some(after) = rest.strip_prefix(level)
            && after.starts_with(' ')
        {
            return (Some(level), after.trim_start());
        }
    }
    (None, line)
}

/// Logs every line the child prints (target `ci_server::runner_process`) at
/// the level it was logged with, without its own timestamp and level (this
/// log adds them again), and hands the raw line to the start-up watcher while
/// that one still listens.
async fn forward_output(
    stream: impl AsyncRead + Unpin,
    pid: Option<u32>,
    lines: mpsc::UnboundedSender<String>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end();
                relay(line, pid);
                // After start-up nobody listens any more; that is fine.
                let _ = lines.send(line.to_owned());
            }
        }
    }
}

/// The address in a line like `step-runner-sim listening on 127.0.0.1:4000`
/// (ANSI colour codes and an `http://` prefix are tolerated).
pub(super) fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let plain = strip_ansi(line);
    let (_, rest) = plain.split_once(LISTENING)?;
    let token = rest.split_whitespace().next()?;
    let token = token.strip_prefix("http://").unwrap_or(token);
    let token = token.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != ']');
    token.parse().ok().filter(|a: &SocketAddr| a.port() != 0)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `ESC [ … final-byte`.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_of_the_child_loses_its_timestamp_and_keeps_its_level() {
        assert_eq!(
            split_log_line(
                "2026-11-29T01:02:03.456789Z  WARN step_runner_sim::server: crashing as asked"
            ),
            (Some("WARN"), "step_runner_sim::server: crashing as asked")
        );
        assert_eq!(
            split_log_line("2026-11-29T01:02:03.456789Z  INFO listening"),
            (Some("INFO"), "listening")
        );
        // Not a log line: kept whole, with no level.
        for line in [
            "step-runner-sim listening on 127.0.0.1:4000",
            "INFOMERCIAL break",
            "",
        ] {
            assert_eq!(split_log_line(line), (None, line));
        }
    }

    #[test]
    fn parses_the_listening_line() {
        let want: SocketAddr = "127.0.0.1:4000".parse().expect("valid");
        for line in [
            "step-runner-sim listening on 127.0.0.1:4000",
            "step-runner-sim listening on 127.0.0.1:4000\n",
            "step-runner-sim listening on http://127.0.0.1:4000/",
            "\u{1b}[32m INFO\u{1b}[0m step-runner-sim listening on \u{1b}[1m127.0.0.1:4000\u{1b}[0m",
            "step-runner-sim listening on 127.0.0.1:4000 (crash on)",
        ] {
            assert_eq!(parse_listening_line(line), Some(want), "{line:?}");
        }
        assert_eq!(
            parse_listening_line("listening on [::1]:80"),
            Some("[::1]:80".parse().expect("valid"))
        );
        for line in [
            "step-runner-sim starting",
            "listening on",
            "listening on nowhere",
            "listening on 127.0.0.1:0",
        ] {
            assert_eq!(parse_listening_line(line), None, "{line:?}");
        }
    }
}
