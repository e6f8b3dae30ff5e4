//! What `GET /events` sends, as poem-openapi types, for the OpenAPI document
//! (see [`crate::api::document`]): [`ServerSentEvent`], one event as an SSE
//! client reads it, whose `data` is the JSON text of an [`EventData`].
//!
//! The stream itself is written from the journal's JSON (the engine's
//! [`EngineEvent`](ci_engine::EngineEvent) serialized with serde, and the
//! journal's own `connected` and `reset`); these types only describe it. The
//! tests parse every kind of event the server sends with these types, so the
//! two cannot drift apart unnoticed. A new kind of engine event needs a
//! variant here, in [`EventName`] and in the tests.

use poem_openapi::{Enum, Object, Union};

use super::ResetReason;
use crate::api::model::{AttemptOutcomeDto, RunStatusDto, StepStatusDto};

/// One server-sent event of `GET /events`, as an SSE client (an
/// `EventSource`) reads it: its name, its id and its data. The name is the
/// `type` of the data; the data is one line of JSON text, an `EventData`
/// object. Comment lines (`:`) keep an idle connection open; they are not
/// events.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
#[oai(rename = "ServerSentEvent")]
pub struct ServerSentEvent {
    /// The event's name (SSE `event:`), the same as the `type` of its data.
    pub event: EventName,
    /// The event's id (SSE `id:`), `EPOCH-N`: the server's epoch and the
    /// event's number. A client sends the last one it got back in the
    /// `Last-Event-ID` header when it reconnects. Absent on a `connected`
    /// that a `reset` follows.
    #[oai(validator(pattern = "^[0-9a-z]+-[0-9]+$"))]
    pub id: Option<String>,
    /// The event's data (SSE `data:`): JSON text of an `EventData` object
    /// whose `type` is the event's name.
    pub data: String,
}

/// The name of an event of `GET /events`.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum EventName {
    /// The first event of every stream.
    Connected,
    /// The events the client asked for cannot be replayed: re-read
    /// everything.
    Reset,
    /// A run was created for a new commit.
    RunQueued,
    /// A finished run was retried: it is queued again.
    RunRetried,
    /// An attempt at a step is being sent to a runner.
    StepStarted,
    /// An attempt ended.
    StepFinished,
    /// An announced attempt never reached its runner.
    StepWithdrawn,
    /// A run reached a terminal status.
    RunFinished,
    /// A runner is down.
    RunnerDown,
    /// A runner answers again.
    RunnerUp,
}

/// The data of an event of `GET /events`: a JSON object whose `type` names
/// the event. Events are notifications, not the record: a client re-reads
/// `GET /runs` or `GET /run/{commit}` when one comes.
#[derive(Union, Clone, Debug, PartialEq, Eq)]
#[oai(discriminator_name = "type", one_of)]
pub enum EventData {
    /// `connected`.
    #[oai(mapping = "connected")]
    Connected(ConnectedEvent),
    /// `reset`.
    #[oai(mapping = "reset")]
    Reset(ResetEvent),
    /// `run_queued`.
    #[oai(mapping = "run_queued")]
    RunQueued(RunQueuedEvent),
    /// `run_retried`.
    #[oai(mapping = "run_retried")]
    RunRetried(RunRetriedEvent),
    /// `step_started`.
    #[oai(mapping = "step_started")]
    StepStarted(StepStartedEvent),
    /// `step_finished`.
    #[oai(mapping = "step_finished")]
    StepFinished(StepFinishedEvent),
    /// `step_withdrawn`.
    #[oai(mapping = "step_withdrawn")]
    StepWithdrawn(StepWithdrawnEvent),
    /// `run_finished`.
    #[oai(mapping = "run_finished")]
    RunFinished(RunFinishedEvent),
    /// `runner_down`.
    #[oai(mapping = "runner_down")]
    RunnerDown(RunnerDownEvent),
    /// `runner_up`.
    #[oai(mapping = "runner_up")]
    RunnerUp(RunnerUpEvent),
}

/// `connected`: the first event of every stream, so a client knows it is
/// connected and where the stream continues from.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct ConnectedEvent {
    /// The server's epoch, new at every start: the first part of every
    /// event id.
    pub epoch: String,
    /// The id the stream continues from (`EPOCH-N`): the events after it
    /// follow.
    pub last_id: String,
}

