//! A pipeline is data: named steps, the steps each one needs (a DAG), and the
//! concurrency class that limits how many of a kind run at once, on each runner
//! or across the pool.
//!
//! [`Pipeline::new`] validates once, so the scheduler can rely on a sound graph.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How many steps of one concurrency class may be in flight at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Any number at once (within the engine's global cap).
    Unlimited,
    /// One at a time.
    Exclusive,
    /// At most `n` at once; `n` is at least 1.
    Limit(u32),
}

impl Concurrency {
    /// The limit as a number; `None` means unlimited.
    pub fn limit(self) -> Option<u32> {
        match self {
            Self::Unlimited => None,
            Self::Exclusive => Some(1),
            Self::Limit(n) => Some(n),
        }
    }
}

/// Where a concurrency class's limit applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// On each runner separately (the default): a runner's locks are its own, so
    /// with three runners an exclusive class runs three at once, one on each.
    #[default]
    Runner,
    /// Across the whole pool: an exclusive pool-wide class runs one at a time
    /// whichever runner it is on (a deploy, say).
    Pool,
}

/// One step of a pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    /// The step's name in runs and records; unique in a pipeline.
    pub name: String,
    /// The step the runner is asked to run (`lint`, `build`, `test`, …); `None`
    /// means the same as `name`.
    #[serde(default)]
    pub run: Option<String>,
    /// Steps that must succeed, in the same run, before this one starts.
    #[serde(default)]
    pub needs: Vec<String>,
    /// The limit of the step's concurrency class.
    pub concurrency: Concurrency,
    /// A named class shared with other steps; without it the class is the step's own.
    /// Every step of a group must declare the same `concurrency` and `scope`.
    #[serde(default)]
    pub group: Option<String>,
    /// Whether the class limit applies per runner or across the pool.
    #[serde(default)]
    pub scope: Scope,
    /// A step this one needs (directly or not) whose runner this one must run
    /// on, because its outputs live there. The step waits for that runner,
    /// as for an outage, rather than going elsewhere.
    #[serde(default)]
    pub same_runner_as: Option<String>,
    /// Attempts allowed before the step ends `error`; `None` takes the engine's
    /// [`max_attempts`](crate::EngineConfig::max_attempts).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// How long one attempt may take; `None` takes the engine's
    /// [`step_timeout`](crate::EngineConfig::step_timeout).
    #[serde(default)]
    pub timeout: Option<Duration>,
}

impl StepSpec {
    /// A step with no needs, no group, per-runner scope and the engine's
    /// attempt limit and timeout.
    pub fn new(name: impl Into<String>, concurrency: Concurrency) -> Self {
        Self {
            name: name.into(),
            run: None,
            needs: Vec::new(),
            concurrency,
            group: None,
            scope: Scope::Runner,
            same_runner_as: None,
            max_attempts: None,
            timeout: None,
        }
    }

    /// Adds a step this one needs.
    pub fn needs(mut self, step: impl Into<String>) -> Self {
        self.needs.push(step.into());
        self
    }

    /// Puts the step in a named concurrency group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Sets where the class limit applies.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Asks the runner to run `step` instead of a step called like this one.
    pub fn runs(mut self, step: impl Into<String>) -> Self {
        self.run = Some(step.into());
        self
    }

    /// Pins the step to the runner where `step` (one of its needs) succeeded.
    pub fn same_runner_as(mut self, step: impl Into<String>) -> Self {
        self.same_runner_as = Some(step.into());
        self
    }

    /// Sets the step's own attempt limit.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Sets the step's own timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The key of the step's concurrency class: its group, or its own name.
    pub fn class_key(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.name)
    }

    /// The step the runner is asked to run.
    pub fn runner_step(&self) -> &str {
        self.run.as_deref().unwrap_or(&self.name)
    }
}

