//! The real-time promise for slab sheaves, proven on the real-time thread:
//! a thread registered with [`Krcu::register_thread`] allocates every
//! object from a prefilled sheaf ([`SlabCache::prefill_sheaf`], made and
//! returned by a control thread), publishes some in an [`RcuCell`]
//! (`store_slab`, which retires the value it replaces) and retires the
//! rest with [`Krcu::kfree_rcu_slab`], into its own `rcu_free` sheaf;
//! a full sheaf goes to RCU with one `call_rcu` and comes back to the barn
//! as a full sheaf of free objects (which a later prefill takes); when no
//! empty sheaf can be had without blocking, the objects go through the
//! kvfree blocks instead. Over the whole loop the thread makes
//! - no global-allocator call, allocation or free (a counting global
//!   allocator, counted per thread);
//! - no blocking lock (krcu's per-thread lock counters);
//! - no system call at all: a seccomp filter on that thread alone traps
//!   every system call but `exit` and `rt_sigreturn` (`common::seccomp`);
//! - and runs no destructor (each object counts its drops per thread).
//!
//! The fallback is taken for sure in the first round (the barn holds no
//! empty sheaf until the control thread returns the first drained one),
//! and from then on every [`INJECT_EVERY`]-th retire by fault injection
//! (`FaultSites::SLAB_RCU_SHEAF`). Afterwards, off the sealed thread, a
//! barrier, and a ledger shows every object's destructor ran exactly once.
//!
//! The proof runs twice: with the filter, and without it (everything but
//! the system calls; this one also under valgrind, which itself makes
//! system calls for the thread). The sealed one is ignored while it fails:
//! submitting a full `rcu_free` sheaf wakes a sleeping RCU worker with
//! `FUTEX_WAKE` from the real-time thread.
//!
//! Also here: allocating and dropping slab boxes while holding a raw
//! spinlock under the PREEMPT_RT model, with the validator on.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use common::counting_alloc::{CountingAlloc, thread_allocs, thread_frees};
use common::seccomp;
use core::cell::{Cell, UnsafeCell};
use krcu::lock::thread_counters;
use krcu::page::{FaultSites, Gfp};
use krcu::slab::{PrefilledSheaf, SlabBox, SlabCache};
use krcu::{Krcu, RcuCell};
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Rounds: one prefilled sheaf each (the cache's default capacity, 64
/// objects), so about 19 000 objects and as many `rcu_free` sheaves
/// filled as the barn's empty sheaves allow.
const ROUNDS: usize = 300;
/// Objects asked of each prefilled sheaf.
const PER_ROUND: usize = krcu::slab::DEFAULT_SHEAF_CAPACITY;
/// Every this many objects is published in the cell (retiring the one
/// before) rather than retired at once.
const PUBLISH_EVERY: u64 = 8;
/// From the second round on, every this many retires into a sheaf is
/// handed back by fault injection, as if no sheaf could be had.
const INJECT_EVERY: u64 = 50;
/// How long the test waits for anything before it fails instead of hanging.
const WATCHDOG: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------
// The objects: a ledger of drops, per object and per thread
// ---------------------------------------------------------------------

const LIVE: u64 = 0x11FE_11FE_11FE_11FE;
const POISON: u64 = 0xDEAD_DEAD_DEAD_DEAD;

thread_local! {
    // const-initialised, no destructor: touching it never allocates.
    static DROPS: Cell<u64> = const { Cell::new(0) };
}

/// Destructors of `Item` the calling thread has run.
fn thread_drops() -> u64 {
    DROPS.with(Cell::get)
}

/// How often each object was dropped, by id.
struct Ledger {
    drops: Vec<AtomicU8>,
    next: AtomicU64,
    /// Drops of an object not live (twice, or corrupt).
    bad: AtomicU64,
}

impl Ledger {
    fn new(capacity: usize) -> Ledger {
        Ledger {
            drops: (0..capacity).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicU64::new(0),
            bad: AtomicU64::new(0),
        }
    }

    /// A new object: takes the next id (an atomic add, no allocation).
    fn item(&'static self) -> Item {
        let id = self.next.fetch_add(1, Relaxed);
        Item {
            state: AtomicU64::new(LIVE),
            id,
            check: check_of(id),
            ledger: self,
        }
    }

    fn assert_all_dropped_once(&self) {
        let issued = self.next.load(SeqCst) as usize;
        assert!(issued <= self.drops.len(), "ledger too small");
        assert_eq!(self.bad.load(SeqCst), 0, "objects dropped twice");
        for (id, d) in self.drops[..issued].iter().enumerate() {
            assert_eq!(
                d.load(SeqCst),
                1,
                "object {id} dropped {} times",
                d.load(SeqCst)
            );
        }
    }
}

fn check_of(id: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A_5A5A_5A5A_5A5A
}

/// A slab object: readers check it is live and intact; its drop poisons
/// it and counts itself in the ledger and in the dropping thread.
struct Item {
    state: AtomicU64,
    id: u64,
    check: u64,
    ledger: &'static Ledger,
}

impl Item {
    fn is_sound(&self) -> bool {
        self.state.load(Acquire) == LIVE && self.check == check_of(self.id)
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        if self.state.swap(POISON, AcqRel) != LIVE || self.check != check_of(self.id) {
            self.ledger.bad.fetch_add(1, SeqCst);
        }
        if self.ledger.drops[self.id as usize].fetch_add(1, SeqCst) != 0 {
            self.ledger.bad.fetch_add(1, SeqCst);
        }
        let _ = DROPS.try_with(|c| c.set(c.get() + 1));
    }
}

// ---------------------------------------------------------------------
// Handing prefilled sheaves between the control and real-time threads
// ---------------------------------------------------------------------

/// The control thread's turn (the mailbox is empty or holds a drained
/// sheaf for it).
const CONTROL: u8 = 0;
/// The real-time thread's turn: the mailbox holds a prefilled sheaf.
const REALTIME: u8 = 1;

/// One prefilled sheaf in flight between the two threads, without a lock
/// or a system call: `turn` says whose the content is; only that side
/// touches it, then passes the turn (Release; the other side's Acquire
/// load of `turn` sees what was written).
struct Mailbox<'c> {
    turn: AtomicU8,
    sheaf: UnsafeCell<Option<PrefilledSheaf<'c, Item>>>,
}

