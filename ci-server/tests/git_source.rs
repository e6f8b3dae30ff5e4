//! `GitSource` against real repositories made with the `git` CLI in temp dirs.
//!
//! Commits are mostly made with plumbing (`commit-tree` + `update-ref`), so a test
//! can build any history and reveal it with one ref update, as a push does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ci_engine::{
    Commit, CommitId, CommitSource, MemoryStore, Pipeline, Run, RunPage, RunQuery, RunStore,
    StoreError,
};
use ci_server::git::{GitSource, GitSourceConfig, GitSourceError, InitialPolicy};
use tempfile::TempDir;

/// How long any single wait may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(20);

/// A repository in a temp dir, driven by the `git` CLI with a fixed identity and
/// a clock that ticks one second per commit.
struct TestRepo {
    _dir: TempDir,
    path: PathBuf,
    /// `--git-dir` for a bare repository.
    bare: bool,
    clock: AtomicI64,
}

impl TestRepo {
    fn new() -> Self {
        Self::init(false)
    }

    fn new_bare() -> Self {
        Self::init(true)
    }

    fn init(bare: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(if bare { "repo.git" } else { "repo" });
        let repo = Self {
            _dir: dir,
            path,
            bare,
            clock: AtomicI64::new(1_700_000_000),
        };
        let mut args = vec!["-c", "init.defaultBranch=main", "init", "-q"];
        if bare {
            args.push("--bare");
        }
        let target = repo.path.to_str().expect("utf-8 temp path").to_owned();
        args.push(&target);
        run_git(repo._dir.path(), &args, 0);
        repo
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn git(&self, args: &[&str]) -> String {
        let time = self.clock.fetch_add(1, Ordering::SeqCst);
        if self.bare {
            let mut all = vec!["--git-dir", self.path.to_str().expect("utf-8 path")];
            all.extend_from_slice(args);
            run_git(&self.path, &all, time)
        } else {
            run_git(&self.path, args, time)
        }
    }

    /// A commit with the given parents (on no branch), returning its id.
    fn commit_on(&self, parents: &[&str], message: &str) -> String {
        let tree = self.git(&["mktree"]);
        let mut args = vec!["commit-tree", tree.as_str(), "-m", message];
        for p in parents {
            args.push("-p");
            args.push(p);
        }
        self.git(&args)
    }

    /// `n` commits in a line on top of `parent`, oldest first.
    fn chain(&self, parent: Option<&str>, n: usize, label: &str) -> Vec<String> {
        let mut ids: Vec<String> = Vec::with_capacity(n);
        for i in 0..n {
            let parents: Vec<&str> = ids
                .last()
                .map(String::as_str)
                .or(parent)
                .into_iter()
                .collect();
            ids.push(self.commit_on(&parents, &format!("{label} {i}")));
        }
        ids
    }

    fn set_branch(&self, branch: &str, id: &str) {
        self.git(&["update-ref", &format!("refs/heads/{branch}"), id]);
    }

    fn delete_branch(&self, branch: &str) {
        self.git(&["update-ref", "-d", &format!("refs/heads/{branch}")]);
    }

    /// A new commit on top of `branch` (created as a root commit when absent).
    fn commit_to(&self, branch: &str, message: &str) -> String {
        let parent = self
            .git_maybe(&[
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/{branch}"),
            ])
            .filter(|s| !s.is_empty());
        let parents: Vec<&str> = parent.as_deref().into_iter().collect();
        let id = self.commit_on(&parents, message);
        self.set_branch(branch, &id);
        id
    }

    /// `git args` fed `input` on stdin.
    fn git_with_input(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let time = self.clock.fetch_add(1, Ordering::SeqCst);
        let mut cmd = git_command(&self.path, time);
        if self.bare {
            cmd.arg("--git-dir").arg(&self.path);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("git runs");
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = input.to_owned();
        let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().expect("git runs");
        feeder
            .join()
            .expect("the feeding thread")
            .expect("git reads its input");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `n` commits in a line on top of `parent`, written at once with `git
    /// fast-import` on the side ref `refs/import/<label>` (not a branch);
    /// oldest first.
    fn import_chain(&self, parent: &str, n: usize, label: &str) -> Vec<String> {
        let side = format!("refs/import/{label}");
        let start = self.clock.fetch_add(n as i64, Ordering::SeqCst);
        let mut stream = String::new();
        for i in 0..n {
            let message = format!("{label} {i}\n");
            let from = if i == 0 {
                format!("from {parent}\n")
            } else {
                String::new()
            };
            stream.push_str(&format!(
                "commit {side}\ncommitter Ada Lovelace <ada@example.com> {} +0000\ndata {}\n{message}{from}\n",
                start + i as i64,
                message.len()
            ));
        }
        self.git_with_input(&["fast-import", "--quiet"], &stream);
        let list = self.git(&["rev-list", "--reverse", &format!("{parent}..{side}")]);
        list.lines().map(str::to_owned).collect()
    }

    fn git_maybe(&self, args: &[&str]) -> Option<String> {
        let mut cmd = git_command(&self.path, 0);
        if self.bare {
            cmd.arg("--git-dir").arg(&self.path);
        }
        let out = cmd.args(args).output().expect("git runs");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

fn git_command(dir: &Path, time: i64) -> Command {
    let date = format!("{time} +0000");
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Ada Lovelace")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Charles Babbage")
        .env("GIT_COMMITTER_EMAIL", "charles@example.com")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .stdin(Stdio::null());
    cmd
}

fn run_git(dir: &Path, args: &[&str], time: i64) -> String {
    let out = git_command(dir, time)
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn config(initial: InitialPolicy) -> GitSourceConfig {
    GitSourceConfig {
        poll_interval: Duration::from_millis(50),
        watch: true,
        initial,
    }
}

async fn open(repo: &TestRepo, store: &Arc<MemoryStore>, initial: InitialPolicy) -> GitSource {
    GitSource::open(repo.path(), store.clone(), config(initial))
        .await
        .expect("repository opens")
}

/// The next batch, or a failed test after [`DEADLINE`].
async fn next(source: &mut GitSource) -> Vec<Commit> {
    tokio::time::timeout(DEADLINE, source.next_commits())
        .await
        .expect("a batch within the deadline")
        .expect("no source error")
        .expect("a git source never finishes")
}

fn ids(batch: &[Commit]) -> Vec<String> {
    batch.iter().map(|c| c.id.to_string()).collect()
}

fn strs(ids: &[String]) -> Vec<&str> {
    ids.iter().map(String::as_str).collect()
}

/// What the engine does with a batch: one run per commit.
async fn record(store: &MemoryStore, batch: &[Commit]) {
    for c in batch {
        let seq = store
            .max_seq()
            .await
            .expect("memory store")
            .map_or(1, |s| s + 1);
        let run = Run::new(c.clone(), seq, &Pipeline::standard());
        assert!(
            store.insert_run(&run).await.expect("memory store"),
            "{} ran twice",
            c.id
        );
    }
}

/// Every commit in the batch comes after those of its parents that are in it.
fn assert_parents_first(batch: &[Commit]) {
    for (i, c) in batch.iter().enumerate() {
        for p in &c.parents {
            if let Some(j) = batch.iter().position(|o| &o.id == p) {
                assert!(j < i, "{} came before its parent {}", c.id, p);
            }
        }
    }
}

// ---------------------------------------------------------------- finding commits

#[tokio::test]
async fn an_empty_repository_opens_and_its_first_commit_comes_out_with_all_fields() {
    let repo = TestRepo::new();
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    let id = repo.commit_on(&[], "first line\n\nthe body");
    repo.set_branch("main", &id);
    let batch = next(&mut source).await;
    assert_eq!(batch.len(), 1);
    let c = &batch[0];
    assert_eq!(c.id.as_str(), id);
    assert_eq!(c.id.as_str().len(), 40);
    assert_eq!(c.branches, vec!["main".to_owned()]);
    assert!(c.parents.is_empty());
    assert_eq!(c.summary, "first line");
    assert_eq!(c.author, "Ada Lovelace <ada@example.com>");
    assert_eq!(
        c.time, 1_700_000_001,
        "the commit time of the commit-tree call"
    );
    let child = repo.commit_to("main", "second");
    let batch = next(&mut source).await;
    assert_eq!(ids(&batch), vec![child]);
    assert_eq!(batch[0].parents, vec![c.id.clone()]);
}

#[tokio::test]
async fn twenty_commits_revealed_by_one_ref_update_all_come_out_parents_first() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    assert_eq!(ids(&next(&mut source).await), vec![base.clone()]);

    let burst = repo.chain(Some(&base), 20, "burst");
    repo.set_branch("main", burst.last().expect("20 commits"));
    let batch = next(&mut source).await;
    assert_eq!(
        ids(&batch),
        burst,
        "all 20, oldest first, base not repeated"
    );
    assert!(batch.iter().all(|c| c.branches == ["main"]));
}

#[tokio::test]
async fn a_burst_larger_than_a_batch_comes_out_in_consecutive_batches_and_resumes() {
    const BURST: usize = 2_500;
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut first = open(&repo, &store, InitialPolicy::All).await;
    record(&store, &next(&mut first).await).await;
    let burst = repo.import_chain(&base, BURST, "burst");
    assert_eq!(burst.len(), BURST);
    repo.set_branch("main", burst.last().expect("a burst"));

    // The first batch is bounded and starts at the oldest commit.
    let batch = next(&mut first).await;
    assert_eq!(batch.len(), ci_server::git::MAX_BATCH);
    assert_eq!(ids(&batch), strs(&burst[..batch.len()]));
    assert!(batch.iter().all(|c| c.branches == ["main"]));
    record(&store, &batch).await;
    // The next batch goes on where it stopped, though nothing else moved.
    let second = next(&mut first).await;
    let end = batch.len() + second.len();
    assert_eq!(ids(&second), strs(&burst[batch.len()..end]));
    drop(first); // died before the engine recorded the second batch

    let mut again = open(&repo, &store, InitialPolicy::All).await;
    let mut rest = Vec::new();
    for _ in 0..BURST {
        if rest.len() >= BURST - batch.len() {
            break;
        }
        let b = next(&mut again).await;
        record(&store, &b).await;
        rest.extend(ids(&b));
    }
    assert_eq!(
        rest,
        strs(&burst[batch.len()..]),
        "the rest, once each, in order"
    );
    let after = repo.commit_to("main", "after");
    assert_eq!(ids(&next(&mut again).await), vec![after]);
}

/// After a read long enough to open the repository again (to let go of the
/// packs it mapped), the source goes on: the whole burst came out once, in
/// order, and the next commit, written after the new handle was opened and
/// into a pack it never saw, comes out too.
#[tokio::test]
async fn the_source_goes_on_after_opening_the_repository_again() {
    let burst_len = ci_server::git::REOPEN_AFTER + 1;
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    record(&store, &next(&mut source).await).await;
    let burst = repo.import_chain(&base, burst_len, "burst");
    repo.set_branch("main", burst.last().expect("a burst"));
    let mut out = Vec::new();
    for _ in 0..burst_len {
        if out.len() >= burst_len {
            break;
        }
        let b = next(&mut source).await;
        record(&store, &b).await;
        out.extend(ids(&b));
    }
    assert_eq!(out, strs(&burst), "the burst, once each, in order");
    let more = repo.import_chain(burst.last().expect("a burst"), 3, "more");
    repo.set_branch("main", more.last().expect("more"));
    assert_eq!(ids(&next(&mut source).await), strs(&more));
}

#[tokio::test]
async fn a_branch_created_or_reset_at_an_old_commit_hands_out_nothing() {
    let repo = TestRepo::new();
    let line = repo.chain(None, 30, "line");
    repo.set_branch("main", &line[29]);
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    assert_eq!(next(&mut source).await.len(), 30);
    // Neither an old commit nor a reset back is new; only the commits on top are.
    repo.set_branch("old", &line[3]);
    repo.set_branch("main", &line[20]);
    let on_old = repo.commit_to("old", "on old");
    let on_main = repo.commit_to("main", "on main");
    let mut got = ids(&next(&mut source).await);
    got.sort();
    let mut want = vec![on_old, on_main];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_skewed_clock_never_runs_a_commit_twice() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    // A commit dated a day ahead, then its child dated back to normal.
    let now = repo.clock.load(Ordering::SeqCst);
    repo.clock.store(now + 86_400, Ordering::SeqCst);
    let ahead = repo.commit_to("main", "clock a day ahead");
    repo.clock.store(now + 10, Ordering::SeqCst);
    let behind = repo.commit_to("main", "clock right again");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    let batch = next(&mut source).await;
    assert_eq!(ids(&batch), vec![base, ahead.clone(), behind]);
    record(&store, &batch).await;
    // A branch at the skewed commit: the walk may take it for new, but it has
    // a run, so nothing comes out; then only the commit on top.
    repo.set_branch("at-ahead", &ahead);
    let on_top = repo.commit_to("at-ahead", "on top");
    assert_eq!(ids(&next(&mut source).await), vec![on_top]);
}

#[tokio::test]
async fn a_scan_rewrites_only_the_state_of_what_changed() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let mut transaction = String::from("start\n");
    for i in 0..100 {
        let c = repo.commit_on(&[&base], &format!("branch {i}"));
        transaction.push_str(&format!("create refs/heads/b{i:03} {c}\n"));
    }
    transaction.push_str("commit\n");
    repo.git_with_input(&["update-ref", "--stdin"], &transaction);
    let store = Arc::new(CountingStore::default());
    let mut source = GitSource::open(repo.path(), store.clone(), config(InitialPolicy::All))
        .await
        .expect("opens");
    let first = next(&mut source).await;
    assert_eq!(first.len(), 101);
    record(&store.inner, &first).await;
    let whole: usize = store.inner_state_bytes().await;

    let c = repo.commit_to("b042", "one more");
    store.reset();
    assert_eq!(ids(&next(&mut source).await), vec![c]);
    let (writes, bytes) = store.counts();
    assert!(writes <= 3, "{writes} writes for one new commit");
    assert!(
        bytes * 10 < whole,
        "{bytes} bytes written of a state of {whole} bytes"
    );
}

#[tokio::test]
async fn a_fast_forward_over_many_commits_comes_out_whole() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    next(&mut source).await;
    // Work happens on a topic branch that is never pushed, then main jumps to it.
    let topic = repo.chain(Some(&base), 7, "topic");
    repo.git(&[
        "update-ref",
        "refs/heads/main",
        topic.last().expect("7"),
        &base,
    ]);
    assert_eq!(ids(&next(&mut source).await), topic);
}

#[tokio::test]
async fn commits_on_a_second_branch_come_out_with_that_branch() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    next(&mut source).await;

    repo.set_branch("feature", &base);
    let f = repo.chain(Some(&base), 2, "feature");
    repo.set_branch("feature", &f[1]);
    let batch = next(&mut source).await;
    assert_eq!(ids(&batch), f, "only the feature commits; base not again");
    assert!(batch.iter().all(|c| c.branches == ["feature"]), "{batch:?}");
}

#[tokio::test]
async fn a_branch_pushed_late_comes_out_although_its_commits_are_older_than_known_tips() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    record(&store, &next(&mut source).await).await;
    // Written last week, pushed today: older than everything handed out since.
    let topic = repo.chain(Some(&base), 2, "old work");
    let mainline = repo.chain(Some(&base), 3, "main");
    repo.set_branch("main", &mainline[2]);
    let batch = next(&mut source).await;
    assert_eq!(ids(&batch), mainline);
    record(&store, &batch).await;
    repo.set_branch("topic", &topic[1]);
    assert_eq!(ids(&next(&mut source).await), topic);
}

