//! glibc `malloc` settings for a training process.
//!
//! A step allocates and frees the same few hundred activation and gradient buffers every time
//! (up to ~10 MB each for ResNet-50 at crop 257). By default glibc serves a large request with a
//! fresh `mmap` and unmaps it on free (the dynamic threshold only climbs to the largest size freed
//! so far), and returns the top of the heap to the kernel beyond 128 KiB free; so every step
//! page-faults its buffers in again and the kernel zeroes each page (R50 b2 crop 257: ~39k faults,
//! ~160 MB per step). Raising the mmap threshold to glibc's maximum (32 MiB) and the trim
//! threshold to 1 GiB keeps freed buffers in the heap for the next step: peak RSS is unchanged
//! (the next step needs the same memory), the faults per step drop to a few hundred.
//!
//! The step runs on a worker thread of the rayon pool (`commands::in_pool`), and glibc gives each
//! thread that allocates its own arena, whose mmap'd heaps are shrunk back to the kernel as they
//! empty, whatever the trim threshold says: the faults came back (R50 b2 crop 257, 7 steps and the
//! setup: 240 k faults with the step on the main thread, 385-446 k on a worker). One arena for
//! every thread (`M_ARENA_MAX = 1`) keeps them at 238 k; small requests still come from glibc's
//! per-thread caches without a lock, and the large ones are a few hundred per step.
//!
//! Skipped when the user sets `GLIBC_TUNABLES` or `MALLOC_*` variables (their choice wins), and
//! a no-op off glibc.

/// Apply the settings (call once, first thing in `main`).
pub fn keep_freed_buffers() {
    if std::env::vars_os().any(|(k, _)| {
        let k = k.to_string_lossy();
        k == "GLIBC_TUNABLES" || k.starts_with("MALLOC_")
    }) {
        return;
    }
    glibc::apply();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::os::raw::c_int;

    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    // From glibc's malloc.h.
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;
    const M_ARENA_MAX: c_int = -8;

    pub fn apply() {
        // SAFETY: mallopt only changes allocator parameters; it returns 0 (ignored) on a value
        // out of range and is safe to call before any thread starts.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
            mallopt(M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub fn apply() {}
}