// SAFETY: the content is touched only by the side whose turn it is (see
// `take` and `put`), and a PrefilledSheaf of Send items is Send.
unsafe impl Sync for Mailbox<'_> {}

impl<'c> Mailbox<'c> {
    fn new() -> Self {
        Mailbox {
            turn: AtomicU8::new(CONTROL),
            sheaf: UnsafeCell::new(None),
        }
    }

    /// The content, if it is `side`'s turn.
    fn take(&self, side: u8) -> Option<PrefilledSheaf<'c, Item>> {
        if self.turn.load(Acquire) != side {
            return None;
        }
        // SAFETY: `side`'s turn: the other side does not touch the content
        // until `put` passes the turn back.
        unsafe { (*self.sheaf.get()).take() }
    }

    /// Leaves `sheaf` for the other side and passes the turn. The caller
    /// has the turn (it took the content, leaving `None`: nothing is
    /// dropped here).
    fn put(&self, sheaf: PrefilledSheaf<'c, Item>, to: u8) {
        // SAFETY: the caller's turn, as above.
        unsafe { *self.sheaf.get() = Some(sheaf) };
        self.turn.store(to, Release);
    }
}

// ---------------------------------------------------------------------
// The proof
// ---------------------------------------------------------------------

/// What the real-time thread measured over its loop.
#[derive(Default)]
struct Results {
    allocs: AtomicU64,
    frees: AtomicU64,
    drops: AtomicU64,
    blocking: AtomicU64,
    contended: AtomicU64,
    parks: AtomicU64,
    try_ok: AtomicU64,
    try_failed: AtomicU64,
    calls: AtomicU64,
    published: AtomicU64,
    refused: AtomicU64,
}

