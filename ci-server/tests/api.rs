//! In-process tests of the HTTP API (`poem::test::TestClient`) over a
//! `MemoryStore` filled with runs of every kind: every status code, every body
//! shape, and that no answer is ever `200 null`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ci_engine::testing::sim::{ScriptedSource, SimRunner, SimRunnerConfig, StepBehaviour};
use ci_engine::{
    Attempt, AttemptOutcome, Commit, CommitId, Engine, EngineConfig, MemoryStore, Pipeline, Run,
    RunStore, StepStatus,
};
use ci_server::api::Api;
use futures::StreamExt;
use poem::Endpoint;
use poem::http::StatusCode;
use poem::test::{TestClient, TestResponse};
use serde_json::Value;

const SUCCESS: &str = "aaaa000000000000000000000000000000000001";
const FAILURE: &str = "bbbb000000000000000000000000000000000002";
const ERROR: &str = "cccc000000000000000000000000000000000003";
const TWIN_1: &str = "dddd000000000000000000000000000000000004";
const TWIN_2: &str = "dddd100000000000000000000000000000000005";
const RUNNING: &str = "eeee000000000000000000000000000000000006";

fn attempt(number: u32, outcome: AttemptOutcome, reason: Option<&str>, logs: &str) -> Attempt {
    Attempt {
        number,
        outcome,
        reason: reason.map(str::to_owned),
        logs: logs.to_owned(),
        started_at: 1_700_000_000_000 + i64::from(number) * 1000,
        finished_at: Some(1_700_000_000_500 + i64::from(number) * 1000),
        duration_ms: Some(500),
        runner_duration_ms: Some(480),
        // First attempts name their runner; later ones look like records from
        // before runners had ids.
        runner: (number == 1).then(|| "runner-a".to_owned()),
    }
}

fn commit(id: &str, branch: &str, parents: &[&str]) -> Commit {
    Commit {
        id: CommitId::new(id),
        branches: vec![branch.to_owned()],
        parents: parents.iter().map(|p| CommitId::new(*p)).collect(),
        summary: format!("commit {}", &id[..4]),
        author: "Test Author <test@example.invalid>".to_owned(),
        time: 1_700_000_000,
    }
}

/// A run whose steps end as `statuses` (lint, build, test), each with one
/// attempt of the matching outcome (none for skipped/pending).
fn run(id: &str, seq: u64, branch: &str, statuses: [StepStatus; 3]) -> Run {
    let mut run = Run::new(commit(id, branch, &[]), seq, &Pipeline::standard());
    for (step, status) in run.steps.iter_mut().zip(statuses) {
        step.status = status;
        let outcome = match status {
            StepStatus::Success => Some(AttemptOutcome::Success),
            StepStatus::Failure => Some(AttemptOutcome::Failure),
            StepStatus::Running => Some(AttemptOutcome::Running),
            _ => None,
        };
        if let Some(outcome) = outcome {
            let logs = format!("step '{}' ran\nStep completed", step.name);
            step.attempts.push(attempt(1, outcome, None, &logs));
        }
    }
    run.settle();
    run
}

async fn filled_store() -> Arc<MemoryStore> {
    use StepStatus::{Error, Failure, Pending, Running, Skipped, Success};
    let store = Arc::new(MemoryStore::new());
    let mut runs = vec![
        run(SUCCESS, 1, "main", [Success, Success, Success]),
        run(FAILURE, 2, "main", [Success, Failure, Skipped]),
        run(TWIN_1, 4, "feature", [Success, Success, Success]),
        run(TWIN_2, 5, "feature", [Success, Success, Success]),
        run(RUNNING, 6, "main", [Success, Running, Pending]),
    ];
    // A run whose test was lost twice to runner crashes, then gave out.
    let mut errored = run(ERROR, 3, "main", [Success, Success, Error]);
    let test = &mut errored.steps[2];
    test.attempts = vec![
        attempt(1, AttemptOutcome::Lost, Some("runner died"), ""),
        attempt(2, AttemptOutcome::Lost, Some("runner died"), "partial"),
    ];
    test.reason = Some("retries exhausted".to_owned());
    errored.settle();
    runs.push(errored);
    for r in &runs {
        assert!(store.insert_run(r).await.expect("insert"), "{}", r.id());
    }
    store
}

