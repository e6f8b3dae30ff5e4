//! The pages' askama templates (in `ci-server/templates/`), compiled into the
//! binary. Templates ending in `.html` escape every value they print.

use askama::Template;

use super::view::{RunRow, RunView};

/// `GET /`: the list of runs with its filters and paging links.
#[derive(Template, Debug)]
#[template(path = "runs.html")]
pub struct RunsPage {
    /// The page's title.
    pub title: String,
    /// The branch filter as given (empty for any).
    pub branch: String,
    /// The status filter as given (empty for any).
    pub status: String,
    /// Every status word, for the filter's choices.
    pub statuses: Vec<&'static str>,
    /// The page size.
    pub limit: u32,
    /// This page's runs, newest first.
    pub rows: Vec<RunRow>,
    /// What the count line says (`3 runs`, `runs 101–200 of 250`).
    pub count: String,
    /// Link to the newer runs, when there are any.
    pub prev_href: Option<String>,
    /// Link to the older runs, when there are any.
    pub next_href: Option<String>,
}

/// `GET /commit/{commit}`: one run, its steps, attempts and logs.
#[derive(Template, Debug)]
#[template(path = "run.html")]
pub struct RunPage {
    /// The page's title.
    pub title: String,
    /// The run.
    pub run: RunView,
}

/// Any page that could not be shown: 400, 404, 409, 500.
#[derive(Template, Debug)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// The page's title.
    pub title: String,
    /// What kind of error it is (`not found`, ...).
    pub heading: String,
    /// What went wrong, in words.
    pub message: String,
    /// Commits the visitor may have meant (for an ambiguous prefix).
    pub candidates: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pages::view::StepView;

    #[test]
    fn a_waiting_sentence_is_printed_escaped_under_its_step() {
        let step = |name: &str, waiting: Option<&str>| StepView {
            name: name.to_owned(),
            status: "pending".to_owned(),
            reason: None,
            waiting_sentence: waiting.map(str::to_owned),
            duration: "0 ms".to_owned(),
            attempts: Vec::new(),
        };
        let page = RunPage {
            title: "t".to_owned(),
            run: RunView {
                id: "abcd".to_owned(),
                status: "queued".to_owned(),
                failed_steps: Vec::new(),
                summary: String::new(),
                author: String::new(),
                branches: String::new(),
                parents: Vec::new(),
                created: String::new(),
                started: None,
                finished: None,
                duration: None,
                steps: vec![
                    step("build", Some("waits for a runner <of 2>")),
                    step("test", None),
                ],
                actions: Vec::new(),
            },
        };
        let html = page.render().expect("renders");
        assert!(
            html.contains(r#"<p class="waiting">waits for a runner &#60;of 2&#62;</p>"#),
            "{html}"
        );
        assert_eq!(html.matches(r#"<p class="waiting" hidden></p>"#).count(), 1);
    }

    #[test]
    fn actions_earlier_attempts_and_hidden_controls_are_printed() {
        use crate::api::pages::view::{ActionView, AttemptView};
        let attempt = |number: u32, earlier: bool| AttemptView {
            number,
            outcome: "failure".to_owned(),
            runner: None,
            reason: None,
            started: String::new(),
            duration: None,
            log: String::new(),
            earlier,
        };
        let page = RunPage {
            title: "t".to_owned(),
            run: RunView {
                id: "abcd".to_owned(),
                status: "failure".to_owned(),
                failed_steps: vec!["build".to_owned()],
                summary: String::new(),
                author: String::new(),
                branches: String::new(),
                parents: Vec::new(),
                created: String::new(),
                started: None,
                finished: None,
                duration: None,
                steps: vec![StepView {
                    name: "build".to_owned(),
                    status: "failure".to_owned(),
                    reason: None,
                    waiting_sentence: None,
                    duration: "0 ms".to_owned(),
                    attempts: vec![attempt(1, true), attempt(2, false)],
                }],
                actions: vec![ActionView {
                    kind: "retry".to_owned(),
                    when: "2026-01-02 03:04 UTC".to_owned(),
                    by: Some("127.0.0.1:5<6>".to_owned()),
                }],
            },
        };
        let html = page.render().expect("renders");
        assert!(
            html.contains(
                r#"<li class="action" data-kind="retry">retry at 2026-01-02 03:04 UTC by 127.0.0.1:5&#60;6&#62;</li>"#
            ),
            "{html}"
        );
        assert!(
            html.contains(r#"data-attempt="1" data-outcome="failure" data-earlier>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"data-attempt="2" data-outcome="failure">"#),
            "{html}"
        );
        assert_eq!(
            html.matches(r#"<span class="round">before the last retry</span>"#)
                .count(),
            1,
            "{html}"
        );
        // Without JavaScript the controls stay hidden: nothing to click that
        // would need a token the page cannot send.
        assert!(
            html.contains(r#"<div id="run-controls" class="controls" hidden>"#),
            "{html}"
        );
    }
}
