//! In-process tests of the pages for people (`GET /`, `GET /commit/{commit}`)
//! over a `MemoryStore` of hand-built runs: the DOM the live script and the
//! browser tests rely on, filters and paging links, logs without terminal
//! escapes, HTML error pages, and that nothing from a commit or a log reaches
//! the page unescaped.

use std::sync::Arc;

use ci_engine::{
    Attempt, AttemptOutcome, Commit, CommitId, MemoryStore, Pipeline, Run, RunStore, StepStatus,
};
use ci_server::api::Api;
use poem::Endpoint;
use poem::http::StatusCode;
use poem::test::{TestClient, TestResponse};

const GOOD: &str = "aaaa000000000000000000000000000000000001";
const BAD: &str = "bbbb000000000000000000000000000000000002";
const TWIN_1: &str = "dddd000000000000000000000000000000000004";
const TWIN_2: &str = "dddd100000000000000000000000000000000005";
const EVIL: &str = "eeee000000000000000000000000000000000006";

const SCRIPT: &str = "<script>alert(1)</script>";
const IMG: &str = "\"><img src=x onerror=alert(1)>";
const AMP: &str = "&amp;";

fn attempt(number: u32, outcome: AttemptOutcome, runner: &str, reason: Option<&str>) -> Attempt {
    Attempt {
        number,
        outcome,
        reason: reason.map(str::to_owned),
        logs: format!("attempt {number} output\n"),
        started_at: 1_700_000_000_000 + i64::from(number) * 1000,
        finished_at: Some(1_700_000_000_500 + i64::from(number) * 1000),
        duration_ms: Some(500),
        runner_duration_ms: Some(480),
        runner: Some(runner.to_owned()),
    }
}

fn commit(id: &str, branch: &str, summary: &str) -> Commit {
    Commit {
        id: CommitId::new(id),
        branches: vec![branch.to_owned()],
        parents: Vec::new(),
        summary: summary.to_owned(),
        author: "Test Author <test@example.invalid>".to_owned(),
        time: 1_700_000_000,
    }
}

/// A run whose steps (lint, build, test) end as `statuses`, one attempt each
/// on `runner-a` where the step ran.
fn run(id: &str, seq: u64, branch: &str, statuses: [StepStatus; 3]) -> Run {
    let mut run = Run::new(
        commit(id, branch, &format!("commit {}", &id[..4])),
        seq,
        &Pipeline::standard(),
    );
    run.created_at = 1_700_000_000_000;
    run.started_at = Some(1_700_000_001_000);
    for (step, status) in run.steps.iter_mut().zip(statuses) {
        step.status = status;
        let outcome = match status {
            StepStatus::Success => Some(AttemptOutcome::Success),
            StepStatus::Failure => Some(AttemptOutcome::Failure),
            StepStatus::Running => Some(AttemptOutcome::Running),
            _ => None,
        };
        if let Some(outcome) = outcome {
            step.attempts.push(attempt(1, outcome, "runner-a", None));
        }
    }
    run.settle();
    if run.finished_at.is_some() {
        // A fixed end, 3.5 s after the start, rather than the test's clock.
        run.finished_at = Some(1_700_000_004_500);
    }
    run
}

/// The failed run: build lost once on runner-b (coloured logs), then failed
/// on runner-a; test skipped.
fn bad_run() -> Run {
    use StepStatus::{Failure, Skipped, Success};
    let mut bad = run(BAD, 2, "main", [Success, Failure, Skipped]);
    let build = &mut bad.steps[1];
    let mut lost = attempt(1, AttemptOutcome::Lost, "runner-b", Some("runner died"));
    lost.logs = "\u{1b}[1;31merror\u{1b}[0m: \u{1b}[33mlinker\u{1b}[m crashed\n".to_owned();
    let mut failed = attempt(2, AttemptOutcome::Failure, "runner-a", None);
    failed.logs = "\u{1b}[32mcompiling\u{1b}[0m ok\ntest broke\n".to_owned();
    build.attempts = vec![lost, failed];
    bad.steps[2].reason = Some("build did not succeed".to_owned());
    bad.settle();
    bad
}

/// A run whose every commit and log value is hostile markup.
fn evil_run() -> Run {
    use StepStatus::{Error, Success};
    let hostile = format!("{SCRIPT} {IMG} {AMP}");
    let mut evil = run(
        EVIL,
        6,
        &format!("feat/{SCRIPT}{IMG}"),
        [Success, Success, Error],
    );
    evil.commit.summary = hostile.clone();
    evil.commit.author = format!("{IMG} <x@example.invalid>");
    let test = &mut evil.steps[2];
    let mut a = attempt(
        1,
        AttemptOutcome::Rejected,
        &format!("r{SCRIPT}"),
        Some(&hostile),
    );
    a.logs = format!("{hostile}\n</pre>{SCRIPT}\n");
    test.attempts = vec![a];
    test.reason = Some(hostile);
    evil.settle();
    evil
}

