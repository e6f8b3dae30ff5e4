//! The HTTP API: runs, their steps and logs, the runners of the pool and the
//! server's health, as JSON described by an OpenAPI document, with Swagger UI at
//! `/docs`.
//!
//! The API reads the [`RunStore`]; the engine writes it (retry and cancel, in
//! [`actions`], ask the engine). Every answer that is
//! not a success is a JSON [`ErrorBody`] with the right status code (400 for a
//! malformed request, 404 for an unknown run, 409 for an ambiguous commit prefix,
//! 405 with an `Allow` header for a method a path is not served with, 500 when
//! the store fails, 503 for `/events` and `/runners` without a running
//! engine), never `200 null`. The one exception is `GET /healthz`, whose 503
//! has the same [`health::Health`] body as its 200.
//!
//! - [`model`]: the JSON shapes of runs, steps and attempts.
//! - [`actions`]: `POST /run/{commit}/retry` and `POST /run/{commit}/cancel`,
//!   the only operations that change a run, behind the [`token`].
//! - `document`: the OpenAPI document as served (what poem-openapi cannot
//!   say by itself added), and the routes the `Allow` header of a 405 is
//!   made from.
//! - [`runners`]: `GET /runners`, the engine's runners joined with their addresses.
//! - [`health`]: `GET /healthz`.
//! - [`metrics`]: `GET /metrics`, in the OpenMetrics text format.
//! - `params`: checks of path parameters (and the patterns the document
//!   states for them).
//! - `listing_cache` and `encoded`: answers of `GET /runs` kept, encoded,
//!   until the runs change.
//! - [`events`]: `GET /events`, the engine's events as server-sent events,
//!   and their description for the document (`events::schema`).
//! - [`pages`]: the pages for people, `/` (the runs) and `/commit/{commit}`
//!   (one run), server-rendered HTML kept live by `/events`.
//!
//! [`app`] assembles the whole HTTP application (API, `/openapi.json`, `/docs`);
//! `docs/api.md` describes every endpoint with examples.

pub mod actions;
pub mod badge;
mod document;
mod encoded;
pub mod events;
pub mod health;
mod listing_cache;
pub mod metrics;
pub mod model;
pub mod pages;
mod params;
pub mod runners;
pub mod token;
mod waiting;

use std::sync::Arc;

use std::time::Duration;

use ci_engine::{EngineConfig, EngineHandle, RunQuery, RunStatus, RunStore, StoreError};
use futures::stream::BoxStream;
use poem::endpoint::make_sync;
use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::web::Html;
use poem::{Endpoint, EndpointExt, IntoResponse, Route, get};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{EventStream, Json, PlainText};
use poem_openapi::types::Any;
use poem_openapi::{ApiResponse, OpenApi, OpenApiService};
use tokio::sync::watch;

use encoded::EncodedJson;

pub use model::{
    AttemptInfo, AttemptOutcomeDto, CommitInfo, ErrorBody, RunDetail, RunList, RunStatusDto,
    RunSummary, StepInfo, StepStatusDto,
};

/// Default page size of `GET /runs`.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size `GET /runs` accepts.
pub const MAX_LIMIT: u32 = 1000;
/// Shortest commit prefix the API looks up.
pub const MIN_PREFIX: usize = 4;
/// Longest commit id (a full SHA-1 hash).
pub const MAX_COMMIT_LEN: usize = 40;
/// Largest `offset` `GET /runs` accepts (2^32 - 1): far more runs than a
/// store holds.
pub const MAX_OFFSET: u32 = u32::MAX;

/// The pages for people: not in the OpenAPI document, served with GET only
/// (the hidden operations `runs_page` and `run_page` below).
const PAGE_PATHS: [&str; 2] = ["/", "/commit/{commit}"];
/// Where the OpenAPI document and Swagger UI are, served with GET only.
const DOCUMENT_PATHS: [&str; 3] = ["/openapi.json", "/docs", "/docs/"];

