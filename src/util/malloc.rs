//! Keeps freed tensor memory in the process instead of handing it back to the kernel.
//!
//! A training step allocates and frees the same large buffers (activations, gradients) every
//! step. glibc's malloc serves blocks above its mmap threshold (128 KiB at first, adjusted
//! upwards only as such blocks are freed) with fresh `mmap`s and trims the top of its heaps on
//! free, so every step page-faults its buffers back in and the kernel zeroes each page. Measured
//! on 2 cores, cnn_w2 training at batch 128: 1.5 M page faults per 270 steps, and a backward
//! pass of 23 ms instead of 16 ms; with the thresholds below, 36 K faults and 16 ms
//! (docs/performance.md). The price: memory freed after a peak stays mapped to the process.

/// Raises glibc's mmap and trim thresholds (no-op with other C libraries).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called at start-up, before any threads.
    unsafe {
        // Blocks up to 32 MiB (glibc's maximum threshold) come from the heap and are reused.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // Free memory at the top of a heap is returned to the kernel only above 1 GiB.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
