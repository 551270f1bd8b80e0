//! `kfree_rcu` at the edges: a block's grace-period cookie under callers
//! that stall, threads that exit with work left in thread-local
//! destructors, destructors that panic, and instances dropped (or waited
//! for) from the threads that run their own reclaim.

mod common;

use common::*;
use krcu::Krcu;
use krcu::kvfree::{Assist, KvfreeConfig, Policy};
use krcu::lockdep::{ReportHandler, ReportLog};
use krcu::page::Gfp;
use krcu::rcu::{HasRcuHead, RcuConfig, RcuHead};
use std::cell::RefCell;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something that must happen before it calls
/// the code under test hung.
const WATCHDOG: Duration = Duration::from_secs(30);

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs `f` on a thread and fails (instead of hanging) if it has not
/// returned within the watchdog's time.
fn within_watchdog<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WATCHDOG)
        .unwrap_or_else(|e| panic!("{what}: hung for more than {WATCHDOG:?} ({e})"))
}

/// Waits until no thread of this process has the name `comm` (a thread
/// name as the kernel keeps it: at most 15 bytes).
fn wait_thread_gone(comm: &str) {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        let alive = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(Result::ok)
            .any(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == comm)
            });
        if !alive {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "thread {comm} still running after {WATCHDOG:?}: the instance was never torn down"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// --------------------------------------------------------------------
// A block's cookie never goes backwards
// --------------------------------------------------------------------

thread_local! {
    /// Set on the thread whose sleeping allocation the test's shrinker
    /// stalls.
    static STALL_ME: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Two single-argument callers share one CPU's block. A takes its call's
/// cookie, finds no block and stalls in direct reclaim (the test's
/// shrinker holds it); meanwhile a grace period completes, a reader enters
/// and picks up object B, B is unlinked and retired by a second thread
/// into a fresh block with a newer cookie. When A resumes and adds its
/// object to that block, the block must keep B's cookie: a flush must not
/// free B while the reader is still inside.
#[test]
fn a_stalled_caller_never_stamps_an_older_cookie_on_a_newer_object() {
    let k = Arc::new(
        Krcu::builder()
            // Only direct reclaim runs the shrinkers (no kswapd): A's
            // allocation.
            .page_config(pages::quiet_config(8 << 20, pages::SHRINK_8MIB).pcp_lists(false))
            .kvfree_config(
                KvfreeConfig::default()
                    // No spare blocks, no inline allocation: every new block of
                    // kvfree_rcu_mightsleep is a sleeping allocation.
                    .policy(Policy::Prohibit)
                    .drain_delay(Duration::from_secs(3600))
                    .assist(Assist::Never),
            )
            .report_handler(ReportHandler::Collect(ReportLog::new()))
            .build()
            .unwrap(),
    );
    let ledger = Ledger::new(10);
    let slot = Arc::new(AtomicPtr::new(Box::into_raw(Obj::new(&ledger))));

    // Take every page the non-sleeping path can have: a sleeping
    // allocation then enters direct reclaim.
    let mut held = Vec::new();
    while let Ok(p) = k.pages().alloc_page(Gfp::NOWAIT | Gfp::NOWARN) {
        held.push(p);
    }
    let held = Arc::new(Mutex::new(held));

    let (stalled_tx, stalled_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let stalled_tx = Mutex::new(stalled_tx);
    let go_rx = Mutex::new(go_rx);
    let _shrinker = k.pages().register_shrinker(
        "test-stall",
        || 1,
        move |_| {
            if !STALL_ME.with(|s| s.replace(false)) {
                return 0;
            }
            let _ = stalled_tx.lock().unwrap().send(());
            let _ = go_rx.lock().unwrap().recv_timeout(WATCHDOG);
            0
        },
    );

    // A: its cookie is taken, then it stalls allocating a block.
    let a = {
        let (k, ledger) = (k.clone(), ledger.clone());
        std::thread::spawn(move || {
            pin_to(0);
            STALL_ME.with(|s| s.set(true));
            k.kvfree_rcu_mightsleep(Obj::new(&ledger)).unwrap();
        })
    };
    stalled_rx
        .recv_timeout(WATCHDOG)
        .expect("A never reached direct reclaim");
    // A's cookie is satisfied from here on.
    k.rcu().synchronize();
    // Pages for B (no direct reclaim for it) and for A's retry.
    for p in held.lock().unwrap().drain(..) {
        k.pages().free(p);
    }
    // A reader enters after A's call and can still reach object B.
    let reader = k.rcu().read_lock();
    let b_obj = slot.load(Acquire);
    // B unlinks object B and retires it: a fresh block, a newer cookie
    // (which the reader holds up).
    {
        let (k, slot) = (k.clone(), slot.clone());
        within_watchdog("B's call", move || {
            pin_to(0);
            let p = slot.swap(core::ptr::null_mut(), AcqRel);
            // SAFETY: unlinked just now, so ours; a leaked Box.
            k.kvfree_rcu_mightsleep(unsafe { Box::from_raw(p) })
                .unwrap();
        });
    }
    // A resumes and adds its object to B's block.
    go_tx.send(()).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(a.join().is_ok()));
    assert!(rx.recv_timeout(WATCHDOG).expect("A hung"), "A panicked");
    assert!(k.stats().sleeping_allocs >= 2, "{:?}", k.stats());

    // Hand everything over (the barrier itself waits for the reader, so it
    // runs on its own thread), and wait until the block is handed over.
    let before = k.stats();
    let barrier = {
        let k = k.clone();
        std::thread::spawn(move || k.kvfree_rcu_barrier())
    };
    let deadline = Instant::now() + WATCHDOG;
    let drain_ready = loop {
        let s = k.stats();
        if s.drain_ready_blocks > before.drain_ready_blocks {
            break true;
        }
        if s.batches > before.batches {
            break false;
        }
        assert!(Instant::now() < deadline, "never handed over: {s:?}");
        std::thread::sleep(Duration::from_millis(1));
    };
    if drain_ready {
        // The block was taken as already past its grace period: its objects
        // go to the reclaimer without waiting for the reader.
        while k.stats().reclaimed_objects < before.reclaimed_objects + 2 {
            assert!(
                Instant::now() < deadline,
                "never reclaimed: {:?}",
                k.stats()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(
        ledger.dropped.load(SeqCst),
        0,
        "objects freed while a reader that could see B is inside: {:?}",
        k.stats()
    );
    // SAFETY: the reader entered before B was unlinked, so B lives until
    // it leaves (the property under test).
    unsafe { (*b_obj).check() };
    drop(reader);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(barrier.join().is_ok()));
    assert!(rx.recv_timeout(WATCHDOG).expect("barrier hung"));
    ledger.assert_all_freed_once();
}

// --------------------------------------------------------------------
// Thread exit
// --------------------------------------------------------------------

/// Retires one object from a thread-local destructor that runs after the
/// thread's front blocks were handed back.
struct LateRetire {
    k: Arc<Krcu>,
    ledger: Arc<Ledger>,
}

impl Drop for LateRetire {
    fn drop(&mut self) {
        // The monitor takes the exited thread's front and forgets it.
        self.k.kvfree_rcu_barrier();
        self.k.kfree_rcu(Obj::new(&self.ledger)).unwrap();
    }
}

thread_local! {
    static LATE: RefCell<Option<LateRetire>> = const { RefCell::new(None) };
}

#[test]
fn kfree_rcu_from_a_late_thread_local_destructor_is_not_lost() {
    let k = Arc::new(
        Krcu::builder()
            .arena_size(32 << 20)
            .drain_delay(Duration::from_secs(3600))
            .report_handler(ReportHandler::Collect(ReportLog::new()))
            .build()
            .unwrap(),
    );
    let ledger = Ledger::new(100);
    for _ in 0..3 {
        let (k2, ledger2) = (k.clone(), ledger.clone());
        std::thread::spawn(move || {
            // Registered first, so destroyed after the front's owner list.
            LATE.with(|l| {
                *l.borrow_mut() = Some(LateRetire {
                    k: k2.clone(),
                    ledger: ledger2.clone(),
                })
            });
            for _ in 0..10 {
                k2.kfree_rcu(Obj::new(&ledger2)).unwrap();
            }
        })
        .join()
        .unwrap();
    }
    k.kvfree_rcu_barrier();
    assert_eq!(ledger.issued(), 33);
    ledger.assert_all_freed_once();
}

// --------------------------------------------------------------------
// Destructors that panic
// --------------------------------------------------------------------

static BOMBS_DROPPED: AtomicUsize = AtomicUsize::new(0);
static SLAB_BOMBS_DROPPED: AtomicUsize = AtomicUsize::new(0);

struct Bomb {
    explode: bool,
    /// Counts the drops (one counter per test: tests run in parallel).
    dropped: &'static AtomicUsize,
    head: RcuHead,
}

// SAFETY: `head` is an RcuHead field of Bomb.
unsafe impl HasRcuHead for Bomb {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Bomb, head);
}

impl Drop for Bomb {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, SeqCst);
        if self.explode {
            panic!("a destructor that panics (expected by the test)");
        }
    }
}

/// An instance that frees only in barriers (no drain for an hour, no
/// assisting callers): the test says when destructors run.
fn frees_only_in_barriers() -> Arc<Krcu> {
    Arc::new(
        Krcu::builder()
            .arena_size(32 << 20)
            .drain_delay(Duration::from_secs(3600))
            .assist(Assist::Never)
            .report_handler(ReportHandler::Collect(ReportLog::new()))
            .build()
            .unwrap(),
    )
}

fn bomb(explode: bool) -> Box<Bomb> {
    Box::new(Bomb {
        explode,
        dropped: &BOMBS_DROPPED,
        head: RcuHead::new(),
    })
}

#[test]
fn a_panicking_destructor_neither_wedges_reclaim_nor_unwinds_into_callers() {
    let k = frees_only_in_barriers();
    let before = BOMBS_DROPPED.load(SeqCst);
    for i in 0..20 {
        k.kfree_rcu(bomb(i % 5 == 0)).unwrap();
    }
    let k2 = k.clone();
    within_watchdog("the first barrier", move || k2.kvfree_rcu_barrier());
    assert_eq!(
        BOMBS_DROPPED.load(SeqCst) - before,
        20,
        "the rest of the block was not freed"
    );
    assert_eq!(k.stats().destructor_panics, 4, "{:?}", k.stats());
    // Reclaim still works.
    let ledger = Ledger::new(2000);
    for _ in 0..500 {
        k.kfree_rcu(Obj::new(&ledger)).unwrap();
    }
    let k2 = k.clone();
    within_watchdog("a later barrier", move || k2.kvfree_rcu_barrier());
    ledger.assert_all_freed_once();

    // An assisting caller frees whatever is ready: someone else's panicking
    // destructor must not unwind out of its kfree_rcu.
    let k = Krcu::builder()
        .arena_size(32 << 20)
        .assist(Assist::Always)
        .report_handler(ReportHandler::Collect(ReportLog::new()))
        .build()
        .unwrap();
    for _ in 0..5 {
        for _ in 0..200 {
            k.kfree_rcu(bomb(true)).unwrap();
        }
        k.rcu().synchronize();
        for _ in 0..200 {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                k.kfree_rcu(Obj::new(&ledger)).unwrap()
            }));
            assert!(
                r.is_ok(),
                "kfree_rcu unwound from someone else's destructor"
            );
        }
    }
    k.kvfree_rcu_barrier();
    assert_eq!(k.stats().destructor_panics, 1000, "{:?}", k.stats());
}