#[tokio::test]
async fn a_merge_brings_both_sides_and_comes_last() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    next(&mut source).await;

    let side = repo.chain(Some(&base), 3, "side");
    let mainline = repo.chain(Some(&base), 2, "main");
    let merge = repo.commit_on(&[&mainline[1], &side[2]], "merge");
    repo.set_branch("main", &merge);
    let batch = next(&mut source).await;
    assert_eq!(batch.len(), 6, "{:?}", ids(&batch));
    assert_eq!(ids(&batch).last(), Some(&merge));
    assert_parents_first(&batch);
    let mut got = ids(&batch);
    got.sort();
    let mut want: Vec<String> = side.iter().chain(&mainline).cloned().collect();
    want.push(merge.clone());
    want.sort();
    assert_eq!(got, want);
    assert_eq!(batch.last().expect("6").parents.len(), 2);
}

#[tokio::test]
async fn a_commit_on_two_branches_comes_out_once_naming_both() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    next(&mut source).await;

    let shared = repo.commit_on(&[&base], "shared");
    repo.set_branch("a", &shared);
    repo.set_branch("b", &shared);
    let batch = next(&mut source).await;
    assert_eq!(ids(&batch), vec![shared.clone()]);
    assert_eq!(batch[0].branches, vec!["a".to_owned(), "b".to_owned()]);

    // A later branch at the same commit, then a commit on it: only the new one.
    repo.set_branch("c", &shared);
    let on_c = repo.commit_to("c", "on c");
    assert_eq!(ids(&next(&mut source).await), vec![on_c]);
}

