//! Adversarial review (core: RCU readers, fork, lockdep, page): each test
//! demonstrates one defect and fails on the code it was written against.

mod common;

use common::counting_alloc::{CountingAlloc, thread_allocs};

use krcu::Domain;
use krcu::rcu::{Rcu, RcuConfig, ReadGuard};
use std::cell::RefCell;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

/// A private instance that lives for the whole process (guards in
/// thread-locals need `'static`).
fn leaked_rcu() -> &'static Rcu {
    Box::leak(Box::new(Rcu::new(Domain::global(), RcuConfig::default())))
}

/// Whether a `synchronize` on `rcu` started now ends within `within`
/// (the thread is left to finish on its own if it does not).
fn synchronize_ends_within(rcu: &'static Rcu, within: Duration) -> bool {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        rcu.synchronize();
        let _ = tx.send(());
    });
    rx.recv_timeout(within).is_ok()
}

const HOLD: Duration = Duration::from_millis(600);
const WATCHDOG: Duration = Duration::from_secs(10);

/// A thread-local's destructor's line to the main thread: it says when it
/// is inside its read-side section, then waits for the main thread's word.
struct Meet {
    to_main: Sender<()>,
    from_main: Receiver<()>,
}

impl Meet {
    fn inside_then_wait(&self) {
        let _ = self.to_main.send(());
        let _ = self.from_main.recv_timeout(WATCHDOG);
    }
}

/// Spawns a thread that runs `start` with its end of a [`Meet`] (to keep
/// in a thread-local whose destructor reads under `rcu` at the thread's
/// exit); once that destructor is inside its section, runs `meanwhile`,
/// then returns whether a grace period of `rcu` ended within `HOLD`
/// (it must not), after letting the destructor finish.
fn grace_period_ends_under_a_destructor(
    rcu: &'static Rcu,
    start: impl FnOnce(Meet) + Send + 'static,
    meanwhile: impl FnOnce(),
) -> bool {
    let (to_main, from_thread) = mpsc::channel();
    let (to_thread, from_main) = mpsc::channel();
    let t = std::thread::spawn(move || start(Meet { to_main, from_main }));
    from_thread
        .recv_timeout(WATCHDOG)
        .expect("the thread-local destructor never ran");
    meanwhile();
    let ended = synchronize_ends_within(rcu, HOLD);
    to_thread.send(()).unwrap();
    t.join().unwrap();
    ended
}

// ---------------------------------------------------------------------------
// 1. A guard kept in a thread-local that is destroyed after the thread's
//    registration list: the slot is abandoned while the section is still
//    open and running (in the thread-local's destructor), so grace periods
//    stop waiting for a live reader.

/// Held in a thread-local: its destructor runs with the guard still open,
/// tells the main thread, and waits for its word before closing it.
struct GuardInTls {
    meet: Meet,
    guard: Option<ReadGuard<'static>>,
}

impl Drop for GuardInTls {
    fn drop(&mut self) {
        // The section is open here: this destructor may still read what
        // it protects.
        self.meet.inside_then_wait();
        drop(self.guard.take());
    }
}

thread_local! {
    static GUARD_IN_TLS: RefCell<Option<GuardInTls>> = const { RefCell::new(None) };
}

#[test]
fn guard_in_thread_local_is_waited_for_at_thread_exit() {
    let rcu = leaked_rcu();
    let start = move |meet| {
        // This thread-local first, so that its destructor is registered
        // before (and so runs after) the reader registration list's.
        GUARD_IN_TLS.with(|_| {});
        let guard = rcu.read_lock();
        GUARD_IN_TLS.with(|g| {
            *g.borrow_mut() = Some(GuardInTls {
                meet,
                guard: Some(guard),
            })
        });
    };
    // The reader is inside its section (in its destructor): a grace period
    // must not end.
    let ended = grace_period_ends_under_a_destructor(rcu, start, || {});
    assert!(
        !ended,
        "synchronize() returned while a reader was inside its read-side section \
         (guard held in a thread-local destroyed after the registration list)"
    );
}

// ---------------------------------------------------------------------------
// 2. A ReaderHandle made and dropped during thread teardown releases its slot
//    to the free list but leaves the one-entry cache pointing at it: the
//    thread's next `read_lock` uses a free slot, which another thread then
//    takes; that thread's exit abandons it with the first thread's section
//    open, and grace periods stop waiting for the first thread.

struct TeardownReader {
    rcu: &'static Rcu,
    meet: Meet,
}

