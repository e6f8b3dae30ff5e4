//! `GET /events` over HTTP with a real engine: ids on every event, a client
//! that reconnects with `Last-Event-ID` gets exactly the events it missed, and
//! ids that cannot be resumed get a `reset`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ci_engine::testing::sim::{SimRunner, SimRunnerConfig, StepBehaviour, chain_commits};
use ci_engine::{
    Commit, CommitSource, Engine, EngineConfig, EngineEvent, MemoryStore, Pipeline, RunStore,
    SourceError,
};
use ci_server::api::Api;
use futures::{Stream, StreamExt};
use poem::Endpoint;
use poem::test::TestClient;
use poem::web::sse::Event;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};

/// Bound on waiting for anything.
const WITHIN: Duration = Duration::from_secs(10);

/// Commits handed to the engine when the test says so.
struct ChannelSource(mpsc::UnboundedReceiver<Vec<Commit>>);

#[async_trait]
impl CommitSource for ChannelSource {
    async fn next_commits(&mut self) -> Result<Option<Vec<Commit>>, SourceError> {
        Ok(self.0.recv().await)
    }
}

/// A server with an engine on a fast green simulated runner, whose commits
/// the test pushes, and a receiver of every engine event to compare with.
struct Setup<E> {
    cli: TestClient<E>,
    commits: mpsc::UnboundedSender<Vec<Commit>>,
    engine_events: broadcast::Receiver<EngineEvent>,
    stop: watch::Sender<bool>,
}

fn setup(event_buffer: Option<usize>) -> Setup<impl Endpoint> {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let runner = SimRunner::new(SimRunnerConfig {
        seed: 7,
        steps: HashMap::new(),
        default_step: StepBehaviour::green(1, 3),
        downtime_ms: (0, 0),
    });
    let engine = Engine::new(
        Pipeline::standard(),
        runner,
        Arc::clone(&store),
        EngineConfig::default(),
    )
    .expect("a valid engine configuration");
    let engine_events = engine.handle().subscribe();
    let (stop, stopped) = watch::channel(false);
    let mut api = Api::new(store, Some(engine.handle())).ending_streams_on(stopped);
    if let Some(n) = event_buffer {
        api = api.with_event_buffer(n);
    }
    let (commits, source) = mpsc::unbounded_channel();
    tokio::spawn(engine.run(Box::new(ChannelSource(source)), std::future::pending()));
    Setup {
        cli: TestClient::new(ci_server::api::app(api)),
        commits,
        engine_events,
        stop,
    }
}

type Sse = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// One message of the stream: its id (empty when none), name and JSON data.
#[derive(Debug)]
struct Message {
    id: String,
    kind: String,
    data: Value,
}

async fn connect<E: Endpoint>(cli: &TestClient<E>, last_event_id: Option<&str>) -> Sse {
    let mut req = cli.get("/events");
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.send().await;
    resp.assert_status_is_ok();
    Box::pin(resp.sse_stream())
}

async fn next(sse: &mut Sse) -> Message {
    loop {
        let event = tokio::time::timeout(WITHIN, sse.next())
            .await
            .expect("an event in time")
            .expect("the stream is open");
        if let Event::Message { id, event, data } = event {
            let data = serde_json::from_str(&data).expect("JSON data");
            return Message {
                id,
                kind: event,
                data,
            };
        }
    }
}

/// The engine's events (as the stream's JSON) until `commit`'s run and its
/// three steps have finished.
async fn events_of_run(
    engine_events: &mut broadcast::Receiver<EngineEvent>,
    commit: &str,
) -> Vec<Value> {
    let mut seen = Vec::new();
    let (mut steps, mut run) = (0, 0);
    while steps < 3 || run < 1 {
        let event = tokio::time::timeout(WITHIN, engine_events.recv())
            .await
            .unwrap_or_else(|_| panic!("{commit} did not finish in time; saw {seen:?}"))
            .expect("no engine event is missed");
        let value = serde_json::to_value(&event).expect("events serialize");
        if value["commit"] == commit {
            match value["type"].as_str() {
                Some("step_finished") => steps += 1,
                Some("run_finished") => run += 1,
                _ => {}
            }
        }
        seen.push(value);
    }
    seen
}

