//! `GET /metrics` against a real engine driving two simulated runners, its
//! store wrapped in a `TimedStore`; and without an engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::{
    ScriptedSource, SimRunner, SimRunnerConfig, StepBehaviour, chain_commits,
};
use ci_engine::{
    Engine, EngineConfig, MemoryStore, Pipeline, PoolMember, RunQuery, RunStatus, RunStore,
    RunnerPool, StepRunner,
};
use ci_server::api::{Api, app};
use ci_server::timed_store::{StoreMetrics, TimedStore};
use poem::Endpoint;
use poem::http::StatusCode;
use poem::test::TestClient;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long a test waits for the engine to get somewhere before it fails.
const PATIENCE: Duration = Duration::from_secs(20);
/// Pause between two looks while waiting.
const POLL: Duration = Duration::from_millis(20);
const COMMITS: usize = 4;

/// One sample of the exposition: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the sample lines of an OpenMetrics text exposition (comments are
/// skipped). Panics on a line it cannot read: the test fails then.
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                    (name.to_owned(), parse_labels(inner, line))
                }
            };
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

/// `k="v",k2="v2"` (values may hold escaped quotes and commas).
fn parse_labels(mut rest: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad labels in {line:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("bad escape in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The samples named `name` whose labels include every pair of `with`.
fn find<'a>(samples: &'a [Sample], name: &str, with: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The one sample `name` with exactly the labels `with`.
fn value(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<_> = find(samples, name, with)
        .into_iter()
        .filter(|s| s.labels.len() == with.len())
        .collect();
    assert!(found.len() <= 1, "{name} {with:?} twice: {found:?}");
    found.first().map(|s| s.value)
}

async fn scrape(cli: &TestClient<impl Endpoint>) -> (String, Vec<Sample>) {
    let resp = cli.get("/metrics").send().await;
    resp.assert_status(StatusCode::OK);
    resp.assert_content_type("application/openmetrics-text; version=1.0.0; charset=utf-8");
    let text = resp.0.into_body().into_string().await.expect("body");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let samples = parse(&text);
    (text, samples)
}

/// A simulated runner: lint and build succeed, test fails about half the
/// time; 1–15 ms each.
fn runner(seed: u64) -> Arc<SimRunner> {
    let mut steps = HashMap::new();
    steps.insert(
        "test".to_owned(),
        StepBehaviour {
            fail_rate: 0.5,
            ..StepBehaviour::green(1, 15)
        },
    );
    SimRunner::new(SimRunnerConfig {
        seed,
        steps,
        default_step: StepBehaviour::green(1, 15),
        downtime_ms: (0, 0),
    })
}

#[tokio::test]
async fn a_scrape_after_some_runs_matches_the_store_and_the_engine() {
    let store_metrics = StoreMetrics::new();
    let store: Arc<dyn RunStore> = Arc::new(TimedStore::new(
        Arc::new(MemoryStore::new()),
        store_metrics.clone(),
    ));
    let ids = ["sim-a", "sim-b"];
    let pool = RunnerPool::new(
        ids.iter()
            .zip([7, 8])
            .map(|(id, seed)| PoolMember {
                id: (*id).to_owned(),
                runner: runner(seed) as Arc<dyn StepRunner>,
            })
            .collect(),
    )
    .expect("a valid pool");
    let config = EngineConfig {
        shutdown_grace: Duration::from_millis(10),
        ..EngineConfig::default()
    };
    let engine = Engine::with_pool(Pipeline::standard(), pool, Arc::clone(&store), config)
        .expect("a valid engine");
    let handle = engine.handle();
    // The API (and so the metrics' event task) exists before the engine runs.
    let api = Api::new(Arc::clone(&store), Some(handle.clone())).with_store_metrics(&store_metrics);
    let cli = TestClient::new(app(api));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(engine.run(
        Box::new(
            ScriptedSource::new(vec![(Duration::ZERO, chain_commits(COMMITS))]).staying_open(),
        ),
        async {
            let _ = stopped.await;
        },
    ));

    // Wait until every run is finished in the store and counted by the metrics.
    let deadline = Instant::now() + PATIENCE;
    let (text, samples) = loop {
        let (text, samples) = scrape(&cli).await;
        let finished: f64 = find(&samples, "ci_runs_finished_total", &[])
            .iter()
            .map(|s| s.value)
            .sum();
        if finished >= COMMITS as f64 {
            break (text, samples);
        }
        assert!(Instant::now() < deadline, "runs never finished:\n{text}");
        tokio::time::sleep(POLL).await;
    };

    let runs = store
        .list_runs(&RunQuery {
            limit: 100,
            ..RunQuery::default()
        })
        .await
        .expect("list")
        .runs;
    assert_eq!(runs.len(), COMMITS);
    for status in [RunStatus::Success, RunStatus::Failure] {
        let expected = runs.iter().filter(|r| r.status == status).count();
        let got = value(
            &samples,
            "ci_runs_finished_total",
            &[("status", status.as_str())],
        );
        if expected == 0 {
            assert_eq!(got, None, "{status:?}\n{text}");
        } else {
            assert_eq!(got, Some(expected as f64), "{status:?}\n{text}");
        }
    }
    assert!(
        value(&samples, "ci_runs_finished_total", &[("status", "success")]).is_some(),
        "with these seeds some run succeeds:\n{text}"
    );

    // Attempts per step and outcome, as the store recorded them.
    let mut attempts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for run in &runs {
        for step in &run.steps {
            for a in &step.attempts {
                *attempts
                    .entry((step.name.clone(), a.outcome.as_str().to_owned()))
                    .or_default() += 1;
            }
        }
    }
    assert!(attempts.len() >= 2, "several outcomes: {attempts:?}");
    let counted = find(&samples, "ci_attempts_total", &[]);
    assert_eq!(counted.len(), attempts.len(), "{text}");
    for ((step, outcome), n) in &attempts {
        let labels = [("step", step.as_str()), ("outcome", outcome.as_str())];
        assert_eq!(
            value(&samples, "ci_attempts_total", &labels),
            Some(*n as f64),
            "{step} {outcome}\n{text}"
        );
        assert_eq!(
            value(&samples, "ci_step_duration_seconds_count", &labels),
            Some(*n as f64),
            "{step} {outcome}\n{text}"
        );
        let inf = [
            ("step", step.as_str()),
            ("outcome", outcome.as_str()),
            ("le", "+Inf"),
        ];
        assert_eq!(
            value(&samples, "ci_step_duration_seconds_bucket", &inf),
            Some(*n as f64),
            "{text}"
        );
        let sum = value(&samples, "ci_step_duration_seconds_sum", &labels).expect("a sum");
        assert!(sum > 0.0 && sum < PATIENCE.as_secs_f64(), "{sum}");
    }

    // Runners and classes as the engine sees them now.
    for id in ids {
        assert_eq!(
            value(&samples, "ci_runner_up", &[("runner", id)]),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&samples, "ci_runner_crashes_total", &[("runner", id)]),
            Some(0.0),
            "{text}"
        );
        assert!(
            value(&samples, "ci_runner_in_flight", &[("runner", id)]).is_some(),
            "{text}"
        );
    }
    let classes = handle.classes().await.expect("classes");
    assert!(!classes.is_empty());
    assert_eq!(find(&samples, "ci_queue_depth", &[]).len(), classes.len());
    for c in &classes {
        assert_eq!(
            value(&samples, "ci_queue_depth", &[("class", c.class.as_str())]),
            Some(0.0),
            "nothing is ready once every run is over: {}\n{text}",
            c.class
        );
        assert!(
            value(
                &samples,
                "ci_class_in_flight",
                &[("class", c.class.as_str())]
            )
            .is_some(),
            "{text}"
        );
    }

    // The store's operations: the engine's batches of run updates were timed.
    let updates = value(
        &samples,
        "ci_store_operation_duration_seconds_count",
        &[("operation", "update_runs")],
    )
    .expect("update_runs timed");
    assert!(updates >= 1.0, "{text}");
    let inf = value(
        &samples,
        "ci_store_operation_duration_seconds_bucket",
        &[("operation", "update_runs"), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(updates));
    let mut buckets: Vec<(f64, f64)> = find(
        &samples,
        "ci_store_operation_duration_seconds_bucket",
        &[("operation", "update_runs")],
    )
    .iter()
    .map(|s| {
        let le = match s.labels["le"].as_str() {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect("a bound"),
        };
        (le, s.value)
    })
    .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "buckets are cumulative: {buckets:?}"
    );
    assert_eq!(
        value(
            &samples,
            "ci_store_errors_total",
            &[("operation", "update_run")]
        ),
        None,
        "no store error: {text}"
    );

    let _ = stop.send(());
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the engine stops in time")
        .expect("engine task")
        .expect("the engine stops cleanly");
}

#[tokio::test]
async fn without_an_engine_only_the_store_is_measured() {
    let store_metrics = StoreMetrics::new();
    let store: Arc<dyn RunStore> = Arc::new(TimedStore::new(
        Arc::new(MemoryStore::new()),
        store_metrics.clone(),
    ));
    let cli = TestClient::new(app(Api::new(store, None).with_store_metrics(&store_metrics)));
    let (_, before) = scrape(&cli).await;
    assert_eq!(before, Vec::new());

    // The health check reads the store's highest seq twice, the listing lists.
    cli.get("/healthz").send().await.assert_status_is_ok();
    cli.get("/healthz").send().await.assert_status_is_ok();
    cli.get("/runs").send().await.assert_status_is_ok();
    let (text, samples) = scrape(&cli).await;
    assert_eq!(
        value(
            &samples,
            "ci_store_operation_duration_seconds_count",
            &[("operation", "max_seq")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            "ci_store_operation_duration_seconds_count",
            &[("operation", "list_runs")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        samples.iter().all(|s| s.name.starts_with("ci_store_")),
        "{text}"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_metrics() {
    let cli = TestClient::new(app(Api::new(Arc::new(MemoryStore::new()), None)));
    let resp = cli.get("/openapi.json").send().await;
    resp.assert_status_is_ok();
    let doc: serde_json::Value =
        serde_json::from_str(&resp.0.into_body().into_string().await.expect("body")).expect("JSON");
    let content = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
    assert!(
        content
            .get("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .is_some(),
        "{content}"
    );
}
