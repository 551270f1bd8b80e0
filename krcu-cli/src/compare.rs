//! `krcu compare`: one end-to-end workload through krcu, crossbeam-epoch,
//! seize, (liburcu's `call_rcu` with the `liburcu` feature) and dropping
//! the Box at once: per writer thread, N times, allocate a 24-byte object,
//! publish it in the thread's slot, retire the one it replaced, while
//! reader threads traverse every slot under the system's read-side
//! protection and check each object's LIVE/POISON word; the clock stops
//! when every object is freed, and the ledger (every destructor ran once,
//! no reader saw a dropped object) must balance or the run fails. Systems
//! run with library defaults, each run in a fresh process, interleaved in
//! a rotating order, round after round; ratios are per round.

use crate::args::{self, CliError, CmdResult};
use crate::checked::{Checked, Ledger, check_slots, drops, load_acquire};
use crate::output::{emit, round};
use crate::progress::Progress;
use crate::table::{Column, Table};
use crate::workload::{Reports, Setup, median, peak_rss_bytes};
use crossbeam_utils::CachePadded;
use krcu::Krcu;
use krcu::context::PreemptModel;
use krcu::kvfree::Policy;
use krcu::slab::SlabBox;
use seize::Guard;
use serde::Serialize;
use std::ptr::NonNull;
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::time::{Duration, Instant};

/// Options of `krcu compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Objects each thread allocates, publishes and retires per run, 1 to
    /// 20_000_000 (the whole comparison takes about 5 s per million).
    #[arg(long, default_value = "2_000_000", allow_negative_numbers = true, value_parser = args::compare_objects)]
    pub objects: usize,
    /// The most writer threads, 1 to 256: every system runs with 1 writer
    /// and with this many, plus reader threads checking published objects
    /// during the timed part (one per two writers, at least one); "drop at
    /// once" runs without readers (it frees with no deferral), and "drop at
    /// once, readers on the slots" with readers that only load each slot's
    /// pointer and count it, never reading the object (it checks no object:
    /// its violations are 0 by construction), the floor any system with
    /// readers pays here.
    #[arg(long, default_value = "2", allow_negative_numbers = true, value_parser = args::threads)]
    pub threads: usize,
    /// Rounds, 1 to 100 (each runs every system once per thread count).
    #[arg(long, default_value = "5", allow_negative_numbers = true, value_parser = args::rounds)]
    pub rounds: usize,
    /// krcu's policy.
    #[arg(long, default_value_t = Policy::default())]
    pub policy: Policy,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run every system in this process (the default runs each run in a
    /// fresh process of its own, so that its peak RSS is its own).
    #[arg(long)]
    pub in_process: bool,
    /// Internal: run the system of this index once at this many threads
    /// (`INDEX:THREADS`), in this process, and print its result for the
    /// parent.
    #[arg(long, hide = true)]
    pub one: Option<String>,
    /// Internal, for tests of the ledger: each writer forgets its last
    /// object instead of retiring it, so every run must fail.
    #[arg(long, hide = true)]
    pub leak_last: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Krcu,
    /// krcu with callers freeing what is ready (Assist::Always).
    KrcuAssist,
    /// krcu's slab path: `SlabBox` from a shared cache, retired with
    /// `kfree_rcu_slab` (into the thread's `rcu_free` sheaf when the
    /// sheaves are built; the kvfree blocks otherwise).
    KrcuSheaves,
    CrossbeamEpoch,
    Seize,
    #[cfg(feature = "liburcu")]
    Liburcu,
    Drop,
    /// Drop at once with readers that load every slot's pointer and never
    /// dereference it: what the readers' presence alone costs the writers.
    DropReaders,
}

impl System {
    const ALL: &[System] = &[
        System::Krcu,
        System::KrcuAssist,
        System::KrcuSheaves,
        System::CrossbeamEpoch,
        System::Seize,
        #[cfg(feature = "liburcu")]
        System::Liburcu,
        System::Drop,
        System::DropReaders,
    ];

