//! `GET /healthz`: whether this server can do its job, for load balancers,
//! orchestrators and people.
//!
//! The server is *unavailable* (503) when:
//!
//! - its store does not answer a cheap read ([`RunStore::max_seq`]) within
//!   [`HEALTH_TIMEOUT`], or answers it with an error;
//! - its engine has stopped, or does not describe its runners within
//!   [`HEALTH_TIMEOUT`];
//! - no runner of the pool has been up for longer than the unreachable limit:
//!   every runner is down (or probing) and the latest of their `since` times is
//!   older than the limit. By then steps waiting for a runner start to end
//!   `error`, so the server is no longer running commits.
//!
//! An outage of some runners, or of all of them for less than the limit, is
//! not a reason: the body shows it and the answer stays 200. An API built
//! without an engine (an embedded, read-only use) reports its runners as
//! unknown and is healthy as long as its store answers: serving the record is
//! all such a server does.

use std::time::Duration;

use ci_engine::model::{UnixMillis, now_millis};
use ci_engine::{EngineHandle, RunStore, RunnerState, RunnerStatus};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object};

use super::runners::{EngineQueryError, engine_runners};

/// How long the health check waits for the store's read and for the engine's
/// answer (each; they are asked at the same time).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What part this server plays among those sharing one run database.
#[derive(Enum, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum Role {
    /// The active server: it holds the lease, runs commits and writes the
    /// record (a server alone on its database is always this).
    #[default]
    Primary,
    /// A standby: another server holds the lease; this one serves runs,
    /// logs and pages from the database and takes over when the lease is
    /// free. Healthy (200) while its store answers.
    Standby,
}

/// The overall verdict of `GET /healthz`.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum HealthStatus {
    /// The server can do its job (answered with 200).
    Ok,
    /// It cannot; `reason` says why (answered with 503).
    Unavailable,
}

/// Whether the store answers.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct StoreHealth {
    /// It answered a read in time.
    pub ok: bool,
    /// What went wrong when it did not.
    #[oai(nullable)]
    pub error: Option<String>,
}

/// The runners at a glance (`GET /runners` has the details).
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct RunnersHealth {
    /// Whether the engine described its runners; when `false` the counts are
    /// `null` and `error` says why.
    pub known: bool,
    /// Runners in the pool.
    #[oai(nullable)]
    pub total: Option<u32>,
    /// Runners that take steps now.
    #[oai(nullable)]
    pub up: Option<u32>,
    /// Runners that are down or probing.
    #[oai(nullable)]
    pub down: Option<u32>,
    /// When no runner is up: since when none has been (the latest of their
    /// `since` times), milliseconds since the Unix epoch; `null` while one is up.
    #[oai(nullable)]
    pub none_up_since: Option<i64>,
    /// Why the runners are not known.
    #[oai(nullable)]
    pub error: Option<String>,
}

/// The body of `GET /healthz`, the same shape for 200 and 503.
#[derive(Object, Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// `ok` (200) or `unavailable` (503).
    pub status: HealthStatus,
    /// What part this server plays.
    pub role: Role,
    /// The active server as this one last saw it: where it serves, its
    /// process id and host (on the active server, itself); `null` when
    /// none holds the lease or it is not known yet, and on a server that
    /// shares its database with no other.
    #[oai(nullable)]
    pub active_server: Option<String>,
    /// Why the server is unavailable, in one sentence; `null` when it is not.
    #[oai(nullable)]
    pub reason: Option<String>,
    /// Whether the store answers.
    pub store: StoreHealth,
    /// The runners at a glance.
    pub runners: RunnersHealth,
    /// How long no runner may be up before the server is unavailable,
    /// milliseconds.
    pub unreachable_limit_ms: u64,
}

/// Answers of `GET /healthz`.
#[derive(ApiResponse, Debug)]
pub enum HealthResponse {
    /// The server can do its job.
    #[oai(status = 200)]
    Ok(Json<Health>),
    /// The server cannot do its job; `reason` says why.
    #[oai(status = 503)]
    Unavailable(Json<Health>),
}

impl From<Health> for HealthResponse {
    fn from(health: Health) -> Self {
        match health.status {
            HealthStatus::Ok => Self::Ok(Json(health)),
            HealthStatus::Unavailable => Self::Unavailable(Json(health)),
        }
    }
}