/// How often an idle event stream sends a keep-alive comment.
const EVENTS_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The OpenAPI operations, over a store of runs and (optionally) the engine's
/// events.
pub struct Api {
    store: Arc<dyn RunStore>,
    engine: Option<EngineHandle>,
    journal: Option<events::Journal>,
    stop: Option<watch::Receiver<bool>>,
    runners: Option<runners::RunnerDirectory>,
    role: health::Role,
    /// The active server as last seen (see [`Api::with_active_server`]).
    active: Option<watch::Receiver<Option<String>>>,
    unreachable_limit: Duration,
    check_timeout: Duration,
    tips: Option<badge::TipResolver>,
    metrics: metrics::Metrics,
    token: Option<token::ApiToken>,
    listings: listing_cache::ListingCache,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("engine", &self.engine)
            .field("role", &self.role)
            .field("active_server", &self.active_server())
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

impl Api {
    /// An API that answers from `store`; `/events` streams `engine`'s events
    /// (and answers 503 without an engine).
    ///
    /// With an engine, the event [`Journal`](events::Journal) starts at once:
    /// from now on every engine event is numbered and the newest
    /// [`events::DEFAULT_CAPACITY`] are kept for clients that resume (see
    /// [`with_event_buffer`](Self::with_event_buffer)).
    ///
    /// # Panics
    /// With an engine, when called outside a Tokio runtime (the journal is a
    /// task).
    pub fn new(store: Arc<dyn RunStore>, engine: Option<EngineHandle>) -> Self {
        let journal = engine
            .as_ref()
            .map(|handle| events::Journal::spawn(handle.subscribe(), events::DEFAULT_CAPACITY));
        let metrics = metrics::Metrics::new(engine.as_ref());
        Self {
            store,
            engine,
            journal,
            metrics,
            listings: listing_cache::ListingCache::default(),
            stop: None,
            runners: None,
            role: health::Role::Primary,
            active: None,
            unreachable_limit: EngineConfig::default().unreachable_limit,
            check_timeout: health::HEALTH_TIMEOUT,
            tips: None,
            token: None,
        }
    }

    /// Lets clients that send `token` retry and cancel runs
    /// ([`actions`]); without a token (the default) both answer 403.
    #[must_use]
    pub fn with_api_token(mut self, token: Option<token::ApiToken>) -> Self {
        self.token = token;
        self
    }

    /// Lets `GET /badge.svg` find a branch's current tip, so the badge shows
    /// the tip's run rather than the branch's newest run (which may be an
    /// older commit still running, or a commit of a rewritten history).
    #[must_use]
    pub fn with_branch_tips(mut self, tips: badge::TipResolver) -> Self {
        self.tips = Some(tips);
        self
    }

    /// Sets how long `GET /healthz` waits for the store's read, and
    /// `GET /healthz` and `GET /runners` wait for the engine, before they
    /// answer 503 (default [`health::HEALTH_TIMEOUT`], 2 s).
    #[must_use]
    pub fn with_check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Sets how long no runner may be up before `GET /healthz` answers 503
    /// (give it the engine's
    /// [`unreachable_limit`](ci_engine::EngineConfig::unreachable_limit)); the
    /// default is that of [`EngineConfig::default`].
    #[must_use]
    pub fn with_unreachable_limit(mut self, limit: Duration) -> Self {
        self.unreachable_limit = limit;
        self
    }

    /// Adds the store's operation metrics to `GET /metrics` (give it those of
    /// the [`TimedStore`](crate::timed_store::TimedStore) that wraps the
    /// server's store).
    #[must_use]
    pub fn with_store_metrics(mut self, store: &crate::timed_store::StoreMetrics) -> Self {
        self.metrics.register_store(store);
        self
    }

    /// Sets the role `GET /healthz` reports (`primary` by default).
    #[must_use]
    pub fn with_role(mut self, role: health::Role) -> Self {
        self.role = role;
        self
    }

    /// Tells the API which server is active (holds the store's lease), as
    /// the server last saw it: `GET /healthz` reports it, and a standby's
    /// 503 answers (events, retry, cancel) point at it.
    #[must_use]
    pub fn with_active_server(mut self, active: watch::Receiver<Option<String>>) -> Self {
        self.active = Some(active);
        self
    }

    /// The active server as last seen, if the API was told.
    fn active_server(&self) -> Option<String> {
        last_seen(self.active.as_ref())
    }

    /// Describes the runners (addresses, repository paths, restarts) in
    /// `GET /runners`, next to the engine's view of them.
    #[must_use]
    pub fn with_runners(mut self, directory: runners::RunnerDirectory) -> Self {
        self.runners = Some(directory);
        self
    }

