//! [`HttpStepRunner`]: a [`StepRunner`] that speaks the step-runner protocol
//! (`/work/shared/spec/step-runner-protocol.md`, `POST /step/trigger`) over HTTP/1.1
//! with reqwest, and turns every way the runner can misbehave into the right
//! [`RunnerError`].
//!
//! # How failures are classified
//!
//! | what happened | error |
//! |---|---|
//! | connection refused, no route, DNS failure, connect timeout | [`RunnerError::Unreachable`] |
//! | connection closed or reset before the whole response, empty reply | [`RunnerError::Lost`] |
//! | no complete response within [`HttpRunnerConfig::step_timeout`] | [`RunnerError::Lost`] |
//! | HTTP 4xx | [`RunnerError::Rejected`], with the runner's plain-text body |
//! | HTTP 5xx (the original runner never sends one) | [`RunnerError::Lost`] |
//! | a reply that is not HTTP, a status other than 200/4xx/5xx, a 200 body that is not the expected JSON, a `status` other than `Success`/`Failure`, a body over [`HttpRunnerConfig::max_body_bytes`] | [`RunnerError::Protocol`] |
//!
//! `Unreachable` promises the engine that nothing reached the runner. That is only
//! true because every request opens a **new connection**: the client keeps no idle
//! connections (`pool_max_idle_per_host(0)`), so a request can never be written to
//! a stale pooled connection of a runner that has since died (which would fail
//! *after* sending and look `Lost`, although the runner never saw it). A failure to
//! connect is therefore the only failure that happens before any byte of the
//! request is written. The cost, one TCP handshake per step, is negligible next to
//! a step. For the same reason the client never retries by itself
//! (`retry::never()`), follows no redirects and uses no proxy.
//!
//! Every attempt carries an `X-Request-Id` header (`<commit:8>-<step>-a<attempt>-<unique>`)
//! which is logged with `tracing` and quoted in every error message, so a line in
//! the runner's log can be matched with an attempt in the engine's.

mod addr;

use std::error::Error as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ci_engine::{RunnerError, StepOutput, StepRequest, StepRunner, StepVerdict};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, warn};

pub use addr::{RunnerAddr, RunnerAddrError};

/// The name of the header that carries the per-attempt request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// How many bytes of an unexpected body are quoted in an error message.
const BODY_PREVIEW_BYTES: usize = 200;

/// Timeouts and limits of an [`HttpStepRunner`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRunnerConfig {
    /// The longest a step may take, from connecting to the last byte of the
    /// response. Past it the attempt is [`RunnerError::Lost`]. Default: 10 minutes
    /// (the original runner's steps take under a second, but a step may wait for
    /// the runner's lock behind others). Must be longer than `connect_timeout`.
    pub step_timeout: Duration,
    /// The longest connecting may take; past it the runner is
    /// [`RunnerError::Unreachable`]. Default: 5 seconds.
    pub connect_timeout: Duration,
    /// The largest response body accepted; a larger one is a
    /// [`RunnerError::Protocol`] error. Default: 16 MiB.
    pub max_body_bytes: usize,
}