impl Drop for TeardownReader {
    fn drop(&mut self) {
        // The registration list is gone: this handle gets a slot of its own,
        // and its drop releases it.
        drop(self.rcu.register_thread());
        let guard = self.rcu.read_lock();
        self.meet.inside_then_wait();
        drop(guard);
    }
}

thread_local! {
    static TEARDOWN_READER: RefCell<Option<TeardownReader>> = const { RefCell::new(None) };
}

#[test]
fn handle_dropped_in_teardown_leaves_no_stale_slot_cache() {
    let rcu = leaked_rcu();
    let start = move |meet| {
        TEARDOWN_READER.with(|_| {});
        // Registers this thread (the registration list's destructor comes
        // after the thread-local above's in registration order, so it runs
        // first).
        drop(rcu.read_lock());
        TEARDOWN_READER.with(|r| *r.borrow_mut() = Some(TeardownReader { rcu, meet }));
    };
    // Another thread reads once and exits.
    let another = || {
        std::thread::spawn(move || drop(rcu.read_lock()))
            .join()
            .unwrap()
    };
    let ended = grace_period_ends_under_a_destructor(rcu, start, another);
    assert!(
        !ended,
        "synchronize() returned while a reader was inside its read-side section \
         (its slot was shared with another thread after a teardown handle)"
    );
}

// ---------------------------------------------------------------------------
// 3. fork(): the child frees the parent's abandoned slots (a thread that
//    exited with a leaked guard) but keeps their `abandoned` flag, so the
//    child's next reader in that slot is never waited for; and the slot is
//    uncounted twice (the reader count wraps).

/// Forks; the child runs `work` and exits with its code; returns the code
/// (the child is killed after `WATCHDOG`).
fn fork_and_wait(work: impl FnOnce() -> i32) -> i32 {
    common::child::fork_run("fork_and_wait", WATCHDOG * 2, work)
}

/// Forks on another thread (the grandchild only `_exit`s) and reaps the
/// grandchild; returns whether `fork()` returned within `limit` (it does
/// not when its prepare handler deadlocks).
fn forks_within(limit: Duration) -> bool {
    let (forked, done) = mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: fork has no preconditions; the grandchild only _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the grandchild at once.
            unsafe { libc::_exit(0) }
        }
        let mut status = 0;
        // SAFETY: reaping our own child with a valid status pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let _ = forked.send(());
    });
    done.recv_timeout(limit).is_ok()
}

#[test]
fn fork_child_reuses_abandoned_slot_and_grace_periods_ignore_it() {
    let rcu = leaked_rcu();
    // A thread exits with a leaked guard: its slot is abandoned.
    std::thread::spawn(move || core::mem::forget(rcu.read_lock()))
        .join()
        .unwrap();
    assert_eq!(rcu.stats().readers, 0);
    let code = fork_and_wait(move || {
        let mut code = 0;
        if rcu.stats().readers != 0 {
            code |= 2; // the reader count wrapped
        }
        let (to_main, from_reader) = mpsc::channel();
        let (to_reader, from_main) = mpsc::channel::<()>();
        let r = std::thread::spawn(move || {
            let g = rcu.read_lock();
            to_main.send(()).unwrap();
            let _ = from_main.recv_timeout(WATCHDOG);
            drop(g);
        });
        from_reader.recv_timeout(WATCHDOG).unwrap();
        if synchronize_ends_within(rcu, HOLD) {
            code |= 1; // a grace period ended under a live reader
        }
        to_reader.send(()).unwrap();
        r.join().unwrap();
        code
    });
    assert_eq!(
        code & 1,
        0,
        "in the child, synchronize() returned while a reader was inside its section \
         (its slot was the parent's abandoned one)"
    );
    assert_eq!(
        code & 2,
        0,
        "in the child, the registered-reader count wrapped below zero"
    );
    assert_eq!(code, 0, "child exit code {code}");
}

// ---------------------------------------------------------------------------
// 4. fork() deadlock: the prepare handler holds the instance registry lock
//    while it waits for the grace period in progress; a reader of that grace
//    period that builds an instance (`Rcu::new`, or the first use of
//    `rcu::global()`) inside its section blocks on the registry lock: the
//    fork never returns. The forking thread is not a reader.