    /// Keeps the newest `events` engine events (default
    /// [`events::DEFAULT_CAPACITY`], 1024) for clients of `/events` that
    /// reconnect with `Last-Event-ID`; a client that missed more gets a
    /// `reset`. No effect without an engine.
    #[must_use]
    pub fn with_event_buffer(self, events: usize) -> Self {
        if let Some(journal) = &self.journal {
            journal.set_capacity(events);
        }
        self
    }

    /// Ends every event stream once `stop` holds `true` (or its sender is
    /// dropped), so that a graceful shutdown does not wait for clients that keep
    /// `/events` open.
    #[must_use]
    pub fn ending_streams_on(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }
}

/// Answers of `GET /badge.svg`.
#[derive(ApiResponse, Debug)]
pub enum BadgeResponse {
    /// The badge, always: an unknown branch gets a grey `unknown` badge, since
    /// image proxies drop error answers. `Cache-Control` keeps caches short.
    #[oai(status = 200, content_type = "image/svg+xml")]
    Ok(PlainText<String>, #[oai(header = "Cache-Control")] String),
}

/// Answers of `GET /events`.
#[derive(ApiResponse)]
pub enum EventsResponse {
    /// Server-sent events (`text/event-stream`) that do not end while the
    /// server runs; the schema describes one event (`ServerSentEvent`): its
    /// name (`event:`), its id (`id:`, `EPOCH-N`: the server's epoch, new at
    /// every start, and the event's number, from 1) and its data (`data:`,
    /// one line of JSON, an `EventData` object whose `type` is the event's
    /// name). First `connected` (`epoch`, and `last_id`, where the stream
    /// continues from), then one per engine event (`run_queued`,
    /// `run_retried`, `step_started`, `step_finished`, `step_withdrawn`, `run_finished`,
    /// `runner_down`, `runner_up`). With a `Last-Event-ID` header, the events
    /// after that id come first; when they are no longer known (another
    /// epoch, a malformed or unknown id, too old), or when the client fell
    /// behind, a `reset` event (`reason`, `message`) says to re-read
    /// everything. An idle stream gets a comment line every 15 s.
    #[oai(status = 200)]
    Ok(EventStream<BoxStream<'static, Any<events::StreamEvent>>>),
    /// No engine runs behind this API.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

impl std::fmt::Debug for EventsResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok(_) => f.write_str("EventsResponse::Ok(event stream)"),
            Self::Unavailable(body) => f.debug_tuple("Unavailable").field(body).finish(),
        }
    }
}

/// Answers of `GET /metrics`.
#[derive(ApiResponse, Debug)]
pub enum MetricsResponse {
    /// Every metric, in the OpenMetrics text format.
    #[oai(
        status = 200,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )]
    Ok(PlainText<String>),
    /// The metrics could not be encoded.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