    fn name(self) -> &'static str {
        match self {
            System::Krcu => "krcu kfree_rcu",
            System::KrcuAssist => "krcu, assist always",
            System::KrcuSheaves => "krcu sheaves (SlabBox)",
            System::CrossbeamEpoch => "crossbeam-epoch",
            System::Seize => "seize",
            #[cfg(feature = "liburcu")]
            System::Liburcu => "liburcu call_rcu",
            System::Drop => "drop at once",
            System::DropReaders => "drop at once, readers on the slots",
        }
    }
}

/// One system at one thread count, over the rounds.
#[derive(Debug, Serialize)]
pub struct Row {
    pub system: &'static str,
    pub threads: usize,
    pub objects_per_s: Stat,
    pub ns_per_object: f64,
    /// krcu only: the most memory waiting for a grace period (objects and
    /// block pages), median over the rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_pending_bytes: Option<u64>,
    /// Peak resident memory of the process that ran it (fresh per run),
    /// median over the rounds; absent with `--in-process`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// krcu's objects/s ÷ this system's, per round (absent for krcu).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub krcu_ratio: Option<Stat>,
    /// The sheaf path's objects/s ÷ this system's, per round (absent for
    /// the sheaf path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sheaves_ratio: Option<Stat>,
    /// The measured runs' ledger, summed over the rounds (readers: per
    /// run): every run's objects were all dropped, once, and its readers
    /// saw no dropped object, or the comparison failed.
    pub ledger: Ledger,
}

/// Min, median and max over the rounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stat {
    fn of(v: &[f64], digits: i32) -> Stat {
        let mut v = v.to_vec();
        let med = median(&mut v);
        Stat {
            min: round(v.first().copied().unwrap_or(0.0), digits),
            median: round(med, digits),
            max: round(v.last().copied().unwrap_or(0.0), digits),
        }
    }
}

/// `krcu compare`'s result.
#[derive(Debug, Serialize)]
pub struct CompareResult {
    pub objects_per_thread: usize,
    pub object_bytes: usize,
    pub rounds: usize,
    pub policy: String,
    pub liburcu: bool,
    pub rows: Vec<Row>,
}

type Slots = [CachePadded<AtomicPtr<Checked>>];

/// Reader threads for a run with `writers` writer threads: one per two
/// writers, at least one.
pub fn readers_for(writers: usize) -> usize {
    (writers / 2).max(1)
}

/// What the timed part of a run returns (the caller stops the clock once
/// everything retired is freed).
struct Timed {
    start: Instant,
    allocated: u64,
    readers: u64,
    checked: u64,
    violations: u64,
}

/// The workload of one writer: `n` times, allocate an object, publish it
/// in `slot` and hand the one it replaced (unlinked, so the caller's) to
/// `retire`; at the end unlink and retire the last one. Returns the objects
/// allocated.
fn churn(slot: &AtomicPtr<Checked>, n: usize, mut retire: impl FnMut(*mut Checked)) -> u64 {
    for i in 0..=n {
        let new = if i < n {
            Box::into_raw(Box::new(Checked::new()))
        } else {
            core::ptr::null_mut()
        };
        let old = slot.swap(new, AcqRel);
        let forget = i == n && leak_last();
        if !old.is_null() && !forget {
            retire(old);
        }
    }
    n as u64
}

/// Set by `--leak-last` (tests of the ledger): each writer forgets its last
/// object instead of retiring it.
static LEAK_LAST: AtomicBool = AtomicBool::new(false);

fn leak_last() -> bool {
    LEAK_LAST.load(Relaxed)
}

/// How readers and the clock meet: readers say they are reading before
/// the clock starts, and stop once the writers are done.
#[derive(Default)]
struct ReadPhase {
    started: AtomicUsize,
    stop: AtomicBool,
}

