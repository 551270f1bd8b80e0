//! Second adversarial review of recycling (`slab/recycle.rs`) after
//! barriers began to wait for recycles in progress (a per-cache count,
//! `CacheCore::recycling`), and of the real-time paths that retire slab
//! objects. The failing ones are `#[ignore]`d with their finding:
//! 1. a barrier starved by writers that keep recycling;
//! 2. `krcu::kfree_rcu_slab` on a real-time thread before the global
//!    instance is built makes `FUTEX_WAKE`;
//! 3. a barrier from a sheaf's RCU callback and a recycle that waits for
//!    that RCU worker deadlock;
//! 4. a fork during another thread's recycle leaves the child's count
//!    raised: its barrier hangs.
//!
//! Checked sound (passing): the barrier with no recycling under the same
//! flood (the control for 1), and recycling while barriers take lists
//! mid-list under readers and barriers.

mod common;

use krcu::Krcu;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

/// An object whose destructor takes a while (a busy wait of about
/// `SLOW_DROP`) when it runs on a writer: a writer that recycles spends
/// most of its time with the cache's `recycling` count raised. Elsewhere
/// (the RCU thread) it is quick, so that a barrier's `rcu_barrier` is not
/// what takes long.
struct SlowDrop(u64);

const SLOW_DROP: Duration = Duration::from_micros(200);

thread_local! {
    static WRITER: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

impl Drop for SlowDrop {
    fn drop(&mut self) {
        let t0 = Instant::now();
        while WRITER.with(core::cell::Cell::get) && t0.elapsed() < SLOW_DROP {
            core::hint::spin_loop();
        }
        core::hint::black_box(self.0);
    }
}

/// Finding 1. `kvfree_rcu_barrier` waits (`by_rcu::wait_recycles`) until
/// it samples a moment when *no* thread recycles a sheaf of the cache,
/// not until the recycles in progress when it was called have ended. With
/// a few writers that retire all the time (`Assist::Always`) and whose
/// destructors take a while, the count is almost never 0 (a writer
/// preempted in a recycle keeps it raised), and the barrier waits until
/// the writers stop: a barrier starved by unrelated, later retires.
///
/// The writers run for up to `WRITERS_FOR` and stop as soon as the
/// barrier has returned; the barrier must return while they still run.
#[test]
fn a_barrier_returns_while_writers_keep_recycling() {
    let (took, still, stats) = barrier_under_busy_writers(krcu::kvfree::Assist::Always);
    assert!(
        still > 0 && took < BARRIER_WITHIN,
        "the barrier took {took:?} and returned with {still} writers still running \
         (it waited for them to stop): {stats:?}"
    );
}

/// The control for finding 1: the same writers with `Assist::Never` (no
/// recycling on the writers, every sheaf through `call_rcu`): the barrier
/// returns while they run. What starves the barrier above is its wait for
/// the recycles.
#[test]
fn control_a_barrier_returns_while_writers_retire_without_recycling() {
    let (took, still, stats) = barrier_under_busy_writers(krcu::kvfree::Assist::Never);
    assert_eq!(stats.rcu_sheaves_recycled, 0, "{stats:?}");
    assert!(
        still > 0 && took < BARRIER_WITHIN,
        "the barrier took {took:?} and returned with {still} writers still running: {stats:?}"
    );
}

const WRITERS: usize = 6;
const WRITERS_FOR: Duration = Duration::from_secs(40);
const BARRIER_WITHIN: Duration = Duration::from_secs(20);

/// Runs `WRITERS` threads that allocate and retire `SlowDrop`s for up to
/// `WRITERS_FOR` (stopping as soon as the barrier has returned), calls
/// `kvfree_rcu_barrier` once sheaves are flowing, and returns how long it
/// took, how many writers still ran when it returned, and the cache's
/// statistics then.
fn barrier_under_busy_writers(
    assist: krcu::kvfree::Assist,
) -> (Duration, usize, krcu::slab::SlabStats) {
    let k = Krcu::builder()
        .arena_size(64 << 20)
        .assist(assist)
        .build()
        .unwrap();
    let cache = k.slab_cache::<SlowDrop>("slow-drops").unwrap();
    let stop = AtomicBool::new(false);
    let running = AtomicUsize::new(0);
    let out = std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (k, cache, stop, running) = (&k, &cache, &stop, &running);
            s.spawn(move || {
                WRITER.with(|c| c.set(true));
                running.fetch_add(1, SeqCst);
                let t0 = Instant::now();
                let mut i = 0u64;
                while !stop.load(Relaxed) && t0.elapsed() < WRITERS_FOR {
                    match cache.alloc_box(SlowDrop(i + w as u64)) {
                        Ok(b) => k.kfree_rcu_slab(b).ok().unwrap(),
                        // The arena is full for a moment: back off.
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                    i += 1;
                }
                running.fetch_sub(1, SeqCst);
            });
        }
        // Sheaves flowing (recycled on the writers, or through call_rcu).
        let t0 = Instant::now();
        while {
            let st = cache.stats();
            st.rcu_sheaves_recycled + st.rcu_sheaves_done < 20 * WRITERS as u64
        } {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no sheaf came back: {:?}",
                cache.stats()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let t0 = Instant::now();
        k.kvfree_rcu_barrier();
        let took = t0.elapsed();
        let still = running.load(SeqCst);
        let stats = cache.stats();
        stop.store(true, SeqCst);
        (took, still, stats)
    });
    k.kvfree_rcu_barrier();
    out
}

