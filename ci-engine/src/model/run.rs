//! Runs, steps and attempts: the record the engine keeps of every commit it ran.
//!
//! A [`Run`] is keyed by its commit id (one run per commit). Its status and
//! `failed_steps` are always derived from its steps by [`Run::settle`], so the
//! three can never disagree.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::commit::{Commit, CommitId};
use super::pipeline::Pipeline;

/// Milliseconds since the Unix epoch (wall clock), used for times shown to people.
pub type UnixMillis = i64;

/// The wall clock now, in [`UnixMillis`].
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Status of a whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created; no step has started yet.
    Queued,
    /// At least one step started and the run is not finished.
    Running,
    /// Every step succeeded.
    Success,
    /// At least one step ran and failed: the commit is bad.
    Failure,
    /// No step failed, but infrastructure gave out for at least one (retries
    /// exhausted, runner rejected the request or stayed unreachable too long).
    Error,
    /// Cancelled before it finished.
    Cancelled,
}

impl RunStatus {
    /// Whether the run is finished for good.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "success" => Self::Success,
            "failure" => Self::Failure,
            "error" => Self::Error,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Every status, in declaration order.
    pub const ALL: [RunStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::Success,
        Self::Failure,
        Self::Error,
        Self::Cancelled,
    ];
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of one step of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started (waiting for its needs, a permit, a backoff or the runner).
    Pending,
    /// An attempt is in flight.
    Running,
    /// The runner reported success.
    Success,
    /// The runner reported failure.
    Failure,
    /// Infrastructure gave out (see [`RunStatus::Error`]).
    Error,
    /// A step it needs did not succeed, so it never ran.
    Skipped,
    /// The run was cancelled before the step finished.
    Cancelled,
}

impl StepStatus {
    /// Whether the step is finished for good.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    /// Whether the step counts in `failed_steps`.
    pub fn is_failed(self) -> bool {
        matches!(self, Self::Failure | Self::Error)
    }

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "success" => Self::Success,
            "failure" => Self::Failure,
            "error" => Self::Error,
            "skipped" => Self::Skipped,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt at a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Still in flight.
    Running,
    /// The step ran and succeeded.
    Success,
    /// The step ran and failed.
    Failure,
    /// The runner died, dropped the connection or timed out mid-step; retried
    /// within the attempt limit.
    Lost,
    /// The runner refused the request (a configuration error); not retried.
    Rejected,
    /// The engine itself stopped (restart, kill, shutdown) while the attempt was in
    /// flight; retried, and never counted against the attempt limit.
    Interrupted,
    /// The run was cancelled while the attempt was in flight.
    Cancelled,
}

impl AttemptOutcome {
    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Lost => "lost",
            Self::Rejected => "rejected",
            Self::Interrupted => "interrupted",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "success" => Self::Success,
            "failure" => Self::Failure,
            "lost" => Self::Lost,
            "rejected" => Self::Rejected,
            "interrupted" => Self::Interrupted,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether the attempt counts against the attempt limit.
    pub fn counts_against_limit(self) -> bool {
        !matches!(self, Self::Interrupted | Self::Cancelled)
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request of a step to the runner, whatever became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt, then 2, 3, …
    pub number: u32,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// Why it ended so, in words, when that is not plain success or failure.
    pub reason: Option<String>,
    /// Logs the runner returned (empty when it returned nothing).
    pub logs: String,
    /// When the request was sent (wall clock).
    pub started_at: UnixMillis,
    /// When the answer came (wall clock); `None` while running.
    pub finished_at: Option<UnixMillis>,
    /// Duration measured by the engine, milliseconds.
    pub duration_ms: Option<u64>,
    /// Duration reported by the runner, milliseconds.
    pub runner_duration_ms: Option<u64>,
    /// The id of the runner the request went to (see
    /// [`RunnerPool`](crate::RunnerPool)); `None` in records from before runners
    /// had ids.
    #[serde(default)]
    pub runner: Option<String>,
}

impl Attempt {
    /// Records that the engine stopped while this attempt was in flight.
    pub fn interrupt(&mut self) {
        self.outcome = AttemptOutcome::Interrupted;
        self.reason = Some("the engine stopped while the step was in flight".into());
        self.finished_at = Some(now_millis());
    }