/// Why a client got a `reset` instead of the events it asked for.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "snake_case", rename = "ResetReason")]
pub enum ResetReasonDto {
    /// The `Last-Event-ID` is from another epoch: the server restarted.
    OtherEpoch,
    /// The `Last-Event-ID` is not of the form `EPOCH-N`.
    MalformedId,
    /// The events after the `Last-Event-ID` are no longer kept.
    TooOld,
    /// The `Last-Event-ID` names an event not sent yet.
    FutureId,
    /// The client fell behind the live events further than the server
    /// keeps.
    Lagged,
    /// The server fell behind the engine and lost events.
    Gap,
}

impl From<ResetReason> for ResetReasonDto {
    fn from(reason: ResetReason) -> Self {
        match reason {
            ResetReason::OtherEpoch => Self::OtherEpoch,
            ResetReason::MalformedId => Self::MalformedId,
            ResetReason::TooOld => Self::TooOld,
            ResetReason::FutureId => Self::FutureId,
            ResetReason::Lagged => Self::Lagged,
            ResetReason::Gap => Self::Gap,
        }
    }
}

/// `reset`: the events the client asked for (by `Last-Event-ID`, or by
/// falling behind) cannot be replayed. Re-read everything, then follow the
/// events after this one. `reason` says why.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct ResetEvent {
    /// Why, as a word.
    pub reason: ResetReasonDto,
    /// Why, in a sentence.
    pub message: String,
}

/// `run_queued`: a run was created for a new commit.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct RunQueuedEvent {
    /// The commit's full hash.
    pub commit: String,
    /// The run's order among runs.
    pub seq: u64,
}

/// `run_retried`: a finished run was retried (`POST /run/{commit}/retry`):
/// it is queued again and `steps` run again as new attempts.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct RunRetriedEvent {
    /// The commit's full hash.
    pub commit: String,
    /// The run's new position in the queue (its place in listings, `seq` in
    /// `run_queued`, does not change).
    pub seq: u64,
    /// The steps that run again, in pipeline order.
    pub steps: Vec<String>,
}

/// `step_started`: an attempt at a step is being sent to a runner. A
/// `step_finished` or `step_withdrawn` with the same attempt follows.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct StepStartedEvent {
    /// The commit's full hash.
    pub commit: String,
    /// The step.
    pub step: String,
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// The id of the runner it is sent to (as in `GET /runners`).
    pub runner: String,
}

/// `step_finished`: an attempt ended. `outcome` says how; `status` is the
/// step's status after it (`pending` again when it will be retried).
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct StepFinishedEvent {
    /// The commit's full hash.
    pub commit: String,
    /// The step.
    pub step: String,
    /// The attempt's number.
    pub attempt: u32,
    /// How the attempt ended.
    pub outcome: AttemptOutcomeDto,
    /// The step's status after it.
    pub status: StepStatusDto,
    /// When `status` is `pending`: how long the retry waits before it is
    /// ready again, in milliseconds (0: at once); `null` otherwise.
    #[oai(nullable)]
    pub retry_in_ms: Option<u64>,
}

/// `step_withdrawn`: the attempt a `step_started` announced never reached
/// its runner (it was unreachable); it is not recorded and the step waits
/// for a runner.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct StepWithdrawnEvent {
    /// The commit's full hash.
    pub commit: String,
    /// The step.
    pub step: String,
    /// The withdrawn attempt's number (not used again).
    pub attempt: u32,
    /// Why the runner could not be reached.
    pub reason: String,
}

/// `run_finished`: a run reached a terminal status.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct RunFinishedEvent {
    /// The commit's full hash.
    pub commit: String,
    /// Its final status.
    pub status: RunStatusDto,
}

/// `runner_down`: a runner is down; no step goes to it until it answers a
/// probe. The other runners carry on.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct RunnerDownEvent {
    /// The runner's id.
    pub runner: String,
    /// What its error said.
    pub reason: String,
}

/// `runner_up`: a runner answers again and takes steps.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct RunnerUpEvent {
    /// The runner's id.
    pub runner: String,
}
