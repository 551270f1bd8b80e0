//! `kfree_rcu` into sheaves (Linux 6.18's `kfree_rcu_sheaf`,
//! `__kfree_rcu_sheaf`, `rcu_free_sheaf`): an object retired with
//! [`SlabCache::kfree_rcu_sheaf`] goes into the calling thread's own
//! `rcu_free` sheaf of the cache (plain loads and stores); a full sheaf is
//! submitted whole with one `call_rcu` on the cache's RCU instance, the
//! sheaf's own [`RcuHead`] carrying it. After the grace period the
//! callback runs `T`'s destructor on each object (nothing per object for a
//! `T` without drop glue) and gives the sheaf to the barn as a full sheaf
//! of free objects, ready to be allocated from; when the barn is at its
//! limit the sheaf is flushed to the slabs instead.
//!
//! Signal handlers (hardirq) use this CPU's `rcu_free` sheaf under
//! trylocks only; NMI context is refused. When no empty sheaf can be had
//! without blocking (or allocating, in a handler or on a real-time
//! thread) the object is handed back for the caller's fallback.
//!
//! A destructor that panics does not lose the other objects of its sheaf:
//! each destructor runs under `catch_unwind`, the sheaf goes home, then
//! the first panic is resumed (the RCU worker catches and counts it);
//! later payloads are dropped with `unwind::drop_panic_payload`.
//!
//! Owns: the `rcu_free` path and its callback. Uses: the cache's core,
//! sheaves, the thread slots, the RCU instance.
#![cfg(not(loom))]

use super::cache::{CacheCore, Mode, SlabCache, never_block};
use super::free::push;
use super::recycle::Helping;
use super::sheaf::{self, Sheaf};
use super::thread::{self, Chains, Which};
use crate::context::PreemptModel;
use crate::rcu::RcuHead;
use crate::sync::atomic::Ordering::*;
use core::ptr::{self, NonNull};
use std::sync::Arc;

