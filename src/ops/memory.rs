//! How the process gives memory back: large blocks go straight to the operating system.
//!
//! glibc serves a block above its mmap threshold with a mapping of its own, unmapped on free,
//! but it raises that threshold to the size of every such block freed (up to 32 MiB). After
//! one 50 MB message, the next messages' multi-megabyte buffers came from the heap arenas and
//! stayed there once freed: 16 large messages at once peaked at 435 MB against 330 MB for 4,
//! though at most 4 are received and committed together. A fixed threshold (which also
//! turns the adjustment off) keeps every large buffer a mapping of its own: 16 at once then
//! peak where 4 do (`docs/benchmarks.md`). Small mail never allocates blocks this large. The
//! trim threshold is set where glibc's own adjustment would put it for this mmap threshold
//! (twice it), so the heaps are not trimmed more often than before.

/// Blocks from this size on are mapped on their own and returned to the system when freed.
pub const MAP_FROM: usize = crate::listeners::smtp::session::LARGE_MESSAGE;

/// Fixes the allocator's mmap threshold at [`MAP_FROM`]; call once, before threads start
/// (and so before logging is set up): `false` when the allocator refused.
pub fn return_large_blocks() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let threshold = libc::c_int::try_from(MAP_FROM).unwrap_or(libc::c_int::MAX);
        [
            (libc::M_MMAP_THRESHOLD, threshold),
            (libc::M_TRIM_THRESHOLD, threshold.saturating_mul(2)),
        ]
        .into_iter()
        // SAFETY: mallopt takes two integers and only changes allocator tunables; it is
        // called before any other thread exists.
        .all(|(param, value)| unsafe { libc::mallopt(param, value) } == 1)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    true
}