#[tokio::test]
async fn a_branch_and_its_parent_branch_moving_together_share_commits_once() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    next(&mut source).await;

    let line = repo.chain(Some(&base), 4, "line");
    repo.set_branch("short", &line[1]);
    repo.set_branch("main", &line[3]);
    let batch = next(&mut source).await;
    assert_eq!(ids(&batch), line);
    assert_eq!(
        batch[0].branches,
        vec!["main".to_owned(), "short".to_owned()]
    );
    assert_eq!(batch[3].branches, vec!["main".to_owned()]);
}

#[tokio::test]
async fn a_force_push_runs_only_the_new_commits_and_old_tips_stay_known() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let old = repo.chain(Some(&base), 2, "old");
    repo.set_branch("main", &old[1]);
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    let first = next(&mut source).await;
    record(&store, &first).await;

    let rebased = repo.chain(Some(&base), 2, "rebased");
    repo.set_branch("main", &rebased[1]);
    let batch = next(&mut source).await;
    assert_eq!(ids(&batch), rebased);
    record(&store, &batch).await;
    for id in &old {
        assert!(store.get_run(id).await.is_ok(), "old run {id} left alone");
    }

    // Force back to the old history and build on it: only the new commit.
    repo.set_branch("main", &old[1]);
    let on_old = repo.commit_to("main", "on old");
    assert_eq!(ids(&next(&mut source).await), vec![on_old]);
}

