//! [`HttpStepRunner`]: a [`StepRunner`] that speaks the step-runner protocol
//! (`POST /step/trigger`, described in docs/step-runner-sim.md) over HTTP/1.1
//! with reqwest, and turns every way the runner can misbehave into the right
//! [`RunnerError`].
//!
//! # How failures are classified
//!
//! | what happened | error |
//! |---|---|
//! | connection refused, no route, DNS failure, connect timeout | [`RunnerError::Unreachable`] |
//! | connection closed or reset before the whole response, empty reply | [`RunnerError::Lost`] |
//! | the connection went dead: TCP keepalive probes went unanswered (the runner's machine vanished) | [`RunnerError::Lost`] |
//! | HTTP 4xx | [`RunnerError::Rejected`], with the runner's plain-text body |
//! | HTTP 5xx (the original runner never sends one) | [`RunnerError::Lost`] |
//! | a reply that is not HTTP, a status other than 200/4xx/5xx, a 200 body that is not the expected JSON, a `status` other than `Success`/`Failure`, a body over [`HttpRunnerConfig::max_body_bytes`] | [`RunnerError::Protocol`] |
//!
//! # No clock of its own
//!
//! A request has **no overall timeout**: a step takes as long as the runner
//! needs, and a response that is slow to come (or a body that stalls) is the
//! engine's business. The engine's [`EngineConfig::step_timeout`] records the
//! attempt `lost` but keeps the request open, holding its concurrency permit,
//! until the runner answers, so that the runner is never asked to run more steps
//! of a class at once than the class allows. The HTTP runner therefore never cuts
//! a request the engine still holds open. Only two things end a request early:
//!
//! - the **connect timeout** ([`HttpRunnerConfig::connect_timeout`]), before any
//!   byte is written: [`RunnerError::Unreachable`];
//! - **TCP keepalive** ([`HttpRunnerConfig::keepalive_idle`],
//!   [`keepalive_interval`](HttpRunnerConfig::keepalive_interval),
//!   [`keepalive_retries`](HttpRunnerConfig::keepalive_retries)): the kernel of a
//!   live runner machine answers keepalive probes however long the step takes,
//!   but a machine that vanished (power loss, network gone) does not, and the
//!   connection then fails as [`RunnerError::Lost`] (by default after about 60 s
//!   of silence) instead of holding a permit forever. A runner machine that
//!   rebooted answers with a reset, which is `Lost` at once.
//!
//! The engine drops the future when it stops for good or when the runner held a
//! request it gave up on past [`EngineConfig::abandon_limit`]; dropping it closes
//! the connection.
//!
//! [`HttpRunnerConfig::for_engine`] derives the connect timeout from the engine's
//! settings; use it rather than setting the fields by hand.
//!
//! # Probing
//!
//! [`StepRunner::probe`] sends `GET <base>/` (the original runner answers every
//! path but `/step/trigger` with `404 page not found`, as does the bundled
//! simulator): it runs no step. Any HTTP response is [`Probe::Up`]; a refused
//! connection, a connect timeout, a connection closed without a response, a reply
//! that is not HTTP, or no response head within [`HttpRunnerConfig::probe_timeout`]
//! is [`Probe::Down`] with the reason. It is never [`Probe::Unsupported`].
//!
//! # Connections
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
//! the runner's log can be matched with an attempt in the engine's. Probes carry
//! one too (`probe-<unique>`).
//!
//! [`EngineConfig::step_timeout`]: ci_engine::EngineConfig::step_timeout
//! [`EngineConfig::abandon_limit`]: ci_engine::EngineConfig::abandon_limit

mod addr;

use std::error::Error as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ci_engine::{
    EngineConfig, Probe, RunnerError, StepOutput, StepRequest, StepRunner, StepVerdict,
};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, warn};

pub use addr::{RunnerAddr, RunnerAddrError};

/// The name of the header that carries the per-attempt request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// How many bytes of an unexpected body are quoted in an error message.
const BODY_PREVIEW_BYTES: usize = 200;

