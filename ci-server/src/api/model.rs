//! The JSON shapes of the API, as poem-openapi objects.
//!
//! Each also derives `serde::Serialize`, with the same names, so that an
//! answer can be encoded straight to bytes (`EncodedJson`, in `encoded.rs`);
//! a test checks that both encodings agree.
//!
//! They are separate from the engine's model so that the wire format is stated in
//! one place, documented in the OpenAPI document, and can stay stable while the
//! engine's types change.

use ci_engine::{Attempt, AttemptOutcome, Run, RunStatus, StepRecord, StepStatus};
use poem_openapi::{Enum, Object};
use serde::Serialize;

/// Status of a run, as shown by the API.
#[derive(Enum, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "snake_case", rename = "RunStatus")]
#[serde(rename_all = "snake_case")]
pub enum RunStatusDto {
    /// Created; no step has started yet.
    Queued,
    /// At least one step started and the run is not finished.
    Running,
    /// Every step succeeded.
    Success,
    /// At least one step ran and failed: the commit is bad.
    Failure,
    /// No step failed, but the infrastructure gave out for at least one step.
    Error,
    /// Cancelled before it finished.
    Cancelled,
}

impl RunStatusDto {
    /// The engine's status this stands for.
    pub fn to_engine(self) -> RunStatus {
        match self {
            Self::Queued => RunStatus::Queued,
            Self::Running => RunStatus::Running,
            Self::Success => RunStatus::Success,
            Self::Failure => RunStatus::Failure,
            Self::Error => RunStatus::Error,
            Self::Cancelled => RunStatus::Cancelled,
        }
    }
}

