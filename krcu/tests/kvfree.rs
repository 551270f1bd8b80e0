//! `kfree_rcu` end to end: every object freed exactly once and never
//! before a grace period, under every policy and preempt model, from every
//! context, with allocation faults; and the paths around it.

mod common;

use common::*;
use krcu::Krcu;
use krcu::context::{self, PreemptModel};
use krcu::kvfree::{KvfreeConfig, Policy};
use krcu::lock::RawSpinLock;
#[cfg(any(debug_assertions, feature = "lockdep"))]
use krcu::lockdep::ReportKind;
use krcu::lockdep::{ReportHandler, ReportLog};
use krcu::page::FaultSites;
use krcu::rcu::{HasRcuHead, RcuHead};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::*};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const ARENA: usize = 32 << 20;

fn instance(policy: Policy, model: PreemptModel, log: &ReportLog) -> Krcu {
    Krcu::builder()
        .arena_size(ARENA)
        .cpus(2)
        .policy(policy)
        .preempt_model(model)
        .report_handler(ReportHandler::Collect(log.clone()))
        .build()
        .expect("build")
}

/// Readers walk `slots` checking every object; writers replace objects and
/// retire the old ones with kfree_rcu, from task context, softirq context,
/// and (through the signal handler) hardirq context while the interrupted
/// writer may hold a raw spinlock (with `victim_sleeps`, the handler
/// interrupts a thread that only sleeps).
fn torture(k: &Krcu, ledger: &Arc<Ledger>, run_for: Duration, victim_sleeps: bool) {
    const SLOTS: usize = 64;
    let slots: Arc<Vec<AtomicPtr<Obj>>> = Arc::new(
        (0..SLOTS)
            .map(|_| AtomicPtr::new(Box::into_raw(Obj::new(ledger))))
            .collect(),
    );
    let stop = AtomicBool::new(false);
    let pool = Pool::new(ledger, 4096);
    let target = SignalTarget {
        krcu: k,
        pool: &pool,
        handled: AtomicU64::new(0),
        queued: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    };
    let raw = RawSpinLock::new_in(k.domain(), ());
    let reads = AtomicU64::new(0);
    let _sig = signal_lock();
    install_handler();
    let _t = set_target(&target);
    let start = Barrier::new(6); // 2 readers, 3 writers, and this thread
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let reader = k.rcu().register_thread();
                start.wait();
                while !stop.load(Relaxed) {
                    let _g = reader.read_lock();
                    for slot in slots.iter() {
                        let p = slot.load(Acquire);
                        // SAFETY: inside a read-side section every object
                        // reachable from `slots` is alive until a grace
                        // period after it was unlinked.
                        unsafe { (*p).check() };
                    }
                    reads.fetch_add(1, Relaxed);
                }
            });
        }
        let writer = |softirq: bool, seed: usize| {
            let (slots, stop, start, raw) = (&slots, &stop, &start, &raw);
            move || {
                let _ctx = softirq.then(context::enter_softirq);
                start.wait();
                let mut i = seed;
                // The run is timed, and a fast build (release, no
                // validator) would issue more objects than the ledger holds:
                // writers stop short of it (a margin for the three of them).
                let budget = ledger.capacity() - 64;
                while !stop.load(Relaxed) && ledger.issued() < budget {
                    i = (i * 7 + 3) % SLOTS;
                    let new = Box::into_raw(Obj::new(ledger));
                    let old = slots[i].swap(new, AcqRel);
                    // SAFETY: unlinked just now, so ours to retire.
                    let old = unsafe { Box::from_raw(old) };
                    if i.is_multiple_of(3) {
                        // Retire with a raw spinlock held, as kernel callers
                        // of kfree_rcu may.
                        let _r = raw.lock();
                        k.kfree_rcu(old).expect("not NMI");
                    } else {
                        k.kfree_rcu(old).expect("not NMI");
                    }
                }
            }
        };
        s.spawn(writer(false, 1));
        let (tx, rx) = std::sync::mpsc::channel();
        let task_writer = writer(false, 2);
        if victim_sleeps {
            // Under nowait the handler's kfree_rcu takes `zone->lock` (a
            // plain lock, under the raw krc lock: the validator's expected
            // reports), which a writer it caught may hold, and would spin
            // on it forever; so it interrupts a thread that only sleeps.
            // (The reports themselves are safe in a handler: recorded
            // without allocating, delivered later.)
            s.spawn(task_writer);
            let stop = &stop;
            s.spawn(move || {
                // SAFETY: pthread_self has no preconditions.
                tx.send(unsafe { libc::pthread_self() }).unwrap();
                while !stop.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        } else {
            s.spawn(move || {
                // SAFETY: pthread_self has no preconditions.
                tx.send(unsafe { libc::pthread_self() }).unwrap();
                task_writer()
            });
        }
        s.spawn(writer(true, 3));
        let victim = rx.recv().unwrap();
        start.wait();
        let until = Instant::now() + run_for;
        while Instant::now() < until {
            flood(victim, 64);
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Relaxed);
    });
    assert_eq!(target.refused.load(SeqCst), 0);
    assert!(reads.load(SeqCst) > 0, "the readers never ran");
    assert!(
        target.queued.load(SeqCst) > 0,
        "the signal handler never retired anything"
    );
    for slot in slots.iter() {
        // SAFETY: the threads are gone; each slot holds a live leaked Box.
        let obj = unsafe { Box::from_raw(slot.swap(core::ptr::null_mut(), AcqRel)) };
        k.kfree_rcu(obj).unwrap();
    }
    drop(_t);
    drop(pool);
}

