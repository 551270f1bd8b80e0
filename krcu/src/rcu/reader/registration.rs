//! Registering the calling thread with an instance: finding (or taking)
//! its slot through the one-entry cache and its registration list, a
//! handle's drop, and the forking thread's slots in the child of a `fork`.
//!
//! Uses the registry, the slot cache, and the thread's registration and
//! late lists (`exit.rs`).

use super::super::handshake;
use super::cache::{CACHE, forget_cached};
use super::exit::{LIST, LIST_LIVE, Registration, with_late_list, with_registrations};
use super::registry::Readers;
use super::slot::{Slot, thread_key};
use crate::sync::atomic::Ordering;
use std::sync::Arc;

impl Readers {
    /// The calling thread's slot, registering it on first use.
    #[inline]
    pub(crate) fn current_slot(self: &Arc<Self>) -> &Slot {
        if let Some(slot) = CACHE.with(|c| c.get(self.id)) {
            // SAFETY: the cache held this instance's id and this slot
            // together (see `Cache`), so it is the thread's slot in the
            // live instance with this id (ids are never reused, and `self`
            // keeps the slots alive); the entry is cleared before the
            // thread gives the slot up.
            return unsafe { &*slot };
        }
        self.current_slot_slow()
    }

    #[cold]
    pub(super) fn current_slot_slow(self: &Arc<Self>) -> &Slot {
        let (i, _) = self.register_current(0);
        let slot: *const Slot = self.slot(i);
        let _ = CACHE.try_with(|c| c.set(self.id, slot));
        self.slot(i)
    }

    /// Finds or makes the calling thread's registration; adds `handles`
    /// to its slot's handle count. Returns the slot index and tenure.
    pub(super) fn register_current(self: &Arc<Self>, handles: usize) -> (usize, u64) {
        let found = with_registrations(|regs| {
            let mut regs = regs.borrow_mut();
            if let Some(r) = regs.iter().find(|r| r.id == self.id) {
                return (r.index, r.tenure);
            }
            // A first registration in this list: arm the late list first,
            // so that its destructor, which runs after every thread-local
            // destructor, is the backstop that frees what this list still
            // holds if the list's own destructor never runs (a list first
            // used after the thread-local destructors ran, from another
            // library's `pthread` key destructor: see the module doc).
            // Cheap after the first time (one `pthread_getspecific`).
            let _ = with_late_list(true, |_| ());
            LIST.set(LIST_LIVE);
            let (index, tenure) = self.acquire_slot();
            regs.push(Registration {
                id: self.id,
                readers: Arc::downgrade(self),
                index,
                tenure,
            });
            (index, tenure)
        });
        let (index, tenure) = found.unwrap_or_else(|()| {
            // The thread is exiting and its registration list is gone: the
            // late list holds its slot (or gets a new one), and frees it
            // when the thread ends.
            with_late_list(true, |late| {
                if let Some(r) = late.iter().find(|r| r.id == self.id) {
                    return (r.index, r.tenure);
                }
                let (index, tenure) = self.acquire_slot();
                late.push(Registration {
                    id: self.id,
                    readers: Arc::downgrade(self),
                    index,
                    tenure,
                });
                (index, tenure)
            })
            .unwrap_or_else(|| {
                // No late list (no thread-specific key): the slot stays
                // taken for good.
                tracing::warn!("krcu: RCU reader registered during thread teardown leaks its slot");
                self.acquire_slot()
            })
        });
        self.slot(index)
            .handles
            .fetch_add(handles, Ordering::Relaxed);
        (index, tenure)
    }

    /// Whether the calling thread is inside a read-side section of this
    /// instance (never registers, never allocates).
    pub(crate) fn current_thread_reading(&self) -> bool {
        if let Ok(Some(slot)) = CACHE.try_with(|c| c.get(self.id)) {
            // SAFETY: as in `current_slot`.
            return handshake::active(unsafe { &*slot }.ctr.load(Ordering::Relaxed));
        }
        let active = |r: &Registration| {
            r.id == self.id && handshake::active(self.slot(r.index).ctr.load(Ordering::Relaxed))
        };
        with_registrations(|regs| regs.try_borrow().is_ok_and(|regs| regs.iter().any(active)))
            .unwrap_or_else(|()| {
                with_late_list(false, |late| late.iter().any(active)).unwrap_or(false)
            })
    }

