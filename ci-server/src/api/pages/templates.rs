//! The pages' askama templates (in `ci-server/templates/`), compiled into the
//! binary. Templates ending in `.html` escape every value they print.

use askama::Template;

use super::view::{RunRow, RunView};

/// `GET /`: the list of runs with its filters and paging links.
#[derive(Template)]
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
#[derive(Template)]
#[template(path = "run.html")]
pub struct RunPage {
    /// The page's title.
    pub title: String,
    /// The run.
    pub run: RunView,
}

/// Any page that could not be shown: 400, 404, 409, 500.
#[derive(Template)]
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
            },
        };
        let html = page.render().expect("renders");
        assert!(
            html.contains(r#"<p class="waiting">waits for a runner &#60;of 2&#62;</p>"#),
            "{html}"
        );
        assert_eq!(html.matches(r#"<p class="waiting" hidden></p>"#).count(), 1);
    }
}
