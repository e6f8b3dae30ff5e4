//! `GET /run/{commit}` says why each step waits, naming the holder of the
//! permit: a real engine on two simulated runners behind the API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::{
    ScriptedSource, SimRunner, SimRunnerConfig, StepBehaviour, chain_commits,
};
use ci_engine::{Engine, EngineConfig, MemoryStore, Pipeline, PoolMember, RunStore, RunnerPool};
use ci_server::api::Api;
use poem::test::TestClient;
use serde_json::Value;
use tokio::time::Instant;

fn slow_green(seed: u64) -> Arc<SimRunner> {
    SimRunner::new(SimRunnerConfig {
        seed,
        steps: HashMap::new(),
        default_step: StepBehaviour::green(3_000, 3_000),
        downtime_ms: (0, 0),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_build_names_the_builds_that_hold_the_runners() {
    let store = Arc::new(MemoryStore::new());
    let pool = RunnerPool::new(vec![
        PoolMember {
            id: "sim-1".into(),
            runner: slow_green(1),
        },
        PoolMember {
            id: "sim-2".into(),
            runner: slow_green(2),
        },
    ])
    .expect("a pool");
    let engine = Engine::with_pool(
        Pipeline::standard(),
        pool,
        Arc::clone(&store) as Arc<dyn RunStore>,
        EngineConfig::default(),
    )
    .expect("an engine");
    let handle = engine.handle();
    let commits = chain_commits(3);
    let ids: Vec<String> = commits.iter().map(|c| c.id.to_string()).collect();
    let task = tokio::spawn(engine.run(
        Box::new(ScriptedSource::new(vec![(Duration::ZERO, commits)]).staying_open()),
        std::future::pending(),
    ));
    let cli = TestClient::new(ci_server::api::app(Api::new(
        Arc::clone(&store) as Arc<dyn RunStore>,
        Some(handle),
    )));

    // Builds take 3 s and are one at a time per runner: the third commit's
    // build waits for the first two.
    let deadline = Instant::now() + Duration::from_secs(10);
    let build = loop {
        let resp = cli.get(format!("/run/{}", ids[2])).send().await;
        resp.assert_status_is_ok();
        let body: Value =
            serde_json::from_str(&resp.0.into_body().into_string().await.expect("a body"))
                .expect("JSON");
        let build = body["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|s| s["name"] == "build")
            .expect("a build step")
            .clone();
        if build["waiting"]["kind"] == "permit" {
            break build;
        }
        assert!(
            Instant::now() < deadline,
            "the build never waited for a permit: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let waiting = &build["waiting"];
    assert_eq!(waiting["class"], "build");
    assert_eq!(waiting["scope"], "runner");
    assert_eq!(waiting["limit"], 1);
    let holders: Vec<(String, String, u64, String)> = waiting["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .map(|h| {
            (
                h["commit"].as_str().unwrap_or_default().to_owned(),
                h["step"].as_str().unwrap_or_default().to_owned(),
                h["attempt"].as_u64().unwrap_or_default(),
                h["runner"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    // The two older builds, oldest first, one on each runner.
    let commits: Vec<&str> = holders.iter().map(|h| h.0.as_str()).collect();
    assert_eq!(commits, [ids[0].as_str(), ids[1].as_str()], "{waiting}");
    assert!(
        holders.iter().all(|h| h.1 == "build" && h.2 == 1),
        "{waiting}"
    );
    let mut runners: Vec<&str> = holders.iter().map(|h| h.3.as_str()).collect();
    runners.sort_unstable();
    assert_eq!(runners, ["sim-1", "sim-2"], "{waiting}");
    let sentence = waiting["sentence"].as_str().expect("a sentence");
    assert!(
        sentence.contains("on sim-1") && sentence.contains("on sim-2"),
        "{sentence}"
    );
    // Its test waits for the build.
    let resp = cli.get(format!("/run/{}", ids[2])).send().await;
    let body: Value =
        serde_json::from_str(&resp.0.into_body().into_string().await.expect("body")).expect("JSON");
    let test = body["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == "test")
        .expect("a test step")
        .clone();
    assert_eq!(test["waiting"]["kind"], "needs", "{test}");
    assert_eq!(test["waiting"]["need"], "build", "{test}");

    // The run page says the same, in words, on the step.
    let resp = cli.get(format!("/commit/{}", ids[2])).send().await;
    resp.assert_status_is_ok();
    let html = resp.0.into_body().into_string().await.expect("a page");
    let build_section = html
        .split("<section class=\"step\"")
        .find(|s| s.contains("data-step=\"build\""))
        .expect("a build section");
    let waiting_line = build_section
        .split("<p class=\"waiting\"")
        .nth(1)
        .and_then(|s| s.split("</p>").next())
        .expect("a waiting paragraph");
    assert!(
        waiting_line.contains("waits for a free build slot")
            && waiting_line.contains("on sim-1")
            && waiting_line.contains("on sim-2")
            && !waiting_line.contains("hidden"),
        "{waiting_line}"
    );
    task.abort();
}
