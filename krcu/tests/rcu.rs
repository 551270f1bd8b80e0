//! RCU: readers and grace periods, the polled API, call_rcu and
//! rcu_barrier, stall warnings, several instances side by side, and the
//! validator's hooks.

use krcu::Domain;
use krcu::lock::RawSpinLock;
use krcu::rcu::{self, GpCookie, HasRcuHead, Rcu, RcuConfig, RcuHead};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

/// Generous bound on waiting for something that must happen; only a hang
/// hits it.
const PATIENCE: Duration = Duration::from_secs(30);

fn instance() -> Rcu {
    Rcu::new(Domain::global(), RcuConfig::default())
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A reader in another thread that holds its section until told to leave.
struct HeldReader {
    leave: mpsc::Sender<()>,
    left: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn hold_reader(rcu: &Arc<Rcu>, name: &str) -> HeldReader {
    let (leave, rx) = mpsc::channel::<()>();
    let (entered_tx, entered) = mpsc::channel::<()>();
    let left = Arc::new(AtomicBool::new(false));
    let (r, l) = (rcu.clone(), left.clone());
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let g = r.read_lock();
            entered_tx.send(()).unwrap();
            rx.recv().unwrap();
            l.store(true, Ordering::SeqCst);
            drop(g);
        })
        .unwrap();
    entered.recv().unwrap();
    HeldReader {
        leave,
        left,
        thread,
    }
}

impl HeldReader {
    fn release(self) {
        self.leave.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

#[test]
fn synchronize_waits_for_a_reader_that_began_before_it() {
    for fallback in [false, true] {
        let rcu = Arc::new(Rcu::new(
            Domain::global(),
            RcuConfig::default().force_fallback_fences(fallback),
        ));
        if fallback {
            assert!(!rcu.stats().membarrier);
        }
        let reader = hold_reader(&rcu, "held-reader");
        let left = reader.left.clone();
        let r = rcu.clone();
        let writer = std::thread::spawn(move || {
            r.synchronize();
            left.load(Ordering::SeqCst)
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(!writer.is_finished(), "synchronize returned under a reader");
        reader.release();
        assert!(
            writer.join().unwrap(),
            "synchronize returned before the reader left"
        );
        let e = rcu.clone();
        let reader = hold_reader(&rcu, "held-reader-2");
        let left = reader.left.clone();
        let writer = std::thread::spawn(move || {
            e.synchronize_expedited();
            left.load(Ordering::SeqCst)
        });
        reader.release();
        assert!(writer.join().unwrap());
        let s = rcu.stats();
        assert!(
            s.grace_periods >= 1 && s.expedited_grace_periods >= 1,
            "{s:?}"
        );
    }
}

#[test]
fn readers_nest_and_do_not_block_their_own_later_grace_periods() {
    let rcu = instance();
    {
        let _a = rcu.read_lock();
        let h = rcu.register_thread();
        let _b = h.read_lock();
        let _c = rcu.read_lock();
        assert!(rcu.is_reading());
        assert_eq!(rcu.stats().readers, 1, "one slot per (thread, instance)");
    }
    assert!(!rcu.is_reading());
    rcu.synchronize();
    rcu.synchronize_expedited();
}

#[test]
fn registration_ends_with_the_handle_and_with_the_thread() {
    let rcu = Arc::new(instance());
    let h = rcu.register_thread();
    let h2 = rcu.register_thread();
    assert_eq!(rcu.stats().readers, 1);
    drop(h);
    assert_eq!(rcu.stats().readers, 1, "another handle is alive");
    drop(h2);
    assert_eq!(rcu.stats().readers, 0);
    let r = rcu.clone();
    std::thread::spawn(move || {
        drop(r.read_lock());
        assert_eq!(r.stats().readers, 1);
    })
    .join()
    .unwrap();
    assert_eq!(rcu.stats().readers, 0, "thread exit unregisters");
    // A thread that leaks its guard and exits leaves its section open for
    // good (references loaded under a leaked guard may live on): grace
    // periods stall on it, and only the instance's drop ends it.
    let r = rcu.clone();
    std::thread::spawn(move || core::mem::forget(r.read_lock()))
        .join()
        .unwrap();
    let cookie = rcu.start_poll();
    let start = std::time::Instant::now();
    while rcu.stats().abandoned_sections == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(rcu.stats().abandoned_sections, 1, "the leaked section");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !rcu.poll_state(cookie),
        "a grace period ended past a leaked guard's section"
    );
    // A handle dropped inside a section keeps the slot until the thread ends.
    let r = rcu.clone();
    std::thread::spawn(move || {
        let h = r.register_thread();
        let g = r.read_lock();
        drop(h);
        assert!(r.is_reading());
        drop(g);
    })
    .join()
    .unwrap();
    assert_eq!(rcu.stats().readers, 0);
}

#[test]
fn instances_are_independent() {
    let a = Arc::new(instance());
    let b = instance();
    let reader = hold_reader(&a, "reader-of-a");
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            b.synchronize();
            b.synchronize_expedited();
            tx.send(()).unwrap();
        });
        rx.recv_timeout(PATIENCE)
            .expect("a reader of instance A held up instance B");
    });
    // A thread reading under both, alternating (the slot cache misses).
    for _ in 0..3 {
        let _ga = a.read_lock();
        let _gb = b.read_lock();
        assert!(a.is_reading() && b.is_reading());
    }
    reader.release();
    a.synchronize();
}

