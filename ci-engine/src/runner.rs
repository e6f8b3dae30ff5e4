//! Who runs steps: the [`StepRunner`] trait and the ways a run can go wrong.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::CommitId;

/// One step of one commit, to be run once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRequest {
    /// Step name, as in the pipeline (`lint`, `build`, `test`, …).
    pub step: String,
    /// The commit to run it on.
    pub commit: CommitId,
    /// Attempt number, from 1; for logs and request ids.
    pub attempt: u32,
}

/// What the runner said about a step that ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepVerdict {
    /// The step succeeded.
    Success,
    /// The step ran and failed.
    Failure,
}

/// A step that ran to completion on the runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepOutput {
    /// Whether it succeeded.
    pub verdict: StepVerdict,
    /// What it printed.
    pub logs: String,
    /// How long the runner says it took, if it says.
    pub duration: Option<Duration>,
}

/// Why a step did not produce a verdict. The engine treats each kind differently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// Nothing was sent: the runner could not be reached (connection refused, no
    /// route). The engine waits for the runner and spends no attempt.
    #[error("runner unreachable: {0}")]
    Unreachable(String),
    /// The request was sent and the connection closed before the answer (the
    /// runner died or restarted, or something between reset the connection). An
    /// infrastructure error: retried within the attempt limit.
    #[error("step lost: {0}")]
    Lost(String),
    /// The runner refused the request (it does not know the step, the request is
    /// malformed): a configuration error. Not retried.
    #[error("runner rejected the request: {0}")]
    Rejected(String),
    /// The runner answered something that is not the protocol. Treated like
    /// [`Lost`](Self::Lost): retried within the limit.
    #[error("runner protocol error: {0}")]
    Protocol(String),
}

/// What [`StepRunner::probe`] found out about the runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The runner answered: it accepts requests.
    Up,
    /// The runner could not be reached; the text says why.
    Down(String),
    /// This runner has no way to ask without running a step; the engine then
    /// probes with a real step (see [`StepRunner::probe`]).
    Unsupported,
}

/// Runs one step of one commit and says what happened.
///
/// # Contract
///
/// - `Ok` means the step ran: its verdict is a result about the commit.
/// - `Err(Unreachable)` must only be returned when the request surely did not reach
///   the runner; the engine may send it again at once when the runner is back.
/// - `Err(Lost)` when the request may have been started and the connection to
///   the runner closed (it crashed or restarted) before the answer: the engine
///   retries at once, waiting for the runner to accept requests again.
/// - `Err(Protocol)` when the runner answered something that is not the
///   protocol: the engine retries after a backoff.
/// - `Err(Rejected)` when retrying cannot help.
/// - The engine enforces concurrency rules and its own per-step timeout; a
///   runner need not, and should not cut a request short on a clock of its own:
///   when the engine gives up on a request (timeout, cancel) it keeps waiting for
///   the answer, holding the request's permit, so that the runner never holds more
///   requests of a class than the class allows. Implementations must be safe to
///   call concurrently.
/// - Cancel safety: the engine drops the future only when it stops for good
///   (after the shutdown grace) or when the runner has held a request it gave up
///   on for longer than [`EngineConfig::abandon_limit`](crate::EngineConfig::abandon_limit)
///   and then answered a probe.
#[cfg_attr(any(test, feature = "test-util"), mockall::automock)]
#[async_trait]
pub trait StepRunner: Send + Sync {
    /// Runs `request` once.
    async fn run(&self, request: &StepRequest) -> Result<StepOutput, RunnerError>;

    /// Asks whether the runner accepts requests, without running a step. The
    /// engine calls it, one call at a time, while the runner is down (it refused
    /// a request, or it holds a request the engine gave up on for too long), and
    /// ends the outage at the first [`Probe::Up`]. It should be cheap and answer
    /// within a few seconds.
    ///
    /// The default returns [`Probe::Unsupported`]: the engine then sends the
    /// oldest ready step as the probe, as long as its class has a free permit.
    async fn probe(&self) -> Probe {
        Probe::Unsupported
    }
}
