//! A pool of runners, end to end: the `ci-server` binary with N bundled
//! simulators (fixed durations, no failures, no crashes) runs 60 commits found
//! at start (`--initial all`), for N = 1, 2 and 3. The makespan is measured on
//! the server's own clock, from the earliest attempt's `started_at` to the
//! latest attempt's `finished_at` over all runs, and compared with one runner
//! and with the lower bound (every build is exclusive on its runner, so at best
//! the builds are spread evenly and one test follows the last of them).
//! Run: `cargo bench -p ci-server --bench pool_e2e`.

#![allow(
    clippy::print_stdout,
    reason = "a bench binary prints its table on stdout"
)]

#[path = "../tests/e2e_support/mod.rs"]
mod e2e_support;

use std::time::Duration;

use e2e_support::{GitRepo, Server, run_details, wait_for_terminal};

/// Commits in the repository, all built.
const COMMITS: usize = 60;
/// Fixed step durations of every simulator, in milliseconds.
const LINT_MS: u64 = 50;
const BUILD_MS: u64 = 400;
const TEST_MS: u64 = 300;
/// Bound on waiting for all runs to end (one runner needs about 25 s).
const FINISH_WITHIN: Duration = Duration::from_secs(180);
/// Pool sizes measured.
const POOLS: [usize; 3] = [1, 2, 3];

/// Runs the 60 commits on `runners` bundled simulators; returns the makespan
/// in milliseconds on the server's clock.
async fn makespan(runners: usize) -> i64 {
    let repo = GitRepo::new();
    let root = repo.commit("root");
    let chain = repo.chain(&root, COMMITS - 1, "work");
    repo.update_branch("main", chain.last().expect("a chain of commits"));
    let expected = repo.all_commits();
    assert_eq!(expected.len(), COMMITS, "the repository's commits");
    let sims = runners.to_string();
    let sim_args = format!(
        "--no-crash --fail-rate 0 --lint-ms {LINT_MS} --build-ms {BUILD_MS} --test-ms {TEST_MS}"
    );
    let server = Server::start(
        repo.path(),
        &[
            "--sims",
            &sims,
            "--initial",
            "all",
            "--db",
            ":memory:",
            "--sim-args",
            &sim_args,
        ],
    );
    wait_for_terminal(&server, &expected, FINISH_WITHIN).await;
    let runs = run_details(&server, &expected).await;
    let mut first_start = i64::MAX;
    let mut last_finish = i64::MIN;
    for (id, run) in &runs {
        assert_eq!(
            run["status"], "success",
            "with --no-crash --fail-rate 0 every run must succeed; {runners} runners, run {id}: {run}"
        );
        for step in run["steps"].as_array().expect("a run has steps") {
            let attempts = step["attempts"].as_array().expect("a step has attempts");
            assert_eq!(
                attempts.len(),
                1,
                "without crashes every step runs once; {runners} runners, run {id}: {step}"
            );
            for attempt in attempts {
                let started = attempt["started_at"].as_i64().expect("started_at");
                let finished = attempt["finished_at"].as_i64().expect("finished_at");
                first_start = first_start.min(started);
                last_finish = last_finish.max(finished);
            }
        }
    }
    last_finish - first_start
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "{COMMITS} commits found at start; lint {LINT_MS} ms, build {BUILD_MS} ms, test {TEST_MS} ms, no failures, no crashes"
    );
    println!();
    println!("| runners | makespan s | / one runner | lower bound s |");
    println!("|---|---|---|---|");
    let mut one = None;
    for runners in POOLS {
        let ms = rt.block_on(makespan(runners));
        let base = *one.get_or_insert(ms);
        let bound = COMMITS as f64 * BUILD_MS as f64 / runners as f64 + TEST_MS as f64;
        println!(
            "| {runners} | {:.2} | {:.3} | {:.2} |",
            ms as f64 / 1000.0,
            ms as f64 / base as f64,
            bound / 1000.0
        );
    }
}