/// Why a list of steps is not a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// No steps at all.
    #[error("the pipeline has no steps")]
    Empty,
    /// A step name is empty or contains characters other than letters, digits, `-`, `_`, `.`.
    #[error("invalid step name {0:?}: use letters, digits, '-', '_' or '.'")]
    InvalidName(String),
    /// Two steps share a name.
    #[error("step {0:?} is defined twice")]
    DuplicateStep(String),
    /// A step needs a step that does not exist.
    #[error("step {step:?} needs {need:?}, which is not a step of the pipeline")]
    UnknownNeed {
        /// The step that declares the need.
        step: String,
        /// The missing step.
        need: String,
    },
    /// The needs form a cycle; the names are the steps on it.
    #[error("the needs form a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// `Limit(0)` can never run anything.
    #[error("step {0:?} has a concurrency limit of 0")]
    ZeroLimit(String),
    /// Steps of one group disagree on the group's limit or scope.
    #[error("group {group:?} is declared with different concurrency limits or scopes")]
    GroupMismatch {
        /// The group name.
        group: String,
    },
    /// `same_runner_as` names a step this step does not need.
    #[error(
        "step {step:?} asks for the runner of {target:?}, which is not a step it needs (directly or through its needs)"
    )]
    SameRunnerNotANeed {
        /// The step that declares `same_runner_as`.
        step: String,
        /// The step it names.
        target: String,
    },
    /// A step allows zero attempts or has a zero timeout.
    #[error("step {step:?}: {problem}")]
    BadValue {
        /// The step.
        step: String,
        /// What is wrong, in words.
        problem: String,
    },
    /// The runner step name (`run`) is empty or has characters the protocol
    /// cannot carry.
    #[error("step {step:?} runs {run:?}: use letters, digits, '-', '_' or '.'")]
    InvalidRunnerStep {
        /// The pipeline step.
        step: String,
        /// The runner step it names.
        run: String,
    },
}

/// A concurrency class after validation: its key, limit and scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSpec {
    /// Group name or step name.
    pub key: String,
    /// `None` is unlimited.
    pub limit: Option<u32>,
    /// Whether the limit is per runner or pool-wide.
    pub scope: Scope,
}

/// A validated pipeline: steps in a topological order (every step after all it
/// needs), with indices for the scheduler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipeline {
    steps: Vec<StepSpec>,
    needs: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    class_of: Vec<usize>,
    classes: Vec<ClassSpec>,
    same_runner_as: Vec<Option<usize>>,
}

impl Pipeline {
    /// Validates `steps` and orders them topologically, keeping the given order
    /// among steps that do not depend on each other.
    ///
    /// # Errors
    /// Any [`PipelineError`]: empty, bad or duplicate names, unknown needs, a cycle,
    /// a zero limit, or a group with two different limits.
    pub fn new(steps: Vec<StepSpec>) -> Result<Self, PipelineError> {
        if steps.is_empty() {
            return Err(PipelineError::Empty);
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            if !valid_name(&s.name) {
                return Err(PipelineError::InvalidName(s.name.clone()));
            }
            if let Some(run) = &s.run
                && !valid_name(run)
            {
                return Err(PipelineError::InvalidRunnerStep {
                    step: s.name.clone(),
                    run: run.clone(),
                });
            }
            if index.insert(s.name.as_str(), i).is_some() {
                return Err(PipelineError::DuplicateStep(s.name.clone()));
            }
            if s.concurrency == Concurrency::Limit(0) {
                return Err(PipelineError::ZeroLimit(s.name.clone()));
            }
            if s.max_attempts == Some(0) {
                return Err(PipelineError::BadValue {
                    step: s.name.clone(),
                    problem: "attempts must be at least 1".into(),
                });
            }
            if s.timeout == Some(Duration::ZERO) {
                return Err(PipelineError::BadValue {
                    step: s.name.clone(),
                    problem: "the timeout must be longer than zero".into(),
                });
            }
        }
        let mut needs_idx = vec![Vec::new(); steps.len()];
        for (i, s) in steps.iter().enumerate() {
            for n in &s.needs {
                let j = *index
                    .get(n.as_str())
                    .ok_or_else(|| PipelineError::UnknownNeed {
                        step: s.name.clone(),
                        need: n.clone(),
                    })?;
                if !needs_idx[i].contains(&j) {
                    needs_idx[i].push(j);
                }
            }
        }
        let order = topo_order(&steps, &needs_idx)?;

        // Re-index everything in topological order.
        let mut new_pos = vec![0; steps.len()];
        for (pos, &old) in order.iter().enumerate() {
            new_pos[old] = pos;
        }
        let mut sorted: Vec<Option<StepSpec>> = steps.into_iter().map(Some).collect();
        let steps: Vec<StepSpec> = order
            .iter()
            .map(|&old| {
                sorted[old]
                    .take()
                    .expect("each index appears once in a topological order")
            })
            .collect();
        let needs: Vec<Vec<usize>> = order
            .iter()
            .map(|&old| needs_idx[old].iter().map(|&j| new_pos[j]).collect())
            .collect();
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, ns) in needs.iter().enumerate() {
            for &j in ns {
                dependents[j].push(i);
            }
        }

