//! The real-time promise under a flood, proven on the real-time thread:
//! while other threads retire objects so fast that reclaim falls behind
//! (and they, not it, run the flood brake), a thread registered with
//! [`Krcu::register_thread`] makes 2 M `kfree_rcu` calls with
//! - no heap allocation, reallocation or free (a counting global allocator,
//!   counted per thread);
//! - no destructor run on it (the objects count their drops per thread);
//! - no blocking lock (krcu's per-thread lock counters);
//! - no system call at all: a seccomp filter installed on that thread alone
//!   traps every system call but `exit` and `rt_sigreturn`, and the SIGSYS
//!   handler records the call and ends the thread, failing the test.
//!
//! Locks the counters cannot see: the `kfree_rcu` engine also has `std`
//! mutexes (the front registry, the monitor's pass lock, the wake-ups of the
//! worker and the reclaimers, the barrier's idle wait). The only one a call
//! can reach is the front registry's, taken when a thread's first call makes
//! its front; a registered thread has its front already (and a real-time
//! thread never makes one on the call path), and making one allocates first,
//! so the allocation counter would see that path. The others are taken only
//! by the worker, the reclaimers, the RCU callback, barriers and the
//! shrinker. A contended `std` mutex would also wait in `futex`, which the
//! filter traps.
//!
//! The filter cannot be removed, so the real-time thread publishes its
//! results in atomics and ends with a raw `exit` system call; the test
//! joins it with `pthread_join` (the kernel clears its tid on exit).
//!
//! The figure is 2 M calls in both builds; the heavy part is the flood
//! around it, which runs only as long as the real-time thread does.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use common::counting_alloc::{CountingAlloc, thread_allocs, thread_frees};
use common::seccomp::{FILTERED_DONE, TRAPPED, install_sigsys_handler, seal_thread};
use krcu::Krcu;
use krcu::lock::{ThreadLockCounters, thread_counters};
use krcu::rcu::{HasRcuHead, RcuHead};
use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

/// `kfree_rcu` calls the real-time thread makes.
const CALLS: usize = 2_000_000;
/// Threads flooding the instance meanwhile: at least one per CPU, so that
/// reclaim (one reclaimer per CPU) falls behind on bigger machines too.
fn flooders() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 16))
}
/// How long the test waits for anything before it fails instead of hanging.
const WATCHDOG: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------
// Per-thread counts: the global allocator and the objects' destructors
// ---------------------------------------------------------------------

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

thread_local! {
    // const-initialised, no destructor: touching it never allocates.
    static DROPS: Cell<u64> = const { Cell::new(0) };
}

/// Destructors of `Item` the calling thread has run.
fn thread_drops() -> u64 {
    DROPS.with(Cell::get)
}

/// Objects freed anywhere (to check nothing is lost).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// 24 bytes: the head and a word.
struct Item {
    head: RcuHead,
    value: u64,
}

// SAFETY: `head` is an RcuHead field of Item.
unsafe impl HasRcuHead for Item {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Item, head);
}

impl Item {
    fn new(value: u64) -> Box<Item> {
        Box::new(Item {
            head: RcuHead::new(),
            value,
        })
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        std::hint::black_box(self.value);
        let _ = DROPS.try_with(|c| c.set(c.get() + 1));
        DROPPED.fetch_add(1, Relaxed);
    }
}

// ---------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------

/// What the real-time thread measured over its calls.
#[derive(Default)]
struct Results {
    allocs: AtomicU64,
    frees: AtomicU64,
    drops: AtomicU64,
    blocking: AtomicU64,
    contended: AtomicU64,
    parks: AtomicU64,
    refused: AtomicU64,
    calls: AtomicU64,
}

/// One flood at a time in this binary (2 cores).
static SERIAL: Mutex<()> = Mutex::new(());

/// The real-time thread: registers ahead, waits for the flood to put
/// reclaim behind, seals itself, makes `objs.len()` calls, publishes, exits.
#[allow(clippy::vec_box)] // Boxes made ahead, each handed to kfree_rcu
fn realtime_thread(
    k: &Krcu,
    global: bool,
    objs: &mut Vec<Box<Item>>,
    go: &AtomicBool,
    r: &Results,
) {
    // Ahead: the RCU reader and the kfree_rcu front (allocates).
    let _reader = k.register_thread();
    while !go.load(Acquire) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (a0, f0, d0) = (thread_allocs(), thread_frees(), thread_drops());
    let c0: ThreadLockCounters = thread_counters();
    seal_thread();
    // ---- no system call from here on ----
    let (mut calls, mut refused) = (0u64, 0u64);
    while let Some(obj) = objs.pop() {
        let q = if global {
            krcu::kfree_rcu(obj)
        } else {
            k.kfree_rcu(obj)
        };
        if let Err(e) = q {
            // Not reached (task context); keep the object, free nothing.
            core::mem::forget(e);
            refused += 1;
        }
        calls += 1;
    }
    let (a1, f1, d1) = (thread_allocs(), thread_frees(), thread_drops());
    let c = thread_counters() - c0;
    r.allocs.store(a1 - a0, Relaxed);
    r.frees.store(f1 - f0, Relaxed);
    r.drops.store(d1 - d0, Relaxed);
    r.blocking.store(c.blocking, Relaxed);
    r.contended.store(c.contended, Relaxed);
    r.parks.store(c.parks, Relaxed);
    r.refused.store(refused, Relaxed);
    r.calls.store(calls, Relaxed);
    // Release: the stores above happen-before the joiner's Acquire load.
    FILTERED_DONE.store(true, Release);
    // SAFETY: `exit` ends this thread only (the filter allows it). Nothing
    // of it is dropped: its reader handle and thread-locals stay as they
    // are, which leaks them and nothing else.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    loop {
        core::hint::spin_loop();
    }
}

