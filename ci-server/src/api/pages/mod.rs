//! Pages for people: server-rendered HTML over the same store and JSON shapes
//! as the API, readable without JavaScript, kept live by a small inline script
//! that listens to `/events` and re-reads the JSON API.
//!
//! - `GET /`: the runs, filtered by branch and status, a page at a time.
//! - `GET /commit/{commit}`: one run with its steps, attempts and logs.
//!
//! Everything is in the binary (inline CSS and script, no external assets);
//! every value from a commit or a log is escaped by the templates.
//! `docs/pages.md` describes the pages and the DOM the scripts keep up to date.
//!
//! - `view`: what the templates print, built from the API's JSON shapes.
//! - `templates`: the askama templates.
//! - `ansi`: removing terminal escapes from logs.
//! - `format`: times and durations as the pages show them.

mod ansi;
mod format;
mod templates;
mod view;

use askama::Template;
use ci_engine::{RunQuery, RunStatus, RunStore};
use poem_openapi::ApiResponse;
use poem_openapi::payload::Html;

use super::model::RunSummary;
use super::{DEFAULT_LIMIT, MAX_LIMIT, valid_statuses};
use templates::{ErrorPage, RunPage, RunsPage};
use view::{RunRow, RunView};

/// How many runs an ambiguous prefix's page looks through for candidates.
const CANDIDATE_SCAN: usize = 10_000;
/// How many candidates an ambiguous prefix's page lists at most.
const MAX_CANDIDATES: usize = 20;

/// The whole answer when a template fails to render: nothing from outside in it.
const RENDER_FAILED: &str = "<!doctype html><meta charset=\"utf-8\"><title>server error</title>\
    <p>The page could not be drawn; the server's log says why.</p>";

/// Why a page could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// A template failed to render.
    #[error("a page template failed to render: {0}")]
    Render(#[from] askama::Error),
}

/// Answers of the HTML pages (`text/html; charset=utf-8`, errors included).
#[derive(ApiResponse, Debug)]
pub enum PageResponse {
    /// The page.
    #[oai(status = 200)]
    Ok(Html<String>),
    /// A malformed commit or query parameter.
    #[oai(status = 400)]
    BadRequest(Html<String>),
    /// No run for that commit.
    #[oai(status = 404)]
    NotFound(Html<String>),
    /// The commit prefix matches several runs; the page lists them.
    #[oai(status = 409)]
    Ambiguous(Html<String>),
    /// The store failed, or a page did not render.
    #[oai(status = 500)]
    Internal(Html<String>),
}

/// The filters and paging of `GET /`, as the raw query strings a plain HTML
/// form sends (an empty value means "any" or "the default").
#[derive(Debug, Default, Clone)]
pub struct ListParams {
    /// `branch=`.
    pub branch: Option<String>,
    /// `status=`.
    pub status: Option<String>,
    /// `limit=`.
    pub limit: Option<String>,
    /// `offset=`.
    pub offset: Option<String>,
}

/// [`ListParams`] checked.
struct ListFilter {
    branch: Option<String>,
    status: Option<RunStatus>,
    limit: u32,
    offset: u64,
}

fn given(v: Option<&String>) -> Option<&str> {
    v.map(|s| s.trim()).filter(|s| !s.is_empty())
}

impl ListParams {
    fn check(&self) -> Result<ListFilter, String> {
        let status = match given(self.status.as_ref()) {
            None => None,
            Some(s) => Some(
                RunStatus::ALL
                    .iter()
                    .copied()
                    .find(|st| st.as_str() == s)
                    .ok_or_else(|| {
                        format!("unknown status {s:?}: expected one of {}", valid_statuses())
                    })?,
            ),
        };
        let limit = match given(self.limit.as_ref()) {
            None => DEFAULT_LIMIT,
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    format!("invalid limit {s:?}: expected an integer from 1 to {MAX_LIMIT}")
                })?,
        };
        let offset = match given(self.offset.as_ref()) {
            None => 0,
            Some(s) => s
                .parse::<u64>()
                .map_err(|_| format!("invalid offset {s:?}: expected an integer from 0"))?,
        };
        Ok(ListFilter {
            branch: given(self.branch.as_ref()).map(str::to_owned),
            status,
            limit,
            offset,
        })
    }
}

