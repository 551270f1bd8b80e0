//! `krcu torture`: rcutorture in small. Readers walk a table of objects
//! inside read-side sections and check each one is alive and intact;
//! writers replace objects and retire the old ones from task context (also
//! with a raw spinlock held, and with the single-argument form), from the
//! softirq worker, from a real signal handler, and try NMI (which must be
//! refused); page allocations fail now and then. At the end every object
//! must have been freed exactly once, none while a reader could see it.

use crate::args::{self, CliError, CmdResult};
use crate::output::emit;
use crate::progress;
use crate::signal::{self, OnSignal, Pace, Ring};
use crate::table::Table;
use crate::workload::{Reports, Rng, Setup};
use krcu::context::PreemptModel;
use krcu::kvfree::Policy;
use krcu::lock::RawSpinLock;
use krcu::page::{FaultSites, Gfp};
use krcu::rcu::{HasRcuHead, RcuHead};
use krcu::slab::{SlabBox, SlabCache};
use krcu::{Krcu, SlabRetireError};
use serde::Serialize;
use std::ptr::NonNull;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering::*};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// Options of `krcu torture`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to run: a number with a unit (ns, us, ms, s, m or h), e.g.
    /// 30s.
    #[arg(long, default_value = "10s", value_parser = args::duration)]
    duration: Duration,
    /// Reader threads, 1 to 256.
    #[arg(long, default_value = "2", allow_negative_numbers = true, value_parser = args::threads)]
    readers: usize,
    /// Task writer threads, 1 to 256 (plus one softirq writer, the signal
    /// handler and an NMI tryer).
    #[arg(long, default_value = "2", allow_negative_numbers = true, value_parser = args::threads)]
    threads: usize,
    /// The policy; `nowait` runs only when asked, as its validator reports
    /// are expected [default: a random one].
    #[arg(long)]
    policy: Option<Policy>,
    /// The preempt model [default: a random one].
    #[arg(long)]
    preempt: Option<PreemptModel>,
    /// Every n-th page allocation fails, 0 to 1_000_000_000 (0: no fault
    /// injection).
    #[arg(long, default_value_t = 7, allow_negative_numbers = true, value_parser = args::fail_every)]
    fail_every: u64,
    /// Run the lockdep-style validator too (any report is an error, except
    /// under `nowait`, whose reports are the 2020 kfree_rcu bug it keeps:
    /// `zone->lock` taken under a raw spinlock).
    #[arg(long)]
    validator: bool,
    /// No signal handler writer (to tell its effects apart).
    #[arg(long)]
    no_hardirq: bool,
    /// The number the random choices (policy, preempt model, slots) start
    /// from, to repeat a run [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

const LIVE: u64 = 0x11FE_11FE_11FE_11FE;
const POISON: u64 = 0xDEAD_DEAD_DEAD_DEAD;
const IDS: usize = 1 << 22;
const SLOTS: usize = 256;
/// Slots of the slab table.
const SLAB_SLOTS: usize = 64;

/// Counts per object id (ids wrap): made and freed. Equal at the end for
/// every id, or something was leaked or freed twice.
struct Ledger {
    made: Box<[AtomicU32]>,
    freed: Box<[AtomicU32]>,
    next: AtomicU64,
    total_freed: AtomicU64,
    double_frees: AtomicU64,
}

static LEDGER: std::sync::OnceLock<Ledger> = std::sync::OnceLock::new();

fn ledger() -> &'static Ledger {
    LEDGER.get_or_init(|| Ledger {
        made: (0..IDS).map(|_| AtomicU32::new(0)).collect(),
        freed: (0..IDS).map(|_| AtomicU32::new(0)).collect(),
        next: AtomicU64::new(0),
        total_freed: AtomicU64::new(0),
        double_frees: AtomicU64::new(0),
    })
}

/// A torture object: a state word, a generation and its complement.
struct TObj {
    state: AtomicU64,
    generation: u64,
    check: u64,
    head: RcuHead,
}