impl Default for HttpRunnerConfig {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Why an [`HttpStepRunner`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpRunnerError {
    /// The runner address could not be parsed.
    #[error(transparent)]
    Addr(#[from] RunnerAddrError),
    /// The configuration is inconsistent (the message says how).
    #[error("invalid HTTP runner configuration: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Where requests go: a fixed address, or one that may change (a supervised
/// runner restarted on another port).
#[derive(Debug)]
enum Endpoint {
    Fixed(RunnerAddr),
    Following(watch::Receiver<RunnerAddr>),
}

impl Endpoint {
    fn current(&self) -> RunnerAddr {
        match self {
            Self::Fixed(addr) => addr.clone(),
            Self::Following(rx) => rx.borrow().clone(),
        }
    }
}

/// A [`StepRunner`] that sends each step to a step runner over HTTP.
///
/// Safe to share and to call concurrently (`Arc<HttpStepRunner>`); each call opens
/// its own connection. Dropping a call's future closes its connection (the runner
/// may still finish the step; its result is then discarded).
#[derive(Debug)]
pub struct HttpStepRunner {
    client: reqwest::Client,
    endpoint: Endpoint,
    repo_path: String,
    config: HttpRunnerConfig,
    /// Distinguishes this runner's request ids from those of another process or
    /// an earlier run of this one.
    id_nonce: u32,
    next_seq: AtomicU64,
}

/// The request body of `POST /step/trigger`.
#[derive(Serialize)]
struct TriggerBody<'a> {
    step_name: &'a str,
    repo_path: &'a str,
    commit_hash: &'a str,
}

/// The 200 response body. Unknown fields are ignored.
#[derive(Deserialize)]
struct TriggerResponse {
    build_logs: String,
    status: String,
    #[serde(default)]
    duration_ms: Option<u64>,
}

impl HttpStepRunner {
    /// A runner at `base`; each request names `repo_path` as the repository
    /// (a path on the runner's machine).
    ///
    /// # Errors
    ///
    /// [`HttpRunnerError::Config`] when a timeout is zero or `connect_timeout` is
    /// not shorter than `step_timeout` (a step timeout firing while still
    /// connecting could not be told apart from one after sending);
    /// [`HttpRunnerError::Client`] when reqwest cannot build its client.
    pub fn new(
        base: RunnerAddr,
        repo_path: String,
        config: HttpRunnerConfig,
    ) -> Result<Self, HttpRunnerError> {
        Self::build(Endpoint::Fixed(base), repo_path, config)
    }

    /// Like [`new`](Self::new), but each attempt goes to the address `addr` holds
    /// at that moment — for a runner whose address may change, such as one started
    /// by a [`RunnerSupervisor`](crate::supervisor::RunnerSupervisor).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn following(
        addr: watch::Receiver<RunnerAddr>,
        repo_path: String,
        config: HttpRunnerConfig,
    ) -> Result<Self, HttpRunnerError> {
        Self::build(Endpoint::Following(addr), repo_path, config)
    }

    fn build(
        endpoint: Endpoint,
        repo_path: String,
        config: HttpRunnerConfig,
    ) -> Result<Self, HttpRunnerError> {
        if config.step_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(HttpRunnerError::Config(
                "step_timeout and connect_timeout must be longer than zero".into(),
            ));
        }
        if config.connect_timeout >= config.step_timeout {
            return Err(HttpRunnerError::Config(format!(
                "connect_timeout ({:?}) must be shorter than step_timeout ({:?})",
                config.connect_timeout, config.step_timeout
            )));
        }
        let client = reqwest::Client::builder()
            // Never reuse a connection: see the module documentation.
            .pool_max_idle_per_host(0)
            .retry(reqwest::retry::never())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .http1_only()
            .connect_timeout(config.connect_timeout)
            .timeout(config.step_timeout)
            .build()
            .map_err(HttpRunnerError::Client)?;
        Ok(Self {
            client,
            endpoint,
            repo_path,
            config,
            id_nonce: process_nonce(),
            next_seq: AtomicU64::new(1),
        })
    }

    /// The address the next attempt will go to.
    pub fn addr(&self) -> RunnerAddr {
        self.endpoint.current()
    }

    /// A request id for one attempt: `<commit:8>-<step>-a<attempt>-<nonce><seq>`,
    /// restricted to characters that are safe in a header and a log line.
    fn request_id(&self, request: &StepRequest) -> String {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let raw = format!(
            "{}-{}-a{}-{:08x}{seq:x}",
            request.commit.short(8),
            request.step,
            request.attempt,
            self.id_nonce
        );
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    async fn send(&self, request: &StepRequest, request_id: &str) -> Result<StepOutput, Failure> {
        let addr = self.endpoint.current();
        let url = addr.trigger_url();
        debug!(%url, "sending step");
        let body = TriggerBody {
            step_name: &request.step,
            repo_path: &self.repo_path,
            commit_hash: request.commit.as_str(),
        };
        let mut response = self
            .client
            .post(url)
            .header(REQUEST_ID_HEADER, request_id)
            .json(&body)
            .send()
            .await
            .map_err(|e| Failure::from_transport(&e, &self.config))?;

        let status = response.status();
        let body = read_body(&mut response, self.config.max_body_bytes, &self.config).await?;

        if status == StatusCode::OK {
            return parse_output(&body);
        }
        let text = preview(&body);
        if status.is_client_error() {
            Err(Failure::Rejected(format!("HTTP {status}: {text}")))
        } else if status.is_server_error() {
            Err(Failure::Lost(format!(
                "HTTP {status} (the original runner never answers 5xx; treated as a lost step): {text}"
            )))
        } else {
            Err(Failure::Protocol(format!(
                "unexpected HTTP {status} (expected 200): {text}"
            )))
        }
    }
}

#[async_trait]
impl StepRunner for HttpStepRunner {
    #[tracing::instrument(
        name = "http_step",
        skip_all,
        fields(request_id, step = %request.step, commit = %request.commit.short(8), attempt = request.attempt)
    )]
    async fn run(&self, request: &StepRequest) -> Result<StepOutput, RunnerError> {
        let request_id = self.request_id(request);
        tracing::Span::current().record("request_id", request_id.as_str());
        match self.send(request, &request_id).await {
            Ok(output) => {
                debug!(verdict = ?output.verdict, duration = ?output.duration, "step finished");
                Ok(output)
            }
            Err(failure) => {
                let context = format!("request {request_id} to {}", self.endpoint.current());
                let error = failure.into_runner_error(&context);
                warn!(%error, "step attempt failed");
                Err(error)
            }
        }
    }
}

