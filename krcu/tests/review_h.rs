//! Adversarial review H of the fixes after review G (instance-typed guards,
//! `ReaderHandle<'a>`, abandoned sections ended at teardown, the
//! validator's check after the queue, allocating updates refused on
//! real-time threads). Every test here fails on the reviewed code.
//!
//! Tests whose failure is a hang run their work in a child process (this
//! binary run again for one test, with `REVIEW_H_CHILD` set) with a time
//! limit.

mod common;

use krcu::cell::RcuCell;
use krcu::lockdep::ReportHandler;
use krcu::rcu::{HasRcuHead, Rcu, RcuConfig, RcuHead};
use krcu::{Domain, Krcu};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

#[global_allocator]
static ALLOC: common::counting_alloc::CountingAlloc = common::counting_alloc::CountingAlloc;

/// Runs `f` on the calling thread and returns the allocations it made.
fn count_allocs<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = common::counting_alloc::thread_allocs();
    let r = f();
    let n = common::counting_alloc::thread_allocs() - before;
    (r, usize::try_from(n).expect("a count"))
}

const CHILD_VAR: &str = "REVIEW_H_CHILD";

/// In the child (`REVIEW_H_CHILD` set), true: the test `name` does its
/// work. In the parent, runs `name` alone in a fresh process, fails unless
/// it passed within 30 s, and returns false.
fn in_child(name: &str) -> bool {
    common::child::in_child_else_run(CHILD_VAR, name, Duration::from_secs(30))
}

/// Drops `x` (an instance), saying so before and after: a hang in the drop
/// shows in the child's output.
fn drop_loudly<T>(what: &str, x: T) {
    eprintln!("dropping the {what}");
    drop(x);
    eprintln!("{what} dropped");
}

/// Retires an object with `kvfree_rcu_mightsleep` into `k` with preemption
/// disabled (where the validator reports a sleep), while a reader of k's
/// RCU on another thread is inside a section that began before the
/// retire. Returns whether the call panicked and how many objects were
/// dropped while that reader was still in its section.
fn mightsleep_under_a_reader(k: &Krcu) -> (bool, usize) {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            // A reader of k's RCU, inside its section from before the
            // retire until after the count below.
            let _g = k.rcu().read_lock();
            entered_tx.send(()).unwrap();
            let _ = leave_rx.recv_timeout(Duration::from_secs(30));
        });
        entered_rx.recv().unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _atomic = krcu::context::preempt_disable();
            k.kvfree_rcu_mightsleep(Box::new(Counted(dropped.clone())))
        }));
        let n = dropped.load(Ordering::SeqCst);
        leave_tx.send(()).unwrap();
        (r.is_err(), n)
    })
}

struct Counted(Arc<AtomicUsize>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Obj {
    head: RcuHead,
    _v: u64,
}
// SAFETY: `head` is an RcuHead field of Obj.
unsafe impl HasRcuHead for Obj {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Obj, head);
}

fn obj() -> Box<Obj> {
    Box::new(Obj {
        head: RcuHead::new(),
        _v: 7,
    })
}

// ---------------------------------------------------------------------
// Finding 1: a panicking report handler frees a kvfree_rcu_mightsleep
// object at once, under a reader.

/// `Krcu::kvfree_rcu_mightsleep` declares that it may sleep
/// (`might_sleep`) BEFORE it takes the object over: with a report handler
/// that panics (`ReportHandler::Panic`, strict mode), called where the
/// validator reports a sleep (here with preemption disabled), the report
/// unwinds out of the call while the caller's `Box` is still a local of
/// it, and the unwind drops it: the object is freed at once, not after a
/// grace period, while a reader of the instance that began before the
/// retire (on another thread) is still inside its section and may hold a
/// reference to it. Review G's fix moved `check_reader` after the queue
/// "so a panicking report handler loses nothing", but left this earlier
/// report where it frees early. (`free_pages_rcu_mightsleep` makes the
/// same call first, but a `Page` has no destructor: it leaks, never frees
/// early.)
#[test]
fn review_h_mightsleep_report_panic_frees_the_object_under_a_reader() {
    let k = Krcu::builder()
        .arena_size(16 << 20)
        .lockdep(true)
        .report_handler(ReportHandler::Panic)
        .build()
        .unwrap();
    let (panicked, dropped_in_section) = mightsleep_under_a_reader(&k);
    k.kvfree_rcu_barrier();
    eprintln!(
        "report panicked: {panicked}; dropped while the reader was in its section: \
         {dropped_in_section}"
    );
    assert_eq!(
        dropped_in_section, 0,
        "kvfree_rcu_mightsleep's object was dropped while a reader of the instance that \
         began before the retire was still in its section (report handler panicked: \
         {panicked})"
    );
}

