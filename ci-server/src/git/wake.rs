//! When to look again: file-system notifications on the repository's refs, with
//! polling as the fallback and safety net.
//!
//! The notify watcher runs on its own thread and stores a wake-up permit in a
//! [`tokio::sync::Notify`]; a burst of events (a push updating many refs, the lock
//! file and rename of one update) is gathered by waiting [`DEBOUNCE`] after the
//! first one. A permit that arrives while the source is scanning is kept, so a
//! change is never slept through.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{debug, warn};

use super::config::MIN_POLL_INTERVAL;

/// How long to gather more events after the first one before scanning.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(30);

/// Wakes a waiting source on ref changes or when the poll interval elapses.
pub(crate) struct Wakeup {
    notified: Arc<Notify>,
    /// Kept alive for as long as the source lives; `None` when not watching.
    _watcher: Option<notify::RecommendedWatcher>,
    poll: Interval,
}

impl Wakeup {
    /// Polls every `poll_interval`; when `watch`, also listens for changes of
    /// `common_dir/refs/**` and `common_dir/packed-refs`. A watch that cannot be set
    /// up is logged and left out (polling still works).
    pub(crate) fn new(common_dir: &Path, poll_interval: Duration, watch: bool) -> Self {
        let notified = Arc::new(Notify::new());
        let watcher = if watch {
            match start_watcher(common_dir, Arc::clone(&notified)) {
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
            _watcher: watcher,
            poll,
        }
    }

    /// Waits for a ref change (then gathers the rest of its burst) or a poll tick.
    /// Cancel safe: dropping it loses no notification.
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            () = self.notified.notified() => {
                tokio::time::sleep(DEBOUNCE).await;
                // The burst's later events left a permit: the scan about to run
                // covers them, so take it.
                let _ = self.notified.notified().now_or_never();
                debug!("woken by a ref change");
            }
            _ = self.poll.tick() => {}
        }
    }
}

fn start_watcher(
    common_dir: &Path,
    notified: Arc<Notify>,
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
