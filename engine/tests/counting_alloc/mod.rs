//! A global allocator for the property tests: the system allocator, recording the largest single allocation
//! asked for by any thread, so a test can assert that a reader of hostile bytes never sized an allocation from
//! a number in them (a header announcing terabytes) beyond the limits it states. Any thread counts (zarrs
//! decodes on rayon's, HTTP runs on tokio's), so [`largest_allocation`] runs one measured call at a time.
//!
//! A test binary installs it with `#[global_allocator] static ALLOC: Counting = Counting;` and wraps each call
//! in [`largest_allocation`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, recording the largest allocation asked for.
#[derive(Debug)]
pub struct Counting;

/// Largest allocation (bytes) asked for since the last reset.
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Held while a call is measured.
static MEASURING: Mutex<()> = Mutex::new(());

fn record(size: usize) {
    LARGEST.fetch_max(size, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` with the same arguments; the recording is one atomic
// operation (no allocation, no lock).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` (one measured call at a time in the process) and returns its result with the largest single
/// allocation (bytes) made meanwhile.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    LARGEST.store(0, Ordering::Relaxed);
    let out = f();
    (out, LARGEST.load(Ordering::Relaxed))
}