// ---------------------------------------------------------------------
// Finding 2: a leaked ReaderHandle's section on a gone thread is never
// abandoned, so teardown never ends it.

/// A thread leaks a `ReaderHandle` and a guard it opened (`mem::forget`
/// both: safe code, in a scoped thread) and exits. At thread exit the
/// registration list and the late list keep a slot that a handle still
/// holds (`handles != 0`) without making it an orphan
/// (`release_at_exit` returns early), so the reaper never looks at it: the
/// section is never counted in `abandoned_sections`, and
/// `Readers::begin_teardown` (which ends only orphans of gone threads and
/// abandoned slots) never ends it. Dropping the `Rcu` with a callback
/// queued hangs for good (its worker's last grace period waits for the
/// section), though the instance is gone and no reference loaded under
/// the guard can be left. The same program with a leaked plain guard
/// (review G, finding 1) no longer hangs.
#[test]
fn review_h_rcu_drop_with_leaked_handle_section_hangs() {
    if !in_child("review_h_rcu_drop_with_leaked_handle_section_hangs") {
        return;
    }
    let rcu = Rcu::new(Domain::global(), RcuConfig::default());
    std::thread::scope(|s| {
        s.spawn(|| {
            // Safe code: a handle and a guard it opened, both leaked.
            let h = rcu.register_thread();
            std::mem::forget(h.read_lock());
            std::mem::forget(h);
        });
    });
    // The thread is gone. Give the reaper time (grace periods look for
    // orphans); a leaked plain guard's section would be abandoned by now.
    rcu.call_rcu_box(obj());
    std::thread::sleep(Duration::from_millis(500));
    let st = rcu.stats();
    eprintln!(
        "after the thread exited: readers {}, abandoned_sections {}",
        st.readers, st.abandoned_sections
    );
    drop_loudly("Rcu", rcu);
}

// ---------------------------------------------------------------------
// Finding 3: a guard leaked by a live thread hangs the instance's drop.

/// A live thread leaks a guard (`mem::forget(rcu.read_lock())`) and then
/// drops the instance. The guard borrowed the instance, so once it can be
/// dropped no guard and no reference loaded under one is left: the
/// section is as dead as an abandoned one. But `begin_teardown` ends only
/// sections of threads that are gone; this thread is alive, so its
/// section holds up the worker's last grace period (`Rcu`) or the kvfree
/// barrier (`Krcu`) forever: the drop hangs. (The same in the child of a
/// `fork` whose forking thread had leaked a guard: its slot is kept.)
#[test]
fn review_h_rcu_drop_after_live_thread_leaks_guard_hangs() {
    if !in_child("review_h_rcu_drop_after_live_thread_leaks_guard_hangs") {
        return;
    }
    let rcu = Rcu::new(Domain::global(), RcuConfig::default());
    // This thread (alive throughout) leaks a guard: safe code. Once the
    // borrow ends nothing can reach a reference loaded under it.
    std::mem::forget(rcu.read_lock());
    rcu.call_rcu_box(obj());
    drop_loudly("Rcu", rcu);
}

