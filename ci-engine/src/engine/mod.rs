//! The scheduler: [`Engine`] takes commits from a [`CommitSource`], records runs in
//! a [`RunStore`] and drives their steps through a [`RunnerPool`] of
//! [`StepRunner`]s.
//!
//! One task owns all scheduling state (in `scheduler`), so the rules are plain
//! sequential code: a step is dispatched when its needs have succeeded and a
//! runner that is up has a free permit for its concurrency class within its
//! cap; among ready steps the oldest commit goes first. Runner calls run in spawned tasks and come
//! back to the owner as results. Every state change is written to the store
//! before it is announced as an [`EngineEvent`].

mod config;
mod events;
mod scheduler;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};

pub use config::{ConfigError, EngineConfig};
pub use events::EngineEvent;

use crate::model::{CommitId, Pipeline};
use crate::pool::{ClassStatus, RunnerPool, RunnerStatus};
use crate::runner::StepRunner;
use crate::source::CommitSource;
use crate::store::{RunStore, StoreError};
use crate::waiting::StepWait;

/// Why the engine stopped, or why a request to it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed; the engine stops rather than run steps it cannot record.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine is not running (not started yet, or stopped).
    #[error("the engine is not running")]
    NotRunning,
    /// No run for that commit.
    #[error("no run for commit {0}")]
    UnknownRun(CommitId),
}

/// What [`EngineHandle::cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The run was unfinished and is now `cancelled`.
    Cancelled,
    /// The run had already finished; nothing changed.
    AlreadyFinished,
}

/// What [`EngineHandle::retry`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryOutcome {
    /// The run is queued again; these steps (in pipeline order) run again
    /// as new attempts.
    Retried {
        /// The steps that run again.
        steps: Vec<String>,
    },
    /// The run is queued or running; nothing changed.
    NotFinished,
    /// Every step of the run succeeded; nothing changed.
    NothingToRetry,
}

pub(crate) enum Command {
    Cancel {
        commit: CommitId,
        by: Option<String>,
        reply: oneshot::Sender<Result<CancelOutcome, EngineError>>,
    },
    Retry {
        commit: CommitId,
        by: Option<String>,
        reply: oneshot::Sender<Result<RetryOutcome, EngineError>>,
    },
    Runners {
        reply: oneshot::Sender<Vec<RunnerStatus>>,
    },
    Waiting {
        commit: CommitId,
        reply: oneshot::Sender<Vec<StepWait>>,
    },
    Classes {
        reply: oneshot::Sender<Vec<ClassStatus>>,
    },
}

/// A cheap, cloneable way to talk to a running [`Engine`]: subscribe to events,
/// cancel runs.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::UnboundedSender<Command>,
    events: broadcast::Sender<EngineEvent>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("engine_running", &!self.commands.is_closed())
            .field("subscribers", &self.events.receiver_count())
            .finish()
    }
}

