//! Several runners behind one engine: [`RunnerPool`], and what the engine can
//! say about each of them ([`RunnerStatus`]).
//!
//! # Contract
//!
//! Every runner of a pool speaks for its own machine: a concurrency class of
//! [`Scope::Runner`](crate::Scope::Runner) (the default) is limited on each
//! runner separately, one of [`Scope::Pool`](crate::Scope::Pool) across all of
//! them; [`EngineConfig::max_in_flight`](crate::EngineConfig::max_in_flight)
//! caps each runner. The engine sends the oldest ready step to a runner that is
//! up and has a free permit for the step's class, the one with the fewest
//! requests of that class in flight first (then the fewest in flight at all,
//! then the first in pool order). A step with
//! [`same_runner_as`](crate::StepSpec::same_runner_as) goes only to the runner
//! where the named step succeeded, and waits for it while it is down. A runner
//! that is down gets no steps; it is probed on its own while the others carry on.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::model::UnixMillis;
use crate::runner::StepRunner;

/// A runner and the id it is known by in records, events and status.
#[derive(Clone)]
pub struct PoolMember {
    /// Unique in the pool; recorded on every attempt sent to the runner.
    pub id: String,
    /// The runner.
    pub runner: Arc<dyn StepRunner>,
}

/// The runners an engine dispatches to, in a fixed order (the order breaks
/// ties between equally loaded runners).
#[derive(Clone)]
pub struct RunnerPool {
    members: Vec<PoolMember>,
}

impl std::fmt::Debug for PoolMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMember")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RunnerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.members.iter().map(|m| &m.id))
            .finish()
    }
}

/// Why a list of runners is not a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No runners at all.
    #[error("the pool has no runners")]
    Empty,
    /// A runner id is empty.
    #[error("a runner id is empty")]
    EmptyId,
    /// Two runners share an id.
    #[error("runner id {0:?} is used twice")]
    DuplicateId(String),
}

impl RunnerPool {
    /// A pool of the given runners, in order.
    ///
    /// # Errors
    /// [`PoolError`] when there are none, or an id is empty or repeated.
    pub fn new(members: Vec<PoolMember>) -> Result<Self, PoolError> {
        if members.is_empty() {
            return Err(PoolError::Empty);
        }
        for (i, m) in members.iter().enumerate() {
            if m.id.is_empty() {
                return Err(PoolError::EmptyId);
            }
            if members[..i].iter().any(|o| o.id == m.id) {
                return Err(PoolError::DuplicateId(m.id.clone()));
            }
        }
        Ok(Self { members })
    }

    /// A pool of one runner with the id `runner`.
    pub fn single(runner: Arc<dyn StepRunner>) -> Self {
        Self {
            members: vec![PoolMember {
                id: "runner".into(),
                runner,
            }],
        }
    }

    /// The runners, in order.
    pub fn members(&self) -> &[PoolMember] {
        &self.members
    }

    /// Number of runners (at least one).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a pool has at least one runner.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// Whether a runner takes steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerState {
    /// It answers; it gets steps.
    Up,
    /// It refused a request, or held a request the engine gave up on for too
    /// long; it gets no steps and is probed after a delay.
    Down,
    /// Down, with a probe out now.
    Probing,
}

/// One runner as the engine sees it, from [`EngineHandle::runners`](crate::EngineHandle::runners).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunnerStatus {
    /// Its id in the pool.
    pub id: String,
    /// Whether it takes steps.
    pub state: RunnerState,
    /// Since when it has been up, or down (wall clock): the engine's start, or
    /// the last change between up and down.
    pub since: UnixMillis,
    /// Open requests, including those the engine gave up on (which still hold
    /// their permits).
    pub in_flight: u32,
    /// Open requests per concurrency class (classes with none are left out).
    pub in_flight_by_class: BTreeMap<String, u32>,
    /// Of `in_flight`, requests the engine gave up on (timeout, cancel) that
    /// the runner has not answered yet.
    pub held: u32,
    /// Times it went down.
    pub outages: u64,
    /// Times its connections closed with requests open (it crashed or
    /// restarted), counted once per burst of lost requests.
    pub crashes: u64,
    /// Attempts lost on it: the connection closed, or it did not answer in time.
    pub lost_attempts: u64,
    /// The last error it gave (unreachable, lost, protocol), if any.
    pub last_error: Option<String>,
}

/// One concurrency class as the engine sees it now, from
/// [`EngineHandle::classes`](crate::EngineHandle::classes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClassStatus {
    /// The class (group or step name).
    pub class: String,
    /// Whether its limit holds per runner or across the pool.
    pub scope: crate::Scope,
    /// Its limit; `None` is unlimited.
    pub limit: Option<u32>,
    /// Ready steps waiting for a permit or a runner (pinned ones included).
    pub ready: u32,
    /// Open requests of the class on all runners (given-up ones included).
    pub in_flight: u32,
}
