//! `GET /runners` (and `/healthz`, `/run/{commit}` where they show the pool)
//! against a real engine driving a pool of simulated runners, one of them
//! unreachable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::{
    ScriptedSource, SimRunner, SimRunnerConfig, StepBehaviour, chain_commits,
};
use ci_engine::{
    Engine, EngineConfig, EngineError, EngineHandle, MemoryStore, Pipeline, PoolMember, RunStore,
    RunnerPool, StepRunner,
};
use ci_server::api::Api;
use ci_server::api::runners::{RunnerDirectory, RunnerInfo};
use poem::Endpoint;
use poem::http::StatusCode;
use poem::test::TestClient;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a test waits for the engine to get somewhere before it fails.
const PATIENCE: Duration = Duration::from_secs(15);
/// Pause between two looks at the API while waiting.
const POLL: Duration = Duration::from_millis(20);

/// A simulated runner whose every step succeeds after `min..=max` ms.
fn green_runner(seed: u64, min_ms: u64, max_ms: u64) -> Arc<SimRunner> {
    SimRunner::new(SimRunnerConfig {
        seed,
        steps: HashMap::new(),
        default_step: StepBehaviour::green(min_ms, max_ms),
        downtime_ms: (0, 0),
    })
}

/// A simulated runner that refuses every connection for the next hour.
fn unreachable_runner(seed: u64) -> Arc<SimRunner> {
    let runner = green_runner(seed, 1, 5);
    runner.take_down_until(Instant::now() + Duration::from_secs(3600));
    runner
}

fn pool(members: &[(&str, &Arc<SimRunner>)]) -> RunnerPool {
    RunnerPool::new(
        members
            .iter()
            .map(|(id, runner)| PoolMember {
                id: (*id).to_owned(),
                runner: Arc::clone(runner) as Arc<dyn StepRunner>,
            })
            .collect(),
    )
    .expect("a valid pool")
}

/// An engine running `commits` commits of the standard pipeline on `pool`,
/// until [`stop`](Self::stop).
struct Running {
    handle: EngineHandle,
    store: Arc<dyn RunStore>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), EngineError>>,
}

impl Running {
    fn start(pool: RunnerPool, store: &Arc<MemoryStore>, commits: usize) -> Self {
        let store: Arc<dyn RunStore> = Arc::clone(store) as Arc<dyn RunStore>;
        let config = EngineConfig {
            shutdown_grace: Duration::from_millis(10),
            ..EngineConfig::default()
        };
        let engine = Engine::with_pool(Pipeline::standard(), pool, Arc::clone(&store), config)
            .expect("a valid engine configuration");
        let handle = engine.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let source =
            ScriptedSource::new(vec![(Duration::ZERO, chain_commits(commits))]).staying_open();
        let task = tokio::spawn(engine.run(Box::new(source), async {
            let _ = stopped.await;
        }));
        Self {
            handle,
            store,
            stop,
            task,
        }
    }

    /// An API over the engine and its store.
    fn api(&self) -> Api {
        Api::new(Arc::clone(&self.store), Some(self.handle.clone()))
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let joined = tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the engine stops in time");
        joined
            .expect("engine task")
            .expect("the engine stops cleanly");
    }
}

fn directory(entries: Vec<RunnerInfo>) -> RunnerDirectory {
    Arc::new(move || entries.clone())
}

async fn get_json(cli: &TestClient<impl Endpoint>, path: &str, status: StatusCode) -> Value {
    let resp = cli.get(path).send().await;
    resp.assert_status(status);
    let text = resp.0.into_body().into_string().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
}

