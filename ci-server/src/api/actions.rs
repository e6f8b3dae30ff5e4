//! `POST /run/{commit}/retry` and `POST /run/{commit}/cancel`: the two
//! operations that change a run, behind a bearer token.
//!
//! Everything else of the API only reads. These two ask the engine
//! ([`EngineHandle::retry_by`], [`EngineHandle::cancel_by`]) and need the
//! server's [`ApiToken`] as `Authorization: Bearer TOKEN`:
//!
//! - no token configured: `403`, with a message saying how to configure one;
//! - no bearer token, or a wrong one: `401` with `WWW-Authenticate: Bearer`
//!   (the token is compared in constant time);
//! - then the commit is looked up as for `GET /run/{commit}` (`400`, `404`,
//!   `409` for an ambiguous prefix), and the engine is asked (`409` when the
//!   run is in the wrong state, `503` without a running engine).
//!
//! Who asked is the client's address as the server sees it (the TCP peer,
//! `IP:PORT`; behind a reverse proxy, the proxy's): it is recorded on the run
//! with the action (see [`RunActionInfo`]) and logged with the commit and the
//! result. The token never is.

use std::net::SocketAddr;
use std::sync::Arc;

use ci_engine::{
    CancelOutcome, CommitId, EngineError, EngineHandle, RetryOutcome, RunAction, RunActionKind,
    RunStore,
};
use poem::web::RemoteAddr;
use poem::{Request, RequestBody};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi,
};
use tracing::{info, warn};

use super::model::{ErrorBody, RunDetail};
use super::token::{ApiToken, TOKEN_ENV};
use super::{LookupError, lookup_run, waiting};

/// The name of the bearer security scheme in the OpenAPI document.
pub const SECURITY_SCHEME: &str = "ApiToken";

/// `WWW-Authenticate` of a `401` without a bearer token (RFC 6750).
pub const CHALLENGE: &str = "Bearer realm=\"ci-server\"";

/// `WWW-Authenticate` of a `401` with a wrong bearer token (RFC 6750).
pub const CHALLENGE_INVALID: &str = "Bearer realm=\"ci-server\", error=\"invalid_token\"";

/// The bearer token a request carries: the credentials of an
/// `Authorization: Bearer TOKEN` header (the scheme in any case), or `None`.
///
/// As an operation's parameter it puts the [`SECURITY_SCHEME`] (HTTP bearer)
/// on the operation in the OpenAPI document. Unlike a derived
/// `SecurityScheme`, it never fails the request itself: the operation decides
/// between `403` (no token configured) and `401`, and says why.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Option<String>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.0.as_ref().map(|_| "<redacted>");
        f.debug_tuple("BearerToken").field(&shown).finish()
    }
}

impl BearerToken {
    /// The bearer token of the `Authorization` header value `value`: `None`
    /// for another scheme, or a bearer without credentials.
    pub fn from_header(value: Option<&str>) -> Self {
        let token = value
            .map(str::trim)
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, credentials)| credentials.trim())
            .filter(|credentials| !credentials.is_empty())
            .map(str::to_owned);
        Self(token)
    }

    /// Whether the request carried a bearer token at all.
    pub fn is_present(&self) -> bool {
        self.0.is_some()
    }
}

impl<'a> ApiExtractor<'a> for BearerToken {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        registry.create_security_scheme(
            SECURITY_SCHEME,
            MetaSecurityScheme {
                ty: "http",
                description: Some(
                    "The server's API token (the environment variable CI_API_TOKEN, \
                     --api-token-file PATH or --api-token TOKEN) as \
                     `Authorization: Bearer TOKEN`. Only retry and cancel need it. \
                     403 when the server has no token configured, 401 when it is \
                     missing or wrong.",
                ),
                name: None,
                key_in: None,
                scheme: Some("bearer"),
                bearer_format: None,
                flows: None,
                openid_connect_url: None,
            },
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![SECURITY_SCHEME]
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let header = request
            .headers()
            .get(poem::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        Ok(Self::from_header(header))
    }
}

/// A retry or a cancel asked of a run, as `GET /run/{commit}` lists them in
/// `actions`: `kind` is `retry` or `cancel`, `at` when the server took it,
/// `by` who asked.
#[derive(Object, serde::Serialize, Clone, Debug, PartialEq, Eq)]
#[oai(rename = "RunAction")]
pub struct RunActionInfo {
    /// What was asked: `retry` or `cancel`.
    pub kind: String,
    /// When the server took it, milliseconds since the Unix epoch.
    pub at: i64,
    /// Who asked: the client's address as the server saw it (`IP:PORT` of the
    /// TCP peer; behind a reverse proxy, the proxy's); `null` when unknown.
    #[oai(nullable)]
    pub by: Option<String>,
}

impl From<&RunAction> for RunActionInfo {
    fn from(a: &RunAction) -> Self {
        Self {
            kind: a.kind.as_str().to_owned(),
            at: a.at,
            by: a.by.clone(),
        }
    }
}

/// What `POST /run/{commit}/retry` did: the steps that run again, and the run
/// right after the retry (queued again, every earlier attempt kept).
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct RetryResult {
    /// The run's commit, in full.
    pub id: String,
    /// The steps that run again as new attempts, in pipeline order: those
    /// that failed, errored or were cancelled, and those skipped because of
    /// them.
    pub steps: Vec<String>,
    /// The run as `GET /run/{commit}` shows it right after the retry.
    pub run: RunDetail,
}

/// What `POST /run/{commit}/cancel` did: the run, now `cancelled`.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct CancelResult {
    /// The run's commit, in full.
    pub id: String,
    /// The run as `GET /run/{commit}` shows it right after the cancel.
    pub run: RunDetail,
}