/// Answers of `GET /runs`.
#[derive(ApiResponse, Debug)]
#[oai(bad_request_handler = "list_bad_request")]
pub enum ListRunsResponse {
    /// A page of runs, newest first.
    #[oai(status = 200)]
    Ok(EncodedJson<RunList>),
    /// A query parameter is malformed (unknown status, limit out of range, ...).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The store failed.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

/// Answers of `GET /run/{commit}`.
#[derive(ApiResponse, Debug)]
#[oai(bad_request_handler = "run_bad_request")]
pub enum GetRunResponse {
    /// The run, its steps and their attempts.
    #[oai(status = 200)]
    Ok(EncodedJson<RunDetail>),
    /// The commit is not 4 to 40 hexadecimal digits.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No run for that commit.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The prefix matches several runs; give more digits.
    #[oai(status = 409)]
    Ambiguous(Json<ErrorBody>),
    /// The store failed.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

/// Answers of `GET /run/{commit}/steps/{step}/log`.
#[derive(ApiResponse, Debug)]
#[oai(bad_request_handler = "log_bad_request")]
pub enum StepLogResponse {
    /// The step's logs as plain text (empty when no attempt was made yet).
    #[oai(status = 200)]
    Ok(PlainText<String>),
    /// The commit is not 4 to 40 hexadecimal digits, the step name has
    /// other characters than letters, digits, `-`, `_`, `.`, or `attempt` is
    /// malformed.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No run for that commit, no such step in it, or no such attempt.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The prefix matches several runs; give more digits.
    #[oai(status = 409)]
    Ambiguous(Json<ErrorBody>),
    /// The store failed.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

/// The client's words for a parameter poem-openapi could not parse or validate.
fn bad_request_message(err: &poem::Error) -> String {
    let Some(e) = err.downcast_ref::<poem_openapi::error::ParseParamError>() else {
        return err.to_string();
    };
    let expected = match e.name {
        "status" => format!("one of {}", valid_statuses()),
        "limit" => format!("an integer from 1 to {MAX_LIMIT}"),
        "offset" => format!("an integer from 0 to {MAX_OFFSET}"),
        "after" => return bad_cursor(),
        "attempt" => format!("an attempt number, from 1 to {}", u32::MAX),
        "commit" => format!("{MIN_PREFIX} to {MAX_COMMIT_LEN} hexadecimal digits"),
        "step" => "a step name: letters, digits, '-', '_' or '.'".to_owned(),
        _ => return err.to_string(),
    };
    format!("invalid parameter `{}`: expected {expected}", e.name)
}

/// What a malformed `after` is told.
fn bad_cursor() -> String {
    "invalid parameter `after`: expected the `next` of a page of `GET /runs` \
     (a decimal number)"
        .to_owned()
}

fn list_bad_request(err: poem::Error) -> ListRunsResponse {
    ListRunsResponse::BadRequest(Json(ErrorBody::new(bad_request_message(&err))))
}

fn run_bad_request(err: poem::Error) -> GetRunResponse {
    GetRunResponse::BadRequest(Json(ErrorBody::new(bad_request_message(&err))))
}

fn log_bad_request(err: poem::Error) -> StepLogResponse {
    StepLogResponse::BadRequest(Json(ErrorBody::new(bad_request_message(&err))))
}

fn valid_statuses() -> String {
    RunStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `raw` is 4 to 40 hexadecimal digits and returns it in lowercase.
///
/// # Errors
/// A message for the client when it is not.
pub fn parse_commit(raw: &str) -> Result<String, String> {
    let len_ok = (MIN_PREFIX..=MAX_COMMIT_LEN).contains(&raw.len());
    if !len_ok || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid commit {raw:?}: expected {MIN_PREFIX} to {MAX_COMMIT_LEN} hexadecimal digits"
        ));
    }
    Ok(raw.to_ascii_lowercase())
}

/// How a lookup of a run by commit went wrong, already in the client's words.
enum LookupError {
    BadRequest(String),
    NotFound(String),
    Ambiguous(String),
    Internal(String),
}

impl From<LookupError> for GetRunResponse {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::BadRequest(m) => Self::BadRequest(Json(ErrorBody::new(m))),
            LookupError::NotFound(m) => Self::NotFound(Json(ErrorBody::new(m))),
            LookupError::Ambiguous(m) => Self::Ambiguous(Json(ErrorBody::new(m))),
            LookupError::Internal(m) => Self::Internal(Json(ErrorBody::new(m))),
        }
    }
}

impl From<LookupError> for StepLogResponse {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::BadRequest(m) => Self::BadRequest(Json(ErrorBody::new(m))),
            LookupError::NotFound(m) => Self::NotFound(Json(ErrorBody::new(m))),
            LookupError::Ambiguous(m) => Self::Ambiguous(Json(ErrorBody::new(m))),
            LookupError::Internal(m) => Self::Internal(Json(ErrorBody::new(m))),
        }
    }
}

impl Api {
    async fn lookup(&self, raw: &str) -> Result<ci_engine::Run, LookupError> {
        lookup_run(self.store.as_ref(), raw).await
    }
}

/// The run of `raw`, a full commit hash or a prefix that matches one run.
async fn lookup_run(store: &dyn RunStore, raw: &str) -> Result<ci_engine::Run, LookupError> {
    let commit = parse_commit(raw).map_err(LookupError::BadRequest)?;
    store.get_run(&commit).await.map_err(|e| match e {
        StoreError::NotFound(_) => LookupError::NotFound(format!("no run for commit {commit}")),
        StoreError::Ambiguous { matches, .. } => LookupError::Ambiguous(format!(
            "commit prefix {commit} is ambiguous: it matches {matches} runs; give more digits"
        )),
        other => {
            tracing::error!(error = %other, commit, "store failed to look up a run");
            LookupError::Internal(format!("the store failed: {other}"))
        }
    })
}