/// The longest connecting to the runner may take, by default and at most when
/// derived by [`HttpRunnerConfig::for_engine`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a [probe](StepRunner::probe) waits for a response head, by default.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Timeouts and limits of an [`HttpStepRunner`].
///
/// There is deliberately no whole-request timeout: see the [module
/// documentation](self#no-clock-of-its-own). Build it with
/// [`for_engine`](Self::for_engine) so that the connect timeout fits the engine's
/// step timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRunnerConfig {
    /// The longest connecting may take; past it the runner is
    /// [`RunnerError::Unreachable`] (nothing was sent). Longer than zero. Default:
    /// [`DEFAULT_CONNECT_TIMEOUT`] (5 s).
    pub connect_timeout: Duration,
    /// The longest a [probe](StepRunner::probe) waits, from connecting to the
    /// response head; past it the probe says [`Probe::Down`]. Connecting within it
    /// is bounded by `connect_timeout` as for any request. Longer than zero.
    /// Default: [`DEFAULT_PROBE_TIMEOUT`] (3 s).
    pub probe_timeout: Duration,
    /// How long a connection may be silent (typically: waiting for a step's
    /// answer) before the kernel sends the first TCP keepalive probe
    /// (`SO_KEEPALIVE`, `TCP_KEEPIDLE`). Longer than zero. Default: 30 s.
    pub keepalive_idle: Duration,
    /// The wait between unanswered keepalive probes (`TCP_KEEPINTVL`). Longer
    /// than zero. Default: 10 s.
    pub keepalive_interval: Duration,
    /// How many unanswered keepalive probes end the connection (`TCP_KEEPCNT`);
    /// the request then fails as [`RunnerError::Lost`]. At least 1. Default: 3,
    /// so a connection to a machine that vanished fails after about
    /// `keepalive_idle + keepalive_retries × keepalive_interval` = 60 s of
    /// silence. A live runner's kernel answers the probes however long its
    /// step takes.
    pub keepalive_retries: u32,
    /// The largest response body accepted; a larger one is a
    /// [`RunnerError::Protocol`] error. Default: 16 MiB.
    pub max_body_bytes: usize,
}

