//! Adversarial review of `RcuCell`. Every test here failed on the reviewed
//! code: each demonstrates a finding, and passes since its fix.

mod common;

use common::counting_alloc::{CountingAlloc, thread_allocs};
use krcu::cell::UpdateError;
use krcu::rcu::ReadGuard;
use krcu::{Krcu, RcuBox, RcuCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

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
/// The reviewed code ended the leaked section when the thread died, so a
/// later store + grace period freed the value while safe code still held a
/// reference to it. Now the section is abandoned, never ended: grace
/// periods stall instead. (A leaked instance of its own, so that the stall
/// does not hold up the other tests' global instance.)
#[test]
fn f1_leaked_guard_thread_exit_frees_value_still_referenced() {
    let k: &'static Arc<Krcu> = Box::leak(Box::new(Arc::new(
        Krcu::builder()
            .arena_size(16 << 20)
            .build()
            .expect("instance"),
    )));
    let cell: &'static RcuCell<Canary, Arc<Krcu>> =
        Box::leak(Box::new(RcuCell::new_in(k.clone(), Canary(1001))));
    let r: &'static Canary = std::thread::spawn(move || {
        let g: &'static ReadGuard<'static> = Box::leak(Box::new(k.rcu().read_lock()));
        cell.load(g).expect("holds a value")
    })
    .join()
    .expect("reader thread");
    // The reader thread has exited; safe code still holds `r`.
    cell.store(Canary(1002)).expect("task context");
    let cookie = k.rcu().start_poll();
    let start = Instant::now();
    while k.rcu().stats().abandoned_sections == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    let reachable = std::hint::black_box(core::ptr::from_ref(r));
    assert_ne!(
        LAST_DROPPED.load(Ordering::SeqCst),
        1001,
        "the value behind a live safe &'static Canary ({reachable:p}) was dropped (freed)"
    );
    assert_eq!(r.0, 1001);
    assert!(!k.rcu().poll_state(cookie), "a grace period ended");
    assert_eq!(k.rcu().stats().abandoned_sections, 1);
}

/// F2: `store` on a real-time thread allocated (the box), where `defer`
/// refuses with `DeferError::Realtime` and `kfree_rcu` promises no global
/// allocator call. Now it refuses, handing the value back, and a box
/// prepared beforehand is published with no allocation.
#[test]
fn f2_store_on_realtime_thread_allocates() {
    std::thread::spawn(|| {
        let cell = RcuCell::new(5u64);
        cell.store(6).expect("task context"); // builds the global instance
        let prepared = RcuBox::new(8u64);
        krcu::context::set_realtime(true);
        assert!(krcu::defer(|| ()).is_err(), "defer refuses on RT");
        let before = thread_allocs();
        let r = cell.store(7);
        let boxed = cell.store_box(prepared);
        let after = thread_allocs();
        krcu::context::set_realtime(false);
        assert!(matches!(r, Err(UpdateError::Realtime(7))), "refused: {r:?}");
        boxed.expect("a prepared box is published on a real-time thread");
        assert_eq!(cell.load(&krcu::rcu::read_lock()), Some(&8));
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
/// allowed) called malloc, which is not async-signal-safe (a handler that
/// interrupted malloc deadlocks on its arena lock). Now it refuses; the
/// prepared form publishes with no allocation.
#[test]
fn f3_store_in_hardirq_allocates() {
    std::thread::spawn(|| {
        let cell = RcuCell::new(5u64);
        cell.store(6).expect("task context");
        let prepared = RcuBox::new(9u64);
        // Registered ahead, so that the read_lock below does not allocate.
        let _reader = krcu::rcu::register_thread();
        let before;
        let after;
        {
            let _irq = krcu::context::enter_hardirq();
            before = thread_allocs();
            let r = cell.store(7);
            let g = krcu::rcu::read_lock();
            let rep = cell.replace(10, &g).map(|_| ());
            let d = krcu::defer(|| ()).map_err(|e| matches!(e, krcu::DeferError::InHardirq(_)));
            let boxed = cell.store_box(prepared);
            drop(g);
            after = thread_allocs();
            assert!(
                matches!(r, Err(UpdateError::InHardirq(7))),
                "refused: {r:?}"
            );
            assert!(
                matches!(rep, Err(UpdateError::InHardirq(10))),
                "refused: {rep:?}"
            );
            assert_eq!(d, Err(true), "defer refuses in hardirq");
            assert!(boxed.is_ok(), "a prepared box is published in hardirq");
        }
        assert_eq!(cell.load(&krcu::rcu::read_lock()), Some(&9));
        assert_eq!(
            after - before,
            0,
            "RcuCell::store called malloc in hardirq (signal-handler) context"
        );
    })
    .join()
    .expect("no failure");
}