impl<T> SlabCache<T> {
    /// Retires `obj` (an allocated object of this cache that readers of
    /// the cache's RCU instance may still reach) into the calling thread's
    /// `rcu_free` sheaf of this cache (`kfree_rcu` of a sheaf-backed
    /// object).
    ///
    /// Ok: queued (`Ok(true)` when it went by the slow path, where a new
    /// sheaf is started: the caller rings kfree_rcu's monitor then, so a
    /// sheaf started after a quiet spell is submitted without waiting for
    /// the monitor's idle poll; the fast path rings nothing); after a grace period of the cache's RCU instance,
    /// `T`'s destructor runs (if `T` needs drop) and the slot becomes
    /// allocatable again. Err(obj): no sheaf could be had without blocking
    /// (or in NMI, or a trylock failed in a signal handler): the object is
    /// handed back untouched; the caller falls back to the kvfree block
    /// machinery. A pointer that is not an allocated object of this cache
    /// is reported per the cache's policy (and Ok returned: nothing is
    /// queued or freed).
    ///
    /// # Safety
    /// `obj` came from this cache's alloc, is not freed or retired already,
    /// and the caller gives up ownership when Ok is returned.
    #[doc(alias = "__kfree_rcu_sheaf")]
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) unsafe fn kfree_rcu_sheaf(&self, obj: NonNull<T>) -> Result<bool, NonNull<T>> {
        // The crate-internal entry (its tests): recycles as with
        // `Assist::Always`, so that they reach the recycling paths.
        // SAFETY: forwarded.
        unsafe { self.kfree_rcu_sheaf_inner(obj, true, Helping::Always) }
    }

    /// [`kfree_rcu_sheaf`](Self::kfree_rcu_sheaf) of an object a
    /// [`SlabBox`](super::SlabBox) owned: its type proves it an allocated
    /// object of this cache, so only consistency checks (when on) look at
    /// its slab.
    ///
    /// `helping` says whether destructors of ready objects may run on the
    /// calling thread (`recycle.rs`).
    ///
    /// # Safety
    /// As for `kfree_rcu_sheaf`, and `obj` is an allocated object of this
    /// cache.
    #[inline]
    pub(crate) unsafe fn kfree_rcu_sheaf_owned(
        &self,
        obj: NonNull<T>,
        helping: Helping,
    ) -> Result<bool, NonNull<T>> {
        // SAFETY: forwarded.
        unsafe { self.kfree_rcu_sheaf_inner(obj, self.core.checks, helping) }
    }

    /// # Safety
    /// As for `kfree_rcu_sheaf`; with `check` false, `obj` is an allocated
    /// object of this cache.
    #[inline]
    unsafe fn kfree_rcu_sheaf_inner(
        &self,
        obj: NonNull<T>,
        check: bool,
        helping: Helping,
    ) -> Result<bool, NonNull<T>> {
        let core = &*self.core;
        let p = obj.as_ptr().cast::<u8>();
        if crate::context::in_nmi()
            || core
                .pages
                .faults()
                .should_fail(crate::page::FaultSites::SLAB_RCU_SHEAF)
        {
            core.counters.rcu_fallbacks.fetch_add(1, Relaxed);
            return Err(obj);
        }
        if check && let Err(e) = core.check_and_mark_free(p) {
            core.bad_free(e);
            return Ok(false);
        }
        if let Some(slot) = thread::current(core.id)
            && !never_block()
            && slot.with(Which::Rcu, |s| {
                let s = *s;
                // SAFETY: the owner's sheaf, inside its section.
                if s.is_null() || unsafe { (*s).is_full() } {
                    return false;
                }
                // SAFETY: as above; it has room.
                unsafe { core.push_retired(s, p) };
                true
            }) == Some(true)
        {
            return Ok(false);
        }
        if core.rcu_free_slow(p, helping) {
            return Ok(true);
        }
        if core.checks {
            let (hdr, i) = core.slab_of_trusted(p);
            // SAFETY: a live slab of this cache (the object is outside it).
            super::layout::mark_allocated(unsafe { &*hdr }, i);
        }
        core.counters.rcu_fallbacks.fetch_add(1, Relaxed);
        Err(obj)
    }

    /// Submits this cache's partly filled `rcu_free` sheaves (every
    /// thread's, idle or exited included, and every CPU's) to `call_rcu`.
    /// A thread caught inside its own section keeps its sheaf until the
    /// next call. Returns how many sheaves it submitted.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn submit_rcu_sheaves(&self) -> usize {
        self.core.submit_rcu_sheaves_all(Chains::All)
    }

    /// Waits until every sheaf submitted so far has gone back to the barn
    /// (an `rcu_barrier` of the cache's instance).
    #[doc(alias = "kvfree_rcu_barrier")]
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn rcu_sheaf_barrier(&self) {
        self.core.rcu().rcu_barrier();
    }
}

/// The crate-internal `rcu_free` entry points, for the crate's
/// integration tests only (not part of the API).
#[cfg(feature = "testing")]
#[doc(hidden)]
impl<T> SlabCache<T> {
    /// [`kfree_rcu_sheaf`](Self::kfree_rcu_sheaf).
    ///
    /// # Safety
    /// As for `kfree_rcu_sheaf`.
    pub unsafe fn testing_kfree_rcu_sheaf(&self, obj: NonNull<T>) -> Result<(), NonNull<T>> {
        // SAFETY: forwarded.
        unsafe { self.kfree_rcu_sheaf(obj) }.map(|_| ())
    }

    /// [`submit_rcu_sheaves`](Self::submit_rcu_sheaves).
    pub fn testing_submit_rcu_sheaves(&self) -> usize {
        self.submit_rcu_sheaves()
    }

    /// [`rcu_sheaf_barrier`](Self::rcu_sheaf_barrier).
    pub fn testing_rcu_sheaf_barrier(&self) {
        self.rcu_sheaf_barrier();
    }
}