/// A reader's loop: `pass` (one protected traversal of every slot) until
/// the writers are done; the first pass (before the clock starts) tells
/// the run this reader is up. Returns the objects checked and the
/// violations.
fn read_until(phase: &ReadPhase, mut pass: impl FnMut() -> (u64, u64)) -> (u64, u64) {
    let (mut checked, mut bad) = pass();
    // Relaxed: a count to wait for, publishing nothing.
    phase.started.fetch_add(1, Relaxed);
    loop {
        let (c, b) = pass();
        checked += c;
        bad += b;
        if phase.stop.load(Acquire) {
            return (checked, bad);
        }
    }
}

/// Runs `reader` on `readers` threads over all the slots and, once they
/// are all reading, starts the clock and runs `writer` on `threads`
/// threads, each with its own slot; the readers stop when the writers are
/// done.
fn timed(
    threads: usize,
    readers: usize,
    objects: usize,
    writer: impl Fn(&AtomicPtr<Checked>, usize) -> u64 + Sync,
    reader: impl Fn(&Slots, &ReadPhase) -> (u64, u64) + Sync,
) -> Timed {
    let slots: Box<Slots> = (0..threads)
        .map(|_| CachePadded::new(AtomicPtr::new(core::ptr::null_mut())))
        .collect();
    let phase = ReadPhase::default();
    let mut start = Instant::now();
    let (allocated, checked, violations) = std::thread::scope(|s| {
        let (slots, phase, reader, writer) = (&*slots, &phase, &reader, &writer);
        let rs: Vec<_> = (0..readers)
            .map(|_| s.spawn(move || reader(slots, phase)))
            .collect();
        while phase.started.load(Relaxed) < readers {
            if rs.iter().any(|h| h.is_finished()) {
                break; // a reader panicked: joined below, which resumes it
            }
            std::thread::yield_now();
        }
        start = Instant::now();
        let ws: Vec<_> = slots
            .iter()
            .map(|slot| s.spawn(move || writer(slot, objects)))
            .collect();
        let allocated: u64 = ws.into_iter().map(join).sum();
        // Release: pairs with the readers' acquire load; nothing rides on
        // it but the end of their loop.
        phase.stop.store(true, Release);
        let (c, v) = rs
            .into_iter()
            .map(join)
            .fold((0, 0), |(c, v), (a, b)| (c + a, v + b));
        (allocated, c, v)
    });
    Timed {
        start,
        allocated,
        readers: readers as u64,
        checked,
        violations,
    }
}

fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// krcu's readers: `rcu_read_lock` around a pass.
fn krcu_reader(k: &Krcu) -> impl Fn(&Slots, &ReadPhase) -> (u64, u64) + Sync + '_ {
    move |slots, phase| {
        read_until(phase, || {
            let _g = k.rcu().read_lock();
            check_slots(slots, |s| load_acquire(s))
        })
    }
}

fn run_krcu(k: &Krcu, threads: usize, readers: usize, objects: usize) -> (Duration, Timed) {
    let t = timed(
        threads,
        readers,
        objects,
        |slot, n| {
            churn(slot, n, |old| {
                // SAFETY: unlinked from the slot just now: ours.
                k.kfree_rcu(unsafe { Box::from_raw(old) })
                    .expect("refused only in NMI context, which this thread never enters");
            })
        },
        krcu_reader(k),
    );
    k.kvfree_rcu_barrier();
    (t.start.elapsed(), t)
}

/// The slab path: the same workload with objects of a cache shared by the
/// threads (made off the clock), retired with `kfree_rcu_slab`; the slot
/// holds the box's object, given up with `into_raw` while published.
fn run_krcu_sheaves(k: &Krcu, threads: usize, readers: usize, objects: usize) -> (Duration, Timed) {
    let cache = k
        .slab_cache::<Checked>("compare")
        .expect("a 24-byte object fits a slab");
    let t = timed(
        threads,
        readers,
        objects,
        |slot, n| {
            for i in 0..=n {
                let new = if i < n {
                    let b = cache
                        .alloc_box(Checked::new())
                        .unwrap_or_else(|_| panic!("krcu compare: the arena is full"));
                    SlabBox::into_raw(b).as_ptr()
                } else {
                    core::ptr::null_mut()
                };
                if let Some(old) = NonNull::new(slot.swap(new, AcqRel))
                    && !(i == n && leak_last())
                {
                    // SAFETY: unlinked from the slot just now: the box given
                    // up with into_raw when it was published, ours again.
                    let old = unsafe { SlabBox::from_raw(old) };
                    if k.kfree_rcu_slab(old).is_err() {
                        unreachable!("refused only in NMI context or for another instance's cache");
                    }
                }
            }
            n as u64
        },
        krcu_reader(k),
    );
    k.kvfree_rcu_barrier();
    (t.start.elapsed(), t)
}