#[test]
fn every_object_freed_once_after_its_grace_period_under_every_policy_and_model() {
    for policy in Policy::ALL {
        for model in PreemptModel::ALL {
            let log = ReportLog::new();
            let k = instance(policy, model, &log);
            // Every block-allocation site fails now and then, at a rate
            // that differs from one combination to the next.
            let every = 2 + (policy as u64 * 7 + model as u64 * 3) % 6;
            k.pages().faults().fail_every(every, FaultSites::ALL);
            let ledger = Ledger::new(4_000_000);
            torture(
                &k,
                &ledger,
                Duration::from_millis(150),
                policy == Policy::Nowait,
            );
            k.kvfree_rcu_barrier();
            ledger.assert_all_freed_once();
            let s = k.stats();
            assert!(
                s.calls_hardirq > 0 && s.calls_softirq > 0 && s.calls_task > 0,
                "{policy} {model}: {s:?}"
            );
            assert_eq!(s.pending_objects, 0, "{policy} {model}: {s:?}");
            assert_eq!(s.reclaimed_objects, s.calls(), "{policy} {model}: {s:?}");
            drop(k);
        }
    }
}

#[test]
fn nmi_is_refused_and_the_object_handed_back() {
    let log = ReportLog::new();
    let k = instance(Policy::default(), PreemptModel::Full, &log);
    let ledger = Ledger::new(4);
    let obj = Obj::new(&ledger);
    let back = {
        let _nmi = context::enter_nmi();
        k.kfree_rcu(obj).expect_err("NMI must be refused")
    };
    assert_eq!(ledger.dropped.load(SeqCst), 0, "nothing freed");
    back.0.check();
    let back = {
        let _nmi = context::enter_nmi();
        k.kvfree_rcu_mightsleep(back.0)
            .expect_err("NMI must be refused")
    };
    assert_eq!(k.stats().refused_nmi, 2);
    assert!(back.to_string().contains("NMI"));
    k.kfree_rcu(back.0).unwrap();
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
}

