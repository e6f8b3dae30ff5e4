//! When to look again: file-system notifications on the repository's refs, with
//! polling as the fallback and safety net.
//!
//! The notify watcher runs on its own thread and stores a wake-up permit in a
//! [`tokio::sync::Notify`]. A burst of events (a push updating many refs, the lock
//! file, write and rename of one update) is gathered until the events pause for
//! [`QUIET`], or at most [`MAX_GATHER`] after the first one: one ref update
//! reaches the scan a few milliseconds after it is written, and a push of many
//! branches, whose events follow each other within microseconds, is still
//! scanned once. While a ref update is in progress (git holds a `*.lock` file
//! under `refs/` or `packed-refs.lock`, as a push does for every ref it updates,
//! all locks taken before the first is released) the scan waits for it to end,
//! for at most [`MAX_LOCKED_GATHER`], so a transaction is seen whole; and once
//! a lock has been released and none is held, the burst ends at once: the
//! transaction is complete, and waiting out [`QUIET`] would only add to the
//! time from a ref update to its run. A permit that arrives while the source
//! is scanning is kept, so a change is never slept through.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, warn};

use super::config::MIN_POLL_INTERVAL;

/// A pause in ref events this long ends a burst.
pub(crate) const QUIET: Duration = Duration::from_millis(4);

/// The longest a burst is gathered, counted from its first event: a stream of
/// ref changes that never pauses is still scanned this often.
pub(crate) const MAX_GATHER: Duration = Duration::from_millis(50);

/// The longest a burst is gathered while ref lock files are held (a lock left
/// behind by a crashed git is forgotten then).
pub(crate) const MAX_LOCKED_GATHER: Duration = Duration::from_secs(1);

/// Ref lock files, as far as the watcher saw them created and removed.
#[derive(Default)]
struct LockFiles {
    /// The lock files that exist.
    held: HashSet<PathBuf>,
    /// How many lock files have gone (renamed into place or removed) so far.
    released: u64,
}

/// The [`LockFiles`] the watcher thread keeps up to date.
type Locks = Arc<Mutex<LockFiles>>;

/// Wakes a waiting source on ref changes or when the poll interval elapses.
pub(crate) struct Wakeup {
    notified: Arc<Notify>,
    locks: Locks,
    /// Kept alive for as long as the source lives; `None` when not watching.
    _watcher: Option<notify::RecommendedWatcher>,
    poll: Interval,
    /// A ref change was noticed and its burst is being gathered (kept when a
    /// wait is dropped, so the next one goes on gathering).
    woken: bool,
    /// `LockFiles::released` when the last burst ended: a higher count means
    /// a lock was released since.
    released_seen: u64,
}

impl Wakeup {
    /// Polls every `poll_interval`; when `watch`, also listens for changes of
    /// `common_dir/refs/**` and `common_dir/packed-refs`. A watch that cannot be set
    /// up is logged and left out (polling still works).
    pub(crate) fn new(common_dir: &Path, poll_interval: Duration, watch: bool) -> Self {
        let notified = Arc::new(Notify::new());
        let locks = Locks::default();
        let watcher = if watch {
            match start_watcher(common_dir, Arc::clone(&notified), Arc::clone(&locks)) {
                Ok(w) => Some(w),
                Err(e) => {
                    warn!(
                        dir = %common_dir.display(),
                        error = %e,
                        "cannot watch the repository's refs; relying on polling"
                    );
                    None
                }
            }
        } else {
            None
        };
        let period = poll_interval.max(MIN_POLL_INTERVAL);
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            notified,
            locks,
            _watcher: watcher,
            poll,
            woken: false,
            released_seen: 0,
        }
    }

    /// Waits for a ref change (then gathers the rest of its burst) or a poll tick.
    /// Cancel safe: dropping it loses no notification.
    pub(crate) async fn wait(&mut self) {
        if !self.woken {
            tokio::select! {
                () = self.notified.notified() => self.woken = true,
                _ = self.poll.tick() => return,
            }
        }
        let start = Instant::now();
        let (deadline, locked_deadline) = (start + MAX_GATHER, start + MAX_LOCKED_GATHER);
        // Each turn takes an event or a pause: bounded by the deadlines.
        loop {
            let (locked, released) = self.lock_state();
            if !locked && released != self.released_seen {
                // A ref transaction ended (its last lock went): it is whole.
                break;
            }
            let limit = if locked { locked_deadline } else { deadline };
            let now = Instant::now();
            if now >= limit {
                if locked {
                    debug!("ref lock files held too long; scanning anyway");
                    self.forget_locks();
                }
                break;
            }
            tokio::select! {
                () = self.notified.notified() => {}
                () = tokio::time::sleep_until((now + QUIET).min(limit)) => {
                    if !self.locked() {
                        break;
                    }
                }
            }
        }
        self.woken = false;
        self.released_seen = self.lock_state().1;
        debug!("woken by a ref change");
    }
}