async fn client() -> TestClient<impl Endpoint> {
    let store: Arc<dyn RunStore> = filled_store().await;
    TestClient::new(ci_server::api::app(Api::new(store, None)))
}

async fn body_json(resp: TestResponse) -> Value {
    let text = resp.0.into_body().into_string().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts status and JSON content type, and returns the body, which is never `null`.
async fn expect_json(resp: TestResponse, status: StatusCode) -> Value {
    resp.assert_status(status);
    let content_type = resp
        .0
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "{status} answer of type {content_type:?}"
    );
    let body = body_json(resp).await;
    assert!(!body.is_null(), "a {status} answer with a null body");
    body
}

/// Asserts an error answer: the status and a JSON body with a non-empty message.
async fn expect_error(resp: TestResponse, status: StatusCode) -> String {
    let body = expect_json(resp, status).await;
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {body}"));
    assert!(!message.is_empty());
    message.to_owned()
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn runs_are_listed_newest_first_with_the_users_fields() {
    let cli = client().await;
    let body = expect_json(cli.get("/runs").send().await, StatusCode::OK).await;
    assert_eq!(body["total"], 6);
    assert_eq!(
        ids(&body),
        [RUNNING, TWIN_2, TWIN_1, ERROR, FAILURE, SUCCESS],
        "newest (highest seq) first"
    );
    for item in body["data"].as_array().expect("array") {
        let failed = item["failed_steps"]
            .as_array()
            .expect("failed_steps always present");
        match item["status"].as_str().expect("status") {
            "success" | "running" => assert!(failed.is_empty(), "{item}"),
            "failure" | "error" => assert!(!failed.is_empty(), "{item}"),
            other => panic!("unexpected status {other}"),
        }
        assert!(item["branches"].is_array());
        assert!(item["created_at"].is_i64());
    }
    let failure = &body["data"][4];
    assert_eq!(failure["status"], "failure");
    assert_eq!(failure["failed_steps"], serde_json::json!(["build"]));
    assert_eq!(failure["summary"], "commit bbbb");
    let error = &body["data"][3];
    assert_eq!(error["status"], "error");
    assert_eq!(error["failed_steps"], serde_json::json!(["test"]));
}

#[tokio::test]
async fn runs_filter_by_status_and_branch_and_page() {
    let cli = client().await;
    let body = expect_json(
        cli.get("/runs").query("status", &"failure").send().await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["total"], 1);
    assert_eq!(ids(&body), [FAILURE]);

    let body = expect_json(
        cli.get("/runs").query("branch", &"feature").send().await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&body), [TWIN_2, TWIN_1]);

    let body = expect_json(
        cli.get("/runs")
            .query("limit", &2)
            .query("offset", &1)
            .send()
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["total"], 6, "total counts every match, not the page");
    assert_eq!(ids(&body), [TWIN_2, TWIN_1]);

    let body = expect_json(
        cli.get("/runs").query("offset", &100).send().await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["total"], 6);
    assert!(
        ids(&body).is_empty(),
        "an offset past the end is an empty page"
    );

    let body = expect_json(
        cli.get("/runs").query("branch", &"nowhere").send().await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["total"], 0);
}

/// Following `next` as `after` visits every run once, newest first, with
/// filters too; the last page's `next` is `null`.
#[tokio::test]
async fn following_next_pages_through_every_run() {
    let cli = client().await;
    for branch in [None, Some("main")] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..10 {
            let mut request = cli.get("/runs").query("limit", &2);
            if let Some(branch) = branch {
                request = request.query("branch", &branch);
            }
            if let Some(after) = &after {
                request = request.query("after", after);
            }
            let body = expect_json(request.send().await, StatusCode::OK).await;
            seen.extend(ids(&body));
            match &body["next"] {
                Value::String(next) => after = Some(next.clone()),
                Value::Null => break,
                other => panic!("next is neither a string nor null: {other}"),
            }
        }
        let all = expect_json(
            match branch {
                Some(b) => cli.get("/runs").query("branch", &b).send().await,
                None => cli.get("/runs").send().await,
            },
            StatusCode::OK,
        )
        .await;
        assert_eq!(all["next"], Value::Null, "one page holds them all");
        assert_eq!(seen, ids(&all), "pages by cursor on {branch:?}");
    }
}