/// The API's operations. Paths use poem's `:name` syntax.
#[OpenApi]
impl Api {
    /// List runs, newest first.
    ///
    /// Each item has the commit's full hash (`id`), the run's `status` and
    /// `failed_steps` (always present; empty when nothing failed), plus branches,
    /// the commit's summary and times. `total` counts every run that matches the
    /// filters, so `offset` and `limit` page through them. To walk through
    /// every run, follow `next` instead: pass it as `after` for the page that
    /// follows; unlike `offset`, it stays in place while new runs arrive.
    #[oai(path = "/runs", method = "get", operation_id = "list_runs")]
    async fn list_runs(
        &self,
        /// Only runs with this status.
        status: Query<Option<RunStatusDto>>,
        /// Only runs whose commit was found on this branch (e.g. `main`).
        branch: Query<Option<String>>,
        /// At most this many runs (1 to 1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Skip this many runs first (default 0); counted after `after`.
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))]
        offset: Query<Option<u32>>,
        /// A cursor: the `next` of the previous page (decimal digits). Only
        /// runs older than that page's last run are listed.
        #[oai(validator(custom = "params::CURSOR"))]
        after: Query<Option<String>>,
    ) -> ListRunsResponse {
        let after = match after.0.as_deref().map(str::parse::<u64>).transpose() {
            Ok(after) => after,
            Err(_) => return ListRunsResponse::BadRequest(Json(ErrorBody::new(bad_cursor()))),
        };
        let query = RunQuery {
            status: status.0.map(RunStatusDto::to_engine),
            branch: branch.0,
            limit: usize::try_from(limit.0.unwrap_or(DEFAULT_LIMIT)).unwrap_or(usize::MAX),
            offset: usize::try_from(offset.0.unwrap_or(0)).unwrap_or(usize::MAX),
            after,
            // A listing shows the runs' own fields only: read no steps.
            with_logs: false,
            with_steps: false,
        };
        // Read before the store is: a write during the read changes it, so
        // the answer is then kept under a generation that is already past.
        let generation = self.store.generation();
        if let Some(body) = generation.and_then(|g| self.listings.get(&query, g)) {
            return ListRunsResponse::Ok(EncodedJson::from_bytes(body));
        }
        match self.store.list_runs(&query).await {
            Ok(page) => {
                let answer = EncodedJson::encode(&RunList {
                    total: page.total,
                    next: page.next.map(|seq| seq.to_string()),
                    data: page.runs.iter().map(RunSummary::from).collect(),
                });
                if let Some(generation) = generation {
                    self.listings
                        .put(&query, generation, answer.bytes().clone());
                }
                ListRunsResponse::Ok(answer)
            }
            Err(e) => {
                tracing::error!(error = %e, "store failed to list runs");
                ListRunsResponse::Internal(Json(ErrorBody::new(format!("the store failed: {e}"))))
            }
        }
    }

    /// One run: its status, steps, every attempt and durations.
    ///
    /// `commit` is the full hash or an abbreviation of at least 4 hexadecimal
    /// digits that matches exactly one run.
    #[oai(path = "/run/:commit", method = "get", operation_id = "get_run")]
    async fn get_run(
        &self,
        /// Full or abbreviated (at least 4 hex digits) commit hash.
        #[oai(validator(custom = "params::COMMIT", min_length = 4, max_length = 40))]
        commit: Path<String>,
    ) -> GetRunResponse {
        match self.lookup(&commit.0).await {
            Ok(run) => GetRunResponse::Ok(EncodedJson::encode(
                &waiting::detail(&run, self.engine.as_ref()).await,
            )),
            Err(e) => e.into(),
        }
    }

    /// The logs of one step, as plain text.
    ///
    /// Without `attempt`: every attempt's logs, oldest first, each after a header
    /// line `=== attempt N on RUNNER: OUTCOME (REASON) ===` (` on RUNNER` when
    /// the attempt names its runner, ` (REASON)` when it has a reason). With
    /// `attempt=N`: that attempt's logs exactly as the runner returned them.
    #[oai(
        path = "/run/:commit/steps/:step/log",
        method = "get",
        operation_id = "get_step_log"
    )]
    async fn step_log(
        &self,
        /// Full or abbreviated (at least 4 hex digits) commit hash.
        #[oai(validator(custom = "params::COMMIT", min_length = 4, max_length = 40))]
        commit: Path<String>,
        /// Step name (`lint`, `build`, `test`, or a step of the pipeline
        /// file): letters, digits, `-`, `_`, `.`.
        #[oai(validator(custom = "params::STEP"))]
        step: Path<String>,
        /// Only this attempt (from 1).
        #[oai(validator(minimum(value = "1"), maximum(value = "4294967295")))]
        attempt: Query<Option<u32>>,
    ) -> StepLogResponse {
        let run = match self.lookup(&commit.0).await {
            Ok(run) => run,
            Err(e) => return e.into(),
        };
        let Some(record) = run.step(&step.0) else {
            let names: Vec<&str> = run.steps.iter().map(|s| s.name.as_str()).collect();
            return StepLogResponse::NotFound(Json(ErrorBody::new(format!(
                "run {} has no step {:?}; its steps are: {}",
                run.commit.id,
                step.0,
                names.join(", ")
            ))));
        };
        match attempt.0 {
            Some(n) => match record.attempts.iter().find(|a| a.number == n) {
                Some(a) => StepLogResponse::Ok(PlainText(a.logs.clone())),
                None => StepLogResponse::NotFound(Json(ErrorBody::new(format!(
                    "step {} of run {} has no attempt {n}; it has {}",
                    record.name,
                    run.commit.id,
                    record.attempts.len()
                )))),
            },
            None => StepLogResponse::Ok(PlainText(all_attempt_logs(record))),
        }
    }

    /// The status of a branch as an SVG badge for a README: the run of the
    /// branch's current tip, or while it has none the branch's newest run;
    /// without `branch`, the newest run. A branch with no run gets a grey
    /// `unknown` badge (still 200).
    #[oai(path = "/badge.svg", method = "get", operation_id = "badge")]
    async fn badge(
        &self,
        /// The branch (short name, e.g. `main`).
        branch: Query<Option<String>>,
    ) -> BadgeResponse {
        let branch = branch.0.filter(|b| !b.is_empty());
        let status =
            badge::status_of(self.store.as_ref(), self.tips.as_ref(), branch.as_deref()).await;
        BadgeResponse::Ok(
            PlainText(badge::svg(status)),
            format!("max-age={}, must-revalidate", badge::MAX_AGE_SECS),
        )
    }

    /// The runners of the pool: the engine's view of each, with its address.
    ///
    /// One object per runner, in pool order: its state (`up`, `down`,
    /// `probing`) and since when, requests in flight (in all, per concurrency
    /// class, and those the engine gave up on but the runner still holds),
    /// outage, crash and lost-attempt counts, its last error, and where it is
    /// (`address`, `repo_path`, `bundled`, `restarts`; `null` when the server
    /// has no address for that id). 503 when no engine runs behind the API.
    #[oai(path = "/runners", method = "get", operation_id = "list_runners")]
    async fn list_runners(&self) -> runners::RunnersResponse {
        if self.engine.is_none() && self.role == health::Role::Standby {
            return runners::RunnersResponse::Unavailable(Json(ErrorBody::new(no_engine(
                self.role,
                self.active_server(),
                "the runners' state is not known",
            ))));
        }
        runners::list(
            self.engine.as_ref(),
            self.runners.as_ref(),
            self.check_timeout,
        )
        .await
    }

    /// Whether the server can do its job: 200 if so, 503 if not.
    ///
    /// 503 when the store does not answer a read within 2 s, when the engine
    /// has stopped or does not answer within 2 s, or when no runner has been
    /// up for longer than the unreachable limit. Some runners down, or all of
    /// them for less than the limit, is still 200 (the body shows it). Both
    /// answers have the same body; `reason` says why the server is unavailable.
    #[oai(path = "/healthz", method = "get", operation_id = "health")]
    async fn healthz(&self) -> health::HealthResponse {
        health::check(
            self.store.as_ref(),
            self.engine.as_ref(),
            self.role,
            self.active_server(),
            self.unreachable_limit,
            self.check_timeout,
        )
        .await
        .into()
    }

    /// The server's metrics, for Prometheus.
    ///
    /// In the OpenMetrics text format: finished runs, attempts and their
    /// durations (counted from the server's start), the runners and the
    /// concurrency classes as the engine sees them now, and the store's
    /// operation times. Without an engine, only the store's metrics have
    /// samples. `docs/api.md` lists every metric.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self) -> MetricsResponse {
        match self
            .metrics
            .render(self.engine.as_ref(), self.check_timeout)
            .await
        {
            Ok(text) => MetricsResponse::Ok(PlainText(text)),
            Err(e) => MetricsResponse::Internal(Json(ErrorBody::new(format!(
                "the metrics could not be encoded: {e}"
            )))),
        }
    }

    /// The list of runs for people (HTML); not part of the API.
    #[oai(path = "/", method = "get", hidden)]
    async fn runs_page(
        &self,
        branch: Query<Option<String>>,
        status: Query<Option<String>>,
        limit: Query<Option<String>>,
        offset: Query<Option<String>>,
    ) -> pages::PageResponse {
        let params = pages::ListParams {
            branch: branch.0,
            status: status.0,
            limit: limit.0,
            offset: offset.0,
        };
        pages::list(self.store.as_ref(), &params).await
    }

    /// One run for people (HTML); not part of the API.
    #[oai(path = "/commit/:commit", method = "get", hidden)]
    async fn run_page(&self, commit: Path<String>) -> pages::PageResponse {
        pages::run(self, &commit.0).await
    }

    /// The engine's events as they happen (server-sent events).
    ///
    /// Every event has an id `EPOCH-N`. A client that reconnects with the
    /// `Last-Event-ID` header (browsers do) gets the events it missed, with
    /// their ids, when the server still has them, and a `reset` event
    /// otherwise. The server keeps the last 1024 events by default.
    #[oai(path = "/events", method = "get", operation_id = "events")]
    async fn events(
        &self,
        /// The id of the last event received (`EPOCH-N`); the stream resumes
        /// after it.
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<String>>,
    ) -> EventsResponse {
        match &self.journal {
            Some(journal) => {
                let stream =
                    futures::StreamExt::map(journal.stream(last_event_id.0.as_deref()), Any);
                let stream = match self.stop.clone() {
                    Some(mut stop) => {
                        let stopped = async move {
                            // A dropped sender also means stop.
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        futures::StreamExt::boxed(futures::StreamExt::take_until(stream, stopped))
                    }
                    None => futures::StreamExt::boxed(stream),
                };
                EventsResponse::Ok(
                    EventStream::new(stream)
                        .keep_alive(EVENTS_KEEP_ALIVE)
                        .to_event(events::to_sse),
                )
            }
            None => EventsResponse::Unavailable(Json(ErrorBody::new(no_engine(
                self.role,
                self.active_server(),
                "there are no events",
            )))),
        }
    }
}

