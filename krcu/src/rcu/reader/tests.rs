//! Unit tests of the reader slots, registrations and guards.

use super::super::handshake;
use super::cache::*;
use super::exit::*;
use super::guard::*;
use super::registry::*;
use super::slot::*;
use crate::rcu::{Rcu, RcuConfig};
use crate::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use core::cell::RefCell;
use std::sync::mpsc;
use std::time::Duration;

fn leaked() -> &'static Rcu {
    Box::leak(Box::new(Rcu::new(
        crate::Domain::global(),
        RcuConfig::default(),
    )))
}

/// Whether a grace period started now ends within `d`.
fn gp_ends_within(rcu: &'static Rcu, d: Duration) -> bool {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        rcu.synchronize();
        let _ = tx.send(());
    });
    rx.recv_timeout(d).is_ok()
}

/// Runs `at_exit` in a thread-local destructor that runs after the
/// registration list's (`before` runs first, registering the thread).
fn at_teardown(before: impl FnOnce() + Send + 'static, at_exit: Box<dyn FnOnce() + Send>) {
    struct AtExit(Option<Box<dyn FnOnce() + Send>>);
    impl Drop for AtExit {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    thread_local! {
        static AT_EXIT: RefCell<AtExit> = const { RefCell::new(AtExit(None)) };
    }
    std::thread::spawn(move || {
        AT_EXIT.with(|_| {});
        before();
        AT_EXIT.with(|a| a.borrow_mut().0 = Some(at_exit));
    })
    .join()
    .unwrap();
}

#[test]
fn a_guard_leaked_during_teardown_is_abandoned_when_the_thread_ends() {
    let rcu = leaked();
    at_teardown(
        move || drop(rcu.read_lock()),
        Box::new(move || core::mem::forget(rcu.read_lock())),
    );
    // The thread is gone (joined), its section still open: a leaked
    // guard of a 'static instance may have handed out 'static
    // references, so the section is abandoned, never ended.
    assert!(!gp_ends_within(rcu, Duration::from_millis(300)));
    assert_eq!(rcu.stats().abandoned_sections, 1);
    assert_eq!(rcu.stats().readers, 0);
}

#[test]
fn a_handle_dropped_inside_a_section_during_teardown_keeps_it_waited_for() {
    let rcu = leaked();
    let (to_main, from_thread) = mpsc::channel();
    let (to_thread, from_main) = mpsc::channel::<()>();
    // (Results come back over the channel: a panic in a thread-local
    // destructor would abort the test binary.)
    let t = std::thread::spawn(move || {
        at_teardown(
            move || drop(rcu.read_lock()),
            Box::new(move || {
                let g = rcu.read_lock();
                drop(rcu.register_thread());
                // Nested, and still the same section.
                drop(rcu.read_lock());
                let _ = to_main.send(rcu.is_reading());
                let _ = from_main.recv_timeout(Duration::from_secs(10));
                drop(g);
                let _ = to_main.send(!rcu.is_reading());
            }),
        )
    });
    assert!(from_thread.recv_timeout(Duration::from_secs(10)).unwrap());
    // Another thread takes a slot meanwhile (never the open one).
    std::thread::spawn(move || drop(rcu.read_lock()))
        .join()
        .unwrap();
    let ended = gp_ends_within(rcu, Duration::from_millis(300));
    to_thread.send(()).unwrap();
    let closed = from_thread.recv_timeout(Duration::from_secs(10)).unwrap();
    t.join().unwrap();
    assert!(!ended, "a grace period ended under a teardown reader");
    assert!(closed, "the section outlived its guard");
    assert!(gp_ends_within(rcu, Duration::from_secs(10)));
    assert_eq!(rcu.stats().readers, 0);
}

#[test]
fn an_orphan_is_reentered_by_its_thread_and_freed_at_exit() {
    let rcu = leaked();
    thread_local! {
        static HELD: RefCell<Option<ReadGuard<'static>>> = const { RefCell::new(None) };
    }
    struct Check(&'static Rcu, mpsc::Sender<[bool; 3]>);
    impl Drop for Check {
        fn drop(&mut self) {
            let rcu = self.0;
            // The registration list is gone; the section (held in
            // HELD, destroyed after this) is open: an orphan.
            let open = rcu.is_reading();
            let uncounted = rcu.stats().readers == 0;
            drop(rcu.read_lock());
            // A nested section must not end the outer one.
            let _ = self.1.send([open, uncounted, rcu.is_reading()]);
        }
    }
    thread_local! {
        static CHECK: RefCell<Option<Check>> = const { RefCell::new(None) };
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        HELD.with(|_| {});
        CHECK.with(|_| {});
        let g = rcu.read_lock();
        HELD.with(|h| *h.borrow_mut() = Some(g));
        CHECK.with(|c| *c.borrow_mut() = Some(Check(rcu, tx)));
    })
    .join()
    .unwrap();
    assert_eq!(rx.recv().unwrap(), [true; 3]);
    assert!(gp_ends_within(rcu, Duration::from_secs(10)));
    assert_eq!(rcu.stats().readers, 0);
}

/// A thread's key is never a dead thread's, even where glibc gives the
/// new thread the dead one's stack (and thread-local addresses).
#[test]
fn thread_keys_are_never_reused() {
    let key = || std::thread::spawn(thread_key).join().unwrap();
    let keys: Vec<u64> = (0..8).map(|_| key()).collect();
    let mut unique = keys.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "{keys:?}");
    assert!(!keys.contains(&0));
}