/// Answers of `POST /run/{commit}/retry`.
#[derive(ApiResponse, Debug)]
#[oai(bad_request_handler = "retry_bad_request")]
pub enum RetryResponse {
    /// The run is queued again; `steps` run again as new attempts.
    #[oai(status = 200)]
    Retried(Json<Box<RetryResult>>),
    /// The commit is not 4 to 40 hexadecimal digits.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No bearer token, or a wrong one.
    #[oai(status = 401)]
    Unauthorized(
        Json<ErrorBody>,
        /// `Bearer realm="ci-server"`, with `error="invalid_token"` for a
        /// wrong token.
        #[oai(header = "WWW-Authenticate")]
        String,
    ),
    /// The server has no API token configured, so nobody may retry; the
    /// message says how to configure one.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No run for that commit.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The prefix matches several runs, the run is not finished (queued or
    /// running), or every step of it succeeded: nothing to retry.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The store failed.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// No engine runs behind this API, or it is stopping.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// Answers of `POST /run/{commit}/cancel`.
#[derive(ApiResponse, Debug)]
#[oai(bad_request_handler = "cancel_bad_request")]
pub enum CancelResponse {
    /// The run was queued or running and is now `cancelled`.
    #[oai(status = 200)]
    Cancelled(Json<Box<CancelResult>>),
    /// The commit is not 4 to 40 hexadecimal digits.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No bearer token, or a wrong one.
    #[oai(status = 401)]
    Unauthorized(
        Json<ErrorBody>,
        /// `Bearer realm="ci-server"`, with `error="invalid_token"` for a
        /// wrong token.
        #[oai(header = "WWW-Authenticate")]
        String,
    ),
    /// The server has no API token configured, so nobody may cancel; the
    /// message says how to configure one.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No run for that commit.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The prefix matches several runs, or the run has already finished.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The store failed.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// No engine runs behind this API, or it is stopping.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// Why a retry or cancel was refused, in the client's words.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refused {
    BadRequest(String),
    Unauthorized(String, &'static str),
    Forbidden(String),
    NotFound(String),
    /// A 409, with the result word for the log (`ambiguous`,
    /// `not_finished`, ...).
    Conflict(&'static str, String),
    Internal(String),
    Unavailable(String),
}

impl Refused {
    /// The result word for the log.
    fn result(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(..) => "unauthorized",
            Self::Forbidden(_) => "disabled",
            Self::NotFound(_) => "not_found",
            Self::Conflict(result, _) => result,
            Self::Internal(_) => "store_failed",
            Self::Unavailable(_) => "no_engine",
        }
    }
}

impl From<LookupError> for Refused {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::BadRequest(m) => Self::BadRequest(m),
            LookupError::NotFound(m) => Self::NotFound(m),
            LookupError::Ambiguous(m) => Self::Conflict("ambiguous", m),
            LookupError::Internal(m) => Self::Internal(m),
        }
    }
}

/// `From<Refused>` for an answer enum with the same variants.
macro_rules! refusals_into {
    ($answer:ident) => {
        impl From<Refused> for $answer {
            fn from(r: Refused) -> Self {
                let body = |m: String| Json(ErrorBody::new(m));
                match r {
                    Refused::BadRequest(m) => Self::BadRequest(body(m)),
                    Refused::Unauthorized(m, challenge) => {
                        Self::Unauthorized(body(m), challenge.to_owned())
                    }
                    Refused::Forbidden(m) => Self::Forbidden(body(m)),
                    Refused::NotFound(m) => Self::NotFound(body(m)),
                    Refused::Conflict(_, m) => Self::Conflict(body(m)),
                    Refused::Internal(m) => Self::Internal(body(m)),
                    Refused::Unavailable(m) => Self::Unavailable(body(m)),
                }
            }
        }
    };
}