#[tokio::test]
async fn deleting_a_branch_is_harmless() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    next(&mut source).await;
    let f = repo.commit_to("feature", "feature work");
    // `feature` started as a root commit here; what matters is it is handed out once.
    assert_eq!(ids(&next(&mut source).await), vec![f.clone()]);

    repo.delete_branch("feature");
    let on_main = repo.commit_to("main", "after delete");
    assert_eq!(ids(&next(&mut source).await), vec![on_main]);

    // Bringing the branch back at the same commit hands out nothing again.
    repo.set_branch("feature", &f);
    let more = repo.commit_to("feature", "more");
    assert_eq!(ids(&next(&mut source).await), vec![more]);
    let _ = base;
}

#[tokio::test]
async fn packed_refs_are_read() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    next(&mut source).await;
    let packed = repo.commit_on(&[&base], "packed");
    repo.set_branch("packed", &packed);
    repo.git(&["pack-refs", "--all", "--prune"]);
    assert!(
        !repo.path().join(".git/refs/heads/packed").exists(),
        "the ref is only packed"
    );
    assert_eq!(ids(&next(&mut source).await), vec![packed]);
}

#[tokio::test]
async fn packed_branches_moved_shadowed_deleted_and_repacked_are_followed() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    for b in ["b1", "b2", "b3"] {
        repo.set_branch(b, &base);
    }
    repo.git(&["pack-refs", "--all", "--prune"]);
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    assert_eq!(ids(&next(&mut source).await), vec![base.clone()]);

    // A loose ref shadows the packed one.
    let c1 = repo.commit_to("b1", "on b1");
    assert_eq!(ids(&next(&mut source).await), vec![c1.clone()]);
    // The loose ref goes away by hand: b1 is back at its packed value (known).
    std::fs::remove_file(repo.path().join(".git/refs/heads/b1")).expect("remove the loose ref");
    let c_main = repo.commit_to("main", "on main");
    assert_eq!(ids(&next(&mut source).await), vec![c_main]);
    let again = repo.commit_to("b1", "on b1 again");
    assert_eq!(ids(&next(&mut source).await), vec![again.clone()]);
    // A packed branch deleted, the refs packed again, then commits on the rest.
    repo.delete_branch("b2");
    repo.git(&["pack-refs", "--all", "--prune"]);
    let c3 = repo.commit_to("b3", "on b3");
    assert_eq!(ids(&next(&mut source).await), vec![c3]);
    repo.set_branch("b2", &base);
    let c2 = repo.commit_to("b2", "b2 again");
    let batch = next(&mut source).await;
    assert_eq!(ids(&batch), vec![c2]);
    assert_eq!(batch[0].branches, vec!["b2".to_owned()]);
    let _ = c1;
}

#[tokio::test]
async fn commits_are_found_after_gc_packs_the_objects() {
    let repo = TestRepo::new();
    repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    next(&mut source).await;
    let a = repo.commit_to("main", "a");
    repo.git(&["gc", "-q"]);
    let b = repo.commit_to("main", "b");
    let batch = next(&mut source).await;
    assert_eq!(ids(&batch), vec![a, b]);
}

#[tokio::test]
async fn a_bare_repository_works_and_git_dir_is_its_path() {
    let repo = TestRepo::new_bare();
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    let canonical = std::fs::canonicalize(repo.path()).expect("repo exists");
    assert_eq!(source.git_dir(), canonical);
    let c = repo.commit_to("main", "bare");
    assert_eq!(ids(&next(&mut source).await), vec![c]);
}

#[tokio::test]
async fn git_dir_of_a_work_tree_is_its_dot_git() {
    let repo = TestRepo::new();
    let store = Arc::new(MemoryStore::new());
    let source = open(&repo, &store, InitialPolicy::All).await;
    let canonical = std::fs::canonicalize(repo.path().join(".git")).expect("repo exists");
    assert_eq!(source.git_dir(), canonical);
}

#[tokio::test]
async fn known_tips_stay_few_as_history_grows() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    record(&store, &next(&mut source).await).await;
    repo.set_branch("feature", &base);
    for round in 0..10 {
        let branch = if round % 2 == 0 { "main" } else { "feature" };
        repo.commit_to(branch, &format!("round {round}"));
        record(&store, &next(&mut source).await).await;
    }
    // Merge feature into main and leave the branch in place, as people do.
    let main_tip = repo.git(&["rev-parse", "refs/heads/main"]);
    let feature_tip = repo.git(&["rev-parse", "refs/heads/feature"]);
    let merge = repo.commit_on(&[&main_tip, &feature_tip], "merge");
    repo.set_branch("main", &merge);
    record(&store, &next(&mut source).await).await;
    let last = repo.commit_to("main", "last");
    assert_eq!(ids(&next(&mut source).await), vec![last]);

    let tips = saved_tips(&store).await;
    // The newest tip and the one it supersedes (pruned once the batch is
    // recorded); without pruning there would be one per batch.
    assert!(tips.len() <= 2, "{} known tips: {tips:?}", tips.len());
}

