//! A deterministic simulation of a flaky step runner, and a scripted commit
//! source, for tests and benchmarks in (usually paused) tokio time.
//!
//! [`SimRunner`] behaves like the original runner by default: lint 0–99 ms and
//! always green; build and test 0–999 ms, failing half the time; a test crashes
//! the runner one time in five. A crash loses every request in flight (they come
//! back as [`RunnerError::Lost`]) and leaves the runner unreachable for a while.
//! It records a [`TraceEvent`] for each request it accepts and each answer it
//! gives, in program order, so tests can check the scheduler's invariants.
//! Like a real runner it goes on working on a request whose caller stopped
//! waiting (a timeout, a cancel, a shutdown): such a request stays "in flight"
//! in the trace until its drawn duration is over or a crash ends it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::model::{Commit, CommitId};
use crate::runner::{Probe, RunnerError, StepOutput, StepRequest, StepRunner, StepVerdict};
use crate::source::{CommitSource, SourceError};

/// How one kind of step behaves on the simulated runner.
#[derive(Clone, Debug, PartialEq)]
pub struct StepBehaviour {
    /// Shortest duration, milliseconds.
    pub min_ms: u64,
    /// Longest duration, milliseconds (inclusive).
    pub max_ms: u64,
    /// Probability that the step reports failure.
    pub fail_rate: f64,
    /// Probability that the step crashes the runner after its work.
    pub crash_rate: f64,
    /// Probability that the runner rejects the request outright.
    pub reject_rate: f64,
}

impl StepBehaviour {
    /// Always succeeds after `min..=max` ms.
    pub fn green(min_ms: u64, max_ms: u64) -> Self {
        Self {
            min_ms,
            max_ms,
            fail_rate: 0.0,
            crash_rate: 0.0,
            reject_rate: 0.0,
        }
    }
}

/// Settings of a [`SimRunner`].
#[derive(Clone, Debug, PartialEq)]
pub struct SimRunnerConfig {
    /// Seed of every random draw.
    pub seed: u64,
    /// Behaviour per step name.
    pub steps: HashMap<String, StepBehaviour>,
    /// Behaviour of step names not in `steps`.
    pub default_step: StepBehaviour,
    /// After a crash the runner is unreachable for `min..=max` ms.
    pub downtime_ms: (u64, u64),
}

impl SimRunnerConfig {
    /// The original runner: lint 0–99 ms green; build 0–999 ms failing half the
    /// time; test like build and crashing one time in five; down 0.5–3 s after a crash.
    pub fn original(seed: u64) -> Self {
        let build = StepBehaviour {
            min_ms: 0,
            max_ms: 999,
            fail_rate: 0.5,
            crash_rate: 0.0,
            reject_rate: 0.0,
        };
        let test = StepBehaviour {
            crash_rate: 0.2,
            ..build.clone()
        };
        Self {
            seed,
            steps: HashMap::from([
                ("lint".to_owned(), StepBehaviour::green(0, 99)),
                ("build".to_owned(), build.clone()),
                ("test".to_owned(), test),
            ]),
            default_step: build,
            downtime_ms: (500, 3000),
        }
    }

    fn behaviour(&self, step: &str) -> &StepBehaviour {
        self.steps.get(step).unwrap_or(&self.default_step)
    }
}

/// What the simulated runner saw or said, in program order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// Virtual (or real) time of the event.
    pub at: Instant,
    /// The commit.
    pub commit: CommitId,
    /// The step.
    pub step: String,
    /// The attempt number the engine sent.
    pub attempt: u32,
    /// What happened.
    pub kind: TraceKind,
    /// Position in one order shared by every simulated runner of the process:
    /// orders events of several runners (of a pool) that share an instant.
    pub order: u64,
}