/// What both threads share.
struct Env<'c> {
    k: &'c Arc<Krcu>,
    cache: &'c SlabCache<Item>,
    cell: &'c RcuCell<Item, Arc<Krcu>>,
    ledger: &'static Ledger,
    mailbox: Mailbox<'c>,
    /// The thread has made its sheaves and registered (it may sleep until
    /// `go`).
    ready: AtomicBool,
    go: AtomicBool,
    /// The control thread failed: the real-time thread leaves its loop.
    abort: AtomicBool,
    seal: bool,
    results: Results,
}

/// The real-time thread: prepares its sheaves and registers ahead, seals
/// itself, runs `ROUNDS` rounds, publishes its counts, exits.
fn realtime_thread(env: &Env) -> ! {
    // Ahead, not yet real-time: this thread's slot of the cache with a
    // main sheaf (an allocation) and an `rcu_free` sheaf (a retire), the
    // cell's first slab value (retiring its boxed one), then the front
    // block and the real-time mark.
    let first = env.cache.alloc_box(env.ledger.item()).ok().unwrap();
    env.cell.store_slab(first).ok().unwrap();
    let second = env.cache.alloc_box(env.ledger.item()).ok().unwrap();
    env.k.kfree_rcu_slab(second).ok().unwrap();
    let _reader = env.k.register_thread();
    env.ready.store(true, Release);
    while !env.go.load(Acquire) {
        if env.abort.load(Relaxed) {
            seccomp::exit_thread();
        }
        std::thread::sleep(Duration::from_millis(1));
    }

    let (a0, f0, d0) = (thread_allocs(), thread_frees(), thread_drops());
    let c0 = thread_counters();
    if env.seal {
        seccomp::seal_thread();
    }
    // ---- no system call from here on ----
    let (mut calls, mut published, mut refused) = (0u64, 0u64, 0u64);
    'rounds: for _ in 0..ROUNDS {
        let mut sheaf = loop {
            if let Some(s) = env.mailbox.take(REALTIME) {
                break s;
            }
            if env.abort.load(Relaxed) {
                break 'rounds;
            }
            core::hint::spin_loop();
        };
        while !sheaf.is_empty() {
            let item = env.ledger.item();
            let id = item.id;
            let b = match sheaf.alloc_box(item) {
                Ok(b) => b,
                Err(item) => {
                    // Not reached (the sheaf is not empty). Not dropped:
                    // it would count in the ledger.
                    core::mem::forget(item);
                    refused += 1;
                    break;
                }
            };
            let r = if id.is_multiple_of(PUBLISH_EVERY) {
                published += 1;
                env.cell.store_slab(b)
            } else {
                env.k.kfree_rcu_slab(b)
            };
            if let Err(e) = r {
                // Not reached (task context, the instance's cache). Kept:
                // readers may still reach it.
                core::mem::forget(e);
                refused += 1;
            }
            calls += 1;
        }
        env.mailbox.put(sheaf, CONTROL);
    }
    let (a1, f1, d1) = (thread_allocs(), thread_frees(), thread_drops());
    let c = thread_counters() - c0;
    let r = &env.results;
    r.allocs.store(a1 - a0, Relaxed);
    r.frees.store(f1 - f0, Relaxed);
    r.drops.store(d1 - d0, Relaxed);
    r.blocking.store(c.blocking, Relaxed);
    r.contended.store(c.contended, Relaxed);
    r.parks.store(c.parks, Relaxed);
    r.try_ok.store(c.try_ok, Relaxed);
    r.try_failed.store(c.try_failed, Relaxed);
    r.calls.store(calls, Relaxed);
    r.published.store(published, Relaxed);
    r.refused.store(refused, Relaxed);
    seccomp::exit_thread()
}

