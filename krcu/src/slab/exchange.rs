//! Sheaf exchanges (`__pcs_replace_empty_main`, `__pcs_replace_full_main`,
//! `barn_replace_empty_sheaf`, `refill_sheaf`, `sheaf_flush_unused`): what
//! happens when the sheaf an allocation pops from is empty or the one a
//! free pushes onto is full. Whoever calls owns that sheaf privately (a
//! thread took it out of its slot, or a CPU path out of its CPU's `main`)
//! and gets back one to go on with:
//!
//! - for an allocation ([`CacheCore::get_filled`]): this CPU's `main` or
//!   `spare` if it has objects (swapped under the CPU's lock), else a full
//!   sheaf from the barn for the empty one, else the sheaf refilled from
//!   the slabs in bulk;
//! - for a free ([`CacheCore::get_room`]): this CPU's `main` or `spare` if
//!   it has room, else an empty sheaf from the barn for the full one, else
//!   the sheaf flushed to the slabs in bulk.
//!
//! Lock order: a CPU's sheaf lock, then the barn's, then the node lock;
//! none is held across a refill (which may sleep for a new slab). In a
//! signal handler (and with `NO_LOCKS`) every lock is only trylocked, and
//! under PREEMPT_RT there not even that.
//!
//! Uses the cache's core (`cache.rs`), sheaves and the barn (`sheaf.rs`),
//! the slab lists (`node.rs`).

use super::cache::{CacheCore, Mode, never_block};
use super::sheaf::{self, BarnLists, CpuSheaves, Sheaf};
use crate::lock::SpinLockGuard;
use crate::page::{AllocError, Gfp};
use crate::sync::atomic::Ordering::*;
use core::ptr;

/// The mode a path with these flags runs in.
#[inline]
pub(super) fn mode_for(gfp: Gfp) -> Mode {
    if gfp.contains(Gfp::NO_LOCKS) || never_block() {
        Mode::Try
    } else {
        Mode::Block
    }
}