impl CacheCore {
    /// The slow path of `kfree_rcu_sheaf`: the thread's sheaf is full or
    /// missing, or the caller is a signal handler (or has no slot). True if
    /// the object was queued.
    #[cold]
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    ///
    /// On a real-time thread it keeps the crate's real-time promise (no
    /// global-allocator call, no blocking lock): the slot is used only if
    /// it exists (registering one allocates and takes a `std` mutex), the
    /// CPU's sheaves and the barn are only trylocked, and no sheaf is
    /// allocated; otherwise the object is handed back, and the caller's
    /// kvfree blocks keep the promise.
    ///
    /// In atomic context (a raw lock held, or interrupts off) it is as
    /// constrained as on a real-time thread, and under PREEMPT_RT, where
    /// the cache's locks sleep, it takes none of them, not even by trylock
    /// (an invalid wait context): only the thread's own sheaf.
    fn rcu_free_slow(&self, p: *mut u8, helping: Helping) -> bool {
        let atomic = crate::context::in_atomic() || crate::context::irqs_disabled();
        let constrained = never_block() || atomic || crate::context::is_realtime();
        if (never_block() || atomic) && self.pages.domain().preempt_model() == PreemptModel::Rt {
            return self.rcu_free_own_sheaf(p);
        }
        let mode = if constrained { Mode::Try } else { Mode::Block };
        let slot = if never_block() {
            None
        } else if constrained {
            thread::current(self.id)
        } else {
            self.thread_slot()
        };
        if let Some(slot) = slot {
            if !constrained && self.rcu_free_recycling(slot, p, helping) {
                return true;
            }
            let mut s = slot.take(Which::Rcu);
            // SAFETY: taken out of the slot: ours.
            if s.is_null() || unsafe { (*s).is_full() } {
                let Some(e) = self.empty_for_rcu(mode) else {
                    if !s.is_null() && slot.install(Which::Rcu, s).is_err() {
                        self.submit_rcu_sheaf(s);
                    }
                    return false;
                };
                if !s.is_null() {
                    self.submit_rcu_sheaf(s);
                }
                s = e;
            }
            // SAFETY: ours, with room.
            unsafe { self.push_retired(s, p) };
            if let Err(s) = slot.install(Which::Rcu, s) {
                // A taker holds the slot (a submit or shrink running now):
                // the sheaf goes to RCU at once.
                self.submit_rcu_sheaf(s);
            }
            return true;
        }
        let Some(mut cs) = self.lock_cpu(mode) else {
            return false;
        };
        let mut s = cs.rcu_free;
        // SAFETY: the CPU's sheaf, ours under its lock.
        if s.is_null() || unsafe { (*s).is_full() } {
            let Some(e) = self.empty_for_rcu(mode) else {
                return false;
            };
            if !s.is_null() {
                self.submit_rcu_sheaf(s);
            }
            s = e;
            cs.rcu_free = s;
        }
        // SAFETY: ours under the CPU's lock, with room.
        unsafe { self.push_retired(s, p) };
        true
    }

    /// The slow path where no lock of the cache may be taken (PREEMPT_RT
    /// in atomic context or a handler): the thread's own sheaf if it has
    /// one with room (a handler never uses it: it may have interrupted its
    /// owner), else nothing (the caller falls back to kvfree's blocks).
    fn rcu_free_own_sheaf(&self, p: *mut u8) -> bool {
        if never_block() {
            return false;
        }
        let Some(slot) = thread::current(self.id) else {
            return false;
        };
        slot.with(Which::Rcu, |s| {
            let s = *s;
            // SAFETY: the owner's sheaf, inside its section.
            if s.is_null() || unsafe { (*s).is_full() } {
                return false;
            }
            // SAFETY: as above; it has room.
            unsafe { self.push_retired(s, p) };
            true
        }) == Some(true)
    }

