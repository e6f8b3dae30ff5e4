//! [`EngineEvent`]: what the engine tells the outside world as it goes.

use serde::Serialize;

use crate::model::{AttemptOutcome, CommitId, RunStatus, StepStatus};

/// A state change, sent on the engine's broadcast channel.
///
/// Events are notifications, not the record: a subscriber that needs the whole
/// state reads the [`RunStore`](crate::RunStore), which is written before the
/// event is sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EngineEvent {
    /// A run was created for a new commit.
    RunQueued {
        /// The commit.
        commit: CommitId,
        /// Its order among runs.
        seq: u64,
    },
    /// A finished run was retried (see
    /// [`EngineHandle::retry`](crate::EngineHandle::retry)): it is queued
    /// again and these steps run again.
    RunRetried {
        /// The commit.
        commit: CommitId,
        /// The run's new position in the queue.
        seq: u64,
        /// The steps that run again, in pipeline order.
        steps: Vec<String>,
    },
    /// An attempt at a step is being sent to the runner. Exactly one
    /// [`StepFinished`](Self::StepFinished) or [`StepWithdrawn`](Self::StepWithdrawn)
    /// with the same attempt number follows; attempt numbers of a step are never
    /// reused by one engine.
    StepStarted {
        /// The commit.
        commit: CommitId,
        /// The step.
        step: String,
        /// Attempt number, from 1.
        attempt: u32,
        /// The id of the runner it is sent to.
        runner: String,
    },
    /// An attempt ended.
    StepFinished {
        /// The commit.
        commit: CommitId,
        /// The step.
        step: String,
        /// Attempt number.
        attempt: u32,
        /// How the attempt ended.
        outcome: AttemptOutcome,
        /// The step's status after it (pending again when it will be retried).
        status: StepStatus,
        /// When `status` is pending: how long the retry waits before it is ready
        /// again, in milliseconds (0: at once, as soon as the runner accepts
        /// requests); if the runner still holds this attempt's request (a
        /// timeout), the retry also waits for that request to end. `None`
        /// otherwise.
        retry_in_ms: Option<u64>,
    },
    /// The attempt announced by [`StepStarted`](Self::StepStarted) never reached
    /// the runner (it was unreachable): it is not recorded, spends nothing, and
    /// the step waits for the runner. Its number is not used again.
    StepWithdrawn {
        /// The commit.
        commit: CommitId,
        /// The step.
        step: String,
        /// The withdrawn attempt's number.
        attempt: u32,
        /// Why the runner could not be reached.
        reason: String,
    },
    /// A run reached a terminal status.
    RunFinished {
        /// The commit.
        commit: CommitId,
        /// Its final status.
        status: RunStatus,
    },
    /// A runner is down (it refused a request, or it has held a request the
    /// engine gave up on for longer than the abandon limit); nothing is
    /// dispatched to it until it answers a probe. The other runners carry on.
    RunnerDown {
        /// The runner's id.
        runner: String,
        /// What the runner error said.
        reason: String,
    },
    /// A runner answers again; it takes steps again.
    RunnerUp {
        /// The runner's id.
        runner: String,
    },
}