impl CacheCore {
    /// This CPU's sheaves: locked, or in [`Mode::Try`] trylocked (and
    /// under PREEMPT_RT in a signal handler not touched at all).
    pub(super) fn lock_cpu(&self, mode: Mode) -> Option<SpinLockGuard<'_, CpuSheaves>> {
        let (_, cpu) = self.cpu.current();
        match mode {
            Mode::Block => Some(cpu.lock()),
            Mode::Try if self.pages.sleeping_locks_forbidden() => None,
            Mode::Try => {
                let g = cpu.try_lock();
                if g.is_none() {
                    self.counters.trylock_failures.fetch_add(1, Relaxed);
                }
                g
            }
        }
    }

    /// The barn, as [`lock_cpu`](Self::lock_cpu) takes a CPU's sheaves.
    pub(super) fn lock_barn(&self, mode: Mode) -> Option<SpinLockGuard<'_, BarnLists>> {
        match mode {
            Mode::Block => Some(self.barn.lists.lock()),
            Mode::Try if self.pages.sleeping_locks_forbidden() => None,
            Mode::Try => {
                let g = self.barn.lists.try_lock();
                if g.is_none() {
                    self.counters.trylock_failures.fetch_add(1, Relaxed);
                }
                g
            }
        }
    }

    /// Gives the sheaf `s` (empty, or null for none) and gets one with at
    /// least one object (see the module doc). On failure (no memory for a
    /// refill, or a lock a `Try` path could not take) the sheaf the caller
    /// should keep is returned with the error.
    pub(super) fn get_filled(
        &self,
        mut s: *mut Sheaf,
        gfp: Gfp,
    ) -> Result<*mut Sheaf, (AllocError, *mut Sheaf)> {
        // A sheaf that has objects serves as it is. (A caller whose fast
        // path failed only because a taker held its slot's gate finds its
        // sheaf back here with objects in it: filed on the barn's empty
        // list, its free objects would be retired with the next `rcu_free`
        // sheaf filled in it, and dropped again.)
        if sheaf::len(s) > 0 {
            return Ok(s);
        }
        let mode = mode_for(gfp);
        if let Some(mut cs) = self.lock_cpu(mode) {
            let cs = &mut *cs;
            for slot in [&mut cs.main, &mut cs.spare] {
                if sheaf::len(*slot) > 0 {
                    core::mem::swap(&mut s, slot);
                    return Ok(s);
                }
            }
        }
        let mut spare_empty = ptr::null_mut();
        if let Some(mut barn) = self.lock_barn(mode) {
            if let Some(full) = barn.take_full() {
                self.counters.barn_gets.fetch_add(1, Relaxed);
                if !s.is_null() {
                    match barn.put_empty(s, self.barn.limit) {
                        Ok(()) => self.counters.barn_puts.fetch_add(1, Relaxed),
                        Err(e) => {
                            spare_empty = e;
                            0
                        }
                    };
                }
                drop(barn);
                self.dispose_empty(spare_empty, mode);
                return Ok(full);
            }
            if s.is_null() {
                s = barn.take_empty().unwrap_or(ptr::null_mut());
            }
        }
        if s.is_null() {
            if mode == Mode::Try {
                // No allocation of the sheaf's memory in a signal handler
                // or with `NO_LOCKS` (the global allocator takes locks):
                // the caller takes one object from the slabs instead.
                return Err((AllocError::Contended, s));
            }
            s = Sheaf::new_raw(self.sheaf_capacity);
        }
        match self.refill_sheaf(s, gfp) {
            Ok(_) => Ok(s),
            Err(e) => Err((e, s)),
        }
    }

    /// Gives the sheaf `s` (full, or null for none) and gets one with room
    /// for at least one object (see the module doc). Never fails: the last
    /// resort flushes `s` to the slabs (in `Try` mode objects whose node
    /// lock is busy are deferred).
    pub(super) fn get_room(&self, mut s: *mut Sheaf, mode: Mode) -> *mut Sheaf {
        // A sheaf with room serves as it is (as in `get_filled`).
        // SAFETY: the caller owns `s`.
        if !s.is_null() && !unsafe { (*s).is_full() } {
            return s;
        }
        if let Some(mut cs) = self.lock_cpu(mode) {
            let cs = &mut *cs;
            for slot in [&mut cs.main, &mut cs.spare] {
                // SAFETY: sheaves at the CPU are ours under its lock.
                if !slot.is_null() && !unsafe { (**slot).is_full() } {
                    core::mem::swap(&mut s, slot);
                    return s;
                }
            }
            // Park a full sheaf in an empty slot: the CPU's next
            // allocation (or another thread's exchange) takes it.
            for slot in [&mut cs.main, &mut cs.spare] {
                if slot.is_null() && !s.is_null() {
                    *slot = s;
                    s = ptr::null_mut();
                }
            }
        }
        if let Some(mut barn) = self.lock_barn(mode) {
            if !s.is_null() && barn.put_full(s, self.barn.limit).is_ok() {
                self.counters.barn_puts.fetch_add(1, Relaxed);
                s = ptr::null_mut();
            }
            if s.is_null()
                && let Some(e) = barn.take_empty()
            {
                self.counters.barn_gets.fetch_add(1, Relaxed);
                return e;
            }
        }
        if s.is_null() {
            if mode == Mode::Block {
                return Sheaf::new_raw(self.sheaf_capacity);
            }
            // A signal handler (or `free_nolock`) allocates nothing: the
            // CPU's full `main` gives way instead (flushed below).
            if let Some(mut cs) = self.lock_cpu(mode) {
                s = core::mem::replace(&mut cs.main, ptr::null_mut());
            }
            if s.is_null() {
                return s;
            }
        }
        self.flush_sheaf(s, mode);
        s
    }

    /// Refills `s` from the slabs up to its capacity (at least one object,
    /// allocating a slab if need be). Returns how many it took.
    pub(super) fn refill_sheaf(&self, s: *mut Sheaf, gfp: Gfp) -> Result<usize, AllocError> {
        // SAFETY: the caller owns `s`.
        let sh = unsafe { &mut *s };
        let len = sh.len;
        let n = self.take_from_slabs(&mut sh.objs[len..], gfp)?;
        sh.len = len + n;
        self.counters.refills.fetch_add(1, Relaxed);
        Ok(n)
    }

    /// Gives every object of `s` back to the slabs; `s` stays, empty.
    pub(super) fn flush_sheaf(&self, s: *mut Sheaf, mode: Mode) {
        // SAFETY: the caller owns `s`.
        let sh = unsafe { &mut *s };
        if sh.len == 0 {
            return;
        }
        let len = sh.len;
        self.return_to_slabs(&mut sh.objs[..len], mode);
        sh.len = 0;
        self.counters.flushes.fetch_add(1, Relaxed);
    }

    /// Flushes `s` and frees it (task context).
    pub(super) fn flush_and_free_sheaf(&self, s: *mut Sheaf, mode: Mode) {
        self.flush_sheaf(s, mode);
        self.dispose_empty(s, mode);
    }

    /// An empty sheaf nobody needs: to the barn if it has room (the limit
    /// is ignored in a signal handler, which must not free memory), else
    /// its memory is freed.
    pub(super) fn dispose_empty(&self, s: *mut Sheaf, mode: Mode) {
        if s.is_null() {
            return;
        }
        let in_handler = never_block();
        if let Some(mut barn) = self.lock_barn(mode) {
            let limit = if in_handler {
                usize::MAX
            } else {
                self.barn.limit
            };
            if barn.put_empty(s, limit).is_ok() {
                return;
            }
        }
        if in_handler {
            // The barn's trylock failed: the CPU's spare slot, else the
            // sheaf's memory is leaked rather than freed in a handler (a
            // few hundred bytes, counted as a trylock failure already).
            if let Some(mut cs) = self.lock_cpu(mode)
                && cs.spare.is_null()
            {
                cs.spare = s;
            }
            return;
        }
        // SAFETY: ours, empty, on no list.
        unsafe { Sheaf::free_raw(s) };
    }

    /// A sheaf with objects or room that its user cannot keep (the slot it
    /// came from was taken meanwhile): to an empty slot of this CPU, else
    /// the barn, else flushed and disposed of.
    pub(super) fn stash(&self, s: *mut Sheaf, mode: Mode) {
        if s.is_null() {
            return;
        }
        if sheaf::len(s) == 0 {
            self.dispose_empty(s, mode);
            return;
        }
        if let Some(mut cs) = self.lock_cpu(mode) {
            let cs = &mut *cs;
            for slot in [&mut cs.main, &mut cs.spare] {
                if slot.is_null() {
                    *slot = s;
                    return;
                }
            }
        }
        if let Some(mut barn) = self.lock_barn(mode)
            && barn.put_full(s, self.barn.limit).is_ok()
        {
            self.counters.barn_puts.fetch_add(1, Relaxed);
            return;
        }
        self.flush_and_free_sheaf(s, mode);
    }

    /// Flushes every sheaf of the barn to the slabs and frees the sheaves'
    /// memory. Returns the objects moved.
    pub(super) fn barn_shrink(&self) -> usize {
        let (mut full, mut empty) = (Vec::new(), Vec::new());
        {
            let mut b = self.barn.lists.lock();
            while let Some(s) = b.take_full() {
                full.push(s);
            }
            while let Some(s) = b.take_empty() {
                empty.push(s);
            }
        }
        let mut moved = 0;
        for s in full.into_iter().chain(empty) {
            moved += sheaf::len(s);
            self.flush_sheaf(s, Mode::Block);
            // SAFETY: taken off the barn: ours, now empty.
            unsafe { Sheaf::free_raw(s) };
        }
        moved
    }
}
