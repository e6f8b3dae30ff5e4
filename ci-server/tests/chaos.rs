//! Chaos: 200 commits through a pool of three bundled simulators that crash.
//!
//! The `ci-server` binary runs every commit of a fresh repository
//! (`--initial all`) through the standard pipeline on three supervised
//! simulators with their crash on (one test in five kills its simulator, which
//! is restarted on the same port). All simulators append to one request log.
//! Once every run has ended, the runs the server stored are checked against
//! what the simulators themselves logged:
//!
//! - every commit has exactly one run, and it is terminal;
//! - every answer a simulator gave is an attempt in the store with the same
//!   outcome and runner, and no stored answer lacks a logged one (nothing lost,
//!   nothing run twice); at most one successful attempt per step; no request of
//!   a commit reached a simulator after its run had ended;
//! - every crash shows up as lost attempts on the runner that crashed, never as
//!   a failure; no lost attempt lacks a crash of its runner while it was out;
//! - replaying each simulator process's lines, it never held more than one
//!   build or one test (the standard pipeline's limits on each runner), and a
//!   restarted simulator only wrote after the one before it at that address
//!   had crashed;
//! - every runner ran steps.

mod e2e_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use e2e_support::{
    GitRepo, Server, SimLogLine, read_request_log, run_details, runners, temp_file,
    wait_for_terminal,
};
use serde_json::Value;

/// Commits in the repository, all built (`--initial all`).
const COMMITS: usize = 200;
/// The bundled simulators' ids (`--sims 3`).
const RUNNERS: [&str; 3] = ["sim-1", "sim-2", "sim-3"];
/// The standard pipeline's steps, which are also the simulator's step names.
const STEPS: [&str; 3] = ["lint", "build", "test"];
/// `--max-attempts`: a step lost this many times in a row ends `error`.
const MAX_ATTEMPTS: usize = 5;
/// `--max-in-flight`: requests at once on one runner, all steps together.
const MAX_IN_FLIGHT: usize = 32;
/// Bound on waiting for all runs to end (they took 40 s on a 2-core machine).
const FINISH_WITHIN: Duration = Duration::from_secs(240);
/// The simulators' `--fail-rate`. At the default (0.5) half the builds fail
/// and their tests are skipped, so only about 100 tests would run and about 20
/// crash; at 0.2 about 160 tests run, more of them crash, and more builds and
/// lints are caught in flight by a crash. Builds and tests still fail often
/// enough to check that failures and crashes are told apart.
const FAIL_RATE: &str = "0.2";
/// How long before an attempt's recorded start the crash that lost it may
/// have been logged: the server notes the start, then connects; a connection
/// that the kernel accepted in the instant between the simulator's `crash`
/// line and its closing the listener is lost to that crash too.
const CRASH_BEFORE_START_SLACK_MS: i64 = 100;

/// One attempt as the server stored it.
#[derive(Clone, Debug)]
struct Attempt {
    commit: String,
    step: String,
    number: u64,
    outcome: String,
    runner: String,
    started_at: i64,
    finished_at: i64,
    reason: String,
}

/// Everything wrong that the test found; it fails with all of them at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, problem: String) {
        self.0.push(problem);
    }
}

/// The short form of a commit id, for messages.
fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

/// The line of a request log as it reads in a message.
fn describe(l: &SimLogLine) -> String {
    format!(
        "line {} ({} {} of {} request {} pid {} at {}, {} ms{})",
        l.line,
        l.event,
        l.step,
        short(&l.commit),
        l.request,
        l.pid,
        l.addr,
        l.at_ms,
        l.step_status
            .as_deref()
            .map(|s| format!(", {s}"))
            .unwrap_or_default()
    )
}

fn text<'a>(value: &'a Value, key: &str, context: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{context}: no string {key:?} in {value}"))
}