    /// Attempt `number` with `outcome`, started at `started_at`, with no reason,
    /// logs, end or durations yet.
    pub fn new(number: u32, outcome: AttemptOutcome, started_at: UnixMillis) -> Self {
        Self {
            number,
            outcome,
            reason: None,
            logs: String::new(),
            started_at,
            finished_at: None,
            duration_ms: None,
            runner_duration_ms: None,
            runner: None,
        }
    }
}

/// One step of a run and every attempt at it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step name, as in the pipeline.
    pub name: String,
    /// Current status.
    pub status: StepStatus,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// Why the step ended as it did when that is not in its last attempt
    /// (skipped, cancelled, runner unreachable too long).
    pub reason: Option<String>,
    /// The number of the first attempt of the step's current round: 1, until
    /// a retry of the run (see [`Run::retry`]) starts a new round. Attempts
    /// numbered below it are history: they count neither against the attempt
    /// limit nor as a start of the run.
    #[serde(default = "first_attempt")]
    pub budget_from: u32,
}

fn first_attempt() -> u32 {
    1
}

impl StepRecord {
    /// A pending step with no attempts.
    pub fn pending(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: StepStatus::Pending,
            attempts: Vec::new(),
            reason: None,
            budget_from: 1,
        }
    }

    /// Attempts of the current round (numbered from
    /// [`budget_from`](Self::budget_from)) that count against the attempt limit.
    pub fn counted_attempts(&self) -> u32 {
        let n = self
            .current_attempts()
            .filter(|a| a.outcome.counts_against_limit())
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The number the step's next attempt gets: one past every attempt made
    /// (numbers are never reused, across rounds too).
    pub fn next_attempt_number(&self) -> u32 {
        self.attempts
            .iter()
            .map(|a| a.number)
            .max()
            .unwrap_or(0)
            .saturating_add(1)
    }

    /// Ends the step `cancelled`, with its attempt in flight, if any; returns
    /// that attempt's number.
    pub fn cancel(&mut self) -> Option<u32> {
        const WHY: &str = "the run was cancelled";
        let cancelled = self
            .attempts
            .last_mut()
            .filter(|a| a.outcome == AttemptOutcome::Running)
            .map(|a| {
                a.outcome = AttemptOutcome::Cancelled;
                a.reason = Some(WHY.into());
                a.finished_at = Some(now_millis());
                a.number
            });
        self.status = StepStatus::Cancelled;
        self.reason = Some(WHY.into());
        cancelled
    }

    /// The attempts of the current round, oldest first.
    pub fn current_attempts(&self) -> impl Iterator<Item = &Attempt> {
        self.attempts
            .iter()
            .filter(|a| a.number >= self.budget_from)
    }

    /// Whether the step did something in the current round: an attempt, or an
    /// end other than a success carried over from before a retry (a retry
    /// moves every step's budget past its attempts, so a carried-over success
    /// is one with no attempt of the current round after the first round).
    fn touched(&self) -> bool {
        let carried_success = self.status == StepStatus::Success && self.budget_from > 1;
        self.current_attempts().next().is_some() || self.status.is_terminal() && !carried_success
    }

    /// Whether a retry of the run runs the step again: it ended, and not in
    /// success.
    pub fn is_retryable(&self) -> bool {
        self.status.is_terminal() && self.status != StepStatus::Success
    }

    /// The last attempt's logs, if any attempt was made.
    pub fn logs(&self) -> Option<&str> {
        self.attempts.last().map(|a| a.logs.as_str())
    }
}

/// The record of one commit's pass through the pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The commit, and so the run's id.
    pub commit: Commit,
    /// Order in which the engine received commits: lower is older. Unique per store.
    pub seq: u64,
    /// Derived from the steps by [`settle`](Self::settle).
    pub status: RunStatus,
    /// Steps whose final status is `failure` or `error`, in pipeline order. Derived.
    pub failed_steps: Vec<String>,
    /// One record per pipeline step, in pipeline order.
    pub steps: Vec<StepRecord>,
    /// When the run was created (wall clock).
    pub created_at: UnixMillis,
    /// When its first step started.
    pub started_at: Option<UnixMillis>,
    /// When it reached a terminal status.
    pub finished_at: Option<UnixMillis>,
    /// The queue position the run's latest retry gave it: its steps are
    /// dispatched after every step that was waiting before the retry. `None`
    /// until the run is retried; [`seq`](Self::seq) is its position before.
    #[serde(default)]
    pub retry_seq: Option<u64>,
    /// Every retry and cancel asked of the run, oldest first.
    #[serde(default)]
    pub actions: Vec<RunAction>,
}

