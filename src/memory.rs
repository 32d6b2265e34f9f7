//! Keeping the resident set small on a VM where every megabyte belongs to the jobs. glibc gives each
//! thread that allocates its own malloc arena and keeps freed memory at the top of each; the agent
//! allocates little and rarely in parallel, so one arena and an explicit trim after bursts keep its
//! footprint flat. On other C libraries (musl) these are no-ops.

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