/// A second release of a tenure is refused, even once the slot is
/// taken again (by the same thread, as here).
#[test]
fn a_slot_is_never_released_twice() {
    let readers = Readers::new(true);
    let release = |i, t| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| readers.release_slot(i, t)))
            .is_ok()
    };
    let (i, t) = readers.acquire_slot();
    assert!(release(i, t));
    assert_eq!(readers.registered(), 0);
    // (Debug builds assert: the refusal is a bug caught.)
    assert_eq!(release(i, t), !cfg!(debug_assertions));
    assert_eq!(readers.refused(), 1);
    let (j, t2) = readers.acquire_slot();
    assert_eq!(j, i, "the slot was on the free list twice");
    assert_ne!(t2, t);
    assert_eq!(release(i, t), !cfg!(debug_assertions));
    assert_eq!(readers.refused(), 2);
    assert_eq!(
        readers.registered(),
        1,
        "a stale release freed a taken slot"
    );
    let (k, _) = readers.acquire_slot();
    assert_ne!(k, i);
    assert!(release(j, t2));
    assert_eq!(readers.registered(), 1);
}

/// A `fork` from a signal handler that interrupted `register_current`
/// (or `drop_handle`) finds the registration list borrowed: the child
/// must still keep the forking thread's slot (run here on a private
/// registry, with the child's step called directly).
#[test]
fn the_forking_threads_slot_survives_a_borrowed_registration_list() {
    let readers = Readers::new(true);
    let other = readers.clone();
    // Another thread's slot, which the child must free.
    std::thread::spawn(move || {
        let h = ReaderHandle::new(&other);
        core::mem::forget(h);
    })
    .join()
    .unwrap();
    let h = ReaderHandle::new(&readers);
    assert_eq!(readers.registered(), 2);
    REGISTRATIONS.with(|regs| {
        let _interrupted = regs.borrow_mut();
        readers.forget_other_threads();
    });
    assert_eq!(
        readers.registered(),
        1,
        "the forking thread's slot was freed"
    );
    let mine = readers.slot(h.index);
    assert!(mine.owner.lock().unwrap().is_some());
    assert_eq!(mine.handles.load(Ordering::Relaxed), 1);
    // The next registration takes the dead thread's slot, not ours.
    let other = readers.clone();
    let taken = std::thread::spawn(move || {
        let h = ReaderHandle::new(&other);
        let i = h.index;
        drop(h);
        i
    })
    .join()
    .unwrap();
    assert_ne!(taken, h.index);
    drop(h);
    assert_eq!(readers.registered(), 0);
}

/// A thread that exits inside a section leaves its slot an orphan
/// (never ended by the late list's destructor); once the thread is gone
/// the section is abandoned, never ended (a leaked guard's references
/// may live on), until the instance's teardown ends it. A closed
/// orphan of a gone thread is freed.
#[test]
fn a_gone_threads_open_section_is_abandoned_until_teardown() {
    let readers = Readers::new(true);
    let r = readers.clone();
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let h = ReaderHandle::new(&r);
        core::mem::forget(h.read_lock());
        let _ = tx.send(h.index);
        drop(h);
        let _ = go_rx.recv_timeout(Duration::from_secs(10));
    });
    let i = rx.recv().unwrap();
    // Alive: never reaped, even if orphaned.
    readers.reap_orphans();
    assert!(handshake::active(
        readers.slot(i).ctr.load(Ordering::Relaxed)
    ));
    go_tx.send(()).unwrap();
    t.join().unwrap();
    assert!(readers.has_orphans(), "the late list ended the section");
    assert_eq!(readers.registered(), 0);
    let start = std::time::Instant::now();
    while readers.has_orphans() && start.elapsed() < Duration::from_secs(10) {
        readers.reap_orphans();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!readers.has_orphans(), "the gone thread was never noticed");
    assert_eq!(readers.abandoned(), 1);
    assert!(
        handshake::active(readers.slot(i).ctr.load(Ordering::Relaxed)),
        "a leaked guard's section was ended while the instance lives"
    );
    let (j, _) = readers.acquire_slot();
    assert_ne!(j, i, "an abandoned slot was handed out again");
    readers.begin_teardown();
    assert_eq!(readers.abandoned(), 0);
    assert_eq!(readers.slot(i).ctr.load(Ordering::Relaxed), 0);
    let (k, _) = readers.acquire_slot();
    assert_eq!(k, i, "teardown did not free the abandoned slot");
}