        let mut same_runner_as = Vec::with_capacity(steps.len());
        for (i, s) in steps.iter().enumerate() {
            let Some(target) = &s.same_runner_as else {
                same_runner_as.push(None);
                continue;
            };
            let j = steps
                .iter()
                .position(|t| &t.name == target)
                .filter(|&j| needs_transitively(&needs, i, j))
                .ok_or_else(|| PipelineError::SameRunnerNotANeed {
                    step: s.name.clone(),
                    target: target.clone(),
                })?;
            same_runner_as.push(Some(j));
        }

        let mut classes: Vec<ClassSpec> = Vec::new();
        let mut class_index: BTreeMap<String, usize> = BTreeMap::new();
        let mut class_of = Vec::with_capacity(steps.len());
        for s in &steps {
            let key = s.class_key().to_owned();
            let limit = s.concurrency.limit();
            let ci = match class_index.get(&key) {
                Some(&ci) => {
                    if classes[ci].limit != limit || classes[ci].scope != s.scope {
                        return Err(PipelineError::GroupMismatch { group: key });
                    }
                    ci
                }
                None => {
                    classes.push(ClassSpec {
                        key: key.clone(),
                        limit,
                        scope: s.scope,
                    });
                    class_index.insert(key, classes.len() - 1);
                    classes.len() - 1
                }
            };
            class_of.push(ci);
        }
        Ok(Self {
            steps,
            needs,
            dependents,
            class_of,
            classes,
            same_runner_as,
        })
    }

    /// The default pipeline: `lint` unlimited, `build` exclusive, `test` exclusive
    /// and needing `build`.
    pub fn standard() -> Self {
        Self::new(vec![
            StepSpec::new("lint", Concurrency::Unlimited),
            StepSpec::new("build", Concurrency::Exclusive),
            StepSpec::new("test", Concurrency::Exclusive).needs("build"),
        ])
        .expect("the standard pipeline is valid")
    }

    /// Steps in topological order.
    pub fn steps(&self) -> &[StepSpec] {
        &self.steps
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Always false: a pipeline has at least one step.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Index of the step called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// Indices of the steps that step `i` needs.
    pub fn needs_of(&self, i: usize) -> &[usize] {
        &self.needs[i]
    }

    /// Indices of the steps that need step `i`.
    pub fn dependents_of(&self, i: usize) -> &[usize] {
        &self.dependents[i]
    }

    /// Index into [`classes`](Self::classes) of step `i`'s concurrency class.
    pub fn class_of(&self, i: usize) -> usize {
        self.class_of[i]
    }

    /// The concurrency classes, each once.
    pub fn classes(&self) -> &[ClassSpec] {
        &self.classes
    }

    /// Index of the step whose runner step `i` must run on, if it is pinned.
    pub fn same_runner_as(&self, i: usize) -> Option<usize> {
        self.same_runner_as[i]
    }
}