#[test]
fn fork_does_not_deadlock_with_reader_building_an_instance() {
    // Run in a child process: the deadlock keeps the registry lock held
    // for good, which would hang every other test of this binary.
    let code = fork_and_wait(|| {
        let a = leaked_rcu();
        let (to_main, from_reader) = mpsc::channel();
        std::thread::spawn(move || {
            let g = a.read_lock();
            to_main.send(()).unwrap();
            // Meanwhile a grace period starts and a fork is prepared.
            std::thread::sleep(Duration::from_millis(300));
            // Inside the section: a new instance (e.g. `rcu::global()`'s
            // first use).
            let b = Rcu::new(Domain::global(), RcuConfig::default());
            drop(g);
            drop(b);
        });
        from_reader.recv_timeout(WATCHDOG).unwrap();
        // A grace period waits for the reader.
        std::thread::spawn(move || a.synchronize());
        std::thread::sleep(Duration::from_millis(50));
        // fork() never returning is the deadlock.
        if forks_within(Duration::from_secs(8)) {
            0
        } else {
            1
        }
    });
    assert_eq!(
        code, 0,
        "fork() deadlocked: its prepare handler holds the instance registry while \
         waiting for a grace period whose reader is building an instance"
    );
}

// ---------------------------------------------------------------------------
// 5. fork(): a slot of a parent thread that held a ReaderHandle is freed in
//    the child with its handle count left as it was, so the child thread
//    that gets it next never releases it (the slot leaks; the reader count
//    never goes back).

#[test]
fn fork_child_frees_slots_of_handle_holders_cleanly() {
    let rcu = leaked_rcu();
    let (to_main, from_thread) = mpsc::channel();
    let (to_thread, from_main) = mpsc::channel::<()>();
    // A parent thread holds a handle across the fork.
    let t = std::thread::spawn(move || {
        let h = rcu.register_thread();
        to_main.send(()).unwrap();
        let _ = from_main.recv_timeout(WATCHDOG);
        drop(h);
    });
    from_thread.recv_timeout(WATCHDOG).unwrap();
    assert_eq!(rcu.stats().readers, 1);
    let code = fork_and_wait(move || {
        // The holder does not exist here.
        if rcu.stats().readers != 0 {
            return 2;
        }
        // A child thread reads once and exits: it unregisters.
        std::thread::spawn(move || drop(rcu.read_lock()))
            .join()
            .unwrap();
        if rcu.stats().readers != 0 {
            return 1;
        }
        0
    });
    to_thread.send(()).unwrap();
    t.join().unwrap();
    assert_eq!(
        code, 0,
        "in the child, a thread that exited stayed registered (code 1: the slot \
         kept the parent's handle count) or the count was wrong after fork (2)"
    );
}

// ---------------------------------------------------------------------------
// 6. SlabCache::free with a destructor that panics: the object is marked
//    free and dropped but never returned to its slab, so the slab (and its
//    pages) can never go back: a lost object.

struct PanicOnDrop(#[allow(dead_code)] u64, bool);

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if self.1 {
            panic!("destructor panics (on purpose)");
        }
    }
}

#[test]
fn slab_free_with_panicking_destructor_loses_no_object() {
    use krcu::page::{Gfp, Watermarks};
    use krcu::slab::SlabCache;
    let d = Domain::builder().cpus(1).build();
    let pa = common::pages::quiet_allocator(&d, 16 << 20, Watermarks::NONE);
    let cache = SlabCache::<PanicOnDrop>::new(&pa, "boom").unwrap();
    let good = cache
        .alloc(Gfp::KERNEL, PanicOnDrop(1, false))
        .ok()
        .unwrap();
    let bad = cache.alloc(Gfp::KERNEL, PanicOnDrop(2, true)).ok().unwrap();
    // SAFETY: both came from this cache's alloc, hold initialised values,
    // and are not used afterwards.
    unsafe { cache.free(good) };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: as above.
        unsafe { cache.free(bad) }
    }));
    assert!(r.is_err(), "the destructor's panic propagates");
    cache.shrink();
    assert_eq!(
        cache.stats().slabs,
        0,
        "every object was freed, yet a slab stays: the object whose destructor \
         panicked was never returned to it"
    );
}

// ---------------------------------------------------------------------------
// 7. `rcu::call_rcu_box` (the process-wide instance's `call_rcu`, documented
//    as callable from a signal handler) builds `rcu::global()` on first use:
//    inside a signal handler it allocates, takes locks and spawns the worker.

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

struct SigNode {
    rcu: krcu::rcu::RcuHead,
}

// SAFETY: `rcu` is an RcuHead field of SigNode.
unsafe impl krcu::rcu::HasRcuHead for SigNode {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(SigNode, rcu);
}

static SIG_NODE: std::sync::atomic::AtomicPtr<SigNode> =
    std::sync::atomic::AtomicPtr::new(core::ptr::null_mut());
