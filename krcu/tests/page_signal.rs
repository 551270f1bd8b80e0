//! The lock-free page and slab modes from a real signal handler under
//! PREEMPT_RT. There the per-CPU locks are sleeping locks: even a trylock
//! that succeeds ends in an unlock that may wake a sleeper (`unpark_one`),
//! which is not async-signal-safe. So in hardirq (signal handler) and NMI
//! context under Rt, `NO_LOCKS` allocations refuse with
//! `AllocError::Context`, as `alloc_pages_nolock` does, and
//! `free_nolock` defers the block to the lock-free list without touching a
//! lock, as the kernel's `free_pages_nolock` does.
//!
//! This binary holds this one test: the handler reaches the allocator and
//! the cache through statics.

mod common;

use krcu::Domain;
use krcu::context::{self, PreemptModel};
use krcu::lock::thread_counters;
use krcu::page::{AllocError, Gfp, Page, PageAllocator, Watermarks};
use krcu::slab::SlabCache;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};

static PAGES: AtomicPtr<PageAllocator> = AtomicPtr::new(core::ptr::null_mut());
static CACHE: AtomicPtr<SlabCache<u64>> = AtomicPtr::new(core::ptr::null_mut());
/// An order-0 page the handler frees with `free_nolock`.
static TO_FREE: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

/// What the handler saw: 1 = refused with `Context`, 2 = allocated,
/// 3 = another error; 0 = did not run.
static PAGE_RESULT: AtomicUsize = AtomicUsize::new(0);
static SLAB_RESULT: AtomicUsize = AtomicUsize::new(0);
/// Lock operations (any kind) the handler's thread made inside it.
static LOCK_OPS: AtomicU64 = AtomicU64::new(u64::MAX);

fn code<T>(r: &Result<T, AllocError>) -> usize {
    match r {
        Err(AllocError::Context) => 1,
        Ok(_) => 2,
        Err(_) => 3,
    }
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    let _hardirq = context::enter_hardirq();
    // SAFETY: set before the signal is raised and freed only after the
    // handler has run (the signal is synchronous: `raise` returns after it).
    let (pa, cache) = unsafe { (&*PAGES.load(Acquire), &*CACHE.load(Acquire)) };
    let c0 = thread_counters();
    let page = pa.alloc_page(Gfp::NO_LOCKS | Gfp::NOWARN);
    PAGE_RESULT.store(code(&page), Relaxed);
    // Leaked if it was allocated: nothing here may take a lock to free it.
    let _ = page.map(Page::into_raw);
    let obj = cache.alloc(Gfp::NO_LOCKS | Gfp::NOWARN, 7);
    SLAB_RESULT.store(
        match obj {
            Ok(_) => 2,
            Err(_) => 1,
        },
        Relaxed,
    );
    let raw = NonNull::new(TO_FREE.swap(core::ptr::null_mut(), AcqRel)).unwrap();
    // SAFETY: an order-0 page of `pa` the test gave up with `into_raw` and
    // handed over to this handler alone.
    let page = unsafe { Page::from_raw(pa, raw, 0) };
    pa.free_nolock(page);
    let c = thread_counters() - c0;
    LOCK_OPS.store(c.blocking + c.try_ok + c.try_failed, Relaxed);
}

#[test]
fn no_locks_refuses_a_signal_handler_under_rt_and_nolock_frees_defer() {
    let d = Domain::builder()
        .cpus(1)
        .preempt_model(PreemptModel::Rt)
        .build();
    let pa = common::pages::quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    let cache = SlabCache::<u64>::new(&pa, "handler").unwrap();
    // Stock this CPU's page lists and object cache, so that the lock-free
    // modes would find something if they looked.
    let p = pa.alloc_page(Gfp::KERNEL).unwrap();
    pa.free(p);
    let o = cache.alloc(Gfp::KERNEL, 1).unwrap();
    // SAFETY: ours, initialised, not used again.
    unsafe { cache.free(o) };
    assert!(pa.pcp_pages(0) > 0);
    let deferred_before = pa.stats().paths.deferred_frees;
    TO_FREE.store(
        pa.alloc_page(Gfp::KERNEL).unwrap().into_raw().as_ptr(),
        Release,
    );
    PAGES.store(std::sync::Arc::as_ptr(&pa).cast_mut(), Release);
    CACHE.store(core::ptr::from_ref(&cache).cast_mut(), Release);
    // SAFETY: the handler touches only atomics and the page allocator's
    // and the cache's signal-safe paths.
    unsafe { common::set_handler(libc::SIGUSR1, on_sigusr1, 0) };
    // Synchronous: the handler has run on this thread when it returns.
    // SAFETY: raise has no preconditions.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
    assert_eq!(PAGE_RESULT.load(Relaxed), 1, "NO_LOCKS page: Context");
    assert_eq!(
        SLAB_RESULT.load(Relaxed),
        1,
        "NO_LOCKS slab object: refused"
    );
    assert_eq!(LOCK_OPS.load(Relaxed), 0, "no lock touched in the handler");
    let s = pa.stats();
    assert_eq!(s.paths.deferred_frees, deferred_before + 1, "{s:#?}");
    // Outside the handler, and in a handler under another model, NO_LOCKS
    // is served from the lists.
    let p = pa.alloc_page(Gfp::NO_LOCKS).unwrap();
    pa.free(p);
    let d2 = Domain::builder()
        .cpus(1)
        .preempt_model(PreemptModel::Full)
        .build();
    let pa2 = PageAllocator::new(&d2, pa.config().clone()).unwrap();
    let p = pa2.alloc_page(Gfp::KERNEL).unwrap();
    pa2.free(p);
    {
        let _h = context::enter_hardirq();
        let p = pa2.alloc_page(Gfp::NO_LOCKS).unwrap();
        pa2.free_nolock(p);
    }
    // NMI under Rt is refused too.
    {
        let _n = context::enter_nmi();
        assert_eq!(pa.alloc_page(Gfp::NO_LOCKS), Err(AllocError::Context));
    }
    drop(cache);
    pa.drain_all();
    let s = pa.stats();
    assert_eq!(s.free_pages, s.total_pages, "everything came back: {s:#?}");
}
