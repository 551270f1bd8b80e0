//! The counting global allocator. A test binary that checks what a code
//! path allocates installs it:
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: CountingAlloc = CountingAlloc;
//! ```
//!
//! and reads the calling thread's counts before and after the path. Counts
//! are per thread (other threads' allocations never disturb a measure) and
//! live in `const` thread-locals without destructors, so counting never
//! allocates and a signal handler may read them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::thread::LocalKey;

/// Forwards every call to the system allocator and counts it for the
/// calling thread: `alloc`, `alloc_zeroed` and `realloc` as allocations,
/// `dealloc` as a free.
pub struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static FREES: Cell<u64> = const { Cell::new(0) };
}

fn bump(counter: &'static LocalKey<Cell<u64>>) {
    // `try_with`: the counter may be gone while the thread exits.
    let _ = counter.try_with(|c| c.set(c.get() + 1));
}

fn read(counter: &'static LocalKey<Cell<u64>>) -> u64 {
    counter.try_with(Cell::get).unwrap_or(0)
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged, so it keeps all of `GlobalAlloc`'s contracts; the
// counting touches only const thread-local cells.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: forwarded unchanged (see the impl): `ptr` came from
        // System with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        bump(&FREES);
        // SAFETY: forwarded unchanged (see the impl): `ptr` came from
        // System with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations (`alloc`, `alloc_zeroed`, `realloc`) the calling thread
/// has made so far.
pub fn thread_allocs() -> u64 {
    read(&ALLOCS)
}

/// Frees the calling thread has made so far.
pub fn thread_frees() -> u64 {
    read(&FREES)
}

/// Every heap call the calling thread has made so far: allocations and
/// frees.
pub fn thread_heap_calls() -> u64 {
    thread_allocs() + thread_frees()
}

/// Runs `f` and returns how many allocations the calling thread made in
/// it.
pub fn allocs_during(f: impl FnOnce()) -> u64 {
    let before = thread_allocs();
    f();
    thread_allocs() - before
}
