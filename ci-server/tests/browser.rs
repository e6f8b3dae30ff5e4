//! The pages in a real browser: `ci-server` (bundled simulator, quick steps) on
//! a temporary repository, and a headless Chromium driven over WebDriver by a
//! chromedriver the test starts itself. The run list at `/` must show a new
//! commit's run and its status changes live, without a reload; its link must
//! open the run page at `/commit/{id}`, whose steps carry statuses and whose
//! attempts open to show their logs. Both pages must fit a phone's width.
//!
//! A second test retries a failed run from its page: the Retry button asks
//! for the API token once (a wrong one is refused and forgotten), and the new
//! attempt appears live.
//!
//! Screenshots of both pages are written under the target directory
//! (`…/tmp/screenshots/`); with `UPDATE_SCREENSHOTS=1` they are also copied
//! to `docs/screenshots/`. Chromium and chromedriver come from `PATH`
//! (Debian's `chromium` and `chromium-driver`, which `.ci/test` installs); when
//! they are missing the test fails under CI and is skipped elsewhere.

mod browser_support;
mod e2e_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use browser_support::{Browser, poll, shorten, tools_or_skip};
use e2e_support::{GitRepo, Server, TOKEN_ENV, is_terminal, wait_for_terminal};
use fantoccini::Locator;
use serde_json::{Value, json};

/// Steps short enough that a run takes about a second, and no crash.
const SIM_ARGS: &str = "--no-crash --lint-ms 50 --build-ms 300 --test-ms 300";

/// Bound on each wait for the page (a run, a live update, a navigation).
const WAIT: Duration = Duration::from_secs(30);

/// The desktop window the screenshots are taken in.
const DESKTOP: (u32, u32) = (1200, 900);

/// A phone's viewport, for the no-horizontal-scroll check.
const PHONE: (u32, u32) = (390, 844);

const RUN_STATUSES: [&str; 6] = [
    "queued",
    "running",
    "success",
    "failure",
    "error",
    "cancelled",
];
const STEP_STATUSES: [&str; 7] = [
    "pending",
    "running",
    "success",
    "failure",
    "error",
    "skipped",
    "cancelled",
];

/// A commit message that would run script if a page inserted it as markup.
const HOSTILE: &str = "hostile <script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\"> &amp; done";

/// The row of `commit` in the run list: its status, its HTML and whether it
/// links to the run page; `null` when there is no such row.
const ROW_JS: &str = r#"
const id = arguments[0];
const row = [...document.querySelectorAll('#runs tr.run')].find(r => r.dataset.commit === id);
if (!row) return null;
const link = [...row.querySelectorAll('a')].some(a => a.getAttribute('href') === '/commit/' + id);
return { status: row.dataset.status, html: row.outerHTML, link: link };
"#;

/// Records, from now on, every status that a row of the run list shows (rows
/// added, and `data-status` changes), by commit, in `window.__statuses`.
const WATCH_ROWS_JS: &str = r#"
window.__statuses = {};
const note = row => {
  const id = row.dataset.commit, st = row.dataset.status;
  const seen = (window.__statuses[id] = window.__statuses[id] || []);
  if (seen[seen.length - 1] !== st) seen.push(st);
};
const visit = node => {
  if (node.nodeType !== 1) return;
  if (node.matches('tr.run')) note(node);
  node.querySelectorAll('tr.run').forEach(note);
};
new MutationObserver(records => {
  for (const r of records) {
    if (r.type === 'attributes') { if (r.target.matches('tr.run')) note(r.target); }
    else r.addedNodes.forEach(visit);
  }
}).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-status'] });
"#;

/// The run page: the run's commit and status and each step with its status
/// and attempts; `null` when the page has no `main#run`.
const RUN_PAGE_JS: &str = r#"
const main = document.querySelector('main#run');
if (!main) return null;
return {
  commit: main.dataset.commit,
  status: main.dataset.status,
  steps: [...main.querySelectorAll('section.step')].map(s => ({
    name: s.dataset.step,
    status: s.dataset.status,
    attempts: [...s.querySelectorAll('details.attempt')].map(d => ({
      n: d.dataset.attempt,
      open: d.open,
      summary: !!d.querySelector(':scope > summary'),
      log: !!d.querySelector('pre.log'),
    })),
  })),
  html: main.outerHTML,
};
"#;