// SAFETY: `head` is an RcuHead field of TObj.
unsafe impl HasRcuHead for TObj {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(TObj, head);
}

impl TObj {
    fn new() -> Box<TObj> {
        Box::new(TObj::value())
    }

    /// A new object, unboxed (for the slab table). Allocation-free: safe
    /// in a signal handler.
    fn value() -> TObj {
        let l = ledger();
        let generation = l.next.fetch_add(1, Relaxed);
        l.made[generation as usize % IDS].fetch_add(1, Relaxed);
        TObj {
            state: AtomicU64::new(LIVE),
            generation,
            check: !generation,
            head: RcuHead::new(),
        }
    }

    /// What a reader checks: alive and intact.
    fn ok(&self) -> bool {
        self.state.load(Acquire) == LIVE && self.check == !self.generation
    }
}

impl Drop for TObj {
    fn drop(&mut self) {
        let l = ledger();
        let before = self.state.swap(POISON, AcqRel);
        let id = self.generation as usize % IDS;
        let freed = l.freed[id].fetch_add(1, Relaxed) + 1;
        if before != LIVE || freed > l.made[id].load(Relaxed) {
            l.double_frees.fetch_add(1, Relaxed);
        }
        l.total_freed.fetch_add(1, Relaxed);
    }
}

/// The table readers walk.
struct Slots {
    slots: Box<[AtomicPtr<TObj>]>,
}

impl Slots {
    /// Puts `new` in slot `i`; returns the old object, now unlinked.
    fn replace(&self, i: usize, new: Box<TObj>) -> Box<TObj> {
        let old = self.slots[i % SLOTS].swap(Box::into_raw(new), AcqRel);
        // SAFETY: every slot holds a leaked Box; unlinked just now, so ours.
        unsafe { Box::from_raw(old) }
    }

    /// Puts a new object in a slot `rng` picks; returns the old one.
    fn replace_any(&self, rng: &mut Rng) -> Box<TObj> {
        self.replace(rng.below(SLOTS as u64) as usize, TObj::new())
    }
}

/// The table of slab objects readers walk too: `SlabBox`es of one cache of
/// the instance, each given up with `into_raw` while published, retired
/// with `kfree_rcu_slab` (into the sheaves, or the kvfree blocks).
struct SlabSlots {
    cache: SlabCache<TObj>,
    slots: Box<[AtomicPtr<TObj>]>,
}

impl SlabSlots {
    fn new(k: &Krcu) -> SlabSlots {
        let cache = k
            .slab_cache::<TObj>("torture")
            .expect("a torture object fits a slab");
        let slots = (0..SLAB_SLOTS)
            .map(|_| {
                let b = cache
                    .alloc_box(TObj::value())
                    .unwrap_or_else(|_| panic!("krcu torture: the arena is full"));
                AtomicPtr::new(SlabBox::into_raw(b).as_ptr())
            })
            .collect();
        SlabSlots { cache, slots }
    }

    /// Puts a new object (allocated with `gfp`) in slot `i`; returns the
    /// old one, unlinked. `None` if no object could be had.
    fn replace(&self, i: usize, gfp: Gfp) -> Option<SlabBox<TObj>> {
        let new = SlabBox::new_in_gfp(&self.cache, gfp, TObj::value())
            .map_err(drop)
            .ok()?;
        let old = self.slots[i % SLAB_SLOTS].swap(SlabBox::into_raw(new).as_ptr(), AcqRel);
        // SAFETY: every slot holds a box given up with into_raw; unlinked
        // just now, so ours.
        Some(unsafe { SlabBox::from_raw(NonNull::new(old).expect("slots are never empty")) })
    }
}

/// The panic message of a slab retire refused outside NMI context: the
/// cache is the instance's own.
const SLAB_NEVER_REFUSED: &str = "refused only in NMI context or for another instance's cache";

/// Retires a slab object from a context that is not NMI.
fn retire_slab(k: &Krcu, old: SlabBox<TObj>) {
    if k.kfree_rcu_slab(old).is_err() {
        panic!("{SLAB_NEVER_REFUSED}");
    }
}