/// What the health check found out, before it is judged.
#[derive(Clone, Debug)]
pub struct Findings {
    /// The store's read: `Err` with a sentence when it failed or took too long.
    pub store: Result<(), String>,
    /// The engine's runners.
    pub runners: Result<Vec<RunnerStatus>, EngineQueryError>,
    /// Wall-clock time of the check.
    pub now: UnixMillis,
}

/// Judges `findings`: see the module documentation for when the server is
/// unavailable.
pub fn assess(findings: Findings, role: Role, unreachable_limit: Duration) -> Health {
    let limit_ms = u64::try_from(unreachable_limit.as_millis()).unwrap_or(u64::MAX);
    let mut reasons = Vec::new();

    let store = match findings.store {
        Ok(()) => StoreHealth {
            ok: true,
            error: None,
        },
        Err(e) => {
            reasons.push(e.clone());
            StoreHealth {
                ok: false,
                error: Some(e),
            }
        }
    };

    let runners = match findings.runners {
        Ok(list) => {
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            let up = list.iter().filter(|r| r.state == RunnerState::Up).count();
            let none_up_since = if up == 0 {
                list.iter().map(|r| r.since).max()
            } else {
                None
            };
            if let Some(since) = none_up_since {
                let down_ms = u64::try_from(findings.now.saturating_sub(since)).unwrap_or(0);
                if down_ms > limit_ms {
                    reasons.push(no_runner_up(&list, down_ms, limit_ms));
                }
            }
            RunnersHealth {
                known: true,
                total: Some(count(list.len())),
                up: Some(count(up)),
                down: Some(count(list.len() - up)),
                none_up_since,
                error: None,
            }
        }
        Err(e) => {
            // Without an engine there is nothing to run; the API still serves
            // the record, which is all it is there for.
            if e != EngineQueryError::NoEngine {
                reasons.push(e.to_string());
            }
            RunnersHealth {
                known: false,
                total: None,
                up: None,
                down: None,
                none_up_since: None,
                error: Some(e.to_string()),
            }
        }
    };

    let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
    Health {
        status: if reason.is_some() {
            HealthStatus::Unavailable
        } else {
            HealthStatus::Ok
        },
        role,
        active_server: None,
        reason,
        store,
        runners,
        unreachable_limit_ms: limit_ms,
    }
}

/// The sentence for a pool with no runner up for `down_ms`.
fn no_runner_up(list: &[RunnerStatus], down_ms: u64, limit_ms: u64) -> String {
    let mut sentence = format!(
        "no runner has been up for {down_ms} ms, longer than the unreachable limit of \
         {limit_ms} ms (all {} runners are down)",
        list.len()
    );
    let errors: Vec<String> = list
        .iter()
        .filter_map(|r| Some(format!("{}: {}", r.id, r.last_error.as_deref()?)))
        .collect();
    if !errors.is_empty() {
        sentence.push_str(&format!("; last errors: {}", errors.join(", ")));
    }
    sentence
}