/// One browser at a time: the tests of this file take turns.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The run page's retry and cancel controls, the build step's attempts, the
/// recorded actions and the token the tab keeps; `null` without `main#run`.
const CONTROLS_JS: &str = r#"
const q = s => document.querySelector(s);
const main = q('main#run');
if (!main) return null;
const build = main.querySelector('section.step[data-step="build"]');
const message = q('#action-message');
return {
  status: main.dataset.status,
  controls: !q('#run-controls').hidden,
  retry: !q('#retry-button').hidden,
  cancel: !q('#cancel-button').hidden,
  form: !q('#token-form').hidden,
  message: message.hidden ? null : message.textContent,
  kind: message.dataset.kind || null,
  attempts: build ? [...build.querySelectorAll('details.attempt')].map(d => ({
    n: Number(d.dataset.attempt), outcome: d.dataset.outcome, earlier: d.hasAttribute('data-earlier'),
  })) : [],
  actions: [...document.querySelectorAll('#run-actions li.action')].map(li => li.dataset.kind),
  stored: sessionStorage.getItem('ci-server-api-token'),
  html: main.outerHTML,
};
"#;

/// Whether the page scrolls sideways: `[scrollWidth, innerWidth]`.
const WIDTH_JS: &str = "return [document.documentElement.scrollWidth, window.innerWidth];";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_update_live_and_open_a_run_in_a_real_browser() {
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let _one_browser = ONE_BROWSER.lock().await;
    let started = Instant::now();

    let repo = GitRepo::new();
    let first = repo.commit("first");
    let server = Server::start(
        repo.path(),
        &[
            "--db",
            ":memory:",
            "--initial",
            "all",
            "--sim-args",
            SIM_ARGS,
        ],
    );
    let browser = Browser::start(&tools, DESKTOP.0, DESKTOP.1).await;
    let b = &browser;
    let server_log = || shorten(&server.proc.stderr_tail(), 4000);

    // The run list shows the first commit.
    b.client
        .goto(&server.url("/"))
        .await
        .expect("the run list loads");
    let row = poll("the first commit's row on /", WAIT, || async {
        match b.try_js(ROW_JS, vec![json!(first)]).await? {
            Value::Null => Err(b.page_html().await),
            row => Ok(row),
        }
    })
    .await;
    assert_eq!(
        row["link"], true,
        "the row does not link to /commit/{first}: {}",
        row["html"]
    );

    // A new commit shows up in place: no navigation (the marker survives).
    b.js("window.__noReload = 1;", vec![]).await;
    b.js(WATCH_ROWS_JS, vec![]).await;
    let second = repo.commit("second");
    let row = poll("the new commit's row to finish on /", WAIT, || async {
        let row = b.try_js(ROW_JS, vec![json!(second)]).await?;
        match row["status"].as_str() {
            Some(s) if is_terminal(s) => Ok(row),
            Some(_) => Err(format!("the row: {}", row["html"])),
            None => Err(format!(
                "no row yet; the page:\n{}\nserver log:\n{}",
                b.page_html().await,
                server_log()
            )),
        }
    })
    .await;
    assert_eq!(
        b.js("return window.__noReload === 1;", vec![]).await,
        true,
        "the run list navigated or reloaded to show the new commit"
    );
    assert_eq!(
        row["link"], true,
        "the row does not link to /commit/{second}: {}",
        row["html"]
    );
    let seen = b
        .js(
            "return window.__statuses[arguments[0]] || [];",
            vec![json!(second)],
        )
        .await;
    let seen: Vec<&str> = seen
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for s in &seen {
        assert!(
            RUN_STATUSES.contains(s),
            "the row showed {s:?}, not a run status; statuses seen: {seen:?}"
        );
    }
    assert!(
        seen.first()
            .is_some_and(|s| matches!(*s, "queued" | "running")),
        "the new row did not first show queued or running; statuses seen: {seen:?}; row: {}",
        row["html"]
    );
    assert!(
        seen.last().copied().is_some_and(is_terminal),
        "the row's status never changed live to a final one; statuses seen: {seen:?}"
    );

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    let runs_png = shots.join("runs.png");
    b.screenshot(&runs_png).await;
    assert_fits_phone(b, "/").await;

    // Its link opens the run page. (A live update may replace the row under
    // the click: the link is then found anew.)
    let link = format!("#runs tr.run[data-commit=\"{second}\"] a[href=\"/commit/{second}\"]");
    poll("a click on the row's link", WAIT, || async {
        let a = b
            .client
            .find(Locator::Css(&link))
            .await
            .map_err(|e| format!("no {link} ({e})"))?;
        a.click()
            .await
            .map_err(|e| format!("the link cannot be clicked ({e}): {}", row["html"]))
    })
    .await;
    let run = poll("the run page of the new commit", WAIT, || async {
        let run = b.try_js(RUN_PAGE_JS, vec![]).await?;
        let done = run["commit"] == second.as_str()
            && run["status"].as_str().is_some_and(is_terminal)
            && run["steps"].as_array().is_some_and(|steps| {
                !steps.is_empty()
                    && steps.iter().all(|s| {
                        s["status"]
                            .as_str()
                            .is_some_and(|st| !matches!(st, "pending" | "running"))
                    })
            });
        if done {
            Ok(run)
        } else if run.is_null() {
            Err(format!("no main#run; the page:\n{}", b.page_html().await))
        } else {
            Err(format!(
                "main#run: {}",
                shorten(run["html"].as_str().unwrap_or_default(), 8000)
            ))
        }
    })
    .await;
    let url = b.client.current_url().await.expect("the page's URL");
    assert_eq!(
        url.path(),
        format!("/commit/{second}"),
        "the link led elsewhere"
    );
    let html = shorten(run["html"].as_str().unwrap_or_default(), 8000);
    let steps = run["steps"].as_array().expect("steps");
    for step in steps {
        let status = step["status"].as_str().unwrap_or_default();
        assert!(
            STEP_STATUSES.contains(&status),
            "step {} shows {status:?}, not a step status: {html}",
            step["name"]
        );
        for attempt in step["attempts"].as_array().into_iter().flatten() {
            assert!(
                attempt["summary"] == true && attempt["log"] == true,
                "an attempt of step {} lacks its <summary> or <pre class=\"log\">: {html}",
                step["name"]
            );
        }
    }
    let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["lint", "build", "test"], "the steps: {html}");

    // An attempt opens to show its log. Lint runs first and always runs.
    let details = b
        .client
        .find(Locator::Css(
            "main#run section.step[data-step=\"lint\"] details.attempt",
        ))
        .await
        .unwrap_or_else(|e| panic!("lint has no attempt ({e}): {html}"));
    let summary = details
        .find(Locator::Css(":scope > summary"))
        .await
        .expect("the attempt's summary");
    let log = details
        .find(Locator::Css("pre.log"))
        .await
        .expect("the attempt's log");
    let is_open = || async {
        details
            .prop("open")
            .await
            .expect("the details' open property")
            .as_deref()
            == Some("true")
    };
    if is_open().await {
        // Shown open at first: close it, to see the click open it.
        summary.click().await.expect("the summary can be clicked");
        assert!(
            !is_open().await,
            "a click on the summary did not close the attempt: {}",
            details.html(false).await.unwrap_or_default()
        );
    }
    summary.click().await.expect("the summary can be clicked");
    let text = poll("the opened attempt's log to be shown", WAIT, || async {
        let shown = log.is_displayed().await.unwrap_or(false);
        let text = log.text().await.unwrap_or_default();
        if is_open().await && shown && !text.trim().is_empty() {
            Ok(text)
        } else {
            Err(format!(
                "open: {}, log shown: {shown}, log text: {text:?}; the attempt: {}",
                is_open().await,
                details.html(false).await.unwrap_or_default()
            ))
        }
    })
    .await;
    assert!(!text.trim().is_empty());

    let run_png = shots.join("run.png");
    b.screenshot(&run_png).await;
    assert_fits_phone(b, &format!("/commit/{second}")).await;

    eprintln!("screenshot of the run list: {}", runs_png.display());
    eprintln!("screenshot of the run page: {}", run_png.display());
    if std::env::var("UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        for png in [&runs_png, &run_png] {
            let to: PathBuf = docs.join(png.file_name().expect("a file name"));
            std::fs::create_dir_all(&docs).expect("docs/screenshots can be made");
            std::fs::copy(png, &to)
                .unwrap_or_else(|e| panic!("{} cannot be written: {e}", to.display()));
            eprintln!("updated {}", to.display());
        }
    }

    // A commit message full of markup and script shows as text, live on the
    // list and on its run page, and nothing in it runs.
    b.client
        .goto(&server.url("/"))
        .await
        .expect("the run list loads");
    let hostile = repo.commit(HOSTILE);
    let cell = poll("the hostile commit's row on /", WAIT, || async {
        let found = b
            .try_js(
                "const r = [...document.querySelectorAll('#runs tr.run')].find(r => r.dataset.commit === arguments[0]);\n\
                 return r ? r.querySelector('td.summary').textContent : null;",
                vec![json!(hostile)],
            )
            .await?;
        found
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no row yet".to_owned())
    })
    .await;
    assert_eq!(
        cell.trim(),
        HOSTILE,
        "the summary is not the message as text"
    );
    b.client
        .goto(&server.url(&format!("/commit/{hostile}")))
        .await
        .expect("the run page loads");
    let summary = b
        .js(
            "return document.querySelector('#run .summary').textContent;",
            vec![],
        )
        .await;
    assert_eq!(summary.as_str().map(str::trim), Some(HOSTILE));
    let injected = b
        .js(
            "return [window.__pwned === undefined, document.querySelectorAll('img[src=\"x\"]').length];",
            vec![],
        )
        .await;
    assert_eq!(
        injected,
        json!([true, 0]),
        "markup from the commit ran or was inserted"
    );

    browser.close().await;
    let took = started.elapsed();
    eprintln!("browser test took {took:?}");
}

