//! "Why is this step waiting" in the API: the engine's [`Waiting`] for each
//! step of a run under way, as [`WaitingInfo`] on the steps of `GET /run/{commit}`.

use std::time::Duration;

use ci_engine::{EngineHandle, Holder, Scope, StepWait, Waiting};
use poem_openapi::Object;

use super::model::{RunDetail, StepStatusDto};

/// How long `GET /run/{commit}` waits for the engine's answer before it
/// answers without `waiting`.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A request that holds a permit a waiting step needs.
#[derive(Object, serde::Serialize, Clone, Debug, PartialEq, Eq)]
pub struct HolderInfo {
    /// Commit of the holding request.
    pub commit: String,
    /// Its step.
    pub step: String,
    /// Its attempt number.
    pub attempt: u32,
    /// The runner it is on.
    pub runner: String,
    /// The server gave up on it (timeout, cancel) and the runner has not
    /// answered it yet, so it still holds its permit.
    pub given_up: bool,
}

/// Why a step that has not started (or waits to be retried) waits. `kind`
/// says which fields are set.
#[derive(Object, serde::Serialize, Clone, Debug, PartialEq, Eq)]
pub struct WaitingInfo {
    /// `needs` (a step it needs has not succeeded: `need`, `need_status`),
    /// `permit` (every runner it may use is full for its class: `class`,
    /// `scope`, `limit`, `holders`), `runner_full` (its runners have as many
    /// requests in flight as allowed: `runners`), `runner_down` (its runner, or
    /// every runner, is down: `runners`, `since`, `gives_up_at`), `backoff`
    /// (waiting to be retried: `until`), `earlier_attempt` (a runner still
    /// holds an earlier attempt the server gave up on: `runners`, `attempt`),
    /// `dispatching` (goes out now).
    pub kind: String,
    /// The same, as one sentence for people.
    pub sentence: String,
    /// `needs`: the step it needs.
    #[oai(nullable)]
    pub need: Option<String>,
    /// `needs`: that step's status.
    #[oai(nullable)]
    pub need_status: Option<StepStatusDto>,
    /// `permit`: the concurrency class (group or step name).
    #[oai(nullable)]
    pub class: Option<String>,
    /// `permit`: `runner` (the limit holds on each runner) or `pool`.
    #[oai(nullable)]
    pub scope: Option<String>,
    /// `permit`: the class's limit.
    #[oai(nullable)]
    pub limit: Option<u32>,
    /// `permit`: the requests holding the permits, oldest commit first.
    pub holders: Vec<HolderInfo>,
    /// The runners concerned (`runner_full`, `runner_down`, `earlier_attempt`).
    pub runners: Vec<String>,
    /// `earlier_attempt`: the attempt the runner still holds.
    #[oai(nullable)]
    pub attempt: Option<u32>,
    /// `runner_down`: since when (unix ms) it has had no runner to go to.
    #[oai(nullable)]
    pub since: Option<i64>,
    /// `runner_down`: when (unix ms) it ends `error` if no runner comes back.
    #[oai(nullable)]
    pub gives_up_at: Option<i64>,
    /// `backoff`: when (unix ms) it is ready again.
    #[oai(nullable)]
    pub until: Option<i64>,
}

impl From<&Waiting> for WaitingInfo {
    fn from(w: &Waiting) -> Self {
        let mut info = Self {
            kind: String::new(),
            sentence: w.to_string(),
            need: None,
            need_status: None,
            class: None,
            scope: None,
            limit: None,
            holders: Vec::new(),
            runners: Vec::new(),
            attempt: None,
            since: None,
            gives_up_at: None,
            until: None,
        };
        info.kind = match w {
            Waiting::Needs { step, status } => {
                info.need = Some(step.clone());
                info.need_status = Some((*status).into());
                "needs"
            }
            Waiting::Permit {
                class,
                scope,
                limit,
                holders,
            } => {
                info.class = Some(class.clone());
                info.scope = Some(
                    match scope {
                        Scope::Pool => "pool",
                        _ => "runner",
                    }
                    .to_owned(),
                );
                info.limit = Some(*limit);
                info.holders = holders.iter().map(HolderInfo::from).collect();
                "permit"
            }
            Waiting::RunnerFull { runners } => {
                info.runners.clone_from(runners);
                "runner_full"
            }
            Waiting::RunnerDown {
                runners,
                since,
                gives_up_at,
            } => {
                info.runners.clone_from(runners);
                info.since = Some(*since);
                info.gives_up_at = Some(*gives_up_at);
                "runner_down"
            }
            Waiting::Backoff { until } => {
                info.until = Some(*until);
                "backoff"
            }
            Waiting::EarlierAttempt { runner, attempt } => {
                info.runners = vec![runner.clone()];
                info.attempt = Some(*attempt);
                "earlier_attempt"
            }
            _ => "dispatching",
        }
        .to_owned();
        info
    }
}

impl From<&Holder> for HolderInfo {
    fn from(h: &Holder) -> Self {
        Self {
            commit: h.commit.to_string(),
            step: h.step.clone(),
            attempt: h.attempt,
            runner: h.runner.clone(),
            given_up: h.given_up,
        }
    }
}

/// The [`RunDetail`] of `run` as `GET /run/{commit}` and the run page show it:
/// with `waiting` on its steps while the run is under way.
pub async fn detail(run: &ci_engine::Run, engine: Option<&EngineHandle>) -> RunDetail {
    let mut detail = RunDetail::from(run);
    if !run.status.is_terminal() {
        fill(&mut detail, engine).await;
    }
    detail
}

/// Fills `waiting` on the steps of `detail` from the engine. Leaves it empty
/// when there is no engine, it does not answer in time, or the run is not
/// under way.
async fn fill(detail: &mut RunDetail, engine: Option<&EngineHandle>) {
    let Some(engine) = engine else { return };
    let id = ci_engine::CommitId::new(detail.id.clone());
    let waits: Vec<StepWait> = match tokio::time::timeout(ASK_TIMEOUT, engine.waiting(&id)).await {
        Ok(Ok(waits)) => waits,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no waiting reasons: the engine did not answer");
            return;
        }
        Err(_) => {
            tracing::warn!(commit = %detail.id, "the engine did not say why steps wait within 2 s");
            return;
        }
    };
    for wait in waits {
        if let Some(step) = detail.steps.iter_mut().find(|s| s.name == wait.step) {
            step.waiting = Some(WaitingInfo::from(&wait.waiting));
        }
    }
}