impl From<RunStatus> for RunStatusDto {
    fn from(s: RunStatus) -> Self {
        match s {
            RunStatus::Queued => Self::Queued,
            RunStatus::Running => Self::Running,
            RunStatus::Success => Self::Success,
            RunStatus::Failure => Self::Failure,
            RunStatus::Error => Self::Error,
            RunStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// Status of one step of a run.
#[derive(Enum, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "snake_case", rename = "StepStatus")]
#[serde(rename_all = "snake_case")]
pub enum StepStatusDto {
    /// Not started (waiting for its needs, a permit, a retry or the runner).
    Pending,
    /// An attempt is in flight.
    Running,
    /// The runner reported success.
    Success,
    /// The runner reported failure.
    Failure,
    /// The infrastructure gave out (retries exhausted, request rejected, runner
    /// unreachable too long).
    Error,
    /// A step it needs did not succeed, so it never ran.
    Skipped,
    /// The run was cancelled before the step finished.
    Cancelled,
}

impl From<StepStatus> for StepStatusDto {
    fn from(s: StepStatus) -> Self {
        match s {
            StepStatus::Pending => Self::Pending,
            StepStatus::Running => Self::Running,
            StepStatus::Success => Self::Success,
            StepStatus::Failure => Self::Failure,
            StepStatus::Error => Self::Error,
            StepStatus::Skipped => Self::Skipped,
            StepStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// How one attempt at a step ended.
#[derive(Enum, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "snake_case", rename = "AttemptOutcome")]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcomeDto {
    /// Still in flight.
    Running,
    /// The step ran and succeeded.
    Success,
    /// The step ran and failed.
    Failure,
    /// The runner died or dropped the connection mid-step (a crash), or gave no
    /// answer within the step timeout (the request is left open until it
    /// answers); the step is retried. Never a verdict about the commit.
    Lost,
    /// The runner refused the request; not retried.
    Rejected,
    /// The server itself stopped while the attempt was in flight; retried at the
    /// next start without counting against the attempt limit.
    Interrupted,
    /// The run was cancelled while the attempt was in flight.
    Cancelled,
}

impl From<AttemptOutcome> for AttemptOutcomeDto {
    fn from(o: AttemptOutcome) -> Self {
        match o {
            AttemptOutcome::Running => Self::Running,
            AttemptOutcome::Success => Self::Success,
            AttemptOutcome::Failure => Self::Failure,
            AttemptOutcome::Lost => Self::Lost,
            AttemptOutcome::Rejected => Self::Rejected,
            AttemptOutcome::Interrupted => Self::Interrupted,
            AttemptOutcome::Cancelled => Self::Cancelled,
        }
    }
}

/// An error answer: every 4xx and 5xx of the API has this body.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
#[oai(rename = "Error")]
pub struct ErrorBody {
    /// What went wrong, in words.
    pub message: String,
}

impl ErrorBody {
    /// An error body with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// One run in the list of runs.
#[derive(Object, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RunSummary {
    /// The commit's full hash; also the run's id.
    pub id: String,
    /// The run's status.
    pub status: RunStatusDto,
    /// Steps whose final status is `failure` or `error`, in pipeline order. Always
    /// present: empty when nothing failed (success, or not finished yet).
    pub failed_steps: Vec<String>,
    /// Branches that contained the commit when it was found.
    pub branches: Vec<String>,
    /// First line of the commit message.
    pub summary: String,
    /// When the run was created, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When its first step started, milliseconds since the Unix epoch.
    #[oai(nullable)]
    pub started_at: Option<i64>,
    /// When it reached a terminal status, milliseconds since the Unix epoch.
    #[oai(nullable)]
    pub finished_at: Option<i64>,
    /// `finished_at - started_at` once finished, in milliseconds.
    #[oai(nullable)]
    pub duration_ms: Option<i64>,
}

impl From<&Run> for RunSummary {
    fn from(run: &Run) -> Self {
        Self {
            id: run.commit.id.to_string(),
            status: run.status.into(),
            failed_steps: run.failed_steps.clone(),
            branches: run.commit.branches.clone(),
            summary: run.commit.summary.clone(),
            created_at: run.created_at,
            started_at: run.started_at,
            finished_at: run.finished_at,
            duration_ms: span(run.started_at, run.finished_at),
        }
    }
}

/// A page of runs: `GET /runs`.
#[derive(Object, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RunList {
    /// How many runs match the filters in all (not just on this page).
    pub total: u64,
    /// This page's runs, newest first.
    pub data: Vec<RunSummary>,
    /// The cursor of the next page: pass it as `after` (with the same
    /// filters) to list the runs older than this page's last. `null` on the
    /// last page.
    #[oai(nullable)]
    pub next: Option<String>,
}

/// The commit a run is about.
#[derive(Object, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// Full hash.
    pub id: String,
    /// Parent hashes, first parent first (two or more for a merge).
    pub parents: Vec<String>,
    /// Author, as `Name <email>`.
    pub author: String,
    /// Commit time, seconds since the Unix epoch.
    pub time: i64,
    /// First line of the message.
    pub summary: String,
    /// Branches that contained the commit when it was found.
    pub branches: Vec<String>,
}

/// One request of a step to the runner, whatever became of it.
#[derive(Object, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct AttemptInfo {
    /// 1 for the first attempt, then 2, 3, ...
    pub number: u32,
    /// How it ended.
    pub outcome: AttemptOutcomeDto,
    /// Why it ended so, when that is not a plain success or failure.
    #[oai(nullable)]
    pub reason: Option<String>,
    /// When the request was sent, milliseconds since the Unix epoch.
    pub started_at: i64,
    /// When the answer came, milliseconds since the Unix epoch.
    #[oai(nullable)]
    pub finished_at: Option<i64>,
    /// Duration measured by the server, milliseconds.
    #[oai(nullable)]
    pub duration_ms: Option<u64>,
    /// Duration the runner reported, milliseconds.
    #[oai(nullable)]
    pub runner_duration_ms: Option<u64>,
    /// Id of the runner of the pool the request was sent to (as in
    /// `GET /runners`); `null` for attempts recorded before runners had ids.
    #[oai(nullable)]
    pub runner: Option<String>,
}

impl From<&Attempt> for AttemptInfo {
    fn from(a: &Attempt) -> Self {
        Self {
            number: a.number,
            outcome: a.outcome.into(),
            reason: a.reason.clone(),
            started_at: a.started_at,
            finished_at: a.finished_at,
            duration_ms: a.duration_ms,
            runner_duration_ms: a.runner_duration_ms,
            runner: a.runner.clone(),
        }
    }
}

/// One step of a run.
#[derive(Object, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct StepInfo {
    /// Step name (`lint`, `build`, `test`).
    pub name: String,
    /// Current status.
    pub status: StepStatusDto,
    /// Why the step ended as it did when that is not in its last attempt
    /// (skipped, cancelled, runner unreachable too long).
    #[oai(nullable)]
    pub reason: Option<String>,
    /// Sum of the attempts' measured durations, milliseconds.
    pub duration_ms: u64,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptInfo>,
    /// Where to read the step's logs (`GET` it for plain text).
    pub log_url: String,
    /// Why the step has not started yet (or waits to be retried), while its
    /// run is under way; `null` otherwise.
    #[oai(nullable)]
    pub waiting: Option<super::waiting::WaitingInfo>,
    /// The number of the first attempt of the step's current round: 1 until
    /// the run is retried; a retry makes it one more than the step's last
    /// attempt. Attempts numbered below it were made before the latest retry
    /// (history: they count neither against the attempt limit nor in the
    /// run's new result).
    pub budget_from: u32,
}

impl StepInfo {
    fn from_record(commit: &str, step: &StepRecord) -> Self {
        Self {
            name: step.name.clone(),
            status: step.status.into(),
            reason: step.reason.clone(),
            duration_ms: step.attempts.iter().filter_map(|a| a.duration_ms).sum(),
            attempts: step.attempts.iter().map(AttemptInfo::from).collect(),
            log_url: format!("/run/{commit}/steps/{}/log", step.name),
            waiting: None,
            budget_from: step.budget_from,
        }
    }
}

/// Everything about one run: `GET /run/{commit}`.
#[derive(Object, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RunDetail {
    /// The commit's full hash; also the run's id.
    pub id: String,
    /// The run's status.
    pub status: RunStatusDto,
    /// Steps whose final status is `failure` or `error`, in pipeline order; empty
    /// when nothing failed.
    pub failed_steps: Vec<String>,
    /// Branches that contained the commit when it was found.
    pub branches: Vec<String>,
    /// First line of the commit message.
    pub summary: String,
    /// When the run was created, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When its first step started, milliseconds since the Unix epoch.
    #[oai(nullable)]
    pub started_at: Option<i64>,
    /// When it reached a terminal status, milliseconds since the Unix epoch.
    #[oai(nullable)]
    pub finished_at: Option<i64>,
    /// `finished_at - started_at` once finished, in milliseconds.
    #[oai(nullable)]
    pub duration_ms: Option<i64>,
    /// The commit: parents, author, time.
    pub commit: CommitInfo,
    /// One entry per pipeline step, in pipeline order.
    pub steps: Vec<StepInfo>,
    /// Every retry and cancel asked of the run, oldest first (empty when
    /// none was).
    pub actions: Vec<super::actions::RunActionInfo>,
}

