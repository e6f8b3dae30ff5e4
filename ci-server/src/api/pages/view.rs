//! What the templates show: the API's JSON shapes ([`RunSummary`],
//! [`RunDetail`]) turned into strings ready to print, plus the logs, which the
//! JSON leaves out. The templates escape every one of these strings.

use ci_engine::Run;
use poem_openapi::types::ToJSON;

use super::{ansi, format};
use crate::api::model::{AttemptInfo, RunDetail, RunSummary, StepInfo, StepStatusDto};

/// How many hex digits of a commit a list shows.
const SHORT_COMMIT: usize = 10;

/// The lowercase word the API uses for `value` (a status or an outcome).
pub fn word<T: ToJSON>(value: &T) -> String {
    match value.to_json() {
        Some(serde_json::Value::String(s)) => s,
        other => other.map(|v| v.to_string()).unwrap_or_default(),
    }
}

/// One row of the list of runs.
#[derive(Debug, Clone)]
pub struct RunRow {
    /// Full commit hash.
    pub id: String,
    /// Its first digits, as shown.
    pub short: String,
    /// The run's status word (`success`, `failure`, ...).
    pub status: String,
    /// Steps that failed or errored, in pipeline order.
    pub failed_steps: Vec<String>,
    /// Branches the commit was found on, comma-separated.
    pub branches: String,
    /// First line of the commit message.
    pub summary: String,
    /// When the run was created, as shown.
    pub when: String,
    /// When the run was created, RFC 3339.
    pub when_iso: String,
    /// How long it took, once finished.
    pub duration: Option<String>,
}

impl From<&RunSummary> for RunRow {
    fn from(run: &RunSummary) -> Self {
        Self {
            id: run.id.clone(),
            short: run.id.chars().take(SHORT_COMMIT).collect(),
            status: word(&run.status),
            failed_steps: run.failed_steps.clone(),
            branches: run.branches.join(", "),
            summary: run.summary.clone(),
            when: format::time(run.created_at),
            when_iso: format::iso_time(run.created_at),
            duration: millis(run.duration_ms),
        }
    }
}

/// Everything the run page shows.
#[derive(Debug, Clone)]
pub struct RunView {
    /// Full commit hash.
    pub id: String,
    /// The run's status word.
    pub status: String,
    /// Steps that failed or errored.
    pub failed_steps: Vec<String>,
    /// First line of the commit message.
    pub summary: String,
    /// The commit's author, `Name <email>`.
    pub author: String,
    /// Branches the commit was found on, comma-separated.
    pub branches: String,
    /// Parent hashes, first parent first.
    pub parents: Vec<String>,
    /// When the run was created.
    pub created: String,
    /// When its first step started.
    pub started: Option<String>,
    /// When it finished.
    pub finished: Option<String>,
    /// How long it took, once finished.
    pub duration: Option<String>,
    /// The pipeline's steps, in order.
    pub steps: Vec<StepView>,
    /// Every retry and cancel asked of the run, oldest first.
    pub actions: Vec<ActionView>,
}

/// A retry or cancel of the run, on the run page.
#[derive(Debug, Clone)]
pub struct ActionView {
    /// `retry` or `cancel`.
    pub kind: String,
    /// When the server took it.
    pub when: String,
    /// Who asked (the client's address), when known.
    pub by: Option<String>,
}

/// One step on the run page.
#[derive(Debug, Clone)]
pub struct StepView {
    /// Step name.
    pub name: String,
    /// Step status word (`pending`, `running`, `success`, ...).
    pub status: String,
    /// Why it ended so, when its last attempt does not say.
    pub reason: Option<String>,
    /// Why it has not started yet, while it waits.
    pub waiting_sentence: Option<String>,
    /// Sum of its attempts' durations.
    pub duration: String,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptView>,
}

/// One attempt at a step on the run page.
#[derive(Debug, Clone)]
pub struct AttemptView {
    /// 1, 2, 3, ...
    pub number: u32,
    /// How it ended (`running`, `success`, `lost`, ...).
    pub outcome: String,
    /// The runner it was sent to.
    pub runner: Option<String>,
    /// Why it ended so.
    pub reason: Option<String>,
    /// When it was sent.
    pub started: String,
    /// How long it took, once answered.
    pub duration: Option<String>,
    /// Its logs, without terminal escape sequences.
    pub log: String,
    /// Made before the run's latest retry (numbered below the step's
    /// `budget_from`).
    pub earlier: bool,
}

impl RunView {
    /// The view of `run`, built from `detail`, the same [`RunDetail`]
    /// `GET /run/{commit}` answers (with the engine's `waiting` filled in), with
    /// each attempt's logs from `run`.
    pub fn new(run: &Run, detail: RunDetail) -> Self {
        let steps = detail
            .steps
            .iter()
            .map(|step| {
                let record = run.step(&step.name);
                StepView {
                    name: step.name.clone(),
                    status: word(&step.status),
                    reason: step.reason.clone(),
                    waiting_sentence: (step.status == StepStatusDto::Pending)
                        .then(|| waiting_sentence(step))
                        .flatten(),
                    duration: format::duration(step.duration_ms),
                    attempts: step
                        .attempts
                        .iter()
                        .map(|a| {
                            let logs = record
                                .and_then(|r| r.attempts.iter().find(|x| x.number == a.number))
                                .map_or("", |x| x.logs.as_str());
                            AttemptView::new(a, logs, a.number < step.budget_from)
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            id: detail.id,
            status: word(&detail.status),
            failed_steps: detail.failed_steps,
            summary: detail.summary,
            author: detail.commit.author,
            branches: detail.branches.join(", "),
            parents: detail.commit.parents,
            created: format::time(detail.created_at),
            started: detail.started_at.map(format::time),
            finished: detail.finished_at.map(format::time),
            duration: millis(detail.duration_ms),
            steps,
            actions: detail
                .actions
                .iter()
                .map(|a| ActionView {
                    kind: a.kind.clone(),
                    when: format::time(a.at),
                    by: a.by.clone(),
                })
                .collect(),
        }
    }
}

impl AttemptView {
    fn new(a: &AttemptInfo, logs: &str, earlier: bool) -> Self {
        Self {
            number: a.number,
            outcome: word(&a.outcome),
            runner: a.runner.clone(),
            reason: a.reason.clone(),
            started: format::time(a.started_at),
            duration: a.duration_ms.map(format::duration),
            log: ansi::strip_ansi(logs),
            earlier,
        }
    }
}

/// Why `step` is waiting, in one sentence, while it is pending.
///
/// The run page prints it under the step while the step is pending.
/// Why a step waits, in one sentence, when the engine said so (the page's
/// script reads the same `waiting.sentence` from `GET /run/{commit}`).
pub fn waiting_sentence(step: &StepInfo) -> Option<String> {
    step.waiting.as_ref().map(|w| w.sentence.clone())
}

fn millis(ms: Option<i64>) -> Option<String> {
    ms.map(|ms| format::duration(u64::try_from(ms).unwrap_or(0)))
}
