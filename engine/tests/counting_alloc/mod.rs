//! A global allocator for the property tests: the system allocator, recording the largest single allocation
//! asked for by any thread, so a test can assert that a reader of hostile bytes never sized an allocation from
//! a number in them (a header announcing terabytes) beyond the limits it states. Any thread counts (zarrs
//! decodes on rayon's, HTTP runs on tokio's), so the tests of a binary that uses it run one at a time: each
//! holds [`serial`] for its whole run (case generation included).
//!
//! A test binary installs it with `#[global_allocator] static ALLOC: Counting = Counting;`, takes [`serial`]
//! at the start of each test and wraps each measured call in [`largest_allocation`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The system allocator, recording the largest allocation asked for.
#[derive(Debug)]
pub struct Counting;

/// Largest allocation (bytes) asked for since the last reset.
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Held by the test running.
static SERIAL: Mutex<()> = Mutex::new(());

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

/// Taken at the start of each test: the tests of the binary run one at a time, so the allocations measured
/// are the measured call's.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` and returns its result with the largest single allocation (bytes) made meanwhile (by any thread).
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::Relaxed);
    let out = f();
    (out, LARGEST.load(Ordering::Relaxed))
}