refusals_into!(RetryResponse);
refusals_into!(CancelResponse);

/// The client's words for a path parameter poem-openapi refused.
fn bad_commit(err: &poem::Error) -> Refused {
    match err.downcast_ref::<poem_openapi::error::ParseParamError>() {
        Some(e) if e.name == "commit" => Refused::BadRequest(format!(
            "invalid commit: expected {} to {} hexadecimal digits",
            super::MIN_PREFIX,
            super::MAX_COMMIT_LEN
        )),
        _ => Refused::BadRequest(err.to_string()),
    }
}

fn retry_bad_request(err: poem::Error) -> RetryResponse {
    bad_commit(&err).into()
}

fn cancel_bad_request(err: poem::Error) -> CancelResponse {
    bad_commit(&err).into()
}

/// Who asked, as recorded on the run: the TCP peer's `IP:PORT` (an IPv4
/// address mapped into IPv6 is written as IPv4), or poem's words for another
/// kind of address.
pub fn client_address(remote: &RemoteAddr) -> Option<String> {
    match remote.as_socket_addr() {
        Some(addr) => Some(SocketAddr::new(addr.ip().to_canonical(), addr.port()).to_string()),
        None => Some(remote.0.to_string()),
    }
}

/// The operations that change a run: retry and cancel, behind the API token.
pub struct ActionsApi {
    store: Arc<dyn RunStore>,
    engine: Option<EngineHandle>,
    token: Option<ApiToken>,
    role: super::health::Role,
    active: Option<tokio::sync::watch::Receiver<Option<String>>>,
}

impl std::fmt::Debug for ActionsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionsApi")
            .field("engine", &self.engine)
            .field("token", &self.token.is_some())
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ActionsApi {
    /// Retry and cancel over `store`'s runs through `engine` (`503` without
    /// one), for clients that send `token` (`403` for everyone without one).
    pub fn new(
        store: Arc<dyn RunStore>,
        engine: Option<EngineHandle>,
        token: Option<ApiToken>,
    ) -> Self {
        Self {
            store,
            engine,
            token,
            role: super::health::Role::Primary,
            active: None,
        }
    }

    /// The server's role and the active server as last seen, for the 503
    /// answers of a standby (which point at the active server).
    #[must_use]
    pub fn with_role(
        mut self,
        role: super::health::Role,
        active: Option<tokio::sync::watch::Receiver<Option<String>>>,
    ) -> Self {
        self.role = role;
        self.active = active;
        self
    }

    /// Checks the request's bearer token against the configured one.
    fn authorize(&self, bearer: &BearerToken, kind: RunActionKind) -> Result<(), Refused> {
        let Some(token) = &self.token else {
            return Err(Refused::Forbidden(format!(
                "{kind} is disabled: this server has no API token. Start ci-server with one \
                 in the environment variable {TOKEN_ENV} or in a file given with \
                 --api-token-file PATH, then send it as `Authorization: Bearer TOKEN`"
            )));
        };
        match bearer.0.as_deref() {
            None => Err(Refused::Unauthorized(
                format!("{kind} needs the API token: send `Authorization: Bearer TOKEN`"),
                CHALLENGE,
            )),
            Some(given) if token.matches(given) => Ok(()),
            Some(_) => Err(Refused::Unauthorized(
                "the API token is wrong".to_owned(),
                CHALLENGE_INVALID,
            )),
        }
    }

    fn engine(&self, kind: RunActionKind) -> Result<&EngineHandle, Refused> {
        self.engine.as_ref().ok_or_else(|| {
            Refused::Unavailable(super::no_engine(
                self.role,
                super::last_seen(self.active.as_ref()),
                &format!("there is nothing to {kind}"),
            ))
        })
    }

    /// The run of `commit` as `GET /run/{commit}` shows it.
    async fn read_back(&self, commit: &CommitId, done: &str) -> Result<RunDetail, Refused> {
        match self.store.get_run(commit.as_str()).await {
            Ok(run) => Ok(waiting::detail(&run, self.engine.as_ref()).await),
            Err(e) => {
                tracing::error!(error = %e, %commit, "store failed to read a run back");
                Err(Refused::Internal(format!(
                    "run {commit} was {done}, but the store failed to read it back: {e}"
                )))
            }
        }
    }

    async fn retry_run(
        &self,
        bearer: &BearerToken,
        raw: &str,
        by: Option<String>,
    ) -> Result<RetryResult, Refused> {
        self.authorize(bearer, RunActionKind::Retry)?;
        let run = lookup_run(self.store.as_ref(), raw).await?;
        let engine = self.engine(RunActionKind::Retry)?;
        let commit = run.commit.id.clone();
        match engine.retry_by(&commit, by).await {
            Ok(RetryOutcome::Retried { steps }) => {
                let run = self.read_back(&commit, "retried").await?;
                Ok(RetryResult {
                    id: commit.to_string(),
                    steps,
                    run,
                })
            }
            Ok(RetryOutcome::NotFinished) => Err(Refused::Conflict(
                "not_finished",
                format!(
                    "run {commit} is not finished (it is queued or running): only a run that \
                 ended failure, error or cancelled can be retried; cancel it first, or wait"
                ),
            )),
            Ok(RetryOutcome::NothingToRetry) => Err(Refused::Conflict(
                "nothing_to_retry",
                format!("every step of run {commit} succeeded: there is nothing to retry"),
            )),
            Ok(other) => Err(Refused::Conflict(
                "not_retried",
                format!("run {commit} was not retried ({other:?})"),
            )),
            Err(e) => Err(engine_refusal(&commit, e)),
        }
    }

    async fn cancel_run(
        &self,
        bearer: &BearerToken,
        raw: &str,
        by: Option<String>,
    ) -> Result<CancelResult, Refused> {
        self.authorize(bearer, RunActionKind::Cancel)?;
        let run = lookup_run(self.store.as_ref(), raw).await?;
        let engine = self.engine(RunActionKind::Cancel)?;
        let commit = run.commit.id.clone();
        match engine.cancel_by(&commit, by).await {
            Ok(CancelOutcome::Cancelled) => {
                let run = self.read_back(&commit, "cancelled").await?;
                Ok(CancelResult {
                    id: commit.to_string(),
                    run,
                })
            }
            Ok(CancelOutcome::AlreadyFinished) => Err(Refused::Conflict(
                "already_finished",
                format!(
                    "run {commit} has already finished: only a queued or running run can be cancelled"
                ),
            )),
            Err(e) => Err(engine_refusal(&commit, e)),
        }
    }
}