/// Fills the first block so the next call needs a new one, with the page
/// allocator's per-CPU lists drained so that `GFP_NOWAIT` must take the
/// zone lock. All under a raw spinlock, as kernel callers of kfree_rcu
/// may hold one.
#[cfg(any(debug_assertions, feature = "lockdep"))]
fn call_needing_a_block(k: &Krcu, ledger: &Arc<Ledger>) {
    let raw = RawSpinLock::named(k.domain(), "caller_raw_lock", ());
    k.pages().drain_all();
    let _g = raw.lock();
    for _ in 0..600 {
        k.kfree_rcu(Obj::new(ledger)).unwrap();
    }
}

#[cfg(any(debug_assertions, feature = "lockdep"))]
#[test]
fn under_rt_with_nesting_proof_only_nowait_breaks_the_rules() {
    for policy in Policy::ALL {
        let log = ReportLog::new();
        let k = Krcu::builder()
            .arena_size(ARENA)
            .cpus(1)
            .policy(policy)
            .preempt_model(PreemptModel::Rt)
            .prove_raw_lock_nesting(true)
            .report_handler(ReportHandler::Collect(log.clone()))
            .build()
            .unwrap();
        let ledger = Ledger::new(10_000);
        call_needing_a_block(&k, &ledger);
        k.kvfree_rcu_barrier();
        ledger.assert_all_freed_once();
        let reports = log.take();
        let wait = reports
            .iter()
            .filter(|r| r.kind == ReportKind::InvalidWaitContext)
            .count();
        if policy == Policy::Nowait {
            assert!(wait > 0, "nowait must take zone->lock under the raw lock");
            let r = reports
                .iter()
                .find(|r| r.kind == ReportKind::InvalidWaitContext)
                .unwrap();
            assert_eq!(r.headline(), "BUG: Invalid wait context");
            assert!(r.held.iter().any(|h| h.name == "&krcp->lock"), "{}", r.text);
            assert!(
                reports
                    .iter()
                    .any(|r| r.kind == ReportKind::SleepInInvalidContext),
                "under Rt zone->lock sleeps"
            );
        } else {
            assert!(reports.is_empty(), "{policy}: {:#?}", reports);
        }
        drop(k);
    }
}

#[test]
fn preemptible_under_preempt_none_never_allocates_inline() {
    let log = ReportLog::new();
    let k = instance(Policy::Preemptible, PreemptModel::None, &log);
    let ledger = Ledger::new(10_000);
    for _ in 0..3000 {
        k.kfree_rcu(Obj::new(&ledger)).unwrap();
    }
    let s = k.stats();
    assert_eq!(s.inline_allocs, 0, "{s:?}");
    assert_eq!(s.list_fallbacks, 3000, "no block can ever be had: {s:?}");
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    // Under Full, from task context, it is preemptible and allocates.
    let k = instance(Policy::Preemptible, PreemptModel::Full, &log);
    for _ in 0..3000 {
        k.kfree_rcu(Obj::new(&ledger)).unwrap();
    }
    let s = k.stats();
    assert!(s.inline_allocs > 0, "{s:?}");
    // But not with a raw spinlock held.
    let before = s.inline_allocs;
    let raw = RawSpinLock::new_in(k.domain(), ());
    {
        let _g = raw.lock();
        for _ in 0..3000 {
            k.kfree_rcu(Obj::new(&ledger)).unwrap();
        }
    }
    assert_eq!(k.stats().inline_allocs, before);
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
}

struct Counted(#[allow(dead_code)] u64, Arc<AtomicU64>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_add(1, SeqCst);
    }
}