impl Wakeup {
    fn locked(&self) -> bool {
        self.lock_state().0
    }

    /// Whether a lock file is held, and how many have been released.
    fn lock_state(&self) -> (bool, u64) {
        self.locks
            .lock()
            .map_or((false, 0), |l| (!l.held.is_empty(), l.released))
    }

    fn forget_locks(&self) {
        if let Ok(mut l) = self.locks.lock() {
            l.held.clear();
        }
    }
}

/// Notes the ref lock files `event` creates or removes.
fn track_locks(locks: &Mutex<LockFiles>, event: &notify::Event) {
    let is_lock = |p: &&PathBuf| p.extension().is_some_and(|e| e == "lock");
    let Ok(mut locks) = locks.lock() else {
        return;
    };
    let gone: &[PathBuf] = match event.kind {
        EventKind::Create(_) => {
            let created = event.paths.iter().filter(is_lock).cloned();
            locks.held.extend(created);
            &[]
        }
        EventKind::Remove(_)
        | EventKind::Modify(ModifyKind::Name(RenameMode::From | RenameMode::Any)) => &event.paths,
        // A rename from the lock file to the ref: paths are [from, to].
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            event.paths.get(..1).unwrap_or_default()
        }
        _ => &[],
    };
    for p in gone {
        if locks.held.remove(p) {
            locks.released += 1;
        }
    }
}

