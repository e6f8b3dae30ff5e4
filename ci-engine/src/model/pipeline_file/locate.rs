//! Places a [`PipelineError`] from [`Pipeline::new`](crate::Pipeline::new) on
//! the line of the key it is about, so that the file's reader keeps a single
//! set of rules about steps together and only says where.

use std::time::Duration;

use super::Problem;
use super::step_table::StepEntry;
use crate::model::{Concurrency, PipelineError, Scope, StepSpec};

/// The problem for `error` about the steps in `entries` (in file order).
pub(super) fn locate(error: &PipelineError, entries: &[StepEntry]) -> Problem {
    let named = |name: &str| entries.iter().find(|e| e.spec.name == name);
    let message = error.to_string();
    let at = match error {
        PipelineError::Empty => return Problem::nowhere(message),
        PipelineError::InvalidName(name) => named(name).map(|e| e.value_of("name")),
        PipelineError::DuplicateStep(name) => entries
            .iter()
            .filter(|e| &e.spec.name == name)
            .nth(1)
            .map(|e| e.value_of("name")),
        PipelineError::UnknownNeed { step, need } => named(step).map(|e| e.need(need)),
        PipelineError::Cycle(cycle) => match cycle.as_slice() {
            [first, second, ..] => named(first).map(|e| e.need(second)),
            _ => None,
        },
        PipelineError::ZeroLimit(step) => named(step).map(|e| e.value_of("limit")),
        PipelineError::GroupMismatch { group } => return group_mismatch(group, entries, message),
        PipelineError::SameRunnerNotANeed { step, target } => {
            let at = named(step).map(|e| e.value_of("same_runner_as"));
            if named(target).is_none() {
                let message = format!(
                    "step {step:?} asks for the runner of {target:?}, which is not a step of the pipeline"
                );
                return Problem { at, message };
            }
            at
        }
        PipelineError::BadValue { step, .. } => named(step).map(|e| {
            if e.spec.max_attempts == Some(0) {
                e.value_of("attempts")
            } else if e.spec.timeout == Some(Duration::ZERO) {
                e.value_of("timeout")
            } else {
                e.header.clone()
            }
        }),
        PipelineError::InvalidRunnerStep { step, .. } => named(step).map(|e| e.value_of("run")),
    };
    Problem { at, message }
}

/// A group whose steps disagree: the `group` line of the first step (in file
/// order) that disagrees with the group's first step, and what each says.
fn group_mismatch(group: &str, entries: &[StepEntry], message: String) -> Problem {
    let mut members = entries.iter().filter(|e| e.spec.class_key() == group);
    let Some(first) = members.next() else {
        return Problem::nowhere(message);
    };
    let class = |s: &StepSpec| (s.concurrency.limit(), s.scope);
    match members.find(|e| class(&e.spec) != class(&first.spec)) {
        Some(other) => Problem {
            at: Some(other.value_of("group")),
            message: format!(
                "{message}: step {:?} has {}, step {:?} has {}",
                other.spec.name,
                describe(&other.spec),
                first.spec.name,
                describe(&first.spec)
            ),
        },
        None => Problem {
            at: Some(first.value_of("group")),
            message,
        },
    }
}

/// A step's class as the file writes it: `limit 2, scope "pool"`.
fn describe(step: &StepSpec) -> String {
    let limit = match step.concurrency {
        Concurrency::Unlimited => "concurrency \"unlimited\"".to_owned(),
        Concurrency::Exclusive => "concurrency \"exclusive\"".to_owned(),
        Concurrency::Limit(n) => format!("limit {n}"),
    };
    let scope = match step.scope {
        Scope::Runner => "runner",
        Scope::Pool => "pool",
    };
    format!("{limit}, scope {scope:?}")
}
