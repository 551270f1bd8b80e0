//! Adversarial review of `RcuCell` (review-f). Every test here FAILS on the
//! reviewed code: each demonstrates a finding.

use krcu::RcuCell;
use krcu::rcu::ReadGuard;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` came from `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded; `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

/// The id of the last `Canary` dropped (0: none yet).
static LAST_DROPPED: AtomicU64 = AtomicU64::new(0);

struct Canary(u64);

impl Drop for Canary {
    fn drop(&mut self) {
        LAST_DROPPED.store(self.0, Ordering::SeqCst);
    }
}

/// F1: a guard leaked on a thread (`Box::leak`) is a
/// `&'static ReadGuard<'static>`; with a `&'static RcuCell`, `load` hands
/// out a `&'static T`, which is `Send` (T: Sync) and outlives the thread.
/// The thread's exit ends the leaked section (reader.rs: "a leaked guard
/// ... the section is ended"), so a later store + barrier frees the value
/// while safe code still holds a reference to it: use-after-free from safe
/// code. The reference is never dereferenced here: the test only checks
/// that the value was not dropped while reachable.
#[test]
fn f1_leaked_guard_thread_exit_frees_value_still_referenced() {
    let cell: &'static RcuCell<Canary> = Box::leak(Box::new(RcuCell::new(Canary(1001))));
    let r: &'static Canary = std::thread::spawn(move || {
        let g: &'static ReadGuard<'static> = Box::leak(Box::new(krcu::rcu::read_lock()));
        cell.load(g).expect("holds a value")
    })
    .join()
    .expect("reader thread");
    // The reader thread has exited; safe code still holds `r`.
    cell.store(Canary(1002)).expect("task context");
    krcu::kvfree_rcu_barrier();
    let reachable = std::hint::black_box(core::ptr::from_ref(r));
    assert_ne!(
        LAST_DROPPED.load(Ordering::SeqCst),
        1001,
        "the value behind a live safe &'static Canary ({reachable:p}) was dropped (freed)"
    );
}

/// F2: `store` on a real-time thread allocates (the box), where `defer`
/// refuses with `DeferError::Realtime` and `kfree_rcu` promises no global
/// allocator call. Nothing stops it: the promise rests on a doc sentence.
#[test]
fn f2_store_on_realtime_thread_allocates() {
    std::thread::spawn(|| {
        let cell = RcuCell::new(5u64);
        cell.store(6).expect("task context"); // builds the global instance
        krcu::context::set_realtime(true);
        assert!(krcu::defer(|| ()).is_err(), "defer refuses on RT");
        let before = allocs();
        let r = cell.store(7);
        let after = allocs();
        krcu::context::set_realtime(false);
        r.expect("task context");
        assert_eq!(
            after - before,
            0,
            "RcuCell::store called the global allocator on a real-time thread"
        );
    })
    .join()
    .expect("no failure");
}

/// F3: `store` from hardirq (a signal handler, where `kfree_rcu` is
/// allowed) calls malloc, which is not async-signal-safe (a handler that
/// interrupted malloc deadlocks on its arena lock). Only NMI is refused.
#[test]
fn f3_store_in_hardirq_allocates() {
    std::thread::spawn(|| {
        let cell = RcuCell::new(5u64);
        cell.store(6).expect("task context");
        let before;
        let after;
        {
            let _irq = krcu::context::enter_hardirq();
            before = allocs();
            let r = cell.store(7);
            after = allocs();
            assert!(r.is_ok(), "hardirq is not refused");
        }
        assert_eq!(
            after - before,
            0,
            "RcuCell::store called malloc in hardirq (signal-handler) context"
        );
    })
    .join()
    .expect("no failure");
}