/// Reads from `store` and asks `engine` for its runners (at the same time,
/// each within `timeout`), then judges the answers.
/// `active_server` is reported as it is.
pub async fn check(
    store: &dyn RunStore,
    engine: Option<&EngineHandle>,
    role: Role,
    active_server: Option<String>,
    unreachable_limit: Duration,
    timeout: Duration,
) -> Health {
    let store_read = async {
        match tokio::time::timeout(timeout, store.max_seq()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("the store failed a read: {e}")),
            Err(_) => Err(format!(
                "the store did not answer a read within {timeout:?}"
            )),
        }
    };
    let (store, runners) = tokio::join!(store_read, engine_runners(engine, timeout));
    let mut health = assess(
        Findings {
            store,
            runners,
            now: now_millis(),
        },
        role,
        unreachable_limit,
    );
    health.active_server = active_server;
    if let Some(reason) = &health.reason {
        // Checked as often as a load balancer likes; the causes are logged
        // where they happen.
        tracing::debug!(%reason, "health check: unavailable");
    }
    health
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const NOW: UnixMillis = 1_700_000_100_000;
    const LIMIT: Duration = Duration::from_secs(60);

    fn runner(id: &str, state: RunnerState, since: UnixMillis) -> RunnerStatus {
        RunnerStatus {
            id: id.to_owned(),
            state,
            since,
            in_flight: 0,
            in_flight_by_class: BTreeMap::new(),
            held: 0,
            outages: 1,
            crashes: 0,
            lost_attempts: 0,
            last_error: (state != RunnerState::Up).then(|| "connection refused".to_owned()),
        }
    }

    fn judge(store: Result<(), String>, runners: Vec<RunnerStatus>) -> Health {
        assess(
            Findings {
                store,
                runners: Ok(runners),
                now: NOW,
            },
            Role::Primary,
            LIMIT,
        )
    }

    #[test]
    fn some_runners_down_is_still_healthy() {
        let h = judge(
            Ok(()),
            vec![
                runner("a", RunnerState::Down, NOW - 3_600_000),
                runner("b", RunnerState::Up, NOW - 10),
                runner("c", RunnerState::Probing, NOW - 3_600_000),
            ],
        );
        assert_eq!(h.status, HealthStatus::Ok, "{h:?}");
        assert_eq!(h.reason, None);
        assert_eq!(
            (h.runners.total, h.runners.up, h.runners.down),
            (Some(3), Some(1), Some(2))
        );
        assert_eq!(h.runners.none_up_since, None);
    }

    #[test]
    fn all_down_is_unavailable_only_past_the_limit_from_the_latest_change() {
        let limit_ms = i64::try_from(LIMIT.as_millis()).expect("fits");
        // One went down long ago, the other exactly `limit` ago: not past it yet.
        let at_limit = judge(
            Ok(()),
            vec![
                runner("a", RunnerState::Down, NOW - 10 * limit_ms),
                runner("b", RunnerState::Probing, NOW - limit_ms),
            ],
        );
        assert_eq!(at_limit.status, HealthStatus::Ok, "{at_limit:?}");
        assert_eq!(at_limit.runners.none_up_since, Some(NOW - limit_ms));
        assert_eq!(at_limit.runners.up, Some(0));

        let past = judge(
            Ok(()),
            vec![
                runner("a", RunnerState::Down, NOW - 10 * limit_ms),
                runner("b", RunnerState::Probing, NOW - limit_ms - 1),
            ],
        );
        assert_eq!(past.status, HealthStatus::Unavailable);
        let reason = past.reason.expect("a reason");
        assert!(
            reason.contains("no runner has been up") && reason.contains("unreachable limit"),
            "{reason}"
        );
        assert!(reason.contains("b: connection refused"), "{reason}");
        assert!(past.store.ok);
    }

    #[test]
    fn a_failing_store_is_unavailable_and_named() {
        let h = judge(
            Err("the store failed a read: disk I/O error".to_owned()),
            vec![runner("a", RunnerState::Up, NOW)],
        );
        assert_eq!(h.status, HealthStatus::Unavailable);
        assert!(!h.store.ok);
        assert_eq!(
            h.reason.as_deref(),
            Some("the store failed a read: disk I/O error")
        );
        assert_eq!(h.runners.up, Some(1));
    }

    #[test]
    fn no_engine_is_unknown_runners_but_healthy_a_stopped_one_is_not() {
        let judge_engine = |e: EngineQueryError| {
            assess(
                Findings {
                    store: Ok(()),
                    runners: Err(e),
                    now: NOW,
                },
                Role::Primary,
                LIMIT,
            )
        };
        let none = judge_engine(EngineQueryError::NoEngine);
        assert_eq!(none.status, HealthStatus::Ok);
        assert!(!none.runners.known);
        assert_eq!(none.runners.up, None);
        assert!(none.runners.error.is_some());

        for e in [
            EngineQueryError::NotRunning,
            EngineQueryError::Timeout(HEALTH_TIMEOUT),
        ] {
            let h = judge_engine(e.clone());
            assert_eq!(h.status, HealthStatus::Unavailable, "{e}");
            assert_eq!(h.reason, Some(e.to_string()));
        }
    }

    #[test]
    fn every_reason_is_given() {
        let h = assess(
            Findings {
                store: Err("the store did not answer a read within 2s".to_owned()),
                runners: Err(EngineQueryError::NotRunning),
                now: NOW,
            },
            Role::Primary,
            LIMIT,
        );
        let reason = h.reason.expect("reason");
        assert!(
            reason.contains("store") && reason.contains("engine is not running"),
            "{reason}"
        );
    }
}