// --------------------------------------------------------------------
// Dropping an instance, or waiting for it, from its own reclaim
// --------------------------------------------------------------------

/// Sends whether it was dropped during a panic.
struct Notify(Sender<bool>);

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = self.0.send(!std::thread::panicking());
    }
}

/// Holds the last handle of its instance; the notification is sent once
/// the instance's `Drop` has returned (fields drop in order).
struct LastHandle {
    #[allow(dead_code)] // held for its drop
    k: Arc<Krcu>,
    #[allow(dead_code)] // held for its drop
    notify: Notify,
    head: RcuHead,
}

// SAFETY: `head` is an RcuHead field of LastHandle.
unsafe impl HasRcuHead for LastHandle {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(LastHandle, head);
}

fn named(rcu_worker: &str, assist: Assist) -> Arc<Krcu> {
    Arc::new(
        Krcu::builder()
            .arena_size(32 << 20)
            .drain_delay(Duration::from_millis(5))
            .assist(assist)
            .rcu_config(RcuConfig::default().worker_name(rcu_worker))
            .report_handler(ReportHandler::Collect(ReportLog::new()))
            .build()
            .unwrap(),
    )
}

fn last_handle(k: Arc<Krcu>) -> (Box<LastHandle>, Receiver<bool>) {
    let (tx, rx) = mpsc::channel();
    let h = Box::new(LastHandle {
        k,
        notify: Notify(tx),
        head: RcuHead::new(),
    });
    (h, rx)
}