/// What was asked of a run from outside the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunActionKind {
    /// Run the steps that did not succeed again.
    Retry,
    /// Stop the run.
    Cancel,
}

impl RunActionKind {
    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Cancel => "cancel",
        }
    }
}

impl fmt::Display for RunActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A retry or cancel of a run, as recorded on the run: what, when, and who
/// asked (as the embedder names them, e.g. a client's address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAction {
    /// What was asked.
    pub kind: RunActionKind,
    /// When the engine took it (wall clock).
    pub at: UnixMillis,
    /// Who asked, when known.
    pub by: Option<String>,
}

impl Run {
    /// A queued run of `commit` through `pipeline`.
    pub fn new(commit: Commit, seq: u64, pipeline: &Pipeline) -> Self {
        Self {
            commit,
            seq,
            status: RunStatus::Queued,
            failed_steps: Vec::new(),
            steps: pipeline
                .steps()
                .iter()
                .map(|s| StepRecord::pending(s.name.clone()))
                .collect(),
            created_at: now_millis(),
            started_at: None,
            finished_at: None,
            retry_seq: None,
            actions: Vec::new(),
        }
    }

    /// The run's position in the dispatch queue: lower goes first. Its
    /// [`seq`](Self::seq), or the position its latest retry gave it.
    pub fn queue_position(&self) -> u64 {
        self.retry_seq.unwrap_or(self.seq)
    }

    /// Starts a new round of the run: every step that ended other than in
    /// success (failed, errored, cancelled, or skipped because of one of those)
    /// is pending again with a fresh attempt budget, its earlier attempts kept
    /// as history; the run is queued again at `position`, which must be later
    /// than every run now queued. Returns the names of the steps that will run
    /// again (empty, and nothing changed, when every step succeeded or the run
    /// is not finished).
    pub fn retry(&mut self, position: u64, action: RunAction) -> Vec<String> {
        if !self.status.is_terminal() || !self.steps.iter().any(StepRecord::is_retryable) {
            return Vec::new();
        }
        let mut again = Vec::new();
        for step in &mut self.steps {
            step.budget_from = step.next_attempt_number();
            if step.is_retryable() {
                step.status = StepStatus::Pending;
                step.reason = None;
                again.push(step.name.clone());
            }
        }
        self.retry_seq = Some(position);
        self.actions.push(action);
        self.started_at = None;
        self.finished_at = None;
        self.settle();
        again
    }

    /// The run's id: its commit id.
    pub fn id(&self) -> &CommitId {
        &self.commit.id
    }

    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Status the steps imply: `cancelled` if any step was cancelled; otherwise,
    /// while any step is pending or running, `running` once something happened
    /// in the current round (an attempt, or a step's end other than a success
    /// carried over from before a retry) and `queued` before; otherwise `failure` if a step failed, else `error` if a
    /// step errored, else `success`. Skipped steps follow from another step's
    /// result and add nothing.
    pub fn derived_status(&self) -> RunStatus {
        let any = |f: fn(StepStatus) -> bool| self.steps.iter().any(|s| f(s.status));
        if any(|s| s == StepStatus::Cancelled) {
            RunStatus::Cancelled
        } else if any(|s| !s.is_terminal()) {
            if self.steps.iter().any(StepRecord::touched) {
                RunStatus::Running
            } else {
                RunStatus::Queued
            }
        } else if any(|s| s == StepStatus::Failure) {
            RunStatus::Failure
        } else if any(|s| s == StepStatus::Error) {
            RunStatus::Error
        } else {
            RunStatus::Success
        }
    }

