//! Giving freed memory back to the system after work.
//!
//! glibc's allocator keeps the memory a burst freed: each thread's arena holds
//! on to its free pages, so a server that ran 100,000 runs through its window
//! stays at the size of the busiest moment. [`give_back_freed_memory`] runs
//! beside the server and, at most every [`TRIM_INTERVAL`] after the store was
//! written, asks the allocator to return its free pages (`malloc_trim`).
//! Where the allocator is not glibc's it does nothing.

use std::sync::Arc;
use std::time::Duration;

use ci_engine::RunStore;
use tracing::debug;

/// How often, at most, freed memory is given back while the store is written.
pub const TRIM_INTERVAL: Duration = Duration::from_millis(500);

/// Gives freed memory back every [`TRIM_INTERVAL`] during which `store`'s
/// generation moved (so an idle server costs nothing), until the task is
/// dropped. A store without a generation is treated as always written.
pub async fn give_back_freed_memory(store: Arc<dyn RunStore>) {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trimmed_at: Option<u64> = None;
    loop {
        tick.tick().await;
        let now = store.generation();
        if now.is_some() && now == trimmed_at {
            continue;
        }
        trimmed_at = now;
        // The trim walks every arena; keep it off the async workers.
        match tokio::task::spawn_blocking(trim).await {
            Ok(released) => debug!(released, "gave freed memory back"),
            Err(e) => debug!(error = %e, "the memory trim did not finish"),
        }
    }
}

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