fn run_crossbeam(threads: usize, readers: usize, objects: usize) -> (Duration, Timed) {
    let collector = crossbeam_epoch::Collector::new();
    let t = timed(
        threads,
        readers,
        objects,
        |slot, n| {
            let handle = collector.register();
            churn(slot, n, |old| {
                let guard = handle.pin();
                let old = SendPtr(old);
                // SAFETY: unlinked; freed once, after every guard pinned
                // before now is gone.
                unsafe { guard.defer_unchecked(move || drop(Box::from_raw(old.get()))) };
            })
        },
        |slots, phase| {
            let handle = collector.register();
            read_until(phase, || {
                // The slot's raw load under a pinned guard: what
                // `Atomic::load` does, on the slot type the systems share.
                let _g = handle.pin();
                check_slots(slots, |s| load_acquire(s))
            })
        },
    );
    // The collector's last reference: everything deferred is run.
    drop(collector);
    (t.start.elapsed(), t)
}

fn run_seize(threads: usize, readers: usize, objects: usize) -> (Duration, Timed) {
    let collector = seize::Collector::new();
    let t = timed(
        threads,
        readers,
        objects,
        |slot, n| {
            churn(slot, n, |old| {
                // SAFETY: unlinked; allocated with Box.
                unsafe { collector.retire(old, seize::reclaim::boxed) };
            })
        },
        |slots, phase| {
            read_until(phase, || {
                let g = collector.enter();
                check_slots(slots, |s| g.protect(s, Acquire))
            })
        },
    );
    // Dropping the collector reclaims everything retired.
    drop(collector);
    (t.start.elapsed(), t)
}

/// No deferral: nothing may read what a writer frees at once. With no
/// readers, the speed reference (not a safe system); with `readers`, each
/// only loads every slot's pointer (acquire, as the other systems' readers
/// do) and counts the non-null ones, never dereferencing one, which is
/// safe with no deferral: the slots' cache lines move between the writers'
/// swaps and the readers' loads as in every other system, so this is the
/// floor any system with readers pays in this workload. It checks no
/// object: its violations are 0 by construction.
fn run_drop(threads: usize, readers: usize, objects: usize) -> (Duration, Timed) {
    let t = timed(
        threads,
        readers,
        objects,
        |slot, n| {
            churn(slot, n, |old| {
                // SAFETY: unlinked; readers never dereference a slot's
                // pointer here, so nobody else can reach it.
                drop(unsafe { Box::from_raw(old) });
            })
        },
        |slots, phase| read_until(phase, || (count_slots(slots), 0)),
    );
    (t.start.elapsed(), t)
}

/// A pass of the reader of "drop at once, readers on the slots": the
/// non-null pointers among the slots, each loaded with acquire (as
/// `load_acquire`) and never dereferenced.
#[inline]
fn count_slots(slots: &Slots) -> u64 {
    slots.iter().filter(|s| !load_acquire(s).is_null()).count() as u64
}

/// A raw pointer moved into a deferred closure.
struct SendPtr(*mut Checked);
// SAFETY: the pointer is only used to free the object, once, on one thread.
unsafe impl Send for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut Checked {
        self.0
    }
}

#[cfg(feature = "liburcu")]
mod urcu {
    //! liburcu's memb flavour, linked from liburcu-dev (`urcu-memb`).
    use super::{Checked, Timed, check_slots, churn, load_acquire, read_until, timed};
    use std::time::Duration;