/// The signal handler's writer: each signal replaces slots with
/// preallocated objects and retires the old ones.
struct IrqWriter<'a> {
    k: &'a Krcu,
    table: &'a Slots,
    slab: &'a SlabSlots,
    ring: Ring<Box<TObj>>,
    retired: AtomicU64,
    slab_retired: AtomicU64,
    empty: AtomicU64,
    refused: AtomicU64,
    next: AtomicU64,
}

impl OnSignal for IrqWriter<'_> {
    fn on_signal(&self) {
        // One slab object, allocated here without waiting for a lock.
        let i = self.next.fetch_add(5, Relaxed) as usize;
        match self.slab.replace(i, Gfp::NO_LOCKS) {
            Some(old) => match self.k.kfree_rcu_slab(old) {
                Ok(()) => {
                    self.slab_retired.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    std::mem::forget(e);
                    self.refused.fetch_add(1, Relaxed);
                }
            },
            None => {
                self.empty.fetch_add(1, Relaxed);
            }
        }
        for _ in 0..4 {
            let Some(new) = self.ring.pop() else {
                self.empty.fetch_add(1, Relaxed);
                return;
            };
            let i = self.next.fetch_add(7, Relaxed) as usize;
            let old = self.table.replace(i, new);
            match self.k.kfree_rcu(old) {
                Ok(()) => self.retired.fetch_add(1, Relaxed),
                Err(e) => {
                    // Never in hardirq; leak rather than free in a handler.
                    std::mem::forget(e);
                    self.refused.fetch_add(1, Relaxed)
                }
            };
        }
    }
}

/// `krcu torture`'s result.
#[derive(Debug, Serialize)]
pub struct TortureResult {
    pub policy: String,
    pub preempt: String,
    pub seed: u64,
    pub seconds: f64,
    pub fail_every: u64,
    pub reads: u64,
    pub objects_checked: u64,
    pub made: u64,
    pub freed: u64,
    pub retired_task: u64,
    pub retired_task_raw_lock: u64,
    pub retired_mightsleep: u64,
    pub retired_softirq: u64,
    pub retired_hardirq: u64,
    /// Slab objects retired with `kfree_rcu_slab`, from every context.
    pub retired_slab: u64,
    pub signals: u64,
    pub nmi_refused: u64,
    pub fallbacks: u64,
    pub inline_synchronize: u64,
    pub page_faults_injected: bool,
    pub grace_periods: u64,
    pub validator: bool,
    pub reports: u64,
    pub expected_reports: bool,
    pub stalls: u64,
    pub errors: Vec<String>,
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    checked: AtomicU64,
    bad_reads: AtomicU64,
    task: AtomicU64,
    raw: AtomicU64,
    mightsleep: AtomicU64,
    softirq: AtomicU64,
    nmi_refused: AtomicU64,
    nmi_accepted: AtomicU64,
    slab: AtomicU64,
}

/// The seed of a run and the choices made from it.
struct Plan {
    seed: u64,
    policy: Policy,
    model: PreemptModel,
}

/// The policy and preempt model asked for, or random ones from the seed
/// (`nowait` only when asked: its validator reports are expected).
fn plan(a: &Args) -> Plan {
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng::new(seed);
    let choices: Vec<Policy> = Policy::ALL
        .into_iter()
        .filter(|p| *p != Policy::Nowait)
        .collect();
    let policy = a
        .policy
        .unwrap_or(choices[rng.below(choices.len() as u64) as usize]);
    let model = a
        .preempt
        .unwrap_or(PreemptModel::ALL[rng.below(4) as usize]);
    Plan {
        seed,
        policy,
        model,
    }
}

/// The panic message of a retire from task context refused: only NMI
/// context refuses, and these threads never enter it.
const NEVER_REFUSED: &str = "refused only in NMI context, which this thread never enters";