/// Finding 2. `krcu::kfree_rcu_slab` (the free function) on a real-time
/// thread, for a cache of the process-wide RCU (`SlabCache::new`), before
/// the process-wide instance is built: it may not build it there, so the
/// object goes to the global RCU's `call_rcu`, which wakes the sleeping
/// RCU worker with `FUTEX_WAKE`, a system call the documentation promises
/// a real-time thread never makes ("The same promises as
/// `Krcu::kfree_rcu`": "on a real-time thread it makes no system call").
/// (The sheaf path no longer wakes: `call_rcu_nowake`; this path does.)
///
/// The thread is made real-time with `krcu::context::set_realtime` (as
/// `register_thread` would, without building the instance), warms the
/// path up, waits for the RCU worker to sleep, is sealed with seccomp,
/// then retires one box.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn global_kfree_rcu_slab_on_a_realtime_thread_makes_no_system_call() {
    use common::seccomp;
    use std::os::unix::thread::JoinHandleExt;
    if seccomp::under_valgrind() {
        println!("under valgrind: skipped (valgrind makes system calls for the sealed thread)");
        return;
    }
    // Nothing in this file builds the process-wide `Krcu`.
    seccomp::install_sigsys_handler();
    let pages = common::pages::quiet_allocator(
        krcu::Domain::global(),
        16 << 20,
        krcu::page::Watermarks::NONE,
    );
    let cache: &'static krcu::slab::SlabCache<u64> = Box::leak(Box::new(
        krcu::slab::SlabCache::new(&pages, "rt-global").unwrap(),
    ));
    krcu::rcu::rcu_barrier(); // builds the global RCU (a task-context use)
    static RETIRED: AtomicUsize = AtomicUsize::new(0);
    let rt = std::thread::spawn(move || {
        krcu::context::set_realtime(true);
        let warm = cache.alloc_box(1).ok().unwrap();
        krcu::kfree_rcu_slab(warm).ok().unwrap();
        let b = cache.alloc_box(2).ok().unwrap();
        // The worker runs the warm-up callback, then sleeps again.
        std::thread::sleep(Duration::from_millis(300));
        seccomp::seal_thread();
        krcu::kfree_rcu_slab(b).ok().unwrap();
        RETIRED.store(1, SeqCst);
        seccomp::exit_thread()
    })
    .into_pthread_t();
    let t0 = Instant::now();
    while !seccomp::FILTERED_DONE.load(Acquire) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the thread never ended"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: the joinable thread spawned above, joined once.
    assert_eq!(unsafe { libc::pthread_join(rt, core::ptr::null_mut()) }, 0);
    let trapped = seccomp::TRAPPED.load(SeqCst);
    assert_eq!(
        trapped,
        -1,
        "the real-time thread made system call {trapped} (202 = futex) at {:#x}",
        seccomp::TRAPPED_AT.load(SeqCst)
    );
    assert_eq!(RETIRED.load(SeqCst), 1);
    krcu::rcu::rcu_barrier();
}

// ---------------------------------------------------------------------
// Finding 3: a barrier called from an RCU callback's destructor (a slab
// sheaf's, on the RCU worker: the default path for a type with drop glue)
// waits for recycles in progress, which may wait for that worker.

