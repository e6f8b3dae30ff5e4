//! `POST /run/{commit}/retry` and `POST /run/{commit}/cancel` against the real
//! `ci-server` binary (bundled simulator, a git repository in a temporary
//! directory): the token from each of its three sources, 403 without one,
//! 401 without or with a wrong one, the lookup's 400/404/409, a failed run
//! retried as new attempts that keep the earlier ones, a running run
//! cancelled and then retried, the 409s of a run in the wrong state, and what
//! `GET /run/{commit}`, `/events` and `/metrics` show of it all. The OpenAPI
//! document's declarations are checked in-process.

mod e2e_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ci_engine::{MemoryStore, RunStore};
use ci_server::api::{Api, app};
use e2e_support::{
    GitRepo, Server, TOKEN_ENV, TWIN_PREFIX, TWINS, get, get_json, is_terminal, wait_for_terminal,
};
use poem::test::TestClient;
use serde_json::Value;

/// Bound on each wait for the server.
const WITHIN: Duration = Duration::from_secs(30);

/// The token the servers of these tests are given.
const TOKEN: &str = "test-token-0123456789abcdef";

/// Builds always fail (lint always succeeds), quickly enough, and no crash:
/// every run ends `failure` at build, and test is skipped. Builds take 300 ms,
/// so a retried run is still under way when its retry's answer is read.
const FAILING: &str = "--no-crash --fail-rate 1 --lint-ms 0 --build-ms 300 --test-ms 0";

/// Builds that take two minutes: a run stays `running` at its build.
const SLOW_BUILD: &str = "--no-crash --fail-rate 0 --lint-ms 0 --build-ms 120000 --test-ms 0";

/// An answer: status, JSON body (`null` when the body is not JSON) and the
/// `WWW-Authenticate` header.
struct Answer {
    status: u16,
    body: Value,
    challenge: Option<String>,
}

/// `POST url`, with `Authorization: Bearer token` when a token is given.
async fn post(url: &str, token: Option<&str>) -> Answer {
    let client = reqwest::Client::new();
    let mut request = client.post(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().await.expect("the server answers");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        body,
        challenge,
    }
}

/// The error message of an answer (every error is JSON with a message).
fn message(answer: &Answer) -> &str {
    answer.body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("answer {} has no message: {}", answer.status, answer.body))
}

/// `GET /run/{id}` (must be 200).
async fn run_of(server: &Server, id: &str) -> Value {
    let (status, run) = get_json(&server.url(&format!("/run/{id}"))).await;
    assert_eq!(status, 200, "GET /run/{id}: {run}");
    run
}

/// The step `name` of a run's JSON.
fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name}: {run}"))
}