impl From<&Run> for RunDetail {
    fn from(run: &Run) -> Self {
        let id = run.commit.id.to_string();
        Self {
            status: run.status.into(),
            failed_steps: run.failed_steps.clone(),
            branches: run.commit.branches.clone(),
            summary: run.commit.summary.clone(),
            created_at: run.created_at,
            started_at: run.started_at,
            finished_at: run.finished_at,
            duration_ms: span(run.started_at, run.finished_at),
            commit: CommitInfo {
                id: id.clone(),
                parents: run.commit.parents.iter().map(ToString::to_string).collect(),
                author: run.commit.author.clone(),
                time: run.commit.time,
                summary: run.commit.summary.clone(),
                branches: run.commit.branches.clone(),
            },
            steps: run
                .steps
                .iter()
                .map(|s| StepInfo::from_record(&id, s))
                .collect(),
            actions: run
                .actions
                .iter()
                .map(super::actions::RunActionInfo::from)
                .collect(),
            id,
        }
    }
}

fn span(start: Option<i64>, end: Option<i64>) -> Option<i64> {
    Some(end?.saturating_sub(start?).max(0))
}

#[cfg(test)]
mod tests {
    use ci_engine::testing::store_contract::{hex_id, queued_run, rich_run};
    use poem_openapi::types::ToJSON;

    use super::super::waiting::{HolderInfo, WaitingInfo};
    use super::*;

    /// `value` encoded with `serde` and with poem-openapi, as JSON values.
    fn both<T: Serialize + ToJSON>(value: &T) -> (serde_json::Value, serde_json::Value) {
        let with_serde = serde_json::to_value(value).expect("serde encodes it");
        let with_poem = value.to_json().expect("poem-openapi encodes it");
        (with_serde, with_poem)
    }

    #[test]
    fn serde_writes_what_poem_openapi_writes() {
        let rich = rich_run(&hex_id(7), 3);
        let queued = queued_run(&hex_id(8), 4, &["main"]);
        for run in [&rich, &queued] {
            let (a, b) = both(&RunDetail::from(run));
            assert_eq!(a, b, "RunDetail of {}", run.id());
            let (a, b) = both(&RunSummary::from(run));
            assert_eq!(a, b, "RunSummary of {}", run.id());
        }
        for next in [None, Some("42".to_owned())] {
            let list = RunList {
                total: 2,
                data: vec![RunSummary::from(&rich), RunSummary::from(&queued)],
                next,
            };
            let (a, b) = both(&list);
            assert_eq!(a, b, "RunList");
        }

        // Waiting reasons, with every field set and with none.
        let full = WaitingInfo {
            kind: "permit".into(),
            sentence: "waits for a permit".into(),
            need: Some("build".into()),
            need_status: Some(StepStatusDto::Failure),
            class: Some("build".into()),
            scope: Some("runner".into()),
            limit: Some(1),
            holders: vec![HolderInfo {
                commit: hex_id(9),
                step: "build".into(),
                attempt: 2,
                runner: "sim-1".into(),
                given_up: true,
            }],
            runners: vec!["sim-1".into(), "sim-2".into()],
            attempt: Some(3),
            since: Some(1_700_000_000_000),
            gives_up_at: Some(1_700_000_600_000),
            until: Some(-1),
        };
        // No field set but the kind and the sentence.
        let empty = WaitingInfo::from(&ci_engine::Waiting::Dispatching);
        let mut detail = RunDetail::from(&rich);
        detail.steps[0].waiting = Some(full);
        detail.steps[1].waiting = Some(empty);
        let (a, b) = both(&detail);
        assert_eq!(a, b, "RunDetail with waiting reasons");
        // Not vacuous: the fields that are most likely to differ are there.
        assert_eq!(a["steps"][0]["waiting"]["holders"][0]["given_up"], true);
        assert_eq!(a["steps"][1]["waiting"]["need"], serde_json::Value::Null);
        assert_eq!(a["status"], "failure");
    }
}
