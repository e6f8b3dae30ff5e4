//! The live event stream behind `GET /events`: the engine's [`EngineEvent`]s as
//! server-sent events, for the live page and any other watcher.
//!
//! Events are notifications, not the record: a client that sees one re-reads
//! `/runs` or `/run/{commit}`. Every event has an id `EPOCH-N`; a client that
//! reconnects with the `Last-Event-ID` header gets the events it missed, or a
//! `reset` event (re-read everything) when they are no longer known. The
//! `journal` numbers, keeps and replays them; `schema` describes them for
//! the OpenAPI document.

mod journal;
pub(super) mod schema;

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

    /// Every kind of event the server sends, in its stream form, agrees with
    /// the document's description of it ([`schema`]): the data parses as an
    /// [`schema::EventData`] and is written back the same (no field left
    /// undescribed), the name is the data's `type` and an [`schema::EventName`],
    /// and the id has the documented form.
    #[tokio::test]
    async fn every_kind_of_event_is_as_documented() {
        use poem_openapi::types::{ParseFromJSON, ToJSON};

        let (tx, rx) = tokio::sync::broadcast::channel(16);
        let journal = Journal::spawn(rx, 16);
        let commit = || ci_engine::CommitId::new("abcd000000000000000000000000000000000001");
        let engine_events = [
            EngineEvent::RunQueued {
                commit: commit(),
                seq: 7,
            },
            EngineEvent::RunRetried {
                commit: commit(),
                seq: 12,
                steps: vec!["build".into(), "test".into()],
            },
            EngineEvent::StepStarted {
                commit: commit(),
                step: "build".into(),
                attempt: 1,
                runner: "sim-1".into(),
            },
            EngineEvent::StepFinished {
                commit: commit(),
                step: "build".into(),
                attempt: 1,
                outcome: AttemptOutcome::Lost,
                status: StepStatus::Pending,
                retry_in_ms: Some(250),
            },
            EngineEvent::StepFinished {
                commit: commit(),
                step: "build".into(),
                attempt: 2,
                outcome: AttemptOutcome::Success,
                status: StepStatus::Success,
                retry_in_ms: None,
            },
            EngineEvent::StepWithdrawn {
                commit: commit(),
                step: "test".into(),
                attempt: 1,
                reason: "connection refused".into(),
            },
            EngineEvent::RunFinished {
                commit: commit(),
                status: ci_engine::RunStatus::Failure,
            },
            EngineEvent::RunnerDown {
                runner: "sim-1".into(),
                reason: "refused".into(),
            },
            EngineEvent::RunnerUp {
                runner: "sim-1".into(),
            },
        ];
        // A malformed id: `connected` (without an id), then `reset`.
        let mut stream = Box::pin(journal.stream(Some("not-an-id!")));
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(next(&mut stream).await);
        }
        for event in &engine_events {
            tx.send(event.clone()).expect("the journal listens");
            seen.push(next(&mut stream).await);
        }
        let kinds: Vec<&str> = seen.iter().map(StreamEvent::kind).collect();
        assert_eq!(
            kinds,
            [
                CONNECTED,
                RESET,
                "run_queued",
                "run_retried",
                "step_started",
                "step_finished",
                "step_finished",
                "step_withdrawn",
                "run_finished",
                "runner_down",
                "runner_up"
            ]
        );
        for event in &seen {
            let data = event.data().clone();
            let parsed = schema::EventData::parse_from_json(Some(data.clone()))
                .unwrap_or_else(|e| panic!("{data} is not an EventData: {}", e.into_message()));
            assert_eq!(
                parsed.to_json(),
                Some(data.clone()),
                "a field is not described"
            );
            let name = schema::EventName::parse_from_json(Some(serde_json::json!(event.kind())));
            assert!(name.is_ok(), "{} is not an EventName", event.kind());
            if let Some(id) = event.id() {
                let (epoch, n) = id.split_once('-').expect("EPOCH-N");
                assert!(
                    epoch
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                        && n.bytes().all(|b| b.is_ascii_digit()),
                    "{id}"
                );
            }
        }
        assert!(
            seen[0].id().is_none(),
            "a connected before a reset has no id"
        );
        assert!(seen[1].id().is_some());
    }

    async fn next(stream: &mut (impl futures::Stream<Item = StreamEvent> + Unpin)) -> StreamEvent {
        use futures::StreamExt;
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
    }

    #[test]
    fn reset_reasons_are_written_as_documented() {
        use poem_openapi::types::ToJSON;
        for reason in [
            ResetReason::OtherEpoch,
            ResetReason::MalformedId,
            ResetReason::TooOld,
            ResetReason::FutureId,
            ResetReason::Lagged,
            ResetReason::Gap,
        ] {
            assert_eq!(
                schema::ResetReasonDto::from(reason).to_json(),
                Some(serde_json::json!(reason.as_str()))
            );
        }
    }
}
