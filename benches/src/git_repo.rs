//! Git repositories for the `git_scan` benchmark: a long linear history made in
//! one go with `git fast-import` (one pack, as after a clone), and new commits
//! added on top in process with gix (loose objects and one ref update, as after
//! a local commit or a small push).
//!
//! Every commit has the empty tree, a fixed author and committer, and a commit
//! time one second after its parent's, so the history looks like a real one to
//! walks that sort or cut off by commit time.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use gix::ObjectId;
use gix::bstr::BString;
use gix::refs::Target;
use gix::refs::transaction::PreviousValue;

/// The branch every commit goes on.
pub const BRANCH: &str = "refs/heads/main";

/// Commit time of the first commit, seconds since the Unix epoch.
const FIRST_COMMIT_TIME: i64 = 1_600_000_000;

const NAME: &str = "Bench";
const EMAIL: &str = "bench@example.invalid";

/// Why a benchmark repository could not be made or grown.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The temporary directory could not be created.
    #[error("creating a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    /// `git` could not be started or fed (is it installed?).
    #[error("running `git {what}`: {source}")]
    Spawn {
        /// The git subcommand.
        what: &'static str,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// `git` ran and failed.
    #[error("`git {what}` failed ({status}): {stderr}")]
    Git {
        /// The git subcommand.
        what: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// gix failed to open the repository, write an object or move the branch.
    #[error("gix: {0}")]
    Gix(String),
}

fn gix_error(e: impl std::fmt::Display) -> RepoError {
    RepoError::Gix(e.to_string())
}

/// A bare repository in a temporary directory with one linear branch
/// ([`BRANCH`]); removed when dropped.
pub struct BenchRepo {
    _dir: tempfile::TempDir,
    path: PathBuf,
    repo: gix::Repository,
    tip: ObjectId,
    commits: u64,
}

impl BenchRepo {
    /// A repository whose branch has a linear history of `commits` commits
    /// (at least 1), written by `git fast-import`.
    pub fn with_history(commits: u64) -> Result<Self, RepoError> {
        let commits = commits.max(1);
        let dir = tempfile::tempdir().map_err(RepoError::TempDir)?;
        let path = dir.path().join("repo.git");
        let init: [&OsStr; 4] = [
            "init".as_ref(),
            "--bare".as_ref(),
            "-q".as_ref(),
            path.as_ref(),
        ];
        run_git("init", &init, None)?;
        let stream = fast_import_stream(commits);
        let import: [&OsStr; 2] = ["fast-import".as_ref(), "--quiet".as_ref()];
        run_git("fast-import", &import, Some((&path, stream)))?;
        let repo = gix::open(&path).map_err(gix_error)?;
        let tip = repo
            .find_reference(BRANCH)
            .map_err(gix_error)?
            .id()
            .detach();
        Ok(Self {
            _dir: dir,
            path,
            repo,
            tip,
            commits,
        })
    }

    /// The repository's path (a bare repository).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The commit [`BRANCH`] points at.
    pub fn tip(&self) -> ObjectId {
        self.tip
    }

    /// How many commits the branch has (its whole history).
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Writes `k` new commits on top of the tip, then moves [`BRANCH`] to the
    /// last one in a single ref update. Returns the new tip.
    pub fn add_commits(&mut self, k: u64) -> Result<ObjectId, RepoError> {
        let old_tip = self.tip;
        let mut parent = old_tip;
        for _ in 0..k {
            self.commits += 1;
            let commit = empty_tree_commit(
                parent,
                commit_time(self.commits),
                NAME,
                EMAIL,
                format!("bench commit {}", self.commits),
            );
            parent = self.repo.write_object(&commit).map_err(gix_error)?.detach();
        }
        self.repo
            .reference(
                BRANCH,
                parent,
                PreviousValue::MustExistAndMatch(Target::Object(old_tip)),
                "bench: new commits",
            )
            .map_err(gix_error)?;
        self.tip = parent;
        Ok(parent)
    }
}

impl BenchRepo {
    /// Writes `k` new commits on top of the tip with `git fast-import` (one
    /// pack, on the side ref `refs/bench/import`, no branch moves) and returns
    /// the newest; [`move_tip`](Self::move_tip) then reveals them in one ref
    /// update.
    pub fn import_commits(&mut self, k: u64) -> Result<ObjectId, RepoError> {
        const SIDE_REF: &str = "refs/bench/import";
        let mut out = Vec::with_capacity(usize::try_from(k).unwrap_or(0) * 128);
        for i in 0..k {
            let n = self.commits + i + 1;
            let message = format!("bench commit {n}\n");
            let from = if i == 0 {
                format!("from {}\n", self.tip)
            } else {
                String::new()
            };
            // Writing to a Vec cannot fail.
            let _ = write!(
                out,
                "commit {SIDE_REF}\ncommitter {NAME} <{EMAIL}> {} +0000\ndata {}\n{message}{from}\n",
                commit_time(n),
                message.len()
            );
        }
        let import: [&OsStr; 2] = ["fast-import".as_ref(), "--quiet".as_ref()];
        run_git("fast-import", &import, Some((&self.path, out)))?;
        // fast-import wrote a pack the open repository has not seen yet.
        self.repo = gix::open(&self.path).map_err(gix_error)?;
        self.commits += k;
        Ok(self
            .repo
            .find_reference(SIDE_REF)
            .map_err(gix_error)?
            .id()
            .detach())
    }

    /// Moves [`BRANCH`] from the tip to `new` in one ref update.
    pub fn move_tip(&mut self, new: ObjectId) -> Result<(), RepoError> {
        self.repo
            .reference(
                BRANCH,
                new,
                PreviousValue::MustExistAndMatch(Target::Object(self.tip)),
                "bench: burst",
            )
            .map_err(gix_error)?;
        self.tip = new;
        Ok(())
    }
}

/// The commit time of the `n`th commit (from 1).
fn commit_time(n: u64) -> i64 {
    FIRST_COMMIT_TIME + i64::try_from(n).unwrap_or(i64::MAX - FIRST_COMMIT_TIME)
}

/// A `git fast-import` stream of `commits` commits on [`BRANCH`], each the
/// child of the one before, all with the empty tree.
fn fast_import_stream(commits: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(usize::try_from(commits).unwrap_or(0) * 128);
    for n in 1..=commits {
        let message = format!("bench commit {n}\n");
        let time = commit_time(n);
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "commit {BRANCH}\ncommitter {NAME} <{EMAIL}> {time} +0000\ndata {}\n{message}\n",
            message.len()
        );
    }
    out
}

