//! The registry of an instance's reader slots ([`Readers`]): chunks of
//! slots never freed while the instance lives, the free list, taking and
//! releasing a slot in its tenure, orphans and abandoned sections.
//!
//! Uses the slots (`slot.rs`); the registration of the calling thread
//! (`registration.rs`) and its end (`exit.rs`) use it.

use super::super::handshake;
use super::slot::{CHUNK, MAX_CHUNKS, Slot, ThreadInfo, thread_key};
use crate::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use crossbeam_utils::CachePadded;
use std::sync::{Arc, Mutex};

type Chunk = [CachePadded<Slot>; CHUNK];

/// The reader-facing state of an instance: the grace-period counter, the
/// fence mode, and the slots.
pub(crate) struct Readers {
    /// The instance's unique id (never reused).
    pub(crate) id: u64,
    /// The grace-period counter and phase ([`handshake`]).
    pub(crate) gp_ctr: CachePadded<AtomicUsize>,
    /// True when readers use full fences (no membarrier, or forced).
    pub(crate) full_fence: bool,
    pub(super) chunks: Box<[AtomicPtr<Chunk>]>,
    pub(super) len: AtomicUsize,
    /// Free slot indices; also serialises growth, and every change of a
    /// slot's ownership (so that a `fork` sees none half made).
    pub(super) free: Mutex<Vec<usize>>,
    /// Slots taken and not orphaned (registered threads).
    pub(super) in_use: AtomicUsize,
    /// Orphans (taken, not counted in `in_use`): while nonzero, grace
    /// periods look for orphans whose thread is gone
    /// ([`Readers::reap_orphans`]). Changed only under `free`; read
    /// Relaxed outside it as a hint (a stale zero only puts the reaping
    /// off to a later look).
    pub(super) orphans: AtomicUsize,
    /// Abandoned slots (see [`Slot::abandoned`]). Changed only under `free`.
    pub(super) abandoned: AtomicUsize,
    /// Set when the instance is torn down ([`Readers::begin_teardown`]):
    /// from then on a gone thread's open section is ended, not abandoned.
    /// Set before, and read under, the `free` mutex, which orders it.
    pub(super) torn_down: AtomicBool,
    /// Releases and orphanings refused because they named a tenure the
    /// slot is no longer in (a bug: see [`Slot::tenure`]).
    pub(super) refused: AtomicUsize,
}

/// What a reap did to sections of gone threads, logged once the registry
/// lock is released.
#[derive(Default)]
#[must_use = "log it (emit) once the registry lock is released"]
pub(super) struct ReapLog {
    /// Threads whose open section was abandoned.
    abandoned: Vec<i32>,
    /// Threads whose open section was ended (the instance is torn down).
    ended: Vec<i32>,
}

impl ReapLog {
    pub(super) fn emit(self) {
        for tid in self.abandoned {
            tracing::error!(
                "krcu: thread {tid} exited inside an RCU read-side section (a leaked \
                 guard); the section is never ended: grace periods of this instance \
                 stall until it is torn down"
            );
        }
        for tid in self.ended {
            tracing::warn!(
                "krcu: thread {tid} left an RCU read-side section open (a leaked guard); \
                 ended as its instance is torn down"
            );
        }
    }
}