static F3_Y_ARMED: AtomicBool = AtomicBool::new(false);
static F3_X_ARMED: AtomicBool = AtomicBool::new(false);
static F3_A_IN_RECYCLE: AtomicBool = AtomicBool::new(false);
static F3_X_STARTED: AtomicBool = AtomicBool::new(false);
static F3_X_DONE: AtomicBool = AtomicBool::new(false);
static F3_Y_DONE: AtomicBool = AtomicBool::new(false);
static F3_K: std::sync::OnceLock<Krcu> = std::sync::OnceLock::new();
static F3_K2: std::sync::OnceLock<Krcu> = std::sync::OnceLock::new();

fn spin_until(flag: &AtomicBool, at_most: Duration) -> bool {
    let t0 = Instant::now();
    while !flag.load(SeqCst) {
        if t0.elapsed() > at_most {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Of a cache of `k` (no recycling: `Assist` is the default and the RCU
/// thread keeps up, so its sheaves go through `call_rcu` and its
/// destructors run on `k`'s RCU worker). The armed one waits for the
/// writer of `k2` to be inside a recycle, then calls
/// `k2.kvfree_rcu_barrier()` (allowed: not `k2`'s worker, not in a
/// reader of `k2`).
struct X;
impl Drop for X {
    fn drop(&mut self) {
        if !F3_X_ARMED.swap(false, SeqCst) {
            return;
        }
        if !spin_until(&F3_A_IN_RECYCLE, Duration::from_secs(20)) {
            return;
        }
        F3_X_STARTED.store(true, SeqCst);
        F3_K2.get().unwrap().kvfree_rcu_barrier();
        F3_X_DONE.store(true, SeqCst);
    }
}

/// Of a cache of `k2` (`Assist::Always`: recycled on the writer). The
/// armed one, dropped by a recycle on the writer, waits until X's
/// destructor runs on `k`'s worker, then calls `k.rcu().rcu_barrier()`
/// (allowed: the writer is in no reader, not on `k`'s worker).
struct Y;
impl Drop for Y {
    fn drop(&mut self) {
        if !F3_Y_ARMED.swap(false, SeqCst) {
            return;
        }
        F3_A_IN_RECYCLE.store(true, SeqCst);
        if spin_until(&F3_X_STARTED, Duration::from_secs(20)) {
            // Let X's barrier reach its wait for recycles.
            std::thread::sleep(Duration::from_millis(200));
            F3_K.get().unwrap().rcu().rcu_barrier();
        }
        F3_Y_DONE.store(true, SeqCst);
    }
}

/// Before barriers waited for recycles, X's barrier on `k2` waited only
/// for `k2`'s RCU worker and reclaimers, and Y's `rcu_barrier` on `k`
/// for `k`'s worker, which finished X: no cycle. Now X's barrier (run by
/// `k`'s RCU worker, which is neither a kvfree reclaim nor a recycle, so
/// not exempt) waits for the writer's recycle of Y, and Y waits for
/// `k`'s worker: both hang for ever. Fails after 30 s (the two threads
/// stay stuck; the instances are leaked).
#[test]
fn a_barrier_in_an_rcu_callback_and_a_recycle_that_waits_for_its_worker_do_not_deadlock() {
    let k = F3_K.get_or_init(|| Krcu::builder().arena_size(32 << 20).build().unwrap());
    let k2 = F3_K2.get_or_init(|| {
        Krcu::builder()
            .arena_size(32 << 20)
            .assist(krcu::kvfree::Assist::Always)
            .build()
            .unwrap()
    });
    let xs: &'static krcu::slab::SlabCache<X> =
        Box::leak(Box::new(k.slab_cache::<X>("xs").unwrap()));
    let ys: &'static krcu::slab::SlabCache<Y> =
        Box::leak(Box::new(k2.slab_cache::<Y>("ys").unwrap()));
    // The writer of k2: recycles, the first Y it drops after arming being
    // the armed one.
    std::thread::spawn(move || {
        F3_Y_ARMED.store(true, SeqCst);
        let t0 = Instant::now();
        let mut i = 0u64;
        while F3_Y_ARMED.load(SeqCst) && t0.elapsed() < Duration::from_secs(30) {
            k2.kfree_rcu_slab(ys.alloc_box(Y).ok().unwrap())
                .ok()
                .unwrap();
            i += 1;
            if i.is_multiple_of(500) {
                k2.rcu().synchronize();
            }
        }
    });
    assert!(
        spin_until(&F3_A_IN_RECYCLE, Duration::from_secs(30)),
        "the writer never recycled: {:?}",
        ys.stats()
    );
    // X's sheaves to `k`'s RCU worker: full sheaves go to call_rcu.
    F3_X_ARMED.store(true, SeqCst);
    let t0 = Instant::now();
    while F3_X_ARMED.load(SeqCst) && t0.elapsed() < Duration::from_secs(20) {
        for _ in 0..xs.sheaf_capacity() {
            k.kfree_rcu_slab(xs.alloc_box(X).ok().unwrap())
                .ok()
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        F3_X_STARTED.load(SeqCst),
        "X's destructor never ran: {:?}",
        xs.stats()
    );
    let t0 = Instant::now();
    while !(F3_X_DONE.load(SeqCst) && F3_Y_DONE.load(SeqCst)) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "deadlock: X's barrier on k2 (on k's RCU worker) done: {}, Y's rcu_barrier on k \
             (in the writer's recycle) done: {}",
            F3_X_DONE.load(SeqCst),
            F3_Y_DONE.load(SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------
// Finding 4: a fork while another thread is inside a recycle leaves the
// child's `recycling` count raised for ever.

static F4_ARMED: AtomicBool = AtomicBool::new(false);
static F4_IN: AtomicBool = AtomicBool::new(false);
static F4_RELEASE: AtomicBool = AtomicBool::new(false);

/// The armed one, dropped by a recycle on the writer, holds its
/// destructor until released (at most 60 s).
struct HeldInRecycle;
impl Drop for HeldInRecycle {
    fn drop(&mut self) {
        if !F4_ARMED.swap(false, SeqCst) {
            return;
        }
        F4_IN.store(true, SeqCst);
        spin_until(&F4_RELEASE, Duration::from_secs(60));
    }
}

/// Releases the held destructor however the test ends.
struct ReleaseOnDrop;
impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        F4_RELEASE.store(true, SeqCst);
    }
}

/// The parent's writer is inside a recycle (its cache's `recycling`
/// count raised) when the process forks. In the child that thread does
/// not exist, so nothing ever lowers the count, and `kvfree_rcu_barrier`
/// (`wait_recycles`) waits for it for ever: the child hangs (killed after
/// 30 s). The kvfree reclaimers' own counts are handled around a fork
/// (`fork.rs`); this one is not.
#[test]
fn a_barrier_in_a_child_forked_during_a_recycle_returns() {
    let _release = ReleaseOnDrop;
    let k = std::sync::Arc::new(
        Krcu::builder()
            .arena_size(32 << 20)
            .assist(krcu::kvfree::Assist::Always)
            .build()
            .unwrap(),
    );
    let cache = std::sync::Arc::new(k.slab_cache::<HeldInRecycle>("held").unwrap());
    let writer = {
        let (k, cache) = (k.clone(), cache.clone());
        std::thread::spawn(move || {
            F4_ARMED.store(true, SeqCst);
            let t0 = Instant::now();
            let mut i = 0u64;
            while F4_ARMED.load(SeqCst) && t0.elapsed() < Duration::from_secs(30) {
                k.kfree_rcu_slab(cache.alloc_box(HeldInRecycle).ok().unwrap())
                    .ok()
                    .unwrap();
                i += 1;
                if i.is_multiple_of(500) {
                    k.rcu().synchronize();
                }
            }
        })
    };
    assert!(
        spin_until(&F4_IN, Duration::from_secs(30)),
        "the writer never recycled: {:?}",
        cache.stats()
    );
    let code = common::child::fork_run("child", Duration::from_secs(30), || {
        k.kvfree_rcu_barrier();
        0
    });
    F4_RELEASE.store(true, SeqCst);
    writer.join().unwrap();
    k.kvfree_rcu_barrier();
    assert_eq!(code, 0);
}

// ---------------------------------------------------------------------
// Checked sound: recycling while barriers take waiting lists mid-list.

/// `Assist::Always`: the writer recycles its sheaves while a barrier every
/// 3 ms takes its waiting list and hands it to `call_rcu`; bursts and
/// pauses in between; readers check every published object (poisoned when
/// freed). Every object is dropped once, never under a reader, and both
/// ways were taken. (This checked the `WhenBehind` hysteresis when the
/// default recycled while behind; a `T` with drop glue now recycles only
/// with `Always`.)
#[test]
fn recycling_while_barriers_take_lists_frees_nothing_early_or_twice() {
    use common::{Ledger, Obj};
    use krcu::slab::SlabBox;
    use std::sync::atomic::AtomicPtr;
    let k = Krcu::builder()
        .arena_size(64 << 20)
        .kvfree_config(krcu::kvfree::KvfreeConfig::default().assist(krcu::kvfree::Assist::Always))
        .build()
        .unwrap();
    let cache = k.slab_cache::<Obj>("hysteresis").unwrap();
    let writes = 300_000;
    let ledger = Ledger::new(writes + 64);
    let slots: Vec<AtomicPtr<Obj>> = (0..64)
        .map(|_| AtomicPtr::new(core::ptr::null_mut()))
        .collect();
    let stop = AtomicBool::new(false);
    let takes = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let reader = k.rcu().register_thread();
            while !stop.load(Relaxed) {
                let _g = reader.read_lock();
                for slot in &slots {
                    let p = slot.load(Acquire);
                    if !p.is_null() {
                        // SAFETY: published objects live until a grace
                        // period after they are unlinked.
                        unsafe { (*p).check() };
                    }
                }
            }
        });
        s.spawn(|| {
            while !stop.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(3));
                k.kvfree_rcu_barrier();
                takes.fetch_add(1, Relaxed);
            }
        });
        let mut owned: Vec<Option<SlabBox<Obj>>> = (0..slots.len()).map(|_| None).collect();
        for i in 0..writes {
            let new = cache.alloc_box(*Obj::new(&ledger)).ok().unwrap();
            let j = (i * 7) % slots.len();
            slots[j].store(SlabBox::as_ptr(&new).cast_mut(), Release);
            if let Some(old) = owned[j].replace(new) {
                k.kfree_rcu_slab(old).unwrap();
            }
            // A grace period now and then while the list holds sheaves:
            // the next fills find them ready and recycle them (in a
            // release build a burst is over before one ends on its own,
            // and the barriers took every list: nothing was recycled).
            if i % 2_000 == 1_999 {
                k.rcu().synchronize();
            }
            // Bursts and pauses: the RCU thread falls behind, then
            // catches up.
            if i % 20_000 == 19_999 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for (j, b) in owned.into_iter().enumerate() {
            slots[j].store(core::ptr::null_mut(), Release);
            k.kfree_rcu_slab(b.unwrap()).unwrap();
        }
        common::wait_for("a few barriers", Duration::from_secs(120), || {
            takes.load(Relaxed) >= 3
        });
        stop.store(true, Relaxed);
    });
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    let st = cache.stats();
    assert_eq!((st.bad_frees, st.destructor_panics), (0, 0), "{st:?}");
    assert!(
        st.rcu_sheaves_recycled > 0 && st.rcu_sheaves > 0,
        "both ways taken: {st:?}"
    );
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0, "{:?}", cache.stats());
}