/// A listing is kept between requests, but never past a write: the run a
/// write adds or changes shows in the next answer, and an answer served
/// again is byte for byte the first.
#[tokio::test]
async fn a_kept_listing_gives_way_to_the_next_write() {
    let store = filled_store().await;
    let shared: Arc<dyn RunStore> = Arc::clone(&store) as Arc<dyn RunStore>;
    let cli = TestClient::new(ci_server::api::app(Api::new(shared, None)));
    let text = |resp: TestResponse| async move {
        resp.assert_status_is_ok();
        resp.0.into_body().into_string().await.expect("body")
    };
    let first = text(cli.get("/runs").query("limit", &3).send().await).await;
    let again = text(cli.get("/runs").query("limit", &3).send().await).await;
    assert_eq!(first, again, "the same answer while nothing changed");

    let newest = run(
        &"e".repeat(40),
        9,
        "main",
        [
            StepStatus::Pending,
            StepStatus::Pending,
            StepStatus::Pending,
        ],
    );
    assert!(store.insert_run(&newest).await.expect("insert"));
    let body: Value =
        serde_json::from_str(&text(cli.get("/runs").query("limit", &3).send().await).await)
            .expect("JSON");
    assert_eq!(body["total"], 7, "the insert is counted");
    assert_eq!(ids(&body)[0], "e".repeat(40), "and listed first");

    let queued = || async {
        let body = text(cli.get("/runs").query("status", &"queued").send().await).await;
        let body: Value = serde_json::from_str(&body).expect("JSON");
        ids(&body)
    };
    assert!(queued().await.contains(&"e".repeat(40)), "queued at first");
    let mut done = newest.clone();
    done.status = ci_engine::RunStatus::Success;
    store.update_run(&done).await.expect("update");
    assert!(
        !queued().await.contains(&"e".repeat(40)),
        "the update shows in the next answer"
    );
}