/// Runs `git args` with a fixed identity and no user or system configuration;
/// with `stdin`, in that repository (`GIT_DIR`) and fed those bytes.
fn run_git(
    what: &'static str,
    args: &[&OsStr],
    stdin: Option<(&Path, Vec<u8>)>,
) -> Result<(), RepoError> {
    let spawn_error = |source| RepoError::Spawn { what, source };
    let mut cmd = Command::new("git");
    cmd.args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", NAME)
        .env("GIT_AUTHOR_EMAIL", EMAIL)
        .env("GIT_AUTHOR_DATE", format!("{FIRST_COMMIT_TIME} +0000"))
        .env("GIT_COMMITTER_NAME", NAME)
        .env("GIT_COMMITTER_EMAIL", EMAIL)
        .env("GIT_COMMITTER_DATE", format!("{FIRST_COMMIT_TIME} +0000"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let input = match stdin {
        Some((git_dir, bytes)) => {
            cmd.env("GIT_DIR", git_dir).stdin(Stdio::piped());
            Some(bytes)
        }
        None => {
            cmd.stdin(Stdio::null());
            None
        }
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    // Feed stdin from a thread so a chatty stderr cannot deadlock us.
    let feeder = match (input, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => Some(std::thread::spawn(move || pipe.write_all(&bytes))),
        _ => None,
    };
    let output = child.wait_with_output().map_err(spawn_error)?;
    if let Some(feeder) = feeder {
        match feeder.join() {
            Ok(result) => result.map_err(spawn_error)?,
            Err(_) => {
                return Err(spawn_error(std::io::Error::other(
                    "the thread feeding stdin panicked",
                )));
            }
        }
    }
    if !output.status.success() {
        return Err(RepoError::Git {
            what,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// A bare repository with many branches over a long history, as a server
/// watching a busy project sees it: a linear `main` and `branches - 1` topic
/// branches `topic-NNNNN`, each one commit of its own on top of a `main`
/// commit, their fork points spread evenly along `main`. Every ref is packed
/// (`git pack-refs --all`), as after a clone. Removed when dropped.
///
/// Building 100,000 commits takes seconds, so the repository is built once with
/// `git fast-import` into a cache directory and copied from there: see
/// [`BranchyRepo::cached`].
pub struct BranchyRepo {
    _dir: tempfile::TempDir,
    path: PathBuf,
    repo: gix::Repository,
    branches: Vec<String>,
    commits: u64,
}

impl BranchyRepo {
    /// A copy of the repository with `branches` branches (at least 1) and
    /// `commits` commits in all (at least `branches`), built once under
    /// `cache` (a directory, created if missing; the build goes to a temporary
    /// name there and is renamed when complete, so an interrupted build is never
    /// used).
    pub fn cached(branches: u64, commits: u64, cache: &Path) -> Result<Self, RepoError> {
        let branches = branches.max(1);
        let commits = commits.max(branches);
        let built = cache.join(format!("branchy-b{branches}-c{commits}.git"));
        if !built.join("packed-refs").is_file() {
            std::fs::create_dir_all(cache).map_err(RepoError::TempDir)?;
            let partial = tempfile::tempdir_in(cache).map_err(RepoError::TempDir)?;
            let path = partial.path().join("repo.git");
            build_branchy(&path, branches, commits)?;
            // Another bench process may have won the race: either copy is fine.
            let _ = std::fs::remove_dir_all(&built);
            std::fs::rename(&path, &built).map_err(RepoError::TempDir)?;
        }
        let dir = tempfile::tempdir().map_err(RepoError::TempDir)?;
        let path = dir.path().join("repo.git");
        copy_dir(&built, &path).map_err(RepoError::TempDir)?;
        let repo = gix::open(&path).map_err(gix_error)?;
        let mut names = vec!["main".to_owned()];
        names.extend((1..branches).map(topic_name));
        Ok(Self {
            _dir: dir,
            path,
            repo,
            branches: names,
            commits,
        })
    }

    /// The repository's path (a bare repository).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The short names of the branches, `main` first.
    pub fn branches(&self) -> &[String] {
        &self.branches
    }

    /// Writes one new commit on top of branch `branch` (a short name) and moves
    /// the branch to it in one ref update (a loose ref, the other refs stay
    /// packed), as a push of one commit does. Returns the new commit.
    pub fn add_commit(&mut self, branch: &str) -> Result<ObjectId, RepoError> {
        let full = format!("refs/heads/{branch}");
        let old = self
            .repo
            .find_reference(full.as_str())
            .map_err(gix_error)?
            .id()
            .detach();
        self.commits += 1;
        let commit = empty_tree_commit(
            old,
            commit_time(self.commits),
            NAME,
            EMAIL,
            format!("bench commit {} on {branch}", self.commits),
        );
        let new = self.repo.write_object(&commit).map_err(gix_error)?.detach();
        self.repo
            .reference(
                full.as_str(),
                new,
                PreviousValue::MustExistAndMatch(Target::Object(old)),
                "bench: new commit",
            )
            .map_err(gix_error)?;
        Ok(new)
    }
}

/// The name of topic branch `i` (from 1).
fn topic_name(i: u64) -> String {
    format!("topic-{i:05}")
}

/// Builds the [`BranchyRepo`] layout at `path` with `git fast-import`, then
/// packs its refs.
fn build_branchy(path: &Path, branches: u64, commits: u64) -> Result<(), RepoError> {
    let init: [&OsStr; 4] = [
        "init".as_ref(),
        "--bare".as_ref(),
        "-q".as_ref(),
        path.as_ref(),
    ];
    run_git("init", &init, None)?;
    let topics = branches - 1;
    let mainline = commits - topics;
    let mut out = Vec::with_capacity(usize::try_from(commits).unwrap_or(0) * 160);
    // Fork point of topic i (from 1): spread evenly over main's commits.
    let fork = |i: u64| (i * mainline / (topics + 1)).max(1);
    let mut next_topic = 1;
    let mut n = 0;
    for m in 1..=mainline {
        n += 1;
        let message = format!("bench commit {n}\n");
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "commit {BRANCH}\nmark :{m}\ncommitter {NAME} <{EMAIL}> {} +0000\ndata {}\n{message}\n",
            commit_time(n),
            message.len()
        );
        while next_topic <= topics && fork(next_topic) == m {
            n += 1;
            let message = format!("bench commit {n} on {}\n", topic_name(next_topic));
            let _ = write!(
                out,
                "commit refs/heads/{}\ncommitter {NAME} <{EMAIL}> {} +0000\ndata {}\n{message}from :{m}\n\n",
                topic_name(next_topic),
                commit_time(n),
                message.len()
            );
            next_topic += 1;
        }
    }
    let import: [&OsStr; 2] = ["fast-import".as_ref(), "--quiet".as_ref()];
    run_git("fast-import", &import, Some((path, out)))?;
    let pack: [&OsStr; 2] = ["pack-refs".as_ref(), "--all".as_ref()];
    run_git("pack-refs", &pack, Some((path, Vec::new())))
}

/// Copies the directory tree `from` to `to` (files and directories only).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Where benchmarks cache what is slow to build: `bench-fixtures` in the
/// Cargo target directory (`CARGO_TARGET_DIR`, else the directory the running
/// benchmark was built into), else in the system's temporary directory.
pub fn fixture_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("bench-fixtures");
    }
    // A bench binary lives in <target>/<profile>/deps/.
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .map_or_else(std::env::temp_dir, |target| target.join("bench-fixtures"))
}

/// A commit of the empty tree on `parent`, written by `name <email>` at
/// `seconds` (Unix time, UTC), with `message` as its one line.
pub fn empty_tree_commit(
    parent: ObjectId,
    seconds: i64,
    name: &str,
    email: &str,
    message: String,
) -> gix::objs::Commit {
    let signature = gix::actor::Signature {
        name: name.into(),
        email: email.into(),
        time: gix::date::Time { seconds, offset: 0 },
    };
    gix::objs::Commit {
        tree: ObjectId::empty_tree(gix::hash::Kind::Sha1),
        parents: std::iter::once(parent).collect(),
        author: signature.clone(),
        committer: signature,
        encoding: None,
        message: BString::from(format!("{message}\n")),
        extra_headers: Vec::new(),
    }
}