    /// `struct rcu_head` (urcu/call-rcu.h): a wait-free queue node and a
    /// function, two words, the same size as krcu's RcuHead.
    #[repr(C)]
    pub struct UrcuHead {
        next: *mut UrcuHead,
        func: unsafe extern "C" fn(*mut UrcuHead),
    }
    const _: () = assert!(size_of::<UrcuHead>() == size_of::<krcu::rcu::RcuHead>());

    #[link(name = "urcu-memb")]
    unsafe extern "C" {
        fn urcu_memb_register_thread();
        fn urcu_memb_unregister_thread();
        fn urcu_memb_read_lock();
        fn urcu_memb_read_unlock();
        fn urcu_memb_call_rcu(head: *mut UrcuHead, func: unsafe extern "C" fn(*mut UrcuHead));
        fn urcu_memb_barrier();
    }

    unsafe extern "C" fn free_obj(head: *mut UrcuHead) {
        // SAFETY: the head is the `head` field of a leaked Box<Checked>.
        unsafe {
            let obj = head
                .byte_sub(core::mem::offset_of!(Checked, head))
                .cast::<Checked>();
            drop(Box::from_raw(obj));
        }
    }

    pub fn run(threads: usize, readers: usize, objects: usize) -> (Duration, Timed) {
        let t = timed(
            threads,
            readers,
            objects,
            |slot, n| {
                // SAFETY: registering the calling thread has no preconditions.
                unsafe { urcu_memb_register_thread() };
                let made = churn(slot, n, |old| {
                    // SAFETY: unlinked; the object's RcuHead field is two
                    // words, unused while liburcu owns it as its rcu_head;
                    // free_obj frees the Box once.
                    unsafe {
                        let head = (&raw mut (*old).head).cast::<UrcuHead>();
                        urcu_memb_call_rcu(head, free_obj);
                    }
                });
                // SAFETY: registered above.
                unsafe { urcu_memb_unregister_thread() };
                made
            },
            |slots, phase| {
                // SAFETY: registering the calling thread has no preconditions.
                unsafe { urcu_memb_register_thread() };
                let seen = read_until(phase, || {
                    // SAFETY: a registered thread; unlocked below, once.
                    unsafe { urcu_memb_read_lock() };
                    let r = check_slots(slots, |s| load_acquire(s));
                    // SAFETY: the lock taken above.
                    unsafe { urcu_memb_read_unlock() };
                    r
                });
                // SAFETY: registered above, outside any read-side section.
                unsafe { urcu_memb_unregister_thread() };
                seen
            },
        );
        // SAFETY: waits for every callback queued so far.
        unsafe { urcu_memb_barrier() };
        (t.start.elapsed(), t)
    }
}

/// One run's figures in its process.
struct Measured {
    time: Duration,
    pending: u64,
    ledger: Ledger,
}

/// Runs one system; krcu gets a fresh instance (built off the clock) so
/// its peak pending memory is this run's. The ledger is read when the
/// clock has stopped: every object allocated must have been dropped, once,
/// and no reader may have seen a dropped object.
fn run_one(
    system: System,
    setup: &Setup,
    threads: usize,
    objects: usize,
) -> Result<Measured, CliError> {
    let readers = readers_for(threads);
    let (drops0, doubles0) = drops();
    let ((time, t), pending) = match system {
        System::Krcu | System::KrcuAssist => {
            let setup = Setup {
                assist: (system == System::KrcuAssist).then_some(krcu::kvfree::Assist::Always),
                ..*setup
            };
            let k = setup.build(&Reports::default())?;
            let r = run_krcu(&k, threads, readers, objects);
            (r, k.stats().peak_pending_bytes)
        }
        System::KrcuSheaves => {
            let k = setup.build(&Reports::default())?;
            let r = run_krcu_sheaves(&k, threads, readers, objects);
            (r, k.stats().peak_pending_bytes)
        }
        System::CrossbeamEpoch => (run_crossbeam(threads, readers, objects), 0),
        System::Seize => (run_seize(threads, readers, objects), 0),
        #[cfg(feature = "liburcu")]
        System::Liburcu => (urcu::run(threads, readers, objects), 0),
        System::Drop => (run_drop(threads, 0, objects), 0),
        System::DropReaders => (run_drop(threads, readers, objects), 0),
    };
    let (drops1, doubles1) = drops();
    let ledger = Ledger {
        allocated: t.allocated,
        dropped: drops1 - drops0,
        double_drops: doubles1 - doubles0,
        readers: t.readers,
        checked: t.checked,
        violations: t.violations,
    };
    if let Some(fault) = ledger.fault() {
        return Err(CliError::Failed(format!(
            "krcu compare: {} at {threads} threads failed its ledger: {fault}",
            system.name()
        )));
    }
    Ok(Measured {
        time,
        pending,
        ledger,
    })
}

