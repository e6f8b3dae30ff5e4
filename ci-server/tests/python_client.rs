//! A Python client generated from the OpenAPI document, used as a new user
//! would: openapi-python-client generates it from the running server's
//! `/openapi.json` (with `ci-server/openapi-python-client.yaml`) without a
//! warning, with a typed model for every answer, and the client lists the
//! runs of the running server (`tests/python_client_check.py`). `.ci/test`
//! installs the generator (and the client's dependencies) in a virtual
//! environment; without it the test is skipped, except with `CI=true`,
//! where it fails.

mod e2e_support;
mod python_tools;

use std::collections::BTreeMap;
use std::time::Duration;

use e2e_support::TWIN_PREFIX;
use serde_json::Value;

/// Bound on generating the client, and on running the check.
const WITHIN: Duration = Duration::from_secs(120);

/// The name of the generated package.
const PACKAGE: &str = "ci_server_client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_has_typed_models_and_lists_the_runs() {
    let Some(generator) =
        python_tools::tool_or_skip("openapi-python-client", "CI_OPENAPI_PYTHON_CLIENT")
    else {
        return;
    };
    // The generator's own virtual environment has the client's dependencies
    // (httpx, attrs).
    let python = generator.with_file_name("python");
    assert!(
        python.is_file(),
        "no python beside {}: install openapi-python-client in a virtual environment",
        generator.display()
    );
    let fixture = python_tools::server_with_runs().await;
    let work = tempfile::tempdir().expect("a temporary directory");
    let doc = reqwest::get(fixture.server.url("/openapi.json"))
        .await
        .expect("the document")
        .text()
        .await
        .expect("its text");
    let doc_path = work.path().join("openapi.json");
    std::fs::write(&doc_path, doc).expect("the document is written");

    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi-python-client.yaml");
    let doc_arg = doc_path.display().to_string();
    let out = python_tools::run(
        &generator,
        &[
            "generate",
            "--path",
            &doc_arg,
            "--config",
            config,
            "--meta",
            "none",
            "--output-path",
            PACKAGE,
            "--fail-on-warning",
        ],
        work.path(),
        &[],
        WITHIN,
    )
    .await;
    assert!(
        out.success,
        "openapi-python-client failed (exit {:?}):\n{}",
        out.code, out.text
    );
    for sign in ["WARNING", "Unable to process", "removal of", "Warning"] {
        assert!(
            !out.text.contains(sign),
            "openapi-python-client warned ({sign:?}):\n{}",
            out.text
        );
    }
    let models = work.path().join(PACKAGE).join("models");
    for model in [
        "run_list",
        "run_summary",
        "run_detail",
        "step_info",
        "attempt_info",
        "runner",
        "health",
        "error",
    ] {
        assert!(
            models.join(format!("{model}.py")).is_file(),
            "no model {model}; the generator said:\n{}",
            out.text
        );
    }

    let check = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_client_check.py");
    let base = fixture.server.base.clone();
    let pythonpath = work.path().display().to_string();
    let out = python_tools::run(
        &python,
        &[check, PACKAGE, &base, TWIN_PREFIX],
        work.path(),
        &[("PYTHONPATH", &pythonpath)],
        WITHIN,
    )
    .await;
    assert!(
        out.success,
        "the generated client failed (exit {:?}):\n{}\nserver log:\n{}",
        out.code,
        out.text,
        fixture.server.proc.stderr_tail()
    );
    let report: Value = out
        .text
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("the check printed no JSON report:\n{}", out.text));

    // The client read the runs the server has, with their statuses.
    let known: BTreeMap<&str, &str> = fixture
        .runs
        .iter()
        .map(|r| {
            (
                r["id"].as_str().expect("id"),
                r["status"].as_str().expect("status"),
            )
        })
        .collect();
    let read: BTreeMap<&str, &str> = report["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().expect("id"),
                r["status"].as_str().expect("status"),
            )
        })
        .collect();
    assert_eq!(read, known);
    assert_eq!(report["total"].as_u64(), Some(known.len() as u64));
    let failed: Vec<&str> = known
        .iter()
        .filter(|(_, status)| **status == "failure")
        .map(|(id, _)| *id)
        .collect();
    let mut read_failed: Vec<&str> = report["failed"]
        .as_array()
        .expect("failed")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    read_failed.sort_unstable();
    assert_eq!(read_failed, failed);
    let detail = &report["detail"];
    assert_eq!(detail["status"], "failure", "{detail}");
    let steps: Vec<&str> = detail["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(steps, ["lint", "build", "test"], "{detail}");
    assert!(
        report["ambiguous"]
            .as_str()
            .is_some_and(|m| m.contains("ambiguous")),
        "{report}"
    );
    eprintln!("the generated client's answers: {}", report["returns"]);
}