fn prove(k: &Krcu, global: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    install_sigsys_handler();
    let dropped0 = DROPPED.load(SeqCst);
    let mut objs: Vec<Box<Item>> = (0..CALLS as u64).map(Item::new).collect();
    let results = Results::default();
    let (go, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    let flooded = AtomicU64::new(0);
    let assisted0 = k.stats().assisted_objects;

    std::thread::scope(|s| {
        for t in 0..flooders() as u64 {
            let (stop, flooded) = (&stop, &flooded);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    for i in 0..1024 {
                        let obj = Item::new(t << 40 | n | i);
                        if global {
                            krcu::kfree_rcu(obj).unwrap();
                        } else {
                            k.kfree_rcu(obj).unwrap();
                        }
                    }
                    n += 1024;
                }
                flooded.fetch_add(n, SeqCst);
            });
        }
        let rt = {
            let (objs, go, results) = (&mut objs, &go, &results);
            let f = move || realtime_thread(k, global, objs, go, results);
            // SAFETY: the thread borrows `k`, `objs`, `go` and `results`,
            // all of which outlive it: it is joined below (pthread_join)
            // before any of them goes, on every path that returns; a path
            // that panics first leaves the process with the thread blocked
            // on `go` or sealed, and the test failed.
            unsafe {
                std::thread::Builder::new()
                    .name("krcu-rt".into())
                    .spawn_unchecked(f)
            }
            .expect("spawn the real-time thread")
        };
        // Never dropped: the thread ends with a raw exit, so std's join
        // (which expects the thread's result) cannot be used.
        let rt = rt.into_pthread_t();

        // The flood must put reclaim behind: other threads run the brake.
        let t0 = Instant::now();
        let behind = loop {
            if k.stats().assisted_objects > assisted0 {
                break true;
            }
            if t0.elapsed() > WATCHDOG {
                break false;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        go.store(true, Release);
        let t0 = Instant::now();
        while !FILTERED_DONE.load(Acquire) {
            if t0.elapsed() > WATCHDOG {
                stop.store(true, Relaxed);
                panic!("the real-time thread hung (>{WATCHDOG:?})");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: `rt` is the joinable thread spawned above, joined once.
        let rc = unsafe { libc::pthread_join(rt, core::ptr::null_mut()) };
        stop.store(true, Relaxed);
        assert_eq!(rc, 0, "pthread_join");
        assert!(
            behind,
            "the flood never put reclaim behind in {WATCHDOG:?}: no brake to escape"
        );
    });

    let trapped = TRAPPED.load(SeqCst);
    assert_eq!(
        trapped, -1,
        "the real-time thread made system call {trapped} inside kfree_rcu"
    );
    let r = &results;
    assert_eq!(r.calls.load(SeqCst), CALLS as u64);
    assert_eq!(r.refused.load(SeqCst), 0);
    let stats = k.stats();
    println!(
        "real-time thread: {CALLS} calls beside {} flooded objects; assisted {}",
        flooded.load(SeqCst),
        stats.assisted_objects - assisted0
    );
    assert_eq!(
        r.allocs.load(SeqCst),
        0,
        "allocations on the real-time thread"
    );
    assert_eq!(r.frees.load(SeqCst), 0, "frees on the real-time thread");
    assert_eq!(
        r.drops.load(SeqCst),
        0,
        "destructors run on the real-time thread"
    );
    assert_eq!(
        r.blocking.load(SeqCst),
        0,
        "blocking locks on the real-time thread"
    );
    assert_eq!(r.contended.load(SeqCst), 0);
    assert_eq!(r.parks.load(SeqCst), 0);
    // Nothing lost: every object retired is freed, once.
    if global {
        krcu::kvfree_rcu_barrier();
    } else {
        k.kvfree_rcu_barrier();
    }
    assert_eq!(
        DROPPED.load(SeqCst) - dropped0,
        CALLS as u64 + flooded.load(SeqCst)
    );
    drop(objs);
}

#[test]
fn a_realtime_thread_on_the_default_instance_neither_allocates_frees_nor_blocks_under_a_flood() {
    let k = Krcu::builder().build().unwrap();
    prove(&k, false);
}

#[test]
fn a_realtime_thread_on_the_global_instance_neither_allocates_frees_nor_blocks_under_a_flood() {
    prove(Krcu::global(), true);
}

/// The filter itself: a sealed thread's system call is caught and named.
#[test]
fn the_filter_catches_a_system_call_of_the_sealed_thread_only() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    install_sigsys_handler();
    let t = std::thread::spawn(|| {
        seal_thread();
        // SAFETY: getppid has no preconditions (trapped here).
        unsafe { libc::getppid() };
        // Not reached: the handler ended the thread.
        FILTERED_DONE.store(true, Release);
        // SAFETY: as in the real-time thread.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
        loop {
            core::hint::spin_loop();
        }
    })
    .into_pthread_t();
    let t0 = Instant::now();
    while !FILTERED_DONE.load(Acquire) {
        assert!(t0.elapsed() < WATCHDOG, "the sealed thread hung");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: the joinable thread spawned above, joined once.
    assert_eq!(unsafe { libc::pthread_join(t, core::ptr::null_mut()) }, 0);
    assert_eq!(TRAPPED.load(SeqCst), libc::SYS_getppid);
    // Other threads are not filtered.
    // SAFETY: getppid has no preconditions.
    assert!(unsafe { libc::getppid() } > 0);
}