fn by_id<'a>(runners: &'a Value, id: &str) -> &'a Value {
    runners
        .as_array()
        .expect("an array of runners")
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no runner {id} in {runners}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_runner_is_down_while_the_others_carry_the_run() {
    let a = unreachable_runner(1);
    let b = green_runner(2, 1, 5);
    let c = green_runner(3, 1, 5);
    let store = Arc::new(MemoryStore::new());
    let running = Running::start(pool(&[("a", &a), ("b", &b), ("c", &c)]), &store, 1);
    // The directory knows `a` and `b` (in another order), not `c`.
    let api = running
        .api()
        .with_runners(directory(vec![
            RunnerInfo {
                id: "b".into(),
                address: "http://127.0.0.1:9101".into(),
                repo_path: "/srv/repo-b".into(),
                bundled: false,
                restarts: None,
            },
            RunnerInfo {
                id: "a".into(),
                address: "http://127.0.0.1:9100".into(),
                repo_path: "/srv/repo-a".into(),
                bundled: true,
                restarts: Some(2),
            },
        ]))
        // Past this no runner may be up; one runner down for longer is fine.
        .with_unreachable_limit(Duration::from_millis(1));
    let cli = TestClient::new(ci_server::api::app(api));
    let commit = chain_commits(1)[0].id.to_string();

    // Wait until `a` was found down and the run is over.
    let deadline = Instant::now() + PATIENCE;
    let (runners, run) = loop {
        let runners = get_json(&cli, "/runners", StatusCode::OK).await;
        let run = get_json(&cli, &format!("/run/{commit}"), StatusCode::OK).await;
        let a_down = by_id(&runners, "a")["state"] != "up";
        if a_down && run["status"] == "success" {
            break (runners, run);
        }
        assert!(
            Instant::now() < deadline,
            "runner a never down, or the run never done: {runners} {run}"
        );
        tokio::time::sleep(POLL).await;
    };

    let ids: Vec<&str> = runners
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["a", "b", "c"], "pool order");

    let ra = by_id(&runners, "a");
    assert!(ra["state"] == "down" || ra["state"] == "probing", "{ra}");
    assert!(ra["outages"].as_u64().is_some_and(|n| n >= 1), "{ra}");
    assert!(
        ra["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{ra}"
    );
    assert_eq!(ra["address"], "http://127.0.0.1:9100");
    assert_eq!(ra["repo_path"], "/srv/repo-a");
    assert_eq!(ra["bundled"], true);
    assert_eq!(ra["restarts"], 2);
    assert!(ra["since"].as_i64().is_some_and(|t| t > 1_600_000_000_000));
    assert!(ra["in_flight_by_class"].is_object(), "{ra}");

    let rb = by_id(&runners, "b");
    assert_eq!(rb["state"], "up", "{rb}");
    assert_eq!(rb["address"], "http://127.0.0.1:9101");
    assert_eq!(rb["bundled"], false);
    assert!(rb["restarts"].is_null(), "{rb}");

    let rc = by_id(&runners, "c");
    assert_eq!(rc["state"], "up", "{rc}");
    for field in ["address", "repo_path", "bundled", "restarts"] {
        assert!(
            rc.get(field).is_some_and(Value::is_null),
            "c is not in the directory, so its {field} is null: {rc}"
        );
    }

    // Every recorded attempt names the runner that ran it; `a` ran none.
    let mut attempts = 0;
    for step in run["steps"].as_array().expect("steps") {
        for attempt in step["attempts"].as_array().expect("attempts") {
            attempts += 1;
            let runner = attempt["runner"].as_str().unwrap_or_default();
            assert!(runner == "b" || runner == "c", "{attempt}");
        }
    }
    assert!(attempts >= 3, "{run}");

    // One runner down, even for longer than the limit, is not a reason to 503.
    let health = get_json(&cli, "/healthz", StatusCode::OK).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["runners"]["total"], 3, "{health}");
    assert_eq!(health["runners"]["up"], 2, "{health}");
    assert_eq!(health["runners"]["down"], 1, "{health}");
    assert!(health["runners"]["none_up_since"].is_null(), "{health}");

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_counted_per_runner_and_class() {
    // Slow steps, so that requests are seen in flight. The standard pipeline
    // starts lint and build at once (test needs build).
    let b = green_runner(2, 3000, 3000);
    let c = green_runner(3, 3000, 3000);
    let store = Arc::new(MemoryStore::new());
    let running = Running::start(pool(&[("b", &b), ("c", &c)]), &store, 1);
    let cli = TestClient::new(ci_server::api::app(running.api()));

    let in_flight = |r: &Value| r["in_flight"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + PATIENCE;
    let runners = loop {
        let runners = get_json(&cli, "/runners", StatusCode::OK).await;
        let total: u64 = runners
            .as_array()
            .expect("array")
            .iter()
            .map(in_flight)
            .sum();
        if total >= 2 {
            break runners;
        }
        assert!(
            Instant::now() < deadline,
            "lint and build never in flight: {runners}"
        );
        tokio::time::sleep(POLL).await;
    };
    let mut classes = serde_json::Map::new();
    for r in runners.as_array().expect("array") {
        assert_eq!(r["state"], "up", "{r}");
        assert_eq!(r["held"], 0, "{r}");
        // Each runner got one: the engine spreads steps over idle runners.
        assert_eq!(in_flight(r), 1, "{runners}");
        let by_class = r["in_flight_by_class"].as_object().expect("an object");
        let sum: u64 = by_class.values().filter_map(Value::as_u64).sum();
        assert_eq!(sum, in_flight(r), "per class adds up to in_flight: {r}");
        classes.extend(by_class.clone());
    }
    assert_eq!(
        Value::Object(classes),
        serde_json::json!({ "lint": 1, "build": 1 }),
        "{runners}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_engine_has_no_runners_to_show() {
    let b = green_runner(2, 1, 5);
    let store = Arc::new(MemoryStore::new());
    let running = Running::start(pool(&[("b", &b)]), &store, 0);
    let cli = TestClient::new(ci_server::api::app(running.api()));
    get_json(&cli, "/runners", StatusCode::OK).await;
    running.stop().await;

    let body = get_json(&cli, "/runners", StatusCode::SERVICE_UNAVAILABLE).await;
    let message = body["message"].as_str().expect("a message");
    assert!(message.contains("the engine is not running"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_runner_up_past_the_limit_is_503_until_one_comes_back() {
    let a = unreachable_runner(1);
    let b = unreachable_runner(2);
    let store = Arc::new(MemoryStore::new());
    // The engine keeps the run waiting (its own limit is the default ten
    // minutes); only the health check uses the tiny limit.
    let running = Running::start(pool(&[("a", &a), ("b", &b)]), &store, 1);
    let limit = Duration::from_millis(200);
    let cli = TestClient::new(ci_server::api::app(
        running.api().with_unreachable_limit(limit),
    ));

    let deadline = Instant::now() + PATIENCE;
    let health = loop {
        let resp = cli.get("/healthz").send().await;
        let status = resp.0.status();
        let text = resp.0.into_body().into_string().await.expect("body");
        let body: Value = serde_json::from_str(&text).expect("JSON either way");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break body;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ok", "{body}");
        assert!(
            Instant::now() < deadline,
            "never unavailable with no runner up: {body}"
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(health["status"], "unavailable", "{health}");
    assert_eq!(health["role"], "primary");
    let reason = health["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("no runner has been up") && reason.contains("200 ms"),
        "{reason}"
    );
    assert_eq!(health["store"]["ok"], true, "{health}");
    assert_eq!(health["runners"]["up"], 0, "{health}");
    assert_eq!(health["runners"]["down"], 2, "{health}");
    let since = health["runners"]["none_up_since"]
        .as_i64()
        .expect("none_up_since while no runner is up");

    // `/runners` agrees: both down, the later of them since `none_up_since`.
    let runners = get_json(&cli, "/runners", StatusCode::OK).await;
    let latest = ["a", "b"]
        .iter()
        .map(|id| {
            let r = by_id(&runners, id);
            assert_ne!(r["state"], "up", "{r}");
            r["since"].as_i64().expect("since")
        })
        .max();
    assert_eq!(latest, Some(since), "{runners}");

    // Bring `b` back: the engine finds it up and the server is healthy again.
    b.take_down_until(Instant::now());
    let deadline = Instant::now() + PATIENCE;
    let health = loop {
        let resp = cli.get("/healthz").send().await;
        let status = resp.0.status();
        let text = resp.0.into_body().into_string().await.expect("body");
        let body: Value = serde_json::from_str(&text).expect("JSON either way");
        if status == StatusCode::OK {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "still unavailable with b back: {body}"
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(health["status"], "ok", "{health}");
    assert!(health["reason"].is_null(), "{health}");
    assert_eq!(health["runners"]["up"], 1, "{health}");
    assert!(health["runners"]["none_up_since"].is_null(), "{health}");
    running.stop().await;
}
