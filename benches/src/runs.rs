//! Finished runs like the ones the server records, for the `api` benchmark:
//! the standard pipeline (lint, build, test), one or two attempts per step,
//! about 1 KiB of logs per attempt, and deterministic, well-spread commit ids.

use ci_engine::{
    Attempt, AttemptOutcome, Commit, CommitId, Pipeline, Run, RunStore, StepStatus, StoreError,
};

/// Bytes of logs per attempt (at least; lines are whole).
pub const LOG_BYTES: usize = 1024;

/// Wall-clock time of the first run, milliseconds since the Unix epoch.
const FIRST_RUN_MILLIS: i64 = 1_700_000_000_000;

/// One step of SplitMix64: a well-mixed 64-bit value from `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The commit id of run `n`: 40 lowercase hex digits, the same on every call,
/// spread like real hashes (so short prefixes of different runs differ).
pub fn commit_id(n: u64) -> String {
    let a = mix(n.wrapping_mul(3));
    let b = mix(n.wrapping_mul(3).wrapping_add(1));
    let c = mix(n.wrapping_mul(3).wrapping_add(2)) >> 32;
    format!("{a:016x}{b:016x}{c:08x}")
}

/// About [`LOG_BYTES`] of log lines for one attempt.
fn logs(step: &str, attempt: u32, n: u64) -> String {
    let mut out = String::with_capacity(LOG_BYTES + 100);
    let mut line = 0;
    while out.len() < LOG_BYTES {
        line += 1;
        out.push_str(&format!(
            "[{step} #{attempt}] run {n} line {line}: compiling crate module, 0 warnings\n"
        ));
    }
    out
}

/// A finished attempt `number` at `step` of run `n`.
fn attempt(step: &str, number: u32, n: u64, outcome: AttemptOutcome, start: i64) -> Attempt {
    let mut a = Attempt::new(number, outcome, start);
    a.logs = logs(step, number, n);
    a.finished_at = Some(start + 800);
    a.duration_ms = Some(800);
    a.runner_duration_ms = Some(790);
    if outcome == AttemptOutcome::Lost {
        a.reason = Some("the runner closed the connection mid-step".to_owned());
    }
    a
}

/// Run `n` (its `seq` is `n`), finished: every fifth run's test step was lost
/// once and succeeded on its second attempt; every seventh run's test failed.
/// So every step has one or two attempts.
pub fn finished_run(n: u64) -> Run {
    let parents = match n {
        0 => Vec::new(),
        _ => vec![CommitId::new(commit_id(n - 1))],
    };
    let commit = Commit {
        id: CommitId::new(commit_id(n)),
        branches: vec!["main".to_owned()],
        parents,
        summary: format!("Change number {n}: adjust the widget frobnicator"),
        author: "Bench <bench@example.invalid>".to_owned(),
        time: FIRST_RUN_MILLIS / 1000 + i64::try_from(n).unwrap_or(0) * 60,
    };
    let created = FIRST_RUN_MILLIS + i64::try_from(n).unwrap_or(0) * 60_000;
    let mut run = Run::new(commit, n, &Pipeline::standard());
    run.created_at = created;
    run.started_at = Some(created + 10);
    let mut start = created + 10;
    for step in &mut run.steps {
        let name = step.name.clone();
        if name == "test" && n.is_multiple_of(5) {
            step.attempts
                .push(attempt(&name, 1, n, AttemptOutcome::Lost, start));
            start += 1000;
            step.attempts
                .push(attempt(&name, 2, n, AttemptOutcome::Success, start));
            step.status = StepStatus::Success;
        } else if name == "test" && n.is_multiple_of(7) {
            step.attempts
                .push(attempt(&name, 1, n, AttemptOutcome::Failure, start));
            step.status = StepStatus::Failure;
        } else {
            step.attempts
                .push(attempt(&name, 1, n, AttemptOutcome::Success, start));
            step.status = StepStatus::Success;
        }
        start += 1000;
    }
    run.finished_at = Some(start);
    run.settle();
    run
}

/// Records runs `0..count` (see [`finished_run`]) in `store`.
pub async fn fill(store: &dyn RunStore, count: u64) -> Result<(), StoreError> {
    for n in 0..count {
        store.insert_run(&finished_run(n)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ci_engine::RunStatus;

    #[test]
    fn ids_are_40_hex_digits_and_their_12_digit_prefixes_are_unique() {
        let mut prefixes = std::collections::HashSet::new();
        for n in 0..10_000 {
            let id = commit_id(n);
            assert_eq!(id.len(), 40);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(prefixes.insert(id[..12].to_owned()), "prefix clash at {n}");
        }
    }

    #[test]
    fn runs_are_finished_with_one_or_two_attempts_and_a_kib_of_logs() {
        assert_eq!(finished_run(1).status, RunStatus::Success);
        assert_eq!(finished_run(7).status, RunStatus::Failure);
        let lost_once = finished_run(5);
        assert_eq!(lost_once.status, RunStatus::Success);
        assert_eq!(lost_once.step("test").map(|s| s.attempts.len()), Some(2));
        for step in &finished_run(3).steps {
            assert_eq!(step.attempts.len(), 1);
            let len = step.attempts[0].logs.len();
            assert!((LOG_BYTES..LOG_BYTES + 100).contains(&len), "{len}");
        }
    }
}