/// An instance whose RCU worker is named `rcu_worker`, with 50 objects
/// queued, retires (with `retire`) the object that holds its last handle
/// and lets go of its own: whoever runs that object's destructor (`on`)
/// drops the instance, which must tear down cleanly there, stop the
/// worker and free every object.
fn the_last_handle_dropped(
    rcu_worker: &str,
    on: &str,
    retire: impl FnOnce(&Krcu, Box<LastHandle>),
) {
    let k = named(rcu_worker, Assist::Never);
    let ledger = Ledger::new(100);
    for _ in 0..50 {
        k.kfree_rcu(Obj::new(&ledger)).unwrap();
    }
    let (h, rx) = last_handle(k.clone());
    retire(&k, h);
    drop(k);
    let clean = rx
        .recv_timeout(WATCHDOG)
        .unwrap_or_else(|_| panic!("Krcu::drop {on} hung"));
    assert!(clean, "Krcu::drop panicked {on}");
    wait_thread_gone(rcu_worker);
    ledger.assert_all_freed_once();
}

#[test]
fn the_last_handle_dropped_by_a_reclaimer_tears_the_instance_down() {
    the_last_handle_dropped("krcu-t-lastrecl", "on its own reclaimer", |k, h| {
        k.kfree_rcu(h).unwrap()
    });
}

