//! `GET /badge.svg?branch=NAME`: the status of a branch as an SVG badge, for a
//! README. Always an image (an image proxy drops error answers): a branch the
//! server knows nothing about gets a grey `unknown` badge.

use std::sync::Arc;

use ci_engine::{RunQuery, RunStatus, RunStore};

/// Finds the commit a branch points at now (full hex id), if the branch exists.
pub type TipResolver = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How long a badge may be cached, in seconds: short, so a README shows a new
/// status within a minute.
pub const MAX_AGE_SECS: u32 = 60;

/// The text on the left of every badge.
const LABEL: &str = "ci";

/// The status shown for `branch`: its current tip's run when the tip has one,
/// else the branch's newest run, else `None` (unknown). Without a branch, the
/// newest run of any branch.
pub async fn status_of(
    store: &dyn RunStore,
    tips: Option<&TipResolver>,
    branch: Option<&str>,
) -> Option<RunStatus> {
    if let (Some(branch), Some(resolve)) = (branch, tips)
        && let Some(tip) = resolve(branch)
        && let Ok(run) = store.get_run(&tip).await
    {
        return Some(run.status);
    }
    let query = RunQuery {
        status: None,
        branch: branch.map(str::to_owned),
        limit: 1,
        offset: 0,
        after: None,
        with_logs: false,
        with_steps: false,
    };
    match store.list_runs(&query).await {
        Ok(page) => page.runs.first().map(|r| r.status),
        Err(e) => {
            tracing::warn!(error = %e, "badge: the store did not answer");
            None
        }
    }
}

/// The badge for `status` (`None`: unknown), as an SVG document.
pub fn svg(status: Option<RunStatus>) -> String {
    let (message, colour) = match status {
        Some(RunStatus::Success) => ("success", "#3fb950"),
        Some(RunStatus::Failure) => ("failure", "#e5534b"),
        Some(RunStatus::Error) => ("error", "#d29922"),
        Some(RunStatus::Running) => ("running", "#2f81f7"),
        Some(RunStatus::Queued) => ("queued", "#2f81f7"),
        Some(RunStatus::Cancelled) => ("cancelled", "#8b949e"),
        _ => ("unknown", "#8b949e"),
    };
    // Widths from a 7 px average glyph in an 11 px sans-serif font, plus padding.
    let width = |text: &str| 10 + 7 * u32::try_from(text.len()).unwrap_or(20);
    let (left, right) = (width(LABEL), width(message));
    let total = left + right;
    let (lx, rx) = (left * 10 / 2, left * 10 + right * 10 / 2);
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="{LABEL}: {message}"><title>{LABEL}: {message}</title><rect width="{left}" height="20" fill="#555"/><rect x="{left}" width="{right}" height="20" fill="{colour}"/><g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="110" transform="scale(.1)"><text x="{lx}" y="140">{LABEL}</text><text x="{rx}" y="140">{message}</text></g></svg>"##
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_has_its_word_and_colour() {
        let ok = svg(Some(RunStatus::Success));
        assert!(
            ok.contains(">success</text>") && ok.contains("#3fb950"),
            "{ok}"
        );
        let bad = svg(Some(RunStatus::Failure));
        assert!(
            bad.contains(">failure</text>") && bad.contains("#e5534b"),
            "{bad}"
        );
        let unknown = svg(None);
        assert!(unknown.contains(">unknown</text>") && unknown.contains("#8b949e"));
        assert!(unknown.starts_with("<svg ") && unknown.ends_with("</svg>"));
    }

    #[test]
    fn a_longer_word_makes_a_wider_badge() {
        let width = |s: &str| {
            s.split("width=\"")
                .nth(1)
                .and_then(|w| w.split('"').next())
                .and_then(|w| w.parse::<u32>().ok())
                .unwrap_or_default()
        };
        assert!(width(&svg(Some(RunStatus::Cancelled))) > width(&svg(Some(RunStatus::Error))));
    }
}