/// Every attempt's logs, each after a header line.
fn all_attempt_logs(record: &ci_engine::StepRecord) -> String {
    let mut out = String::new();
    for a in &record.attempts {
        out.push_str(&format!("=== attempt {}", a.number));
        if let Some(runner) = &a.runner {
            out.push_str(&format!(" on {runner}"));
        }
        out.push_str(&format!(": {}", a.outcome));
        if let Some(reason) = &a.reason {
            out.push_str(&format!(" ({reason})"));
        }
        out.push_str(" ===\n");
        out.push_str(&a.logs);
        if !a.logs.is_empty() && !a.logs.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The active server as `active` last saw it (`None` when not told).
pub(crate) fn last_seen(active: Option<&watch::Receiver<Option<String>>>) -> Option<String> {
    active.and_then(|a| a.borrow().clone())
}

/// Why a request that needs the engine cannot be answered here, ending with
/// `what` cannot be had ("there are no events"): on a standby, which server
/// is active (`active`), or that none is.
pub(crate) fn no_engine(role: health::Role, active: Option<String>, what: &str) -> String {
    match (role, active) {
        (health::Role::Standby, Some(active)) => {
            format!("this server is a standby, so {what} here; the active server is {active}")
        }
        (health::Role::Standby, None) => format!(
            "this server is a standby and no server is active now, so {what}; try again shortly"
        ),
        (health::Role::Primary, _) => format!("no engine runs behind this API, so {what}"),
    }
}

/// The OpenAPI service of `api` and its retry and cancel
/// ([`actions::ActionsApi`], over the same store, engine and token), titled
/// and versioned for this crate.
pub fn openapi_service(api: Api) -> OpenApiService<(Api, actions::ActionsApi), ()> {
    let actions = actions::ActionsApi::new(
        Arc::clone(&api.store),
        api.engine.clone(),
        api.token.clone(),
    )
    .with_role(api.role, api.active.clone());
    OpenApiService::new((api, actions), "ci-server", env!("CARGO_PKG_VERSION")).description(
        "Runs of every commit of a git repository through lint, build and test. \
         Errors are JSON objects with a `message`. Everything is readable without \
         a token; only retry and cancel need the server's API token as a bearer token.",
    )
}

/// The whole HTTP application: the API, the OpenAPI document at
/// `/openapi.json` (see `document`), Swagger UI (embedded, no network
/// needed) at `/docs`, the pages for people at `/` and `/commit/{commit}`,
/// and the event stream that keeps them live at `/events` (503 when `api` has
/// no engine).
///
/// Any error poem itself produces (an unknown path, a wrong method) is turned into
/// the same JSON [`ErrorBody`] as the API's own errors. A 405 (a method the
/// path is not served with) carries the `Allow` header that lists the methods
/// it is served with (RFC 9110), from the document's paths and the pages.
pub fn app(api: Api) -> impl Endpoint + 'static {
    let service = openapi_service(api);
    let spec = service.spec();
    let (json, routes) = match document::Document::from_spec(&spec) {
        Ok(doc) => (doc.json().to_owned(), doc.routes().clone()),
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document could not be finished; serving poem-openapi's");
            let routes = serde_json::from_str(&spec)
                .map(|doc| document::Routes::from_document(&doc))
                .unwrap_or_default();
            (spec.clone(), routes)
        }
    };
    let routes = Arc::new(routes.with_get(&PAGE_PATHS).with_get(&DOCUMENT_PATHS));
    // Swagger UI embeds the document it shows: the finished one.
    let ui = service.swagger_ui_html().replacen(&spec, &json, 1);
    Route::new()
        .nest(
            "/docs",
            Route::new().at("/", get(make_sync(move |_| Html(ui.clone())))),
        )
        .at(
            "/openapi.json",
            get(make_sync(move |_| {
                poem::Response::builder()
                    .content_type("application/json")
                    .body(json.clone())
            })),
        )
        .nest("/", service)
        .catch_all_error(json_error)
        .around(move |ep, req| {
            let routes = Arc::clone(&routes);
            async move {
                let method = req.method().clone();
                let path = req.uri().path().to_owned();
                let resp = ep.call(req).await?.into_response();
                Ok(allow_on_405(resp, &routes, &method, &path))
            }
        })
}

/// A 405 answer for `method` on `path`, with the `Allow` header and the
/// methods in its message; any other answer as it is.
fn allow_on_405(
    resp: poem::Response,
    routes: &document::Routes,
    method: &Method,
    path: &str,
) -> poem::Response {
    if resp.status() != StatusCode::METHOD_NOT_ALLOWED {
        return resp;
    }
    let Some(allow) = routes.allow(path) else {
        tracing::warn!(%method, path, "a 405 for a path of no known route; no Allow header");
        return resp;
    };
    let shown: String = path.chars().take(200).collect();
    let message = format!("{method} is not allowed on {shown}; it is served with {allow}");
    let mut resp = (
        StatusCode::METHOD_NOT_ALLOWED,
        poem::web::Json(serde_json::json!({ "message": message })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&allow) {
        resp.headers_mut().insert(header::ALLOW, value);
    }
    resp
}

async fn json_error(err: poem::Error) -> poem::Response {
    let status = err.status();
    let message = if status == StatusCode::NOT_FOUND {
        "no such endpoint; see /docs".to_owned()
    } else {
        err.to_string()
    };
    (
        status,
        poem::web::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}