async fn client() -> TestClient<impl Endpoint> {
    use StepStatus::{Pending, Running, Success};
    let store = Arc::new(MemoryStore::new());
    let runs = [
        run(GOOD, 1, "main", [Success, Success, Success]),
        bad_run(),
        run(TWIN_1, 4, "feature", [Success, Success, Success]),
        run(TWIN_2, 5, "feature", [Success, Running, Pending]),
        evil_run(),
    ];
    for r in &runs {
        assert!(store.insert_run(r).await.expect("insert"), "{}", r.id());
    }
    let store: Arc<dyn RunStore> = store;
    TestClient::new(ci_server::api::app(Api::new(store, None)))
}

/// `body` with the numeric character references the templates write for
/// `<`, `>`, `"`, `&` and `'` spelled as named ones, so that assertions read
/// naturally. Nothing is unescaped.
fn named_entities(body: &str) -> String {
    body.replace("&#60;", "&lt;")
        .replace("&#62;", "&gt;")
        .replace("&#34;", "&quot;")
        .replace("&#38;", "&amp;")
        .replace("&#39;", "&apos;")
}

/// Asserts the status and an HTML content type, and returns the body (with
/// named entities, see [`named_entities`]).
async fn html(resp: TestResponse, status: StatusCode) -> String {
    resp.assert_status(status);
    resp.assert_header("content-type", "text/html; charset=utf-8");
    let body = resp.0.into_body().into_string().await.expect("body");
    assert!(body.starts_with("<!doctype html>"), "{body}");
    assert!(
        body.contains(r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#)
    );
    named_entities(&body)
}

/// The full commits of the list's rows, in order.
fn row_commits(body: &str) -> Vec<String> {
    body.split(r#"<tr class="run" data-commit=""#)
        .skip(1)
        .map(|rest| rest.split('"').next().expect("closing quote").to_owned())
        .collect()
}

/// The text between `start` and the next `end` after it.
fn between<'a>(body: &'a str, start: &str, end: &str) -> &'a str {
    let from = body
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not in {body}"))
        + start.len();
    let len = body[from..]
        .find(end)
        .unwrap_or_else(|| panic!("{end:?} not after {start:?}"));
    &body[from..from + len]
}

