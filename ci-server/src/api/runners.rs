//! The runners of the pool as `GET /runners` shows them: the engine's view of
//! each one ([`RunnerStatus`]) joined by id with what the server knows about
//! where it is and how it is run ([`RunnerInfo`], from a [`RunnerDirectory`]).
//!
//! The engine's pool is the list that counts: every runner it has appears, in
//! pool order, with `null` address fields when the directory does not know it;
//! a directory entry the engine has no runner for is left out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ci_engine::{EngineError, EngineHandle, RunnerState, RunnerStatus};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object};

use super::model::ErrorBody;

/// One runner of the pool as the server configured it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerInfo {
    /// Its id in the engine's pool (recorded on attempts).
    pub id: String,
    /// Its base URL now (a bundled simulator's may change when it restarts).
    pub address: String,
    /// The repository path the runner is told to use.
    pub repo_path: String,
    /// Started and supervised by this server (a bundled simulator).
    pub bundled: bool,
    /// How many times the server restarted it (bundled simulators only).
    pub restarts: Option<u64>,
}

/// Gives the current [`RunnerInfo`] of every runner, in pool order. Called on
/// every `GET /runners`, so it must be cheap and must not block.
pub type RunnerDirectory = Arc<dyn Fn() -> Vec<RunnerInfo> + Send + Sync>;

/// Whether a runner takes steps, as shown by the API.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "snake_case", rename = "RunnerState")]
pub enum RunnerStateDto {
    /// It answers; it gets steps.
    Up,
    /// It refused a request, or held a request the engine gave up on for too
    /// long; it gets no steps until it answers a probe.
    Down,
    /// Down, with a probe out now.
    Probing,
}

impl From<RunnerState> for RunnerStateDto {
    fn from(s: RunnerState) -> Self {
        match s {
            RunnerState::Up => Self::Up,
            RunnerState::Down => Self::Down,
            RunnerState::Probing => Self::Probing,
        }
    }
}

/// One runner of the pool: `GET /runners`.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
#[oai(rename = "Runner")]
pub struct RunnerView {
    /// Its id in the pool; attempts name their runner by it.
    pub id: String,
    /// Whether it takes steps now.
    pub state: RunnerStateDto,
    /// Since when it has been in its state (up, or down/probing), milliseconds
    /// since the Unix epoch: the engine's start, or its last change between up
    /// and down.
    pub since: i64,
    /// Requests open on it, including those the engine gave up on (which
    /// still hold their permits).
    pub in_flight: u32,
    /// Open requests per concurrency class; classes with none are left out.
    pub in_flight_by_class: BTreeMap<String, u32>,
    /// Of `in_flight`, requests the engine gave up on (timeout, cancel) that
    /// the runner has not answered yet.
    pub held: u32,
    /// Times it went down.
    pub outages: u64,
    /// Times its connections closed with requests open (it crashed or
    /// restarted), counted once per burst of lost requests.
    pub crashes: u64,
    /// Attempts lost on it (connection closed, or no answer in time).
    pub lost_attempts: u64,
    /// The last error it gave (unreachable, lost, protocol), if any.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// Its base URL; `null` when the server has no address for this id.
    #[oai(nullable)]
    pub address: Option<String>,
    /// The repository path the runner is told to use; `null` when unknown.
    #[oai(nullable)]
    pub repo_path: Option<String>,
    /// Whether this server started it and supervises it (a bundled
    /// simulator); `null` when unknown.
    #[oai(nullable)]
    pub bundled: Option<bool>,
    /// How many times this server restarted it; `null` for a runner it does
    /// not supervise, or when unknown.
    #[oai(nullable)]
    pub restarts: Option<u64>,
}

/// The runners as `GET /runners` shows them: `statuses` in their (pool)
/// order, each with the `directory` entry of the same id, if any.
pub fn merge(statuses: Vec<RunnerStatus>, directory: &[RunnerInfo]) -> Vec<RunnerView> {
    for info in directory {
        if !statuses.iter().any(|s| s.id == info.id) {
            tracing::debug!(runner = %info.id, "the engine's pool has no runner with this id");
        }
    }
    statuses
        .into_iter()
        .map(|s| {
            let info = directory.iter().find(|i| i.id == s.id);
            RunnerView {
                state: s.state.into(),
                since: s.since,
                in_flight: s.in_flight,
                in_flight_by_class: s.in_flight_by_class,
                held: s.held,
                outages: s.outages,
                crashes: s.crashes,
                lost_attempts: s.lost_attempts,
                last_error: s.last_error,
                address: info.map(|i| i.address.clone()),
                repo_path: info.map(|i| i.repo_path.clone()),
                bundled: info.map(|i| i.bundled),
                restarts: info.and_then(|i| i.restarts),
                id: s.id,
            }
        })
        .collect()
}