impl ListFilter {
    /// `/?…` with these filters and `offset`, leaving out what is default.
    fn href(&self, offset: u64) -> String {
        let mut parts = Vec::new();
        if let Some(b) = &self.branch {
            parts.push(format!("branch={}", percent_encode(b)));
        }
        if let Some(s) = self.status {
            parts.push(format!("status={}", s.as_str()));
        }
        if self.limit != DEFAULT_LIMIT {
            parts.push(format!("limit={}", self.limit));
        }
        if offset > 0 {
            parts.push(format!("offset={offset}"));
        }
        if parts.is_empty() {
            "/".to_owned()
        } else {
            format!("/?{}", parts.join("&"))
        }
    }
}

/// `s` with every byte but unreserved URL characters percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The list page for `params`.
pub async fn list(store: &dyn RunStore, params: &ListParams) -> PageResponse {
    let filter = match params.check() {
        Ok(f) => f,
        Err(message) => return error_page(400, message, Vec::new()),
    };
    let query = RunQuery {
        status: filter.status,
        branch: filter.branch.clone(),
        limit: usize::try_from(filter.limit).unwrap_or(usize::MAX),
        offset: usize::try_from(filter.offset).unwrap_or(usize::MAX),
        after: None,
        with_logs: false,
        with_steps: false,
    };
    let page = match store.list_runs(&query).await {
        Ok(page) => page,
        Err(e) => {
            tracing::error!(error = %e, "store failed to list runs for the list page");
            return error_page(500, format!("the store failed: {e}"), Vec::new());
        }
    };
    let rows: Vec<RunRow> = page
        .runs
        .iter()
        .map(|r| RunRow::from(&RunSummary::from(r)))
        .collect();
    let shown = u64::try_from(rows.len()).unwrap_or(u64::MAX);
    let limit = u64::from(filter.limit);
    let count = if rows.is_empty() {
        match page.total {
            0 => "no runs".to_owned(),
            n => format!("no runs here; {n} in all"),
        }
    } else if filter.offset == 0 && shown == page.total {
        format!(
            "{} run{}",
            page.total,
            if page.total == 1 { "" } else { "s" }
        )
    } else {
        format!(
            "runs {}–{} of {}",
            filter.offset + 1,
            filter.offset + shown,
            page.total
        )
    };
    let prev_href = (filter.offset > 0).then(|| filter.href(filter.offset.saturating_sub(limit)));
    let next_href = (filter.offset.saturating_add(shown) < page.total)
        .then(|| filter.href(filter.offset + limit));
    let title = match (&filter.branch, filter.status) {
        (None, None) => "runs · ci-server".to_owned(),
        (b, s) => {
            let mut what: Vec<&str> = Vec::new();
            if let Some(s) = s {
                what.push(s.as_str());
            }
            if let Some(b) = b {
                what.push(b);
            }
            format!("{} runs · ci-server", what.join(" "))
        }
    };
    render(
        200,
        &RunsPage {
            title,
            branch: filter.branch.clone().unwrap_or_default(),
            status: filter
                .status
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            statuses: RunStatus::ALL.iter().map(|s| s.as_str()).collect(),
            limit: filter.limit,
            rows,
            count,
            prev_href,
            next_href,
        },
    )
}