/// At a phone's width, `page` has no horizontal scroll; the desktop size is
/// restored after.
async fn assert_fits_phone(b: &Browser, page: &str) {
    b.resize(PHONE.0, PHONE.1).await;
    let widths = b.js(WIDTH_JS, vec![]).await;
    let (scroll, inner) = (widths[0].as_u64(), widths[1].as_u64());
    assert!(
        scroll.is_some() && scroll <= inner,
        "{page} scrolls sideways at {}×{}: scrollWidth {scroll:?} > innerWidth {inner:?}; the page:\n{}",
        PHONE.0,
        PHONE.1,
        b.page_html().await
    );
    b.resize(DESKTOP.0, DESKTOP.1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_retried_from_its_page_with_the_token_asked_once() {
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let _one_browser = ONE_BROWSER.lock().await;
    let started = Instant::now();
    const TOKEN: &str = "browser-test-token-42";

    // Every build fails; lint passes; test is skipped.
    let repo = GitRepo::new();
    let id = repo.commit("fails at build");
    let server = Server::start_with_env(
        repo.path(),
        &[
            "--db",
            ":memory:",
            "--sim-args",
            "--no-crash --fail-rate 1 --lint-ms 0 --build-ms 200 --test-ms 0",
        ],
        &[(TOKEN_ENV, TOKEN)],
    );
    wait_for_terminal(
        &server,
        &std::collections::BTreeSet::from([id.clone()]),
        WAIT,
    )
    .await;
    let browser = Browser::start(&tools, DESKTOP.0, DESKTOP.1).await;
    let b = &browser;
    b.client
        .goto(&server.url(&format!("/commit/{id}")))
        .await
        .expect("the run page loads");
    let controls = || async { b.try_js(CONTROLS_JS, vec![]).await };
    let page = poll("the Retry button of a failed run", WAIT, || async {
        let page = controls().await?;
        if page["retry"] == true && page["controls"] == true {
            Ok(page)
        } else {
            Err(format!("{page}"))
        }
    })
    .await;
    assert_eq!(page["status"], "failure");
    assert_eq!(page["cancel"], false, "Cancel is offered on a finished run");
    assert_eq!(
        page["attempts"],
        json!([{ "n": 1, "outcome": "failure", "earlier": false }])
    );

    let click = |css: &'static str| async move {
        let element = match b.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => panic!("no {css} ({e}): {}", b.page_html().await),
        };
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("{css} cannot be clicked: {e}"));
    };
    let give_token = |token: &'static str| async move {
        poll("the token form", WAIT, || async {
            let page = controls().await?;
            if page["form"] == true {
                Ok(())
            } else {
                Err(format!("{page}"))
            }
        })
        .await;
        b.client
            .find(Locator::Css("#token-input"))
            .await
            .expect("the token input")
            .send_keys(token)
            .await
            .expect("the token can be typed");
        click("#token-submit").await;
    };

    // A wrong token: refused with the server's words, and forgotten.
    click("#retry-button").await;
    give_token("not-the-token").await;
    let page = poll("the refusal of a wrong token", WAIT, || async {
        let page = controls().await?;
        if page["kind"] == "error" {
            Ok(page)
        } else {
            Err(format!("{page}"))
        }
    })
    .await;
    let said = page["message"].as_str().unwrap_or_default();
    assert!(said.contains("wrong"), "the message: {said:?}");
    assert_eq!(page["stored"], Value::Null, "a refused token is kept");
    assert_eq!(page["attempts"].as_array().map(Vec::len), Some(1), "{page}");

    // The right token: the run is retried and the new attempt appears.
    click("#retry-button").await;
    give_token(TOKEN).await;
    let page = poll(
        "the retried build's new attempt on the page",
        WAIT,
        || async {
            let page = controls().await?;
            let attempts = page["attempts"].as_array().cloned().unwrap_or_default();
            let done = attempts.len() == 2
                && attempts[0]["earlier"] == true
                && attempts[1]["earlier"] == false
                && page["actions"] == json!(["retry"]);
            if done {
                Ok(page)
            } else {
                Err(shorten(&page.to_string(), 8000))
            }
        },
    )
    .await;
    assert_eq!(page["stored"], TOKEN, "the tab does not keep the token");
    let said = page["message"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("Retried: build, test"),
        "the message: {said:?}"
    );

    // It fails again; a second retry does not ask for the token again.
    let page = poll("the retried run to end", WAIT, || async {
        let page = controls().await?;
        if page["status"] == "failure" && page["retry"] == true {
            Ok(page)
        } else {
            Err(shorten(&page.to_string(), 8000))
        }
    })
    .await;
    assert_eq!(page["attempts"][1]["outcome"], "failure", "{page}");
    click("#retry-button").await;
    let page = poll("a third attempt without a token form", WAIT, || async {
        let page = controls().await?;
        if page["form"] == true {
            return Ok(page);
        }
        if page["attempts"].as_array().map(Vec::len) == Some(3) {
            Ok(page)
        } else {
            Err(shorten(&page.to_string(), 8000))
        }
    })
    .await;
    assert_eq!(page["form"], false, "the token was asked for twice: {page}");
    assert_eq!(page["actions"], json!(["retry", "retry"]), "{page}");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots/retried.png");
    b.screenshot(&shot).await;
    eprintln!("screenshot of the retried run: {}", shot.display());
    browser.close().await;
    eprintln!("retry browser test took {:?}", started.elapsed());
}
