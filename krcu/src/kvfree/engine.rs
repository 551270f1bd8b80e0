//! The `kfree_rcu` engine: the call paths, the monitor that hands batches
//! to RCU, reclaim, the refill of spare blocks, and the shrinker's work.
//!
//! # The call path (two-argument form)
//! 1. Trylock this CPU's `krc` lock; failing that, every other CPU's; failing
//!    all, push the object's `rcu_head` on this CPU's lock-free list.
//! 2. Take a grace-period snapshot (one load of the instance's counter),
//!    with the lock held, as the kernel does.
//! 3. Put the pointer in the channel's current block; if it is full, get a
//!    block from the cache, then by the policy; with none, push the
//!    `rcu_head` on the list.
//!
//! Nothing on it allocates from the heap, makes a system call, or waits on a
//! lock: the only lock is trylocked, and asking the worker for spare blocks
//! is a flag it polls.
//!
//! # Why a snapshot per object is enough
//! Each block carries the latest snapshot of the objects in it (by
//! `rcu_seq` order: [`Block::push`] never lets it go backwards). Snapshots
//! are taken where the block is owned (under its `krc` lock, or inside the
//! front owner's section), so a caller that stalls before it gets there
//! takes a fresh one when it does.
//! A snapshot names the first grace period that *starts* after it was
//! taken; the grace-period engine starts every grace period with a
//! `membarrier` that orders the caller's earlier stores (the unlink that
//! made the object unreachable) before it, so a reader that could still see
//! the object is one that grace period waits for.

use super::batch::BatchWork;
use super::block::{Block, BlockList, Channel};
use super::front::{self, Front};
use super::krc::{Krc, KrcCpu};
use super::policy::Policy;
use super::stats::{EngineCounters, KvfreeStats};
use super::{Assist, KvfreeConfig};
use crate::context::{self, ContextKind};
use crate::domain::Domain;
use crate::lock::RawSpinLockGuard;
use crate::page::{Gfp, PageAllocator};
use crate::percpu::PerCpu;
use crate::rcu::{CbList, Rcu, RcuCallbackFn, RcuHead};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The flags of the refill worker's allocation: it may sleep, but gives up
/// after one round and leaves the reserves alone (mainline's
/// `fill_page_cache_func`).
const REFILL_GFP: Gfp = Gfp::KERNEL
    .union(Gfp::NORETRY)
    .union(Gfp::NOMEMALLOC)
    .union(Gfp::NOWARN);

/// Monitor passes without a call after which a CPU's cache goes back to the
/// page allocator (with the default drain delay, about a second).
const IDLE_PASSES_BEFORE_TRIM: u32 = 100;

pub(crate) struct Engine {
    domain: Domain,
    pages: Arc<PageAllocator>,
    rcu: Arc<Rcu>,
    pub(crate) config: KvfreeConfig,
    /// The `krc` states: `homes` home states, then the overflow states.
    pub(crate) cpus: PerCpu<KrcCpu>,
    /// CPUs (home states, and reclaimers).
    homes: usize,
    /// This instance's id (fronts are found by it).
    id: u64,
    /// Whether threads append to front blocks (membarrier in use and the
    /// configuration allows).
    use_fronts: bool,
    /// Every thread's front, with what the monitor knows of it.
    fronts: Mutex<Vec<FrontEntry>>,
    /// Serialises monitor passes with barriers and shrinker drains, so that
    /// a barrier sees every detached batch already handed to RCU.
    pass_lock: Mutex<()>,
    wake: Mutex<bool>,
    wake_cv: Condvar,
    /// Wakes the refill thread (a thread of its own: its sleeping
    /// allocations may run the shrinkers, which may block, and the monitor
    /// must go on meanwhile).
    refill_wake: Mutex<bool>,
    refill_cv: Condvar,
    pub(crate) stop: AtomicBool,
    reclaim_stop: AtomicBool,
    /// Signalled when a reclaimer finishes a batch (for barriers).
    idle: Mutex<()>,
    idle_cv: Condvar,
    flush_wanted: AtomicBool,
    /// Nanoseconds since `epoch` before which the refill worker holds off
    /// (set by the shrinker).
    refill_backoff_until: AtomicU64,
    epoch: Instant,
    pub(crate) counters: EngineCounters,
}

/// A `krc` lock held, and the CPU it belongs to.
struct Locked<'a> {
    cpu: &'a KrcCpu,
    krc: RawSpinLockGuard<'a, Krc>,
}

