//! `GET /healthz`: 200 while the server can do its job, 503 with a reason
//! when its store fails or stalls or its engine has stopped. (The runners'
//! part of the verdict is tested against a real pool in `runners_api.rs`.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ci_engine::testing::sim::{ScriptedSource, SimRunner, SimRunnerConfig, StepBehaviour};
use ci_engine::{
    CommitId, Engine, EngineConfig, MemoryStore, Pipeline, Run, RunPage, RunQuery, RunStore,
    StoreError,
};
use ci_server::api::Api;
use poem::Endpoint;
use poem::http::StatusCode;
use poem::test::TestClient;
use serde_json::Value;
use tokio::time::Instant;

/// How long a test waits for something before it fails.
const PATIENCE: Duration = Duration::from_secs(15);

/// What the failing store says.
const DISK_ERROR: &str = "disk I/O error (test double)";

/// A store whose every operation fails, or never answers.
struct BrokenStore {
    stall: bool,
}

impl BrokenStore {
    async fn fail<T>(&self) -> Result<T, StoreError> {
        if self.stall {
            std::future::pending::<()>().await;
        }
        Err(StoreError::Backend(DISK_ERROR.into()))
    }
}

#[async_trait]
impl RunStore for BrokenStore {
    async fn insert_run(&self, _run: &Run) -> Result<bool, StoreError> {
        self.fail().await
    }
    async fn update_run(&self, _run: &Run) -> Result<(), StoreError> {
        self.fail().await
    }
    async fn get_run(&self, _id_or_prefix: &str) -> Result<Run, StoreError> {
        self.fail().await
    }
    async fn list_runs(&self, _query: &RunQuery) -> Result<RunPage, StoreError> {
        self.fail().await
    }
    async fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        self.fail().await
    }
    async fn has_run(&self, _id: &CommitId) -> Result<bool, StoreError> {
        self.fail().await
    }
    async fn max_seq(&self) -> Result<Option<u64>, StoreError> {
        self.fail().await
    }
    async fn load_state(&self, _key: &str) -> Result<Option<String>, StoreError> {
        self.fail().await
    }
    async fn save_state(&self, _key: &str, _value: &str) -> Result<(), StoreError> {
        self.fail().await
    }
}

/// Status and JSON body of `GET /healthz`.
async fn health(cli: &TestClient<impl Endpoint>) -> (StatusCode, Value) {
    let resp = cli.get("/healthz").send().await;
    let status = resp.0.status();
    let text = resp.0.into_body().into_string().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, body)
}

fn green_engine(store: Arc<dyn RunStore>) -> Engine {
    let runner = SimRunner::new(SimRunnerConfig {
        seed: 1,
        steps: HashMap::new(),
        default_step: StepBehaviour::green(1, 5),
        downtime_ms: (0, 0),
    });
    Engine::new(Pipeline::standard(), runner, store, EngineConfig::default())
        .expect("a valid engine configuration")
}

#[tokio::test]
async fn a_store_whose_reads_fail_is_503_naming_the_store() {
    let store: Arc<dyn RunStore> = Arc::new(BrokenStore { stall: false });
    let cli = TestClient::new(ci_server::api::app(Api::new(store, None)));
    let (status, body) = health(&cli).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["role"], "primary");
    assert_eq!(body["store"]["ok"], false);
    let error = body["store"]["error"].as_str().expect("the store's error");
    assert!(error.contains(DISK_ERROR), "{error}");
    let reason = body["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("store") && reason.contains(DISK_ERROR),
        "{reason}"
    );
    assert!(!reason.contains('\n'), "one sentence: {reason}");
}

#[tokio::test]
async fn a_store_that_does_not_answer_is_503_after_the_timeout() {
    let store: Arc<dyn RunStore> = Arc::new(BrokenStore { stall: true });
    let timeout = Duration::from_millis(100);
    let cli = TestClient::new(ci_server::api::app(
        Api::new(store, None).with_check_timeout(timeout),
    ));
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(PATIENCE, health(&cli))
        .await
        .expect("the health check answers even when the store does not");
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(took >= timeout, "answered before the timeout: {took:?}");
    let reason = body["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("store did not answer") && reason.contains("100ms"),
        "{reason}"
    );
    assert_eq!(body["store"]["ok"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_engine_with_its_runner_up_is_healthy() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let engine = green_engine(Arc::clone(&store));
    let limit = Duration::from_secs(42);
    let cli = TestClient::new(ci_server::api::app(
        Api::new(Arc::clone(&store), Some(engine.handle())).with_unreachable_limit(limit),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(engine.run(
        Box::new(ScriptedSource::chain(1, Duration::ZERO)),
        async {
            let _ = stopped.await;
        },
    ));

    let (status, body) = health(&cli).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["role"], "primary");
    assert!(body["reason"].is_null(), "{body}");
    assert_eq!(body["store"]["ok"], true);
    assert!(body["store"]["error"].is_null(), "{body}");
    assert_eq!(body["runners"]["known"], true);
    assert_eq!(body["runners"]["total"], 1);
    assert_eq!(body["runners"]["up"], 1);
    assert_eq!(body["runners"]["down"], 0);
    assert_eq!(body["unreachable_limit_ms"], 42_000);

    let _ = stop.send(());
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the engine stops in time")
        .expect("engine task")
        .expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_engine_is_503() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let engine = green_engine(Arc::clone(&store));
    let cli = TestClient::new(ci_server::api::app(Api::new(
        Arc::clone(&store),
        Some(engine.handle()),
    )));
    // No commits: the engine stops as soon as it has looked at the source.
    let source = Box::new(ScriptedSource::chain(0, Duration::ZERO));
    tokio::time::timeout(PATIENCE, engine.run(source, std::future::pending()))
        .await
        .expect("an engine with nothing to do stops")
        .expect("a clean stop");

    let (status, body) = health(&cli).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable");
    let reason = body["reason"].as_str().expect("a reason");
    assert!(reason.contains("the engine is not running"), "{reason}");
    assert_eq!(body["store"]["ok"], true, "the store still answers");
    assert_eq!(body["runners"]["known"], false);
}