/// Sets every flag it holds when dropped: the control thread's end, or
/// its failure, must not leave the reader or the real-time thread
/// spinning (a scope would wait for them for ever).
struct SetOnDrop<'a>(&'a [&'a AtomicBool]);
impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        for flag in self.0 {
            flag.store(true, SeqCst);
        }
    }
}

/// Joins the real-time thread however the control thread ends: first it
/// asks the thread to leave its loop (`abort`; a thread that has ended
/// already is not affected) and waits for its end, so that nothing the
/// thread borrows goes while it runs.
struct JoinOnDrop<'a> {
    rt: libc::pthread_t,
    abort: &'a AtomicBool,
}

impl Drop for JoinOnDrop<'_> {
    fn drop(&mut self) {
        self.abort.store(true, SeqCst);
        let t0 = Instant::now();
        while !seccomp::FILTERED_DONE.load(Acquire) {
            if t0.elapsed() > WATCHDOG {
                eprintln!("the real-time thread did not end; it borrows the test's state: abort");
                std::process::abort();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: the joinable thread the test spawned, joined once, here.
        let rc = unsafe { libc::pthread_join(self.rt, core::ptr::null_mut()) };
        assert!(rc == 0 || std::thread::panicking(), "pthread_join: {rc}");
    }
}

/// Waits (yielding) for `cond`, failing after the watchdog.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < WATCHDOG,
            "{what}: nothing after {WATCHDOG:?}"
        );
        std::thread::yield_now();
    }
}

/// The proof with the filter on (not under valgrind, which makes system
/// calls for the thread itself).
#[test]
fn a_sealed_realtime_thread_allocating_from_prefilled_sheaves_and_retiring_into_sheaves_makes_no_system_call()
 {
    if seccomp::under_valgrind() {
        println!("under valgrind: skipped (valgrind makes system calls for the sealed thread)");
        return;
    }
    prove(true);
}

/// The same loop without the filter (so also under valgrind): no
/// global-allocator call, no blocking lock, no destructor on the
/// real-time thread, every object dropped once.
#[test]
fn a_realtime_thread_allocating_from_prefilled_sheaves_and_retiring_into_sheaves_neither_allocates_frees_nor_blocks()
 {
    prove(false);
}