impl Engine {
    pub(crate) fn new(
        domain: &Domain,
        pages: Arc<PageAllocator>,
        rcu: Arc<Rcu>,
        config: KvfreeConfig,
    ) -> Arc<Engine> {
        let base = if config.policy.refills() {
            config.cache_blocks
        } else {
            0
        };
        let use_fronts = config.thread_blocks && rcu.stats().membarrier;
        let e = Arc::new(Engine {
            domain: domain.clone(),
            pages,
            rcu,
            // Home states, one per CPU, then as many overflow states,
            // reached only when every home state's trylock fails: in
            // userspace a holder can be preempted mid-section, and with more
            // runnable threads than CPUs every home may be held at once.
            cpus: PerCpu::new(2 * domain.cpus(), |cpu| KrcCpu::new(domain, cpu, base)),
            homes: domain.cpus(),
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(1);
                NEXT.fetch_add(1, Relaxed)
            },
            use_fronts,
            fronts: Mutex::new(Vec::new()),
            config,
            pass_lock: Mutex::new(()),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            refill_wake: Mutex::new(false),
            refill_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            reclaim_stop: AtomicBool::new(false),
            idle: Mutex::new(()),
            idle_cv: Condvar::new(),
            flush_wanted: AtomicBool::new(false),
            refill_backoff_until: AtomicU64::new(0),
            epoch: Instant::now(),
            counters: EngineCounters::default(),
        });
        for (_, cpu) in e.cpus.iter() {
            for b in &cpu.batches {
                b.set_engine(Arc::as_ptr(&e));
            }
            if e.config.policy.refills() {
                cpu.want_refill();
            }
        }
        e
    }

    pub(crate) fn rcu(&self) -> &Rcu {
        &self.rcu
    }

    pub(crate) fn pages(&self) -> &Arc<PageAllocator> {
        &self.pages
    }

    pub(crate) fn domain(&self) -> &Domain {
        &self.domain
    }

    fn base_cache(&self) -> usize {
        if self.config.policy.refills() {
            self.config.cache_blocks
        } else {
            0
        }
    }

    // ----------------------------------------------------------------
    // The call paths
    // ----------------------------------------------------------------

    /// Trylocks this CPU's state, then every other CPU's.
    #[inline]
    fn try_lock_any(&self) -> Result<Locked<'_>, &KrcCpu> {
        let (me, cpu) = self.cpus.current();
        if let Some(krc) = cpu.krc.try_lock() {
            return Ok(Locked { cpu, krc });
        }
        self.try_lock_others(me).ok_or(cpu)
    }

    #[cold]
    fn try_lock_others(&self, me: usize) -> Option<Locked<'_>> {
        let n = self.cpus.cpus();
        (1..n).find_map(|d| {
            let cpu = self.cpus.get((me + d) % n);
            cpu.krc.try_lock().map(|krc| Locked { cpu, krc })
        })
    }

    /// Queues `obj` for freeing after a grace period: the two-argument
    /// form. `head` is the object's embedded `rcu_head` and `func` frees it
    /// from there (the list fallback).
    ///
    /// # Safety
    /// `obj` must be an object of `chan`, owned by the caller and handed
    /// over here; `head` must be its embedded head, not queued, and `func`
    /// must free the object given `head`.
    #[inline]
    pub(crate) unsafe fn queue(
        &self,
        obj: *mut u8,
        chan: &Channel,
        head: NonNull<RcuHead>,
        func: RcuCallbackFn,
        ctx: ContextKind,
    ) {
        // Whether the caller could allocate: asked before the raw lock makes
        // the answer "no" (only the Preemptible policy asks).
        // A real-time thread never allocates (nor takes the zone lock).
        let may_alloc = self.config.policy == Policy::Preemptible
            && self.domain.preemptible()
            && !context::is_realtime();
        // Not from inside this thread's own `swap_front` (a report handler
        // that retires objects): its front is mid-swap there.
        if self.use_fronts
            && matches!(ctx, ContextKind::Task | ContextKind::Softirq)
            && !front::in_swap()
        {
            let ci = usize::from(ctx == ContextKind::Softirq);
            let front = match front::current(self.id) {
                Some(f) => Some(f),
                // A real-time thread never allocates a front here: without
                // one made ahead, it takes the per-CPU path.
                None if context::is_realtime() => None,
                // Making a front allocates and takes a sleeping lock: only
                // where sleeping is allowed. Elsewhere (softirq, atomic, irqs
                // off, an RCU reader) a thread without one takes the
                // per-CPU path; `Krcu::register_thread` makes it ahead.
                None if may_make_front(ctx) => self.register_front(),
                None => None,
            };
            if let Some(f) = front {
                let done = match f.try_push(chan, obj, &self.rcu, ci) {
                    front::Push::Done => true,
                    front::Push::Swap => self.swap_front(f, chan, obj, ci, ctx),
                    front::Push::OtherChannel | front::Push::Stolen => false,
                };
                if done {
                    return;
                }
            }
        }
        let mut locked = match self.try_lock_any() {
            Ok(l) => l,
            Err(cpu) => {
                cpu.lock_busy.fetch_add(1, Relaxed);
                // SAFETY: forwarded from the caller.
                unsafe { self.push_list(cpu, head, func, chan.obj_size) };
                return;
            }
        };
        locked.krc.count_call(ctx);
        // Taken with the lock held (see the module doc).
        let snap = self.rcu.get_state();
        if locked.krc.add(chan, obj, snap) {
            let cpu = locked.cpu;
            drop(locked);
            self.maybe_assist(cpu, ctx);
            return;
        }
        if let Some(page) = self.block_for(&mut locked) {
            // SAFETY: the page is a fresh 4 KiB page of our arena.
            unsafe { locked.krc.install(chan, page) };
            let added = locked.krc.add(chan, obj, snap);
            debug_assert!(added);
            let cpu = locked.cpu;
            drop(locked);
            self.maybe_assist(cpu, ctx);
            return;
        }
        if may_alloc {
            // Option 4 of the 2020 kfree_rcu thread: drop the lock, allocate as the
            // preemptible caller, take a lock again.
            drop(locked);
            if let Some(l) = self.alloc_unlocked(Gfp::NOWAIT | Gfp::NOWARN) {
                locked = l.0;
                // SAFETY: a fresh page from our arena.
                unsafe { locked.krc.install(chan, l.1) };
                // A fresh cookie: the allocation ran unlocked, and another
                // call may have queued a newer object meanwhile.
                let snap = self.rcu.get_state();
                let added = locked.krc.add(chan, obj, snap);
                debug_assert!(added);
                return;
            }
            let (_, cpu) = self.cpus.current();
            // SAFETY: forwarded from the caller.
            unsafe { self.push_list(cpu, head, func, chan.obj_size) };
            return;
        }
        locked.krc.counters.list_fallback += 1;
        let cpu = locked.cpu;
        drop(locked);
        // SAFETY: forwarded from the caller.
        unsafe { self.push_list(cpu, head, func, chan.obj_size) };
    }

    /// Makes the calling thread's front ahead of its first call (it
    /// allocates; the first call then does not).
    pub(crate) fn prepare_thread(&self) {
        if self.use_fronts && front::current(self.id).is_none() {
            self.register_front();
        }
    }

    #[cold]
    fn register_front(&self) -> Option<&'static Front> {
        front::get_or_register(self.id, |f| {
            self.fronts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(FrontEntry {
                    front: f,
                    seen: core::ptr::null_mut(),
                    since: None,
                });
        })
    }

    /// The front block is full or missing: under a
    /// `krc` trylock, hand the old block over as a full one and start a new
    /// one with `obj`. False when no lock or no block can be had (the
    /// caller takes the per-CPU path).
    #[cold]
    fn swap_front(
        &self,
        f: &Front,
        chan: &Channel,
        obj: *mut u8,
        ci: usize,
        ctx: ContextKind,
    ) -> bool {
        if !f.begin() {
            return false;
        }
        // What runs from here to `end` may call out (the validator's
        // report handler on the trylock or the policy's allocation): a
        // `kfree_rcu` made there takes the per-CPU path (`queue`).
        struct Section<'a>(&'a Front, bool);
        impl Drop for Section<'_> {
            fn drop(&mut self) {
                front::set_in_swap(self.1);
                self.0.end();
            }
        }
        let section = Section(f, front::set_in_swap(true));
        let Ok(mut locked) = self.try_lock_any() else {
            return false;
        };
        // With the lock held and inside the owner's section: both blocks
        // this may go into are ours.
        let snap = self.rcu.get_state();
        let old = f.block.swap(core::ptr::null_mut(), Relaxed);
        if let Some(old) = NonNull::new(old) {
            let (objs, bytes) = (f.objs.swap(0, Relaxed), f.bytes.swap(0, Relaxed));
            // SAFETY: the block was this thread's (inside its section).
            unsafe { locked.krc.adopt(old, objs, bytes) };
        }
        let page = self.block_for(&mut locked);
        let queued = match page {
            Some(p) => {
                // SAFETY: a fresh page of our arena.
                let b = unsafe { Block::init(p, *chan) };
                // SAFETY: just made, ours.
                unsafe { (*b.as_ptr()).push(obj, snap) };
                // From null (swapped out above): nothing else puts a block
                // in this front meanwhile (nested calls take the per-CPU
                // path); should anything have, the new block is handed
                // over as full instead of overwriting it.
                if f.block
                    .compare_exchange(core::ptr::null_mut(), b.as_ptr(), Relaxed, Relaxed)
                    .is_ok()
                {
                    f.count(1, chan.obj_size, ci);
                } else {
                    // SAFETY: just made, ours, holding one object.
                    unsafe { locked.krc.adopt(b, 1, chan.obj_size) };
                    locked.krc.count_call(ctx);
                }
                true
            }
            // No new block: the CPU's own block may have room (the lock is
            // held already; one trylock per call).
            None => {
                let added = locked.krc.add(chan, obj, snap);
                if added {
                    locked.krc.count_call(ctx);
                }
                added
            }
        };
        let cpu = locked.cpu;
        drop(locked);
        drop(section);
        if queued {
            self.maybe_assist(cpu, ctx);
        }
        queued
    }

    /// The monitor's look at the fronts: takes the block of a front whose
    /// thread exited, of one whose block has sat a drain delay, and of all
    /// with `flush`, and hands them to the first CPU's `krc` as full
    /// blocks. Returns the objects and bytes still in fronts, and whether
    /// it took every block it wanted: an owner that stays inside its
    /// section (preempted there) is not waited for, with the monitor and
    /// front locks held; the next pass (a barrier's next round) tries again.
    fn monitor_fronts(&self, flush: bool, now: Instant) -> (usize, usize, bool) {
        if !self.use_fronts {
            return (0, 0, true);
        }
        let mut fronts = self.fronts.lock().unwrap_or_else(|e| e.into_inner());
        let (mut objs, mut bytes, mut complete) = (0, 0, true);
        fronts.retain_mut(|e| {
            let f = &e.front;
            let exited = f.exited.load(Acquire);
            let b = f.block.load(Relaxed);
            if b != e.seen {
                e.seen = b;
                e.since = Some(now);
            }
            let aged = e
                .since
                .is_some_and(|t| now.duration_since(t) >= self.config.drain_delay);
            let stolen = if !b.is_null() && (exited || flush || aged) {
                let got = f.steal();
                complete &= got.is_some();
                got
            } else {
                None
            };
            if let Some((b, o, by)) = stolen {
                if let Some(b) = NonNull::new(b) {
                    let mut krc = self.cpus.get(0).krc.lock();
                    // SAFETY: stolen: the block is ours now.
                    unsafe { krc.adopt(b, o, by) };
                }
                e.seen = core::ptr::null_mut();
                e.since = None;
            } else {
                objs += f.objs.load(Relaxed);
                bytes += f.bytes.load(Relaxed)
                    + if b.is_null() {
                        0
                    } else {
                        super::block::BLOCK_BYTES
                    };
            }
            // An exited front is forgotten once its block is taken.
            let gone = exited && f.block.load(Relaxed).is_null();
            if gone {
                self.forget_front(f);
            }
            !gone
        });
        (objs, bytes, complete)
    }

    /// The instance is going away: threads may forget their fronts.
    pub(crate) fn retire_fronts(&self) {
        for e in self
            .fronts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            self.forget_front(&e.front);
            e.front.set_dead();
        }
    }

    /// Keeps the counts of a front the instance stops tracking.
    fn forget_front(&self, f: &Front) {
        for (gone, calls) in self.counters.gone_front_calls.iter().zip(&f.calls) {
            gone.fetch_add(calls.load(Relaxed), Relaxed);
        }
    }

    /// Allocates a page with `gfp` holding no lock, then trylocks a `krc`
    /// to put it in. Frees the page if no lock can be had.
    fn alloc_unlocked(&self, gfp: Gfp) -> Option<(Locked<'_>, NonNull<u8>)> {
        let page = match self.pages.alloc_page(gfp) {
            Ok(p) => p.addr(),
            Err(_) => return None,
        };
        match self.try_lock_any() {
            Ok(mut l) => {
                l.krc.counters.inline_alloc += 1;
                Some((l, page))
            }
            Err(_) => {
                // SAFETY: the order-0 page just allocated above, never
                // shared: ours to free.
                unsafe { self.pages.free_pages(page, 0) };
                None
            }
        }
    }

    /// # Safety
    /// As for [`queue`](Self::queue).
    #[inline]
    unsafe fn push_list(
        &self,
        cpu: &KrcCpu,
        head: NonNull<RcuHead>,
        func: RcuCallbackFn,
        size: usize,
    ) {
        cpu.list_objs.fetch_add(1, Relaxed);
        cpu.list_obj_size.store(size, Relaxed);
        // SAFETY: forwarded from the caller: the head is not queued and
        // `func` frees its object.
        unsafe { cpu.list.push(head, func) };
    }

    /// A page for a new block, with this CPU's lock held: the cache, then
    /// what the policy allows.
    #[inline]
    fn block_for(&self, l: &mut Locked<'_>) -> Option<NonNull<u8>> {
        let policy = self.config.policy;
        if let Some(p) = l.krc.take_cached() {
            if policy.refills() && l.krc.cache.len < self.config.refill_mark {
                l.cpu.want_refill();
            }
            return Some(p);
        }
        if policy.refills() {
            // The cache ran dry: calls come faster than the refills. Keep
            // more spare blocks here from now on.
            if !l.cpu.refill_wanted.load(Relaxed) {
                l.krc.cache_target = (l.krc.cache_target * 2).min(self.config.max_cache_blocks);
            }
            l.cpu.want_refill();
        }
        let page = match policy {
            Policy::Prohibit | Policy::Preemptible | Policy::CacheRefill => return None,
            // The bug the 2020 thread argued about: takes zone->lock under the raw krc lock when
            // the per-CPU lists are empty.
            Policy::Nowait => self
                .pages
                .alloc_page(Gfp::NOWAIT | Gfp::NOWARN)
                .map(|p| p.addr()),
            Policy::NoLocks => self
                .pages
                .alloc_page(Gfp::NO_LOCKS | Gfp::NOWARN)
                .map(|p| p.addr()),
            Policy::Nolock | Policy::CacheRefillNolock => {
                self.pages.alloc_pages_nolock(0).map(|p| p.addr())
            }
        };
        match page {
            Ok(p) => {
                l.krc.counters.inline_alloc += 1;
                Some(p)
            }
            Err(_) => {
                l.krc.counters.inline_alloc_failed += 1;
                None
            }
        }
    }

    /// The single-argument form: may sleep. Returns false if the object
    /// could not be queued (no block could be had even with a sleeping
    /// allocation); the caller then waits for a grace period and frees it.
    ///
    /// # Safety
    /// `obj` must be an object of `chan`, owned by the caller and handed
    /// over here.
    pub(crate) unsafe fn queue_mightsleep(
        &self,
        obj: *mut u8,
        chan: &Channel,
        ctx: ContextKind,
    ) -> bool {
        {
            let (_, cpu) = self.cpus.current();
            let mut l = Locked {
                cpu,
                krc: cpu.krc.lock(),
            };
            l.krc.count_call(ctx);
            // Taken with the lock held (see the module doc).
            let snap = self.rcu.get_state();
            if l.krc.add(chan, obj, snap) {
                return true;
            }
            if let Some(page) = self.block_for(&mut l) {
                // SAFETY: a fresh page from our arena.
                unsafe { l.krc.install(chan, page) };
                l.krc.add(chan, obj, snap);
                return true;
            }
        }
        // No block: allocate one outside the lock, sleeping if need be.
        let page = match self.pages.alloc_page(REFILL_GFP) {
            Ok(p) => p.addr(),
            Err(_) => return false,
        };
        let (_, cpu) = self.cpus.current();
        let mut krc = cpu.krc.lock();
        krc.counters.sleeping_alloc += 1;
        // A fresh cookie, with the lock held: the allocation may have slept
        // (direct reclaim), and the block it joins may hold newer objects.
        let snap = self.rcu.get_state();
        if krc.add(chan, obj, snap) {
            // Another call installed a block meanwhile: keep ours spare.
            // SAFETY: a fresh page of our arena, owned by us.
            unsafe { krc.cache.push(page.cast::<Block>()) };
        } else {
            // SAFETY: a fresh page from our arena.
            unsafe { krc.install(chan, page) };
            krc.add(chan, obj, snap);
        }
        true
    }

    // ----------------------------------------------------------------
    // The worker: monitor, refill, reclaim
    // ----------------------------------------------------------------

    /// Wakes the monitor and the refill thread (from contexts that may
    /// make a system call).
    pub(crate) fn kick(&self) {
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake_cv.notify_one();
        self.kick_refill();
    }

    /// Wakes the refill thread.
    pub(crate) fn kick_refill(&self) {
        *self.refill_wake.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.refill_cv.notify_one();
    }

    /// The monitor sleeps until kicked or `timeout`.
    pub(crate) fn sleep(&self, timeout: Duration) {
        Self::sleep_on(&self.wake, &self.wake_cv, timeout);
    }

    /// The refill thread sleeps until kicked or `timeout`.
    pub(crate) fn sleep_refill(&self, timeout: Duration) {
        Self::sleep_on(&self.refill_wake, &self.refill_cv, timeout);
    }

    fn sleep_on(wake: &Mutex<bool>, cv: &Condvar, timeout: Duration) {
        let g = wake.lock().unwrap_or_else(|e| e.into_inner());
        let (mut g, _) = cv
            .wait_timeout_while(g, timeout, |kicked| !*kicked)
            .unwrap_or_else(|e| e.into_inner());
        *g = false;
    }

    /// Whether any CPU asked for spare blocks.
    pub(crate) fn refill_wanted(&self) -> bool {
        self.cpus.iter().any(|(_, c)| c.refill_wanted.load(Relaxed))
    }

    pub(crate) fn take_flush_request(&self) -> bool {
        self.flush_wanted.swap(false, AcqRel)
    }

    pub(crate) fn request_flush(&self) {
        self.flush_wanted.store(true, Release);
        self.kick();
    }

    pub(crate) fn note_in_flight(&self, objs: usize, bytes: usize, blocks: usize) {
        let c = &self.counters;
        c.in_flight_objs.fetch_add(objs, Relaxed);
        c.in_flight_bytes.fetch_add(bytes, Relaxed);
        c.in_flight_blocks.fetch_add(blocks, Relaxed);
        EngineCounters::add(&c.batches, 1);
        EngineCounters::add(&c.batched_objects, objs as u64);
    }

    /// One pass of the monitor over every CPU (the kernel's
    /// `kfree_rcu_monitor`). With `flush`, everything queued is handed over,
    /// not only full or aged blocks. Returns whether every CPU could hand
    /// over what it needed to (false when both its batches were in flight)
    /// and whether anything is still pending.
    pub(crate) fn monitor_pass(&self, flush: bool) -> (bool, bool) {
        let _pass = self.pass_lock.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (mut pending_objs, mut pending_bytes, mut complete) = self.monitor_fronts(flush, now);
        let mut busy = pending_objs > 0;
        for (_, cpu) in self.cpus.iter() {
            let r = self.monitor_cpu(cpu, flush, now);
            complete &= r.complete;
            busy |= r.busy;
            pending_objs += r.pending_objs;
            pending_bytes += r.pending_bytes;
        }
        let c = &self.counters;
        let in_flight = c.in_flight_objs.load(Relaxed);
        busy |= in_flight > 0;
        pending_objs += in_flight;
        pending_bytes += c.in_flight_bytes.load(Relaxed);
        c.peak_pending_objs.fetch_max(pending_objs as u64, Relaxed);
        c.peak_pending_bytes
            .fetch_max(pending_bytes as u64, Relaxed);
        (complete, busy)
    }

    fn monitor_cpu(&self, cpu: &KrcCpu, flush: bool, now: Instant) -> PassResult {
        let list_waiting = cpu.list_objs.load(Relaxed) > 0;
        let mut krc = cpu.krc.lock();
        let calls = krc.calls();
        if calls == krc.calls_seen {
            krc.idle_passes = krc.idle_passes.saturating_add(1);
        } else {
            krc.calls_seen = calls;
            krc.idle_passes = 0;
        }
        if krc.pending_objs > 0 || list_waiting {
            krc.pending_since.get_or_insert(now);
        }
        let aged = krc
            .pending_since
            .is_some_and(|t| now.duration_since(t) >= self.config.drain_delay);
        let block_bytes = krc.blocks_in_use * super::block::BLOCK_BYTES;
        let mut result = PassResult {
            complete: true,
            busy: krc.pending_objs > 0 || list_waiting || cpu.refill_wanted.load(Relaxed),
            pending_objs: krc.pending_objs + cpu.list_objs.load(Relaxed),
            pending_bytes: krc.pending_bytes
                + block_bytes
                + cpu.list_objs.load(Relaxed) * cpu.list_obj_size.load(Relaxed),
        };
        // An idle CPU gives its spare blocks back: no thread runs there any
        // more, or none calls kfree_rcu.
        let mut trimmed = BlockList::new();
        if krc.idle_passes >= IDLE_PASSES_BEFORE_TRIM {
            krc.cache_target = self.base_cache();
            if krc.idle_passes == IDLE_PASSES_BEFORE_TRIM {
                trimmed.append(&mut krc.cache);
            }
        }
        let want = flush || aged || krc.has_full_blocks();
        if !want {
            drop(krc);
            self.free_blocks(&mut trimmed);
            return result;
        }
        let Some(mut claim) = cpu.batches.iter().find_map(|b| b.try_claim()) else {
            // Both batches are in flight: the next pass hands this over.
            result.complete = false;
            drop(krc);
            self.free_blocks(&mut trimmed);
            return result;
        };
        let (blocks, _, _) = krc.detach_blocks(flush || aged);
        krc.pending_since = if krc.pending_objs > 0 {
            Some(now)
        } else {
            None
        };
        drop(krc);
        self.free_blocks(&mut trimmed);

        let list = cpu.list.take();
        let n = list.len();
        cpu.list_objs.fetch_sub(n, Relaxed);
        let bytes = n * cpu.list_obj_size.load(Relaxed);

        // Drain-ready: a block whose snapshot has already elapsed is freed
        // now, without waiting for another grace period.
        let mut blocks = blocks;
        let mut ready = BlockList::new();
        let w: &mut BatchWork = claim.work();
        while let Some(b) = blocks.pop() {
            // SAFETY: detached blocks are owned by this pass.
            let blk = unsafe { &*b.as_ptr() };
            if self.rcu.poll_state(blk.gp_snap) {
                // SAFETY: owned, as above.
                unsafe { ready.push(b) };
            } else {
                w.objs += blk.count;
                w.bytes += blk.count * blk.chan.obj_size;
                // SAFETY: owned, as above.
                unsafe { w.blocks.push(b) };
            }
        }
        w.objs += n;
        w.bytes += bytes;
        let mut list = list;
        w.list.append(&mut list);
        if !ready.is_empty() {
            let n = ready.len;
            EngineCounters::add(&self.counters.drain_ready_blocks, n as u64);
            let (objs, bytes) = ready.totals();
            let c = &self.counters;
            c.in_flight_objs.fetch_add(objs, Relaxed);
            c.in_flight_bytes.fetch_add(bytes, Relaxed);
            c.in_flight_blocks.fetch_add(n, Relaxed);
            let mut work = BatchWork {
                blocks: ready,
                list: CbList::new(),
                objs,
                bytes,
            };
            // SAFETY: every block in `work` has an elapsed snapshot.
            unsafe { self.make_ready(cpu.batches[0].cpu, &mut work) };
            // No RCU callback will wake the reclaimer for these.
            self.wake_reclaimer(cpu.batches[0].cpu);
        }
        claim.submit(self);
        result
    }

    /// Moves a batch's contents, whose grace period has elapsed, to its
    /// CPU's ready list (from the RCU callback).
    ///
    /// # Safety
    /// The grace period of everything in `work` must have elapsed.
    pub(crate) unsafe fn make_ready(&self, cpu: usize, work: &mut BatchWork) {
        let cpu = self.cpus.get(cpu);
        let n = work.blocks.len;
        let mut r = cpu.ready.lock();
        r.blocks.append(&mut work.blocks);
        r.list.append(&mut work.list);
        r.objs += work.objs;
        r.bytes += work.bytes;
        cpu.ready_blocks.fetch_add(n, Relaxed);
        work.objs = 0;
        work.bytes = 0;
    }

    /// Takes up to `max_blocks` blocks (and with `list` the whole
    /// `rcu_head` list) from `cpu`'s ready list and frees them: in bulk per
    /// block, then the list one object at a time. Block pages go back to the
    /// CPU's cache up to its target, the rest to the page allocator. With
    /// `trylock` (an assisting caller) it takes no lock but trylocks.
    fn reclaim_ready(&self, cpu: &KrcCpu, max_blocks: usize, list: bool, trylock: bool) -> usize {
        // Counted before taking anything, so that a barrier which finds the
        // ready list empty and nobody reclaiming knows nothing is in hand;
        // and recorded on this thread, so that a barrier or a drop of the
        // instance from a destructor run here knows it runs inside reclaim.
        in_reclaim(self, cpu, || {
            self.reclaim_ready_counted(cpu, max_blocks, list, trylock)
        })
    }

    fn reclaim_ready_counted(
        &self,
        cpu: &KrcCpu,
        max_blocks: usize,
        list: bool,
        trylock: bool,
    ) -> usize {
        let mut blocks = BlockList::new();
        let mut cb = CbList::new();
        {
            let guard = if trylock {
                cpu.ready.try_lock()
            } else {
                Some(cpu.ready.lock())
            };
            let Some(mut r) = guard else {
                return 0;
            };
            while blocks.len < max_blocks {
                let Some(b) = r.blocks.pop() else { break };
                // SAFETY: popped from the ready list, now ours.
                unsafe { blocks.push(b) };
            }
            cpu.ready_blocks.fetch_sub(blocks.len, Relaxed);
            let (mut objs, mut bytes) = blocks.totals();
            if list && !r.list.is_empty() {
                let n = r.list.len();
                // The list's bytes: what is left after the blocks' own.
                let list_bytes = (r.bytes - bytes.min(r.bytes)) * n / (r.objs - objs).max(n);
                core::mem::swap(&mut cb, &mut r.list);
                objs += n;
                bytes += list_bytes;
            }
            r.objs -= objs.min(r.objs);
            r.bytes -= bytes.min(r.bytes);
            let c = &self.counters;
            saturating_sub(&c.in_flight_objs, objs);
            saturating_sub(&c.in_flight_bytes, bytes);
            c.in_flight_blocks.fetch_sub(blocks.len, Relaxed);
        }
        let t0 = Instant::now();
        let (mut freed, mut panics) = (0, 0);
        let mut spare = BlockList::new();
        while let Some(b) = blocks.pop() {
            // SAFETY: blocks on the ready list had their grace period elapse.
            let (n, p) = unsafe { (*b.as_ptr()).reclaim() };
            freed += n;
            panics += p;
            // SAFETY: owned here.
            unsafe { spare.push(b) };
        }
        let (n, p) = reclaim_list(&mut cb);
        freed += n;
        panics += p;
        if panics > 0 {
            EngineCounters::add(&self.counters.destructor_panics, panics as u64);
            tracing::error!(
                panics,
                "kfree_rcu: destructors of retired objects panicked; caught, reclaim goes on"
            );
        }
        if !spare.is_empty() {
            let krc = if trylock {
                cpu.krc.try_lock()
            } else {
                Some(cpu.krc.lock())
            };
            if let Some(mut krc) = krc {
                while krc.cache.len < krc.cache_target {
                    let Some(b) = spare.pop() else { break };
                    // SAFETY: an emptied block we own.
                    unsafe { krc.cache.push(b) };
                }
            }
        }
        while let Some(b) = spare.pop() {
            // SAFETY: an emptied block we own, an order-0 page of our
            // allocator, taken off every list.
            unsafe {
                if trylock {
                    self.pages.free_pages_nolock(b.cast(), 0);
                } else {
                    self.pages.free_pages(b.cast(), 0);
                }
            }
        }
        let c = &self.counters;
        EngineCounters::add(&c.reclaimed, freed as u64);
        EngineCounters::add(&c.reclaim_nanos, t0.elapsed().as_nanos() as u64);
        freed
    }

    /// Whether the calling thread is freeing objects of this instance (a
    /// reclaimer, or a caller that assists): a destructor of a retired
    /// object runs on it.
    pub(crate) fn in_own_reclaim(&self) -> bool {
        count_reclaim_frames(|f| core::ptr::eq(f.engine, self)) > 0
    }

    fn free_blocks(&self, blocks: &mut BlockList) {
        while let Some(b) = blocks.pop() {
            // SAFETY: blocks on our lists are order-0 pages of our
            // allocator that we own; popped, no list holds it any more.
            unsafe { self.pages.free_pages(b.cast(), 0) };
        }
    }

    /// The flood brake: a task-context caller that may run destructors (not
    /// atomic, irqs on, not real-time, outside any RCU read-side section: a
    /// destructor may wait for a grace period or sleep) frees one ready block of its CPU when
    /// the CPU is behind (or always, by configuration), so that pending
    /// memory stays bounded however little CPU the reclaimers get.
    #[inline]
    fn maybe_assist(&self, cpu: &KrcCpu, ctx: ContextKind) {
        if context::is_realtime() {
            return;
        }
        let above = match self.config.assist {
            Assist::Never => return,
            Assist::WhenBehind => self.config.assist_above,
            Assist::Always => 0,
        };
        if cpu.ready_blocks.load(Relaxed) > above
            && ctx == ContextKind::Task
            && !context::in_atomic()
            && !context::irqs_disabled()
            && context::rcu_read_depth() == 0
        {
            self.assist(cpu);
        }
    }

    #[cold]
    fn assist(&self, cpu: &KrcCpu) {
        let n = self.reclaim_ready(cpu, 1, false, true);
        cpu.assisted.fetch_add(n as u64, Relaxed);
    }

    /// Tops up the caches of the CPUs that asked (the kernel's
    /// `fill_page_cache_func`), allocating with no lock held: the worker runs
    /// in softirq context, where a sleeping allocation is allowed.
    pub(crate) fn refill_pass(&self) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        if now < self.refill_backoff_until.load(Relaxed) {
            return;
        }
        for (_, cpu) in self.cpus.iter() {
            if !cpu.refill_wanted.swap(false, Relaxed) {
                continue;
            }
            let need = {
                let krc = cpu.krc.lock();
                krc.cache_target.saturating_sub(krc.cache.len)
            };
            if need == 0 {
                continue;
            }
            let mut got = BlockList::new();
            for _ in 0..need {
                match self.pages.alloc_page(REFILL_GFP) {
                    // SAFETY: a fresh page of our arena, owned here.
                    Ok(p) => unsafe { got.push(p.addr().cast::<Block>()) },
                    Err(_) => break,
                }
            }
            let n = got.len as u64;
            {
                let mut krc = cpu.krc.lock();
                while krc.cache.len < krc.cache_target {
                    let Some(b) = got.pop() else { break };
                    // SAFETY: a page we own.
                    unsafe { krc.cache.push(b) };
                }
            }
            self.free_blocks(&mut got);
            EngineCounters::add(&self.counters.refills, 1);
            EngineCounters::add(&self.counters.refill_pages, n);
            tracing::trace!(pages = n, "kvfree: refilled a block cache");
        }
    }

    /// Hands everything queued to RCU and waits until it is all freed
    /// (`kvfree_rcu_barrier`).
    pub(crate) fn barrier(&self) {
        loop {
            let (complete, _) = self.monitor_pass(true);
            // Every batch handed over so far is in RCU's lists: wait for
            // its grace period, then for the reclaimers to free it.
            self.rcu.rcu_barrier();
            self.wait_batches_idle();
            if complete {
                break;
            }
        }
    }

    /// Waits until no batch is in flight and every ready object is freed.
    ///
    /// Called from a destructor that this instance's reclaim runs (on a
    /// reclaimer, or on a caller that assists), the reclaimer it would wait
    /// for may be this very thread: it then frees the ready objects itself,
    /// and does not count its own reclaim among those it waits for (the
    /// objects its callers have in hand, the rest of the destructor's block
    /// among them, are freed once the destructor returns).
    fn wait_batches_idle(&self) {
        let helping = self.in_own_reclaim();
        for (i, cpu) in self.cpus.iter() {
            let own = if helping {
                count_reclaim_frames(|f| core::ptr::eq(f.cpu, cpu))
            } else {
                0
            };
            loop {
                if helping {
                    self.reclaim_ready(cpu, usize::MAX, true, false);
                }
                let busy = cpu.batches.iter().any(|b| b.is_busy())
                    || cpu.ready.lock().objs > 0
                    || cpu.reclaiming.load(SeqCst) > own;
                if !busy {
                    break;
                }
                self.wake_reclaimer(i);
                let g = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                let _ = self
                    .idle_cv
                    .wait_timeout(g, Duration::from_millis(1))
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Wakes `cpu`'s reclaimer (from the RCU callback: never the call path).
    pub(crate) fn wake_reclaimer(&self, cpu: usize) {
        let c = self.cpus.get(cpu % self.homes);
        *c.reclaim_wake.lock().unwrap_or_else(|e| e.into_inner()) = true;
        c.reclaim_cv.notify_one();
    }

    /// The reclaimer of `cpu` (the kernel's `kfree_rcu_work`): frees the
    /// CPU's ready objects in chunks, in softirq context, until told to stop
    /// with nothing left in flight.
    pub(crate) fn reclaimer(&self, cpu_index: usize) {
        /// Blocks per chunk: short lock holds, a few thousand objects.
        const CHUNK: usize = 8;
        let _softirq = context::enter_softirq();
        let home = self.cpus.get(cpu_index);
        // This CPU's home state and its overflow state.
        let mine = [home, self.cpus.get(cpu_index + self.homes)];
        loop {
            crate::fork::checkpoint();
            let mut freed = 0;
            for cpu in mine {
                // Destructors' panics are caught one by one; this is the
                // last resort for anything else that unwinds (a bad-free
                // report of the freeing itself): the reclaimer goes on, or
                // everything later on its CPU would never be freed.
                freed += std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.reclaim_ready(cpu, CHUNK, true, false)
                }))
                .unwrap_or_else(|p| {
                    super::block::drop_payload(p);
                    EngineCounters::add(&self.counters.destructor_panics, 1);
                    1
                });
            }
            if freed > 0 {
                let _g = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                self.idle_cv.notify_all();
                continue;
            }
            if self.reclaim_stop.load(Acquire)
                && mine
                    .iter()
                    .all(|c| !c.batches.iter().any(|b| b.is_busy()) && c.ready.lock().objs == 0)
            {
                return;
            }
            let g = home.reclaim_wake.lock().unwrap_or_else(|e| e.into_inner());
            let (mut g, _) = home
                .reclaim_cv
                .wait_timeout_while(g, Duration::from_millis(100), |woken| !*woken)
                .unwrap_or_else(|e| e.into_inner());
            *g = false;
        }
    }

    /// Tells the reclaimers to finish.
    pub(crate) fn stop_reclaimers(&self) {
        self.reclaim_stop.store(true, Release);
        for i in 0..self.homes {
            self.wake_reclaimer(i);
        }
    }

    /// How many spare blocks the shrinker could free.
    pub(crate) fn shrink_count(&self) -> usize {
        self.cpus.iter().map(|(_, c)| c.krc.lock().cache.len).sum()
    }

    /// Frees up to `n` spare blocks, holds the refill worker off for a drain
    /// delay, and asks the monitor to hand over everything pending (the
    /// kfree_rcu shrinker).
    pub(crate) fn shrink_scan(&self, n: usize) -> usize {
        let backoff = (self.epoch.elapsed() + self.config.drain_delay).as_nanos() as u64;
        self.refill_backoff_until.store(backoff, Relaxed);
        let mut freed = 0;
        for (_, cpu) in self.cpus.iter() {
            let mut out = BlockList::new();
            {
                let mut krc = cpu.krc.lock();
                krc.cache_target = self.base_cache();
                while freed + out.len < n {
                    let Some(b) = krc.cache.pop() else { break };
                    // SAFETY: a spare block we now own.
                    unsafe { out.push(b) };
                }
            }
            freed += out.len;
            self.free_blocks(&mut out);
        }
        EngineCounters::add(&self.counters.shrinker_runs, 1);
        EngineCounters::add(&self.counters.shrinker_freed, freed as u64);
        self.request_flush();
        tracing::debug!(freed, "kvfree: shrinker ran");
        freed
    }

    /// Frees every spare block (the instance is going away).
    pub(crate) fn release_caches(&self) {
        for (_, cpu) in self.cpus.iter() {
            let mut out = BlockList::new();
            out.append(&mut cpu.krc.lock().cache);
            self.free_blocks(&mut out);
        }
    }

    /// A snapshot of the statistics.
    pub(crate) fn stats(&self) -> KvfreeStats {
        let mut s = KvfreeStats::default();
        let c = &self.counters;
        for (_, cpu) in self.cpus.iter() {
            let k = cpu.krc.lock();
            let kc = &k.counters;
            s.calls_task += kc.calls[0];
            s.calls_softirq += kc.calls[1];
            s.calls_hardirq += kc.calls[2];
            s.to_block += kc.to_block;
            s.blocks_from_cache += kc.from_cache;
            s.inline_allocs += kc.inline_alloc;
            s.inline_alloc_failures += kc.inline_alloc_failed;
            s.list_fallbacks += kc.list_fallback;
            s.sleeping_allocs += kc.sleeping_alloc;
            s.evictions += kc.evictions;
            s.blocks_in_use += k.blocks_in_use as u64;
            s.blocks_cached += k.cache.len as u64;
            s.pending_objects += (k.pending_objs + cpu.list_objs.load(Relaxed)) as u64;
            s.pending_bytes += (k.pending_bytes
                + k.blocks_in_use * super::block::BLOCK_BYTES
                + cpu.list_objs.load(Relaxed) * cpu.list_obj_size.load(Relaxed))
                as u64;
            s.lock_busy_fallbacks += cpu.lock_busy.load(Relaxed);
            s.assisted_objects += cpu.assisted.load(Relaxed);
        }
        for e in self.fronts.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let f = &e.front;
            let (t, so) = (f.calls[0].load(Relaxed), f.calls[1].load(Relaxed));
            s.calls_task += t;
            s.calls_softirq += so;
            s.to_block += t + so;
            let objs = f.objs.load(Relaxed) as u64;
            s.pending_objects += objs;
            if !f.block.load(Relaxed).is_null() {
                s.blocks_in_use += 1;
                s.pending_bytes += (f.bytes.load(Relaxed) + super::block::BLOCK_BYTES) as u64;
            }
        }
        let (t, so) = (
            c.gone_front_calls[0].load(Relaxed),
            c.gone_front_calls[1].load(Relaxed),
        );
        s.calls_task += t;
        s.calls_softirq += so;
        s.to_block += t + so;
        s.refused_nmi = c.refused_nmi.load(Relaxed);
        s.inline_synchronize = c.inline_synchronize.load(Relaxed);
        let in_flight_blocks = c.in_flight_blocks.load(Relaxed);
        s.blocks_in_use += in_flight_blocks as u64;
        s.pending_objects += c.in_flight_objs.load(Relaxed) as u64;
        s.pending_bytes +=
            (c.in_flight_bytes.load(Relaxed) + in_flight_blocks * super::block::BLOCK_BYTES) as u64;
        s.peak_pending_objects = c.peak_pending_objs.load(Relaxed).max(s.pending_objects);
        s.peak_pending_bytes = c.peak_pending_bytes.load(Relaxed).max(s.pending_bytes);
        let r = self.rcu.stats();
        s.grace_periods = r.grace_periods + r.expedited_grace_periods;
        s.batches = c.batches.load(Relaxed);
        s.batched_objects = c.batched_objects.load(Relaxed);
        s.drain_ready_blocks = c.drain_ready_blocks.load(Relaxed);
        s.reclaimed_objects = c.reclaimed.load(Relaxed);
        s.reclaim_nanos = c.reclaim_nanos.load(Relaxed);
        s.destructor_panics = c.destructor_panics.load(Relaxed);
        s.refills = c.refills.load(Relaxed);
        s.refill_pages = c.refill_pages.load(Relaxed);
        s.shrinker_runs = c.shrinker_runs.load(Relaxed);
        s.shrinker_freed_blocks = c.shrinker_freed.load(Relaxed);
        s
    }

    /// Whether the calling thread is in a context `kfree_rcu` refuses.
    #[inline]
    pub(crate) fn refuse_nmi(&self) -> bool {
        if context::in_nmi() {
            self.counters.refused_nmi.fetch_add(1, Relaxed);
            true
        } else {
            false
        }
    }
}

