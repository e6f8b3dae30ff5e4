//! `GitSource` driving the real `Engine`: every commit of a repository gets exactly
//! one run, parents before children, across a restart of source and engine.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::{SimRunner, SimRunnerConfig, StepBehaviour};
use ci_engine::{Engine, EngineConfig, EngineEvent, MemoryStore, Pipeline, RunStore};
use ci_server::git::{GitSource, GitSourceConfig, InitialPolicy};
use tokio::sync::{broadcast, oneshot};

const DEADLINE: Duration = Duration::from_secs(30);

fn git(dir: &Path, args: &[&str], time: i64) -> String {
    let date = format!("{time} +0000");
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Ada Lovelace")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada Lovelace")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .stdin(Stdio::null())
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `git commit --allow-empty` `n` times on the checked-out branch; the new ids.
fn commits(dir: &Path, n: usize, clock: &mut i64) -> Vec<String> {
    (0..n)
        .map(|i| {
            *clock += 1;
            git(
                dir,
                &[
                    "commit",
                    "-q",
                    "--allow-empty",
                    "-m",
                    &format!("commit {clock} {i}"),
                ],
                *clock,
            );
            git(dir, &["rev-parse", "HEAD"], *clock)
        })
        .collect()
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ci_engine::EngineError>>,
    events: broadcast::Receiver<EngineEvent>,
}

async fn start(repo: &Path, store: &Arc<MemoryStore>) -> Running {
    let source = GitSource::open(
        repo,
        store.clone(),
        GitSourceConfig {
            poll_interval: Duration::from_millis(100),
            watch: true,
            initial: InitialPolicy::All,
        },
    )
    .await
    .expect("repository opens");
    let runner = SimRunner::new(SimRunnerConfig {
        seed: 7,
        steps: HashMap::new(),
        default_step: StepBehaviour::green(0, 3),
        downtime_ms: (0, 0),
    });
    let engine = Engine::new(
        Pipeline::standard(),
        runner,
        store.clone(),
        EngineConfig::default(),
    )
    .expect("a valid engine configuration");
    let events = engine.handle().subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(engine.run(Box::new(source), async move {
        let _ = stopped.await;
    }));
    Running { stop, task, events }
}

impl Running {
    /// Waits until every id in `ids` has finished its run.
    async fn finished(&mut self, ids: &[String]) {
        let mut waiting: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        tokio::time::timeout(DEADLINE, async {
            while !waiting.is_empty() {
                match self.events.recv().await {
                    Ok(EngineEvent::RunFinished { commit, .. }) => {
                        waiting.remove(commit.as_str());
                    }
                    Ok(_) => {}
                    Err(e) => panic!("engine events ended: {e}"),
                }
            }
        })
        .await
        .expect("runs finish within the deadline");
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("engine task joins")
            .expect("engine ran without error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_runs_once_in_parent_order_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = dir.path();
    git(repo, &["-c", "init.defaultBranch=main", "init", "-q"], 0);
    let mut clock = 1_700_000_000;
    let mut all = commits(repo, 3, &mut clock);
    let store = Arc::new(MemoryStore::new());

    let mut running = start(repo, &store).await;
    running.finished(&all).await;
    let more = commits(repo, 4, &mut clock);
    running.finished(&more).await;
    all.extend(more);
    running.stop().await;

    // While the server is down.
    let down = commits(repo, 2, &mut clock);
    let mut running = start(repo, &store).await;
    running.finished(&down).await;
    all.extend(down);
    running.stop().await;

    let runs = store.all_runs();
    let ran: Vec<&str> = runs.iter().map(|r| r.commit.id.as_str()).collect();
    assert_eq!(
        ran,
        all.iter().map(String::as_str).collect::<Vec<_>>(),
        "once each, in order"
    );
    assert!(runs.iter().all(|r| r.status.is_terminal()));
    for run in &runs {
        for parent in &run.commit.parents {
            let p = store
                .get_run(parent.as_str())
                .await
                .expect("parent has a run");
            assert!(p.seq < run.seq, "{} ran before its parent", run.commit.id);
        }
    }
}