#[test]
fn cookie_polls_false_before_and_true_after_a_grace_period() {
    let rcu = instance();
    let c = rcu.get_state();
    assert!(!rcu.poll_state(c), "no grace period has run since");
    rcu.synchronize();
    assert!(rcu.poll_state(c));
    assert!(rcu.poll_state(GpCookie::COMPLETED));

    // cond_synchronize on an elapsed cookie runs no grace period.
    let before = rcu.stats();
    rcu.cond_synchronize(c);
    let after = rcu.stats();
    assert_eq!(
        (before.gp_seq, before.grace_periods),
        (after.gp_seq, after.grace_periods)
    );
    // On a fresh one it does.
    let c2 = rcu.get_state();
    rcu.cond_synchronize(c2);
    assert!(rcu.poll_state(c2));
    assert!(rcu.stats().grace_periods > after.grace_periods);
}

#[test]
fn start_poll_gets_the_worker_to_run_the_grace_period() {
    let rcu = instance();
    let c = rcu.start_poll();
    wait_until("the polled grace period", || rcu.poll_state(c));
    // A cookie taken while a reader holds cannot complete until it leaves.
    let rcu = Arc::new(rcu);
    let reader = hold_reader(&rcu, "poll-blocker");
    let c = rcu.start_poll();
    std::thread::sleep(Duration::from_millis(20));
    assert!(!rcu.poll_state(c), "grace period completed under a reader");
    reader.release();
    wait_until("the polled grace period", || rcu.poll_state(c));
}

#[test]
fn concurrent_synchronize_calls_each_get_a_full_grace_period() {
    let rcu = Arc::new(instance());
    let n = 4;
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (r, b) = (rcu.clone(), start.clone());
            std::thread::spawn(move || {
                b.wait();
                for _ in 0..50 {
                    let c = r.get_state();
                    r.synchronize();
                    assert!(r.poll_state(c));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = rcu.stats();
    assert!(
        s.grace_periods <= 200,
        "at most one grace period per call: {s:?}"
    );
}

struct Obj {
    rcu: RcuHead,
    freed: Arc<AtomicUsize>,
}

// SAFETY: the offset is that of the embedded head.
unsafe impl HasRcuHead for Obj {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Obj, rcu);
}

impl Drop for Obj {
    fn drop(&mut self) {
        self.freed.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn call_rcu_runs_after_readers_leave_and_rcu_barrier_waits_for_it() {
    let rcu = Arc::new(instance());
    let freed = Arc::new(AtomicUsize::new(0));
    let reader = hold_reader(&rcu, "cb-blocker");
    for _ in 0..100 {
        rcu.call_rcu_box(Box::new(Obj {
            rcu: RcuHead::new(),
            freed: freed.clone(),
        }));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(freed.load(Ordering::SeqCst), 0, "freed under a reader");
    reader.release();
    rcu.rcu_barrier();
    assert_eq!(freed.load(Ordering::SeqCst), 100);
    let s = rcu.stats();
    let expected = 100 + rcu.domain().cpus() as u64; // and a barrier head per CPU
    assert_eq!(
        (s.callbacks_taken, s.callbacks_invoked),
        (expected, expected)
    );
    assert_eq!(s.barriers, 1);
}

#[test]
fn rcu_barrier_from_many_threads_and_cpus() {
    let rcu = Arc::new(Rcu::new(
        &Domain::builder().cpus(3).build(),
        RcuConfig::default().batch_limit(7),
    ));
    let freed = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for i in 0..500u32 {
                    rcu.call_rcu_box(Box::new(Obj {
                        rcu: RcuHead::new(),
                        freed: freed.clone(),
                    }));
                    if i.is_multiple_of(100) {
                        rcu.rcu_barrier();
                    }
                }
                rcu.rcu_barrier();
            });
        }
    });
    assert_eq!(freed.load(Ordering::SeqCst), 2000);
}