/// Whether a thread in `ctx` may make its front block: task context where
/// sleeping is allowed (making one allocates and takes a `std` mutex).
#[inline]
fn may_make_front(ctx: ContextKind) -> bool {
    ctx == ContextKind::Task
        && !context::in_atomic()
        && !context::irqs_disabled()
        && context::rcu_read_depth() == 0
}

/// One `reclaim_ready` in progress on this thread, linked to the ones it
/// runs inside of (a destructor that calls a barrier that reclaims).
struct ReclaimFrame {
    engine: *const Engine,
    /// The CPU whose `reclaiming` count the frame holds raised.
    cpu: *const KrcCpu,
    prev: *const ReclaimFrame,
}

std::thread_local! {
    /// The innermost reclaim in progress on this thread (const, no
    /// destructor: usable from thread-local destructors too).
    static RECLAIM_TOP: core::cell::Cell<*const ReclaimFrame> =
        const { core::cell::Cell::new(core::ptr::null()) };
}

/// Runs `f` (one `reclaim_ready`) with `cpu`'s `reclaiming` count raised
/// and this thread's reclaim frame pushed; undoes both when `f` returns, or
/// if something unwinds through it (so that a barrier never waits for a
/// dead count).
fn in_reclaim<R>(engine: &Engine, cpu: &KrcCpu, f: impl FnOnce() -> R) -> R {
    struct Leave<'a> {
        cpu: &'a KrcCpu,
        prev: *const ReclaimFrame,
    }
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            RECLAIM_TOP.with(|t| t.set(self.prev));
            self.cpu.reclaiming.fetch_sub(1, SeqCst);
        }
    }
    cpu.reclaiming.fetch_add(1, SeqCst);
    let frame = ReclaimFrame {
        engine,
        cpu,
        prev: RECLAIM_TOP.with(core::cell::Cell::get),
    };
    RECLAIM_TOP.with(|t| t.set(&frame));
    let _leave = Leave {
        cpu,
        prev: frame.prev,
    };
    f()
}