    /// Recomputes `status` and `failed_steps` from the steps and stamps
    /// `started_at`/`finished_at`. Returns whether the status changed.
    pub fn settle(&mut self) -> bool {
        let before = self.status;
        self.status = self.derived_status();
        self.failed_steps = self
            .steps
            .iter()
            .filter(|s| s.status.is_failed())
            .map(|s| s.name.clone())
            .collect();
        if self.status != RunStatus::Queued && self.started_at.is_none() {
            self.started_at = Some(now_millis());
        }
        if self.status.is_terminal() && self.finished_at.is_none() {
            self.finished_at = Some(now_millis());
        }
        before != self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Run {
        Run::new(Commit::bare("abc"), 0, &Pipeline::standard())
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(RunStatus::parse("Success"), None);
        assert_eq!(StepStatus::parse("skipped"), Some(StepStatus::Skipped));
        assert_eq!(
            AttemptOutcome::parse("interrupted"),
            Some(AttemptOutcome::Interrupted)
        );
    }

    #[test]
    fn derived_status_follows_the_steps() {
        let mut r = run();
        assert!(!r.settle());
        assert_eq!(r.status, RunStatus::Queued);

        r.steps[0].status = StepStatus::Success;
        r.settle();
        assert_eq!(r.status, RunStatus::Running);
        assert!(r.started_at.is_some());

        r.steps[1].status = StepStatus::Error;
        r.steps[2].status = StepStatus::Skipped;
        r.settle();
        assert_eq!(r.status, RunStatus::Error);
        assert_eq!(r.failed_steps, ["build"]);
        assert!(r.finished_at.is_some());

        r.steps[0].status = StepStatus::Failure;
        r.settle();
        assert_eq!(r.status, RunStatus::Failure, "a failure outranks an error");
        assert_eq!(r.failed_steps, ["lint", "build"]);
    }

    #[test]
    fn cancelled_outranks_everything() {
        let mut r = run();
        r.steps[0].status = StepStatus::Failure;
        r.steps[1].status = StepStatus::Cancelled;
        r.steps[2].status = StepStatus::Cancelled;
        r.settle();
        assert_eq!(r.status, RunStatus::Cancelled);
    }

    #[test]
    fn a_retry_starts_a_new_round_of_the_steps_that_did_not_succeed() {
        let mut r = run();
        r.steps[0].status = StepStatus::Success;
        r.steps[0]
            .attempts
            .push(Attempt::new(1, AttemptOutcome::Success, 0));
        r.steps[1].status = StepStatus::Failure;
        r.steps[1]
            .attempts
            .push(Attempt::new(1, AttemptOutcome::Lost, 0));
        r.steps[1]
            .attempts
            .push(Attempt::new(2, AttemptOutcome::Failure, 0));
        r.steps[2].status = StepStatus::Skipped;
        r.settle();
        assert_eq!(r.status, RunStatus::Failure);
        let action = RunAction {
            kind: RunActionKind::Retry,
            at: 5,
            by: None,
        };

        assert_eq!(r.retry(7, action.clone()), ["build", "test"]);
        assert_eq!(
            r.status,
            RunStatus::Queued,
            "nothing of the new round started"
        );
        assert_eq!((r.started_at, r.finished_at), (None, None));
        assert_eq!(r.queue_position(), 7);
        assert_eq!(r.seq, 0);
        assert_eq!(
            r.steps.iter().map(|s| s.budget_from).collect::<Vec<_>>(),
            [2, 3, 1]
        );
        assert_eq!(r.steps[1].counted_attempts(), 0, "a fresh budget");
        assert_eq!(r.steps[1].attempts.len(), 2, "the history is kept");
        assert_eq!(r.steps[0].status, StepStatus::Success);

        r.steps[1]
            .attempts
            .push(Attempt::new(3, AttemptOutcome::Running, 0));
        r.steps[1].status = StepStatus::Running;
        r.settle();
        assert_eq!(r.status, RunStatus::Running);

        let unfinished = r.clone();
        assert!(
            r.retry(9, action).is_empty(),
            "an unfinished run is not retried"
        );
        assert_eq!(r, unfinished);
    }

    #[test]
    fn a_run_that_succeeded_has_nothing_to_retry() {
        let mut r = run();
        for s in &mut r.steps {
            s.status = StepStatus::Success;
        }
        r.settle();
        let before = r.clone();
        let action = RunAction {
            kind: RunActionKind::Retry,
            at: 5,
            by: None,
        };
        assert!(r.retry(7, action).is_empty());
        assert_eq!(r, before);
    }

    #[test]
    fn interrupted_attempts_do_not_count() {
        let mut s = StepRecord::pending("test");
        for outcome in [AttemptOutcome::Interrupted, AttemptOutcome::Lost] {
            s.attempts.push(Attempt::new(1, outcome, 0));
        }
        assert_eq!(s.counted_attempts(), 1);
    }
}
