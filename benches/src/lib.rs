//! Shared pieces of the workspace benchmarks (see `benches/benches/`).
//!
//! - `scheduler`: criterion, wall-clock cost of the engine per commit and step
//!   with a runner that answers at once.
//! - `makespan`: a bench binary that runs simulated CI in paused time and
//!   compares the engine's makespan with the lower bound and with a
//!   one-commit-at-a-time schedule.
//! - `git_scan`: criterion, how long `GitSource` takes to hand out new commits
//!   against the length of the history and against the number of branches
//!   ([`git_repo`] makes the repositories).
//! - `git_detect`: a bench binary, ref update → run queued end to end (source,
//!   SQLite store and engine in one process) with the process's memory, and
//!   the first run of a 100,000-commit burst.
//! - `api`: criterion, requests per second of `GET /runs` and `GET /run/{prefix}`
//!   over a store of recorded runs ([`runs`] makes them).

pub mod git_repo;
pub mod runs;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ci_engine::{RunnerError, StepOutput, StepRequest, StepRunner, StepVerdict};

/// A runner that answers every step at once with success: what is left to
/// measure is the engine's own cost.
pub struct InstantRunner;

#[async_trait]
impl StepRunner for InstantRunner {
    async fn run(&self, _: &StepRequest) -> Result<StepOutput, RunnerError> {
        Ok(StepOutput {
            verdict: StepVerdict::Success,
            logs: String::new(),
            duration: Some(Duration::ZERO),
        })
    }
}

/// [`InstantRunner`] behind an `Arc`, as the engine takes it.
pub fn instant_runner() -> Arc<dyn StepRunner> {
    Arc::new(InstantRunner)
}
