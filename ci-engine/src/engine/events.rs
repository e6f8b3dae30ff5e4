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
    /// An attempt at a step was sent to the runner.
    StepStarted {
        /// The commit.
        commit: CommitId,
        /// The step.
        step: String,
        /// Attempt number, from 1.
        attempt: u32,
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
    },
    /// A run reached a terminal status.
    RunFinished {
        /// The commit.
        commit: CommitId,
        /// Its final status.
        status: RunStatus,
    },
    /// The runner stopped answering; dispatch waits for it.
    RunnerDown {
        /// What the runner error said.
        reason: String,
    },
    /// The runner answers again.
    RunnerUp,
}