#[tokio::test]
async fn the_commits_kept_between_scans_follow_the_newest_not_the_history() {
    // Five branches, a commit on one of them at a time, an hour apart. Painting
    // goes a few minutes below a new commit, so it needs none of the older
    // ones: what the source keeps between scans stays a handful however many
    // commits went by (it used to keep every commit met, up to 50,000, which a
    // long-running server saw as a steady climb).
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let branches = ["main", "b1", "b2", "b3", "b4"];
    for b in &branches[1..] {
        repo.set_branch(b, &base);
    }
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    record(&store, &next(&mut source).await).await;
    for (i, branch) in branches.iter().cycle().take(100).enumerate() {
        repo.clock.fetch_add(3_600, Ordering::SeqCst);
        let c = repo.commit_to(branch, &format!("commit {i}"));
        let batch = next(&mut source).await;
        assert_eq!(ids(&batch), vec![c]);
        record(&store, &batch).await;
    }
    let kept = source.cached_commits();
    assert!(kept <= 10, "{kept} commits kept after 100 scans");
}

/// The known tips saved in the store: the shards `git-source/tips/00` to `ff`.
async fn saved_tips(store: &MemoryStore) -> Vec<serde_json::Value> {
    let mut tips = Vec::new();
    for shard in 0..256 {
        let key = format!("git-source/tips/{shard:02x}");
        if let Some(json) = store.load_state(&key).await.expect("memory store") {
            let shard: Vec<serde_json::Value> = serde_json::from_str(&json).expect("JSON");
            tips.extend(shard);
        }
    }
    tips
}

// ---------------------------------------------------------------- first start

/// main: c0 - c1 - c2; feature: c1 - f0.
fn history() -> (TestRepo, Vec<String>, String) {
    let repo = TestRepo::new();
    let main = repo.chain(None, 3, "main");
    repo.set_branch("main", &main[2]);
    let f = repo.commit_on(&[&main[1]], "feature");
    repo.set_branch("feature", &f);
    (repo, main, f)
}

#[tokio::test]
async fn initial_tips_builds_each_branch_tip_then_only_new_commits() {
    let (repo, main, f) = history();
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::Tips).await;
    let batch = next(&mut source).await;
    let mut got = ids(&batch);
    got.sort();
    let mut want = vec![main[2].clone(), f.clone()];
    want.sort();
    assert_eq!(got, want, "the tips only");
    let tip = batch
        .iter()
        .find(|c| c.id.as_str() == f)
        .expect("feature tip");
    assert_eq!(tip.branches, vec!["feature".to_owned()]);
    record(&store, &batch).await;

    let new = repo.commit_to("main", "new");
    assert_eq!(ids(&next(&mut source).await), vec![new]);
}

#[tokio::test]
async fn initial_tips_with_a_tip_behind_another_hands_both_out_parent_first() {
    let repo = TestRepo::new();
    let main = repo.chain(None, 5, "main");
    repo.set_branch("main", &main[4]);
    repo.set_branch("merged", &main[3]);
    repo.set_branch("old", &main[0]);
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::Tips).await;
    let batch = next(&mut source).await;
    assert_eq!(
        ids(&batch),
        vec![main[0].clone(), main[3].clone(), main[4].clone()]
    );
    record(&store, &batch).await;
    let new = repo.commit_to("old", "on old");
    let newer = repo.commit_to("main", "on main");
    let batch = next(&mut source).await;
    let mut got = ids(&batch);
    got.sort();
    let mut want = vec![new, newer];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn initial_all_builds_every_reachable_commit_parents_first() {
    let (repo, main, f) = history();
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    let batch = next(&mut source).await;
    assert_eq!(batch.len(), 4);
    assert_parents_first(&batch);
    assert_eq!(&ids(&batch)[..2], &main[..2]);
    let c1 = &batch[1];
    assert_eq!(c1.branches, vec!["feature".to_owned(), "main".to_owned()]);
    let fc = batch
        .iter()
        .find(|c| c.id.as_str() == f)
        .expect("feature tip");
    assert_eq!(fc.branches, vec!["feature".to_owned()]);
}

#[tokio::test]
async fn initial_none_builds_only_commits_made_afterwards() {
    let (repo, main, _) = history();
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::None).await;
    let new = repo.commit_to("main", "new");
    let batch = next(&mut source).await;
    assert_eq!(ids(&batch), vec![new]);
    assert_eq!(batch[0].parents[0].as_str(), main[2]);
    assert!(store.all_runs().is_empty());
}

#[tokio::test]
async fn initial_none_baseline_survives_a_restart() {
    let (repo, _, _) = history();
    let store = Arc::new(MemoryStore::new());
    let mut first = open(&repo, &store, InitialPolicy::None).await;
    let new = repo.commit_to("main", "new");
    let batch = next(&mut first).await;
    assert_eq!(ids(&batch), vec![new]);
    record(&store, &batch).await;
    drop(first);

    // The policy is ignored now that there is state: nothing old comes out.
    let mut second = open(&repo, &store, InitialPolicy::All).await;
    let later = repo.commit_to("feature", "later");
    assert_eq!(ids(&next(&mut second).await), vec![later]);
}

// ---------------------------------------------------------------- restarts

#[tokio::test]
async fn a_restart_hands_out_commits_made_while_down_and_nothing_twice() {
    let repo = TestRepo::new();
    let before = repo.chain(None, 2, "before");
    repo.set_branch("main", &before[1]);
    let store = Arc::new(MemoryStore::new());
    let mut first = open(&repo, &store, InitialPolicy::All).await;
    let batch = next(&mut first).await;
    assert_eq!(ids(&batch), before);
    record(&store, &batch).await;
    drop(first);

    let down = repo.chain(Some(&before[1]), 2, "while down");
    repo.set_branch("main", &down[1]);
    let side = repo.commit_on(&[&before[0]], "side while down");
    repo.set_branch("side", &side);

    let mut second = open(&repo, &store, InitialPolicy::All).await;
    let batch = next(&mut second).await;
    let mut got = ids(&batch);
    got.sort();
    let mut want = vec![down[0].clone(), down[1].clone(), side.clone()];
    want.sort();
    assert_eq!(got, want);
    assert_parents_first(&batch);
    record(&store, &batch).await;

    let after = repo.commit_to("main", "after");
    assert_eq!(ids(&next(&mut second).await), vec![after]);
}