/// A thread that exits with a handle leaked but no section open leaves
/// a closed orphan: freed once the thread is gone.
#[test]
fn a_gone_threads_closed_orphan_is_freed() {
    let readers = Readers::new(true);
    let r = readers.clone();
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let (i, _) = r.acquire_slot();
        let free = r.lock_free();
        r.mark_orphan(i);
        drop(free);
        let _ = tx.send(i);
    });
    let i = rx.recv().unwrap();
    t.join().unwrap();
    let start = std::time::Instant::now();
    while readers.has_orphans() && start.elapsed() < Duration::from_secs(10) {
        readers.reap_orphans();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!readers.has_orphans(), "a closed orphan was never freed");
    assert_eq!(readers.abandoned(), 0);
    let (j, _) = readers.acquire_slot();
    assert_eq!(j, i, "the closed orphan's slot was not freed");
}

/// In the child of a `fork`, another thread's orphan is freed with
/// its other slots; the forking thread's own slots take its tid.
#[test]
fn orphans_of_other_threads_are_freed_after_fork() {
    let readers = Readers::new(true);
    let r = readers.clone();
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    // A live thread's orphan (the reaper would keep it).
    // (Taken without a registration, so that the thread's exit does
    // not release the slot the "child" freed.)
    let t = std::thread::spawn(move || {
        let (i, _) = r.acquire_slot();
        core::mem::forget(lock(&r, r.slot(i)));
        let free = r.lock_free();
        r.mark_orphan(i);
        drop(free);
        let _ = tx.send(i);
        let _ = go_rx.recv_timeout(Duration::from_secs(10));
    });
    let i = rx.recv().unwrap();
    let h = ReaderHandle::new(&readers);
    readers.forget_other_threads();
    assert!(!readers.has_orphans());
    assert_eq!(readers.registered(), 1);
    assert_eq!(readers.slot(i).ctr.load(Ordering::Relaxed), 0);
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    assert_eq!(readers.slot(h.index).tid.load(Ordering::Relaxed), me);
    go_tx.send(()).unwrap();
    t.join().unwrap();
    drop(h);
}

#[test]
fn cache_updates_never_nest_and_mid_update_lookups_miss() {
    let c = Cache {
        seq: AtomicU64::new(0),
        id: AtomicU64::new(0),
        slot: AtomicPtr::new(core::ptr::null_mut()),
    };
    let a = core::ptr::dangling::<Slot>();
    let b = a.wrapping_add(1);
    c.set(1, a);
    assert_eq!(c.get(1), Some(a));
    assert_eq!(c.get(2), None);
    // A handler interrupting an update to (2, b) after its first
    // stores sees no pair, and does not update itself.
    c.seq.store(3, Ordering::Relaxed);
    c.id.store(0, Ordering::Relaxed);
    c.slot.store(b.cast_mut(), Ordering::Relaxed);
    assert_eq!(c.get(1), None);
    assert_eq!(c.get(2), None);
    c.set(3, a);
    assert_eq!(c.id.load(Ordering::Relaxed), 0);
    assert_eq!(c.slot.load(Ordering::Relaxed).cast_const(), b);
    // The interrupted update ends.
    c.id.store(2, Ordering::Relaxed);
    c.seq.store(4, Ordering::Relaxed);
    assert_eq!(c.get(2), Some(b));
    c.clear();
    assert_eq!(c.get(2), None);
    // A lookup interrupted by a clear (after reading `seq` and the
    // pair) misses.
    c.set(2, b);
    let g1 = c.seq.load(Ordering::Relaxed);
    c.clear();
    c.id.store(2, Ordering::Relaxed); // as if read before the clear
    assert_ne!(c.seq.load(Ordering::Relaxed), g1);
    c.id.store(0, Ordering::Relaxed);
    // An update interrupted by a clear ends empty, and even.
    let g = c.seq.load(Ordering::Relaxed);
    c.seq.store(g + 1, Ordering::Relaxed);
    c.id.store(0, Ordering::Relaxed);
    c.clear(); // the handler, after the update's first stores
    assert_eq!(c.seq.load(Ordering::Relaxed) & 1, 1);
    c.slot.store(a.cast_mut(), Ordering::Relaxed);
    c.id.store(1, Ordering::Relaxed);
    // A lookup in a handler here (seq odd, id set) misses.
    assert_eq!(c.get(1), None);
    // The update's end, as `set` does it.
    assert!(
        c.seq
            .compare_exchange(g + 1, g + 2, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    );
    c.id.store(0, Ordering::Relaxed);
    c.seq.fetch_add(1, Ordering::Relaxed);
    assert_eq!(c.seq.load(Ordering::Relaxed) & 1, 0);
    assert_eq!(c.get(1), None);
    c.set(1, a);
    assert_eq!(c.get(1), Some(a));
}
