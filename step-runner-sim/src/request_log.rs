//! The request log: one JSON object per line for each step request received,
//! each answer given and the simulated crash, appended to a file that several
//! simulator processes may share. A test reads it afterwards to check how many
//! requests of a step each simulator held at once.
//!
//! Each line is written with one `write` call on a file opened for appending,
//! so lines from several processes interleave whole. Nothing is buffered in the
//! process: a line is in the file as soon as the event has happened, and a
//! crash line is there before the process exits.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::go_json::write_go_string;

/// An open request log file; give it to
/// [`serve_with_request_log`](crate::serve_with_request_log).
#[derive(Debug)]
pub struct RequestLog {
    path: PathBuf,
    file: File,
}

impl RequestLog {
    /// Opens `path` for appending, creating it if it does not exist.
    ///
    /// # Errors
    /// What the operating system said when the file cannot be opened.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// The file's path, as given to [`open`](Self::open).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A step request as the log knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// The server's number for it: 1, 2, … in the order of the `start` lines.
    pub number: u64,
    /// `step_name` as the client sent it.
    pub step: String,
    /// `commit_hash` as the client sent it.
    pub commit: String,
}

/// What one line's writer needs exclusively: the file and the last number.
#[derive(Debug)]
struct Writer {
    /// `None` once a crash line is written: a crashed server writes nothing more.
    file: Option<File>,
    last_number: u64,
}

/// One server's view of the log: its address, its process and its request
/// numbers. Lines are numbered, stamped and written under one lock, so that
/// one process's `start` lines are numbered 1, 2, … in the file's order.
#[derive(Debug)]
pub struct RequestRecorder {
    path: PathBuf,
    addr: SocketAddr,
    pid: u32,
    writer: Mutex<Writer>,
}

impl RequestRecorder {
    /// Records in `log` for the server listening on `addr`.
    pub fn new(log: RequestLog, addr: SocketAddr) -> Self {
        Self {
            path: log.path,
            addr,
            pid: std::process::id(),
            writer: Mutex::new(Writer {
                file: Some(log.file),
                last_number: 0,
            }),
        }
    }

    /// Numbers a request just received and writes its `start` line.
    pub fn start(&self, step: &str, commit: &str) -> LoggedRequest {
        let mut writer = self.lock();
        writer.last_number += 1;
        let request = LoggedRequest {
            number: writer.last_number,
            step: step.to_owned(),
            commit: commit.to_owned(),
        };
        self.write(&mut writer, &self.line("start", &request, ""));
        request
    }

    /// Writes the `end` line of a request about to be answered with HTTP
    /// `status`; `step_status` is the body's `status` when the step ran.
    pub fn end(&self, request: &LoggedRequest, status: u16, step_status: Option<&str>) {
        let mut extra = format!(",\"status\":{status}");
        if let Some(step_status) = step_status {
            extra.push_str(",\"step_status\":");
            write_go_string(&mut extra, step_status);
        }
        let mut writer = self.lock();
        self.write(&mut writer, &self.line("end", request, &extra));
    }

    /// Writes the `crash` line for the request that crashed the server; no
    /// line is written after it.
    pub fn crash(&self, request: &LoggedRequest) {
        let mut writer = self.lock();
        self.write(&mut writer, &self.line("crash", request, ""));
        writer.file = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A poisoned lock only means another request panicked mid-write; the
        // file itself is still usable.
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `line` in one write, unless the log is closed.
    fn write(&self, writer: &mut Writer, line: &str) {
        let Some(file) = writer.file.as_mut() else {
            return;
        };
        if let Err(error) = file.write_all(line.as_bytes()) {
            tracing::warn!(path = %self.path.display(), %error, "cannot write to the request log");
        }
    }

    /// The JSON line of `event` about `request`, stamped now, with `extra`
    /// (already JSON, starting with a comma) before the closing brace.
    fn line(&self, event: &str, request: &LoggedRequest, extra: &str) -> String {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut line = format!(
            "{{\"event\":\"{event}\",\"at_ms\":{at_ms},\"pid\":{},\"addr\":\"{}\",\"request\":{},\"step\":",
            self.pid, self.addr, request.number
        );
        write_go_string(&mut line, &request.step);
        line.push_str(",\"commit\":");
        write_go_string(&mut line, &request.commit);
        line.push_str(extra);
        line.push_str("}\n");
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .expect("read the log")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn lines_are_json_with_every_field_and_escaped_text() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("requests.jsonl");
        let addr: SocketAddr = "127.0.0.1:4321".parse().expect("address");
        let recorder = RequestRecorder::new(RequestLog::open(&path).expect("open"), addr);
        let first = recorder.start("build", "abc\"\n<1>");
        let second = recorder.start("lint", "def");
        recorder.end(&first, 200, Some("Failure"));
        recorder.end(&second, 400, None);
        recorder.crash(&first);
        recorder.end(&second, 200, Some("Success"));
        let got = lines(&path);
        assert_eq!(got.len(), 5, "{got:#?}");
        let events: Vec<&str> = got
            .iter()
            .map(|l| l["event"].as_str().expect("event"))
            .collect();
        assert_eq!(
            events,
            ["start", "start", "end", "end", "crash"],
            "nothing after the crash"
        );
        assert_eq!(got[0]["commit"], "abc\"\n<1>");
        assert_eq!(
            got.iter()
                .map(|l| l["request"].as_u64().expect("number"))
                .collect::<Vec<_>>(),
            [1, 2, 1, 2, 1]
        );
        for line in &got {
            assert_eq!(line["pid"], std::process::id());
            assert_eq!(line["addr"], "127.0.0.1:4321");
            assert!(line["at_ms"].as_u64().expect("at_ms") > 1_600_000_000_000);
        }
        assert_eq!(
            (got[2]["status"].as_u64(), got[2]["step_status"].as_str()),
            (Some(200), Some("Failure"))
        );
        assert_eq!(
            (got[3]["status"].as_u64(), got[3].get("step_status")),
            (Some(400), None)
        );
        assert_eq!(got[4]["step"], "build");
        assert_eq!(got[4].get("status"), None);
    }

    #[test]
    fn an_existing_file_is_appended_to() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("requests.jsonl");
        std::fs::write(&path, "earlier line\n").expect("write");
        let recorder = RequestRecorder::new(
            RequestLog::open(&path).expect("open"),
            "127.0.0.1:1".parse().expect("address"),
        );
        recorder.start("lint", "c");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.starts_with("earlier line\n{\"event\":\"start\""),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_an_error() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let error = RequestLog::open(&dir.path().join("no-such-folder").join("log.jsonl"))
            .expect_err("a file in a missing folder");
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }
}
