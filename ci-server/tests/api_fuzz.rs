//! schemathesis, a schema-driven API fuzzer, against a running `ci-server`:
//! every operation of `/openapi.json`, every check schemathesis has
//! (`--checks all`), with the API token configured on the server and sent
//! by the fuzzer, and no failure. `.ci/test` installs schemathesis; without
//! it the test is skipped, except with `CI=true`, where it fails.
//!
//! Settings: `tests/schemathesis.toml` (request timeouts, and why `/events`
//! has a short one). The run is reproducible: `CI_FUZZ_SEED` (default 1)
//! seeds it, and schemathesis prints a `curl` line for every failure.

mod e2e_support;
mod python_tools;

use std::time::{Duration, Instant};

/// Test cases per operation and phase.
const MAX_EXAMPLES: &str = "25";
/// Bound on the whole fuzzer run.
const FUZZ_WITHIN: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_in_any_operation() {
    let Some(st) = python_tools::tool_or_skip("st", "CI_SCHEMATHESIS") else {
        return;
    };
    let started = Instant::now();
    let fixture = python_tools::server_with_runs().await;
    let ready = started.elapsed();

    let work = tempfile::tempdir().expect("a temporary directory");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let seed = std::env::var("CI_FUZZ_SEED").unwrap_or_else(|_| "1".to_owned());
    let schema = fixture.server.url("/openapi.json");
    let auth = format!("Authorization: Bearer {}", fixture.token);
    let args = [
        "--config-file",
        config,
        "--no-color",
        "run",
        schema.as_str(),
        "--checks",
        "all",
        "--header",
        auth.as_str(),
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        seed.as_str(),
        // The examples it finds are not kept between runs.
        "--generation-database",
        "none",
    ];
    let out = python_tools::run(&st, &args, work.path(), &[], FUZZ_WITHIN).await;
    let fuzzed = started.elapsed() - ready;
    eprintln!("server with runs ready in {ready:?}; schemathesis ran {fuzzed:?}");
    // Its summary, for the CI log.
    let summary = out.text.find("SUMMARY").map_or("", |i| &out.text[i..]);
    eprintln!("{summary}");
    assert!(
        out.success,
        "schemathesis failed (exit {:?}, seed {seed}):\n{}\nserver log:\n{}",
        out.code,
        out.text,
        fixture.server.proc.stderr_tail()
    );
    // It tested every operation of the document.
    let doc: serde_json::Value = reqwest::get(&schema)
        .await
        .expect("the document")
        .json()
        .await
        .expect("JSON");
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .filter_map(serde_json::Value::as_object)
        .map(serde_json::Map::len)
        .sum();
    let tested = format!("Tested: {operations}");
    assert!(
        out.text.contains(&tested),
        "schemathesis did not test all {operations} operations:\n{}",
        out.text
    );
}