/// One run's figures, as the parent sees them.
struct RunResult {
    time: Duration,
    pending: u64,
    rss: u64,
    ledger: Ledger,
}

/// Runs `system` once in a fresh process (this program, `compare --one`),
/// which warms up and runs it; returns its figures, or the child's own
/// error line (a failed ledger among them).
fn run_isolated(a: &Args, si: usize, threads: usize) -> Result<RunResult, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Failed(format!("krcu compare: no executable: {e}")))?;
    let out = std::process::Command::new(exe)
        .args([
            "compare",
            "--one",
            &format!("{si}:{threads}"),
            "--objects",
            &a.objects.to_string(),
            "--policy",
            &a.policy.to_string(),
        ])
        .args(a.leak_last.then_some("--leak-last"))
        .output()
        .map_err(|e| CliError::Failed(format!("krcu compare: cannot run a system: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if !out.status.success() || v.len() != 9 {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().rev().find(|l| !l.trim().is_empty());
        return Err(CliError::Failed(match line {
            // The child's own line, without the prefix main gives it.
            Some(l) if l.trim_start_matches("krcu: ").starts_with("krcu compare:") => {
                l.trim_start_matches("krcu: ").to_string()
            }
            _ => format!(
                "krcu compare: {} failed in its own process ({}): {} {}",
                System::ALL[si].name(),
                out.status,
                text.trim(),
                err.trim()
            ),
        }));
    }
    Ok(RunResult {
        time: Duration::from_nanos(v[0]),
        pending: v[1],
        rss: v[2],
        ledger: Ledger {
            allocated: v[3],
            dropped: v[4],
            double_drops: v[5],
            readers: v[6],
            checked: v[7],
            violations: v[8],
        },
    })
}

/// `compare --one INDEX:THREADS`: a warm-up and one run of one system in
/// this process, both held to the ledger; prints nanoseconds, peak pending
/// bytes, peak RSS bytes, then the measured run's ledger (allocated,
/// dropped, double drops, readers, objects checked, violations).
fn run_one_here(a: &Args, spec: &str) -> CmdResult {
    let bad = || CliError::Usage(format!("--one {spec}: expected INDEX:THREADS"));
    let (si, threads) = spec.split_once(':').ok_or_else(bad)?;
    let si: usize = si.parse().map_err(|_| bad())?;
    let threads: usize = threads.parse().map_err(|_| bad())?;
    let system = *System::ALL.get(si).ok_or_else(bad)?;
    let setup = Setup::new(a.policy, PreemptModel::Full);
    run_one(system, &setup, 1, a.objects / 10 + 1)?;
    let m = run_one(system, &setup, threads, a.objects)?;
    let l = m.ledger;
    println!(
        "{} {} {} {} {} {} {} {} {}",
        m.time.as_nanos(),
        m.pending,
        peak_rss_bytes(),
        l.allocated,
        l.dropped,
        l.double_drops,
        l.readers,
        l.checked,
        l.violations
    );
    Ok(())
}

/// Runs the comparison; used by `krcu compare` and the tour.
pub fn measure(a: &Args, quiet: bool) -> Result<CompareResult, crate::args::CliError> {
    let setup = Setup::new(a.policy, PreemptModel::Full);
    let counts: Vec<usize> = if a.threads == 1 {
        vec![1]
    } else {
        vec![1, a.threads]
    };
    let systems = System::ALL;
    // rates[count][system][round], pending likewise.
    let mut rates = vec![vec![Vec::new(); systems.len()]; counts.len()];
    let mut pending = vec![vec![Vec::new(); systems.len()]; counts.len()];
    let mut rss = vec![vec![Vec::new(); systems.len()]; counts.len()];
    let mut ledgers = vec![vec![Ledger::default(); systems.len()]; counts.len()];
    let mut progress = Progress::new(
        "compare",
        (a.rounds * counts.len() * systems.len()) as u64,
        quiet,
    );
    // A warm-up of each, not measured: page faults, allocator arenas (a
    // fresh process warms up itself).
    if a.in_process {
        for &s in systems {
            run_one(s, &setup, 1, a.objects / 10 + 1)?;
        }
    }
    for round in 0..a.rounds {
        for (ci, &threads) in counts.iter().enumerate() {
            for j in 0..systems.len() {
                let si = (j + round) % systems.len();
                progress.step(&format!(
                    "round {} · {} · {threads} threads",
                    round + 1,
                    systems[si].name()
                ));
                let r = if a.in_process {
                    let m = run_one(systems[si], &setup, threads, a.objects)?;
                    RunResult {
                        time: m.time,
                        pending: m.pending,
                        rss: 0,
                        ledger: m.ledger,
                    }
                } else {
                    run_isolated(a, si, threads)?
                };
                rates[ci][si].push((threads * a.objects) as f64 / r.time.as_secs_f64());
                pending[ci][si].push(r.pending as f64);
                rss[ci][si].push(r.rss as f64);
                ledgers[ci][si].add(&r.ledger);
            }
        }
    }
    progress.finish();
    let mut rows = Vec::new();
    for (ci, &threads) in counts.iter().enumerate() {
        for (si, &system) in systems.iter().enumerate() {
            let tput = Stat::of(&rates[ci][si], 0);
            let ratio_of = |base: usize| -> Vec<f64> {
                rates[ci][base]
                    .iter()
                    .zip(&rates[ci][si])
                    .map(|(k, o)| k / o)
                    .collect()
            };
            let sheaves = systems
                .iter()
                .position(|&s| s == System::KrcuSheaves)
                .expect("the sheaf path is one of the systems");
            rows.push(Row {
                system: system.name(),
                threads,
                objects_per_s: tput,
                ns_per_object: round(1e9 / tput.median * threads as f64, 1),
                peak_pending_bytes: matches!(
                    system,
                    System::Krcu | System::KrcuAssist | System::KrcuSheaves
                )
                .then(|| median(&mut pending[ci][si].clone()) as u64),
                peak_rss_bytes: (!a.in_process).then(|| median(&mut rss[ci][si].clone()) as u64),
                krcu_ratio: (system != System::Krcu).then(|| Stat::of(&ratio_of(0), 2)),
                sheaves_ratio: (system != System::KrcuSheaves)
                    .then(|| Stat::of(&ratio_of(sheaves), 2)),
                ledger: ledgers[ci][si],
            });
        }
    }
    Ok(CompareResult {
        objects_per_thread: a.objects,
        object_bytes: size_of::<Checked>(),
        rounds: a.rounds,
        policy: a.policy.to_string(),
        liburcu: cfg!(feature = "liburcu"),
        rows,
    })
}

pub fn run(a: &Args) -> CmdResult {
    // Relaxed: set before any run's threads are spawned (spawning orders it).
    LEAK_LAST.store(a.leak_last, Relaxed);
    if let Some(spec) = &a.one {
        return run_one_here(a, spec);
    }
    let r = measure(a, a.json)?;
    emit(a.json, &r, render);
    Ok(())
}

pub fn render(r: &CompareResult) -> String {
    let columns = [
        Column::<Row>::new("system", |row| row.system.to_string()),
        Column::new("threads", |row| row.threads.to_string()),
        Column::new("M objects/s (min / median / max)", |row| {
            let s = row.objects_per_s;
            format!(
                "{:.1} / {:.1} / {:.1}",
                s.min / 1e6,
                s.median / 1e6,
                s.max / 1e6
            )
        }),
        Column::new("ns/object/thread", |row| {
            format!("{:.1}", row.ns_per_object)
        }),
        Column::new("krcu peak pending", |row| {
            row.peak_pending_bytes.map_or("-".into(), args::show_bytes)
        }),
        Column::new("peak RSS", |row| {
            row.peak_rss_bytes.map_or("-".into(), args::show_bytes)
        }),
        Column::new("krcu ÷ this (min / median / max)", |row| {
            row.krcu_ratio.map_or("-".into(), |q| {
                format!("{:.2} / {:.2} / {:.2}", q.min, q.median, q.max)
            })
        }),
        Column::new("sheaves ÷ this (median)", |row| {
            row.sheaves_ratio
                .map_or("-".into(), |q| format!("{:.2}", q.median))
        }),
        Column::new("readers", |row| match row.ledger.readers {
            0 => "none (unsafe)".to_string(),
            n => n.to_string(),
        }),
        Column::new("checked / violations", |row| {
            let l = row.ledger;
            if row.system == System::DropReaders.name() {
                // Pointers seen, not objects checked: none is read.
                format!("{} seen / {} (none read)", l.checked, l.violations)
            } else {
                format!("{} / {}", l.checked, l.violations)
            }
        }),
        Column::new("dropped / allocated", |row| {
            format!("{} / {}", row.ledger.dropped, row.ledger.allocated)
        }),
    ];
    let t = Table::of(&columns, &r.rows);
    let mut out = format!(
        "krcu compare: {} objects of {} bytes per writer thread, allocated, published, retired and freed; \
         {} rounds, interleaved, each run in a fresh process with library defaults\n\
         readers (1 per 2 writers, at least 1) traverse every published object under the system's read-side \
         protection during the timed part and check its LIVE/POISON word; the clock stops when everything \
         retired is freed (kvfree_rcu_barrier, the collector dropped, rcu_barrier), and every object's \
         destructor must have run once (the ledger)\n\
         drop at once frees with no deferral, so it runs without readers: the speed reference, not a safe system; \
         \"drop at once, readers on the slots\" frees the same way while the same readers only load each slot's pointer \
         and count it (checked = pointers seen), never reading the object: it checks no object (violations 0 by \
         construction), and is the floor any system with readers pays here (the writer's swap takes the slot's cache \
         line back from the readers)\n\n",
        r.objects_per_thread, r.object_bytes, r.rounds
    );
    out.push_str(&t.render());
    if !r.liburcu {
        out.push_str("(liburcu's call_rcu joins with `--features liburcu`, given liburcu-dev)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_readers_count_published_pointers_without_reading_them() {
        let mut live = Checked::new();
        // Dangling on purpose: the pass must not read through a pointer.
        let dangling = NonNull::<Checked>::dangling().as_ptr();
        let slots: Box<Slots> = [&raw mut live, core::ptr::null_mut(), dangling]
            .into_iter()
            .map(|p| CachePadded::new(AtomicPtr::new(p)))
            .collect();
        assert_eq!(count_slots(&slots), 2);
        slots[0].store(core::ptr::null_mut(), Relaxed);
        assert_eq!(count_slots(&slots), 1);
    }

    #[test]
    fn drop_at_once_runs_readers_only_when_asked() {
        let (_, plain) = run_drop(2, 0, 1000);
        assert_eq!(
            (plain.allocated, plain.readers, plain.checked),
            (2000, 0, 0)
        );
        let (_, floor) = run_drop(2, 1, 1000);
        assert_eq!(
            (floor.allocated, floor.readers, floor.violations),
            (2000, 1, 0)
        );
    }
}
