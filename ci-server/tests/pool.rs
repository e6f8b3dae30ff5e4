//! A pool of runners, with real processes: the `ci-server` binary with three
//! bundled simulators (`--sims 3`), a server embedded in the test with two
//! external simulators (each told its own repository path), and bundled
//! simulators that are supervised and restarted one by one.

mod e2e_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ci_engine::Run;
use ci_server::api::runners::RunnerInfo;
use ci_server::git::InitialPolicy;
use ci_server::http_runner::RunnerAddr;
use ci_server::server::{ExternalRunner, RunnerChoice, Server as EmbeddedServer, ServerConfig};
use ci_server::supervisor::EXIT_WITH_PARENT_FLAG;
use e2e_support::{BIN, GitRepo, Server, get_json, start_simulator, wait_for_terminal};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Bound on waiting for all commits of a test to finish.
const FINISH_WITHIN: Duration = Duration::from_secs(60);

/// Simulators that never crash, with builds long enough to overlap.
const STEADY_SIM: &str = "--no-crash --lint-ms 5 --build-ms 100 --test-ms 30";

/// The `http://IP:PORT` addresses that follow `ID at ` for each of `ids` in
/// the startup line.
fn addresses_in(startup_line: &str, ids: &[&str]) -> Vec<SocketAddr> {
    ids.iter()
        .map(|id| {
            let needle = format!("{id} at http://");
            let rest = startup_line
                .split(&needle)
                .nth(1)
                .unwrap_or_else(|| panic!("no {needle:?} in {startup_line:?}"));
            let addr = rest
                .split([',', ' '])
                .next()
                .expect("an address after the id");
            addr.parse()
                .unwrap_or_else(|e| panic!("{addr:?} in {startup_line:?}: {e}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_bundled_simulators_share_the_commits() {
    let repo = GitRepo::new();
    let root = repo.commit("root");
    let burst = repo.chain(&root, 6, "burst");
    repo.update_branch("main", burst.last().expect("6 commits"));
    let server = Server::start(
        repo.path(),
        &[
            "--sims",
            "3",
            "--db",
            ":memory:",
            "--initial",
            "all",
            "--poll-interval",
            "200ms",
            "--sim-args",
            STEADY_SIM,
        ],
    );
    let ids = ["sim-1", "sim-2", "sim-3"];
    let line = &server.startup_line;
    assert!(line.contains("3 bundled simulators: "), "{line}");
    assert!(line.contains("pipeline: lint, build, test"), "{line}");
    let addrs = addresses_in(line, &ids);
    let distinct: BTreeSet<SocketAddr> = addrs.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "each simulator has its own port: {line}");
    for addr in &addrs {
        assert!(
            std::net::TcpStream::connect(addr).is_ok(),
            "the simulator at {addr} listens"
        );
    }

    // Commits made while the server runs join those it found at start.
    let later = repo.chain(burst.last().expect("tip"), 2, "later");
    repo.update_branch("main", later.last().expect("2 commits"));
    let expected = repo.all_commits();
    assert_eq!(expected.len(), 9);
    let runs = wait_for_terminal(&server, &expected, FINISH_WITHIN).await;
    assert_eq!(runs.len(), expected.len(), "one run per commit");

    let mut used: BTreeMap<String, usize> = BTreeMap::new();
    for id in &expected {
        let (code, run) = get_json(&server.url(&format!("/run/{id}"))).await;
        assert_eq!(code, 200, "{run}");
        assert!(
            matches!(run["status"].as_str(), Some("success" | "failure")),
            "without crashes a run ends success or failure: {run}"
        );
        for step in run["steps"].as_array().expect("steps") {
            for attempt in step["attempts"].as_array().expect("attempts") {
                let runner = attempt["runner"].as_str().unwrap_or_else(|| {
                    panic!("an attempt without its runner in run {id}: {attempt}")
                });
                assert!(ids.contains(&runner), "unknown runner {runner:?}: {run}");
                *used.entry(runner.to_owned()).or_default() += 1;
            }
        }
    }
    assert_eq!(
        used.keys().map(String::as_str).collect::<Vec<_>>(),
        ids,
        "nine commits with overlapping builds keep every simulator busy: {used:?}"
    );
}

/// Polls the store until every commit of `expected` has a finished run.
async fn finished_runs(server_store: &dyn ci_engine::RunStore, expected: &[String]) -> Vec<Run> {
    let deadline = Instant::now() + FINISH_WITHIN;
    loop {
        let mut done = Vec::new();
        for id in expected {
            match server_store.get_run(id).await {
                Ok(run) if run.status.is_terminal() => done.push(run),
                _ => {}
            }
        }
        if done.len() == expected.len() {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} commits finished within {FINISH_WITHIN:?}",
            done.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The repository path a simulator wrote in an attempt's log.
fn repo_path_in_log(logs: &str) -> Option<&str> {
    logs.lines()
        .find_map(|line| line.strip_prefix("Repo path: "))
        .map(str::trim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_external_runner_is_told_its_own_repository_path() {
    let sim_flags = [
        "--no-crash",
        "--lint-ms",
        "2",
        "--build-ms",
        "20",
        "--test-ms",
        "10",
    ];
    let (_one, one_addr) = start_simulator(&sim_flags);
    let (_two, two_addr) = start_simulator(&sim_flags);
    let repo = GitRepo::new();
    let root = repo.commit("root");
    let chain = repo.chain(&root, 4, "work");
    repo.update_branch("main", chain.last().expect("4 commits"));
    let server_repo = std::fs::canonicalize(repo.path())
        .expect("the repository exists")
        .display()
        .to_string();

    let one = RunnerAddr::from_socket_addr(one_addr);
    let two = RunnerAddr::from_socket_addr(two_addr);
    let mut config = ServerConfig::new(
        repo.path().to_owned(),
        RunnerChoice::External(vec![
            ExternalRunner {
                addr: one.clone(),
                repo_path: Some("/srv/one/repo".into()),
            },
            ExternalRunner::new(two.clone()),
        ]),
    );
    config.source.initial = InitialPolicy::All;
    config.source.poll_interval = Duration::from_millis(100);
    config.engine.retry_backoff = Duration::from_millis(20);
    let server = EmbeddedServer::start(config)
        .await
        .expect("the server starts");
    assert!(!server.runners_are_bundled());
    assert_eq!(server.steps(), ["lint", "build", "test"]);
    let paths: BTreeMap<String, String> = BTreeMap::from([
        (one.to_string(), "/srv/one/repo".to_owned()),
        (two.to_string(), server_repo.clone()),
    ]);
    assert_eq!(
        server.runners(),
        [
            RunnerInfo {
                id: one.to_string(),
                address: one.to_string(),
                repo_path: "/srv/one/repo".into(),
                bundled: false,
                restarts: None,
            },
            RunnerInfo {
                id: two.to_string(),
                address: two.to_string(),
                repo_path: server_repo,
                bundled: false,
                restarts: None,
            },
        ]
    );

    let store = server.store();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let expected: Vec<String> = repo.all_commits().into_iter().collect();
    let runs = finished_runs(store.as_ref(), &expected).await;
    let mut attempts = 0;
    for run in &runs {
        for step in &run.steps {
            for attempt in &step.attempts {
                attempts += 1;
                let runner = attempt
                    .runner
                    .as_deref()
                    .unwrap_or_else(|| panic!("attempt without a runner: {}", run.commit.id));
                let told = paths
                    .get(runner)
                    .unwrap_or_else(|| panic!("unknown runner {runner:?}"));
                assert_eq!(
                    repo_path_in_log(&attempt.logs),
                    Some(told.as_str()),
                    "{} {} ran on {runner}:\n{}",
                    run.commit.id,
                    step.name,
                    attempt.logs
                );
            }
        }
    }
    assert!(attempts >= expected.len() * 2, "{attempts} attempts");
    let _ = stop.send(());
    serving
        .await
        .expect("the server task")
        .expect("a clean stop");
}

/// Sends `POST /step/trigger` for a test step; the simulator crashes on it
/// (`--crash-rate 1`), so no answer is expected.
async fn crash(addr: &str) {
    let body = serde_json::json!({
        "step_name": "test",
        "repo_path": "/r",
        "commit_hash": "0123456789abcdef0123456789abcdef01234567",
    });
    let result = reqwest::Client::new()
        .post(format!("{addr}/step/trigger"))
        .json(&body)
        .send()
        .await;
    assert!(
        result.is_err(),
        "the simulator answered a test instead of crashing: {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_simulators_are_supervised_one_by_one() {
    let repo = GitRepo::new();
    repo.commit("root");
    let args = [
        ci_server::cli::SIM_SUBCOMMAND,
        EXIT_WITH_PARENT_FLAG,
        "--crash-rate",
        "1",
        "--test-ms",
        "1",
    ];
    let mut config = ServerConfig::new(
        repo.path().to_owned(),
        RunnerChoice::Bundled {
            program: PathBuf::from(BIN),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            count: NonZeroUsize::new(2).expect("two"),
        },
    );
    config.source.initial = InitialPolicy::None;
    let server = EmbeddedServer::start(config)
        .await
        .expect("the server starts");
    assert!(server.runners_are_bundled());
    let before = server.runners();
    let ids: Vec<&str> = before.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["sim-1", "sim-2"]);
    assert_ne!(before[0].address, before[1].address, "one port each");
    for runner in &before {
        assert!(runner.bundled, "{runner:?}");
        assert_eq!(runner.restarts, Some(0), "{runner:?}");
        assert_eq!(runner.repo_path, server.repo_path().display().to_string());
    }

    crash(&before[1].address).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let now = server.runners();
        if now[1].restarts == Some(1) {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "sim-2 was not restarted within 20 s: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(after[0], before[0], "sim-1 is left alone");
    assert_eq!(
        after[1].address, before[1].address,
        "sim-2 comes back on its own port"
    );
    let port: SocketAddr = after[1]
        .address
        .trim_start_matches("http://")
        .parse()
        .expect("a socket address");
    assert!(
        tokio::net::TcpStream::connect(port).await.is_ok(),
        "sim-2 listens again"
    );
}