fn millis(value: &Value, key: &str, context: &str) -> i64 {
    value[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{context}: no time {key:?} in {value}"))
}

/// Checks the runs one by one and returns their attempts.
fn check_runs(runs: &BTreeMap<String, Value>, problems: &mut Problems) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    for (id, run) in runs {
        let run_status = text(run, "status", id);
        let run_end = millis(run, "finished_at", id);
        let steps = run["steps"].as_array().expect("a run has steps");
        let names: Vec<&str> = steps.iter().map(|s| text(s, "name", id)).collect();
        if names != STEPS {
            problems.add(format!("run {}: steps {names:?}, not {STEPS:?}", short(id)));
        }
        let mut step_statuses = Vec::new();
        for step in steps {
            let name = text(step, "name", id);
            let status = text(step, "status", id);
            let at = format!("run {} step {name} ({status})", short(id));
            step_statuses.push(status);
            let tried = step["attempts"].as_array().expect("a step has attempts");
            let mut outcomes = Vec::new();
            for a in tried {
                let outcome = text(a, "outcome", &at).to_owned();
                let attempt = Attempt {
                    commit: id.clone(),
                    step: name.to_owned(),
                    number: a["number"].as_u64().expect("an attempt number"),
                    runner: a["runner"].as_str().unwrap_or("(none)").to_owned(),
                    started_at: millis(a, "started_at", &at),
                    finished_at: a["finished_at"].as_i64().unwrap_or(i64::MAX),
                    reason: a["reason"].as_str().unwrap_or("").to_owned(),
                    outcome: outcome.clone(),
                };
                if !RUNNERS.contains(&attempt.runner.as_str()) {
                    problems.add(format!(
                        "{at}: attempt {} names the runner {:?}, not one of {RUNNERS:?}",
                        attempt.number, attempt.runner
                    ));
                }
                if !matches!(outcome.as_str(), "success" | "failure" | "lost") {
                    problems.add(format!(
                        "{at}: attempt {} on {} ended {outcome:?} ({}); with crashing runners and a server that never stops, only success, failure and lost are expected",
                        attempt.number, attempt.runner, attempt.reason
                    ));
                }
                if attempt.finished_at > run_end {
                    problems.add(format!(
                        "{at}: attempt {} on {} finished at {} ms, after its run ended at {run_end} ms",
                        attempt.number, attempt.runner, attempt.finished_at
                    ));
                }
                outcomes.push(outcome);
                attempts.push(attempt);
            }
            let successes = outcomes.iter().filter(|o| *o == "success").count();
            let failures = outcomes.iter().filter(|o| *o == "failure").count();
            let lost = outcomes.iter().filter(|o| *o == "lost").count();
            if successes > 1 {
                problems.add(format!(
                    "{at}: {successes} successful attempts: {outcomes:?}"
                ));
            }
            // Once a step is answered it is over: a success or failure can only
            // be its last attempt.
            if let Some(pos) = outcomes
                .iter()
                .position(|o| o == "success" || o == "failure")
                && pos + 1 != outcomes.len()
            {
                problems.add(format!(
                    "{at}: attempts went on after an answer: {outcomes:?}"
                ));
            }
            let consistent = match status {
                "success" => successes == 1,
                "failure" => failures == 1,
                // Only crashes, all of the attempts allowed.
                "error" => lost == MAX_ATTEMPTS && outcomes.len() == MAX_ATTEMPTS,
                // A step it needs did not succeed; it never ran.
                "skipped" => outcomes.is_empty(),
                _ => false,
            };
            if !consistent {
                problems.add(format!(
                    "{at}: the status does not follow from the attempts {outcomes:?} (failure needs a failed attempt, error {MAX_ATTEMPTS} lost ones, skipped none)"
                ));
            }
        }
        let derived = if step_statuses.contains(&"failure") {
            "failure"
        } else if step_statuses.contains(&"error") {
            "error"
        } else if step_statuses.iter().all(|s| *s == "success") {
            "success"
        } else {
            "(none)"
        };
        if run_status != derived {
            problems.add(format!(
                "run {}: status {run_status} but its steps are {step_statuses:?}",
                short(id)
            ));
        }
    }
    attempts
}

/// What replaying the request log found.
#[derive(Default)]
struct Replay {
    /// `start` lines of requests that a crash ended (the crashing one included).
    died: Vec<SimLogLine>,
    /// `crash` lines.
    crashes: Vec<SimLogLine>,
    /// Line numbers of `end` lines written just before their process crashed
    /// (its next line is the crash): the answer may have been cut off.
    at_risk: BTreeSet<usize>,
    /// Process ids seen at each address, in order.
    pids_by_addr: BTreeMap<String, Vec<u64>>,
    /// The most builds, tests and requests in all that one process held at once.
    most_held: BTreeMap<String, [usize; 3]>,
}

