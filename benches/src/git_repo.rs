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
            let time = gix::date::Time {
                seconds: commit_time(self.commits),
                offset: 0,
            };
            let signature = gix::actor::Signature {
                name: NAME.into(),
                email: EMAIL.into(),
                time,
            };
            let commit = gix::objs::Commit {
                tree: ObjectId::empty_tree(gix::hash::Kind::Sha1),
                parents: std::iter::once(parent).collect(),
                author: signature.clone(),
                committer: signature,
                encoding: None,
                message: BString::from(format!("bench commit {}\n", self.commits)),
                extra_headers: Vec::new(),
            };
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
