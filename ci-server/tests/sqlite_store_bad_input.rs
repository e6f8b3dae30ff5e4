//! `SqliteStore::open` on bad input: each kind is refused with its own error,
//! a message naming the file, and the file left exactly as it was.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use ci_engine::RunStore;
use ci_engine::testing::store_contract::rich_run;
use ci_server::sqlite_store::{SCHEMA_VERSION, SqliteStore, SqliteStoreError};

/// The contents, modification time and directory listing of a file, to show
/// that a refused open changed none of them.
#[derive(Debug, PartialEq)]
struct Snapshot {
    bytes: Vec<u8>,
    modified: SystemTime,
    siblings: Vec<PathBuf>,
}

fn snapshot(path: &Path) -> Snapshot {
    let dir = path.parent().expect("a file in a directory");
    let mut siblings: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    siblings.sort();
    Snapshot {
        bytes: fs::read(path).expect("read file"),
        modified: fs::metadata(path)
            .and_then(|m| m.modified())
            .expect("mtime"),
        siblings,
    }
}

/// A database of ours with one run in it, closed cleanly.
async fn our_database(path: &Path) {
    let store = SqliteStore::open(path).await.expect("create");
    store
        .insert_run(&rich_run(&"ab".repeat(20), 1))
        .await
        .expect("insert");
}

fn assert_names(err: &SqliteStoreError, path: &Path) {
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "message does not name {}: {message}",
        path.display()
    );
    assert!(
        !message.contains('\n'),
        "message is not one line: {message}"
    );
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, content) in [
        ("notes.db", b"just some notes, not a database\n".repeat(200)),
        ("short.db", b"hello".to_vec()),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, &content).expect("write");
        let before = snapshot(&path);
        let err = SqliteStore::open(&path).await.expect_err("not SQLite");
        assert!(
            matches!(err, SqliteStoreError::NotADatabase { .. }),
            "{name}: {err:?}"
        );
        assert_names(&err, &path);
        assert_eq!(snapshot(&path), before, "{name} was touched");
    }
}

#[tokio::test]
async fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("runs.db");
    our_database(&path).await;
    {
        let conn = rusqlite::Connection::open(&path).expect("open with rusqlite");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump version");
    }
    let before = snapshot(&path);
    let err = SqliteStore::open(&path).await.expect_err("newer schema");
    match &err {
        SqliteStoreError::NewerSchema {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert_names(&err, &path);
    assert_eq!(snapshot(&path), before, "the newer database was touched");
}

#[tokio::test]
async fn another_programs_database_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch("CREATE TABLE runs (x); INSERT INTO runs VALUES (1);")
            .expect("fill");
    }
    let before = snapshot(&path);
    let err = SqliteStore::open(&path).await.expect_err("foreign");
    assert!(
        matches!(err, SqliteStoreError::ForeignDatabase { .. }),
        "{err:?}"
    );
    assert_names(&err, &path);
    assert_eq!(
        snapshot(&path),
        before,
        "the other program's database was touched"
    );
}

#[tokio::test]
async fn a_missing_directory_is_refused_and_not_created() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("no").join("such").join("runs.db");
    let err = SqliteStore::open(&path).await.expect_err("missing dir");
    assert!(
        matches!(err, SqliteStoreError::MissingDirectory { .. }),
        "{err:?}"
    );
    assert_names(&err, &path);
    assert!(!dir.path().join("no").exists(), "open created a directory");
}

#[tokio::test]
async fn a_directory_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = SqliteStore::open(dir.path())
        .await
        .expect_err("a directory");
    assert!(
        matches!(err, SqliteStoreError::IsADirectory { .. }),
        "{err:?}"
    );
    assert_names(&err, dir.path());
}

/// Makes a file or directory unwritable for the rest of its life: read-only
/// permissions, and, when the tests run as root (whom permissions do not stop),
/// the immutable attribute too. Undone on drop so the temp dir can be removed.
struct Unwritable {
    path: PathBuf,
    immutable: bool,
}

impl Unwritable {
    fn new(path: &Path) -> Self {
        let mut perms = fs::metadata(path).expect("metadata").permissions();
        perms.set_readonly(true);
        fs::set_permissions(path, perms).expect("chmod");
        let mut guard = Self {
            path: path.to_owned(),
            immutable: false,
        };
        if writable(path) {
            let status = Command::new("chattr").arg("+i").arg(path).status();
            guard.immutable = status.is_ok_and(|s| s.success());
            assert!(
                guard.immutable && !writable(path),
                "cannot make {} unwritable here: permissions do not stop this user and \
                 `chattr +i` failed (these tests need a file system with immutable files)",
                path.display()
            );
        }
        guard
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        if self.immutable {
            let _ = Command::new("chattr").arg("-i").arg(&self.path).status();
        }
        if let Ok(meta) = fs::metadata(&self.path) {
            let mut perms = meta.permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            let _ = fs::set_permissions(&self.path, perms);
        }
    }
}

/// Whether this process can write `path` (a file: open it for appending; a
/// directory: create a file in it). Changes nothing it finds.
fn writable(path: &Path) -> bool {
    if path.is_dir() {
        let probe = path.join(".write-probe");
        let ok = fs::write(&probe, b"").is_ok();
        let _ = fs::remove_file(&probe);
        ok
    } else {
        fs::OpenOptions::new().append(true).open(path).is_ok()
    }
}

#[tokio::test]
async fn a_read_only_file_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("runs.db");
    our_database(&path).await;
    let _guard = Unwritable::new(&path);
    let before = snapshot(&path);
    let err = SqliteStore::open(&path).await.expect_err("read-only file");
    assert!(
        matches!(err, SqliteStoreError::CannotWrite { .. }),
        "{err:?}"
    );
    assert_names(&err, &path);
    assert_eq!(
        snapshot(&path),
        before,
        "the read-only database was touched"
    );
}

#[tokio::test]
async fn a_read_only_directory_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sub = dir.path().join("data");
    fs::create_dir(&sub).expect("mkdir");
    let path = sub.join("runs.db");
    our_database(&path).await;
    let _guard = Unwritable::new(&sub);

    let before = snapshot(&path);
    let err = SqliteStore::open(&path).await.expect_err("read-only dir");
    assert!(
        matches!(err, SqliteStoreError::CannotWrite { .. }),
        "{err:?}"
    );
    assert_names(&err, &path);
    assert_eq!(
        snapshot(&path),
        before,
        "the database in a read-only dir was touched"
    );

    let fresh = sub.join("new.db");
    let err = SqliteStore::open(&fresh)
        .await
        .expect_err("new file in read-only dir");
    assert!(
        matches!(err, SqliteStoreError::CannotWrite { .. }),
        "{err:?}"
    );
    assert_names(&err, &fresh);
    assert!(!fresh.exists(), "a file appeared in a read-only directory");
}