/// One sealed (or unsealed) thread at a time: the seal's records are
/// process-wide.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn prove(seal: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    seccomp::install_sigsys_handler();
    // 'static, as retired objects are (it leaks: a few kilobytes).
    let ledger: &'static Ledger = Box::leak(Box::new(Ledger::new(
        ROUNDS * krcu::slab::MAX_SHEAF_CAPACITY + 16,
    )));
    let k = Arc::new(Krcu::builder().arena_size(64 << 20).build().unwrap());
    let cache = k.slab_cache::<Item>("rt-sheaves").unwrap();
    let cell = RcuCell::new_in(k.clone(), ledger.item());
    let faults = k.pages().faults();
    let env = Env {
        k: &k,
        cache: &cache,
        cell: &cell,
        ledger,
        mailbox: Mailbox::new(),
        ready: AtomicBool::new(false),
        go: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        seal,
        results: Results::default(),
    };
    let (stop, reads, bad_reads) = (AtomicBool::new(false), AtomicU64::new(0), AtomicU64::new(0));
    let mut natural_fallbacks = 0;
    let s0 = cache.stats();

    std::thread::scope(|s| {
        let _stop = SetOnDrop(&[&stop, &env.abort]);
        // A reader: every value it reaches in the cell is live and intact.
        s.spawn(|| {
            let reader = k.rcu().register_thread();
            while !stop.load(Relaxed) {
                let g = reader.read_lock();
                if !cell.load(&g).is_some_and(Item::is_sound) {
                    bad_reads.fetch_add(1, Relaxed);
                }
                drop(g);
                reads.fetch_add(1, Relaxed);
            }
        });
        let rt = {
            let env = &env;
            let f = move || realtime_thread(env);
            // SAFETY: the thread borrows `env` (and through it the
            // instance, cache, cell and ledger), all of which outlive it:
            // `JoinOnDrop` joins it (pthread_join) before the scope ends,
            // on every path, a panicking one included (it asks the thread
            // to end first, and aborts the process rather than return
            // while the thread runs).
            unsafe {
                std::thread::Builder::new()
                    .name("krcu-rt-sheaves".into())
                    .spawn_unchecked(f)
            }
            .expect("spawn the real-time thread")
        };
        // The handle goes as a pthread_t: the thread ends with a raw exit,
        // so std's join (which expects the thread's result) cannot be used.
        let rt = JoinOnDrop {
            rt: rt.into_pthread_t(),
            abort: &env.abort,
        };

        wait_for("the real-time thread's preparation", || {
            env.ready.load(Acquire)
        });
        wait_for("the reader's first pass", || reads.load(Relaxed) > 0);
        // The first round's fallback needs a barn without empty sheaves.
        let s_ready = cache.stats();
        assert_eq!(s_ready.barn_empty, 0, "{s_ready:?}");
        env.mailbox.put(
            cache.prefill_sheaf(Gfp::KERNEL, PER_ROUND).unwrap(),
            REALTIME,
        );
        env.go.store(true, Release);
        for round in 1..=ROUNDS {
            // The next round's sheaf, made while the thread drains this one.
            let next =
                (round < ROUNDS).then(|| cache.prefill_sheaf(Gfp::KERNEL, PER_ROUND).unwrap());
            let mut drained = None;
            wait_for("a drained sheaf", || {
                drained = env.mailbox.take(CONTROL);
                drained.is_some() || seccomp::FILTERED_DONE.load(Acquire)
            });
            let Some(drained) = drained else {
                break; // the thread ended early (trapped): checked below
            };
            assert!(drained.is_empty(), "round {round}: {drained:?}");
            drained.return_sheaf();
            if round == 1 {
                natural_fallbacks = cache.stats().rcu_fallbacks - s0.rcu_fallbacks;
                faults.fail_every(INJECT_EVERY, FaultSites::SLAB_RCU_SHEAF);
            }
            if let Some(next) = next {
                env.mailbox.put(next, REALTIME);
            }
        }
        wait_for("the real-time thread's end", || {
            seccomp::FILTERED_DONE.load(Acquire)
        });
        drop(rt);
        faults.clear();
        stop.store(true, Relaxed);
    });

    let trapped = seccomp::TRAPPED.load(SeqCst);
    if trapped != -1 {
        // The trapped call never happened: if it was the wake-up of a
        // sleeping worker, that worker now sleeps for good with work
        // queued, and a barrier (the cache's drop among them) would wait
        // for ever. Leave everything to the process's end.
        let at = seccomp::TRAPPED_AT.load(SeqCst);
        std::mem::forget(env);
        std::mem::forget(cell);
        std::mem::forget(cache);
        std::mem::forget(k);
        panic!("the real-time thread made system call {trapped} (returning to {at:#x})");
    }
    let r = &env.results;
    let (blocking, contended, parks) = (
        r.blocking.load(SeqCst),
        r.contended.load(SeqCst),
        r.parks.load(SeqCst),
    );
    let s1 = cache.stats();
    let fallbacks = s1.rcu_fallbacks - s0.rcu_fallbacks;
    println!(
        "real-time thread: {} objects from {ROUNDS} prefilled sheaves, {} published, \
         {} reads beside; rcu_free sheaves submitted {}, back {}; fallbacks {fallbacks} \
         ({natural_fallbacks} in the first round, without an empty sheaf); \
         allocs {}, frees {}, drops {}; locks: {blocking} blocking \
         ({contended} contended, {parks} parks), {} trylocks taken, {} failed",
        r.calls.load(SeqCst),
        r.published.load(SeqCst),
        reads.load(SeqCst),
        s1.rcu_sheaves - s0.rcu_sheaves,
        s1.rcu_sheaves_done - s0.rcu_sheaves_done,
        r.allocs.load(SeqCst),
        r.frees.load(SeqCst),
        r.drops.load(SeqCst),
        r.try_ok.load(SeqCst),
        r.try_failed.load(SeqCst),
    );
    assert_eq!(r.refused.load(SeqCst), 0);
    assert!(r.calls.load(SeqCst) >= (ROUNDS * PER_ROUND) as u64);
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
    assert_eq!(blocking, 0, "blocking locks on the real-time thread");
    assert_eq!(contended, 0);
    assert_eq!(parks, 0);
    assert_eq!(
        bad_reads.load(SeqCst),
        0,
        "a reader reached a dropped value"
    );
    // The paths the proof is about were taken.
    assert!(
        s1.rcu_sheaves - s0.rcu_sheaves >= 3,
        "several rcu_free sheaves filled and submitted: {s1:?}"
    );
    assert!(
        natural_fallbacks > 0,
        "the first round never fell back: {s1:?}"
    );
    assert!(
        fallbacks > natural_fallbacks,
        "no injected fallback: {s1:?}"
    );

    // Every object's destructor ran once: the cell's last value too.
    drop(env);
    drop(cell);
    k.kvfree_rcu_barrier();
    ledger.assert_all_dropped_once();
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0, "{:?}", cache.stats());
}