#[cfg(any(debug_assertions, feature = "lockdep"))]
#[test]
fn mightsleep_is_reported_where_it_may_not_sleep() {
    let log = ReportLog::new();
    let k = instance(Policy::default(), PreemptModel::Full, &log);
    let drops = Arc::new(AtomicU64::new(0));
    k.kvfree_rcu_mightsleep(Box::new(Counted(1, drops.clone())))
        .unwrap();
    assert!(log.is_empty(), "{:#?}", log.reports());
    let raw = RawSpinLock::new_in(k.domain(), ());
    {
        let _g = raw.lock();
        k.kvfree_rcu_mightsleep(Box::new(Counted(2, drops.clone())))
            .unwrap();
    }
    let reports = log.take();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert_eq!(reports[0].kind, ReportKind::SleepInInvalidContext);
    assert!(
        reports[0].at.contains("tests/kvfree.rs"),
        "{}",
        reports[0].at
    );
    k.kvfree_rcu_barrier();
    assert_eq!(drops.load(SeqCst), 2);
}

/// How many [`ReaderWitness`]es were dropped while their reader was still
/// inside its section, and how many after it left.
#[derive(Default)]
struct DropTally {
    under_reader: AtomicU64,
    after_reader: AtomicU64,
}

/// An object retired while a reader in another thread sits in its
/// section: when dropped, it records in its tally whether that reader had
/// left (`reader_left` is set just before the reader leaves).
struct ReaderWitness {
    reader_left: Arc<AtomicBool>,
    tally: Arc<DropTally>,
    head: RcuHead,
}

// SAFETY: `head` is an RcuHead field of ReaderWitness.
unsafe impl HasRcuHead for ReaderWitness {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(ReaderWitness, head);
}

impl Drop for ReaderWitness {
    fn drop(&mut self) {
        let counter = if self.reader_left.load(SeqCst) {
            &self.tally.after_reader
        } else {
            &self.tally.under_reader
        };
        counter.fetch_add(1, SeqCst);
    }
}

/// Runs `work` while a thread registered with `k`'s RCU sits inside a
/// read-side section for `hold`; `work` gets a witness maker whose
/// objects tell, when dropped, whether the reader had left. Returns their
/// tally.
fn under_a_reader(
    k: &Krcu,
    hold: Duration,
    work: impl FnOnce(&dyn Fn() -> Box<ReaderWitness>),
) -> Arc<DropTally> {
    let reader_left = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(DropTally::default());
    let inside = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            let reader = k.rcu().register_thread();
            let guard = reader.read_lock();
            inside.wait();
            std::thread::sleep(hold);
            reader_left.store(true, SeqCst);
            drop(guard);
        });
        inside.wait();
        work(&|| {
            Box::new(ReaderWitness {
                reader_left: reader_left.clone(),
                tally: tally.clone(),
                head: RcuHead::new(),
            })
        });
    });
    tally
}

#[test]
fn mightsleep_without_any_block_waits_and_frees_inline() {
    let log = ReportLog::new();
    let k = instance(Policy::Prohibit, PreemptModel::Full, &log);
    k.pages().faults().fail_every(1, FaultSites::ALL);
    let drops = Arc::new(AtomicU64::new(0));
    for i in 0..10 {
        k.kvfree_rcu_mightsleep(Box::new(Counted(i, drops.clone())))
            .unwrap();
        assert_eq!(
            drops.load(SeqCst),
            i + 1,
            "freed inline, after a grace period"
        );
    }
    assert_eq!(k.stats().inline_synchronize, 10);

    // With no reader anywhere, a missing grace period would pass the loop
    // above. Hold a reader in another thread: the inline free must wait
    // until it has left its section.
    let tally = under_a_reader(&k, Duration::from_millis(200), |witness| {
        k.kvfree_rcu_mightsleep(witness()).unwrap();
    });
    assert_eq!(
        tally.under_reader.load(SeqCst),
        0,
        "freed inline while a reader was still inside its section"
    );
    assert_eq!(tally.after_reader.load(SeqCst), 1);
    assert_eq!(k.stats().inline_synchronize, 11);
    k.pages().faults().clear();
    // With allocations working again it allocates a block outside the lock.
    k.kvfree_rcu_mightsleep(Box::new(Counted(10, drops.clone())))
        .unwrap();
    assert_eq!(k.stats().sleeping_allocs, 1);
    k.kvfree_rcu_barrier();
    assert_eq!(drops.load(SeqCst), 11);
}

