//! `ci-engine`: a continuous-integration engine to embed.
//!
//! The pieces, and where they live:
//!
//! - [`model`]: commits, [`Pipeline`]s (steps, needs, concurrency classes), runs,
//!   steps and attempts with their statuses.
//! - [`CommitSource`] ([`source`]): yields new commits, parents first.
//! - [`StepRunner`] ([`runner`]): runs one step of one commit; its
//!   [`RunnerError`] tells *unreachable*, *lost*, *rejected* and *protocol* apart.
//!   A [`RunnerPool`] ([`pool`]) puts several behind one engine, each with its
//!   own permits.
//! - [`RunStore`] ([`store`]): the durable record of runs; [`MemoryStore`] is the
//!   in-memory reference implementation.
//! - [`Engine`] ([`engine`]): the scheduler that takes commits from a source,
//!   records runs in a store and drives steps through a runner, overlapping
//!   commits while it keeps every concurrency class within its limit.
//! - `testing` (feature `test-util`): mockall mocks of the three traits, a
//!   deterministic simulated runner and a scripted source, for tests and benchmarks.
//!
//! The crate has no HTTP, git or SQL in it; `ci-server` brings those.

#![warn(missing_debug_implementations)]

pub mod backoff;
pub mod engine;
pub mod memory_store;
pub mod model;
pub mod pool;
pub mod runner;
pub mod source;
pub mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod waiting;

/// The attribute the three traits are implemented with (`#[async_trait]`),
/// re-exported so that an implementer needs no dependency of its own.
pub use async_trait::async_trait;
pub use backoff::doubling_backoff;
pub use engine::{
    CancelOutcome, ConfigError, Engine, EngineConfig, EngineError, EngineEvent, EngineHandle,
    RetryOutcome,
};
pub use memory_store::MemoryStore;
pub use model::{
    Attempt, AttemptOutcome, ClassSpec, Commit, CommitId, Concurrency, Pipeline, PipelineError,
    PipelineFileError, Run, RunAction, RunActionKind, RunStatus, Scope, StepRecord, StepSpec,
    StepStatus, UnixMillis, now_millis,
};
pub use pool::{ClassStatus, PoolError, PoolMember, RunnerPool, RunnerState, RunnerStatus};
pub use runner::{Probe, RunnerError, StepOutput, StepRequest, StepRunner, StepVerdict};
pub use source::{BoxError, CommitSource, SourceError};
pub use store::{RunPage, RunQuery, RunStore, StoreError};
pub use waiting::{Holder, StepWait, Waiting};

/// The README's code, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
