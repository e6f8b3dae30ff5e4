//! Why a step has not started: [`Waiting`], as data and as a sentence, from
//! [`EngineHandle::waiting`](crate::EngineHandle::waiting).
//!
//! Only the engine knows: what it needs, who holds the permit it waits for and
//! on which runner, which runner is down since when, when a backoff ends. The
//! answer is a snapshot taken by the scheduler's own task, so it agrees with
//! the state that decides dispatch.

use std::fmt;

use serde::Serialize;

use crate::model::{CommitId, Scope, StepStatus, UnixMillis};

/// A request that holds a permit a waiting step needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// The commit of the holding request.
    pub commit: CommitId,
    /// Its step.
    pub step: String,
    /// Its attempt number.
    pub attempt: u32,
    /// The runner it is on.
    pub runner: String,
    /// The engine gave up on it (timeout, cancel) but the runner has not
    /// answered it yet, so it still holds its permit.
    pub given_up: bool,
}

/// Why a step that is not running has not started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Waiting {
    /// A step it needs has not succeeded yet.
    Needs {
        /// The first such step, in pipeline order.
        step: String,
        /// That step's status now.
        status: StepStatus,
    },
    /// Ready, but every runner it may use is full for its concurrency class;
    /// these requests hold the permits.
    Permit {
        /// The class (group or step name).
        class: String,
        /// Whether the class is limited per runner or across the pool.
        scope: Scope,
        /// The class's limit.
        limit: u32,
        /// The requests that hold the permits, oldest commit first.
        holders: Vec<Holder>,
    },
    /// Ready, but every runner it may use has as many requests in flight as
    /// it may (`max_in_flight`).
    RunnerFull {
        /// The runners.
        runners: Vec<String>,
    },
    /// Ready, but the runner it must use, or every runner, is down.
    RunnerDown {
        /// The runners it waits for.
        runners: Vec<String>,
        /// Since when (wall clock) it has had no runner to go to.
        since: UnixMillis,
        /// When it ends `error` if no runner comes back (wall clock).
        gives_up_at: UnixMillis,
    },
    /// Waiting out the backoff before a retry.
    Backoff {
        /// When it is ready again (wall clock).
        until: UnixMillis,
    },
    /// Its retry waits until a runner ends an earlier attempt of it that the
    /// engine gave up on (so the step is never in flight twice).
    EarlierAttempt {
        /// The runner that still holds it.
        runner: String,
        /// Its attempt number.
        attempt: u32,
    },
    /// Ready, and goes out at the next dispatch.
    Dispatching,
}

/// Why one step of a run has not started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepWait {
    /// The step.
    pub step: String,
    /// Why it waits.
    pub waiting: Waiting,
}

impl fmt::Display for Waiting {
    /// One sentence for people, naming what it waits for.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Needs { step, status } => {
                write!(f, "waits for {step}, which is {status}")
            }
            Self::Permit {
                class,
                scope,
                limit,
                holders,
            } => {
                let place = match scope {
                    Scope::Runner => "on each runner it may use",
                    Scope::Pool => "across the pool",
                };
                let times = if *limit == 1 {
                    "one at a time".to_owned()
                } else {
                    format!("{limit} at a time")
                };
                write!(
                    f,
                    "waits for a free {class} slot ({times} {place}); held by "
                )?;
                for (i, h) in holders.iter().enumerate() {
                    if i > 0 {
                        f.write_str(if i + 1 == holders.len() {
                            " and "
                        } else {
                            ", "
                        })?;
                    }
                    write!(
                        f,
                        "{} of {} (attempt {}) on {}",
                        h.step,
                        h.commit.short(10),
                        h.attempt,
                        h.runner
                    )?;
                    if h.given_up {
                        f.write_str(", given up on but not yet answered")?;
                    }
                }
                if holders.is_empty() {
                    f.write_str("nobody (it goes out at the next dispatch)")?;
                }
                Ok(())
            }
            Self::RunnerFull { runners } => write!(
                f,
                "waits for room on {}: as many requests in flight as allowed",
                runners.join(", ")
            ),
            Self::RunnerDown {
                runners,
                since,
                gives_up_at,
            } => {
                let who = match runners.as_slice() {
                    [one] => format!("runner {one} is down"),
                    _ => format!("every runner ({}) is down", runners.join(", ")),
                };
                write!(
                    f,
                    "waits because {who}, since {}; it ends error at {} if none comes back",
                    clock(*since),
                    clock(*gives_up_at)
                )
            }
            Self::Backoff { until } => {
                write!(
                    f,
                    "waits to be retried after a backoff, until {}",
                    clock(*until)
                )
            }
            Self::EarlierAttempt { runner, attempt } => write!(
                f,
                "waits until {runner} ends attempt {attempt}, which the engine gave up on"
            ),
            Self::Dispatching => f.write_str("is being sent to a runner"),
        }
    }
}

/// A wall-clock time as `HH:MM:SS UTC`, for sentences (the data has the millis).
fn clock(at: UnixMillis) -> String {
    let secs = at.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_name_what_is_waited_for() {
        let permit = Waiting::Permit {
            class: "build".into(),
            scope: Scope::Runner,
            limit: 1,
            holders: vec![
                Holder {
                    commit: CommitId::new("0123456789abcdef"),
                    step: "build".into(),
                    attempt: 2,
                    runner: "sim-1".into(),
                    given_up: false,
                },
                Holder {
                    commit: CommitId::new("fedcba9876543210"),
                    step: "build".into(),
                    attempt: 1,
                    runner: "sim-2".into(),
                    given_up: true,
                },
            ],
        };
        assert_eq!(
            permit.to_string(),
            "waits for a free build slot (one at a time on each runner it may use); held by \
             build of 0123456789 (attempt 2) on sim-1 and build of fedcba9876 (attempt 1) on \
             sim-2, given up on but not yet answered"
        );
        let down = Waiting::RunnerDown {
            runners: vec!["sim-2".into()],
            since: 3_600_000 + 61_000,
            gives_up_at: 7_200_000,
        };
        assert_eq!(
            down.to_string(),
            "waits because runner sim-2 is down, since 01:01:01 UTC; it ends error at 02:00:00 UTC if none comes back"
        );
        let needs = Waiting::Needs {
            step: "build".into(),
            status: StepStatus::Running,
        };
        assert_eq!(needs.to_string(), "waits for build, which is running");
    }

    #[test]
    fn the_data_names_its_kind() {
        let json = serde_json::to_value(Waiting::Backoff { until: 5 }).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "backoff", "until": 5}));
    }
}
