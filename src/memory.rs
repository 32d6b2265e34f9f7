//! Keeping the resident set small on a VM where every megabyte belongs to the jobs. glibc gives each
//! thread that allocates its own malloc arena and keeps freed memory at the top of each; the agent
//! allocates little and rarely in parallel, so one arena and an explicit trim after bursts keep its
//! footprint flat. On musl, the C library of the static release binary, these are no-ops: its
//! allocator has a single heap and hands freed pages back on its own.
//!
//! Deliberately not done: dropping the page-table entries of the binary's code pages
//! between heartbeats. It halved a lone agent's RSS, but code pages are file pages, shared by every
//! process running the binary and reclaimable by the kernel at any time: the trim freed no memory,
//! it only moved the RSS figure (and cost page faults to bring the pages back). PSS and `RssAnon`
//! are the figures that count.

/// Limits glibc to one malloc arena; call before any thread is started.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns free heap pages to the kernel after a burst of work (a finished task, a heartbeat).
pub fn release_free() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim is thread-safe and only releases memory the allocator holds as free.
    unsafe {
        libc::malloc_trim(0);
    }
}