/// An engine's error, in the client's words.
fn engine_refusal(commit: &CommitId, e: EngineError) -> Refused {
    match e {
        EngineError::UnknownRun(_) => Refused::NotFound(format!("no run for commit {commit}")),
        EngineError::NotRunning => Refused::Unavailable(
            "the engine is not running (the server is stopping); try again after it restarts"
                .to_owned(),
        ),
        EngineError::Store(e) => {
            tracing::error!(error = %e, %commit, "the engine's store failed");
            Refused::Internal(format!("the store failed: {e}"))
        }
        other => Refused::Internal(other.to_string()),
    }
}

/// Logs a refused retry or cancel: the commit as asked, who asked and why
/// (a missing or wrong token as a warning).
fn log_refusal(kind: RunActionKind, raw: &str, by: Option<&str>, refused: &Refused) {
    let by = by.unwrap_or("-");
    let result = refused.result();
    match refused {
        Refused::Unauthorized(..) => {
            warn!(action = %kind, commit = raw, by, result, "{kind} refused: no or a wrong API token");
        }
        _ => info!(action = %kind, commit = raw, by, result, "{kind} refused"),
    }
}

/// Retry and cancel. Paths use poem's `:name` syntax.
#[OpenApi]
impl ActionsApi {
    /// Run again the steps of a finished run that did not succeed.
    ///
    /// For a run that ended `failure`, `error` or `cancelled`: the steps that
    /// failed, errored or were cancelled, and those skipped because of them,
    /// run again as new attempts of the same run (numbered after its earlier
    /// attempts, which stay in its history, each with a fresh attempt
    /// budget); the run is queued again behind every step already waiting,
    /// and ends in one new final status. Needs the API token as
    /// `Authorization: Bearer TOKEN`. The retry is recorded on the run (when,
    /// and the client's address) and logged. `commit` is the full hash or an
    /// abbreviation of at least 4 hexadecimal digits that matches one run.
    #[oai(
        path = "/run/:commit/retry",
        method = "post",
        operation_id = "retry_run"
    )]
    async fn retry(
        &self,
        bearer: BearerToken,
        remote: &RemoteAddr,
        /// Full or abbreviated (at least 4 hex digits) commit hash.
        #[oai(validator(custom = "super::params::COMMIT", min_length = 4, max_length = 40))]
        commit: Path<String>,
    ) -> RetryResponse {
        let by = client_address(remote);
        match self.retry_run(&bearer, &commit.0, by.clone()).await {
            Ok(done) => {
                info!(action = "retry", commit = %done.id, by = by.as_deref().unwrap_or("-"),
                    result = "retried", steps = ?done.steps, "run retried over the API");
                RetryResponse::Retried(Json(Box::new(done)))
            }
            Err(refused) => {
                log_refusal(RunActionKind::Retry, &commit.0, by.as_deref(), &refused);
                refused.into()
            }
        }
    }

    /// Cancel a queued or running run.
    ///
    /// Steps in flight are given up (a runner that holds one keeps its slot
    /// until it answers), the others end `cancelled`, and so does the run.
    /// Needs the API token as `Authorization: Bearer TOKEN`. The cancel is
    /// recorded on the run (when, and the client's address) and logged.
    /// `commit` is the full hash or an abbreviation of at least 4 hexadecimal
    /// digits that matches one run.
    #[oai(
        path = "/run/:commit/cancel",
        method = "post",
        operation_id = "cancel_run"
    )]
    async fn cancel(
        &self,
        bearer: BearerToken,
        remote: &RemoteAddr,
        /// Full or abbreviated (at least 4 hex digits) commit hash.
        #[oai(validator(custom = "super::params::COMMIT", min_length = 4, max_length = 40))]
        commit: Path<String>,
    ) -> CancelResponse {
        let by = client_address(remote);
        match self.cancel_run(&bearer, &commit.0, by.clone()).await {
            Ok(done) => {
                info!(action = "cancel", commit = %done.id, by = by.as_deref().unwrap_or("-"),
                    result = "cancelled", "run cancelled over the API");
                CancelResponse::Cancelled(Json(Box::new(done)))
            }
            Err(refused) => {
                log_refusal(RunActionKind::Cancel, &commit.0, by.as_deref(), &refused);
                refused.into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_and_others_are_no_token() {
        let token = |v: Option<&str>| BearerToken::from_header(v).0;
        assert_eq!(token(Some("Bearer abc")), Some("abc".to_owned()));
        assert_eq!(token(Some("bearer  abc ")), Some("abc".to_owned()));
        assert_eq!(token(Some("BEARER abc")), Some("abc".to_owned()));
        for none in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
            Some("abc"),
        ] {
            assert_eq!(token(none), None, "{none:?}");
        }
        let shown = format!("{:?}", BearerToken::from_header(Some("Bearer s3cr3t")));
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn a_client_is_its_ip_and_port_with_mapped_ipv4_written_as_ipv4() {
        let addr = |s: &str| RemoteAddr(poem::Addr::SocketAddr(s.parse().expect("an address")));
        assert_eq!(
            client_address(&addr("127.0.0.1:53412")).as_deref(),
            Some("127.0.0.1:53412")
        );
        assert_eq!(
            client_address(&addr("[::ffff:10.0.0.7]:80")).as_deref(),
            Some("10.0.0.7:80")
        );
        assert_eq!(
            client_address(&addr("[::1]:9000")).as_deref(),
            Some("[::1]:9000")
        );
    }

    fn api(token: Option<&str>) -> ActionsApi {
        ActionsApi::new(
            Arc::new(ci_engine::MemoryStore::new()),
            None,
            token.map(|t| {
                ApiToken::new(t, crate::api::token::TokenSource::Flag).expect("valid token")
            }),
        )
    }

    #[test]
    fn without_a_token_everyone_is_forbidden_with_a_way_to_enable_it() {
        let refused = api(None)
            .authorize(
                &BearerToken::from_header(Some("Bearer anything")),
                RunActionKind::Retry,
            )
            .unwrap_err();
        let Refused::Forbidden(message) = refused else {
            panic!("not 403: {refused:?}");
        };
        assert!(
            message.contains(TOKEN_ENV) && message.contains("--api-token-file"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_or_wrong_token_is_unauthorized_and_the_right_one_passes() {
        let api = api(Some("right-token"));
        let check =
            |h: Option<&str>| api.authorize(&BearerToken::from_header(h), RunActionKind::Cancel);
        assert!(matches!(
            check(None),
            Err(Refused::Unauthorized(_, CHALLENGE))
        ));
        assert!(matches!(
            check(Some("Bearer wrong-token")),
            Err(Refused::Unauthorized(_, CHALLENGE_INVALID))
        ));
        assert_eq!(check(Some("Bearer right-token")), Ok(()));
    }
}