// ---------------------------------------------------------------------
// Slab boxes under a raw lock, PREEMPT_RT
// ---------------------------------------------------------------------

/// Boxes allocated under a raw lock per test: many sheaves' worth, so that
/// the slow paths run (exchanges at the CPU and the barn, refills from the
/// slabs, new slabs).
#[cfg(any(debug_assertions, feature = "lockdep"))]
const UNDER_RAW: usize = 2000;

/// What allocating `UNDER_RAW` boxes under a raw lock with `alloc`, on a
/// PREEMPT_RT instance with the validator collecting, gave.
#[cfg(any(debug_assertions, feature = "lockdep"))]
struct UnderRaw {
    reports: Vec<krcu::lockdep::Report>,
    allocated: usize,
    stats: krcu::slab::SlabStats,
}

/// Allocates (after `warm` boxes allocated and dropped outside the lock,
/// which give the thread its own sheaf of the cache) `UNDER_RAW` boxes
/// with `alloc` while holding a raw spinlock, and drops them under it too;
/// then checks every value was dropped once and every slab goes back.
#[cfg(any(debug_assertions, feature = "lockdep"))]
fn under_raw_lock_on_preempt_rt(
    warm: usize,
    alloc: impl Fn(&SlabCache<Item>, Item) -> Result<SlabBox<Item>, Item>,
) -> UnderRaw {
    use krcu::context::PreemptModel;
    use krcu::lock::RawSpinLock;
    use krcu::lockdep::{ReportHandler, ReportLog};
    let log = ReportLog::new();
    let k = Krcu::builder()
        .arena_size(64 << 20)
        .cpus(1)
        .preempt_model(PreemptModel::Rt)
        .prove_raw_lock_nesting(true)
        .report_handler(ReportHandler::Collect(log.clone()))
        .build()
        .unwrap();
    let ledger: &'static Ledger = Box::leak(Box::new(Ledger::new(UNDER_RAW + warm)));
    let cache = k.slab_cache::<Item>("boxes under raw").unwrap();
    let warmed: Vec<_> = (0..warm)
        .map(|_| cache.alloc_box(ledger.item()).ok().unwrap())
        .collect();
    drop(warmed);
    let raw = RawSpinLock::named(k.domain(), "caller_raw_lock", ());
    let mut boxes = Vec::with_capacity(UNDER_RAW);
    let mut allocated = 0;
    {
        let _g = raw.lock();
        for _ in 0..UNDER_RAW {
            // A value no memory was found for is dropped at once.
            if let Ok(b) = alloc(&cache, ledger.item()) {
                boxes.push(b);
                allocated += 1;
            }
        }
        // Freed under the lock too.
        drop(core::mem::take(&mut boxes));
    }
    let reports = log.take();
    ledger.assert_all_dropped_once();
    let stats = cache.stats();
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0, "{:?}", cache.stats());
    UnderRaw {
        reports,
        allocated,
        stats,
    }
}