/// A step's attempts as (number, outcome).
fn attempts(step: &Value) -> Vec<(u64, String)> {
    step["attempts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|a| {
                    (
                        a["number"].as_u64().unwrap_or_default(),
                        a["outcome"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `GET /run/{id}` until `done` holds; panics with the server's log
/// after [`WITHIN`].
async fn wait_run(server: &Server, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WITHIN;
    loop {
        // Until the server has found the commit, the run is unknown (404).
        let (status, run) = get_json(&server.url(&format!("/run/{id}"))).await;
        if status == 200 && done(&run) {
            return run;
        }
        assert!(
            status == 200 || status == 404,
            "GET /run/{id}: {status} {run}"
        );
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WITHIN:?}; the run: {run}\nserver log:\n{}",
            server.proc.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The run's recorded actions as (kind, at, by).
fn actions(run: &Value) -> Vec<(String, i64, String)> {
    run["actions"]
        .as_array()
        .unwrap_or_else(|| panic!("no actions list: {run}"))
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap_or_default().to_owned(),
                a["at"].as_i64().unwrap_or_default(),
                a["by"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_millis()).expect("fits")
}

/// Checks that a recorded action is `kind`, taken between `before` and
/// `after`, by a loopback client (`127.0.0.1:PORT`).
fn assert_action(action: &(String, i64, String), kind: &str, before: i64, after: i64) {
    assert_eq!(action.0, kind, "{action:?}");
    assert!(
        (before..=after).contains(&action.1),
        "{kind} recorded at {} outside [{before}, {after}]",
        action.1
    );
    let port = action
        .2
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse::<u16>().ok());
    assert!(
        port.is_some(),
        "{kind} by {:?}, not 127.0.0.1:PORT",
        action.2
    );
}

/// Everything the server wrote on stderr so far.
fn whole_log(server: &Server) -> String {
    server.proc.stderr.lock().expect("the log").clone()
}

/// The server's log never shows the token.
fn assert_token_not_logged(server: &Server) {
    let log = whole_log(server);
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_retry_and_cancel_are_forbidden_and_reads_stay_open() {
    let repo = GitRepo::new();
    let id = repo.commit("fails at build");
    let server = Server::start(repo.path(), &["--db", ":memory:", "--sim-args", FAILING]);
    wait_for_terminal(&server, &BTreeSet::from([id.clone()]), WITHIN).await;

    for action in ["retry", "cancel"] {
        for token in [None, Some(TOKEN)] {
            let answer = post(&server.url(&format!("/run/{id}/{action}")), token).await;
            assert_eq!(
                answer.status, 403,
                "{action} with {token:?}: {}",
                answer.body
            );
            let text = message(&answer);
            assert!(
                text.contains(TOKEN_ENV) && text.contains("--api-token-file"),
                "the 403 does not say how to enable {action}: {text}"
            );
        }
    }
    // Nothing changed, and everything is still readable without a token.
    let run = run_of(&server, &id).await;
    assert_eq!(run["status"], "failure", "{run}");
    assert_eq!(actions(&run), [], "{run}");
    for path in [
        "/runs",
        "/runners",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/",
    ] {
        let (status, _) = get(&server.url(path)).await;
        assert_eq!(status, 200, "GET {path} without a token");
    }
    let log = whole_log(&server);
    assert!(
        log.contains("retry and cancel are disabled"),
        "the log does not say retry and cancel are off:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_retried_as_new_attempts_with_the_token_from_the_environment() {
    let repo = GitRepo::new();
    let id = repo.commit("fails at build");
    // Two root commits whose ids share a prefix, each the tip of a branch.
    let mut expected = BTreeSet::from([id.clone()]);
    for (i, (message, twin)) in TWINS.iter().enumerate() {
        let made = repo.commit_tree(&[], message);
        assert_eq!(&made, twin, "the twin commits are not reproducible");
        repo.update_branch(&format!("twin-{i}"), &made);
        expected.insert(made);
    }
    let server = Server::start_with_env(
        repo.path(),
        &["--db", ":memory:", "--sim-args", FAILING],
        &[(TOKEN_ENV, TOKEN)],
    );
    wait_for_terminal(&server, &expected, WITHIN).await;
    let before = run_of(&server, &id).await;
    assert_eq!(before["status"], "failure", "{before}");
    assert_eq!(before["failed_steps"], serde_json::json!(["build"]));

    let retry_url = server.url(&format!("/run/{}/retry", &id[..7]));
    // No token, a wrong one, another scheme: 401 with a bearer challenge.
    let answer = post(&retry_url, None).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(
        answer
            .challenge
            .as_deref()
            .is_some_and(|c| c.starts_with("Bearer")),
        "401 without a bearer challenge: {:?}",
        answer.challenge
    );
    assert!(message(&answer).contains("Authorization: Bearer"));
    let answer = post(&retry_url, Some("not-the-token")).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(
        answer
            .challenge
            .as_deref()
            .is_some_and(|c| c.starts_with("Bearer") && c.contains("invalid_token")),
        "{:?}",
        answer.challenge
    );
    let basic = reqwest::Client::new()
        .post(&retry_url)
        .basic_auth("user", Some(TOKEN))
        .send()
        .await
        .expect("an answer");
    assert_eq!(
        basic.status().as_u16(),
        401,
        "basic credentials are no token"
    );
    // Unknown, malformed and ambiguous commits, with the right token.
    for (commit, status) in [
        ("0000000", 404),
        ("0000000000000000000000000000000000000000", 404),
        ("not-hex", 400),
        ("abc", 400),
        (TWIN_PREFIX, 409),
    ] {
        for action in ["retry", "cancel"] {
            let answer = post(&server.url(&format!("/run/{commit}/{action}")), Some(TOKEN)).await;
            assert_eq!(
                answer.status, status,
                "{action} of {commit:?}: {}",
                answer.body
            );
            assert!(!message(&answer).is_empty());
        }
    }
    // Cancelling a finished run is refused.
    let answer = post(&server.url(&format!("/run/{id}/cancel")), Some(TOKEN)).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert!(
        message(&answer).contains("already finished"),
        "{}",
        answer.body
    );

    // Follow the events while the run is retried.
    let mut events = reqwest::get(server.url("/events"))
        .await
        .expect("the event stream opens");
    assert_eq!(events.status().as_u16(), 200);

    let asked = now_ms();
    let answer = post(&retry_url, Some(TOKEN)).await;
    let answered = now_ms();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["id"], id.as_str());
    assert_eq!(
        answer.body["steps"],
        serde_json::json!(["build", "test"]),
        "the failed step and the one it skipped run again: {}",
        answer.body
    );
    let status = answer.body["run"]["status"].as_str().unwrap_or_default();
    assert!(
        matches!(status, "queued" | "running"),
        "the retried run is {status}: {}",
        answer.body
    );

    let deadline = Instant::now() + WITHIN;
    let mut seen = String::new();
    while !seen.contains("event: run_retried") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no run_retried event ({other:?}); the stream so far:\n{seen}"),
        }
    }
    let line = seen
        .lines()
        .skip_while(|l| *l != "event: run_retried")
        .find(|l| l.starts_with("data:"))
        .unwrap_or_default();
    assert!(
        line.contains(&id) && line.contains("\"steps\":[\"build\",\"test\"]"),
        "{line}"
    );
    drop(events);

    let after = wait_run(&server, &id, "the retried run to finish", |run| {
        run["status"].as_str().is_some_and(is_terminal)
    })
    .await;
    assert_eq!(after["status"], "failure", "{after}");
    // The earlier attempts are kept; the new ones are numbered after them.
    let build = step(&after, "build");
    assert_eq!(
        attempts(build),
        [(1, "failure".to_owned()), (2, "failure".to_owned())],
        "{after}"
    );
    assert_eq!(build["budget_from"], 2, "{build}");
    let lint = step(&after, "lint");
    assert_eq!(lint["status"], "success");
    assert_eq!(attempts(lint), [(1, "success".to_owned())], "lint ran once");
    assert_eq!(step(&after, "test")["status"], "skipped");
    let recorded = actions(&after);
    assert_eq!(recorded.len(), 1, "{after}");
    assert_action(&recorded[0], "retry", asked, answered);
    assert!(
        after["finished_at"].as_i64() >= Some(asked),
        "the run kept its old end: {after}"
    );

    // /runs shows it failed again; /metrics counts the retry and both ends.
    let (_, runs) = get_json(&server.url("/runs?status=failure")).await;
    assert_eq!(runs["total"], 3, "{runs}");
    let (status, metrics) = get(&server.url("/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        metrics.lines().any(|l| l == "ci_runs_retried_total 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "ci_runs_finished_total{status=\"failure\"} 4"),
        "three runs failed, one of them twice: {metrics}"
    );
    assert_token_not_logged(&server);
    let log = whole_log(&server);
    assert!(
        log.lines().any(|l| l.contains("run retried over the API")
            && l.contains(&id)
            && l.contains("by=\"127.0.0.1:")
            && l.contains("result=\"retried\"")),
        "the retry is not logged with the commit, the client and the result:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("refused")
            && l.contains("result=\"unauthorized\"")),
        "a wrong token is not logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_run_is_cancelled_then_retried_with_the_token_from_a_file() {
    let repo = GitRepo::new();
    let id = repo.commit("slow build");
    let dir = tempfile::tempdir().expect("temporary directory");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("the token file");
    let token_arg = token_file.display().to_string();
    let server = Server::start_with_env(
        repo.path(),
        &[
            "--db",
            ":memory:",
            "--sim-args",
            SLOW_BUILD,
            "--api-token-file",
            &token_arg,
        ],
        // The file wins over the environment.
        &[(TOKEN_ENV, "ignored-environment-token")],
    );
    // Lint runs beside the build: wait for it to succeed too, so the cancel
    // catches only the build (and the test behind it).
    let running = wait_run(&server, &id, "the build to start, lint done", |run| {
        step(run, "build")["status"] == "running" && step(run, "lint")["status"] == "success"
    })
    .await;
    assert_eq!(running["status"], "running");

    // A run under way cannot be retried; the environment's token is not used.
    let answer = post(&server.url(&format!("/run/{id}/retry")), Some(TOKEN)).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert!(message(&answer).contains("not finished"), "{}", answer.body);
    let answer = post(
        &server.url(&format!("/run/{id}/cancel")),
        Some("ignored-environment-token"),
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.body);

    let asked = now_ms();
    let answer = post(&server.url(&format!("/run/{id}/cancel")), Some(TOKEN)).await;
    let answered = now_ms();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["id"], id.as_str());
    let run = &answer.body["run"];
    assert_eq!(run["status"], "cancelled", "{run}");
    let build = step(run, "build");
    assert_eq!(build["status"], "cancelled", "{run}");
    assert_eq!(attempts(build), [(1, "cancelled".to_owned())], "{run}");
    let recorded = actions(run);
    assert_eq!(recorded.len(), 1, "{run}");
    assert_action(&recorded[0], "cancel", asked, answered);

    // Once finished, a second cancel is refused and changes nothing.
    let answer = post(&server.url(&format!("/run/{id}/cancel")), Some(TOKEN)).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(actions(&run_of(&server, &id).await).len(), 1);

    // A cancelled run can be retried: its build and test run again; the
    // runner still holds the given-up build, so the new one waits for it.
    let answer = post(&server.url(&format!("/run/{id}/retry")), Some(TOKEN)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["steps"], serde_json::json!(["build", "test"]));
    let status = answer.body["run"]["status"].as_str().unwrap_or_default();
    assert!(matches!(status, "queued" | "running"), "{}", answer.body);
    assert_eq!(step(&answer.body["run"], "build")["budget_from"], 2);
    // ... and cancelled again.
    let answer = post(&server.url(&format!("/run/{id}/cancel")), Some(TOKEN)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let run = run_of(&server, &id).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    let kinds: Vec<String> = actions(&run).into_iter().map(|a| a.0).collect();
    assert_eq!(kinds, ["cancel", "retry", "cancel"], "{run}");
    assert_eq!(
        step(&run, "lint")["attempts"].as_array().map(Vec::len),
        Some(1),
        "lint succeeded and is not run again: {run}"
    );
    assert_token_not_logged(&server);
    let log = whole_log(&server);
    assert!(
        log.contains("--api-token-file") && log.contains("not used"),
        "the log does not say which token source is used:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_run_has_nothing_to_retry_with_the_token_from_the_command_line() {
    let repo = GitRepo::new();
    let id = repo.commit("lint only");
    let dir = tempfile::tempdir().expect("temporary directory");
    let pipeline = dir.path().join("lint.toml");
    std::fs::write(&pipeline, "[[step]]\nname = \"lint\"\n").expect("the pipeline file");
    let pipeline_arg = pipeline.display().to_string();
    let server = Server::start(
        repo.path(),
        &[
            "--db",
            ":memory:",
            "--sim-args",
            "--no-crash --lint-ms 0",
            "--pipeline",
            &pipeline_arg,
            "--api-token",
            TOKEN,
        ],
    );
    wait_for_terminal(&server, &BTreeSet::from([id.clone()]), WITHIN).await;
    assert_eq!(run_of(&server, &id).await["status"], "success");

    let answer = post(&server.url(&format!("/run/{id}/retry")), Some("wrong")).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    let answer = post(&server.url(&format!("/run/{id}/retry")), Some(TOKEN)).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert!(
        message(&answer).contains("nothing to retry"),
        "{}",
        answer.body
    );
    let answer = post(&server.url(&format!("/run/{id}/cancel")), Some(TOKEN)).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    let run = run_of(&server, &id).await;
    assert_eq!(run["status"], "success");
    assert_eq!(actions(&run), [], "refused actions are not recorded: {run}");
    let log = whole_log(&server);
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("--api-token") && l.contains("other users")),
        "no warning about a token on the command line:\n{log}"
    );
    // The token is on the command line, but the server never writes it.
    assert_token_not_logged(&server);
}

/// The OpenAPI document declares both operations with the bearer scheme and
/// every answer they give; the pages and reads need no token.
#[tokio::test]
async fn the_openapi_document_declares_the_bearer_token_and_every_answer() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let cli = TestClient::new(app(Api::new(store, None)));
    let resp = cli.get("/openapi.json").send().await;
    resp.assert_status_is_ok();
    let doc: Value =
        serde_json::from_str(&resp.0.into_body().into_string().await.expect("text")).expect("JSON");
    let scheme = &doc["components"]["securitySchemes"]["ApiToken"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    for (path, id) in [
        ("/run/{commit}/retry", "retry_run"),
        ("/run/{commit}/cancel", "cancel_run"),
    ] {
        let op = &doc["paths"][path]["post"];
        assert_eq!(op["operationId"], id, "{op}");
        assert_eq!(
            op["security"],
            serde_json::json!([{ "ApiToken": [] }]),
            "{path}"
        );
        for code in ["200", "400", "401", "403", "404", "409", "500", "503"] {
            assert!(op["responses"].get(code).is_some(), "{path} lacks {code}");
        }
        // Header names are not case-sensitive; poem-openapi writes them in capitals.
        let headers = op["responses"]["401"]["headers"]
            .as_object()
            .map(|h| h.keys().map(|k| k.to_ascii_lowercase()).collect::<Vec<_>>())
            .unwrap_or_default();
        assert_eq!(
            headers,
            ["www-authenticate"],
            "{path}: the 401 does not declare its challenge: {}",
            op["responses"]["401"]
        );
        let commit = op["parameters"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "commit"))
            .unwrap_or_else(|| panic!("{path} has no commit parameter"));
        assert_eq!(commit["in"], "path");
        assert!(commit["schema"]["pattern"].is_string(), "{commit}");
    }
    for (path, method) in [
        ("/runs", "get"),
        ("/run/{commit}", "get"),
        ("/events", "get"),
    ] {
        assert!(
            doc["paths"][path][method].get("security").is_none(),
            "{method} {path} asks for a token"
        );
    }
    let schemas = &doc["components"]["schemas"];
    for name in ["RetryResult", "CancelResult", "RunAction"] {
        assert!(schemas.get(name).is_some(), "no schema {name}");
    }
    assert!(schemas["RunDetail"]["properties"].get("actions").is_some());
    assert!(
        schemas["StepInfo"]["properties"]
            .get("budget_from")
            .is_some()
    );

    // Without an engine (and without a token), the answers are as declared.
    let resp = cli.post("/run/abcd/retry").send().await;
    resp.assert_status(poem::http::StatusCode::FORBIDDEN);
    let resp = cli.post("/run/zz/cancel").send().await;
    resp.assert_status(poem::http::StatusCode::BAD_REQUEST);
}

/// Without an engine, a valid token reaches the lookup, then 503.
#[tokio::test]
async fn with_a_token_but_no_engine_the_actions_are_unavailable() {
    use ci_engine::{Commit, Run, StepStatus};
    let store = Arc::new(MemoryStore::new());
    let mut run = Run::new(
        Commit::bare("abcdef0123456789abcdef0123456789abcdef01"),
        1,
        &ci_engine::Pipeline::standard(),
    );
    for s in &mut run.steps {
        s.status = StepStatus::Failure;
    }
    run.settle();
    store.insert_run(&run).await.expect("stored");
    let token =
        ci_server::api::token::ApiToken::new(TOKEN, ci_server::api::token::TokenSource::Flag)
            .expect("a token");
    let cli = TestClient::new(app(
        Api::new(store as Arc<dyn RunStore>, None).with_api_token(Some(token))
    ));
    let auth = format!("Bearer {TOKEN}");
    let resp = cli
        .post("/run/abcdef/retry")
        .header("authorization", &auth)
        .send()
        .await;
    resp.assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
    let resp = cli
        .post("/run/ffff/cancel")
        .header("authorization", &auth)
        .send()
        .await;
    resp.assert_status(poem::http::StatusCode::NOT_FOUND);
    let resp = cli.post("/run/abcdef/cancel").send().await;
    resp.assert_status(poem::http::StatusCode::UNAUTHORIZED);
    resp.assert_header("www-authenticate", ci_server::api::actions::CHALLENGE);
}