/// Why the engine's view of its runners is not available.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineQueryError {
    /// The API was built without an engine (an embedded, read-only use).
    #[error("the engine is not running: no engine runs behind this API")]
    NoEngine,
    /// The engine has stopped.
    #[error("the engine is not running: it has stopped")]
    NotRunning,
    /// The engine did not answer in time (it is stuck, or overloaded).
    #[error("the engine did not answer within {0:?}")]
    Timeout(Duration),
    /// The engine answered with an error.
    #[error("the engine could not report its runners: {0}")]
    Failed(String),
}

/// Asks `engine` for its runners, waiting at most `timeout`.
///
/// # Errors
/// [`EngineQueryError`] when there is no engine, it has stopped, it does not
/// answer in time, or it answers with an error.
pub async fn engine_runners(
    engine: Option<&EngineHandle>,
    timeout: Duration,
) -> Result<Vec<RunnerStatus>, EngineQueryError> {
    let engine = engine.ok_or(EngineQueryError::NoEngine)?;
    match tokio::time::timeout(timeout, engine.runners()).await {
        Ok(Ok(runners)) => Ok(runners),
        Ok(Err(EngineError::NotRunning)) => Err(EngineQueryError::NotRunning),
        Ok(Err(e)) => Err(EngineQueryError::Failed(e.to_string())),
        Err(_) => Err(EngineQueryError::Timeout(timeout)),
    }
}

/// Answers of `GET /runners`.
#[derive(ApiResponse, Debug)]
pub enum RunnersResponse {
    /// Every runner of the engine's pool, in pool order.
    #[oai(status = 200)]
    Ok(Json<Vec<RunnerView>>),
    /// No engine runs behind this API, it has stopped, or it did not answer
    /// in time (2 s unless the server says otherwise).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// `GET /runners`: the engine's runners joined with `directory`, waiting at
/// most `timeout` for the engine.
pub async fn list(
    engine: Option<&EngineHandle>,
    directory: Option<&RunnerDirectory>,
    timeout: Duration,
) -> RunnersResponse {
    match engine_runners(engine, timeout).await {
        Ok(statuses) => {
            let directory = directory.map(|d| d()).unwrap_or_default();
            RunnersResponse::Ok(Json(merge(statuses, &directory)))
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot list the runners");
            RunnersResponse::Unavailable(Json(ErrorBody::new(e.to_string())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, state: RunnerState) -> RunnerStatus {
        RunnerStatus {
            id: id.to_owned(),
            state,
            since: 1_700_000_000_000,
            in_flight: 2,
            in_flight_by_class: BTreeMap::from([("build".to_owned(), 2)]),
            held: 1,
            outages: 3,
            crashes: 4,
            lost_attempts: 5,
            last_error: Some(format!("{id} refused")),
        }
    }

    fn info(id: &str, restarts: Option<u64>) -> RunnerInfo {
        RunnerInfo {
            id: id.to_owned(),
            address: format!("http://{id}.test:8080"),
            repo_path: format!("/srv/{id}"),
            bundled: restarts.is_some(),
            restarts,
        }
    }

    #[test]
    fn runners_are_joined_by_id_in_the_engines_order() {
        let statuses = vec![
            status("b", RunnerState::Up),
            status("a", RunnerState::Probing),
            status("c", RunnerState::Down),
        ];
        // The directory lists them in another order, misses `c` and has an
        // entry the engine does not know.
        let directory = [info("a", Some(7)), info("ghost", None), info("b", None)];
        let views = merge(statuses, &directory);
        let ids: Vec<&str> = views.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["b", "a", "c"]);

        assert_eq!(views[0].state, RunnerStateDto::Up);
        assert_eq!(views[0].address.as_deref(), Some("http://b.test:8080"));
        assert_eq!(views[0].bundled, Some(false));
        assert_eq!(views[0].restarts, None);

        assert_eq!(views[1].state, RunnerStateDto::Probing);
        assert_eq!(views[1].repo_path.as_deref(), Some("/srv/a"));
        assert_eq!(views[1].bundled, Some(true));
        assert_eq!(views[1].restarts, Some(7));
        assert_eq!(views[1].last_error.as_deref(), Some("a refused"));
        assert_eq!(
            (
                views[1].in_flight,
                views[1].held,
                views[1].outages,
                views[1].crashes,
                views[1].lost_attempts
            ),
            (2, 1, 3, 4, 5)
        );
        assert_eq!(views[1].in_flight_by_class.get("build"), Some(&2));

        let unknown = &views[2];
        assert_eq!(unknown.state, RunnerStateDto::Down);
        assert_eq!(
            (
                &unknown.address,
                &unknown.repo_path,
                unknown.bundled,
                unknown.restarts
            ),
            (&None, &None, None, None)
        );
    }

    #[tokio::test]
    async fn no_engine_is_an_error_that_says_the_engine_is_not_running() {
        let err = engine_runners(None, Duration::from_secs(2))
            .await
            .expect_err("no engine");
        assert_eq!(err, EngineQueryError::NoEngine);
        assert!(err.to_string().contains("the engine is not running"));
    }
}