#[test]
fn zero_sized_and_plain_types() {
    static ZST_DROPS: AtomicU64 = AtomicU64::new(0);
    struct Zst;
    impl Drop for Zst {
        fn drop(&mut self) {
            ZST_DROPS.fetch_add(1, SeqCst);
        }
    }
    let log = ReportLog::new();
    let k = instance(Policy::default(), PreemptModel::Full, &log);
    for i in 0..2000u64 {
        k.kvfree_rcu_mightsleep(Box::new(Zst)).unwrap();
        k.kvfree_rcu_mightsleep(Box::new(())).unwrap();
        k.kvfree_rcu_mightsleep(Box::new(i)).unwrap();
        k.kvfree_rcu_mightsleep(Box::new([i; 64])).unwrap();
    }
    k.kvfree_rcu_barrier();
    assert_eq!(ZST_DROPS.load(SeqCst), 2000);
    let s = k.stats();
    assert_eq!(s.reclaimed_objects, 8000);
    assert_eq!(s.pending_objects, 0);
}

/// An instance whose drain delay is short: only the monitor's own passes
/// hand partial blocks over.
fn brisk(log: ReportLog) -> Krcu {
    Krcu::builder()
        .arena_size(ARENA)
        .drain_delay(Duration::from_millis(5))
        .report_handler(ReportHandler::Collect(log))
        .build()
        .unwrap()
}

/// An instance whose drain delay is an hour: only barriers, drops and full
/// blocks hand objects over.
fn patient(log: ReportLog) -> Krcu {
    Krcu::builder()
        .arena_size(ARENA)
        .drain_delay(Duration::from_secs(3600))
        .report_handler(ReportHandler::Collect(log))
        .build()
        .unwrap()
}

#[test]
fn a_barrier_waits_for_everything_queued_before_it() {
    let log = ReportLog::new();
    let k = patient(log);
    let ledger = Ledger::new(10_000);
    for _ in 0..5000 {
        k.kfree_rcu(Obj::new(&ledger)).unwrap();
    }
    assert!(
        ledger.dropped.load(SeqCst) < 5000,
        "not yet: the drain delay is an hour"
    );
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
}

#[test]
fn dropping_the_instance_frees_everything_queued() {
    let log = ReportLog::new();
    let ledger = Ledger::new(10_000);
    let k = patient(log);
    for _ in 0..5000 {
        k.kfree_rcu(Obj::new(&ledger)).unwrap();
    }
    drop(k);
    ledger.assert_all_freed_once();
}

#[test]
fn a_block_whose_grace_period_passed_is_freed_without_another() {
    let log = ReportLog::new();
    let k = patient(log);

    // Grace period not passed: objects queued while a reader is inside its
    // section are not drain-ready, and are freed only after it leaves.
    let tally = under_a_reader(&k, Duration::from_millis(200), |witness| {
        for _ in 0..10 {
            k.kfree_rcu(witness()).unwrap();
        }
        k.kvfree_rcu_barrier();
    });
    assert_eq!(
        tally.under_reader.load(SeqCst),
        0,
        "freed before their grace period: a reader was still inside"
    );
    assert_eq!(tally.after_reader.load(SeqCst), 10);

    // Grace period passed: the block is freed at the drain, as drain-ready.
    let ready_before = k.stats().drain_ready_blocks;
    let ledger = Ledger::new(100);
    for _ in 0..10 {
        k.kfree_rcu(Obj::new(&ledger)).unwrap();
    }
    k.rcu().synchronize();
    assert_eq!(
        ledger.dropped.load(SeqCst),
        0,
        "nothing hands them over before the barrier: the drain delay is an hour"
    );
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    let s = k.stats();
    assert!(s.drain_ready_blocks > ready_before, "{s:?}");
}