#[tokio::test]
async fn a_batch_handed_out_but_never_recorded_comes_out_again_after_a_restart() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut first = open(&repo, &store, InitialPolicy::All).await;
    record(&store, &next(&mut first).await).await;
    let lost = repo.chain(Some(&base), 3, "lost");
    repo.set_branch("main", &lost[2]);
    assert_eq!(ids(&next(&mut first).await), lost);
    drop(first); // died before the engine recorded the batch

    let mut second = open(&repo, &store, InitialPolicy::All).await;
    let again = next(&mut second).await;
    assert_eq!(ids(&again), lost, "the unrecorded batch, base not repeated");
    record(&store, &again).await;
    drop(second);

    let mut third = open(&repo, &store, InitialPolicy::All).await;
    let new = repo.commit_to("main", "new");
    assert_eq!(ids(&next(&mut third).await), vec![new]);
}

#[tokio::test]
async fn a_partly_recorded_batch_resumes_with_the_rest() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut first = open(&repo, &store, InitialPolicy::All).await;
    record(&store, &next(&mut first).await).await;
    let line = repo.chain(Some(&base), 4, "line");
    repo.set_branch("main", &line[3]);
    let batch = next(&mut first).await;
    record(&store, &batch[..2]).await;
    drop(first);

    let mut second = open(&repo, &store, InitialPolicy::All).await;
    assert_eq!(ids(&next(&mut second).await), strs(&line[2..]));
}

/// The state format version 1 saved: everything under `git-source`.
fn v1_state(
    tips: &[(&str, &[&str], bool)],
    prunes: &[(&[&str], &[&str])],
    seen: &[&str],
) -> String {
    let tips: Vec<serde_json::Value> = tips
        .iter()
        .map(|(id, branches, baseline)| {
            serde_json::json!({"id": id, "branches": branches, "baseline": baseline})
        })
        .collect();
    let prunes: Vec<serde_json::Value> = prunes
        .iter()
        .map(|(after, remove)| serde_json::json!({"after": after, "remove": remove}))
        .collect();
    serde_json::json!({"version": 1, "tips": tips, "prunes": prunes, "seen": seen}).to_string()
}

#[tokio::test]
async fn a_server_upgraded_in_place_resumes_from_the_old_state_without_rerunning() {
    // As version 1 left it after `--initial all` built main c0-c1-c2 and
    // feature c1-f0, all recorded.
    let (repo, main, f) = history();
    let store = Arc::new(MemoryStore::new());
    let old: Vec<Commit> = {
        let mut scratch = open(&repo, &Arc::new(MemoryStore::new()), InitialPolicy::All).await;
        next(&mut scratch).await
    };
    record(&store, &old).await;
    let state = v1_state(
        &[(&main[2], &["main"], false), (&f, &["feature"], false)],
        &[],
        &[&main[2], &f],
    );
    store
        .save_state("git-source", &state)
        .await
        .expect("memory store");

    let mut source = open(&repo, &store, InitialPolicy::All).await;
    let on_feature = repo.commit_to("feature", "on feature");
    let batch = next(&mut source).await;
    assert_eq!(ids(&batch), vec![on_feature], "nothing old again");
    record(&store, &batch).await;
    let root = store
        .load_state("git-source")
        .await
        .expect("memory store")
        .expect("state");
    assert!(
        root.contains("\"version\":2"),
        "rewritten as version 2: {root}"
    );
    drop(source);

    // And the rewritten state resumes too.
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    let on_main = repo.commit_to("main", "on main");
    assert_eq!(ids(&next(&mut source).await), vec![on_main]);
}

#[tokio::test]
async fn an_upgrade_keeps_the_baseline_of_the_first_start() {
    // As version 1 left it after `--initial tips`: c1 the baseline, the tips
    // recorded, the prune of c1 waiting for them.
    let (repo, main, f) = history();
    let store = Arc::new(MemoryStore::new());
    let tips: Vec<Commit> = {
        let mut scratch = open(&repo, &Arc::new(MemoryStore::new()), InitialPolicy::Tips).await;
        next(&mut scratch).await
    };
    record(&store, &tips).await;
    let state = v1_state(
        &[
            (&main[1], &[], true),
            (&main[2], &["main"], false),
            (&f, &["feature"], false),
        ],
        &[(&[&main[2], &f], &[&main[1]])],
        &[&main[2], &f],
    );
    store
        .save_state("git-source", &state)
        .await
        .expect("memory store");

    let mut source = open(&repo, &store, InitialPolicy::All).await;
    repo.set_branch("old", &main[0]);
    let on_old = repo.commit_to("old", "on old");
    let batch = next(&mut source).await;
    assert_eq!(ids(&batch), vec![on_old]);
    record(&store, &batch).await;
    for old in &main[..2] {
        assert!(
            store.get_run(old).await.is_err(),
            "baseline commit {old} never runs"
        );
    }
}

#[tokio::test]
async fn an_upgrade_resumes_a_batch_handed_out_but_never_recorded() {
    // As version 1 left it after `--initial tips`, then a commit on main
    // handed out but never recorded.
    let (repo, main, f) = history();
    let store = Arc::new(MemoryStore::new());
    let tips: Vec<Commit> = {
        let mut scratch = open(&repo, &Arc::new(MemoryStore::new()), InitialPolicy::Tips).await;
        next(&mut scratch).await
    };
    record(&store, &tips).await;
    let lost = repo.commit_to("main", "lost");
    let state = v1_state(
        &[
            (&main[2], &["main"], false),
            (&f, &["feature"], false),
            (&lost, &["main"], false),
        ],
        &[(&[&lost], &[&main[2]])],
        &[&lost, &f],
    );
    store
        .save_state("git-source", &state)
        .await
        .expect("memory store");

    let mut source = open(&repo, &store, InitialPolicy::All).await;
    let batch = next(&mut source).await;
    assert_eq!(
        ids(&batch),
        vec![lost],
        "the unrecorded commit, nothing older"
    );
    record(&store, &batch).await;
    let on_feature = repo.commit_to("feature", "on feature");
    assert_eq!(ids(&next(&mut source).await), vec![on_feature]);
}