impl Readers {
    pub(crate) fn new(full_fence: bool) -> Arc<Self> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Arc::new(Readers {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            gp_ctr: CachePadded::new(AtomicUsize::new(handshake::GP_CTR_INIT)),
            full_fence,
            chunks: (0..MAX_CHUNKS)
                .map(|_| AtomicPtr::new(core::ptr::null_mut()))
                .collect(),
            len: AtomicUsize::new(0),
            free: Mutex::new(Vec::new()),
            in_use: AtomicUsize::new(0),
            orphans: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
            torn_down: AtomicBool::new(false),
            refused: AtomicUsize::new(0),
        })
    }

    /// How many slots have been published (free or not).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// How many threads are registered (orphans not counted).
    pub(crate) fn registered(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Slot `i`, for `i < self.len()`.
    #[inline]
    pub(crate) fn slot(&self, i: usize) -> &Slot {
        let chunk = self.chunks[i / CHUNK].load(Ordering::Acquire);
        debug_assert!(!chunk.is_null());
        // SAFETY: `i < len`, and a chunk is published (Release) before any
        // of its slots is counted in `len` (Release, read with Acquire by
        // the caller), and freed only when the registry drops, which needs
        // `&mut self`.
        unsafe { &(*chunk)[i % CHUNK] }
    }

    pub(super) fn lock_free(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for the calling thread: its index and tenure.
    pub(super) fn acquire_slot(&self) -> (usize, u64) {
        let mut free = self.lock_free();
        let mut log = ReapLog::default();
        if free.is_empty() && self.orphans.load(Ordering::Relaxed) != 0 {
            // Before growing, free the orphans of threads that are gone.
            log = self.reap_locked(&mut free);
        }
        let i = match free.pop() {
            Some(i) => i,
            None => {
                let i = self.len.load(Ordering::Relaxed);
                assert!(
                    i < CHUNK * MAX_CHUNKS,
                    "krcu: more than {} threads registered with one RCU instance",
                    CHUNK * MAX_CHUNKS
                );
                let c = &self.chunks[i / CHUNK];
                if c.load(Ordering::Relaxed).is_null() {
                    let chunk: Box<Chunk> = Box::new(core::array::from_fn(|_| {
                        CachePadded::new(Slot {
                            ctr: AtomicUsize::new(0),
                            full_fence: self.full_fence,
                            owner: Mutex::new(None),
                            handles: AtomicUsize::new(0),
                            orphan: AtomicBool::new(false),
                            abandoned: AtomicBool::new(false),
                            owner_key: AtomicU64::new(0),
                            tenure: AtomicU64::new(0),
                            tid: AtomicI32::new(0),
                        })
                    }));
                    c.store(Box::into_raw(chunk), Ordering::Release);
                }
                self.len.store(i + 1, Ordering::Release);
                i
            }
        };
        let info = ThreadInfo::current();
        self.slot(i).tid.store(info.tid, Ordering::Relaxed);
        *self.slot(i).owner.lock().unwrap_or_else(|e| e.into_inner()) = Some(info);
        self.slot(i)
            .owner_key
            .store(thread_key(), Ordering::Relaxed);
        let tenure = self.slot(i).tenure.load(Ordering::Relaxed) + 1;
        debug_assert!(tenure & 1 == 1, "krcu: a free RCU reader slot was taken");
        self.slot(i).tenure.store(tenure, Ordering::Relaxed);
        self.in_use.fetch_add(1, Ordering::Relaxed);
        drop(free);
        log.emit();
        (i, tenure)
    }

    /// Whether slot `i` is taken, in `tenure` (under `free`).
    pub(super) fn in_tenure(&self, i: usize, tenure: u64) -> bool {
        tenure & 1 == 1 && self.slot(i).tenure.load(Ordering::Relaxed) == tenure
    }

    /// A release or orphaning of slot `i` in a tenure it is no longer in:
    /// refused (see [`Slot::tenure`]), counted, and a failed assertion in
    /// debug builds. Called with `free` unlocked.
    #[cold]
    pub(super) fn refuse(&self, i: usize, tenure: u64) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            "krcu: refused to release RCU reader slot {i} of a past tenure ({tenure}); \
             a slot is never released twice"
        );
        debug_assert!(false, "krcu: RCU reader slot {i} released twice");
    }

    /// How many releases were refused (see [`Readers::refuse`]).
    #[cfg(test)]
    pub(crate) fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Returns the calling thread's slot `i`, closed, to the free list.
    ///
    /// Only the slot's owning thread calls this (or the surviving thread
    /// of a `fork`), and only with the section closed, so no guard of the
    /// owner can touch the slot after its next owner takes it: every guard
    /// of the owner has been dropped (a slot left open by a thread is
    /// freed only once that thread is gone: [`Readers::reap_locked`]).
    ///
    /// `tenure` is the tenure the caller took the slot in: a release in
    /// another is refused (see [`Slot::tenure`]).
    pub(super) fn release_slot(&self, i: usize, tenure: u64) {
        let free = self.lock_free();
        if !self.in_tenure(i, tenure) {
            drop(free);
            return self.refuse(i, tenure);
        }
        self.release_locked(free, i);
    }

    /// The end of a release, `free` held and the tenure checked.
    pub(super) fn release_locked(&self, mut free: std::sync::MutexGuard<'_, Vec<usize>>, i: usize) {
        self.release_in(&mut free, i);
    }

    /// [`Readers::release_locked`] on the locked free list.
    pub(super) fn release_in(&self, free: &mut Vec<usize>, i: usize) {
        let slot = self.slot(i);
        debug_assert!(!handshake::active(slot.ctr.load(Ordering::Relaxed)));
        slot.tenure.fetch_add(1, Ordering::Relaxed);
        *slot.owner.lock().unwrap_or_else(|e| e.into_inner()) = None;
        slot.owner_key.store(0, Ordering::Relaxed);
        slot.tid.store(0, Ordering::Relaxed);
        self.count_out_and_free(free, i);
    }

    /// Counts the slot `i` out of the group it was counted in (abandoned,
    /// orphans, or else in use), clearing its mark, and puts it on the
    /// locked free list `free`.
    pub(super) fn count_out_and_free(&self, free: &mut Vec<usize>, i: usize) {
        let slot = self.slot(i);
        if slot.abandoned.swap(false, Ordering::Relaxed) {
            self.abandoned.fetch_sub(1, Ordering::Relaxed);
        } else if slot.orphan.swap(false, Ordering::Relaxed) {
            self.orphans.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.in_use.fetch_sub(1, Ordering::Relaxed);
        }
        free.push(i);
    }

    /// Marks the taken slot `i` an orphan (`free` held): counted out of
    /// `in_use`, into `orphans`, once.
    pub(super) fn mark_orphan(&self, i: usize) {
        if !self.slot(i).orphan.swap(true, Ordering::Relaxed) {
            self.in_use.fetch_sub(1, Ordering::Relaxed);
            self.orphans.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether any slot is an orphan (a Relaxed hint: see
    /// [`Readers::orphans`]). One load: the grace period's fast path
    /// pays nothing more while there is none.
    #[inline]
    pub(crate) fn has_orphans(&self) -> bool {
        self.orphans.load(Ordering::Relaxed) != 0
    }

    /// Frees the orphans whose thread is gone (the cold path of a grace
    /// period that finds orphans, and of a registration that would
    /// otherwise grow the registry): see [`Readers::reap_locked`].
    #[cold]
    pub(crate) fn reap_orphans(&self) {
        let mut free = self.lock_free();
        let log = self.reap_locked(&mut free);
        drop(free);
        log.emit();
    }

    /// With `free` held: each orphan whose owning thread no longer exists
    /// (`tgkill(getpid(), tid, 0)` fails with `ESRCH`) can never change its
    /// section again: no code of that thread runs any more. A closed one is
    /// freed, in the tenure it is in (read under `free`, as every change of
    /// it is made). An open one is **abandoned**, never ended: it was left
    /// by a leaked guard, and references loaded under a leaked guard of a
    /// `'static` instance may live on in other threads (see the module
    /// doc). Grace periods stall on it until the instance is torn down
    /// ([`Readers::begin_teardown`]); an error says so, once per slot.
    /// What it did is returned, to be logged once `free` is released (a
    /// `tracing` subscriber may read under RCU, and a thread's first read
    /// takes `free`).
    ///
    /// The check never frees early: `ESRCH` means no thread of this
    /// process has the tid, so the owner (which had it, in this process:
    /// the child of a `fork` renames the forking thread's orphans and
    /// frees the others, see [`Readers::forget_other_threads`]) has exited.
    /// If the kernel gave the tid to a new thread of the process since,
    /// the check keeps succeeding while that thread lives: the orphan is
    /// reaped late, never early.
    ///
    /// Once the instance is torn down ([`Readers::begin_teardown`]) an open
    /// section of a gone thread is ended instead: nothing borrows the
    /// instance any more.
    ///
    /// Ordering: the dead thread's last `read_unlock` (a Release store of
    /// its word) happened before its exit, which the kernel orders before
    /// the `ESRCH` that the tid lookup (under its own locks and RCU)
    /// returns here; the Acquire load below pairs with that store anyway,
    /// so it sees the section closed if it was.
    pub(super) fn reap_locked(&self, free: &mut Vec<usize>) -> ReapLog {
        let mut log = ReapLog::default();
        if self.orphans.load(Ordering::Relaxed) == 0 {
            return log;
        }
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        for i in 0..self.len() {
            let slot = self.slot(i);
            if !slot.orphan.load(Ordering::Relaxed) {
                continue;
            }
            let tenure = slot.tenure.load(Ordering::Relaxed);
            let tid = slot.tid.load(Ordering::Relaxed);
            if !self.in_tenure(i, tenure) || tid == 0 {
                continue;
            }
            // SAFETY: signal 0 sends nothing: the call only checks that a
            // thread `tid` exists in this process. No pointers.
            let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) };
            if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
                // Alive (or a tid now another thread's: see above), or
                // not known to be gone.
                continue;
            }
            let open = handshake::active(slot.ctr.load(Ordering::Acquire));
            if open && self.torn_down.load(Ordering::Relaxed) {
                // Release: publishes the end as `read_unlock` would.
                slot.ctr.store(0, Ordering::Release);
                self.release_in(free, i);
                log.ended.push(tid);
            } else if open {
                slot.orphan.store(false, Ordering::Relaxed);
                self.orphans.fetch_sub(1, Ordering::Relaxed);
                slot.abandoned.store(true, Ordering::Relaxed);
                self.abandoned.fetch_add(1, Ordering::Relaxed);
                log.abandoned.push(tid);
            } else {
                self.release_in(free, i);
            }
        }
        log
    }

    /// How many sections were abandoned (see [`Readers::reap_locked`]).
    pub(crate) fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// The instance is being torn down: ends every section still open, so
    /// that the grace periods the teardown still runs (the kvfree barrier,
    /// the worker finishing its queue) do not stall on them, and from now
    /// on ends (rather than abandons) the open section of any thread found
    /// gone. Abandoned slots are freed; the slots of live threads (a guard
    /// they leaked with `mem::forget`) and of gone threads whose slot a
    /// leaked handle kept out of the orphan list only have their section
    /// ended, and are released as usual (or with the registry).
    ///
    /// Sound only at teardown: no borrow of the instance is left, hence no
    /// guard and no reference loaded under one (guards and handles borrow
    /// their instance, cells hold it, and an instance borrowed for
    /// `'static` is never torn down), so every section still open was
    /// leaked. The Release stores publish each end as `read_unlock` would.
    pub(crate) fn begin_teardown(&self) {
        self.torn_down.store(true, Ordering::Relaxed);
        let mut free = self.lock_free();
        let mut log = self.reap_locked(&mut free);
        for i in 0..self.len() {
            let slot = self.slot(i);
            if slot.abandoned.load(Ordering::Relaxed) {
                slot.ctr.store(0, Ordering::Release);
                self.release_in(&mut free, i);
            } else if handshake::active(slot.ctr.load(Ordering::Relaxed)) {
                slot.ctr.store(0, Ordering::Release);
                log.ended.push(slot.tid.load(Ordering::Relaxed));
            }
        }
        drop(free);
        log.emit();
    }

    /// Makes the calling thread's open slot `i` an orphan: no longer
    /// counted as a registered thread, but still waited for and still
    /// named in stall warnings, until its thread frees it or is gone
    /// ([`Readers::reap_locked`]). `tenure` as for
    /// [`Readers::release_slot`].
    pub(super) fn orphan_slot(&self, i: usize, tenure: u64) {
        let free = self.lock_free();
        if !self.in_tenure(i, tenure) {
            drop(free);
            return self.refuse(i, tenure);
        }
        self.mark_orphan(i);
    }

    /// Whether slot `i` holds a grace period up at counter value `v`: an
    /// active reader in the other phase (orphans included: their sections
    /// may still be running).
    #[inline]
    pub(crate) fn holds_up(&self, i: usize, v: usize) -> bool {
        handshake::holds_up(self.slot(i).ctr.load(Ordering::Relaxed), v)
    }

    /// The registry lock, held across a `fork` so that no registration is
    /// half made in the child.
    pub(crate) fn lock_for_fork(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.lock_free()
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        for c in self.chunks.iter() {
            let p = c.load(Ordering::Relaxed);
            if !p.is_null() {
                // SAFETY: chunks come from Box::into_raw and are freed only
                // here, once, with no reader left (we have `&mut self`).
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}
