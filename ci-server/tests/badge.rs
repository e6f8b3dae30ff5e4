//! `GET /badge.svg`: a branch's status as an image, always 200, with short
//! cache headers; the current tip's run wins over the branch's newest run.

use std::sync::Arc;

use ci_engine::{Commit, MemoryStore, Pipeline, Run, RunStore, StepStatus};
use ci_server::api::Api;
use ci_server::api::badge::TipResolver;
use poem::test::TestClient;

const OLD: &str = "aaaa000000000000000000000000000000000001";
const NEW: &str = "bbbb000000000000000000000000000000000002";

/// A run of `id` on `branch` whose three steps all end `status`.
fn run(id: &str, seq: u64, branch: &str, status: StepStatus) -> Run {
    let mut commit = Commit::bare(id);
    commit.branches = vec![branch.to_owned()];
    let mut run = Run::new(commit, seq, &Pipeline::standard());
    for step in &mut run.steps {
        step.status = status;
    }
    run.settle();
    run
}

async fn store() -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    // The older commit failed; the newer one (newest run of main) succeeded.
    store
        .insert_run(&run(OLD, 0, "main", StepStatus::Failure))
        .await
        .expect("insert");
    store
        .insert_run(&run(NEW, 1, "main", StepStatus::Success))
        .await
        .expect("insert");
    store
}

/// Status, content type, cache header and body of `GET path`.
async fn get(api: Api, path: &str) -> (u16, String, String, String) {
    let cli = TestClient::new(ci_server::api::app(api));
    let resp = cli.get(path).send().await;
    let status = resp.0.status().as_u16();
    let header = |name: &str| {
        resp.0
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (content_type, cache) = (header("content-type"), header("cache-control"));
    let body = resp.0.into_body().into_string().await.expect("a body");
    (status, content_type, cache, body)
}

fn tip_is(id: &'static str) -> TipResolver {
    Arc::new(move |branch: &str| (branch == "main").then(|| id.to_owned()))
}

#[tokio::test]
async fn the_newest_run_of_the_branch_without_a_tip_resolver() {
    let api = Api::new(store().await as Arc<dyn RunStore>, None);
    let (status, content_type, cache, body) = get(api, "/badge.svg?branch=main").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "image/svg+xml");
    assert_eq!(cache, "max-age=60, must-revalidate");
    assert!(
        body.starts_with("<svg ") && body.contains(">success</text>"),
        "{body}"
    );
}

#[tokio::test]
async fn the_current_tips_run_wins_over_the_newest_run() {
    // main was reset to the older commit: the badge follows the tip.
    let api = Api::new(store().await as Arc<dyn RunStore>, None).with_branch_tips(tip_is(OLD));
    let (_, _, _, body) = get(api, "/badge.svg?branch=main").await;
    assert!(body.contains(">failure</text>"), "{body}");
}

#[tokio::test]
async fn a_tip_without_a_run_yet_shows_the_branchs_newest_run() {
    let api = Api::new(store().await as Arc<dyn RunStore>, None)
        .with_branch_tips(tip_is("cccc000000000000000000000000000000000003"));
    let (_, _, _, body) = get(api, "/badge.svg?branch=main").await;
    assert!(body.contains(">success</text>"), "{body}");
}

#[tokio::test]
async fn an_unknown_branch_gets_a_grey_unknown_badge_with_200() {
    let api = Api::new(store().await as Arc<dyn RunStore>, None).with_branch_tips(tip_is(NEW));
    let (status, content_type, _, body) = get(api, "/badge.svg?branch=nope").await;
    assert_eq!((status, content_type.as_str()), (200, "image/svg+xml"));
    assert!(
        body.contains(">unknown</text>") && body.contains("#8b949e"),
        "{body}"
    );
    // Markup in a branch name never reaches the image.
    let api = Api::new(store().await as Arc<dyn RunStore>, None);
    let (status, _, _, body) = get(api, "/badge.svg?branch=%3Cscript%3E").await;
    assert_eq!(status, 200);
    assert!(!body.contains("<script"), "{body}");
}