#[tokio::test]
async fn an_unrecorded_batch_on_a_branch_deleted_while_down_still_comes_out() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut first = open(&repo, &store, InitialPolicy::All).await;
    record(&store, &next(&mut first).await).await;
    let topic = repo.chain(Some(&base), 2, "topic");
    repo.set_branch("topic", &topic[1]);
    assert_eq!(ids(&next(&mut first).await), topic);
    drop(first);
    repo.delete_branch("topic");

    let mut second = open(&repo, &store, InitialPolicy::All).await;
    let batch = next(&mut second).await;
    assert_eq!(ids(&batch), topic);
    assert!(batch.iter().all(|c| c.branches == ["topic"]), "{batch:?}");
}

#[tokio::test]
async fn an_unrecorded_first_tips_batch_comes_out_again_without_the_history() {
    let (repo, main, f) = history();
    let store = Arc::new(MemoryStore::new());
    let mut first = open(&repo, &store, InitialPolicy::Tips).await;
    let mut batch = ids(&next(&mut first).await);
    batch.sort();
    drop(first);

    let mut second = open(&repo, &store, InitialPolicy::Tips).await;
    let mut again = ids(&next(&mut second).await);
    again.sort();
    assert_eq!(again, batch);
    let mut want = vec![main[2].clone(), f];
    want.sort();
    assert_eq!(again, want);
}

#[tokio::test]
async fn unreadable_saved_state_is_refused_with_a_clear_error() {
    let repo = TestRepo::new();
    let store = Arc::new(MemoryStore::new());
    store
        .save_state("git-source", "{not json")
        .await
        .expect("memory store");
    let err = GitSource::open(repo.path(), store.clone(), config(InitialPolicy::All))
        .await
        .expect_err("bad state refused");
    assert!(matches!(err, GitSourceError::BadState { .. }), "{err:?}");
    assert!(err.to_string().contains("git-source"), "{err}");
    assert_eq!(
        store
            .load_state("git-source")
            .await
            .expect("memory store")
            .as_deref(),
        Some("{not json"),
        "the bad state is left for a person to look at"
    );
}

// ---------------------------------------------------------------- transient errors

/// A [`MemoryStore`] whose `has_run` can be made to fail.
struct FlakyStore {
    inner: MemoryStore,
    failing: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl RunStore for FlakyStore {
    async fn insert_run(&self, run: &Run) -> Result<bool, StoreError> {
        self.inner.insert_run(run).await
    }
    async fn update_run(&self, run: &Run) -> Result<(), StoreError> {
        self.inner.update_run(run).await
    }
    async fn get_run(&self, id: &str) -> Result<Run, StoreError> {
        self.inner.get_run(id).await
    }
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        self.inner.list_runs(query).await
    }
    async fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        self.inner.unfinished_runs().await
    }
    async fn has_run(&self, id: &CommitId) -> Result<bool, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("disk on fire".into()));
        }
        self.inner.has_run(id).await
    }
    async fn max_seq(&self) -> Result<Option<u64>, StoreError> {
        self.inner.max_seq().await
    }
    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.load_state(key).await
    }
    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.save_state(key, value).await
    }
}

/// A [`MemoryStore`] that counts the state it is asked to save.
#[derive(Default)]
struct CountingStore {
    inner: MemoryStore,
    writes: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicUsize,
    keys: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl CountingStore {
    fn reset(&self) {
        self.writes.store(0, Ordering::SeqCst);
        self.bytes.store(0, Ordering::SeqCst);
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.writes.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }

    /// The size of every state value saved so far.
    async fn inner_state_bytes(&self) -> usize {
        let keys = self.keys.lock().expect("keys").clone();
        let mut total = 0;
        for key in keys {
            total += self
                .inner
                .load_state(&key)
                .await
                .expect("memory store")
                .map_or(0, |v| v.len());
        }
        total
    }
}

#[async_trait::async_trait]
impl RunStore for CountingStore {
    async fn insert_run(&self, run: &Run) -> Result<bool, StoreError> {
        self.inner.insert_run(run).await
    }
    async fn update_run(&self, run: &Run) -> Result<(), StoreError> {
        self.inner.update_run(run).await
    }
    async fn get_run(&self, id: &str) -> Result<Run, StoreError> {
        self.inner.get_run(id).await
    }
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        self.inner.list_runs(query).await
    }
    async fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        self.inner.unfinished_runs().await
    }
    async fn has_run(&self, id: &CommitId) -> Result<bool, StoreError> {
        self.inner.has_run(id).await
    }
    async fn max_seq(&self) -> Result<Option<u64>, StoreError> {
        self.inner.max_seq().await
    }
    async fn load_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.load_state(key).await
    }
    async fn save_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(value.len(), Ordering::SeqCst);
        self.keys.lock().expect("keys").insert(key.to_owned());
        self.inner.save_state(key, value).await
    }
}

#[tokio::test]
async fn a_failing_store_is_a_source_error_and_the_next_call_loses_nothing() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(FlakyStore {
        inner: MemoryStore::new(),
        failing: false.into(),
    });
    let mut source = GitSource::open(repo.path(), store.clone(), config(InitialPolicy::All))
        .await
        .expect("opens");
    assert_eq!(ids(&next(&mut source).await), vec![base.clone()]);
    let new = repo.commit_to("main", "new");
    store.failing.store(true, Ordering::SeqCst);
    let err = tokio::time::timeout(DEADLINE, source.next_commits())
        .await
        .expect("an answer within the deadline")
        .expect_err("the store fails");
    assert!(format!("{err:?}").contains("disk on fire"), "{err:?}");
    store.failing.store(false, Ordering::SeqCst);
    assert_eq!(ids(&next(&mut source).await), vec![new]);
}