/// The source of [`TraceEvent::order`].
static TRACE_ORDER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Kinds of [`TraceEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKind {
    /// The request was accepted and work started.
    Start,
    /// Answered: success.
    Success,
    /// Answered: failure.
    Failure,
    /// Answered: rejected.
    Rejected,
    /// Lost to a crash (its own or another request's).
    Lost,
}

struct State {
    rng: StdRng,
    down_until: Option<Instant>,
    downtime: Duration,
    crashes: u64,
    unreachable_answers: u64,
    trace: Vec<TraceEvent>,
}

/// What the runner and the requests it is working on share.
struct Shared {
    state: Mutex<State>,
    /// Bumped at every crash; requests in flight watch it.
    crash_tx: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn record(state: &mut State, request: &StepRequest, kind: TraceKind) {
    state.trace.push(TraceEvent {
        at: Instant::now(),
        commit: request.commit.clone(),
        step: request.step.clone(),
        attempt: request.attempt,
        kind,
        order: TRACE_ORDER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    });
}

/// A simulated flaky runner; see the module documentation.
pub struct SimRunner {
    config: SimRunnerConfig,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRunner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SimRunner {
    /// A runner with `config`, up and idle.
    pub fn new(config: SimRunnerConfig) -> Arc<Self> {
        let (crash_tx, _) = watch::channel(0);
        Arc::new(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    rng: StdRng::seed_from_u64(config.seed),
                    down_until: None,
                    downtime: Duration::ZERO,
                    crashes: 0,
                    unreachable_answers: 0,
                    trace: Vec::new(),
                }),
                crash_tx,
            }),
            config,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Everything the runner saw so far, in program order.
    pub fn trace(&self) -> Vec<TraceEvent> {
        self.lock().trace.clone()
    }

    /// How many times the runner crashed.
    pub fn crashes(&self) -> u64 {
        self.lock().crashes
    }

    /// The total time the runner has been down after its crashes (the drawn
    /// downtimes; outages made with [`take_down_until`](Self::take_down_until)
    /// are not counted).
    pub fn crash_downtime(&self) -> Duration {
        self.lock().downtime
    }

    /// How many requests were answered "unreachable".
    pub fn unreachable_answers(&self) -> u64 {
        self.lock().unreachable_answers
    }

    /// Whether the runner would accept a request now.
    pub fn is_up(&self) -> bool {
        self.lock().down_until.is_none_or(|t| Instant::now() >= t)
    }

    /// Makes the runner unreachable until `until` (an outage without a crash:
    /// requests in flight are not affected).
    pub fn take_down_until(&self, until: Instant) {
        self.lock().down_until = Some(until);
    }

    fn record(&self, state: &mut State, request: &StepRequest, kind: TraceKind) {
        record(state, request, kind);
    }
}

#[async_trait]
impl StepRunner for SimRunner {
    async fn run(&self, request: &StepRequest) -> Result<StepOutput, RunnerError> {
        let behaviour = self.config.behaviour(&request.step);
        let (duration, verdict, crash) = {
            let mut state = self.lock();
            let now = Instant::now();
            if state.down_until.is_some_and(|t| now < t) {
                state.unreachable_answers += 1;
                return Err(RunnerError::Unreachable(
                    "connection refused (simulated)".into(),
                ));
            }
            if state.rng.random_bool(behaviour.reject_rate) {
                self.record(&mut state, request, TraceKind::Start);
                self.record(&mut state, request, TraceKind::Rejected);
                return Err(RunnerError::Rejected("Unknown step! (simulated)".into()));
            }
            self.record(&mut state, request, TraceKind::Start);
            let ms = state
                .rng
                .random_range(behaviour.min_ms..=behaviour.max_ms.max(behaviour.min_ms));
            let fail = state.rng.random_bool(behaviour.fail_rate);
            let crash = state.rng.random_bool(behaviour.crash_rate);
            (
                Duration::from_millis(ms),
                if fail {
                    StepVerdict::Failure
                } else {
                    StepVerdict::Success
                },
                crash,
            )
        };
        // The work goes on in its own task, as on a real runner: a caller that
        // stops waiting (a timeout, a cancel, a shutdown) does not stop it, and it
        // keeps its place in the trace until its drawn duration is over.
        let (answer_tx, answer) = oneshot::channel();
        let work = Work {
            shared: Arc::clone(&self.shared),
            downtime_ms: self.config.downtime_ms,
            request: request.clone(),
            duration,
            verdict,
            crash,
            crashes: self.shared.crash_tx.subscribe(),
        };
        tokio::spawn(async move {
            let result = work.perform().await;
            // The caller may have gone; the runner answered all the same.
            let _ = answer_tx.send(result);
        });
        answer.await.unwrap_or_else(|_| {
            Err(RunnerError::Lost(
                "the simulated runner's task ended without answering".into(),
            ))
        })
    }

    async fn probe(&self) -> Probe {
        if self.is_up() {
            Probe::Up
        } else {
            Probe::Down("connection refused (simulated)".into())
        }
    }
}

/// One accepted request being worked on by the simulated runner.
struct Work {
    shared: Arc<Shared>,
    downtime_ms: (u64, u64),
    request: StepRequest,
    duration: Duration,
    verdict: StepVerdict,
    crash: bool,
    crashes: watch::Receiver<u64>,
}

impl Work {
    async fn perform(mut self) -> Result<StepOutput, RunnerError> {
        self.crashes.mark_unchanged();
        let crashed_meanwhile = tokio::select! {
            biased;
            () = tokio::time::sleep(self.duration) => false,
            _ = self.crashes.changed() => true,
        };
        let shared = &self.shared;
        let mut state = shared.lock();
        if crashed_meanwhile {
            record(&mut state, &self.request, TraceKind::Lost);
            return Err(RunnerError::Lost(
                "connection closed before message completed (simulated)".into(),
            ));
        }
        if self.crash {
            let (lo, hi) = self.downtime_ms;
            let down = Duration::from_millis(state.rng.random_range(lo..=hi.max(lo)));
            state.down_until = Some(Instant::now() + down);
            state.downtime += down;
            state.crashes += 1;
            record(&mut state, &self.request, TraceKind::Lost);
            drop(state);
            shared.crash_tx.send_modify(|n| *n += 1);
            return Err(RunnerError::Lost(
                "empty reply from server (simulated crash)".into(),
            ));
        }
        let kind = match self.verdict {
            StepVerdict::Success => TraceKind::Success,
            StepVerdict::Failure => TraceKind::Failure,
        };
        record(&mut state, &self.request, kind);
        let request = &self.request;
        Ok(StepOutput {
            verdict: self.verdict,
            logs: format!(
                "step '{}' on {} (attempt {})\nStep '{}' completed with status: {:?}",
                request.step, request.commit, request.attempt, request.step, self.verdict
            ),
            duration: Some(self.duration),
        })
    }
}

/// A source that hands out scripted batches at given offsets from its first
/// call, then finishes.
#[derive(Debug)]
pub struct ScriptedSource {
    batches: std::collections::VecDeque<(Duration, Vec<Commit>)>,
    start: Option<Instant>,
    stay_open: bool,
}

impl ScriptedSource {
    /// Batches to hand out, each at its offset (offsets in increasing order).
    pub fn new(batches: Vec<(Duration, Vec<Commit>)>) -> Self {
        Self {
            batches: batches.into(),
            start: None,
            stay_open: false,
        }
    }

    /// The same source, but once its batches are handed out it stays open (as
    /// a watched repository does) instead of finishing: the engine keeps
    /// running after every run has ended.
    #[must_use]
    pub fn staying_open(mut self) -> Self {
        self.stay_open = true;
        self
    }

    /// `n` commits `c000000`, `c000001`, … forming one chain, handed out one per
    /// `gap` starting at zero.
    pub fn chain(n: usize, gap: Duration) -> Self {
        let commits = chain_commits(n);
        Self::new(
            commits
                .into_iter()
                .enumerate()
                .map(|(i, c)| (gap * u32::try_from(i).unwrap_or(u32::MAX), vec![c]))
                .collect(),
        )
    }
}

/// `n` commits forming a chain, parents first, with ids `c000000`, `c000001`, …
pub fn chain_commits(n: usize) -> Vec<Commit> {
    (0..n)
        .map(|i| {
            let mut c = Commit::bare(format!("c{i:06}"));
            if i > 0 {
                c.parents.push(CommitId::new(format!("c{:06}", i - 1)));
            }
            c.branches.push("main".into());
            c.summary = format!("commit {i}");
            c
        })
        .collect()
}

#[async_trait]
impl CommitSource for ScriptedSource {
    async fn next_commits(&mut self) -> Result<Option<Vec<Commit>>, SourceError> {
        let start = *self.start.get_or_insert_with(Instant::now);
        let Some(&(at, _)) = self.batches.front() else {
            if self.stay_open {
                std::future::pending::<()>().await;
            }
            return Ok(None);
        };
        // Sleep before taking the batch, so a dropped future loses nothing.
        tokio::time::sleep_until(start + at).await;
        Ok(self.batches.pop_front().map(|(_, batch)| batch))
    }
}