impl EngineHandle {
    /// A receiver of every event sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.events.subscribe()
    }

    /// Cancels the run of `commit`: pending steps never start, in-flight attempts
    /// are recorded `cancelled` (their requests stay open, holding their permits,
    /// until the runner answers them), the run ends `cancelled`. Answered during
    /// the shutdown grace too.
    ///
    /// # Errors
    /// [`EngineError::UnknownRun`] when the commit has no run,
    /// [`EngineError::NotRunning`] when the engine has stopped.
    pub async fn cancel(&self, commit: &CommitId) -> Result<CancelOutcome, EngineError> {
        self.cancel_by(commit, None).await
    }

    /// [`cancel`](Self::cancel), recording `by` (who asked: a user, a
    /// client's address) with the cancel on the run (see
    /// [`Run::actions`](crate::Run::actions)). A cancel of a finished run is
    /// not recorded.
    ///
    /// # Errors
    /// As [`cancel`](Self::cancel).
    pub async fn cancel_by(
        &self,
        commit: &CommitId,
        by: Option<String>,
    ) -> Result<CancelOutcome, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Cancel {
                commit: commit.clone(),
                by,
                reply,
            })
            .map_err(|_| EngineError::NotRunning)?;
        answer.await.map_err(|_| EngineError::NotRunning)?
    }

    /// Runs again the steps of `commit`'s finished run that did not succeed
    /// (failed, errored, cancelled, and those skipped because of them), as new
    /// attempts of the same run; every earlier attempt stays in its history.
    /// The run is queued again behind every step already waiting (a retry is a
    /// new request), each retried step gets a fresh attempt budget (see
    /// [`StepRecord::budget_from`](crate::StepRecord::budget_from)), and the
    /// run ends in one new terminal status. The change is stored before this
    /// answers, so a restart carries it on.
    ///
    /// # Errors
    /// [`EngineError::UnknownRun`] when the commit has no run (a full commit id
    /// is needed), [`EngineError::NotRunning`] when the engine is not running
    /// or shutting down, [`EngineError::Store`] when the store fails.
    pub async fn retry(&self, commit: &CommitId) -> Result<RetryOutcome, EngineError> {
        self.retry_by(commit, None).await
    }

    /// [`retry`](Self::retry), recording `by` (who asked) with the retry on
    /// the run.
    ///
    /// # Errors
    /// As [`retry`](Self::retry).
    pub async fn retry_by(
        &self,
        commit: &CommitId,
        by: Option<String>,
    ) -> Result<RetryOutcome, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Retry {
                commit: commit.clone(),
                by,
                reply,
            })
            .map_err(|_| EngineError::NotRunning)?;
        answer.await.map_err(|_| EngineError::NotRunning)?
    }

    /// Why each step of `commit`'s run that has not started (or is waiting to
    /// be retried) waits, in pipeline order; empty when the run is not under
    /// way (finished, or unknown to the engine).
    ///
    /// # Errors
    /// [`EngineError::NotRunning`] when the engine is not running.
    pub async fn waiting(&self, commit: &CommitId) -> Result<Vec<StepWait>, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Waiting {
                commit: commit.clone(),
                reply,
            })
            .map_err(|_| EngineError::NotRunning)?;
        answer.await.map_err(|_| EngineError::NotRunning)
    }

    /// Each concurrency class now: how many steps wait ready, how many
    /// requests are open, in pipeline order (for queue-depth metrics).
    ///
    /// # Errors
    /// [`EngineError::NotRunning`] when the engine is not running.
    pub async fn classes(&self) -> Result<Vec<ClassStatus>, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Classes { reply })
            .map_err(|_| EngineError::NotRunning)?;
        answer.await.map_err(|_| EngineError::NotRunning)
    }

    /// Each runner of the pool as the engine sees it now, in pool order.
    ///
    /// # Errors
    /// [`EngineError::NotRunning`] when the engine is not running.
    pub async fn runners(&self) -> Result<Vec<RunnerStatus>, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Runners { reply })
            .map_err(|_| EngineError::NotRunning)?;
        answer.await.map_err(|_| EngineError::NotRunning)
    }
}

/// The CI engine: a pipeline, runners and a store, ready to take commits.
pub struct Engine {
    pipeline: Arc<Pipeline>,
    runners: RunnerPool,
    store: Arc<dyn RunStore>,
    config: EngineConfig,
    handle: EngineHandle,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<&str> = self
            .pipeline
            .steps()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        f.debug_struct("Engine")
            .field("steps", &steps)
            .field("runners", &self.runners)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine that runs `pipeline` on one `runner` (a pool of one, with the
    /// id `runner`) and records in `store`.
    ///
    /// # Errors
    /// [`ConfigError`] when `config` fails [`EngineConfig::validate`].
    pub fn new(
        pipeline: Pipeline,
        runner: Arc<dyn StepRunner>,
        store: Arc<dyn RunStore>,
        config: EngineConfig,
    ) -> Result<Self, ConfigError> {
        Self::with_pool(pipeline, RunnerPool::single(runner), store, config)
    }

    /// An engine that runs `pipeline` on the runners of `runners` (see
    /// [`crate::pool`] for how steps are spread) and records in `store`.
    ///
    /// # Errors
    /// [`ConfigError`] when `config` fails [`EngineConfig::validate`].
    pub fn with_pool(
        pipeline: Pipeline,
        runners: RunnerPool,
        store: Arc<dyn RunStore>,
        config: EngineConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(config.event_capacity);
        Ok(Self {
            pipeline: Arc::new(pipeline),
            runners,
            store,
            config,
            handle: EngineHandle {
                commands: commands_tx,
                events,
            },
            commands,
        })
    }

    /// A handle for events and cancellation; valid before and while [`run`](Self::run) runs.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// The pipeline the engine runs.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Runs until `shutdown` completes or the source is exhausted and every run has
    /// finished.
    ///
    /// At start, runs the store holds as queued or running are taken up again; an
    /// attempt that was in flight is recorded as interrupted and retried without
    /// counting against the limit. At shutdown the engine stops taking commits and
    /// starting steps, lets in-flight steps finish for up to
    /// [`EngineConfig::shutdown_grace`] (answering cancels meanwhile), records
    /// what is still in flight as `interrupted`, and returns; what it did not
    /// finish is taken up at the next start.
    ///
    /// # Errors
    /// [`EngineError::Store`] when the store fails; the engine stops at once.
    pub async fn run(
        self,
        source: Box<dyn CommitSource>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), EngineError> {
        let scheduler = scheduler::Scheduler::new(
            self.pipeline,
            self.runners,
            self.store,
            self.config,
            self.handle.events.clone(),
        );
        scheduler.run(source, shutdown, self.commands).await
    }
}
