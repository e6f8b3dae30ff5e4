//! The engine's vocabulary: commits, pipelines, runs, steps and attempts.

mod commit;
mod pipeline;
mod pipeline_file;
mod run;

pub use commit::{Commit, CommitId};
pub use pipeline::{ClassSpec, Concurrency, Pipeline, PipelineError, Scope, StepSpec};
pub use pipeline_file::PipelineFileError;
pub use run::{
    Attempt, AttemptOutcome, Run, RunAction, RunActionKind, RunStatus, StepRecord, StepStatus,
    UnixMillis, now_millis,
};
