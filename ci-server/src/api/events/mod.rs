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

#[cfg(test)]
mod tests {
    use super::*;
    use ci_engine::{AttemptOutcome, StepStatus};

    #[test]
    fn every_field_of_a_step_event_reaches_the_stream() {
        let finished = event_json(&EngineEvent::StepFinished {
            commit: "abc".into(),
            step: "build".into(),
            attempt: 2,
            outcome: AttemptOutcome::Lost,
            status: StepStatus::Pending,
            retry_in_ms: Some(750),
        });
        assert_eq!(finished["type"], "step_finished");
        assert_eq!(finished["retry_in_ms"], 750);
        assert_eq!(finished["outcome"], "lost");
        assert_eq!(finished["status"], "pending");

        let withdrawn = event_json(&EngineEvent::StepWithdrawn {
            commit: "abc".into(),
            step: "test".into(),
            attempt: 3,
            reason: "connection refused".into(),
        });
        assert_eq!(
            withdrawn,
            serde_json::json!({
                "type": "step_withdrawn",
                "commit": "abc",
                "step": "test",
                "attempt": 3,
                "reason": "connection refused",
            })
        );
        let sse = to_sse(withdrawn).to_string();
        assert!(sse.contains("event: step_withdrawn"), "{sse}");
    }

    #[test]
    fn runner_events_name_their_runner() {
        let started = event_json(&EngineEvent::StepStarted {
            commit: "abc".into(),
            step: "build".into(),
            attempt: 1,
            runner: "runner-2".into(),
        });
        assert_eq!(
            started,
            serde_json::json!({
                "type": "step_started",
                "commit": "abc",
                "step": "build",
                "attempt": 1,
                "runner": "runner-2",
            })
        );

        let down = event_json(&EngineEvent::RunnerDown {
            runner: "runner-1".into(),
            reason: "runner unreachable: connection refused".into(),
        });
        assert_eq!(
            down,
            serde_json::json!({
                "type": "runner_down",
                "runner": "runner-1",
                "reason": "runner unreachable: connection refused",
            })
        );
        let sse = to_sse(down).to_string();
        assert!(sse.contains("event: runner_down"), "{sse}");
        assert!(sse.contains("\"runner\":\"runner-1\""), "{sse}");

        let up = event_json(&EngineEvent::RunnerUp {
            runner: "runner-1".into(),
        });
        assert_eq!(
            up,
            serde_json::json!({ "type": "runner_up", "runner": "runner-1" })
        );
        assert!(to_sse(up).to_string().contains("event: runner_up"));
    }
}