/// A failure before the request id and address are added to its message.
#[derive(Debug)]
enum Failure {
    Unreachable(String),
    Lost(String),
    Rejected(String),
    Protocol(String),
}

impl Failure {
    fn into_runner_error(self, context: &str) -> RunnerError {
        match self {
            Self::Unreachable(m) => RunnerError::Unreachable(format!("{m} [{context}]")),
            Self::Lost(m) => RunnerError::Lost(format!("{m} [{context}]")),
            Self::Rejected(m) => RunnerError::Rejected(format!("{m} [{context}]")),
            Self::Protocol(m) => RunnerError::Protocol(format!("{m} [{context}]")),
        }
    }

    /// Classifies an error of `send` or of reading the body.
    fn from_transport(error: &reqwest::Error, config: &HttpRunnerConfig) -> Self {
        let chain = error_chain(error);
        if error.is_connect() {
            // Connecting failed: not one byte of the request was written (no
            // connection is ever reused, see the module docs).
            Self::Unreachable(format!("cannot connect: {chain}"))
        } else if error.is_timeout() {
            Self::Lost(format!(
                "no complete response within the step timeout of {:?}: {chain}",
                config.step_timeout
            ))
        } else if is_not_http(error) {
            Self::Protocol(format!("the reply is not HTTP: {chain}"))
        } else if error.is_builder() {
            Self::Rejected(format!("cannot build the request: {chain}"))
        } else {
            Self::Lost(format!(
                "the connection failed after the request was sent (did the runner crash?): {chain}"
            ))
        }
    }
}

/// True when hyper could not parse the reply as an HTTP response at all.
fn is_not_http(error: &reqwest::Error) -> bool {
    let mut source = error.source();
    while let Some(err) = source {
        if let Some(hyper_err) = err.downcast_ref::<hyper::Error>() {
            return hyper_err.is_parse() || hyper_err.is_parse_status();
        }
        source = err.source();
    }
    false
}

/// `error: cause: cause…`, which reqwest's `Display` alone does not show.
fn error_chain(error: &reqwest::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(err) = source {
        let text = err.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = err.source();
    }
    out
}