/// How many reclaims in progress on this thread satisfy `f`.
fn count_reclaim_frames(mut f: impl FnMut(&ReclaimFrame) -> bool) -> usize {
    let mut n = 0;
    let mut p = RECLAIM_TOP.with(core::cell::Cell::get);
    while !p.is_null() {
        // SAFETY: a frame on this thread's list lives on the stack of an
        // `in_reclaim` call still running on this thread (each unlinks its
        // frame before returning or unwinding, innermost first); frames
        // are never written after they are linked.
        let frame = unsafe { &*p };
        n += usize::from(f(frame));
        p = frame.prev;
    }
    n
}

/// Lowers an estimate, never below zero (the list's byte counts are
/// estimates, so what is taken back can exceed what was added).
fn saturating_sub(c: &core::sync::atomic::AtomicUsize, n: usize) {
    let _ = c.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
}

/// A thread's front as the monitor tracks it.
struct FrontEntry {
    front: Arc<Front>,
    /// The block it had at the last pass, and since when.
    seen: *mut Block,
    since: Option<Instant>,
}

// SAFETY: `seen` is only compared, never followed.
unsafe impl Send for FrontEntry {}

struct PassResult {
    complete: bool,
    busy: bool,
    pending_objs: usize,
    pending_bytes: usize,
}