impl Default for HttpRunnerConfig {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            keepalive_idle: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            keepalive_retries: 3,
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

impl HttpRunnerConfig {
    /// The settings for a runner driven by an engine with `engine`'s settings:
    /// the defaults, with a connect timeout of half the engine's step timeout,
    /// at most [`DEFAULT_CONNECT_TIMEOUT`]. Keeping it shorter than the step
    /// timeout means a runner that cannot be reached is reported
    /// [`RunnerError::Unreachable`] before the engine's step timeout gives up on
    /// the attempt. The engine's step timeout is the only clock on a request
    /// once it is sent.
    pub fn for_engine(engine: &EngineConfig) -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT.min(engine.step_timeout / 2),
            ..Self::default()
        }
    }

    /// How long a dead connection may stay silent before keepalive ends it:
    /// `keepalive_idle + keepalive_retries × keepalive_interval`.
    pub fn keepalive_deadline(&self) -> Duration {
        self.keepalive_idle.saturating_add(
            self.keepalive_interval
                .saturating_mul(self.keepalive_retries),
        )
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
/// its own connection. A call waits for the runner's answer as long as the
/// connection lives: it has no timeout of its own once connected (see the
/// [module documentation](self#no-clock-of-its-own)). Dropping a call's future
/// closes its connection (the runner may still finish the step; its result is
/// then discarded).
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
    /// [`HttpRunnerError::Config`] when a timeout or keepalive setting is zero;
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
        for (name, value) in [
            ("connect_timeout", config.connect_timeout),
            ("probe_timeout", config.probe_timeout),
            ("keepalive_idle", config.keepalive_idle),
            ("keepalive_interval", config.keepalive_interval),
        ] {
            if value.is_zero() {
                return Err(HttpRunnerError::Config(format!(
                    "{name} must be longer than zero"
                )));
            }
        }
        if config.keepalive_retries == 0 {
            return Err(HttpRunnerError::Config(
                "keepalive_retries must be at least 1".into(),
            ));
        }
        let client = reqwest::Client::builder()
            // Never reuse a connection: see the module documentation.
            .pool_max_idle_per_host(0)
            .retry(reqwest::retry::never())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .http1_only()
            .connect_timeout(config.connect_timeout)
            // No `.timeout(...)`: the engine's step timeout is the only clock on a
            // request once it is sent (see the module documentation). Keepalive
            // ends connections to a machine that is gone.
            .tcp_keepalive(config.keepalive_idle)
            .tcp_keepalive_interval(config.keepalive_interval)
            .tcp_keepalive_retries(config.keepalive_retries)
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

    /// A request id for one probe: `probe-<nonce><seq>`.
    fn probe_id(&self) -> String {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        format!("probe-{:08x}{seq:x}", self.id_nonce)
    }

    /// `GET <base>/` without a step; see [`StepRunner::probe`] on this type.
    async fn send_probe(&self, addr: &RunnerAddr, probe_id: &str) -> Probe {
        let url = addr.probe_url();
        let request = self
            .client
            .get(url.clone())
            .header(REQUEST_ID_HEADER, probe_id)
            .send();
        match tokio::time::timeout(self.config.probe_timeout, request).await {
            // The response is dropped unread: the connection is closed, and the
            // runner's status and body do not matter.
            Ok(Ok(response)) => {
                debug!(%url, status = %response.status(), "probe answered: the runner is up");
                Probe::Up
            }
            Ok(Err(error)) => {
                let chain = error_chain(&error);
                let reason = if error.is_connect() {
                    format!("cannot connect: {chain}")
                } else if is_not_http(&error) {
                    format!("it answers, but not in HTTP: {chain}")
                } else {
                    format!("no response: {chain}")
                };
                Probe::Down(reason)
            }
            Err(_) => Probe::Down(format!(
                "no response within the probe timeout of {:?}",
                self.config.probe_timeout
            )),
        }
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

    /// `GET <base>/`, which runs no step (the original runner and the bundled
    /// simulator answer `404 page not found`). Any HTTP response, whatever its
    /// status, is [`Probe::Up`]. A refused connection, a connect timeout, a
    /// connection closed without a response, a reply that is not HTTP, or no
    /// response head within [`HttpRunnerConfig::probe_timeout`] is
    /// [`Probe::Down`], whose text names the probe and the address. Never
    /// [`Probe::Unsupported`]. Returns within `probe_timeout`.
    async fn probe(&self) -> Probe {
        let addr = self.endpoint.current();
        let probe_id = self.probe_id();
        match self.send_probe(&addr, &probe_id).await {
            Probe::Down(reason) => {
                // The engine probes repeatedly while the runner is down: debug only.
                debug!(%addr, probe_id, reason, "probe: the runner is down");
                Probe::Down(format!("{reason} [probe {probe_id} to {addr}]"))
            }
            other => other,
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
            // There is no request timeout: a timeout after connecting can only be
            // the kernel giving up on a silent connection (TCP keepalive).
            Self::Lost(format!(
                "the connection went dead: TCP keepalive probes went unanswered for about {:?} \
                 (has the runner's machine gone away?): {chain}",
                config.keepalive_deadline()
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
    fn zero_timeouts_and_keepalive_settings_are_refused() {
        let addr: RunnerAddr = ":1".parse().expect("valid");
        let d = HttpRunnerConfig::default;
        for (field, config) in [
            (
                "connect_timeout",
                HttpRunnerConfig {
                    connect_timeout: Duration::ZERO,
                    ..d()
                },
            ),
            (
                "probe_timeout",
                HttpRunnerConfig {
                    probe_timeout: Duration::ZERO,
                    ..d()
                },
            ),
            (
                "keepalive_idle",
                HttpRunnerConfig {
                    keepalive_idle: Duration::ZERO,
                    ..d()
                },
            ),
            (
                "keepalive_interval",
                HttpRunnerConfig {
                    keepalive_interval: Duration::ZERO,
                    ..d()
                },
            ),
            (
                "keepalive_retries",
                HttpRunnerConfig {
                    keepalive_retries: 0,
                    ..d()
                },
            ),
        ] {
            let err =
                HttpStepRunner::new(addr.clone(), "/r".into(), config).expect_err("a zero setting");
            assert!(matches!(err, HttpRunnerError::Config(_)), "{err}");
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn the_connect_timeout_is_half_the_step_timeout_at_most_five_seconds() {
        let engine = |step_timeout| EngineConfig {
            step_timeout,
            ..EngineConfig::default()
        };
        let long = HttpRunnerConfig::for_engine(&engine(Duration::from_secs(600)));
        assert_eq!(long.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(long, HttpRunnerConfig::default());
        let short = HttpRunnerConfig::for_engine(&engine(Duration::from_millis(500)));
        assert_eq!(short.connect_timeout, Duration::from_millis(250));
        assert_eq!(
            HttpRunnerConfig::for_engine(&EngineConfig::default()).connect_timeout,
            DEFAULT_CONNECT_TIMEOUT
        );
    }

    #[test]
    fn the_documented_keepalive_deadline_is_a_minute() {
        assert_eq!(
            HttpRunnerConfig::default().keepalive_deadline(),
            Duration::from_secs(60)
        );
    }
}