    /// Pushes a retired object into an `rcu_free` sheaf, counting the
    /// sheaf as started when it was empty (one atomic add per sheaf, not
    /// per object).
    ///
    /// # Safety
    /// `s` is an `rcu_free` sheaf the caller owns (its section, its lock or
    /// taken out of its slot), with room.
    #[inline(always)]
    pub(super) unsafe fn push_retired(&self, s: *mut Sheaf, p: *mut u8) {
        if sheaf::len(s) == 0 {
            self.counters.rcu_started.fetch_add(1, Relaxed);
        }
        // SAFETY: per the contract.
        unsafe { push(s, p) };
    }

    /// Partly filled `rcu_free` sheaves not yet submitted (racy: a
    /// hint for the monitor, exact when nobody retires).
    pub(super) fn partial_rcu_sheaves(&self) -> u64 {
        let c = &self.counters;
        // Submitted after started (a sheaf is started before it can be
        // submitted): read `rcu_sheaves` first so that the difference is
        // never negative from a race.
        let submitted = c.rcu_sheaves.load(Relaxed) + c.rcu_recycled.load(Relaxed);
        c.rcu_started.load(Relaxed).saturating_sub(submitted)
    }

    /// An empty sheaf for `rcu_free`: from the barn, else a new one where
    /// allocating is allowed (not in a signal handler, not on a real-time
    /// thread).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    fn empty_for_rcu(&self, mode: Mode) -> Option<*mut Sheaf> {
        let atomic = crate::context::in_atomic() || crate::context::irqs_disabled();
        if let Some(mut barn) = self.lock_barn(mode)
            && let Some(e) = barn.take_empty()
        {
            self.counters.barn_gets.fetch_add(1, Relaxed);
            return Some(e);
        }
        if never_block() || atomic || crate::context::is_realtime() {
            return None;
        }
        Some(Sheaf::new_raw(self.sheaf_capacity))
    }

    /// Hands a sheaf of retired objects to RCU with one `call_rcu`. Never
    /// blocks, allocates nothing: callable from a signal handler.
    pub(super) fn submit_rcu_sheaf(&self, s: *mut Sheaf) {
        if sheaf::len(s) == 0 {
            self.dispose_empty(s, Mode::Try);
            return;
        }
        // SAFETY: a `CacheCore` only ever lives in an `Arc` (built in
        // `SlabCacheBuilder::build`); the count taken here is given back by
        // the callback's `Arc::from_raw`.
        unsafe { Arc::increment_strong_count(ptr::from_ref(self)) };
        // SAFETY: ours; the sheaf belongs to RCU from here until its
        // callback.
        unsafe { (*s).core = ptr::from_ref(self).cast() };
        self.counters.rcu_sheaves.fetch_add(1, Relaxed);
        // SAFETY: the head is the sheaf's first field (`repr(C)`), not
        // queued (the sheaf was ours), and stays valid until the callback,
        // which takes the sheaf back.
        unsafe {
            let head = NonNull::new_unchecked(s.cast::<RcuHead>());
            if crate::context::is_realtime() {
                // No system call on a real-time thread (not even the
                // worker's futex wake-up): kvfree's monitor wakes the
                // worker on its next pass (within `idle_poll`).
                self.rcu().call_rcu_nowake(head, rcu_sheaf_done);
            } else {
                self.rcu().call_rcu(head, rcu_sheaf_done);
            }
        }
    }

    /// Submits every partly filled `rcu_free` sheaf (see
    /// `SlabCache::submit_rcu_sheaves`), and the waiting lists (of sheaves
    /// their threads would recycle, `recycle.rs`) that `chains` selects.
    pub(super) fn submit_rcu_sheaves_all(&self, chains: Chains) -> usize {
        let mut n = self
            .threads
            .take_where(false, |w| w == Which::Rcu, chains, &mut |s, _| {
                let one = usize::from(sheaf::len(s) > 0);
                self.submit_rcu_sheaf(s);
                one
            });
        for (_, cpu) in self.cpu.iter() {
            let s = core::mem::replace(&mut cpu.lock().rcu_free, ptr::null_mut());
            if !s.is_null() {
                n += usize::from(sheaf::len(s) > 0);
                self.submit_rcu_sheaf(s);
            }
        }
        n
    }

    /// What a reclaimer does with a sheaf taken from a thread: a `main`
    /// sheaf is flushed, an `rcu_free` one submitted. Returns the objects
    /// flushed.
    pub(super) fn reclaim_sheaf(&self, s: *mut Sheaf, which: Which) -> usize {
        match which {
            Which::Main => {
                let n = sheaf::len(s);
                self.flush_and_free_sheaf(s, Mode::Block);
                n
            }
            Which::Rcu => {
                self.submit_rcu_sheaf(s);
                0
            }
        }
    }

    /// `rcu_barrier` of the cache's instance, if sheaves are in flight and
    /// the caller can wait for it: not that instance's worker (which cannot
    /// wait for itself), not inside one of its read-side sections (which
    /// would wait for itself forever). Unwaited sheaves come home to an
    /// orphaned core and are flushed to the slabs (`rcu_sheaf_home`).
    pub(super) fn rcu_sheaf_barrier_if_safe(&self) {
        let Some(rcu) = self.rcu.get() else {
            return;
        };
        let c = &self.counters;
        if c.rcu_sheaves.load(Acquire) != c.rcu_sheaves_done.load(Acquire)
            && !rcu.on_worker()
            && !rcu.is_reading()
            && !never_block()
        {
            rcu.rcu_barrier();
        }
    }

    /// A sheaf back from its grace period, objects dropped: to the barn as
    /// a full sheaf, or flushed when the barn is at its limit or the
    /// cache's handle is gone.
    ///
    /// An orphaned cache's barn would keep the sheaf's objects, so their
    /// slabs, so (through the slabs' counts) the core itself, for ever:
    /// nothing shrinks it any more. So the sheaf is flushed and the cache
    /// shrunk (a destructor of this very sheaf may have dropped the last
    /// handle after that handle's shrink ran). The caller holds the
    /// sheaf's count of the core, so the last slab freed here cannot free
    /// the core under it.
    pub(super) fn rcu_sheaf_home(&self, s: *mut Sheaf) {
        // Acquire: pairs with the handle's SeqCst store; a handle dropped
        // after this load shrinks after the sheaf is in the barn.
        if self.orphaned.load(Acquire) {
            self.flush_and_free_sheaf(s, Mode::Block);
            self.shrink();
            return;
        }
        if let Some(mut barn) = self.lock_barn(Mode::Block)
            && barn.put_full(s, self.barn.limit).is_ok()
        {
            self.counters.barn_puts.fetch_add(1, Relaxed);
            return;
        }
        self.flush_and_free_sheaf(s, Mode::Block);
    }
}