#[tokio::test]
async fn a_client_that_reconnects_with_its_last_event_id_gets_exactly_the_missed_events() {
    let Setup {
        cli,
        commits,
        mut engine_events,
        stop,
    } = setup(None);
    let chain = chain_commits(3);

    let mut first = connect(&cli, None).await;
    let connected = next(&mut first).await;
    assert_eq!(connected.kind, "connected");
    let epoch = connected.data["epoch"]
        .as_str()
        .expect("connected names the epoch")
        .to_owned();
    let id = |n: usize| format!("{epoch}-{n}");
    assert_eq!(connected.id, id(0));
    assert_eq!(connected.data["last_id"], id(0));

    // The first run, read live: numbered from 1, the engine's events as they are.
    commits
        .send(vec![chain[0].clone()])
        .expect("the engine runs");
    let run0 = events_of_run(&mut engine_events, chain[0].id.as_str()).await;
    for (i, expected) in run0.iter().enumerate() {
        let m = next(&mut first).await;
        assert_eq!(m.id, id(i + 1), "{m:?}");
        assert_eq!(&m.data, expected);
        assert_eq!(m.kind, expected["type"].as_str().unwrap_or(""));
    }
    let last_seen = id(run0.len());
    drop(first);

    // The second run happens while nobody is connected.
    commits
        .send(vec![chain[1].clone()])
        .expect("the engine runs");
    let run1 = events_of_run(&mut engine_events, chain[1].id.as_str()).await;

    let mut back = connect(&cli, Some(&last_seen)).await;
    let connected = next(&mut back).await;
    assert_eq!(connected.kind, "connected");
    assert_eq!(connected.id, last_seen);
    assert_eq!(connected.data["last_id"], last_seen.as_str());
    for (i, expected) in run1.iter().enumerate() {
        let m = next(&mut back).await;
        assert_eq!(m.id, id(run0.len() + i + 1), "{m:?}");
        assert_eq!(&m.data, expected);
    }
    // Nothing more was replayed: the next event is the next run's first.
    commits
        .send(vec![chain[2].clone()])
        .expect("the engine runs");
    let m = next(&mut back).await;
    assert_eq!(m.id, id(run0.len() + run1.len() + 1), "{m:?}");
    assert_eq!(m.kind, "run_queued");
    assert_eq!(m.data["commit"], chain[2].id.as_str());

    // An id from another start of the server: reset, with a position to resume from.
    let mut stale = connect(&cli, Some("0abc-3")).await;
    let connected = next(&mut stale).await;
    assert_eq!(connected.kind, "connected");
    assert_eq!(connected.id, "", "no id before a reset: {connected:?}");
    let reset = next(&mut stale).await;
    assert_eq!(reset.kind, "reset");
    assert_eq!(reset.data["reason"], "other_epoch");
    assert_eq!(connected.data["last_id"], reset.id.as_str());
    let position: usize = reset
        .id
        .strip_prefix(&format!("{epoch}-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a reset names a position of this epoch: {reset:?}"));
    assert!(position > run0.len() + run1.len(), "{reset:?}");

    // At shutdown the streams end.
    stop.send(true).expect("the API holds a receiver");
    for mut sse in [back, stale] {
        let end = tokio::time::timeout(WITHIN, async { while sse.next().await.is_some() {} }).await;
        assert!(end.is_ok(), "the event stream did not end at shutdown");
    }
}

#[tokio::test]
async fn an_id_older_than_the_buffer_gets_a_reset_then_live_events() {
    let Setup {
        cli,
        commits,
        mut engine_events,
        stop: _stop,
    } = setup(Some(2));
    let chain = chain_commits(2);
    let mut live = connect(&cli, None).await;
    let epoch = next(&mut live).await.data["epoch"]
        .as_str()
        .expect("connected names the epoch")
        .to_owned();
    commits
        .send(vec![chain[0].clone()])
        .expect("the engine runs");
    let run0 = events_of_run(&mut engine_events, chain[0].id.as_str()).await;
    assert!(run0.len() > 2, "{run0:?}");
    // Let the journal number every one of them (the live client sees the last).
    for _ in 0..run0.len() {
        next(&mut live).await;
    }

    let mut old = connect(&cli, Some(&format!("{epoch}-1"))).await;
    assert_eq!(next(&mut old).await.kind, "connected");
    let reset = next(&mut old).await;
    assert_eq!(reset.kind, "reset", "{reset:?}");
    assert_eq!(reset.data["reason"], "too_old");
    assert_eq!(reset.id, format!("{epoch}-{}", run0.len()));

    // The newest two are still kept.
    let mut recent = connect(&cli, Some(&format!("{epoch}-{}", run0.len() - 2))).await;
    assert_eq!(next(&mut recent).await.kind, "connected");
    for n in run0.len() - 1..=run0.len() {
        assert_eq!(next(&mut recent).await.id, format!("{epoch}-{n}"));
    }

    commits
        .send(vec![chain[1].clone()])
        .expect("the engine runs");
    for sse in [&mut old, &mut recent] {
        let m = next(sse).await;
        assert_eq!(m.id, format!("{epoch}-{}", run0.len() + 1));
        assert_eq!(m.kind, "run_queued");
    }
}
