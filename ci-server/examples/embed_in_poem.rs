//! ci-server's adapters inside another poem application.
//!
//! The pieces a tool takes from ci-server to build its own CI: the git
//! source (`GitSource`), the HTTP step runner (`HttpStepRunner`), the SQLite
//! store (`SqliteStore`) and the API (`api::app`), nested under `/ci` beside
//! the host application's own routes. A step-runner simulator runs in this
//! process as the runner. It makes a repository with three commits (with the
//! `git` program), serves, reads its own `/ci/runs` until the three runs
//! have finished, prints them, shuts down and exits 0.
//!
//! `cargo run -p ci-server --example embed_in_poem`

#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ci_engine::{Engine, EngineConfig, Pipeline, RunStore};
use ci_server::api::{Api, app};
use ci_server::git::{GitSource, GitSourceConfig, InitialPolicy};
use ci_server::http_runner::{HttpRunnerConfig, HttpStepRunner, RunnerAddr};
use ci_server::sqlite_store::SqliteStore;
use poem::listener::TcpAcceptor;
use poem::{Route, Server, get, handler};
use step_runner_sim::SimConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The host application's own route.
#[handler]
fn hello() -> &'static str {
    "the host application, with its CI under /ci"
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo)?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    for n in 1..=3 {
        git(
            &repo,
            &[
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                &format!("change {n}"),
            ],
        )?;
    }

    // The runner: a steady, quick simulator in this process.
    let sim = TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = sim.local_addr()?;
    let sim_config = SimConfig {
        fail_rate: 0.0,
        crash_rate: 0.0,
        lint_ms: Some(5),
        build_ms: Some(5),
        test_ms: Some(5),
        ..SimConfig::default()
    };
    tokio::spawn(step_runner_sim::serve(
        sim,
        sim_config,
        std::future::pending(),
    ));

    // The engine on ci-server's adapters.
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(&dir.path().join("runs.db")).await?);
    let source_config = GitSourceConfig {
        initial: InitialPolicy::All,
        ..GitSourceConfig::default()
    };
    let source = GitSource::open(&repo, Arc::clone(&store), source_config).await?;
    let engine_config = EngineConfig::default();
    let runner = HttpStepRunner::new(
        RunnerAddr::from_socket_addr(sim_addr),
        repo.display().to_string(),
        HttpRunnerConfig::for_engine(&engine_config),
    )?;
    let engine = Engine::new(
        Pipeline::standard(),
        Arc::new(runner),
        Arc::clone(&store),
        engine_config,
    )?;

    // The host application, with the CI API nested under /ci.
    let api = Api::new(Arc::clone(&store), Some(engine.handle()));
    let routes = Route::new().at("/hello", get(hello)).nest("/ci", app(api));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let engine_task = tokio::spawn(engine.run(Box::new(source), until(stopped.clone())));
    let http =
        tokio::spawn(
            Server::new_with_acceptor(TcpAcceptor::from_tokio(listener)?)
                .run_with_graceful_shutdown(routes, until(stopped), Some(Duration::from_secs(1))),
        );

    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    println!(
        "{}",
        client
            .get(format!("{base}/hello"))
            .send()
            .await?
            .text()
            .await?
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let runs = loop {
        let page: serde_json::Value = client
            .get(format!("{base}/ci/runs"))
            .send()
            .await?
            .json()
            .await?;
        let runs = page["data"].as_array().cloned().unwrap_or_default();
        let finished = runs
            .iter()
            .filter(|r| matches!(r["status"].as_str(), Some("success" | "failure")))
            .count();
        if runs.len() == 3 && finished == 3 {
            break runs;
        }
        if Instant::now() > deadline {
            return Err(format!("the three runs did not finish within a minute: {page}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for run in runs.iter().rev() {
        println!("{} {}: {}", run["id"], run["summary"], run["status"]);
    }

    stop.send(true)?;
    engine_task.await??;
    http.await??;
    Ok(())
}

/// Resolves once `stop` holds `true` (or its sender is gone).
async fn until(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs `git args…` in `repo` with a fixed author.
fn git(repo: &Path, args: &[&str]) -> Result<(), Error> {
    let status = Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_AUTHOR_NAME", "Example")
        .env("GIT_AUTHOR_EMAIL", "example@example.invalid")
        .env("GIT_COMMITTER_NAME", "Example")
        .env("GIT_COMMITTER_EMAIL", "example@example.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("git {args:?} failed: {status}").into())
    }
}