/// Reads the whole body, refusing more than `limit` bytes.
async fn read_body(
    response: &mut reqwest::Response,
    limit: usize,
    config: &HttpRunnerConfig,
) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Failure::from_transport(&e, config))?
    {
        if body.len() + chunk.len() > limit {
            body.extend_from_slice(&chunk[..limit.saturating_sub(body.len())]);
            return Err(Failure::Protocol(format!(
                "the response body is larger than {limit} bytes; it starts with: {}",
                preview(&body)
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses a 200 body into a [`StepOutput`].
fn parse_output(body: &[u8]) -> Result<StepOutput, Failure> {
    let parsed: TriggerResponse = serde_json::from_slice(body).map_err(|e| {
        Failure::Protocol(format!(
            "the 200 response is not the expected JSON ({e}); it starts with: {}",
            preview(body)
        ))
    })?;
    let verdict = match parsed.status.as_str() {
        "Success" => StepVerdict::Success,
        "Failure" => StepVerdict::Failure,
        other => {
            return Err(Failure::Protocol(format!(
                "unknown step status {:?} (expected \"Success\" or \"Failure\")",
                truncate(other, BODY_PREVIEW_BYTES)
            )));
        }
    };
    Ok(StepOutput {
        verdict,
        logs: parsed.build_logs,
        duration: parsed.duration_ms.map(Duration::from_millis),
    })
}

/// The first [`BODY_PREVIEW_BYTES`] of a body, as quoted text (lossy UTF-8,
/// never cut inside a character).
fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let cut = truncate(text, BODY_PREVIEW_BYTES);
    if cut.len() < text.len() {
        format!("{cut:?}… ({} bytes)", body.len())
    } else {
        format!("{cut:?}")
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A number that differs between processes and between runs of one process.
fn process_nonce() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
    nanos ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "é".repeat(150); // 300 bytes, 2 per char
        let cut = truncate(&s, 201);
        assert_eq!(cut.len(), 200);
        assert!(s.is_char_boundary(cut.len()));
        assert_eq!(truncate("abc", 200), "abc");
        let euro = "€€"; // 3 bytes each
        assert_eq!(truncate(euro, 4), "€");
        assert_eq!(truncate(euro, 2), "");
    }

    #[test]
    fn preview_quotes_and_marks_truncation() {
        assert_eq!(preview(b"  short \n"), "\"short\"");
        let long = vec![b'x'; 500];
        let p = preview(&long);
        assert!(p.starts_with(&format!("\"{}\"", "x".repeat(200))), "{p}");
        assert!(p.ends_with("… (500 bytes)"), "{p}");
        // Invalid UTF-8 is shown, not refused.
        assert!(preview(&[0xff, b'a']).contains('a'));
    }

    #[test]
    fn parses_the_documented_response() {
        let body = br#"{"build_logs": "step 'lint' build started!\nLinting...", "status": "Success", "duration_ms": 81}"#;
        let out = parse_output(body).expect("documented body parses");
        assert_eq!(out.verdict, StepVerdict::Success);
        assert_eq!(out.logs, "step 'lint' build started!\nLinting...");
        assert_eq!(out.duration, Some(Duration::from_millis(81)));

        let failure =
            parse_output(br#"{"build_logs":"","status":"Failure","duration_ms":0,"extra":1}"#)
                .expect("extra fields are ignored");
        assert_eq!(failure.verdict, StepVerdict::Failure);
        let no_duration = parse_output(br#"{"build_logs":"","status":"Success"}"#)
            .expect("a missing duration is tolerated");
        assert_eq!(no_duration.duration, None);
    }

    #[test]
    fn bad_bodies_are_protocol_errors() {
        for body in [
            &br#"{"build_logs":"","status":"success","duration_ms":1}"#[..],
            br#"{"build_logs":"","status":"Maybe"}"#,
            br#"{"status":"Success","duration_ms":1}"#,
            br#"{"build_logs":1,"status":"Success"}"#,
            br#"{"build_logs":"","status":"Success","duration_ms":-5}"#,
            b"<html>oops</html>",
            b"",
            b"null",
        ] {
            let result = parse_output(body);
            assert!(
                matches!(result, Err(Failure::Protocol(_))),
                "{:?} gave {result:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn request_ids_are_header_safe_and_unique() {
        let runner = HttpStepRunner::new(
            ":8080".parse().expect("valid"),
            "/r".into(),
            HttpRunnerConfig::default(),
        )
        .expect("builds");
        let request = StepRequest {
            step: "my step/ü".into(),
            commit: "0123456789abcdef".into(),
            attempt: 3,
        };
        let a = runner.request_id(&request);
        let b = runner.request_id(&request);
        assert_ne!(a, b);
        assert!(a.starts_with("01234567-my_step__-a3-"), "{a}");
        assert!(reqwest::header::HeaderValue::from_str(&a).is_ok());
    }

    #[test]
    fn inconsistent_timeouts_are_refused() {
        let addr: RunnerAddr = ":1".parse().expect("valid");
        for config in [
            HttpRunnerConfig {
                connect_timeout: Duration::from_secs(10),
                step_timeout: Duration::from_secs(10),
                ..HttpRunnerConfig::default()
            },
            HttpRunnerConfig {
                step_timeout: Duration::ZERO,
                ..HttpRunnerConfig::default()
            },
        ] {
            let err = HttpStepRunner::new(addr.clone(), "/r".into(), config)
                .expect_err("inconsistent timeouts");
            assert!(matches!(err, HttpRunnerError::Config(_)), "{err}");
        }
    }
}