// ---------------------------------------------------------------------
// The fix of finding 2 queues a real-time thread's callback without
// waking the RCU worker: the worker's idle check (a timed sleep) must find
// it with nothing else to wake it.

static IDLE_CHECK_RAN: AtomicBool = AtomicBool::new(false);

/// Marks its drop.
struct MarksDrop;

impl Drop for MarksDrop {
    fn drop(&mut self) {
        IDLE_CHECK_RAN.store(true, SeqCst);
    }
}

/// In a child process (the process-wide RCU, with nothing else of krcu in
/// it that could wake its worker: no `Krcu`, so no monitor).
#[test]
fn a_real_time_threads_callback_runs_with_nothing_to_wake_the_worker() {
    common::child::assert_passes_in_child(
        "inner_a_real_time_threads_callback_runs_with_nothing_to_wake_the_worker",
        Duration::from_secs(120),
    );
}

#[test]
#[ignore = "run by its outer test in a child process"]
fn inner_a_real_time_threads_callback_runs_with_nothing_to_wake_the_worker() {
    let pages = common::pages::quiet_allocator(
        krcu::Domain::global(),
        16 << 20,
        krcu::page::Watermarks::NONE,
    );
    let cache: &'static krcu::slab::SlabCache<MarksDrop> = Box::leak(Box::new(
        krcu::slab::SlabCache::new(&pages, "rt-idle-check").unwrap(),
    ));
    krcu::rcu::rcu_barrier(); // builds the global RCU
    // Its worker goes idle (a timed sleep since the fix).
    std::thread::sleep(Duration::from_millis(300));
    std::thread::spawn(move || {
        krcu::context::set_realtime(true);
        let b = cache.alloc_box(MarksDrop).ok().unwrap();
        // Queued without waking the worker (no system call here).
        krcu::kfree_rcu_slab(b).ok().unwrap();
    })
    .join()
    .unwrap();
    // No krcu call from here on: only the worker's idle check can run it.
    let start = Instant::now();
    while !IDLE_CHECK_RAN.load(SeqCst) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the object a real-time thread retired was never dropped"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