#[tokio::test]
async fn an_unreadable_commit_is_a_source_error_until_it_is_readable_again() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    assert_eq!(ids(&next(&mut source).await), vec![base.clone()]);

    let parent = repo.commit_on(&[&base], "parent");
    let tip = repo.commit_on(&[&parent], "tip");
    // git refuses to point a ref at a missing object, so break it afterwards. The
    // source does not run between calls, so it cannot look in between.
    repo.set_branch("main", &tip);
    let object = repo
        .path()
        .join(".git/objects")
        .join(&parent[..2])
        .join(&parent[2..]);
    let aside = repo.path().join("aside");
    std::fs::rename(&object, &aside).expect("move the loose object away");
    let err = tokio::time::timeout(DEADLINE, source.next_commits())
        .await
        .expect("an answer within the deadline")
        .expect_err("the parent cannot be read");
    assert!(err.to_string().contains("scanning"), "{err}");

    std::fs::rename(&aside, &object).expect("put it back");
    assert_eq!(ids(&next(&mut source).await), vec![parent, tip]);
}

#[tokio::test]
async fn branches_at_a_tree_or_a_missing_object_are_skipped_and_block_nothing() {
    let repo = TestRepo::new();
    repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let mut source = open(&repo, &store, InitialPolicy::All).await;
    next(&mut source).await;
    // git refuses to write these refs, so write them by hand, as a broken tool might.
    let heads = repo.path().join(".git/refs/heads");
    let tree = repo.git(&["mktree"]);
    std::fs::write(heads.join("a-tree"), format!("{tree}\n")).expect("write ref");
    let missing = "0123456789abcdef0123456789abcdef01234567";
    std::fs::write(heads.join("dangling"), format!("{missing}\n")).expect("write ref");
    let c = repo.commit_to("main", "after the broken branches");
    assert_eq!(ids(&next(&mut source).await), vec![c]);
}

// ---------------------------------------------------------------- bad paths

#[tokio::test]
async fn a_missing_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("no-such-repo");
    let store = Arc::new(MemoryStore::new());
    let err = GitSource::open(&path, store, GitSourceConfig::default())
        .await
        .expect_err("missing path");
    assert!(matches!(err, GitSourceError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-repo"), "{err}");
}

#[tokio::test]
async fn a_directory_that_is_not_a_repository_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("plain");
    std::fs::create_dir(&path).expect("mkdir");
    let store = Arc::new(MemoryStore::new());
    let err = GitSource::open(&path, store, GitSourceConfig::default())
        .await
        .expect_err("not a repository");
    assert!(
        matches!(err, GitSourceError::NotARepository { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("plain"), "{err}");
}

#[tokio::test]
async fn a_file_is_not_a_repository() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("file.txt");
    std::fs::write(&path, "hello").expect("write");
    let store = Arc::new(MemoryStore::new());
    let err = GitSource::open(&path, store, GitSourceConfig::default())
        .await
        .expect_err("a file");
    assert!(
        matches!(err, GitSourceError::NotARepository { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("file.txt"), "{err}");
}

// ---------------------------------------------------------------- waking up

#[tokio::test]
async fn a_notification_wakes_the_source_without_polling() {
    let repo = TestRepo::new();
    repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let only_notify = GitSourceConfig {
        poll_interval: Duration::from_secs(24 * 3600),
        watch: true,
        initial: InitialPolicy::All,
    };
    let mut source = GitSource::open(repo.path(), store, only_notify)
        .await
        .expect("opens");
    next(&mut source).await;
    // From here on only a notification can start a scan.
    let c = repo.commit_to("main", "noticed");
    assert_eq!(ids(&next(&mut source).await), vec![c]);
    let d = repo.commit_to("other", "noticed too");
    assert_eq!(ids(&next(&mut source).await), vec![d]);
}

#[tokio::test]
async fn a_push_of_many_branches_comes_out_as_one_batch() {
    let repo = TestRepo::new();
    let base = repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let only_notify = GitSourceConfig {
        poll_interval: Duration::from_secs(24 * 3600),
        watch: true,
        initial: InitialPolicy::All,
    };
    let mut source = GitSource::open(repo.path(), store, only_notify)
        .await
        .expect("opens");
    next(&mut source).await;
    let mut pushed = Vec::new();
    let mut transaction = String::from("start\n");
    for i in 0..40 {
        let c = repo.commit_on(&[&base], &format!("pushed {i}"));
        transaction.push_str(&format!("create refs/heads/push-{i:02} {c}\n"));
        pushed.push(c);
    }
    transaction.push_str("commit\n");
    // The source is waiting when the push lands, as a server is.
    let waiting = tokio::spawn(async move {
        let batch = next(&mut source).await;
        (source, batch)
    });
    repo.git_with_input(&["update-ref", "--stdin"], &transaction);
    let (_source, batch) = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("a batch within the deadline")
        .expect("the waiting task");
    let mut got = ids(&batch);
    got.sort();
    pushed.sort();
    assert_eq!(got, pushed, "one batch with every pushed commit");
}

#[tokio::test]
async fn polling_finds_commits_without_notifications() {
    let repo = TestRepo::new();
    repo.commit_to("main", "base");
    let store = Arc::new(MemoryStore::new());
    let only_poll = GitSourceConfig {
        poll_interval: Duration::from_millis(20),
        watch: false,
        initial: InitialPolicy::All,
    };
    let mut source = GitSource::open(repo.path(), store, only_poll)
        .await
        .expect("opens");
    next(&mut source).await;
    let c = repo.commit_to("main", "polled");
    assert_eq!(ids(&next(&mut source).await), vec![c]);
}