fn start_watcher(
    common_dir: &Path,
    notified: Arc<Notify>,
    locks: Locks,
) -> notify::Result<notify::RecommendedWatcher> {
    let common_dir = std::fs::canonicalize(common_dir).map_err(notify::Error::io)?;
    let refs_dir = common_dir.join("refs");
    let filter = RefChange {
        refs_dir: refs_dir.clone(),
    };
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                if filter.matters(&event) {
                    track_locks(&locks, &event);
                    notified.notify_one();
                }
            }
            Err(e) => {
                // An overflow or a lost watch: scan to be safe.
                warn!(error = %e, "ref watcher error; scanning");
                notified.notify_one();
            }
        })?;
    watcher.watch(&refs_dir, RecursiveMode::Recursive)?;
    // `packed-refs` is replaced by a rename, so watch its directory, not the file.
    watcher.watch(&common_dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Tells ref changes from the other traffic in the git directory.
struct RefChange {
    refs_dir: PathBuf,
}

impl RefChange {
    fn matters(&self, event: &notify::Event) -> bool {
        let kind_matters = match event.kind {
            // Reads (including the source's own) and metadata changes say nothing.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => false,
            _ => true,
        };
        kind_matters
            && event.paths.iter().any(|p| {
                p.starts_with(&self.refs_dir)
                    || p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("packed-refs"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn lock_files_are_held_from_creation_to_rename_or_removal() {
        let locks = Mutex::new(LockFiles::default());
        let create = EventKind::Create(notify::event::CreateKind::File);
        track_locks(&locks, &event(create, "/r/.git/refs/heads/a.lock"));
        track_locks(&locks, &event(create, "/r/.git/refs/heads/b.lock"));
        track_locks(&locks, &event(create, "/r/.git/refs/heads/c"));
        let both = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path(PathBuf::from("/r/.git/refs/heads/a.lock"))
            .add_path(PathBuf::from("/r/.git/refs/heads/a"));
        track_locks(&locks, &both);
        let held: Vec<PathBuf> = locks.lock().expect("lock").held.iter().cloned().collect();
        assert_eq!(held, vec![PathBuf::from("/r/.git/refs/heads/b.lock")]);
        assert_eq!(locks.lock().expect("lock").released, 1);
        let remove = EventKind::Remove(notify::event::RemoveKind::File);
        track_locks(&locks, &event(remove, "/r/.git/refs/heads/b.lock"));
        // Removing a file that was not a held lock releases nothing.
        track_locks(&locks, &event(remove, "/r/.git/refs/heads/c"));
        let state = locks.lock().expect("lock");
        assert!(state.held.is_empty());
        assert_eq!(state.released, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_gathered_until_it_pauses() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut wakeup = Wakeup::new(dir.path(), Duration::from_secs(3600), false);
        let notified = Arc::clone(&wakeup.notified);
        let start = Instant::now();
        // Events every 3 ms for 30 ms: one burst, over QUIET after the last.
        let events = tokio::spawn(async move {
            for _ in 0..10 {
                notified.notify_one();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
        wakeup.wait().await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(27) + QUIET && waited < MAX_GATHER,
            "{waited:?}"
        );
        events.await.expect("the event task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_lock_keeps_the_burst_open_until_released() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut wakeup = Wakeup::new(dir.path(), Duration::from_secs(3600), false);
        let (notified, locks) = (Arc::clone(&wakeup.notified), Arc::clone(&wakeup.locks));
        let lock = PathBuf::from("/r/.git/refs/heads/a.lock");
        locks.lock().expect("lock").held.insert(lock.clone());
        notified.notify_one();
        let start = Instant::now();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            locks.lock().expect("lock").held.remove(&lock);
            notified.notify_one();
        });
        wakeup.wait().await;
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
        release.await.expect("the release task");
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_lock_released_ends_the_burst_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut wakeup = Wakeup::new(dir.path(), Duration::from_secs(3600), false);
        let (notified, locks) = (Arc::clone(&wakeup.notified), Arc::clone(&wakeup.locks));
        let create = EventKind::Create(notify::event::CreateKind::File);
        let rename = |lock: &str, to: &str| {
            notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
                .add_path(PathBuf::from(lock))
                .add_path(PathBuf::from(to))
        };
        // A transaction of two refs: both locks taken, then each renamed.
        track_locks(&locks, &event(create, "/r/.git/refs/heads/a.lock"));
        track_locks(&locks, &event(create, "/r/.git/refs/heads/b.lock"));
        notified.notify_one();
        let start = Instant::now();
        let commit = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            track_locks(
                &locks,
                &rename("/r/.git/refs/heads/a.lock", "/r/.git/refs/heads/a"),
            );
            notified.notify_one();
            tokio::time::sleep(Duration::from_millis(2)).await;
            track_locks(
                &locks,
                &rename("/r/.git/refs/heads/b.lock", "/r/.git/refs/heads/b"),
            );
            notified.notify_one();
        });
        wakeup.wait().await;
        // Not after the first rename (a lock was still held), and without
        // waiting QUIET after the second.
        assert_eq!(start.elapsed(), Duration::from_millis(4));
        commit.await.expect("the commit task");

        // The next burst without locks waits for its pause, as before.
        wakeup.notified.notify_one();
        let start = Instant::now();
        wakeup.wait().await;
        assert_eq!(start.elapsed(), QUIET);
    }

    #[test]
    fn only_ref_writes_wake_the_source() {
        let f = RefChange {
            refs_dir: PathBuf::from("/r/.git/refs"),
        };
        let create = EventKind::Create(notify::event::CreateKind::File);
        assert!(f.matters(&event(create, "/r/.git/refs/heads/main.lock")));
        assert!(f.matters(&event(create, "/r/.git/packed-refs.lock")));
        assert!(!f.matters(&event(create, "/r/.git/index.lock")));
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!f.matters(&event(open, "/r/.git/refs/heads/main")));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(f.matters(&event(closed, "/r/.git/refs/heads/main")));
    }
}