/// Step and runner-step names: letters, digits, `-`, `_`, `.`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether step `i` needs step `j`, directly or through its needs (indices in
/// topological order, so a need always has a lower index).
fn needs_transitively(needs: &[Vec<usize>], i: usize, j: usize) -> bool {
    let mut stack = needs[i].clone();
    let mut seen = vec![false; needs.len()];
    while let Some(k) = stack.pop() {
        if k == j {
            return true;
        }
        if !std::mem::replace(&mut seen[k], true) {
            stack.extend(&needs[k]);
        }
    }
    false
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::standard()
    }
}

/// Kahn's algorithm, taking the lowest original index first so independent steps
/// keep the order they were written in.
fn topo_order(steps: &[StepSpec], needs: &[Vec<usize>]) -> Result<Vec<usize>, PipelineError> {
    let n = steps.len();
    let mut indegree: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, ns) in needs.iter().enumerate() {
        for &j in ns {
            dependents[j].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &dependents[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.insert(d);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk needs from a step left over until a step repeats: that is a cycle.
    let start = (0..n)
        .find(|&i| indegree[i] > 0)
        .expect("a step is left over");
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = needs[cur]
            .iter()
            .copied()
            .find(|&j| indegree[j] > 0)
            .expect("a step on a cycle needs another step on it");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<String> =
                path[pos..].iter().map(|&i| steps[i].name.clone()).collect();
            cycle.push(steps[next].name.clone());
            return Err(PipelineError::Cycle(cycle));
        }
        path.push(next);
        cur = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_pipeline_has_three_classes_and_test_needs_build() {
        let p = Pipeline::standard();
        let names: Vec<_> = p.steps().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["lint", "build", "test"]);
        let test = p.position("test").unwrap();
        let build = p.position("build").unwrap();
        assert_eq!(p.needs_of(test), &[build]);
        assert_eq!(p.classes().len(), 3);
        assert_eq!(p.classes()[p.class_of(build)].limit, Some(1));
        assert_eq!(
            p.classes()[p.class_of(p.position("lint").unwrap())].limit,
            None
        );
    }

    #[test]
    fn steps_are_reordered_after_their_needs() {
        let p = Pipeline::new(vec![
            StepSpec::new("deploy", Concurrency::Exclusive).needs("test"),
            StepSpec::new("test", Concurrency::Exclusive),
        ])
        .unwrap();
        assert_eq!(p.steps()[0].name, "test");
        assert_eq!(p.needs_of(1), &[0]);
        assert_eq!(p.dependents_of(0), &[1]);
    }

    #[test]
    fn rejects_empty_duplicate_unknown_and_zero() {
        assert_eq!(Pipeline::new(vec![]), Err(PipelineError::Empty));
        let dup = vec![
            StepSpec::new("a", Concurrency::Unlimited),
            StepSpec::new("a", Concurrency::Unlimited),
        ];
        assert_eq!(
            Pipeline::new(dup),
            Err(PipelineError::DuplicateStep("a".into()))
        );
        let unknown = vec![StepSpec::new("a", Concurrency::Unlimited).needs("zz")];
        assert!(matches!(
            Pipeline::new(unknown),
            Err(PipelineError::UnknownNeed { .. })
        ));
        let zero = vec![StepSpec::new("a", Concurrency::Limit(0))];
        assert_eq!(
            Pipeline::new(zero),
            Err(PipelineError::ZeroLimit("a".into()))
        );
        let bad = vec![StepSpec::new("a b", Concurrency::Unlimited)];
        assert!(matches!(
            Pipeline::new(bad),
            Err(PipelineError::InvalidName(_))
        ));
    }

    #[test]
    fn reports_the_cycle() {
        let steps = vec![
            StepSpec::new("a", Concurrency::Unlimited).needs("c"),
            StepSpec::new("b", Concurrency::Unlimited).needs("a"),
            StepSpec::new("c", Concurrency::Unlimited).needs("b"),
            StepSpec::new("d", Concurrency::Unlimited),
        ];
        match Pipeline::new(steps) {
            Err(PipelineError::Cycle(c)) => {
                assert_eq!(c.first(), c.last());
                assert_eq!(c.len(), 4, "{c:?}");
            }
            other => panic!("expected a cycle, got {other:?}"),
        }
        let self_loop = vec![StepSpec::new("a", Concurrency::Unlimited).needs("a")];
        assert!(matches!(
            Pipeline::new(self_loop),
            Err(PipelineError::Cycle(_))
        ));
    }

    #[test]
    fn same_runner_as_must_name_a_need() {
        let p = Pipeline::new(vec![
            StepSpec::new("build", Concurrency::Exclusive),
            StepSpec::new("test", Concurrency::Exclusive).needs("build"),
            StepSpec::new("package", Concurrency::Exclusive)
                .needs("test")
                .same_runner_as("build"),
        ])
        .unwrap();
        assert_eq!(p.same_runner_as(2), Some(0), "a need of a need counts");
        assert_eq!(p.same_runner_as(1), None);
        let not_a_need = Pipeline::new(vec![
            StepSpec::new("build", Concurrency::Exclusive),
            StepSpec::new("lint", Concurrency::Unlimited).same_runner_as("build"),
        ]);
        assert_eq!(
            not_a_need,
            Err(PipelineError::SameRunnerNotANeed {
                step: "lint".into(),
                target: "build".into()
            })
        );
        let unknown = Pipeline::new(vec![
            StepSpec::new("lint", Concurrency::Unlimited).same_runner_as("nope"),
        ]);
        assert!(matches!(
            unknown,
            Err(PipelineError::SameRunnerNotANeed { .. })
        ));
    }

    #[test]
    fn scopes_and_per_step_values_are_checked() {
        let p = Pipeline::new(vec![
            StepSpec::new("deploy", Concurrency::Exclusive)
                .scope(Scope::Pool)
                .runs("build"),
        ])
        .unwrap();
        assert_eq!(p.classes()[0].scope, Scope::Pool);
        assert_eq!(p.steps()[0].runner_step(), "build");
        let mixed = Pipeline::new(vec![
            StepSpec::new("a", Concurrency::Exclusive).group("g"),
            StepSpec::new("b", Concurrency::Exclusive)
                .group("g")
                .scope(Scope::Pool),
        ]);
        assert!(matches!(mixed, Err(PipelineError::GroupMismatch { .. })));
        let zero = Pipeline::new(vec![
            StepSpec::new("a", Concurrency::Unlimited).max_attempts(0),
        ]);
        assert!(matches!(zero, Err(PipelineError::BadValue { .. })));
        let zero = Pipeline::new(vec![
            StepSpec::new("a", Concurrency::Unlimited).timeout(Duration::ZERO),
        ]);
        assert!(matches!(zero, Err(PipelineError::BadValue { .. })));
        let bad_run = Pipeline::new(vec![StepSpec::new("a", Concurrency::Unlimited).runs("a b")]);
        assert!(matches!(
            bad_run,
            Err(PipelineError::InvalidRunnerStep { .. })
        ));
    }

    #[test]
    fn groups_share_a_class_and_must_agree() {
        let p = Pipeline::new(vec![
            StepSpec::new("unit", Concurrency::Limit(2)).group("cpu"),
            StepSpec::new("e2e", Concurrency::Limit(2)).group("cpu"),
        ])
        .unwrap();
        assert_eq!(p.classes().len(), 1);
        assert_eq!(p.class_of(0), p.class_of(1));
        let bad = Pipeline::new(vec![
            StepSpec::new("unit", Concurrency::Limit(2)).group("cpu"),
            StepSpec::new("e2e", Concurrency::Exclusive).group("cpu"),
        ]);
        assert_eq!(
            bad,
            Err(PipelineError::GroupMismatch {
                group: "cpu".into()
            })
        );
    }
}
