//! An engine that runs each step as a local shell command.
//!
//! A `StepRunner` that runs `sh -c` with `tokio::process`, a `CommitSource`
//! that hands out three commits and then is done, the in-memory store, and
//! the engine's events printed as they come. It ends when every run has
//! finished, prints each run's status and exits 0.
//!
//! `cargo run -p ci-engine --example shell_runner`

#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::sync::Arc;

use ci_engine::{
    Commit, CommitSource, Engine, EngineConfig, MemoryStore, Pipeline, RunQuery, RunStore,
    RunnerError, SourceError, StepOutput, StepRequest, StepRunner, StepVerdict, async_trait,
};

/// Runs each step as a shell command; the commit id is in `$COMMIT`.
struct Shell;

#[async_trait]
impl StepRunner for Shell {
    async fn run(&self, request: &StepRequest) -> Result<StepOutput, RunnerError> {
        let script = match request.step.as_str() {
            "lint" => "echo linting $COMMIT",
            "build" => "echo building $COMMIT",
            // The third commit's tests fail.
            _ => "echo testing $COMMIT; test \"$COMMIT\" != c3",
        };
        let out = tokio::process::Command::new("sh")
            .args(["-c", script])
            .env("COMMIT", request.commit.as_str())
            .output()
            .await
            .map_err(|e| RunnerError::Unreachable(format!("cannot start sh: {e}")))?;
        Ok(StepOutput {
            verdict: if out.status.success() {
                StepVerdict::Success
            } else {
                StepVerdict::Failure
            },
            logs: String::from_utf8_lossy(&out.stdout).into_owned(),
            duration: None,
        })
    }
}

/// Three commits, then nothing more (`Ok(None)` ends the source).
struct ThreeCommits(Option<Vec<Commit>>);

#[async_trait]
impl CommitSource for ThreeCommits {
    async fn next_commits(&mut self) -> Result<Option<Vec<Commit>>, SourceError> {
        Ok(self.0.take())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::new(
        Pipeline::standard(),
        Arc::new(Shell),
        store.clone(),
        EngineConfig::default(),
    )?;
    let mut events = engine.handle().subscribe();
    // Ends when the engine has stopped and dropped its side of the channel.
    let printer = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            println!("event: {event:?}");
        }
    });
    let commits = ["c1", "c2", "c3"].map(Commit::bare).to_vec();
    // Runs until the source is done and every run has finished.
    engine
        .run(
            Box::new(ThreeCommits(Some(commits))),
            std::future::pending(),
        )
        .await?;
    printer.await?;
    for run in store
        .list_runs(&RunQuery::default())
        .await?
        .runs
        .iter()
        .rev()
    {
        println!("{}: {:?}", run.id(), run.status);
    }
    Ok(())
}
