//! Counting allocations: a global allocator for test binaries that must prove a hot path
//! allocates nothing (a global allocator affects its whole binary, so each such test is a binary
//! of its own that installs this one with `#[global_allocator]`). It counts every allocation
//! made on the calling thread, so other tests' threads do not disturb the count; with
//! [`trace_allocations`] on (e.g. when an environment variable asks for it) it also prints a
//! backtrace of each, to find what allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Forwards to the system allocator and counts allocations (and reallocations) per thread.
pub struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static TRACE: Cell<bool> = const { Cell::new(false) };
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

fn count_allocation() {
    // `try_with`: the thread-locals may already be gone while a thread shuts down.
    let tracing = IN_TRACE.try_with(Cell::get).unwrap_or(true);
    if tracing {
        // The backtrace's own allocations are neither counted nor traced.
        return;
    }
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
    if TRACE.try_with(Cell::get).unwrap_or(false) {
        IN_TRACE.with(|t| t.set(true));
        eprintln!(
            "allocation:\n{}",
            std::backtrace::Backtrace::force_capture()
        );
        IN_TRACE.with(|t| t.set(false));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// const-initialised thread-local `Cell`s, which neither allocate nor re-enter the allocator.
// Tracing (a diagnostic, off by default) captures and prints a backtrace, which allocates:
// those allocations re-enter here, find `IN_TRACE` set and are only forwarded.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations counted on this thread so far (0 unless [`CountingAllocator`] is the binary's
/// global allocator).
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Prints a backtrace of every allocation on this thread while `on`.
pub fn trace_allocations(on: bool) {
    TRACE.with(|t| t.set(on));
}

/// Panics unless the binary's global allocator is a [`CountingAllocator`]: a count of 0 must
/// mean nothing was allocated, not that nothing was counted.
pub fn assert_counting() {
    let probe = allocations();
    drop(std::hint::black_box(Box::new(1u64)));
    assert_eq!(allocations(), probe + 1, "the counter counts");
}
