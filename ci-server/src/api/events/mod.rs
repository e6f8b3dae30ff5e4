//! The live event stream behind `GET /events`: the engine's [`EngineEvent`]s as
//! server-sent events, for the live page and any other watcher.
//!
//! Events are notifications, not the record: a client that sees one re-reads
//! `/runs` or `/run/{commit}`. Every event has an id `EPOCH-N`; a client that
//! reconnects with the `Last-Event-ID` header gets the events it missed, or a
//! `reset` event (re-read everything) when they are no longer known. The
//! [`journal`] numbers, keeps and replays them.

pub mod journal;

use ci_engine::EngineEvent;
use poem::web::sse::Event;
use poem_openapi::types::Any;

pub use journal::{DEFAULT_CAPACITY, Journal, ResetReason, StreamEvent};

/// The first event of every stream, so a client knows it is connected and
/// where it is.
pub const CONNECTED: &str = "connected";
/// The event that tells a client it missed events that cannot be replayed:
/// re-read everything, then follow the events that come after it.
pub const RESET: &str = "reset";

fn event_json(event: &EngineEvent) -> serde_json::Value {
    serde_json::to_value(event).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "an engine event did not serialize");
        serde_json::json!({ "type": "unknown" })
    })
}

/// The server-sent event for one item of a client's stream (see
/// [`StreamEvent::to_sse`]).
pub fn to_sse(item: Any<StreamEvent>) -> Event {
    item.0.to_sse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ci_engine::{AttemptOutcome, StepStatus};

    fn sse_of(value: serde_json::Value) -> Event {
        to_sse(Any(StreamEvent::new(Some("e-1".into()), value)))
    }

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
        let sse = sse_of(withdrawn).to_string();
        assert!(sse.contains("event: step_withdrawn"), "{sse}");
    }

    #[test]
    fn a_retry_names_the_run_its_new_place_and_the_steps_that_run_again() {
        let retried = event_json(&EngineEvent::RunRetried {
            commit: "abc".into(),
            seq: 12,
            steps: vec!["build".into(), "test".into()],
        });
        assert_eq!(
            retried,
            serde_json::json!({
                "type": "run_retried",
                "commit": "abc",
                "seq": 12,
                "steps": ["build", "test"],
            })
        );
        assert!(sse_of(retried).to_string().contains("event: run_retried"));
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
        let sse = sse_of(down).to_string();
        assert!(sse.contains("event: runner_down"), "{sse}");
        assert!(sse.contains("\"runner\":\"runner-1\""), "{sse}");

        let up = event_json(&EngineEvent::RunnerUp {
            runner: "runner-1".into(),
        });
        assert_eq!(
            up,
            serde_json::json!({ "type": "runner_up", "runner": "runner-1" })
        );
        assert!(sse_of(up).to_string().contains("event: runner_up"));
    }
}