#[tokio::test]
async fn bad_list_parameters_are_400_with_a_message() {
    let cli = client().await;
    let message = expect_error(
        cli.get("/runs").query("status", &"green").send().await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    for valid in [
        "queued",
        "running",
        "success",
        "failure",
        "error",
        "cancelled",
    ] {
        assert!(message.contains(valid), "{message:?} does not list {valid}");
    }
    for (name, value) in [
        ("limit", "0"),
        ("limit", "1001"),
        ("limit", "many"),
        ("offset", "-1"),
        ("after", "-1"),
        ("after", "abc"),
        ("after", "99999999999999999999"),
    ] {
        let message = expect_error(
            cli.get("/runs").query(name, &value).send().await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(message.contains(name), "{name}={value}: {message:?}");
    }
    // The edges of the limit are accepted.
    for limit in [1, 1000] {
        let body = expect_json(
            cli.get("/runs").query("limit", &limit).send().await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(ids(&body).len(), limit.min(6));
    }
}

#[tokio::test]
async fn a_run_is_found_by_full_hash_or_prefix_with_steps_and_attempts() {
    let cli = client().await;
    let full = expect_json(
        cli.get(format!("/run/{ERROR}")).send().await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(full["id"], ERROR);
    assert_eq!(full["status"], "error");
    assert_eq!(full["failed_steps"], serde_json::json!(["test"]));
    assert_eq!(
        full["commit"]["author"],
        "Test Author <test@example.invalid>"
    );
    assert!(full["commit"]["parents"].is_array());
    let steps = full["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["lint", "build", "test"]);
    let test = &steps[2];
    assert_eq!(test["status"], "error");
    assert_eq!(test["reason"], "retries exhausted");
    assert_eq!(test["duration_ms"], 1000, "sum of the attempts");
    assert_eq!(test["log_url"], format!("/run/{ERROR}/steps/test/log"));
    let attempts = test["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["number"], 1);
    assert_eq!(attempts[0]["outcome"], "lost");
    assert_eq!(attempts[0]["reason"], "runner died");
    assert_eq!(attempts[0]["duration_ms"], 500);
    assert_eq!(attempts[0]["runner_duration_ms"], 480);
    assert!(attempts[0]["started_at"].is_i64());
    assert_eq!(attempts[0]["runner"], "runner-a");
    assert!(
        attempts[1].get("runner").is_some_and(Value::is_null),
        "an attempt without a runner has `runner: null`: {}",
        attempts[1]
    );

    for prefix in ["cccc", "cccc0000", "CCCC0000"] {
        let body = expect_json(
            cli.get(format!("/run/{prefix}")).send().await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(body["id"], ERROR, "prefix {prefix}");
    }
}

#[tokio::test]
async fn unknown_malformed_and_ambiguous_commits_are_errors_not_null() {
    let cli = client().await;
    let m = expect_error(cli.get("/run/ffff").send().await, StatusCode::NOT_FOUND).await;
    assert!(m.contains("ffff"), "{m}");
    let unknown_full = "f".repeat(40);
    expect_error(
        cli.get(format!("/run/{unknown_full}")).send().await,
        StatusCode::NOT_FOUND,
    )
    .await;

    let too_long = "a".repeat(41);
    for bad in ["0", "abc", "zzzz", "abcd-", "12345g", too_long.as_str()] {
        let m = expect_error(
            cli.get(format!("/run/{bad}")).send().await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(m.contains("hexadecimal"), "{bad}: {m}");
    }

    let m = expect_error(cli.get("/run/dddd").send().await, StatusCode::CONFLICT).await;
    assert!(m.contains("ambiguous") && m.contains('2'), "{m}");
    // One more digit tells the twins apart.
    let body = expect_json(cli.get("/run/dddd1").send().await, StatusCode::OK).await;
    assert_eq!(body["id"], TWIN_2);
}

#[tokio::test]
async fn step_logs_are_plain_text() {
    let cli = client().await;
    let resp = cli
        .get(format!("/run/{FAILURE}/steps/build/log"))
        .send()
        .await;
    resp.assert_status_is_ok();
    resp.assert_content_type("text/plain; charset=utf-8");
    let text = resp.0.into_body().into_string().await.expect("text");
    assert_eq!(
        text,
        "=== attempt 1 on runner-a: failure ===\nstep 'build' ran\nStep completed\n"
    );

    let resp = cli.get(format!("/run/{ERROR}/steps/test/log")).send().await;
    resp.assert_status_is_ok();
    let text = resp.0.into_body().into_string().await.expect("text");
    assert_eq!(
        text,
        "=== attempt 1 on runner-a: lost (runner died) ===\n\
         === attempt 2: lost (runner died) ===\npartial\n"
    );

    let resp = cli
        .get(format!("/run/{ERROR}/steps/test/log"))
        .query("attempt", &2)
        .send()
        .await;
    resp.assert_status_is_ok();
    resp.assert_text("partial").await;

    // A skipped step has no attempts: empty logs, still 200.
    let resp = cli
        .get(format!("/run/{FAILURE}/steps/test/log"))
        .send()
        .await;
    resp.assert_status_is_ok();
    resp.assert_text("").await;
}

#[tokio::test]
async fn step_log_errors_are_json() {
    let cli = client().await;
    let m = expect_error(
        cli.get(format!("/run/{FAILURE}/steps/deploy/log"))
            .send()
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(
        m.contains("deploy") && m.contains("lint, build, test"),
        "{m}"
    );
    expect_error(
        cli.get(format!("/run/{ERROR}/steps/test/log"))
            .query("attempt", &3)
            .send()
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_error(
        cli.get(format!("/run/{ERROR}/steps/test/log"))
            .query("attempt", &0)
            .send()
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    expect_error(
        cli.get("/run/ffff/steps/test/log").send().await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_error(
        cli.get("/run/xyz/steps/test/log").send().await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    expect_error(
        cli.get("/run/dddd/steps/test/log").send().await,
        StatusCode::CONFLICT,
    )
    .await;
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json_errors() {
    let cli = client().await;
    expect_error(cli.get("/nothing/here").send().await, StatusCode::NOT_FOUND).await;
    expect_error(cli.get("/run").send().await, StatusCode::NOT_FOUND).await;
    expect_error(
        cli.post("/runs").send().await,
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
}

/// A 405 says which methods the path is served with, in `Allow` (RFC 9110)
/// and in its message: the API's paths (from the document), the pages and
/// the document itself.
#[tokio::test]
async fn a_wrong_method_is_405_with_allow() {
    let cli = client().await;
    let paths = [
        "/runs".to_owned(),
        format!("/run/{SUCCESS}"),
        format!("/run/{SUCCESS}/steps/lint/log"),
        "/events".to_owned(),
        "/runners".to_owned(),
        "/healthz".to_owned(),
        "/metrics".to_owned(),
        "/badge.svg".to_owned(),
        "/".to_owned(),
        format!("/commit/{SUCCESS}"),
        "/openapi.json".to_owned(),
        "/docs".to_owned(),
    ];
    let methods = [
        poem::http::Method::POST,
        poem::http::Method::PUT,
        poem::http::Method::PATCH,
        poem::http::Method::DELETE,
        poem::http::Method::OPTIONS,
        poem::http::Method::TRACE,
    ];
    for path in &paths {
        for method in &methods {
            let resp = cli.request(method.clone(), path).send().await;
            let allow = resp
                .0
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let message = expect_error(resp, StatusCode::METHOD_NOT_ALLOWED).await;
            assert_eq!(
                allow.as_deref(),
                Some("GET, HEAD"),
                "{method} {path}: {message}"
            );
            assert!(
                message.contains(method.as_str()) && message.contains("GET, HEAD"),
                "{method} {path}: {message}"
            );
        }
        // HEAD is served wherever GET is.
        let resp = cli.head(path).send().await;
        assert_ne!(
            resp.0.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "HEAD {path}"
        );
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint_and_error() {
    let cli = client().await;
    let doc = expect_json(cli.get("/openapi.json").send().await, StatusCode::OK).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    let runs = &paths["/runs"]["get"];
    for code in ["200", "400", "500"] {
        assert!(runs["responses"].get(code).is_some(), "/runs lacks {code}");
    }
    let params: Vec<&str> = runs["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(params, ["status", "branch", "limit", "offset", "after"]);
    let run = &paths["/run/{commit}"]["get"];
    for code in ["200", "400", "404", "409", "500"] {
        assert!(run["responses"].get(code).is_some(), "/run lacks {code}");
    }
    let log = &paths["/run/{commit}/steps/{step}/log"]["get"];
    assert!(log["responses"]["200"]["content"]["text/plain; charset=utf-8"].is_object());
    assert!(paths.get("/events").is_some());
    let runners = &paths["/runners"]["get"];
    for code in ["200", "503"] {
        assert!(
            runners["responses"].get(code).is_some(),
            "/runners lacks {code}"
        );
    }
    let health = &paths["/healthz"]["get"];
    for code in ["200", "503"] {
        assert!(
            health["responses"].get(code).is_some(),
            "/healthz lacks {code}"
        );
    }
    assert!(paths.get("/").is_none(), "the page is not part of the API");
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for name in [
        "Error",
        "RunList",
        "RunSummary",
        "RunDetail",
        "StepInfo",
        "AttemptInfo",
        "Runner",
        "Health",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    let described = |schema: &str, field: &str| {
        schemas[schema]["properties"][field]
            .get("description")
            .and_then(Value::as_str)
            .is_some_and(|d| !d.is_empty())
    };
    assert!(described("AttemptInfo", "runner"));
    for field in [
        "id",
        "state",
        "since",
        "in_flight",
        "in_flight_by_class",
        "held",
        "outages",
        "crashes",
        "lost_attempts",
        "last_error",
        "address",
        "repo_path",
        "bundled",
        "restarts",
    ] {
        assert!(
            described("Runner", field),
            "Runner.{field} is not described"
        );
    }
    for field in ["status", "role", "reason", "store", "runners"] {
        assert!(
            described("Health", field),
            "Health.{field} is not described"
        );
    }
    assert_eq!(
        schemas["RunnerState"]["enum"],
        serde_json::json!(["up", "down", "probing"])
    );
    let statuses = &schemas["RunStatus"]["enum"];
    assert_eq!(
        statuses,
        &serde_json::json!([
            "queued",
            "running",
            "success",
            "failure",
            "error",
            "cancelled"
        ])
    );
}

/// The schema of parameter `name` of `GET path` in the document.
fn param_schema<'a>(doc: &'a Value, path: &str, name: &str) -> &'a Value {
    doc["paths"][path]["get"]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{path} has no parameters"))
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| &p["schema"])
        .unwrap_or_else(|| panic!("{path} has no parameter {name}"))
}

/// Every limit the server checks is in the document, with the same values,
/// so that a request the document calls valid is never a 400.
#[tokio::test]
async fn the_document_states_every_parameter_limit() {
    use ci_server::api::{MAX_COMMIT_LEN, MAX_LIMIT, MAX_OFFSET, MIN_PREFIX};
    let cli = client().await;
    let doc = expect_json(cli.get("/openapi.json").send().await, StatusCode::OK).await;
    for path in ["/run/{commit}", "/run/{commit}/steps/{step}/log"] {
        let commit = param_schema(&doc, path, "commit");
        assert_eq!(commit["pattern"], "^[0-9a-fA-F]{4,40}$", "{path}");
        assert_eq!(commit["minLength"].as_u64(), Some(MIN_PREFIX as u64));
        assert_eq!(commit["maxLength"].as_u64(), Some(MAX_COMMIT_LEN as u64));
    }
    let step = param_schema(&doc, "/run/{commit}/steps/{step}/log", "step");
    assert_eq!(step["pattern"], "^[A-Za-z0-9._-]+$");
    let attempt = param_schema(&doc, "/run/{commit}/steps/{step}/log", "attempt");
    assert_eq!(attempt["minimum"].as_f64(), Some(1.0));
    assert_eq!(attempt["maximum"].as_f64(), Some(f64::from(u32::MAX)));
    let limit = param_schema(&doc, "/runs", "limit");
    assert_eq!(limit["minimum"].as_f64(), Some(1.0));
    assert_eq!(limit["maximum"].as_f64(), Some(f64::from(MAX_LIMIT)));
    let offset = param_schema(&doc, "/runs", "offset");
    assert_eq!(offset["minimum"].as_f64(), Some(0.0));
    assert_eq!(offset["maximum"].as_f64(), Some(f64::from(MAX_OFFSET)));
    assert_eq!(
        param_schema(&doc, "/runs", "status")["$ref"],
        "#/components/schemas/RunStatus"
    );

    // The edges are accepted, one past them is a 400.
    let edge = "f".repeat(MAX_COMMIT_LEN);
    let short = "f".repeat(MIN_PREFIX);
    for ok in [edge.as_str(), short.as_str()] {
        expect_error(
            cli.get(format!("/run/{ok}")).send().await,
            StatusCode::NOT_FOUND,
        )
        .await;
    }
    let long = "a".repeat(MAX_COMMIT_LEN + 1);
    let shorter = "a".repeat(MIN_PREFIX - 1);
    for bad in [long.as_str(), shorter.as_str()] {
        let m = expect_error(
            cli.get(format!("/run/{bad}")).send().await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(m.contains("commit") && m.contains("hexadecimal"), "{m}");
    }
    let m = expect_error(
        cli.get(format!("/run/{SUCCESS}/steps/a%2Fb/log"))
            .send()
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(m.contains("step"), "{m}");
    expect_json(
        cli.get("/runs").query("offset", &MAX_OFFSET).send().await,
        StatusCode::OK,
    )
    .await;
    let m = expect_error(
        cli.get("/runs")
            .query("offset", &(u64::from(MAX_OFFSET) + 1))
            .send()
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(m.contains("offset"), "{m}");
}

/// Every answer an operation can give is in the document, every error with
/// the `Error` body.
#[tokio::test]
async fn the_document_lists_every_answer() {
    let cli = client().await;
    let doc = expect_json(cli.get("/openapi.json").send().await, StatusCode::OK).await;
    let expected: [(&str, &[&str]); 8] = [
        ("/runs", &["200", "400", "500"]),
        ("/run/{commit}", &["200", "400", "404", "409", "500"]),
        (
            "/run/{commit}/steps/{step}/log",
            &["200", "400", "404", "409", "500"],
        ),
        ("/events", &["200", "503"]),
        ("/runners", &["200", "503"]),
        ("/healthz", &["200", "503"]),
        ("/metrics", &["200", "500"]),
        ("/badge.svg", &["200"]),
    ];
    for (path, codes) in expected {
        let responses = doc["paths"][path]["get"]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{path} has no responses"));
        let listed: Vec<&str> = responses.keys().map(String::as_str).collect();
        assert_eq!(listed, codes, "{path}");
        for (code, response) in responses {
            // The health check's 503 has the same body as its 200.
            if code.starts_with('2') || path == "/healthz" {
                continue;
            }
            assert_eq!(
                response["content"]["application/json; charset=utf-8"]["schema"]["$ref"],
                "#/components/schemas/Error",
                "{path} {code}"
            );
        }
    }
}

/// The document serves client generators: a field of an enum or object type
/// is a plain reference (never `allOf` of a reference and a description,
/// which generators cannot take for enums), and every field that may be
/// absent is `null` then, and says so.
#[tokio::test]
async fn the_document_has_plain_references_and_nullable_fields() {
    let cli = client().await;
    let doc = expect_json(cli.get("/openapi.json").send().await, StatusCode::OK).await;
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for (name, schema) in schemas {
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(properties) = schema["properties"].as_object() else {
            continue;
        };
        for (field, property) in properties {
            assert!(
                property.get("allOf").is_none(),
                "{name}.{field} is an allOf: {property}"
            );
            // The fields of an SSE event are absent, never null.
            if !required.contains(&field.as_str()) && name != "ServerSentEvent" {
                assert_eq!(
                    property["nullable"], true,
                    "{name}.{field} may be null but does not say so: {property}"
                );
            }
        }
    }
    assert_eq!(
        schemas["RunSummary"]["properties"]["status"]["$ref"],
        "#/components/schemas/RunStatus"
    );
    assert_eq!(
        schemas["StepInfo"]["properties"]["waiting"]["oneOf"][0]["$ref"],
        "#/components/schemas/WaitingInfo"
    );
}

/// Links say how an answer leads to the next request.
#[tokio::test]
async fn the_document_links_runs_to_their_details_and_logs() {
    let cli = client().await;
    let doc = expect_json(cli.get("/openapi.json").send().await, StatusCode::OK).await;
    let paths = &doc["paths"];
    let link = &paths["/runs"]["get"]["responses"]["200"]["links"]["GetRun"];
    assert_eq!(link["operationId"], "get_run", "{link}");
    assert_eq!(link["parameters"]["commit"], "$response.body#/data/0/id");
    let link = &paths["/run/{commit}"]["get"]["responses"]["200"]["links"]["GetStepLog"];
    assert_eq!(link["operationId"], "get_step_log", "{link}");
    assert_eq!(link["parameters"]["commit"], "$response.body#/id");
    assert_eq!(link["parameters"]["step"], "$response.body#/steps/0/name");
}

/// `/events` is described as what an SSE client reads: one event with its
/// name, id and JSON data, whose schema names every event.
#[tokio::test]
async fn the_document_describes_the_event_stream() {
    let cli = client().await;
    let doc = expect_json(cli.get("/openapi.json").send().await, StatusCode::OK).await;
    let content = &doc["paths"]["/events"]["get"]["responses"]["200"]["content"];
    assert_eq!(
        content["text/event-stream"]["schema"]["$ref"], "#/components/schemas/ServerSentEvent",
        "{content}"
    );
    let schemas = &doc["components"]["schemas"];
    let event = &schemas["ServerSentEvent"];
    assert_eq!(event["required"], serde_json::json!(["event", "data"]));
    let data = &event["properties"]["data"];
    assert_eq!(data["type"], "string");
    assert_eq!(data["contentMediaType"], "application/json");
    assert_eq!(
        data["contentSchema"]["$ref"],
        "#/components/schemas/EventData"
    );
    let mut names: Vec<&str> = schemas["EventName"]["enum"]
        .as_array()
        .expect("event names")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    names.sort_unstable();
    let mut mapping: Vec<&str> = schemas["EventData"]["discriminator"]["mapping"]
        .as_object()
        .expect("a discriminator mapping")
        .keys()
        .map(String::as_str)
        .collect();
    mapping.sort_unstable();
    assert_eq!(names, mapping);
    for name in [
        "connected",
        "reset",
        "run_queued",
        "step_started",
        "step_finished",
        "step_withdrawn",
        "run_finished",
        "runner_down",
        "runner_up",
    ] {
        assert!(names.contains(&name), "{name} is not documented");
    }
}

#[tokio::test]
async fn swagger_ui_and_the_live_page_are_served() {
    let cli = client().await;
    let resp = cli.get("/docs").send().await;
    resp.assert_status_is_ok();
    let html = resp.0.into_body().into_string().await.expect("html");
    assert!(
        html.contains("swagger"),
        "not Swagger UI: {}",
        &html[..html.len().min(200)]
    );
    // It shows the document /openapi.json serves.
    assert!(
        html.contains("ServerSentEvent"),
        "Swagger UI shows another document"
    );

    let resp = cli.get("/").send().await;
    resp.assert_status_is_ok();
    resp.assert_content_type("text/html; charset=utf-8");
    let html = resp.0.into_body().into_string().await.expect("html");
    assert!(html.contains("EventSource(\"/events\")") && html.contains("/runs"));
}

#[tokio::test]
async fn events_without_an_engine_are_503() {
    let cli = client().await;
    expect_error(
        cli.get("/events").send().await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
}

#[tokio::test]
async fn runners_without_an_engine_are_503_saying_so() {
    let cli = client().await;
    let message = expect_error(
        cli.get("/runners").send().await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert!(message.contains("the engine is not running"), "{message}");
}

#[tokio::test]
async fn health_without_an_engine_is_ok_with_unknown_runners() {
    let cli = client().await;
    let body = expect_json(cli.get("/healthz").send().await, StatusCode::OK).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["role"], "primary");
    assert!(body["reason"].is_null(), "{body}");
    assert_eq!(body["store"]["ok"], true);
    assert_eq!(body["runners"]["known"], false);
    assert!(body["runners"]["up"].is_null(), "{body}");
    assert!(
        body["runners"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("engine")),
        "{body}"
    );
    let default_limit = EngineConfig::default().unreachable_limit.as_millis();
    assert_eq!(
        body["unreachable_limit_ms"].as_u64().map(u128::from),
        Some(default_limit)
    );
}

#[tokio::test]
async fn events_stream_the_engines_progress() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let green = StepBehaviour::green(1, 5);
    let runner = SimRunner::new(SimRunnerConfig {
        seed: 1,
        steps: HashMap::new(),
        default_step: green,
        downtime_ms: (0, 0),
    });
    let engine = Engine::new(
        Pipeline::standard(),
        runner,
        Arc::clone(&store),
        EngineConfig::default(),
    )
    .expect("a valid engine configuration");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let api = Api::new(Arc::clone(&store), Some(engine.handle())).ending_streams_on(stopped);
    let cli = TestClient::new(ci_server::api::app(api));
    let resp = cli.get("/events").send().await;
    resp.assert_status_is_ok();
    resp.assert_content_type("text/event-stream");
    let mut events = resp.json_sse_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event in time")
        .expect("the stream is open");
    first
        .value()
        .object()
        .get("type")
        .assert_string("connected");

    let source = ScriptedSource::chain(1, Duration::ZERO);
    let engine_task = tokio::spawn(engine.run(Box::new(source), std::future::pending()));
    let mut seen = Vec::new();
    let mut started_on = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The engine may announce the run's end before its last step's end; wait for both.
    let count = |seen: &[String], kind: &str| seen.iter().filter(|t| *t == kind).count();
    while count(&seen, "run_finished") < 1 || count(&seen, "step_finished") < 3 {
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("no run_finished in time; saw {seen:?}"))
            .expect("the stream stays open while the engine runs");
        let value = next.value();
        let event = value.object();
        let kind = event.get("type").string().to_owned();
        if kind == "step_started" {
            started_on.push(event.get("runner").string().to_owned());
        }
        seen.push(kind);
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("run_queued"),
        "{seen:?}"
    );
    assert_eq!(count(&seen, "step_started"), 3, "{seen:?}");
    assert!(
        started_on.iter().all(|r| r == "runner"),
        "a one-runner engine names its runner `runner`: {started_on:?}"
    );
    assert_eq!(count(&seen, "run_finished"), 1, "{seen:?}");
    engine_task
        .await
        .expect("engine task")
        .expect("engine ends when the source does");

    // At shutdown the stream ends, so a graceful stop need not wait for clients.
    stop.send(true).expect("the API holds a receiver");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while events.next().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the event stream did not end at shutdown");
}
