//! The call paths: `kfree_rcu`'s two-argument form ([`CallPath::queue`]:
//! front block, then a `krc` trylock, then the lock-free `rcu_head` list),
//! the single-argument form ([`CallPath::queue_mightsleep`]), the front
//! block's swap, and the flood brake's decision to assist.
//!
//! Owns: no state of its own: [`CallPath`] borrows the engine's parts for
//! one call. Uses: `shared.rs`, `fronts.rs` and `front.rs`, `krc.rs`,
//! `cache.rs` (where a new block comes from), `reclaim.rs` (the assist),
//! `block.rs`, `policy.rs`.
//!
//! # The two-argument form
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
//! is a flag it polls. The one exception is the monitor's doorbell
//! (`Monitor::note_work`), rung on the slow paths (a new block, the
//! `rcu_head` list): on a thread that is not real-time, outside signal
//! handlers, it makes one `FUTEX_WAKE` when the monitor sleeps idle.

use super::Assist;
use super::block::{Block, Channel};
use super::cache::Cache;
use super::front::{self, Front};
use super::fronts::Fronts;
use super::krc::{KrcCpu, Locked};
use super::monitor::Monitor;
use super::policy::Policy;
use super::reclaim::Reclaim;
use super::shared::Shared;
use crate::context::{self, ContextKind};
use crate::page::Gfp;
use crate::rcu::{RcuCallbackFn, RcuHead};
use core::ptr::NonNull;
use core::sync::atomic::Ordering::*;

/// The engine's parts one call uses.
pub(crate) struct CallPath<'a> {
    pub(super) s: &'a Shared,
    /// Only for its doorbell (`Monitor::note_work`).
    pub(super) monitor: &'a Monitor,
    pub(super) fronts: &'a Fronts,
    pub(super) cache: &'a Cache,
    pub(super) reclaim: &'a Reclaim,
}