#[test]
fn the_last_handle_dropped_by_an_rcu_callback_tears_the_instance_down() {
    the_last_handle_dropped("krcu-t-lastcb", "in an RCU callback", |k, h| {
        k.rcu().call_rcu_box(h)
    });
}

/// Waits for its instance's barrier from its destructor.
struct BarrierOnDrop {
    k: Arc<Krcu>,
    #[allow(dead_code)] // held for its drop, after the barrier returned
    notify: Notify,
    head: RcuHead,
}

// SAFETY: `head` is an RcuHead field of BarrierOnDrop.
unsafe impl HasRcuHead for BarrierOnDrop {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(BarrierOnDrop, head);
}

impl Drop for BarrierOnDrop {
    fn drop(&mut self) {
        self.k.kvfree_rcu_barrier();
    }
}

#[test]
fn a_barrier_from_a_destructor_run_by_reclaim_returns() {
    for (name, assist) in [
        ("krcu-t-barrecl", Assist::Never),
        ("krcu-t-barasst", Assist::Always),
    ] {
        let k = named(name, assist);
        let ledger = Ledger::new(10_000);
        let (tx, rx) = mpsc::channel();
        k.kfree_rcu(Box::new(BarrierOnDrop {
            k: k.clone(),
            notify: Notify(tx),
            head: RcuHead::new(),
        }))
        .unwrap();
        // With Assist::Always the callers below may run the destructor.
        let deadline = Instant::now() + WATCHDOG;
        let clean = loop {
            match rx.try_recv() {
                Ok(clean) => break clean,
                Err(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "a barrier called from a destructor run by reclaim hung ({name})"
                    );
                    if ledger.issued() < 9000 {
                        k.kfree_rcu(Obj::new(&ledger)).unwrap();
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        };
        assert!(clean, "the barrier panicked ({name})");
        let k2 = k.clone();
        within_watchdog("a barrier afterwards", move || k2.kvfree_rcu_barrier());
        ledger.assert_all_freed_once();
    }
}

#[test]
fn a_panicking_destructor_on_a_slab_channel_does_not_stop_the_bulk_free() {
    let k = frees_only_in_barriers();
    let cache = Arc::new(krcu::slab::SlabCache::<Bomb>::new(k.pages(), "bomb").unwrap());
    let (k2, cache2) = (k.clone(), cache.clone());
    within_watchdog("the slab channel's barrier", move || {
        let chan = k2.slab_channel(&cache2).unwrap();
        for i in 0..20 {
            let b = Bomb {
                explode: i % 5 == 0,
                dropped: &SLAB_BOMBS_DROPPED,
                head: RcuHead::new(),
            };
            let obj = cache2
                .alloc(Gfp::KERNEL, b)
                .unwrap_or_else(|_| panic!("slab allocation"));
            // SAFETY: an object of the channel's cache, handed over.
            unsafe { chan.kfree_rcu(obj).unwrap() };
        }
        drop(chan); // a barrier
    });
    assert_eq!(SLAB_BOMBS_DROPPED.load(SeqCst), 20, "the rest of the block");
    assert_eq!(k.stats().destructor_panics, 4, "{:?}", k.stats());
    let st = cache.stats();
    assert_eq!(st.bad_frees, 0, "{st:?}");
    assert!(st.bulk_frees > 0, "still freed in bulk: {st:?}");
}