#[test]
fn dropping_the_instance_runs_every_queued_callback() {
    let freed = Arc::new(AtomicUsize::new(0));
    let rcu = instance();
    for _ in 0..1000 {
        rcu.call_rcu_box(Box::new(Obj {
            rcu: RcuHead::new(),
            freed: freed.clone(),
        }));
    }
    drop(rcu);
    assert_eq!(freed.load(Ordering::SeqCst), 1000);
}

struct Panicky(#[allow(dead_code)] RcuHead);
// SAFETY: the head is the only field, at offset 0.
unsafe impl HasRcuHead for Panicky {
    const RCU_HEAD_OFFSET: usize = 0;
    fn rcu_callback(self: Box<Self>) {
        panic!("callback panics on purpose");
    }
}

#[test]
fn a_panicking_callback_does_not_stop_the_worker() {
    let rcu = instance();
    let freed = Arc::new(AtomicUsize::new(0));
    rcu.call_rcu_box(Box::new(Panicky(RcuHead::new())));
    rcu.call_rcu_box(Box::new(Obj {
        rcu: RcuHead::new(),
        freed: freed.clone(),
    }));
    rcu.rcu_barrier();
    assert_eq!(freed.load(Ordering::SeqCst), 1);
    assert_eq!(rcu.stats().callback_panics, 1);
}

static RAW_RAN: AtomicUsize = AtomicUsize::new(0);

/// # Safety
/// `head` is one of the static heads below.
unsafe fn count_raw(_head: core::ptr::NonNull<RcuHead>) {
    RAW_RAN.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn raw_call_rcu_with_a_raw_spinlock_held() {
    static HEADS: [RcuHead; 4] = [
        RcuHead::new(),
        RcuHead::new(),
        RcuHead::new(),
        RcuHead::new(),
    ];
    let rcu = instance();
    let lock = RawSpinLock::named(rcu.domain(), "test->raw", ());
    {
        let _g = lock.lock();
        for h in &HEADS {
            // SAFETY: static heads, queued once each, never moved.
            unsafe { rcu.call_rcu(core::ptr::NonNull::from(h), count_raw) };
        }
    }
    rcu.rcu_barrier();
    assert_eq!(RAW_RAN.load(Ordering::SeqCst), 4);
}

#[test]
fn a_stalled_reader_is_named() {
    let rcu = Arc::new(Rcu::new(
        Domain::global(),
        RcuConfig::default().stall_timeout(Duration::from_millis(30)),
    ));
    let reader = hold_reader(&rcu, "stalling-reader");
    let r = rcu.clone();
    let writer = std::thread::spawn(move || r.synchronize());
    wait_until("a stall warning", || rcu.stats().stalls > 0);
    reader.release();
    writer.join().unwrap();
    let reports = rcu.stall_reports();
    assert!(!reports.is_empty());
    let r = &reports[0];
    assert_eq!(r.thread, "stalling-reader");
    assert!(r.tid > 0);
    assert!(r.waited >= Duration::from_millis(30));
    assert!(r.to_string().contains("\"stalling-reader\""), "{r}");
}

/// The validator's hooks, where it is compiled in.
#[cfg(any(debug_assertions, feature = "lockdep"))]
mod validator {
    use super::*;
    use krcu::lock::Mutex;
    use krcu::lockdep::{ReportHandler, ReportKind, ReportLog};

    fn checked() -> (Rcu, ReportLog) {
        let log = ReportLog::new();
        let d = Domain::builder()
            .lockdep(true)
            .report_handler(ReportHandler::Collect(log.clone()))
            .build();
        (Rcu::new(&d, RcuConfig::default()), log)
    }

    const SLEEP: ReportKind = ReportKind::SleepInInvalidContext;

    #[test]
    fn synchronize_and_barrier_in_atomic_context_are_reported() {
        let (rcu, log) = checked();
        let lock = RawSpinLock::named(rcu.domain(), "test->atomic", ());
        {
            let _g = lock.lock();
            rcu.synchronize();
            rcu.synchronize_expedited();
            rcu.rcu_barrier();
            rcu.cond_synchronize(rcu.get_state());
        }
        let reports = log.take();
        assert_eq!(reports.len(), 4, "{reports:#?}");
        for r in &reports {
            assert_eq!(r.kind, SLEEP);
            assert!(
                r.at.contains("tests/rcu.rs"),
                "reported at the caller: {}",
                r.at
            );
            assert_eq!(r.held.len(), 1);
            assert_eq!(r.held[0].name, "test->atomic");
        }
        rcu.synchronize();
        assert!(log.is_empty(), "{:#?}", log.reports());
    }

    #[test]
    fn synchronize_inside_own_reader_is_reported_then_panics() {
        let (rcu, log) = checked();
        for op in 0..3 {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _g = rcu.read_lock();
                match op {
                    0 => rcu.synchronize(),
                    1 => rcu.synchronize_expedited(),
                    _ => rcu.rcu_barrier(),
                }
            }));
            let msg = r.expect_err("must not hang or return");
            let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains("would wait for itself forever"), "{msg}");
            assert_eq!(log.count(SLEEP), 1, "{:#?}", log.reports());
            assert!(log.take()[0].text.contains("rcu"));
        }
        assert!(!rcu.is_reading(), "the guard was released while unwinding");
        rcu.synchronize();
    }

    #[test]
    fn synchronize_inside_another_instances_reader_is_reported_but_completes() {
        let (rcu, log) = checked();
        let other = instance();
        {
            let _g = other.read_lock();
            rcu.synchronize();
        }
        assert_eq!(log.count(SLEEP), 1);
    }

    #[test]
    fn sleeping_inside_a_reader_is_reported() {
        let (rcu, log) = checked();
        let m = Mutex::named(rcu.domain(), "test->mutex", ());
        {
            let _g = rcu.read_lock();
            rcu.domain().might_sleep();
            drop(m.lock());
        }
        let reports = log.take();
        assert!(
            reports.iter().filter(|r| r.kind == SLEEP).count() >= 2,
            "{reports:#?}"
        );
        assert!(
            reports
                .iter()
                .any(|r| r.kind == ReportKind::InvalidWaitContext),
            "a mutex in a reader exceeds CONFIG: {reports:#?}"
        );
        // A handle's reader counts too, and outside readers nothing is
        // reported.
        let h = rcu.register_thread();
        {
            let _g = h.read_lock();
            rcu.domain().might_sleep();
        }
        assert_eq!(log.count(SLEEP), 1);
        rcu.domain().might_sleep();
        drop(m.lock());
        assert_eq!(log.len(), 1);
    }
}