    /// In the child of a `fork`: every slot but the calling thread's belongs
    /// to a thread that does not exist here. Their sections are closed and
    /// their slots freed, with their handle counts and orphan marks reset
    /// (each counted out once), so that they hold up no grace period and
    /// their next owners start clean (liburcu's `urcu_bp` prunes dead
    /// readers after fork the same way).
    ///
    /// The calling thread's slot is told by its registration, or, when that
    /// is out of reach (a `fork` from a signal handler that interrupted
    /// `register_current` or `drop_handle` finds the registration list
    /// borrowed, or a handle's slot no list holds any more), by the slot's
    /// owner key ([`thread_key`]), which the child's only thread inherits
    /// unchanged and which no other thread of the parent, live or dead,
    /// ever had.
    ///
    /// Orphans are freed here too unless the forking thread owns them:
    /// their tids are the parent's, so the reaper's `ESRCH` test
    /// ([`Readers::reap_locked`]) means nothing for them in the child; the
    /// forking thread's kept slots take its tid in the child.
    pub(crate) fn forget_other_threads(&self) {
        let find = |regs: &[Registration]| regs.iter().find(|r| r.id == self.id).map(|r| r.index);
        let mine = with_registrations(|regs| regs.try_borrow().ok().and_then(|regs| find(&regs)))
            .unwrap_or_else(|()| with_late_list(false, |late| find(late)).flatten());
        let my_key = thread_key();
        // SAFETY: gettid has no preconditions.
        let my_tid = unsafe { libc::gettid() };
        let mut free = self.lock_free();
        let n = self.len();
        let mut is_free = vec![false; n];
        for &i in free.iter() {
            is_free[i] = true;
        }
        for (i, was_free) in is_free.into_iter().enumerate() {
            let slot = self.slot(i);
            if was_free {
                continue;
            }
            if Some(i) == mine || slot.owner_key.load(Ordering::Relaxed) == my_key {
                // The forking thread's, kept: it has a new tid here. An
                // orphan of it must not look gone to the reaper (the
                // parent's tid names no thread of the child).
                slot.tid.store(my_tid, Ordering::Relaxed);
                if let Ok(mut owner) = slot.owner.try_lock()
                    && let Some(o) = owner.as_mut()
                {
                    o.tid = my_tid;
                }
                continue;
            }
            // Another thread's (an orphan included: its tid is the
            // parent's, and whether it names a thread of the child says
            // nothing, so it is taken as gone, as it is).
            // Release: the slot's next owner (or a grace period's Acquire
            // scan) sees it closed.
            slot.ctr.store(0, Ordering::Release);
            // The owner lock is taken only briefly, never by a worker; a
            // thread that died holding it leaves a stale name, nothing else.
            if let Ok(mut owner) = slot.owner.try_lock() {
                *owner = None;
            }
            // Its handles were the dead thread's.
            slot.handles.store(0, Ordering::Relaxed);
            slot.owner_key.store(0, Ordering::Relaxed);
            slot.tid.store(0, Ordering::Relaxed);
            // Its tenure ends (even: free), so that no registration of the
            // dead thread could release it again.
            if slot.tenure.load(Ordering::Relaxed) & 1 == 1 {
                slot.tenure.fetch_add(1, Ordering::Relaxed);
            }
            // An orphan or abandoned slot was counted out already (under
            // `free`, which the fork held, so the marks and counts agree).
            self.count_out_and_free(&mut free, i);
        }
    }

    /// The drop of a handle on slot `index`, taken in `tenure`.
    pub(super) fn drop_handle(self: &Arc<Self>, index: usize, tenure: u64) {
        let slot = self.slot(index);
        let before = slot.handles.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "reader handle count underflow");
        if before > 1 {
            // Another handle of this thread still holds the slot.
            return;
        }
        // The handle's own registration: same instance, slot and tenure
        // (never another registration of the instance).
        let mine = |r: &Registration| r.id == self.id && r.index == index && r.tenure == tenure;
        let listed = with_registrations(|regs| {
            let mut regs = regs.borrow_mut();
            let Some(pos) = regs.iter().position(mine) else {
                return false;
            };
            if !handshake::active(slot.ctr.load(Ordering::Relaxed)) {
                regs.swap_remove(pos);
                forget_cached(self.id);
                self.release_slot(index, tenure);
            }
            true
        });
        if listed != Ok(true) {
            // The thread is exiting; its registration list is gone, and
            // the late list has this slot (the list's destructor moved it
            // there, or it was taken during teardown). The cache may point
            // at it: forget it first, so that a later `read_lock` of this
            // thread finds the slot through the late list, or a new one,
            // and never a slot on the free list.
            forget_cached(self.id);
            if handshake::active(slot.ctr.load(Ordering::Relaxed)) {
                // Inside a section (opened through `Rcu::read_lock`): the
                // late list's destructor frees it.
                let kept = with_late_list(true, |late| {
                    if !late.iter().any(mine) {
                        late.push(Registration {
                            id: self.id,
                            readers: Arc::downgrade(self),
                            index,
                            tenure,
                        });
                    }
                });
                // Open and no longer held: an orphan, as the registration
                // list's destructor makes one (kept taken for good if
                // there is no late list).
                self.orphan_slot(index, tenure);
                if kept.is_none() {
                    tracing::warn!("krcu: no thread-specific key for an RCU orphan slot; it leaks");
                }
                return;
            }
            let _ = with_late_list(false, |late| late.retain(|r| !mine(r)));
            self.release_slot(index, tenure);
        }
    }
}