/// As above, for a `Krcu` (its teardown's kvfree barrier waits for a grace
/// period of its RCU): another thread, alive throughout, leaked a guard of
/// its RCU and dropped its `Arc`; dropping the last `Arc` hangs.
#[test]
fn review_h_krcu_drop_after_live_thread_leaks_guard_hangs() {
    if !in_child("review_h_krcu_drop_after_live_thread_leaks_guard_hangs") {
        return;
    }
    let k = Arc::new(Krcu::builder().arena_size(16 << 20).build().unwrap());
    let (leaked_tx, leaked_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let k2 = k.clone();
    // Another thread, alive throughout, leaks a guard of k's RCU and lets
    // go of its Arc.
    let t = std::thread::spawn(move || {
        std::mem::forget(k2.rcu().read_lock());
        drop(k2);
        leaked_tx.send(()).unwrap();
        let _ = done_rx.recv_timeout(Duration::from_secs(60));
    });
    leaked_rx.recv().unwrap();
    k.kfree_rcu(obj()).unwrap();
    drop_loudly("Krcu", k);
    done_tx.send(()).unwrap();
    t.join().unwrap();
}

/// The same on the dropping thread itself: the guard it leaked still
/// counts as its open section, so `Drop for Krcu` runs its teardown inline
/// and the kvfree barrier's `rcu_barrier` panics ("called inside an RCU
/// read-side critical section of the same instance") halfway through the
/// teardown: the workers are already stopped and joined, the queued
/// objects are never freed, the spare blocks and the shrinker are not
/// released. No guard can be alive at that point (the drop needs every
/// borrow over).
#[test]
fn review_h_krcu_drop_after_own_thread_leaks_guard_panics() {
    if !in_child("review_h_krcu_drop_after_own_thread_leaks_guard_panics") {
        return;
    }
    let k = Krcu::builder().arena_size(16 << 20).build().unwrap();
    std::mem::forget(k.rcu().read_lock());
    k.kfree_rcu(obj()).unwrap();
    drop_loudly("Krcu", k);
}

// ---------------------------------------------------------------------
// Finding 4: `clear` (and the `_box` updates) allocate on a thread's first
// retire, though documented to allocate nothing.

/// `RcuCell::clear` was documented "Allocates nothing", and the type docs
/// said "Retiring (every update, `clear`, dropping the cell) never
/// allocates". On a thread that is not real-time, the first retire into
/// an instance makes the thread's kvfree front (`register_front`: a heap
/// allocation and a mutex), and the first retire of the process builds
/// `Krcu::global()` (arena, threads). The docs now say what holds: nothing
/// is allocated on a real-time thread or in hardirq (review_g's tests), and
/// on an ordinary thread nothing after its first retire, which this checks
/// (the first retire is counted too, to show the docs' caveat is real).
#[test]
fn review_h_clear_allocates_on_a_threads_first_retire() {
    let cell = RcuCell::new(1u64);
    // The process-wide instance built here, not in the measured call.
    let _ = Krcu::global();
    let cell = &cell;
    let (first, later) = std::thread::scope(|s| {
        s.spawn(move || {
            let (r, first) = count_allocs(|| cell.clear());
            r.unwrap();
            cell.store(2).unwrap();
            let (r, later) = count_allocs(|| cell.clear());
            r.unwrap();
            (first, later)
        })
        .join()
        .unwrap()
    });
    krcu::kvfree_rcu_barrier();
    eprintln!("first retire of the thread: {first} allocations");
    assert_eq!(
        later, 0,
        "RcuCell::clear allocated {later} times after the thread's first retire"
    );
}

// ---------------------------------------------------------------------
// Finding 5: the free `kvfree_rcu_mightsleep` frees its object at once
// when building the process-wide instance fails.

/// `krcu::kvfree_rcu_mightsleep(obj)` is `Krcu::global().kvfree_rcu_mightsleep(obj)`:
/// the `Box` stays a local of the free function while `Krcu::global()`
/// builds the process-wide instance. When that build fails (here: no
/// address space for the arena; equally no thread), `Krcu::global()`
/// panics ("cannot build the default instance") and the unwind drops the
/// `Box`: the object is freed at once while a reader of the global RCU
/// (which exists, and whose sections hold retired objects off) is still
/// in a section that began before the retire. `krcu::kfree_rcu`,
/// `krcu::defer` and the cells leak the box before building (a panic then
/// leaks, never frees).
#[test]
fn review_h_global_mightsleep_build_failure_frees_at_once() {
    if !in_child("review_h_global_mightsleep_build_failure_frees_at_once") {
        return;
    }
    // The global RCU exists (a reader uses it); the kfree_rcu instance
    // does not yet. The barrier makes sure its worker thread has started:
    // a thread that starts under the lowered address-space limit below
    // cannot map its signal stack, and std aborts the process.
    let _ = krcu::rcu::global();
    krcu::rcu::rcu_barrier();
    let dropped = Arc::new(AtomicUsize::new(0));
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let _g = krcu::rcu::read_lock();
        entered_tx.send(()).unwrap();
        let _ = leave_rx.recv_timeout(Duration::from_secs(30));
    });
    entered_rx.recv().unwrap();
    // Address space for small allocations, not for the default 256 MiB
    // arena: building `Krcu::global()` fails (its `expect` panics).
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let vm_pages: u64 = statm.split_whitespace().next().unwrap().parse().unwrap();
    let vm = vm_pages * 4096;
    // SAFETY: getrlimit/setrlimit with a valid rlimit pointer.
    unsafe {
        libc::getrlimit(libc::RLIMIT_AS, &mut cur);
        let lim = libc::rlimit {
            rlim_cur: vm + (64 << 20),
            rlim_max: cur.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &lim), 0);
    }
    let d = dropped.clone();
    let r = std::panic::catch_unwind(move || krcu::kvfree_rcu_mightsleep(Box::new(Counted(d))));
    let n = dropped.load(Ordering::SeqCst);
    // SAFETY: as above; the old limit back.
    unsafe {
        libc::setrlimit(libc::RLIMIT_AS, &cur);
    }
    leave_tx.send(()).unwrap();
    reader.join().unwrap();
    eprintln!(
        "kvfree_rcu_mightsleep panicked: {}; dropped while a global reader was in its \
         section: {n}",
        r.is_err()
    );
    assert_eq!(
        n, 0,
        "the object was dropped while a reader of the global RCU that began before the \
         retire was still in its section"
    );
}