#[test]
fn the_global_instance_serves_the_free_functions() {
    let freed = Arc::new(AtomicUsize::new(0));
    let c = rcu::get_state();
    {
        let _g = rcu::read_lock();
        assert!(rcu::global().is_reading());
        rcu::call_rcu_box(Box::new(Obj {
            rcu: RcuHead::new(),
            freed: freed.clone(),
        }));
    }
    rcu::synchronize();
    assert!(rcu::poll_state(c));
    rcu::cond_synchronize(c);
    let p = rcu::start_poll();
    rcu::synchronize_expedited();
    assert!(rcu::poll_state(p));
    let h = rcu::register_thread();
    drop(h.read_lock());
    rcu::rcu_barrier();
    assert_eq!(freed.load(Ordering::SeqCst), 1);
}

thread_local! {
    /// Reader handles kept past the thread's registration list: touched
    /// before the thread registers, so its destructor runs after the list's
    /// (thread-local destructors run in reverse order of first use).
    static KEPT: std::cell::RefCell<Vec<rcu::ReaderHandle>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

#[test]
fn handles_outliving_the_registration_list_release_their_slot_once() {
    // Leaked: the handles kept in a thread-local borrow it for 'static.
    let rcu: &'static Rcu = Box::leak(Box::new(instance()));
    let r = rcu;
    std::thread::spawn(move || {
        KEPT.with(|_| ());
        let (h1, h2) = (r.register_thread(), r.register_thread());
        KEPT.with(|k| k.borrow_mut().extend([h1, h2]));
    })
    .join()
    .unwrap();

    // Two live threads now register: they must get different slots. A
    // holds its section open while B enters and leaves one, then exits;
    // A's section must still be open (B's exit closes only its own slot).
    let (a_in_tx, a_in) = mpsc::channel::<()>();
    let (b_done_tx, b_done) = mpsc::channel::<()>();
    let (r, a_reading_after) = (rcu, Arc::new(AtomicBool::new(false)));
    let seen = a_reading_after.clone();
    let a = std::thread::spawn(move || {
        let h = r.register_thread();
        let g = h.read_lock();
        a_in_tx.send(()).unwrap();
        b_done.recv_timeout(PATIENCE).expect("B never finished");
        seen.store(r.is_reading(), Ordering::SeqCst);
        drop(g);
    });
    a_in.recv_timeout(PATIENCE)
        .expect("A never entered its section");
    let r = rcu;
    std::thread::spawn(move || {
        let h = r.register_thread();
        drop(h.read_lock());
    })
    .join()
    .unwrap();
    b_done_tx.send(()).unwrap();
    a.join().unwrap();
    assert!(
        a_reading_after.load(Ordering::SeqCst),
        "another thread's exit ended A's read-side section: they shared a slot"
    );
    rcu.synchronize();
    assert_eq!(rcu.stats().readers, 0, "slots released more than once");
}

thread_local! {
    /// A read-side guard kept past the thread's registration list (touched
    /// before the thread first reads, so its destructor runs after the
    /// list's), with what its destructor waits for before dropping it.
    static KEPT_GUARD: KeptGuard = const { KeptGuard(std::cell::RefCell::new(None)) };
}

struct KeptGuard(std::cell::RefCell<Option<(rcu::ReadGuard<'static>, Arc<AtomicUsize>)>>);

impl Drop for KeptGuard {
    fn drop(&mut self) {
        if let Some((guard, step)) = self.0.borrow_mut().take() {
            // Wait until another thread reads (step 1), then end the
            // guard's section (step 2).
            let start = Instant::now();
            while step.load(Ordering::SeqCst) < 1 && start.elapsed() < PATIENCE {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(guard);
            step.store(2, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_guard_outliving_the_registration_list_never_ends_another_threads_section() {
    // 'static, as a guard kept in a thread-local must be.
    let rcu: &'static Rcu = Box::leak(Box::new(instance()));
    let step = Arc::new(AtomicUsize::new(0));
    let (s, (entered_tx, entered)) = (step.clone(), mpsc::channel::<()>());
    let t0 = std::thread::spawn(move || {
        KEPT_GUARD.with(|_| ());
        let g = rcu.read_lock();
        KEPT_GUARD.with(|k| *k.0.borrow_mut() = Some((g, s)));
        entered_tx.send(()).unwrap();
    });
    entered.recv_timeout(PATIENCE).expect("T0 never read");
    // Wait until T0's registration list is gone (its slot released).
    wait_until("T0's registration list to go", || rcu.stats().readers == 0);
    let s = step.clone();
    let a = std::thread::spawn(move || {
        let g = rcu.read_lock();
        s.store(1, Ordering::SeqCst);
        wait_until("T0's late guard to drop", || s.load(Ordering::SeqCst) == 2);
        let reading = rcu.is_reading();
        if reading {
            drop(g);
        } else {
            // Its section was ended for it: unlocking again would underflow.
            core::mem::forget(g);
        }
        assert!(
            reading,
            "another thread's late guard ended this thread's section: they shared a slot"
        );
    });
    let a = a.join();
    t0.join().unwrap();
    a.unwrap();
    rcu.synchronize();
}