/// Per process while replaying.
struct Process {
    addr: String,
    /// Open requests: number → the index of their `start` line.
    open: BTreeMap<u64, usize>,
    crashed_at: Option<usize>,
    /// Indexes of its lines.
    lines: Vec<usize>,
}

/// Replays the log line by line: per process, the requests it holds; per
/// address, which process owns it.
fn replay(log: &[SimLogLine], problems: &mut Problems) -> Replay {
    let mut out = Replay::default();
    let mut procs: BTreeMap<u64, Process> = BTreeMap::new();
    let mut owner: BTreeMap<String, u64> = BTreeMap::new();
    for (i, l) in log.iter().enumerate() {
        match owner.get(&l.addr) {
            Some(&before) if before != l.pid => {
                let old = &procs[&before];
                if old.crashed_at.is_none() {
                    problems.add(format!(
                        "{}: pid {} writes at {} while pid {before}, which never crashed, still owns it (its last line: {})",
                        describe(l),
                        l.pid,
                        l.addr,
                        old.lines.last().map_or(0, |&j| log[j].line)
                    ));
                }
                if procs.contains_key(&l.pid) {
                    problems.add(format!(
                        "{}: pid {} is back at {} after pid {before} took it over",
                        describe(l),
                        l.pid,
                        l.addr
                    ));
                }
                owner.insert(l.addr.clone(), l.pid);
                out.pids_by_addr
                    .entry(l.addr.clone())
                    .or_default()
                    .push(l.pid);
            }
            Some(_) => {}
            None => {
                owner.insert(l.addr.clone(), l.pid);
                out.pids_by_addr
                    .entry(l.addr.clone())
                    .or_default()
                    .push(l.pid);
            }
        }
        let p = procs.entry(l.pid).or_insert_with(|| Process {
            addr: l.addr.clone(),
            open: BTreeMap::new(),
            crashed_at: None,
            lines: Vec::new(),
        });
        if p.addr != l.addr {
            problems.add(format!(
                "{}: pid {} wrote {} before",
                describe(l),
                l.pid,
                p.addr
            ));
        }
        if let Some(c) = p.crashed_at {
            problems.add(format!(
                "{}: written after its process crashed at line {}",
                describe(l),
                log[c].line
            ));
            continue;
        }
        if !STEPS.contains(&l.step.as_str()) {
            problems.add(format!("{}: unknown step", describe(l)));
        }
        p.lines.push(i);
        match l.event.as_str() {
            "start" => {
                if p.open.insert(l.request, i).is_some() {
                    problems.add(format!("{}: request number used twice", describe(l)));
                }
                let held = |step: &str| p.open.values().filter(|&&j| log[j].step == step).count();
                let now = [held("build"), held("test"), p.open.len()];
                let most = out.most_held.entry(l.addr.clone()).or_default();
                for (m, n) in most.iter_mut().zip(now) {
                    *m = (*m).max(n);
                }
                // Reported when this start goes over a limit, not again for
                // every later start while it is over.
                let over = (l.step == "build" && now[0] > 1)
                    || (l.step == "test" && now[1] > 1)
                    || now[2] == MAX_IN_FLIGHT + 1;
                if over {
                    let open: Vec<String> = p
                        .open
                        .values()
                        .map(|&j| {
                            format!(
                                "{} {} (line {})",
                                log[j].step,
                                short(&log[j].commit),
                                log[j].line
                            )
                        })
                        .collect();
                    problems.add(format!(
                        "{}: pid {} now holds {} builds, {} tests, {} requests (at most 1, 1, {MAX_IN_FLIGHT} on one runner): {}",
                        describe(l),
                        l.pid,
                        now[0],
                        now[1],
                        now[2],
                        open.join(", ")
                    ));
                }
            }
            "end" => {
                if p.open.remove(&l.request).is_none() {
                    problems.add(format!("{}: an end without a start", describe(l)));
                }
                if l.status != Some(200) || l.step_status.is_none() {
                    problems.add(format!(
                        "{}: answered HTTP {:?} with step status {:?}; every step request should run",
                        describe(l),
                        l.status,
                        l.step_status
                    ));
                }
            }
            "crash" => {
                if !p.open.contains_key(&l.request) {
                    problems.add(format!("{}: the crashing request is not open", describe(l)));
                }
                out.died.extend(
                    std::mem::take(&mut p.open)
                        .into_values()
                        .map(|j| log[j].clone()),
                );
                p.crashed_at = Some(i);
                out.crashes.push(l.clone());
                // The answer of an `end` right before the crash may never have
                // left the process.
                if let [.., before, _] = p.lines.as_slice()
                    && log[*before].event == "end"
                {
                    out.at_risk.insert(log[*before].line);
                }
            }
            other => problems.add(format!("{}: unknown event {other:?}", describe(l))),
        }
    }
    for (pid, p) in &procs {
        if p.crashed_at.is_none() && !p.open.is_empty() {
            let open: Vec<String> = p.open.values().map(|&j| describe(&log[j])).collect();
            problems.add(format!(
                "pid {pid} at {} still holds requests after every run ended: {open:#?}",
                p.addr
            ));
        }
    }
    out
}