static SIG_ALLOCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

extern "C" fn call_rcu_in_handler(_: libc::c_int) {
    let _hardirq = krcu::context::enter_hardirq();
    let p = SIG_NODE.swap(core::ptr::null_mut(), std::sync::atomic::Ordering::SeqCst);
    if p.is_null() {
        return;
    }
    let before = thread_allocs();
    // SAFETY: `p` came from Box::into_raw and is taken out of SIG_NODE once.
    krcu::rcu::call_rcu_box(unsafe { Box::from_raw(p) });
    let after = thread_allocs();
    SIG_ALLOCS.store(after - before, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn global_call_rcu_in_signal_handler_does_not_allocate() {
    // In a child process, where nothing has used `rcu::global()` yet (the
    // parent's tests do not).
    let code = fork_and_wait(|| {
        let node = Box::new(SigNode {
            rcu: krcu::rcu::RcuHead::new(),
        });
        SIG_NODE.store(Box::into_raw(node), std::sync::atomic::Ordering::SeqCst);
        // SAFETY: the handler is run by the raise below, on this thread,
        // before it returns.
        unsafe { common::set_handler(libc::SIGUSR2, call_rcu_in_handler, 0) };
        // SAFETY: raise has no preconditions.
        unsafe { libc::raise(libc::SIGUSR2) };
        let n = SIG_ALLOCS.load(std::sync::atomic::Ordering::SeqCst);
        if n == 0 { 0 } else { 1 }
    });
    assert_eq!(
        code, 0,
        "rcu::call_rcu_box in a signal handler allocated (it built rcu::global() \
         there: allocation, locks and a thread spawn in hardirq context)"
    );
}

// ---------------------------------------------------------------------------
// 8. A thread that reads in a thread-local destructor (after its
//    registration list is gone) takes a slot that is never released: every
//    such thread leaks a slot for good (and the registry panics once 65536
//    are gone).

struct ReadsAtExit(&'static Rcu);

impl Drop for ReadsAtExit {
    fn drop(&mut self) {
        drop(self.0.read_lock());
    }
}

thread_local! {
    static READS_AT_EXIT: RefCell<Option<ReadsAtExit>> = const { RefCell::new(None) };
}

#[test]
fn reading_in_thread_local_destructor_leaks_no_slot() {
    let rcu = leaked_rcu();
    for _ in 0..50 {
        std::thread::spawn(move || {
            READS_AT_EXIT.with(|_| {});
            drop(rcu.read_lock());
            READS_AT_EXIT.with(|r| *r.borrow_mut() = Some(ReadsAtExit(rcu)));
        })
        .join()
        .unwrap();
    }
    assert_eq!(
        rcu.stats().readers,
        0,
        "threads that exited stay registered (slots taken in thread-local \
         destructors are never released)"
    );
}

// ---------------------------------------------------------------------------
// 9. fork() deadlock: an RCU callback that drops another instance (an object
//    owning an `Rcu`, freed after a grace period) joins that instance's
//    worker; a fork prepared meanwhile parks that worker and waits for the
//    callback's worker to park too: neither ever does.

struct OwnsInstance {
    inner: Option<Rcu>,
    in_callback: Option<Sender<()>>,
    rcu: krcu::rcu::RcuHead,
}

// SAFETY: `rcu` is an RcuHead field of OwnsInstance.
unsafe impl krcu::rcu::HasRcuHead for OwnsInstance {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(OwnsInstance, rcu);
}

impl Drop for OwnsInstance {
    fn drop(&mut self) {
        if let Some(tx) = self.in_callback.take() {
            let _ = tx.send(());
        }
        // Meanwhile another thread forks.
        std::thread::sleep(Duration::from_millis(300));
        drop(self.inner.take());
    }
}

#[test]
fn fork_does_not_deadlock_with_callback_dropping_an_instance() {
    let code = fork_and_wait(|| {
        let b = leaked_rcu();
        let (tx, in_callback) = mpsc::channel();
        b.call_rcu_box(Box::new(OwnsInstance {
            inner: Some(Rcu::new(Domain::global(), RcuConfig::default())),
            in_callback: Some(tx),
            rcu: krcu::rcu::RcuHead::new(),
        }));
        in_callback.recv_timeout(WATCHDOG).unwrap();
        if forks_within(Duration::from_secs(8)) {
            0
        } else {
            1
        }
    });
    assert_eq!(
        code, 0,
        "fork() deadlocked: an RCU callback dropping another instance joins a worker \
         that the fork's prepare handler parked"
    );
}
