//! The live event stream behind `GET /events`: the engine's [`EngineEvent`]s as
//! server-sent events, for the live page and any other watcher.
//!
//! Events are notifications, not the record: a client that sees one re-reads
//! `/runs` or `/run/{commit}`. A client that falls too far behind gets a
//! `lagged` event (and should re-read everything).

use ci_engine::{EngineEvent, EngineHandle};
use futures::Stream;
use poem::web::sse::Event;
use tokio::sync::broadcast;

/// The first event of every stream, so a client knows it is connected.
pub const CONNECTED: &str = "connected";
/// The event sent when the client fell behind and missed events.
pub const LAGGED: &str = "lagged";

/// The engine's events from now on, as JSON values with a `type` field, after a
/// first `{"type": "connected"}`. Ends when the engine is dropped.
pub fn engine_events(
    handle: &EngineHandle,
) -> impl Stream<Item = serde_json::Value> + Send + 'static {
    let rx = handle.subscribe();
    let first = futures::stream::once(async { serde_json::json!({ "type": CONNECTED }) });
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        let value = match rx.recv().await {
            Ok(event) => event_json(&event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                serde_json::json!({ "type": LAGGED, "missed": missed })
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((value, rx))
    });
    futures::StreamExt::chain(first, rest)
}

fn event_json(event: &EngineEvent) -> serde_json::Value {
    serde_json::to_value(event).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "an engine event did not serialize");
        serde_json::json!({ "type": "unknown" })
    })
}

/// The server-sent event for `value`: its `type` as the event name, the JSON as data.
pub fn to_sse(value: serde_json::Value) -> Event {
    let kind = value
        .get("type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("message")
        .to_owned();
    Event::message(value.to_string()).event_type(kind)
}