impl CallPath<'_> {
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
        let s = self.s;
        // Whether the caller could allocate: asked before the raw lock makes
        // the answer "no" (only the Preemptible policy asks).
        // A real-time thread never allocates (nor takes the zone lock).
        let may_alloc = s.config.policy == Policy::Preemptible
            && s.domain.preemptible()
            && !context::is_realtime();
        // Not from inside this thread's own `swap_front` (a report handler
        // that retires objects): its front is mid-swap there.
        if self.fronts.enabled()
            && matches!(ctx, ContextKind::Task | ContextKind::Softirq)
            && !front::in_swap()
        {
            let ci = usize::from(ctx == ContextKind::Softirq);
            let front = match self.fronts.current() {
                Some(f) => Some(f),
                // A real-time thread never allocates a front here: without
                // one made ahead, it takes the per-CPU path.
                None if context::is_realtime() => None,
                // Making a front allocates and takes a sleeping lock: only
                // where sleeping is allowed. Elsewhere (softirq, atomic, irqs
                // off, an RCU reader) a thread without one takes the
                // per-CPU path; `Krcu::register_thread` makes it ahead.
                None if may_make_front(ctx) => self.fronts.register(),
                None => None,
            };
            if let Some(f) = front {
                let done = match f.try_push(chan, obj, &s.rcu, ci) {
                    front::Push::Done => true,
                    front::Push::Swap => {
                        let done = self.swap_front(f, chan, obj, ci, ctx);
                        // A new block (published by the swap): the doorbell.
                        self.monitor.note_work(ctx);
                        done
                    }
                    front::Push::OtherChannel | front::Push::Stolen => false,
                };
                if done {
                    return;
                }
            }
        }
        let mut locked = match s.try_lock_any() {
            Ok(l) => l,
            Err(cpu) => {
                cpu.count_lock_busy();
                // SAFETY: forwarded from the caller.
                unsafe { cpu.push_list(head, func, chan.obj_size) };
                self.monitor.note_work(ctx);
                return;
            }
        };
        locked.krc.count_call(ctx);
        // Taken with the lock held (see the module doc of `engine.rs`).
        let snap = s.rcu.get_state();
        if locked.krc.add(chan, obj, snap) {
            let cpu = locked.cpu;
            drop(locked);
            self.maybe_assist(cpu, ctx);
            return;
        }
        if let Some(page) = self.cache.block_for(s, &mut locked) {
            // SAFETY: the page is a fresh 4 KiB page of our arena.
            unsafe { locked.krc.install(chan, page) };
            let added = locked.krc.add(chan, obj, snap);
            debug_assert!(added);
            let cpu = locked.cpu;
            drop(locked);
            // A new block, published by the unlock: the doorbell.
            self.monitor.note_work(ctx);
            self.maybe_assist(cpu, ctx);
            return;
        }
        if may_alloc {
            // Option 4 of the 2020 kfree_rcu thread: drop the lock, allocate
            // as the preemptible caller, take a lock again.
            drop(locked);
            if let Some(l) = self.alloc_unlocked(Gfp::NOWAIT | Gfp::NOWARN) {
                locked = l.0;
                // SAFETY: a fresh page from our arena.
                unsafe { locked.krc.install(chan, l.1) };
                // A fresh cookie: the allocation ran unlocked, and another
                // call may have queued a newer object meanwhile.
                let snap = s.rcu.get_state();
                let added = locked.krc.add(chan, obj, snap);
                debug_assert!(added);
                drop(locked);
                self.monitor.note_work(ctx);
                return;
            }
            let (_, cpu) = s.cpus.current();
            // SAFETY: forwarded from the caller.
            unsafe { cpu.push_list(head, func, chan.obj_size) };
            self.monitor.note_work(ctx);
            return;
        }
        locked.krc.counters.list_fallback += 1;
        let cpu = locked.cpu;
        drop(locked);
        // SAFETY: forwarded from the caller.
        unsafe { cpu.push_list(head, func, chan.obj_size) };
        self.monitor.note_work(ctx);
    }

    /// The front block is full or missing: under a `krc` trylock, hand the
    /// old block over as a full one and start a new one with `obj`. False
    /// when no lock or no block can be had (the caller takes the per-CPU
    /// path).
    #[cold]
    fn swap_front(
        &self,
        f: &Front,
        chan: &Channel,
        obj: *mut u8,
        ci: usize,
        ctx: ContextKind,
    ) -> bool {
        let s = self.s;
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
        let Ok(mut locked) = s.try_lock_any() else {
            return false;
        };
        // With the lock held and inside the owner's section: both blocks
        // this may go into are ours.
        let snap = s.rcu.get_state();
        let old = f.block.swap(core::ptr::null_mut(), Relaxed);
        if let Some(old) = NonNull::new(old) {
            let (objs, bytes) = (f.objs.swap(0, Relaxed), f.bytes.swap(0, Relaxed));
            // SAFETY: the block was this thread's (inside its section).
            unsafe { locked.krc.adopt(old, objs, bytes) };
        }
        let page = self.cache.block_for(s, &mut locked);
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

    /// Allocates a page with `gfp` holding no lock, then trylocks a `krc`
    /// to put it in. Frees the page if no lock can be had.
    fn alloc_unlocked(&self, gfp: Gfp) -> Option<(Locked<'_>, NonNull<u8>)> {
        let s = self.s;
        let page = match s.pages.alloc_page(gfp) {
            Ok(p) => p.addr(),
            Err(_) => return None,
        };
        match s.try_lock_any() {
            Ok(mut l) => {
                l.krc.counters.inline_alloc += 1;
                Some((l, page))
            }
            Err(_) => {
                // SAFETY: the order-0 page just allocated above, never
                // shared: ours to free.
                unsafe { s.pages.free_pages(page, 0) };
                s.counters.inline_allocs_returned.fetch_add(1, Relaxed);
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
        let s = self.s;
        {
            let (_, cpu) = s.cpus.current();
            let mut l = Locked {
                cpu,
                krc: cpu.krc.lock(),
            };
            l.krc.count_call(ctx);
            // Taken with the lock held (see the module doc of `engine.rs`).
            let snap = s.rcu.get_state();
            if l.krc.add(chan, obj, snap) {
                return true;
            }
            if let Some(page) = self.cache.block_for(s, &mut l) {
                // SAFETY: a fresh page from our arena.
                unsafe { l.krc.install(chan, page) };
                l.krc.add(chan, obj, snap);
                drop(l);
                self.monitor.note_work(ctx);
                return true;
            }
        }
        // No block: allocate one outside the lock, sleeping if need be.
        let Some(page) = self.cache.alloc_sleeping(s) else {
            return false;
        };
        let (_, cpu) = s.cpus.current();
        let mut krc = cpu.krc.lock();
        krc.counters.sleeping_alloc += 1;
        // A fresh cookie, with the lock held: the allocation may have slept
        // (direct reclaim), and the block it joins may hold newer objects.
        let snap = s.rcu.get_state();
        if krc.add(chan, obj, snap) {
            // Another call installed a block meanwhile: keep ours spare.
            // SAFETY: a fresh page of our arena, owned by us.
            unsafe { krc.cache.push(page.cast::<Block>()) };
        } else {
            // SAFETY: a fresh page from our arena.
            unsafe { krc.install(chan, page) };
            krc.add(chan, obj, snap);
        }
        drop(krc);
        self.monitor.note_work(ctx);
        true
    }

    /// The flood brake: a task-context caller that may run destructors (not
    /// atomic, irqs on, not real-time, outside any RCU read-side section: a
    /// destructor may wait for a grace period or sleep) frees one ready
    /// block of its CPU when the CPU is behind (or always, by
    /// configuration), so that pending memory stays bounded however little
    /// CPU the reclaimers get.
    #[inline]
    fn maybe_assist(&self, cpu: &KrcCpu, ctx: ContextKind) {
        if context::is_realtime() {
            return;
        }
        let config = &self.s.config;
        let above = match config.assist {
            Assist::Never => return,
            Assist::WhenBehind => config.assist_above,
            Assist::Always => 0,
        };
        if cpu.ready.waiting_blocks() > above
            && ctx == ContextKind::Task
            && !context::in_atomic()
            && !context::irqs_disabled()
            && context::rcu_read_depth() == 0
        {
            self.reclaim.assist(self.s, cpu);
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