/// The reports, counted by kind, lock and place.
#[cfg(any(debug_assertions, feature = "lockdep"))]
fn summary(reports: &[krcu::lockdep::Report]) -> String {
    let mut kinds = std::collections::BTreeMap::new();
    for r in reports {
        *kinds
            .entry(format!("{:?} {:?} at {}", r.kind, r.class, r.at))
            .or_insert(0) += 1;
    }
    format!("{} reports: {kinds:#?}", reports.len())
}

/// The way to allocate under a raw lock ([`Gfp::NO_LOCKS`], the kernel's
/// `kmalloc_nolock`), and the drop of a box there, take no lock of the
/// cache on PREEMPT_RT (where they sleep): no report, whether the thread
/// has a sheaf of its own or not. An allocation may fail there (no lock,
/// no refill): the others succeed.
#[cfg(any(debug_assertions, feature = "lockdep"))]
#[test]
fn boxes_allocated_with_no_locks_and_dropped_under_a_raw_lock_on_preempt_rt_raise_no_report() {
    let no_locks = |c: &SlabCache<Item>, v| SlabBox::new_in_gfp(c, Gfp::NO_LOCKS, v);
    for warm in [0, 2 * PER_ROUND] {
        let r = under_raw_lock_on_preempt_rt(warm, no_locks);
        println!(
            "warm {warm}: {} of {UNDER_RAW} allocated, {}; {:?}",
            r.allocated,
            summary(&r.reports),
            r.stats
        );
        assert!(r.reports.is_empty(), "warm {warm}: {}", summary(&r.reports));
        assert!(r.allocated > 0, "nothing allocated: {:?}", r.stats);
        if warm > 0 {
            assert!(
                r.stats.sheaf_alloc_hits > warm as u64,
                "the thread's own sheaf served none: {:?}",
                r.stats
            );
        }
    }
}

/// `alloc_box` is `Gfp::KERNEL` (it may sleep for memory): under a raw
/// lock that is the caller's bug, and the validator says so at the
/// caller's line, once per call ("sleeping function called from invalid
/// context"); what it then finds inside (the cache's locks, which sleep on
/// PREEMPT_RT, taken in atomic context) is the same bug. The boxes'
/// drops under the lock add nothing.
#[cfg(any(debug_assertions, feature = "lockdep"))]
#[test]
fn alloc_box_under_a_raw_lock_on_preempt_rt_is_reported_at_the_caller() {
    use krcu::lockdep::ReportKind;
    let r = under_raw_lock_on_preempt_rt(0, |c, v| c.alloc_box(v));
    println!("{}", summary(&r.reports));
    let at_caller = r
        .reports
        .iter()
        .filter(|x| {
            matches!(x.kind, ReportKind::SleepInInvalidContext) && x.at.starts_with(file!())
        })
        .count();
    assert_eq!(at_caller, UNDER_RAW, "{}", summary(&r.reports));
    assert!(
        r.reports.iter().all(|x| matches!(
            x.kind,
            ReportKind::SleepInInvalidContext | ReportKind::InvalidWaitContext
        )),
        "{}",
        summary(&r.reports)
    );
    // The drops under the lock (deferred: no lock of the cache) report
    // nothing: all the others are the allocations' slow paths.
    assert!(r.stats.deferred_frees > 0, "{:?}", r.stats);
}