#[tokio::test]
async fn the_list_has_one_row_per_run_newest_first_per_the_dom_contract() {
    let cli = client().await;
    let body = html(cli.get("/").send().await, StatusCode::OK).await;
    let tbody = between(&body, r#"<tbody id="runs">"#, "</tbody>");
    assert_eq!(row_commits(tbody), [EVIL, TWIN_2, TWIN_1, BAD, GOOD]);
    for (id, status) in [
        (GOOD, "success"),
        (BAD, "failure"),
        (TWIN_2, "running"),
        (EVIL, "error"),
    ] {
        let row = between(
            tbody,
            &format!(r#"<tr class="run" data-commit="{id}" data-status="{status}">"#),
            "</tr>",
        );
        assert!(
            row.contains(&format!(r#"<a href="/commit/{id}">"#)),
            "{row}"
        );
        assert!(
            row.contains(&format!("<code>{}</code>", &id[..10])),
            "{row}"
        );
    }
    let bad = between(tbody, &format!(r#"data-commit="{BAD}""#), "</tr>");
    assert!(
        bad.contains(r#"<td class="summary">commit bbbb</td>"#),
        "{bad}"
    );
    assert!(bad.contains(r#"<td class="branches">main</td>"#), "{bad}");
    assert!(
        bad.contains(&format!(r#"<a href="/commit/{BAD}#step-build">build</a>"#)),
        "failed steps link to the step: {bad}"
    );
    assert!(
        bad.contains(r#"<time datetime="2023-11-14T22:13:20Z">2023-11-14 22:13 UTC</time>"#),
        "{bad}"
    );
    assert!(bad.contains(r#"<td class="duration">3.5 s</td>"#), "{bad}");
    let running = between(tbody, &format!(r#"data-commit="{TWIN_2}""#), "</tr>");
    assert!(
        running.contains(r#"<td class="duration"></td>"#),
        "an unfinished run has no duration: {running}"
    );
    assert!(body.contains(r#"<p id="count">5 runs</p>"#));
    assert!(!body.contains(r#"rel="prev""#) && !body.contains(r#"rel="next""#));
    // The live script is inline and builds no markup from strings.
    assert!(body.contains(r#"new EventSource("/events")"#));
    assert!(!body.contains("innerHTML"));
    assert!(!body.contains("src=\"http") && !body.contains("href=\"http"));
}

#[tokio::test]
async fn the_list_filters_by_branch_and_status_and_links_pages() {
    let cli = client().await;
    let body = html(
        cli.get("/").query("branch", &"feature").send().await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(row_commits(&body), [TWIN_2, TWIN_1]);
    assert!(body.contains(r#"name="branch" value="feature""#));

    let body = html(
        cli.get("/").query("status", &"failure").send().await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(row_commits(&body), [BAD]);
    assert!(
        body.contains(r#"<option value="failure" selected>"#),
        "{body}"
    );

    // An empty form field means "any", as a plain HTML form sends it.
    let body = html(
        cli.get("/?branch=&status=&limit=&offset=").send().await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(row_commits(&body).len(), 5);

    // Two runs succeeded: one per page.
    let body = html(
        cli.get("/?status=success&limit=1").send().await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(row_commits(&body), [TWIN_1]);
    assert!(
        body.contains(r#"<p id="count">runs 1–1 of 2</p>"#),
        "{body}"
    );
    assert!(!body.contains(r#"rel="prev""#), "{body}");
    assert!(
        body.contains(r#"<a rel="next" href="/?status=success&amp;limit=1&amp;offset=1">"#),
        "{body}"
    );
    let body = html(
        cli.get("/?status=success&limit=1&offset=1").send().await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(row_commits(&body), [GOOD]);
    assert!(
        body.contains(r#"<p id="count">runs 2–2 of 2</p>"#),
        "{body}"
    );
    assert!(
        body.contains(r#"<a rel="prev" href="/?status=success&amp;limit=1">"#),
        "{body}"
    );
    assert!(!body.contains(r#"rel="next""#), "{body}");

    let body = html(
        cli.get("/?branch=a%20b%26c&limit=2").send().await,
        StatusCode::OK,
    )
    .await;
    assert!(row_commits(&body).is_empty());
    assert!(body.contains(r#"value="a b&amp;c""#), "{body}");

    let body = html(
        cli.get("/").query("status", &"green").send().await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(body.contains("unknown status"), "{body}");
    html(cli.get("/?limit=0").send().await, StatusCode::BAD_REQUEST).await;
    html(cli.get("/?offset=-1").send().await, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn the_run_page_shows_every_step_and_attempt_per_the_dom_contract() {
    let cli = client().await;
    // A unique prefix finds the run, in any case.
    let body = html(cli.get("/commit/BBBB").send().await, StatusCode::OK).await;
    assert!(
        body.contains(&format!(
            r#"<main id="run" data-commit="{BAD}" data-status="failure">"#
        )),
        "{body}"
    );
    for (step, status) in [
        ("lint", "success"),
        ("build", "failure"),
        ("test", "skipped"),
    ] {
        assert!(
            body.contains(&format!(
                r#"<section class="step" id="step-{step}" data-step="{step}" data-status="{status}">"#
            )),
            "{step}: {body}"
        );
    }
    let build = between(&body, r#"data-step="build""#, "</section>");
    let first = between(
        build,
        r#"<details class="attempt" data-attempt="1""#,
        "</details>",
    );
    assert!(first.contains("<summary>"), "{first}");
    assert!(
        first.contains(r#"<span class="badge lost">lost</span>"#),
        "{first}"
    );
    assert!(first.contains("on runner-b"), "{first}");
    assert!(
        first.contains(r#"<span class="reason">runner died</span>"#),
        "{first}"
    );
    assert!(
        first.contains(r#"<span class="duration">500 ms</span>"#),
        "{first}"
    );
    // Colours are stripped; the text stays.
    assert!(
        first.contains("<pre class=\"log\">error: linker crashed\n</pre>"),
        "{first}"
    );
    let second = between(
        build,
        r#"<details class="attempt" data-attempt="2""#,
        "</details>",
    );
    assert!(second.contains("on runner-a"), "{second}");
    assert!(second.contains("<pre class=\"log\">compiling ok\ntest broke\n</pre>"));
    assert!(!body.contains('\u{1b}'), "no escape character on the page");

    let test = between(&body, r#"data-step="test""#, "</section>");
    assert!(
        test.contains(r#"<p class="reason">build did not succeed</p>"#),
        "{test}"
    );
    assert!(!test.contains("<details"), "a skipped step has no attempt");
    assert!(body.contains("Test Author &lt;test@example.invalid&gt;"));
    assert!(body.contains(r#"<dd id="run-failed">build</dd>"#), "{body}");
    assert!(
        body.contains(r#"<dd id="run-duration">3.5 s</dd>"#),
        "{body}"
    );
    assert!(
        body.contains(r#"<dd id="run-started">2023-11-14 22:13 UTC</dd>"#),
        "{body}"
    );

    // A running run's page names the running attempt.
    let body = html(
        cli.get(format!("/commit/{TWIN_2}")).send().await,
        StatusCode::OK,
    )
    .await;
    assert!(body.contains(r#"data-status="running""#));
    let build = between(&body, r#"data-step="build""#, "</section>");
    assert!(build.contains(r#"data-outcome="running""#), "{build}");
    assert!(body.contains(r#"<dd id="run-finished"></dd>"#), "{body}");
    let test = between(
        &body,
        r#"data-step="test" data-status="pending""#,
        "</section>",
    );
    assert!(
        test.contains(r#"<p class="waiting" hidden></p>"#),
        "no waiting sentence yet: {test}"
    );
}

#[tokio::test]
async fn unknown_ambiguous_and_malformed_commits_are_html_error_pages() {
    let cli = client().await;
    let body = html(
        cli.get("/commit/abcdef").send().await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(body.contains("no run for commit abcdef"), "{body}");
    assert!(body.contains(r#"<a href="/">"#));

    // The JSON API answers the same prefix with the same status.
    cli.get("/run/dddd")
        .send()
        .await
        .assert_status(StatusCode::CONFLICT);
    let body = html(cli.get("/commit/dddd").send().await, StatusCode::CONFLICT).await;
    assert!(body.contains("ambiguous"), "{body}");
    let list = between(&body, r#"<ul class="candidates">"#, "</ul>");
    for id in [TWIN_1, TWIN_2] {
        assert!(
            list.contains(&format!(r#"<a href="/commit/{id}">"#)),
            "{list}"
        );
    }
    assert!(!list.contains(GOOD));

    let body = html(cli.get("/commit/xyz").send().await, StatusCode::BAD_REQUEST).await;
    assert!(body.contains("hexadecimal"), "{body}");

    // The pages are not part of the API's document.
    let resp = cli.get("/openapi.json").send().await;
    resp.assert_status_is_ok();
    let doc = resp.0.into_body().into_string().await.expect("body");
    assert!(doc.contains("\"/run/{commit}\""), "{doc}");
    assert!(!doc.contains("/commit/"), "{doc}");
}

#[tokio::test]
async fn markup_from_commits_and_logs_is_shown_as_text() {
    let cli = client().await;
    let escaped_script = "&lt;script&gt;alert(1)&lt;/script&gt;";
    let escaped_img = "&lt;img src=x onerror=alert(1)&gt;";
    for path in ["/".to_owned(), format!("/commit/{EVIL}")] {
        let body = html(cli.get(&path).send().await, StatusCode::OK).await;
        assert!(body.contains(escaped_script), "{path}: {body}");
        assert!(body.contains(escaped_img), "{path}: {body}");
        assert!(
            body.contains("&amp;amp;"),
            "{path}: `&amp;` is shown as typed"
        );
        assert!(!body.contains("<script>alert"), "{path}: {body}");
        assert!(!body.contains("<img src=x"), "{path}: {body}");
        // The only script elements are the page's own (one).
        assert_eq!(body.matches("<script>").count(), 1, "{path}");
    }
    let body = html(
        cli.get(format!("/commit/{EVIL}")).send().await,
        StatusCode::OK,
    )
    .await;
    let test = between(&body, r#"data-step="test""#, "</section>");
    let log = between(test, r#"<pre class="log">"#, "</pre>");
    assert!(log.contains("&lt;/pre&gt;"), "{log}");
    assert!(
        body.contains(r#"<p class="reason">&lt;script&gt;"#),
        "{body}"
    );
    assert!(
        body.contains("on r&lt;script&gt;"),
        "the runner id is escaped too"
    );
    // The branch filter echoes hostile input as text.
    let body = html(
        cli.get("/").query("branch", &IMG).send().await,
        StatusCode::OK,
    )
    .await;
    assert!(body.contains(r#"value="&quot;&gt;&lt;img"#), "{body}");
    assert!(!body.contains("<img src=x"));
}
