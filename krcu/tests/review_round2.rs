//! Adversarial review, round 2: failing tests for the rewritten reader
//! teardown, fork handlers and slab frees.

mod common;

use krcu::Domain;
use krcu::page::Gfp;
use krcu::slab::SlabCache;
use std::time::{Duration, Instant};

/// Set in the child process a test runs its work in (see
/// [`common::child::in_child_else_run`]).
const CHILD_VAR: &str = "REVIEW_ROUND2_CHILD";

/// In the child, true: the test `name` does its work. In the parent, runs
/// `name` in the child, fails unless it passed within `limit`, and returns
/// false.
fn in_child(name: &str, limit: Duration) -> bool {
    common::child::in_child_else_run(CHILD_VAR, name, limit)
}

/// Forks and waits for the child, which exits at once.
fn fork_and_reap() {
    // SAFETY: fork has no preconditions; the child only calls _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: _exit is async-signal-safe and ends the child at once.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}

/// Finding 1: a thread that forked once, and forks again from a
/// thread-local destructor that runs after the fork module's own
/// thread-locals (`HELD`, `PARTS`) are destroyed, aborts the process: the
/// `pthread_atfork` prepare handler calls `HELD.with`, which panics during
/// teardown, inside an `extern "C"` function.
#[test]
fn fork_from_a_thread_local_destructor_after_an_earlier_fork() {
    if !in_child(
        "fork_from_a_thread_local_destructor_after_an_earlier_fork",
        Duration::from_secs(30),
    ) {
        return;
    }
    struct ForkAtExit;
    impl Drop for ForkAtExit {
        fn drop(&mut self) {
            // Runs after the fork module's thread-locals were destroyed
            // (registered later, so destroyed first).
            fork_and_reap();
            eprintln!("second fork done");
        }
    }
    thread_local! {
        static AT_EXIT: std::cell::RefCell<Option<ForkAtExit>> =
            const { std::cell::RefCell::new(None) };
    }
    let rcu = krcu::rcu::global();
    std::thread::spawn(move || {
        // Registered first: destroyed last.
        AT_EXIT.with(|a| *a.borrow_mut() = Some(ForkAtExit));
        drop(rcu.read_lock());
        // Touches the fork module's thread-locals on this thread.
        fork_and_reap();
    })
    .join()
    .unwrap();
    rcu.synchronize();
}

/// Finding 2: a bad free inside a `free_bulk` batch panics (debug builds)
/// after the objects before it were marked free and dropped, but before
/// any of them goes back to its slab: they are lost, and their slab can
/// never be freed (the same loss the panicking-destructor fix closed).
#[test]
#[cfg(debug_assertions)]
fn a_bad_free_in_free_bulk_loses_the_good_objects_before_it() {
    let pa = common::pages::allocator_on_cpus(1, 4 << 20);
    let cache = SlabCache::<u64>::new(&pa, "bulk-bad").unwrap();
    let a = cache.alloc(Gfp::KERNEL, 1).unwrap();
    let b = cache.alloc(Gfp::KERNEL, 2).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut objs = [a, b, a];
        // SAFETY: `a` and `b` are live objects of the cache; the second `a`
        // is the bad free under test (checked: the cache detects it from
        // its free bit, never touching the object).
        unsafe { cache.free_bulk(&mut objs) };
    }));
    assert!(r.is_err(), "the double free was not reported");
    cache.shrink();
    let s = cache.stats();
    assert_eq!(
        s.slabs, 0,
        "the good objects of the batch never went back to their slab: {s:#?}"
    );
}

/// A `pthread` key destructor (another library's) that reads under `rcu`
/// on a thread that never read before: runs after every Rust
/// thread-local destructor, so the registration it makes must still be
/// given back when the thread is gone.
#[test]
fn a_first_read_in_a_late_pthread_key_destructor_gives_its_slot_back() {
    if !in_child(
        "a_first_read_in_a_late_pthread_key_destructor_gives_its_slot_back",
        Duration::from_secs(30),
    ) {
        return;
    }
    static RCU: std::sync::OnceLock<krcu::rcu::Rcu> = std::sync::OnceLock::new();
    let rcu =
        RCU.get_or_init(|| krcu::rcu::Rcu::new(Domain::global(), krcu::rcu::RcuConfig::default()));
    static DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    extern "C" fn key_dtor(_: *mut libc::c_void) {
        let rcu = RCU.get().unwrap();
        let g = rcu.read_lock();
        let reading = rcu.is_reading();
        drop(g);
        DONE.store(
            if reading { 1 } else { 2 },
            std::sync::atomic::Ordering::SeqCst,
        );
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: valid out pointer; the destructor accepts any value.
    let r = unsafe { libc::pthread_key_create(&mut key, Some(key_dtor)) };
    assert_eq!(r, 0);
    std::thread::spawn(move || {
        // SAFETY: a live key; the value is only a non-null marker.
        unsafe { libc::pthread_setspecific(key, core::ptr::dangling::<u8>().cast()) };
    })
    .join()
    .unwrap();
    let t = Instant::now();
    while DONE.load(std::sync::atomic::Ordering::SeqCst) == 0
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(DONE.load(std::sync::atomic::Ordering::SeqCst), 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rcu.stats().readers, 0, "the key destructor's slot leaked");
    rcu.synchronize();
}
