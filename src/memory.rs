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

/// Drops the page-table entries of code pages this process mapped but does not use, and stops the
/// kernel from mapping neighbouring code pages in bulk again ("fault-around"). Startup faults in most of
/// the binary's and libc's text 64 KiB at a time; afterwards only the pages really executed come
/// back, one by one. Only read-and-execute file mappings are touched: they are never written (the
/// binary has no text relocations), so the kernel refills them from the file exactly as they were.
pub fn trim_code_pages() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        let path = fields.nth(3).unwrap_or("");
        if perms != "r-xp" || !path.starts_with('/') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        // SAFETY: the range is a whole private, read-only, file-backed code mapping of this process
        // (from /proc/self/maps); MADV_RANDOM only changes fault-in policy and MADV_DONTNEED on such a
        // mapping makes later accesses re-read identical contents from the file.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}