#[test]
fn nothing_is_stranded_on_a_cpu_no_thread_uses_any_more() {
    let log = ReportLog::new();
    let k = brisk(log);
    let ledger = Ledger::new(100_000);
    let cpus = krcu::Domain::global().cpus().min(k.domain().cpus());
    // A thread on each CPU queues a partial block, then exits.
    std::thread::scope(|s| {
        for cpu in 0..cpus {
            let (k, ledger) = (&k, &ledger);
            s.spawn(move || {
                pin_to(cpu);
                for _ in 0..100 {
                    k.kfree_rcu(Obj::new(ledger)).unwrap();
                }
            });
        }
    });
    // No barrier, no more calls: the monitor must find them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.dropped.load(SeqCst) < ledger.issued() as u64 {
        assert!(
            Instant::now() < deadline,
            "objects stranded: {:?}",
            k.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    ledger.assert_all_freed_once();
    assert_eq!(k.stats().pending_objects, 0);
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
fn builder_rejects_impossible_settings() {
    let cfg = KvfreeConfig::default()
        .cache_blocks(100)
        .max_cache_blocks(10);
    let e = Krcu::builder().kvfree_config(cfg).build().unwrap_err();
    assert!(e.to_string().contains("cache_blocks"), "{e}");
    assert!(
        Krcu::builder().arena_size(4096).build().is_err(),
        "an arena too small for its watermarks"
    );
}

#[test]
fn the_shrinker_gives_spare_blocks_back_under_memory_pressure() {
    use krcu::page::{Gfp, PageConfig};
    // With kswapd, which runs the shrinkers below the low watermark.
    let k = Krcu::builder()
        .page_config(
            PageConfig::default()
                .arena_size(8 << 20)
                .watermarks(pages::SHRINK_8MIB),
        )
        .kvfree_config(
            KvfreeConfig::default()
                .policy(Policy::CacheRefill)
                .cache_blocks(32)
                .max_cache_blocks(64),
        )
        .report_handler(ReportHandler::Collect(ReportLog::new()))
        .build()
        .unwrap();
    let cached = k.stats().blocks_cached;
    assert!(
        cached >= 32,
        "the caches are filled at build: {:?}",
        k.stats()
    );
    // Take pages until the allocator falls below its low watermark: kswapd
    // wakes and runs the shrinkers, kfree_rcu's among them.
    let mut held = Vec::new();
    while k.pages().stats().free_pages >= 256 {
        match k.pages().alloc_pages(Gfp::NOWAIT | Gfp::NOWARN, 0) {
            Ok(p) => held.push(p),
            Err(_) => break,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while k.stats().shrinker_runs == 0 {
        assert!(
            Instant::now() < deadline,
            "the shrinker never ran: {:?}",
            k.stats()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let s = k.stats();
    assert!(s.shrinker_freed_blocks > 0, "{s:?}");
    assert!(s.blocks_cached < cached, "{s:?}");
    for p in held {
        k.pages().free(p);
    }
    // Objects still go through, with the refill held off for a while.
    let ledger = Ledger::new(10_000);
    for _ in 0..5000 {
        k.kfree_rcu(Obj::new(&ledger)).unwrap();
    }
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
}

#[test]
fn a_partial_front_block_of_an_idle_thread_is_taken_after_the_drain_delay() {
    let log = ReportLog::new();
    let k = brisk(log);
    let ledger = Ledger::new(1000);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..100 {
                k.kfree_rcu(Obj::new(&ledger)).unwrap();
            }
            // Alive, idle, holding a partial front block: no barrier, no
            // exit; only the monitor's steal can hand the objects over.
            while !done.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while ledger.dropped.load(SeqCst) < 100 {
            assert!(
                Instant::now() < deadline,
                "objects held by an idle thread: {:?}",
                k.stats()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        done.store(true, SeqCst);
    });
    ledger.assert_all_freed_once();
}