/// A multiset of (runner, outcome) pairs.
type Answers = BTreeMap<(String, String), usize>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_commits_through_three_crashing_runners() {
    let began = Instant::now();
    let repo = GitRepo::new();
    let root = repo.commit("root");
    let chain = repo.chain(&root, COMMITS - 1, "chaos");
    repo.update_branch("main", chain.last().expect("a chain of commits"));
    let expected = repo.all_commits();
    assert_eq!(expected.len(), COMMITS, "the repository's commits");

    let (_db_dir, db) = temp_file("runs.db");
    let (_log_dir, log_path) = temp_file("requests.jsonl");
    let log_arg = log_path.display().to_string();
    assert!(
        !log_arg.contains(char::is_whitespace),
        "--sim-args is split on whitespace, so the log path cannot contain any: {log_arg:?}"
    );
    let sim_args = format!("--fail-rate {FAIL_RATE} --request-log {log_arg}");
    let max_attempts = MAX_ATTEMPTS.to_string();
    let max_in_flight = MAX_IN_FLIGHT.to_string();
    let server = Server::start(
        repo.path(),
        &[
            "--sims",
            "3",
            "--initial",
            "all",
            "--db",
            &db.display().to_string(),
            "--max-attempts",
            &max_attempts,
            "--max-in-flight",
            &max_in_flight,
            "--sim-args",
            &sim_args,
        ],
    );

    let listed = wait_for_terminal(&server, &expected, FINISH_WITHIN).await;
    let all_done_after = began.elapsed();
    let pool = runners(&server).await;
    let runs = run_details(&server, &expected).await;
    let log = read_request_log(&log_path);

    // Every commit ends in exactly one terminal run.
    let listed_ids: Vec<&str> = listed.iter().map(|r| text(r, "id", "/runs")).collect();
    let distinct: BTreeSet<&str> = listed_ids.iter().copied().collect();
    assert_eq!(
        listed_ids.len(),
        COMMITS,
        "/runs lists {} runs for {COMMITS} commits",
        listed_ids.len()
    );
    assert_eq!(
        distinct,
        expected.iter().map(String::as_str).collect(),
        "/runs lists other commits than the repository's (or one twice)"
    );

    let mut problems = Problems::default();
    let attempts = check_runs(&runs, &mut problems);
    let replayed = replay(&log, &mut problems);

    // The simulators' addresses, as the request log writes them, to runner ids.
    let mut runner_of: BTreeMap<String, String> = BTreeMap::new();
    for r in &pool {
        let id = text(r, "id", "/runners");
        let address = text(r, "address", "/runners");
        let addr = address.trim_start_matches("http://").trim_end_matches('/');
        runner_of.insert(addr.to_owned(), id.to_owned());
    }
    let ids: Vec<&str> = pool.iter().map(|r| text(r, "id", "/runners")).collect();
    assert_eq!(ids, RUNNERS, "GET /runners: {pool:?}");
    let runner = |l: &SimLogLine| {
        runner_of
            .get(&l.addr)
            .cloned()
            .unwrap_or_else(|| format!("(no runner at {})", l.addr))
    };
    for addr in replayed.pids_by_addr.keys() {
        if !runner_of.contains_key(addr) {
            problems.add(format!(
                "the request log has a simulator at {addr}, which no runner of /runners has as its address: {runner_of:?}"
            ));
        }
    }

    // Per (commit, step): the answers the simulators logged and the store's.
    let key = |commit: &str, step: &str| (commit.to_owned(), step.to_owned());
    let mut logged: BTreeMap<(String, String), Answers> = BTreeMap::new();
    let mut at_risk: BTreeMap<(String, String), Answers> = BTreeMap::new();
    let mut stored: BTreeMap<(String, String), Answers> = BTreeMap::new();
    let mut died: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut lost: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for l in &log {
        let Some(run) = runs.get(&l.commit) else {
            problems.add(format!("{}: a commit that has no run", describe(l)));
            continue;
        };
        let run_end = millis(run, "finished_at", &l.commit);
        if l.at_ms > run_end {
            problems.add(format!(
                "{}: after the run of {} ended at {run_end} ms",
                describe(l),
                short(&l.commit)
            ));
        }
        if l.event == "end"
            && let Some(status) = &l.step_status
        {
            let answer = (runner(l), status.to_lowercase());
            *logged
                .entry(key(&l.commit, &l.step))
                .or_default()
                .entry(answer.clone())
                .or_default() += 1;
            if replayed.at_risk.contains(&l.line) {
                *at_risk
                    .entry(key(&l.commit, &l.step))
                    .or_default()
                    .entry(answer)
                    .or_default() += 1;
            }
        }
    }
    for l in &replayed.died {
        *died
            .entry((l.commit.clone(), l.step.clone(), runner(l)))
            .or_default() += 1;
    }
    for a in &attempts {
        match a.outcome.as_str() {
            "success" | "failure" => {
                *stored
                    .entry(key(&a.commit, &a.step))
                    .or_default()
                    .entry((a.runner.clone(), a.outcome.clone()))
                    .or_default() += 1;
            }
            "lost" => {
                *lost
                    .entry((a.commit.clone(), a.step.clone(), a.runner.clone()))
                    .or_default() += 1;
            }
            _ => {}
        }
    }

    // Nothing lost, nothing run twice: the answers match, but for an answer
    // cut off by its simulator's crash right after it was logged (the store
    // then has a lost attempt for it).
    let mut answers_cut_off = 0;
    let keys: BTreeSet<&(String, String)> = logged.keys().chain(stored.keys()).collect();
    for k in keys {
        let empty = Answers::new();
        let from_log = logged.get(k).unwrap_or(&empty);
        let from_store = stored.get(k).unwrap_or(&empty);
        let risky = at_risk.get(k).unwrap_or(&empty);
        let at = format!("{} {}", short(&k.0), k.1);
        for (answer, &n) in from_store {
            let seen = from_log.get(answer).copied().unwrap_or(0);
            if n > seen {
                problems.add(format!(
                    "{at}: the store has {n} attempts answered {} by {}, the simulators logged {seen} such answers (all answers logged: {from_log:?})",
                    answer.1, answer.0
                ));
            }
        }
        for (answer, &seen) in from_log {
            let n = from_store.get(answer).copied().unwrap_or(0);
            let missing = seen.saturating_sub(n);
            let excused = risky.get(answer).copied().unwrap_or(0);
            if missing > excused {
                problems.add(format!(
                    "{at}: {} answered {} {seen} times per its log, the store has {n} such attempts (stored answers: {from_store:?})",
                    answer.0, answer.1
                ));
            }
            answers_cut_off += missing.min(excused);
        }
    }

    // Every request a crash ended is a lost attempt on that runner.
    for ((commit, step, r), &n) in &died {
        let recorded = lost
            .get(&(commit.clone(), step.clone(), r.clone()))
            .copied()
            .unwrap_or(0);
        if recorded < n {
            problems.add(format!(
                "{} {step}: {n} requests died in crashes of {r} per the log, the store has {recorded} lost attempts of it on {r}",
                short(commit)
            ));
        }
    }

    // Crashes show up as lost attempts on the runner that crashed.
    let mut crashes_of: BTreeMap<String, Vec<&SimLogLine>> = BTreeMap::new();
    for c in &replayed.crashes {
        crashes_of.entry(runner(c)).or_default().push(c);
    }
    if replayed.crashes.is_empty() {
        problems.add(format!(
            "no simulator crashed in {} requests: the test proves nothing about crashes",
            log.len()
        ));
    }
    let mut lost_per_runner: BTreeMap<&str, usize> = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.outcome == "lost") {
        *lost_per_runner.entry(a.runner.as_str()).or_default() += 1;
        let crashed_then = crashes_of.get(&a.runner).is_some_and(|cs| {
            cs.iter().any(|c| {
                c.at_ms >= a.started_at - CRASH_BEFORE_START_SLACK_MS && c.at_ms <= a.finished_at
            })
        });
        if !crashed_then {
            problems.add(format!(
                "{} {} attempt {} on {} is lost ({}) from {} to {} ms, but {} logged no crash then (its crashes: {:?})",
                short(&a.commit),
                a.step,
                a.number,
                a.runner,
                a.reason,
                a.started_at,
                a.finished_at,
                a.runner,
                crashes_of
                    .get(&a.runner)
                    .map(|cs| cs.iter().map(|c| c.at_ms).collect::<Vec<_>>())
            ));
        }
    }
    let mut report = String::new();
    for r in &pool {
        let id = text(r, "id", "/runners");
        let crashes = crashes_of.get(id).map_or(0, Vec::len);
        let lost_stored = lost_per_runner.get(id).copied().unwrap_or(0);
        let lost_api = r["lost_attempts"].as_u64().unwrap_or(u64::MAX);
        let ran = attempts.iter().filter(|a| a.runner == id).count();
        let started = log
            .iter()
            .filter(|l| l.event == "start" && runner(l) == id)
            .count();
        if lost_stored < crashes {
            problems.add(format!(
                "{id} crashed {crashes} times per the log, but only {lost_stored} attempts on it are lost"
            ));
        }
        if usize::try_from(lost_api).ok() != Some(lost_stored) {
            problems.add(format!(
                "{id}: /runners counts {lost_api} lost attempts, the stored runs have {lost_stored}"
            ));
        }
        if ran == 0 || started == 0 {
            problems.add(format!(
                "{id} ran no step: {ran} attempts stored, {started} requests logged"
            ));
        }
        let addr = text(r, "address", "/runners").trim_start_matches("http://");
        let _ = writeln!(
            report,
            "{id}: {ran} attempts, {started} requests logged, {crashes} crashes logged, {lost_stored} lost attempts stored, /runners: lost_attempts {lost_api} crashes {} restarts {}, processes seen {}, most held at once (build, test, all) {:?}",
            r["crashes"],
            r["restarts"],
            replayed.pids_by_addr.get(addr).map_or(0, Vec::len),
            replayed.most_held.get(addr).copied().unwrap_or_default()
        );
    }
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for run in runs.values() {
        *by_status.entry(text(run, "status", "run")).or_default() += 1;
    }
    for (id, run) in &runs {
        if text(run, "status", id) != "error" {
            continue;
        }
        for step in run["steps"].as_array().expect("steps") {
            if step["status"] == "error" {
                let tries: Vec<String> = step["attempts"]
                    .as_array()
                    .expect("attempts")
                    .iter()
                    .map(|a| format!("{} {}", a["runner"], a["outcome"]))
                    .collect();
                let _ = writeln!(
                    report,
                    "run {} ended error: its {} was lost {} times: {tries:?}",
                    short(id),
                    step["name"],
                    tries.len()
                );
            }
        }
    }
    let lost_total: usize = lost_per_runner.values().sum();
    let _ = writeln!(
        report,
        "runs by status {by_status:?}; {} attempts ({lost_total} lost); {} log lines, {} crashes, {} requests died in crashes, {answers_cut_off} answers cut off by a crash; all runs ended {:.1} s after the test began",
        attempts.len(),
        log.len(),
        replayed.crashes.len(),
        replayed.died.len(),
        all_done_after.as_secs_f64()
    );
    eprintln!("{report}");
    assert!(
        problems.0.is_empty(),
        "{} problems:\n{}\n\nwhat the test saw:\n{report}",
        problems.0.len(),
        problems
            .0
            .iter()
            .take(50)
            .map(|p| format!("- {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The replay on small hand-written logs: each of its checks can fail.
mod replay_checks {
    use super::*;

    fn line(n: usize, event: &str, pid: u64, addr: &str, request: u64, step: &str) -> SimLogLine {
        SimLogLine {
            line: n,
            event: event.to_owned(),
            at_ms: 1_000 + n as i64,
            pid,
            addr: addr.to_owned(),
            request,
            step: step.to_owned(),
            commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            status: (event == "end").then_some(200),
            step_status: (event == "end").then(|| "Success".to_owned()),
        }
    }

    fn problems_of(log: &[SimLogLine]) -> (Replay, Vec<String>) {
        let mut problems = Problems::default();
        let replayed = replay(log, &mut problems);
        (replayed, problems.0)
    }

    #[test]
    fn one_build_and_one_test_at_a_time_with_lints_beside_them() {
        let log = [
            line(1, "start", 7, "a:1", 1, "build"),
            line(2, "start", 7, "a:1", 2, "test"),
            line(3, "start", 7, "a:1", 3, "lint"),
            line(4, "start", 8, "b:1", 1, "build"),
            line(5, "end", 7, "a:1", 1, "build"),
            line(6, "start", 7, "a:1", 4, "build"),
            line(7, "end", 7, "a:1", 2, "test"),
            line(8, "end", 7, "a:1", 3, "lint"),
            line(9, "end", 7, "a:1", 4, "build"),
            line(10, "end", 8, "b:1", 1, "build"),
        ];
        let (replayed, problems) = problems_of(&log);
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(replayed.most_held["a:1"], [1, 1, 3]);
        assert_eq!(replayed.most_held["b:1"], [1, 0, 1]);
    }

    #[test]
    fn a_second_build_on_one_process_is_reported_once() {
        let log = [
            line(1, "start", 7, "a:1", 1, "build"),
            line(2, "start", 7, "a:1", 2, "build"),
            line(3, "start", 7, "a:1", 3, "lint"),
            line(4, "end", 7, "a:1", 1, "build"),
            line(5, "end", 7, "a:1", 2, "build"),
            line(6, "end", 7, "a:1", 3, "lint"),
        ];
        let (_, problems) = problems_of(&log);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].starts_with("line 2 "), "{problems:#?}");
        assert!(problems[0].contains("2 builds"), "{problems:#?}");
    }

    #[test]
    fn a_crash_ends_every_open_request_of_its_process() {
        let log = [
            line(1, "start", 7, "a:1", 1, "build"),
            line(2, "start", 7, "a:1", 2, "test"),
            line(3, "start", 7, "a:1", 3, "lint"),
            line(4, "end", 7, "a:1", 3, "lint"),
            line(5, "crash", 7, "a:1", 2, "test"),
            line(6, "start", 9, "a:1", 1, "build"),
            line(7, "end", 9, "a:1", 1, "build"),
        ];
        let (replayed, problems) = problems_of(&log);
        assert_eq!(problems, Vec::<String>::new());
        let died: Vec<usize> = replayed.died.iter().map(|l| l.line).collect();
        assert_eq!(died, [1, 2]);
        assert_eq!(replayed.crashes.len(), 1);
        assert_eq!(
            replayed.at_risk,
            BTreeSet::from([4]),
            "the lint's answer was logged right before the crash"
        );
        assert_eq!(replayed.pids_by_addr["a:1"], [7, 9]);
    }

    #[test]
    fn a_new_process_at_an_address_whose_process_did_not_crash_is_reported() {
        let log = [
            line(1, "start", 7, "a:1", 1, "build"),
            line(2, "start", 9, "a:1", 1, "build"),
            line(3, "end", 9, "a:1", 1, "build"),
        ];
        let (_, problems) = problems_of(&log);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("line 2 ") && p.contains("never crashed")),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("still holds requests")),
            "the build of pid 7 never ended: {problems:#?}"
        );
    }

    #[test]
    fn nothing_may_follow_a_crash_of_the_same_process() {
        let log = [
            line(1, "start", 7, "a:1", 1, "test"),
            line(2, "crash", 7, "a:1", 1, "test"),
            line(3, "start", 7, "a:1", 2, "lint"),
        ];
        let (_, problems) = problems_of(&log);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].contains("after its process crashed at line 2"),
            "{problems:#?}"
        );
    }
}