/// Runs every callback of a list: the `rcu_head` path, one object at a
/// time, chasing the links through the objects themselves. Returns the
/// objects and how many destructors panicked (caught one by one).
fn reclaim_list(list: &mut CbList) -> (usize, usize) {
    let (mut n, mut panics) = (0, 0);
    while let Some((head, func)) = list.pop() {
        // SAFETY: every head on a kvfree list was pushed with the function
        // that frees its object, and its grace period has elapsed; the
        // head was popped before the call, so a panic leaves the list whole.
        let r = super::block::catch_destructor(|| unsafe { func(head) });
        panics += usize::from(r.is_err());
        n += 1;
    }
    (n, panics)
}

/// The engine's locks that the forking thread holds across a `fork` (see
/// `crate::fork`), in phases so that with several engines each lock class
/// is taken in one order: 0, the monitor's and front locks, and every
/// front's gate (no thread is inside its front section at the fork, so the
/// child never waits for a section whose thread it does not have); 1, every `krc`
/// lock; 2, every ready-list lock (as the monitor nests them); 3, the
/// wake-up locks.
pub(crate) struct ForkLocks<'a>(#[allow(dead_code)] ForkGuards<'a>);

/// The guards of one phase, held only to be dropped.
#[allow(dead_code)]
enum ForkGuards<'a> {
    Monitor(
        std::sync::MutexGuard<'a, ()>,
        std::sync::MutexGuard<'a, Vec<FrontEntry>>,
        FrontGates,
    ),
    Krc(Vec<RawSpinLockGuard<'a, Krc>>),
    Ready(Vec<RawSpinLockGuard<'a, super::krc::Ready>>),
    Wake(
        std::sync::MutexGuard<'a, bool>,
        std::sync::MutexGuard<'a, bool>,
        std::sync::MutexGuard<'a, ()>,
        Vec<std::sync::MutexGuard<'a, bool>>,
    ),
}

impl Engine {
    /// The phases of [`lock_for_fork`](Self::lock_for_fork).
    pub(crate) const FORK_LOCK_PHASES: usize = 4;

    /// Takes phase `phase` of the locks another thread could hold (see
    /// [`ForkLocks`]); the engine's workers are parked, holding none.
    pub(crate) fn lock_for_fork(&self, phase: usize) -> ForkLocks<'_> {
        ForkLocks(match phase {
            0 => {
                let pass = self.pass_lock.lock().unwrap_or_else(|e| e.into_inner());
                let fronts = self.fronts.lock().unwrap_or_else(|e| e.into_inner());
                let gates = FrontGates::close(&fronts);
                ForkGuards::Monitor(pass, fronts, gates)
            }
            1 => ForkGuards::Krc(self.cpus.iter().map(|(_, c)| c.krc.lock()).collect()),
            2 => ForkGuards::Ready(self.cpus.iter().map(|(_, c)| c.ready.lock()).collect()),
            _ => ForkGuards::Wake(
                self.wake.lock().unwrap_or_else(|e| e.into_inner()),
                self.refill_wake.lock().unwrap_or_else(|e| e.into_inner()),
                self.idle.lock().unwrap_or_else(|e| e.into_inner()),
                self.cpus
                    .iter()
                    .map(|(_, c)| c.reclaim_wake.lock().unwrap_or_else(|e| e.into_inner()))
                    .collect(),
            ),
        })
    }

    /// In the child of a `fork`: objects another (now gone) thread was
    /// freeing are forgotten (they leak in the child), so that barriers do
    /// not wait for it.
    ///
    /// The other threads' fronts are marked exited: the child's monitor
    /// takes their blocks (their sections ended before the fork, see
    /// [`ForkLocks`]) and forgets them. The forking thread's own fronts
    /// stay.
    pub(crate) fn forget_other_threads(&self) {
        for (_, c) in self.cpus.iter() {
            c.reclaiming.store(0, SeqCst);
        }
        for e in self.fronts.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if !front::owned_here(&e.front) {
                e.front.exited.store(true, Release);
            }
        }
    }
}

/// Every front's gate closed across a `fork`: each front's steal asked and
/// its owner out of its section; opened again when dropped (in the parent
/// and in the child).
///
/// Ordering: the same handshake as the monitor's steal (`steal.rs`): every
/// `steal` store precedes one membarrier, after which an owner is either
/// seen `busy` (and waited for) or will see `steal` and leave its block
/// alone; so at the fork no thread is inside its section, and none enters
/// one until the gates reopen. The owners never block on anything while
/// inside (a section holds no lock but a `krc` trylock), so the wait ends.
pub(crate) struct FrontGates(Vec<Arc<Front>>);

impl FrontGates {
    fn close(fronts: &[FrontEntry]) -> FrontGates {
        let gates: Vec<Arc<Front>> = fronts.iter().map(|e| e.front.clone()).collect();
        for f in &gates {
            f.fork_ask();
        }
        if let Some(f) = gates.first() {
            f.fork_barrier();
        }
        for f in &gates {
            f.fork_wait();
        }
        FrontGates(gates)
    }
}

impl Drop for FrontGates {
    fn drop(&mut self) {
        for f in &self.0 {
            f.fork_release();
        }
    }
}