/// The RCU callback of a submitted `rcu_free` sheaf (`rcu_free_sheaf`).
///
/// # Safety
/// `head` is the head of a sheaf submitted by `submit_rcu_sheaf`, called
/// once after its grace period.
unsafe fn rcu_sheaf_done(head: NonNull<RcuHead>) {
    let s = head.as_ptr().cast::<Sheaf>();
    // SAFETY: submitted by `submit_rcu_sheaf`, which took a strong count
    // and stored the core; RCU gives the sheaf back to us now.
    let core = unsafe { Arc::from_raw((*s).core.cast::<CacheCore>()) };
    // SAFETY: the sheaf is ours (RCU is done with it).
    let sh = unsafe { &mut *s };
    sh.core = ptr::null();
    let mut first_panic = None;
    // SAFETY: each object was retired once with an initialised `T` that
    // nobody reaches after the grace period; the sheaf is ours.
    unsafe {
        core.drop_objects(s, |payload| match first_panic {
            None => first_panic = Some(payload),
            Some(_) => crate::unwind::drop_panic_payload(payload),
        })
    };
    // Free from here on: poisoned until handed out again.
    core.poison_objects(s);
    core.rcu_sheaf_home(s);
    core.counters.rcu_sheaves_done.fetch_add(1, Release);
    drop(core);
    if let Some(payload) = first_panic {
        std::panic::resume_unwind(payload);
    }
}