/// The run page of `raw` (a full commit hash or a unique prefix).
pub async fn run(api: &super::Api, raw: &str) -> PageResponse {
    use super::LookupError;
    match api.lookup(raw).await {
        Ok(run) => {
            let detail = crate::api::waiting::detail(&run, api.engine.as_ref()).await;
            let view = RunView::new(&run, detail);
            let title = format!(
                "{} {} · ci-server",
                view.id.chars().take(10).collect::<String>(),
                view.status
            );
            render(200, &RunPage { title, run: view })
        }
        Err(LookupError::BadRequest(m)) => error_page(400, m, Vec::new()),
        Err(LookupError::NotFound(m)) => error_page(404, m, Vec::new()),
        Err(LookupError::Ambiguous(m)) => {
            let prefix = raw.to_ascii_lowercase();
            error_page(409, m, candidates(api.store.as_ref(), &prefix).await)
        }
        Err(LookupError::Internal(m)) => error_page(500, m, Vec::new()),
    }
}

/// The commits of stored runs that start with `prefix`, newest first (looking
/// through the newest [`CANDIDATE_SCAN`] runs, listing [`MAX_CANDIDATES`]).
async fn candidates(store: &dyn RunStore, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut offset = 0;
    while offset < CANDIDATE_SCAN && found.len() < MAX_CANDIDATES {
        let query = RunQuery {
            limit: usize::try_from(MAX_LIMIT).unwrap_or(1000),
            offset,
            with_logs: false,
            with_steps: false,
            ..RunQuery::default()
        };
        let Ok(page) = store.list_runs(&query).await else {
            break;
        };
        if page.runs.is_empty() {
            break;
        }
        offset += page.runs.len();
        found.extend(
            page.runs
                .iter()
                .map(|r| r.commit.id.to_string())
                .filter(|id| id.starts_with(prefix)),
        );
    }
    found.truncate(MAX_CANDIDATES);
    found
}

fn error_page(status: u16, message: String, candidates: Vec<String>) -> PageResponse {
    let title = match status {
        400 => "bad request",
        404 => "not found",
        409 => "ambiguous commit",
        _ => "server error",
    };
    render(
        status,
        &ErrorPage {
            title: format!("{title} · ci-server"),
            heading: title.to_owned(),
            message,
            candidates,
        },
    )
}

fn render(status: u16, page: &impl Template) -> PageResponse {
    let html = match page.render().map_err(PageError::from) {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(error = %e, "a page did not render");
            return PageResponse::Internal(Html(RENDER_FAILED.to_owned()));
        }
    };
    match status {
        200 => PageResponse::Ok(Html(html)),
        400 => PageResponse::BadRequest(Html(html)),
        404 => PageResponse::NotFound(Html(html)),
        409 => PageResponse::Ambiguous(Html(html)),
        _ => PageResponse::Internal(Html(html)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(branch: Option<&str>, status: Option<RunStatus>, limit: u32) -> ListFilter {
        ListFilter {
            branch: branch.map(str::to_owned),
            status,
            limit,
            offset: 0,
        }
    }

    #[test]
    fn paging_links_keep_the_filters_and_encode_the_branch() {
        assert_eq!(filter(None, None, DEFAULT_LIMIT).href(0), "/");
        assert_eq!(
            filter(Some("feat/x y&z"), Some(RunStatus::Failure), 10).href(20),
            "/?branch=feat%2Fx%20y%26z&status=failure&limit=10&offset=20"
        );
        assert_eq!(
            filter(Some("ünï"), None, DEFAULT_LIMIT).href(100),
            "/?branch=%C3%BCn%C3%AF&offset=100"
        );
    }

    #[test]
    fn empty_form_fields_mean_the_defaults() {
        let params = ListParams {
            branch: Some(" ".to_owned()),
            status: Some(String::new()),
            limit: Some(String::new()),
            offset: Some(String::new()),
        };
        let f = params.check().expect("valid");
        assert_eq!(f.branch, None);
        assert_eq!(f.status, None);
        assert_eq!(f.limit, DEFAULT_LIMIT);
        assert_eq!(f.offset, 0);
        let bad = ListParams {
            limit: Some("1001".to_owned()),
            ..ListParams::default()
        };
        assert!(bad.check().is_err_and(|m| m.contains("limit")));
    }
}