// ---------------------------------------------------------------------
// Finding 6: the reaper logs under the registry lock; a tracing
// subscriber that reads under RCU deadlocks every later registration.

/// A `tracing` subscriber that reads under the process-wide RCU in every
/// event (as a filter kept in an `RcuCell` would).
struct ReadsUnderRcu;

/// Set once the global instance is built (building it logs too).
static ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl tracing::Subscriber for ReadsUnderRcu {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        if ARMED.load(Ordering::SeqCst) {
            let _g = krcu::rcu::read_lock();
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// `Readers::reap_locked` runs with the registry lock (`free`) held and
/// logs there (`tracing::error!` when it abandons a section,
/// `tracing::warn!` when it ends one at teardown). A `tracing` subscriber
/// runs on the logging thread, inside that lock: if it reads under the
/// same RCU instance on a thread not registered yet (the RCU worker, or a
/// thread in its first `read_lock`, which reaps before growing the
/// registry), its registration takes `free` again and the thread
/// deadlocks holding it. From then on every first `read_lock` of a new
/// thread (and `register_thread`, and a `fork`'s prepare handler) blocks
/// for good: a documented stall of grace periods becomes a hang of
/// readers, which krcu promises stay wait-free.
#[test]
fn review_h_reaper_logs_under_registry_lock_hangs_readers() {
    if !in_child("review_h_reaper_logs_under_registry_lock_hangs_readers") {
        return;
    }
    tracing::subscriber::set_global_default(ReadsUnderRcu).unwrap();
    let _ = krcu::rcu::global();
    ARMED.store(true, Ordering::SeqCst);
    // A thread leaks a guard of the global instance and exits: its section
    // is to be abandoned (a stall, by design).
    std::thread::spawn(|| std::mem::forget(krcu::rcu::read_lock()))
        .join()
        .unwrap();
    // A grace period on the worker finds the orphan and abandons it,
    // logging an error with the registry lock (`free`) held.
    krcu::rcu::call_rcu_box(obj());
    common::wait_for(
        "the section to be abandoned",
        Duration::from_secs(10),
        || krcu::rcu::global().stats().abandoned_sections == 1,
    );
    std::thread::sleep(Duration::from_millis(200));
    // Grace periods stall (documented); readers must still work.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        drop(krcu::rcu::read_lock());
        let _ = tx.send(());
    });
    let ok = rx.recv_timeout(Duration::from_secs(5)).is_ok();
    eprintln!("a new thread's first read_lock finished: {ok}");
    assert!(
        ok,
        "a new thread's first read_lock blocked: the registry lock is held for good"
    );
}

// ---------------------------------------------------------------------
// Finding 1, with the default report handler: a broken stderr.

/// Finding 1 needs no strict mode: with the default settings of a debug
/// build (validator on, `ReportHandler::PrintOnce`), the report is printed
/// with `eprintln!`, which panics when standard error is a broken pipe
/// (Rust ignores SIGPIPE). `kvfree_rcu_mightsleep` called with preemption
/// disabled then frees its object at once, under a reader of the
/// instance that began before the retire.
#[test]
fn review_h_mightsleep_default_handler_broken_stderr_frees_at_once() {
    if !in_child("review_h_mightsleep_default_handler_broken_stderr_frees_at_once") {
        return;
    }
    // Default settings: in debug builds the validator is on and reports
    // are printed (`ReportHandler::PrintOnce`, `eprintln!`).
    let k = Krcu::builder().arena_size(16 << 20).build().unwrap();
    // Standard error is a pipe whose reader has gone (say `prog 2>&1 |
    // head` after `head` exits); Rust ignores SIGPIPE, so a write fails
    // with EPIPE and `eprintln!` panics.
    let mut fds = [0; 2];
    // SAFETY: pipe with a valid two-int array; dup2 and close on the fds
    // it returned and on fd 2, which this process owns.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        assert_eq!(libc::dup2(fds[1], 2), 2);
        libc::close(fds[1]);
    }
    let (panicked, n) = mightsleep_under_a_reader(&k);
    // (Standard error is gone: the verdict goes to standard output.)
    println!(
        "VERDICT kvfree_rcu_mightsleep panicked: {panicked}; dropped while the reader was in \
         its section: {n}"
    );
    assert_eq!(n, 0);
}