/// What the task-context threads of a run share; each kind of thread is a
/// method.
struct Threads<'a> {
    k: &'a Krcu,
    table: &'a Slots,
    slab: &'a SlabSlots,
    counts: &'a Counts,
    raw: RawSpinLock<()>,
    stop: AtomicBool,
    start: Barrier,
    seed: u64,
}

impl Threads<'_> {
    /// Walks the table inside read-side sections, checking every object.
    fn reader(&self) {
        let reader = self.k.rcu().register_thread();
        self.start.wait();
        while !self.stop.load(Relaxed) {
            let _g = reader.read_lock();
            let mut bad = 0;
            for slot in self.table.slots.iter().chain(self.slab.slots.iter()) {
                let p = slot.load(Acquire);
                // SAFETY: inside a read-side section every object reachable
                // from the tables stays allocated until a grace period
                // after it was unlinked.
                if !unsafe { &*p }.ok() {
                    bad += 1;
                }
            }
            self.counts.bad_reads.fetch_add(bad, Relaxed);
            self.counts
                .checked
                .fetch_add((SLOTS + SLAB_SLOTS) as u64, Relaxed);
            self.counts.reads.fetch_add(1, Relaxed);
        }
    }

    /// Task writer `w`: replaces random slots and retires the old object
    /// with a raw spinlock held (1 in 8), with the single-argument form
    /// (1 in 8) or plainly. Sends its thread on `victim` first, if given.
    fn task_writer(&self, w: usize, victim: Option<Sender<libc::pthread_t>>) {
        if let Some(tx) = victim {
            tx.send(signal::this_thread()).ok();
        }
        let mut rng = Rng::new(self.seed ^ (w as u64 + 11));
        self.start.wait();
        while !self.stop.load(Relaxed) {
            if rng.below(4) == 0 {
                // A slab object: a quarter of the time with a raw lock held.
                let i = rng.below(SLAB_SLOTS as u64) as usize;
                if let Some(old) = self.slab.replace(i, Gfp::KERNEL) {
                    let _l = (rng.below(4) == 0).then(|| self.raw.lock());
                    retire_slab(self.k, old);
                    self.counts.slab.fetch_add(1, Relaxed);
                }
            }
            let old = self.table.replace_any(&mut rng);
            match rng.below(8) {
                0 => {
                    let _l = self.raw.lock();
                    self.k.kfree_rcu(old).expect(NEVER_REFUSED);
                    self.counts.raw.fetch_add(1, Relaxed);
                }
                1 => {
                    self.k.kvfree_rcu_mightsleep(old).expect(NEVER_REFUSED);
                    self.counts.mightsleep.fetch_add(1, Relaxed);
                }
                _ => {
                    self.k.kfree_rcu(old).expect(NEVER_REFUSED);
                    self.counts.task.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// The softirq writer: retires from krcu's softirq context.
    fn softirq_writer(&self) {
        let _softirq = krcu::context::enter_softirq();
        let mut rng = Rng::new(self.seed ^ 0x50f7);
        self.start.wait();
        while !self.stop.load(Relaxed) {
            let old = self.table.replace_any(&mut rng);
            self.k.kfree_rcu(old).expect(NEVER_REFUSED);
            self.counts.softirq.fetch_add(1, Relaxed);
            let i = rng.below(SLAB_SLOTS as u64) as usize;
            if let Some(old) = self.slab.replace(i, Gfp::ATOMIC) {
                retire_slab(self.k, old);
                self.counts.slab.fetch_add(1, Relaxed);
            }
        }
    }

    /// The NMI tryer: every call must be refused, the object handed back
    /// and then retired from task context.
    fn nmi_tryer(&self) {
        let mut rng = Rng::new(self.seed ^ 0x4e4d49);
        self.start.wait();
        while !self.stop.load(Relaxed) {
            let old = self.table.replace_any(&mut rng);
            let back = {
                let _nmi = krcu::context::enter_nmi();
                self.k.kfree_rcu(old)
            };
            match back {
                Err(e) => {
                    self.counts.nmi_refused.fetch_add(1, Relaxed);
                    self.k.kfree_rcu(e.0).expect(NEVER_REFUSED);
                }
                Ok(()) => {
                    self.counts.nmi_accepted.fetch_add(1, Relaxed);
                }
            }
            let i = rng.below(SLAB_SLOTS as u64) as usize;
            if let Some(old) = self.slab.replace(i, Gfp::KERNEL) {
                let back = {
                    let _nmi = krcu::context::enter_nmi();
                    self.k.kfree_rcu_slab(old)
                };
                match back {
                    Err(SlabRetireError::InNmi(old)) => {
                        self.counts.nmi_refused.fetch_add(1, Relaxed);
                        retire_slab(self.k, old);
                        self.counts.slab.fetch_add(1, Relaxed);
                    }
                    Err(e) => panic!("{SLAB_NEVER_REFUSED}: {e}"),
                    Ok(()) => {
                        self.counts.nmi_accepted.fetch_add(1, Relaxed);
                    }
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Runs every thread for `a.duration`, the signal handler routed to `irq`;
/// returns the signals sent.
fn run_threads(a: &Args, policy: Policy, threads: &Threads, irq: &IrqWriter) -> u64 {
    let _route = signal::route(irq);
    // The handler interrupts a task writer, maybe inside kfree_rcu. Except
    // under `nowait`, whose handler takes `zone->lock` (a plain lock, under
    // the raw krc lock: the bug the validator's expected reports are about),
    // which the interrupted writer may hold: it would spin on it forever.
    // There it interrupts a thread that only sleeps. (The reports themselves
    // are safe in a handler: they are recorded without allocating and
    // delivered later.)
    let interrupt_writer = policy != Policy::Nowait;
    std::thread::scope(|s| {
        for _ in 0..a.readers {
            s.spawn(|| threads.reader());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        for w in 0..a.threads {
            let victim = (w == 0 && interrupt_writer).then(|| tx.clone());
            s.spawn(move || threads.task_writer(w, victim));
        }
        drop(tx);
        let victim = if interrupt_writer {
            rx.recv().expect("writer 0 sends its thread first")
        } else {
            signal::spawn_sleeper(s, &threads.start, &threads.stop).1
        };
        s.spawn(|| threads.softirq_writer());
        s.spawn(|| threads.nmi_tryer());
        let sender = signal::spawn_sender(
            s,
            &threads.start,
            &threads.stop,
            &irq.ring,
            (!a.no_hardirq).then_some(victim),
            Pace::Sleep(Duration::from_micros(50)),
            TObj::new,
        );
        threads.start.wait();
        progress::wait("torture", a.duration, a.json);
        threads.stop.store(true, Relaxed);
        sender.join().unwrap_or(0)
    })
}

/// Retires what the threads left in the slab table.
fn retire_the_slab_table(k: &Krcu, slab: &SlabSlots) {
    for slot in slab.slots.iter() {
        let p = slot.swap(core::ptr::null_mut(), AcqRel);
        // SAFETY: the threads are gone; each slot holds a box given up with
        // into_raw.
        retire_slab(k, unsafe {
            SlabBox::from_raw(NonNull::new(p).expect("never empty"))
        });
    }
}

/// Retires what the threads left in the table.
fn retire_the_table(k: &Krcu, table: &Slots) {
    for slot in table.slots.iter() {
        // SAFETY: the threads are gone; each slot holds a leaked Box.
        let obj = unsafe { Box::from_raw(slot.swap(core::ptr::null_mut(), AcqRel)) };
        k.kfree_rcu(obj).expect(NEVER_REFUSED);
    }
}

/// Every way the run went wrong, once everything was freed.
fn find_errors(
    a: &Args,
    policy: Policy,
    k: &Krcu,
    counts: &Counts,
    irq: &IrqWriter,
    reports: &Reports,
) -> Vec<String> {
    let s = k.stats();
    let l = ledger();
    let made = l.next.load(SeqCst);
    let freed = l.total_freed.load(SeqCst);
    let mut errors = Vec::new();
    let bad = counts.bad_reads.load(SeqCst);
    if bad > 0 {
        errors.push(format!(
            "{bad} reads saw a freed or corrupt object (use after free)"
        ));
    }
    let dbl = l.double_frees.load(SeqCst);
    if dbl > 0 {
        errors.push(format!("{dbl} objects freed twice"));
    }
    if made != freed {
        errors.push(format!("{made} objects made, {freed} freed"));
    }
    let mismatched = (0..IDS.min(made as usize))
        .filter(|&i| l.made[i].load(SeqCst) != l.freed[i].load(SeqCst))
        .count();
    if mismatched > 0 {
        errors.push(format!("{mismatched} object ids not freed exactly once"));
    }
    if counts.nmi_accepted.load(SeqCst) > 0 || irq.refused.load(SeqCst) > 0 {
        errors.push("kfree_rcu accepted a call from NMI or refused one outside it".into());
    }
    // Single-argument calls that waited inline freed their object there.
    if s.pending_objects != 0 || s.reclaimed_objects + s.inline_synchronize != s.calls() {
        errors.push(format!(
            "after the barrier: {} pending, {} reclaimed + {} freed inline of {} calls",
            s.pending_objects,
            s.reclaimed_objects,
            s.inline_synchronize,
            s.calls()
        ));
    }
    if reports.total() > 0 && !reports_expected(a, policy) {
        errors.push(format!(
            "{} validator reports; the first:\n{}",
            reports.total(),
            reports.first().unwrap_or_default()
        ));
    }
    let irq_ran = a.no_hardirq || irq.retired.load(SeqCst) > 0;
    if counts.reads.load(SeqCst) == 0 || !irq_ran || counts.softirq.load(SeqCst) == 0 {
        errors.push("a reader, the signal handler or the softirq writer never ran".into());
    }
    errors
}

/// Validator reports are expected under `nowait` (its bug) only.
fn reports_expected(a: &Args, policy: Policy) -> bool {
    policy == Policy::Nowait && a.validator
}

pub fn run(a: &Args) -> CmdResult {
    let Plan {
        seed,
        policy,
        model,
    } = plan(a);
    let reports = Reports::default();
    let setup = Setup {
        validator: a.validator,
        ..Setup::new(policy, model)
    };
    let k = setup.build(&reports)?;
    if a.fail_every > 0 {
        k.pages().faults().fail_every(a.fail_every, FaultSites::ALL);
    }
    if !a.json {
        eprintln!(
            "krcu torture: policy {policy}, preempt {model}, seed {seed}, {} readers, {} task writers, fail every {}, validator {}, {}",
            a.readers,
            a.threads,
            a.fail_every,
            if a.validator { "on" } else { "off" },
            args::show_duration(a.duration)
        );
    }
    let gp0 = k.rcu().stats().grace_periods;
    let table = Slots {
        slots: (0..SLOTS)
            .map(|_| AtomicPtr::new(Box::into_raw(TObj::new())))
            .collect(),
    };
    let slab = SlabSlots::new(&k);
    let counts = Counts::default();
    let irq = IrqWriter {
        k: &k,
        table: &table,
        slab: &slab,
        ring: Ring::new(1024),
        retired: AtomicU64::new(0),
        slab_retired: AtomicU64::new(0),
        empty: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        next: AtomicU64::new(0),
    };
    let interrupt_writer = policy != Policy::Nowait;
    let threads = Threads {
        k: &k,
        table: &table,
        slab: &slab,
        counts: &counts,
        raw: RawSpinLock::named(k.domain(), "torture_raw_lock", ()),
        stop: AtomicBool::new(false),
        // Readers, writers, the softirq writer, the NMI tryer, the sender,
        // this thread and, when no writer is interrupted, the sleeper.
        start: Barrier::new(a.readers + a.threads + 4 + usize::from(!interrupt_writer)),
        seed,
    };
    let t0 = Instant::now();
    let signals = run_threads(a, policy, &threads, &irq);
    let seconds = t0.elapsed().as_secs_f64();
    drop(threads);
    // Everything left: the table's objects and the ring's, then the barrier.
    retire_the_table(&k, &table);
    retire_the_slab_table(&k, &slab);
    while irq.ring.pop().is_some() {}
    k.kvfree_rcu_barrier();
    let errors = find_errors(a, policy, &k, &counts, &irq, &reports);
    let s = k.stats();
    let rs = k.rcu().stats();
    let l = ledger();
    let result = TortureResult {
        policy: policy.to_string(),
        preempt: model.to_string(),
        seed,
        seconds: crate::output::round(seconds, 2),
        fail_every: a.fail_every,
        reads: counts.reads.load(SeqCst),
        objects_checked: counts.checked.load(SeqCst),
        made: l.next.load(SeqCst),
        freed: l.total_freed.load(SeqCst),
        retired_task: counts.task.load(SeqCst),
        retired_task_raw_lock: counts.raw.load(SeqCst),
        retired_mightsleep: counts.mightsleep.load(SeqCst),
        retired_softirq: counts.softirq.load(SeqCst),
        retired_hardirq: irq.retired.load(SeqCst),
        retired_slab: counts.slab.load(SeqCst) + irq.slab_retired.load(SeqCst),
        signals,
        nmi_refused: counts.nmi_refused.load(SeqCst),
        fallbacks: s.list_fallbacks + s.lock_busy_fallbacks,
        inline_synchronize: s.inline_synchronize,
        page_faults_injected: a.fail_every > 0,
        grace_periods: rs.grace_periods - gp0,
        validator: a.validator,
        reports: reports.total(),
        expected_reports: reports_expected(a, policy),
        stalls: k.rcu().stall_reports().len() as u64,
        errors,
    };
    drop(irq);
    drop(k);
    emit(a.json, &result, render);
    if result.errors.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "torture failed: {}",
            result.errors.join("; ")
        )))
    }
}

fn render(r: &TortureResult) -> String {
    let rows: [(&str, String); 17] = [
        ("reads (read-side sections)", r.reads.to_string()),
        ("objects checked by readers", r.objects_checked.to_string()),
        ("objects made", r.made.to_string()),
        ("objects freed", r.freed.to_string()),
        ("retired: task", r.retired_task.to_string()),
        (
            "retired: task, raw lock held",
            r.retired_task_raw_lock.to_string(),
        ),
        (
            "retired: task, kvfree_rcu_mightsleep",
            r.retired_mightsleep.to_string(),
        ),
        ("retired: softirq", r.retired_softirq.to_string()),
        (
            "retired: hardirq (signal handler)",
            format!("{} ({} signals)", r.retired_hardirq, r.signals),
        ),
        (
            "retired: slab objects (kfree_rcu_slab, every context)",
            r.retired_slab.to_string(),
        ),
        ("NMI calls refused", r.nmi_refused.to_string()),
        ("fallbacks (rcu_head list)", r.fallbacks.to_string()),
        ("inline synchronize", r.inline_synchronize.to_string()),
        ("grace periods", r.grace_periods.to_string()),
        (
            "validator reports",
            if r.validator {
                format!(
                    "{}{}",
                    r.reports,
                    if r.expected_reports {
                        " (expected: nowait)"
                    } else {
                        ""
                    }
                )
            } else {
                "off (--validator)".to_string()
            },
        ),
        ("stall warnings", r.stalls.to_string()),
        ("errors", r.errors.len().to_string()),
    ];
    let t = Table::of_pairs(["what", "count"], rows);
    let mut out = format!(
        "krcu torture: policy {}, preempt {}, seed {}, {:.1} s, every {}th page allocation failing\n\n{}",
        r.policy,
        r.preempt,
        r.seed,
        r.seconds,
        r.fail_every,
        t.render()
    );
    for e in &r.errors {
        out.push_str(&format!("ERROR: {e}\n"));
    }
    if r.errors.is_empty() {
        out.push_str("OK: every object freed exactly once, none while a reader could reach it\n");
    }
    out
}
