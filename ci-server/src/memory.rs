//! Giving freed memory back to the system after work.
//!
//! glibc's allocator keeps the memory a burst freed: each thread's arena holds
//! on to its free pages, so a server that ran 100,000 runs through its window
//! stays at the size of the busiest moment. Two things bound that:
//!
//! - [`limit_arenas`], called first thing in `main`, caps glibc at
//!   [`ARENAS`] arenas (its default is eight per core), unless the
//!   environment sets `MALLOC_ARENA_MAX`. Blocking threads come and go by the
//!   hundred under load; each that allocates may otherwise get an arena of
//!   its own, and memory freed in one arena is of no use to the others.
//! - [`give_back_freed_memory`] runs beside the server and, once the store
//!   has not been written for a [`TRIM_INTERVAL`] after it was, asks the
//!   allocator to return its free pages (`malloc_trim`): never while work
//!   goes on (the pages would be taken again at once), and never twice for
//!   one quiet spell.
//!
//! Where the allocator is not glibc's, both do nothing.

use std::sync::Arc;
use std::time::Duration;

use ci_engine::RunStore;
use tracing::debug;

/// How long the store must stay unwritten, after a write, before freed
/// memory is given back; also how often the store's generation is read.
pub const TRIM_INTERVAL: Duration = Duration::from_millis(250);

/// Gives freed memory back each time `store` falls quiet: when its generation
/// moved during one [`TRIM_INTERVAL`] and not during the next. Runs until the
/// task is dropped. A store without a generation is never trimmed after.
pub async fn give_back_freed_memory(store: Arc<dyn RunStore>) {
    when_quiet(store, || async {
        // The trim walks every arena; keep it off the async workers.
        match tokio::task::spawn_blocking(trim).await {
            Ok(released) => debug!(released, "gave freed memory back"),
            Err(e) => debug!(error = %e, "the memory trim did not finish"),
        }
    })
    .await;
}

/// Calls `act` each time `store` falls quiet (see [`give_back_freed_memory`]).
async fn when_quiet<F, Fut>(store: Arc<dyn RunStore>, mut act: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = store.generation();
    let mut written = false;
    loop {
        tick.tick().await;
        let now = store.generation();
        if now != seen {
            seen = now;
            written = true;
        } else if written {
            written = false;
            act().await;
        }
    }
}

/// How many arenas glibc may use, unless `MALLOC_ARENA_MAX` says otherwise.
/// With two, a burst of 100,000 runs peaked at 67 MiB and ended at 37 MiB
/// against 77 and 55 MiB with glibc's default, at the same commits per
/// second (docs/performance.md).
pub const ARENAS: i32 = 2;

/// Caps glibc's arenas at [`ARENAS`], unless the environment sets
/// `MALLOC_ARENA_MAX` (glibc has read it then). Call it before any thread
/// starts. Does nothing where the allocator is not glibc's.
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        set_arena_max(ARENAS);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(n: i32) {
    // SAFETY: `mallopt` has no preconditions; it takes the allocator's lock
    // and only changes how later allocations pick an arena.
    let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, n) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_n: i32) {}

/// Returns the allocator's free pages to the system; whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: `malloc_trim` has no preconditions: it takes the allocator's own
    // locks, may be called from any thread at any time, and only releases
    // pages no allocation uses.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators give memory back on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ci_engine::{Commit, MemoryStore, Pipeline, Run};

    use super::*;

    /// One act per quiet spell after writes: none while the store is written
    /// every interval, none while it stays quiet, none before any write.
    #[tokio::test(start_paused = true)]
    async fn acts_once_each_time_the_store_falls_quiet() {
        let store = Arc::new(MemoryStore::new());
        let acts = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&acts);
        let task = tokio::spawn(when_quiet(store.clone(), move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {}
        }));
        let pipeline = Pipeline::standard();
        let step = |n: u32| tokio::time::sleep(TRIM_INTERVAL * n);
        step(4).await;
        assert_eq!(acts.load(Ordering::SeqCst), 0, "nothing written yet");
        // Writes half-way between ticks, so no tick shares an instant with one.
        tokio::time::sleep(TRIM_INTERVAL / 2).await;
        for i in 0..8u64 {
            let run = Run::new(Commit::bare(format!("{i:08x}")), i, &pipeline);
            store
                .insert_run(&run)
                .await
                .expect("a memory store takes a run");
            step(1).await;
        }
        assert_eq!(acts.load(Ordering::SeqCst), 0, "written every interval");
        step(10).await;
        assert_eq!(acts.load(Ordering::SeqCst), 1, "once when it fell quiet");
        let run = Run::new(Commit::bare("ffffffff"), 99, &pipeline);
        store
            .insert_run(&run)
            .await
            .expect("a memory store takes a run");
        step(10).await;
        assert_eq!(
            acts.load(Ordering::SeqCst),
            2,
            "once more after the next write"
        );
        task.abort();
    }
}
