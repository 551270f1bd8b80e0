//! Readers: per-(thread, instance) slots, their registry, and the read-side
//! guard.
//!
//! # Slots
//! Each instance keeps a registry of cache-line-padded slots in chunks that
//! are never freed while the instance lives: the grace-period scan walks
//! them without a lock (it reads the published length with Acquire, then
//! the slots), and a thread that unregisters only returns its slot to a free
//! list for the next thread to take. A free slot reads zero, so a scan that
//! meets it skips it. A slot goes back to the free list only from its own
//! thread, with its section closed, or once its thread is gone (see
//! *Thread exit*; in the child of a `fork`, from the only thread left), so
//! a guard can never end another thread's section.
//!
//! A taken slot records its owner's key (a per-thread number, never
//! reused), so that the child of a `fork` keeps the forking
//! thread's slots even when it cannot read its registration list (a fork
//! from a signal handler that interrupted a registration).
//!
//! A slot is never released twice, by construction: each slot counts its
//! **tenures** (odd while taken, even while free, changed only under the
//! registry lock), each registration and handle records the tenure its
//! slot was taken in, and a release, an orphaning, or the late list's end
//! of a section checks under that lock that the slot is still in that
//! tenure. A second release of the same tenure (or one after the slot
//! changed hands, even back to the same thread) is refused: counted, an
//! error logged, and a failed assertion in debug builds. So a stale
//! registration can never free, or end the section of, a slot that
//! another registration (of any thread) holds.
//!
//! # Registration
//! A thread gets its slot on first use ([`Rcu::read_lock`](super::Rcu::read_lock)
//! registers it, which allocates) or ahead of time with
//! [`Rcu::register_thread`](super::Rcu::register_thread), after which
//! neither `read_lock` allocates. The thread's registrations sit in a
//! thread-local list; a one-entry thread-local cache (instance id, slot)
//! makes `Rcu::read_lock` a few loads away from the slot. A
//! [`ReaderHandle`] holds the slot directly: [`ReaderHandle::read_lock`] is
//! the fastest path. Dropping the last handle unregisters the thread from
//! that instance (unless it is inside a read-side section of it; then the
//! thread's exit does).
//!
//! # Thread exit
//! Thread-local destructors run newest first, so code of the exiting thread
//! (another thread-local's destructor) can still run, and read, after the
//! registration list's destructor. That destructor therefore frees only
//! the slots that are closed and unheld; the others move to the thread's
//! **late list**, a POSIX thread-specific value (`pthread_key_create`)
//! whose destructor glibc runs after every thread-local destructor (musl
//! runs Rust's thread-local destructors from a key destructor of their
//! own; ours, set while they run, runs after them, in the same round or
//! the next). Reads in later destructors use (or take) the thread's slot
//! through the late list too. A slot still open when the list goes is an
//! **orphan**: no longer counted in [`RcuStats::readers`](super::RcuStats),
//! but grace periods still wait for it and stall warnings still name its
//! thread: its section may still be running (a guard kept in an older
//! thread-local).
//!
//! The late list's destructor frees the slots that are closed, but never
//! ends a section still open: code of the thread may still run after it
//! (another library's `pthread` key destructors) and hold a guard (kept
//! in a Rust thread-local first used in such a destructor, which glibc
//! never destroys), so an open section there is not known to be a leaked
//! guard's. Its slot stays an orphan, still the thread's: a later drop of
//! the guard ends the section on it. Only the thread's end settles it: a
//! grace period that finds orphans (a cold path; none, and the scan costs
//! one more load) frees each one whose thread is gone
//! (`tgkill(getpid(), tid, 0)` fails with `ESRCH`) if its section is
//! closed. A section still open when its thread is gone was left by a
//! leaked guard (`mem::forget`, `Box::leak`): a `Box::leak`ed guard of a
//! `'static` instance (the process-wide one) is a `&'static ReadGuard`,
//! and references loaded under it (say from an
//! [`RcuCell`](crate::cell::RcuCell)) are `&'static` too, and may have
//! been handed to other threads. So such a section is **abandoned**, never
//! ended: grace periods of the instance stall for good (an error is
//! logged once and [`RcuStats::abandoned_sections`](super::RcuStats)
//! counts it), as a leaked guard stops crossbeam-epoch's epoch for good.
//! A stall, never an early free. Only the instance's teardown ends it:
//! dropping the instance needs every borrow of it over, so no reference
//! loaded under the guard is left. So does a registration that would
//! otherwise grow the registry reap closed orphans. A tid the kernel gave
//! to a new thread of the process only puts the reaping off until the new
//! thread is gone too. A section running in any destructor of the
//! thread is waited for. In the child of a `fork`, the orphans of other
//! threads, open or abandoned, are freed with their other slots (their
//! tids are the parent's): `fork` is an `unsafe` call, and the child must
//! not use a reference loaded under another thread's guard.
//!
//! The late list is armed at a thread's first registration, not only when
//! the registration list's destructor needs it: a thread that first reads
//! in another library's `pthread` key destructor (after glibc has run the
//! thread-local destructors) makes a registration list whose destructor
//! never runs. The late list's destructor is the backstop: if that list
//! still holds registrations (a destructor-less flag says so) it retires
//! them as the list's destructor would, and marks the list gone for good
//! first (the same flag): the list stays reachable, but from then on
//! registrations and handle drops of the thread treat it as destroyed and
//! use the late list, so nothing is registered in a list that no
//! destructor will empty, and a handle never finds another registration
//! in its place. A handle's drop looks for its own registration by
//! instance, slot and tenure, never by instance alone.
//!
//! Instance ids are never reused, so a stale cache entry can never match a
//! later instance built at the same address.

use super::handshake;
use crate::context;
use crate::lockdep;
use crate::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use core::cell::{Cell, RefCell};
use core::marker::PhantomData;
use core::sync::atomic::compiler_fence;
use crossbeam_utils::CachePadded;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Slots per chunk.
const CHUNK: usize = 64;
/// Chunks per registry: at most `CHUNK * MAX_CHUNKS` threads registered at
/// once with one instance.
const MAX_CHUNKS: usize = 1024;

/// Who holds a slot, for stall warnings.
#[derive(Debug, Clone)]
pub(crate) struct ThreadInfo {
    pub(crate) name: String,
    pub(crate) tid: i32,
}

impl ThreadInfo {
    /// The calling thread's kernel name (`comm`, which std sets to the
    /// thread's name, cut to 15 bytes: what the kernel's own stall
    /// warnings print) and id. Never through `std::thread::current()`:
    /// a thread may register in a `pthread` key destructor that runs after
    /// std tore the thread's data down, where that call aborts the process.
    fn current() -> Self {
        let mut buf = [0u8; 17];
        // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into
        // the buffer, which has 17 (zeroed, so it stays NUL-terminated).
        let r = unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let name = core::ffi::CStr::from_bytes_until_nul(&buf)
            .ok()
            .filter(|_| r == 0)
            .map(|c| c.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("<tid {tid}>"));
        ThreadInfo { name, tid }
    }
}

/// One reader slot: the handshake word and who owns it.
pub(crate) struct Slot {
    /// The reader's word ([`handshake`]): zero outside read-side sections.
    pub(crate) ctr: AtomicUsize,
    /// The instance's fence mode, copied here so that `read_unlock` finds
    /// it on the cache line it touches anyway (and the guard stays one
    /// pointer wide).
    full_fence: bool,
    /// The owning thread; `None` while the slot is free. An orphan keeps
    /// its owner, for stall warnings.
    pub(crate) owner: Mutex<Option<ThreadInfo>>,
    /// The owner's live [`ReaderHandle`]s for this slot. Here rather than
    /// in the thread's registration list so that it outlives that list:
    /// the last handle releases the slot, once. Only the owning thread
    /// touches it (handles are tied to their thread), so Relaxed is enough;
    /// a released slot (count zero) passes to its next owner through the
    /// `free` mutex.
    handles: AtomicUsize,
    /// An orphan: taken, but no longer counted in `in_use` (see the module
    /// doc). Changed only under the `free` mutex, which orders it (Relaxed).
    orphan: AtomicBool,
    /// Abandoned: the orphan's thread is gone with its section open (a
    /// leaked guard); the section is never ended while the instance lives
    /// (see the module doc). Not counted in `orphans`. Changed only under
    /// the `free` mutex (Relaxed).
    abandoned: AtomicBool,
    /// The owning thread's [`thread_key`] (0 while free): how the child of
    /// a `fork` tells the forking thread's slots even when its
    /// registration list is out of reach. Keys are never reused, so the key
    /// of a thread that exited leaving the slot taken (a leaked handle)
    /// can never be a later thread's. Changed only under the `free` mutex
    /// (Relaxed).
    owner_key: AtomicU64,
    /// The slot's tenure: odd while taken, even while free, one more at
    /// every change. Each registration (and handle) records the tenure it
    /// took the slot in, and a release or orphaning names it: one that
    /// does not match (the slot was released already, perhaps taken again
    /// since) is refused, so a slot is never released twice. Changed only
    /// under the `free` mutex, which orders it (Relaxed).
    tenure: AtomicU64,
    /// The owning thread's kernel id (0 while free): how an orphan's
    /// reaper ([`Readers::reap_orphans`]) tells that its thread is gone.
    /// Changed only under the `free` mutex (Relaxed).
    tid: AtomicI32,
}

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
    chunks: Box<[AtomicPtr<Chunk>]>,
    len: AtomicUsize,
    /// Free slot indices; also serialises growth, and every change of a
    /// slot's ownership (so that a `fork` sees none half made).
    free: Mutex<Vec<usize>>,
    /// Slots taken and not orphaned (registered threads).
    in_use: AtomicUsize,
    /// Orphans (taken, not counted in `in_use`): while nonzero, grace
    /// periods look for orphans whose thread is gone
    /// ([`Readers::reap_orphans`]). Changed only under `free`; read
    /// Relaxed outside it as a hint (a stale zero only puts the reaping
    /// off to a later look).
    orphans: AtomicUsize,
    /// Abandoned slots (see [`Slot::abandoned`]). Changed only under `free`.
    abandoned: AtomicUsize,
    /// Releases and orphanings refused because they named a tenure the
    /// slot is no longer in (a bug: see [`Slot::tenure`]).
    refused: AtomicUsize,
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

    fn lock_free(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for the calling thread: its index and tenure.
    fn acquire_slot(&self) -> (usize, u64) {
        let mut free = self.lock_free();
        if free.is_empty() && self.orphans.load(Ordering::Relaxed) != 0 {
            // Before growing, free the orphans of threads that are gone.
            self.reap_locked(&mut free);
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
        (i, tenure)
    }

    /// Whether slot `i` is taken, in `tenure` (under `free`).
    fn in_tenure(&self, i: usize, tenure: u64) -> bool {
        tenure & 1 == 1 && self.slot(i).tenure.load(Ordering::Relaxed) == tenure
    }

    /// A release or orphaning of slot `i` in a tenure it is no longer in:
    /// refused (see [`Slot::tenure`]), counted, and a failed assertion in
    /// debug builds. Called with `free` unlocked.
    #[cold]
    fn refuse(&self, i: usize, tenure: u64) {
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
    fn release_slot(&self, i: usize, tenure: u64) {
        let free = self.lock_free();
        if !self.in_tenure(i, tenure) {
            drop(free);
            return self.refuse(i, tenure);
        }
        self.release_locked(free, i);
    }

    /// The end of a release, `free` held and the tenure checked.
    fn release_locked(&self, mut free: std::sync::MutexGuard<'_, Vec<usize>>, i: usize) {
        self.release_in(&mut free, i);
    }

    /// [`Readers::release_locked`] on the locked free list.
    fn release_in(&self, free: &mut Vec<usize>, i: usize) {
        let slot = self.slot(i);
        debug_assert!(!handshake::active(slot.ctr.load(Ordering::Relaxed)));
        slot.tenure.fetch_add(1, Ordering::Relaxed);
        *slot.owner.lock().unwrap_or_else(|e| e.into_inner()) = None;
        slot.owner_key.store(0, Ordering::Relaxed);
        slot.tid.store(0, Ordering::Relaxed);
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
    fn mark_orphan(&self, i: usize) {
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
        self.reap_locked(&mut free);
    }

    /// With `free` held: each orphan whose owning thread no longer exists
    /// (`tgkill(getpid(), tid, 0)` fails with `ESRCH`) can never change its
    /// section again: no code of that thread runs any more. A closed one is
    /// freed, in the tenure it is in (read under `free`, as every change of
    /// it is made). An open one is **abandoned**, never ended: it was left
    /// by a leaked guard, and references loaded under a leaked guard of a
    /// `'static` instance may live on in other threads (see the module
    /// doc). Grace periods stall on it until the instance is torn down
    /// ([`Readers::end_abandoned`]); an error says so, once per slot.
    ///
    /// The check never frees early: `ESRCH` means no thread of this
    /// process has the tid, so the owner (which had it, in this process:
    /// the child of a `fork` renames the forking thread's orphans and
    /// frees the others, see [`Readers::forget_other_threads`]) has exited.
    /// If the kernel gave the tid to a new thread of the process since,
    /// the check keeps succeeding while that thread lives: the orphan is
    /// reaped late, never early.
    ///
    /// Ordering: the dead thread's last `read_unlock` (a Release store of
    /// its word) happened before its exit, which the kernel orders before
    /// the `ESRCH` that the tid lookup (under its own locks and RCU)
    /// returns here, so the Relaxed load below sees it closed if it was.
    fn reap_locked(&self, free: &mut Vec<usize>) {
        if self.orphans.load(Ordering::Relaxed) == 0 {
            return;
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
            if handshake::active(slot.ctr.load(Ordering::Relaxed)) {
                slot.orphan.store(false, Ordering::Relaxed);
                self.orphans.fetch_sub(1, Ordering::Relaxed);
                slot.abandoned.store(true, Ordering::Relaxed);
                self.abandoned.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "krcu: thread {tid} exited inside an RCU read-side section (a \
                     leaked guard); the section is never ended: grace periods of \
                     this instance stall until it is torn down"
                );
            } else {
                self.release_in(free, i);
            }
        }
    }

    /// How many sections were abandoned (see [`Readers::reap_locked`]).
    pub(crate) fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Ends every abandoned section and frees its slot: only at the
    /// instance's teardown, when no borrow of the instance, hence no
    /// reference loaded under one of its guards, is left (a leaked guard
    /// of an instance borrows it for as long as the guard's references
    /// live, and an instance borrowed for `'static` is never torn down).
    /// The Release store publishes the end as `read_unlock` would, for
    /// the grace periods the teardown still runs (the worker finishes its
    /// queue).
    pub(crate) fn end_abandoned(&self) {
        let mut free = self.lock_free();
        if self.abandoned.load(Ordering::Relaxed) == 0 {
            return;
        }
        for i in 0..self.len() {
            let slot = self.slot(i);
            if slot.abandoned.load(Ordering::Relaxed) {
                slot.ctr.store(0, Ordering::Release);
                self.release_in(&mut free, i);
            }
        }
    }

    /// Makes the calling thread's open slot `i` an orphan: no longer
    /// counted as a registered thread, but still waited for and still
    /// named in stall warnings, until its thread frees it or is gone
    /// ([`Readers::reap_locked`]). `tenure` as for
    /// [`Readers::release_slot`].
    fn orphan_slot(&self, i: usize, tenure: u64) {
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
    fn current_slot_slow(self: &Arc<Self>) -> &Slot {
        let (i, _) = self.register_current(0);
        let slot: *const Slot = self.slot(i);
        let _ = CACHE.try_with(|c| c.set(self.id, slot));
        self.slot(i)
    }

    /// Finds or makes the calling thread's registration; adds `handles`
    /// to its slot's handle count. Returns the slot index and tenure.
    fn register_current(self: &Arc<Self>, handles: usize) -> (usize, u64) {
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

    /// The registry lock, held across a `fork` so that no registration is
    /// half made in the child.
    pub(crate) fn lock_for_fork(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.lock_free()
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
            if slot.abandoned.swap(false, Ordering::Relaxed) {
                self.abandoned.fetch_sub(1, Ordering::Relaxed);
            } else if slot.orphan.swap(false, Ordering::Relaxed) {
                self.orphans.fetch_sub(1, Ordering::Relaxed);
            } else {
                self.in_use.fetch_sub(1, Ordering::Relaxed);
            }
            free.push(i);
        }
    }

    /// The drop of a handle on slot `index`, taken in `tenure`.
    fn drop_handle(self: &Arc<Self>, index: usize, tenure: u64) {
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

/// One registration of this thread with one instance (its live
/// [`ReaderHandle`]s are counted in the slot).
struct Registration {
    id: u64,
    readers: Weak<Readers>,
    index: usize,
    /// The slot's tenure when this registration took it.
    tenure: u64,
}

/// The thread's registrations; their destructor runs at thread exit.
struct Registrations(RefCell<Vec<Registration>>);

impl Drop for Registrations {
    fn drop(&mut self) {
        // From here on nothing looks at this list (it is being
        // destroyed): registrations go to the late list.
        LIST.set(LIST_GONE);
        retire_registrations(core::mem::take(self.0.get_mut()));
    }
}

/// The end of a thread's registration list (its destructor, or the late
/// list's if that never runs): frees the slots that are closed and unheld,
/// and moves the others to the late list.
fn retire_registrations(regs: Vec<Registration>) {
    let _ = CACHE.try_with(Cache::clear);
    for r in regs {
        let Some(readers) = r.readers.upgrade() else {
            // Without the instance there is no handle (each holds the
            // registry) and no guard (each borrows it).
            continue;
        };
        let slot = readers.slot(r.index);
        let held = slot.handles.load(Ordering::Relaxed) != 0;
        let open = handshake::active(slot.ctr.load(Ordering::Relaxed));
        if !held && !open {
            readers.release_slot(r.index, r.tenure);
            continue;
        }
        // Still held by a handle, or inside a section, in a
        // thread-local destroyed later: the late list keeps it (a
        // handle's last drop, or the list's destructor, frees it; one
        // still open then is freed once the thread is gone).
        if open && !held {
            tracing::debug!(
                "krcu: a thread's RCU registration list went with a read-side \
                 section open; grace periods wait for it until it ends"
            );
            readers.orphan_slot(r.index, r.tenure);
        }
        let index = r.index;
        if with_late_list(true, |late| late.push(r)).is_none() && !held {
            // No late list: the orphan stays taken for good (still
            // waited for while its section is open).
            tracing::warn!("krcu: no thread-specific key for an RCU orphan slot {index}; it leaks");
        }
    }
}

impl core::ops::Deref for Registrations {
    type Target = RefCell<Vec<Registration>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// The late list: a thread's registrations after its registration list is
/// gone, as a `pthread` thread-specific value whose destructor
/// ([`late_list_destructor`]) runs after the thread's Rust thread-local
/// destructors (see the module doc).
type LateList = RefCell<Vec<Registration>>;

/// The process's thread-specific key for late lists (`None` if none could
/// be made; then late registrations leak, never free early).
static LATE_KEY: OnceLock<Option<libc::pthread_key_t>> = OnceLock::new();

/// The late-list key, made on first use if `create`.
fn late_key(create: bool) -> Option<libc::pthread_key_t> {
    if !create {
        return LATE_KEY.get().copied().flatten();
    }
    *LATE_KEY.get_or_init(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out pointer; the destructor is an
        // `extern "C" fn(*mut c_void)` that accepts the values we set.
        let r = unsafe { libc::pthread_key_create(&mut key, Some(late_list_destructor)) };
        (r == 0).then_some(key)
    })
}

/// Runs `f` on the calling thread's late list, making it first if `create`.
/// `None` if there is none (and `create` is false, or no key).
fn with_late_list<R>(create: bool, f: impl FnOnce(&mut Vec<Registration>) -> R) -> Option<R> {
    let key = late_key(create)?;
    // SAFETY: `key` is a live key (never deleted).
    let mut p = unsafe { libc::pthread_getspecific(key) }.cast::<LateList>();
    if p.is_null() {
        if !create {
            return None;
        }
        p = Box::into_raw(Box::new(LateList::new(Vec::new())));
        // SAFETY: a live key; the value is freed by its destructor (or
        // below if it could not be set).
        if unsafe { libc::pthread_setspecific(key, p.cast()) } != 0 {
            // SAFETY: from Box::into_raw just above, never shared.
            drop(unsafe { Box::from_raw(p) });
            return None;
        }
    }
    // SAFETY: a value of this key is a `LateList` from Box::into_raw, set
    // by this thread and freed only by its destructor, which clears the
    // value first (POSIX); only this thread reaches it. A signal handler
    // that registers during teardown while the list is borrowed gets a
    // `BorrowMutError` panic, not a second reference.
    let list = unsafe { &*p };
    Some(f(&mut list.borrow_mut()))
}

/// The late list's destructor: the thread has run every Rust
/// thread-local destructor, but code of it may still run (another
/// library's `pthread` key destructors, in this round or later), and may
/// still hold a guard (kept in a thread-local first used in such a
/// destructor, which glibc never destroys). So it frees only the slots
/// that are closed and unheld; a slot still open becomes an orphan,
/// never ended here: grace periods wait for it, and free it once its
/// thread is gone ([`Readers::reap_locked`]). A slot still held by a
/// handle stays taken (a leaked handle's slot does; a handle that a later
/// key destructor drops frees it, by its tenure).
///
/// Once a slot is freed here another thread may take it, so this thread
/// must never enter it again: no guard of it is open on it (freed only
/// closed), no handle holds it (skipped), and the cache is cleared before
/// the slots go, so a `read_lock` in code that still runs on this thread
/// (another key's destructor) misses the cache, finds no late list (POSIX
/// clears the value before calling us) and no registration list (gone, or
/// retired below for good) and takes a fresh slot in a new late list,
/// whose destructor runs in the next round. A guard still open on an
/// orphan ends on it (the slot stays this thread's until the thread is
/// gone). Each slot is freed only in the tenure it was listed in
/// ([`Readers::release_at_exit`]).
extern "C" fn late_list_destructor(p: *mut libc::c_void) {
    // SAFETY: the value was set by `with_late_list` from Box::into_raw, and
    // POSIX calls the destructor once per value, after clearing it.
    let list = unsafe { Box::from_raw(p.cast::<LateList>()) };
    let _ = CACHE.try_with(Cache::clear);
    // A registration list whose destructor never ran: first used after the
    // thread-local destructors had run (from another `pthread` key's
    // destructor), so its destructor was registered too late to run. Its
    // registrations are retired here, as that destructor would: the list
    // is marked gone and emptied first, so nothing is released twice, and
    // a slot still open or held goes to a new late list, whose destructor
    // runs in the next round. (Where Rust's thread-local destructors run
    // from a key destructor of their own, as on musl, the list may still
    // be destroyed later: it finds it empty. `LIST` is `LIST_GONE` once
    // its destructor has started, so the list is never touched after it
    // is gone.)
    if LIST.get() == LIST_LIVE {
        // Retired for good: from here on the list counts as gone (a
        // registration in a later destructor goes to the late list, and a
        // handle's drop looks for its slot there), so nothing is taken
        // into it that its destructor (which never runs) would have to
        // free, and nothing in it is released twice.
        LIST.set(LIST_GONE);
        let regs = REGISTRATIONS.try_with(|regs| {
            regs.try_borrow_mut()
                .map(|mut regs| core::mem::take(&mut *regs))
                .unwrap_or_default()
        });
        if let Ok(regs) = regs {
            retire_registrations(regs);
        }
    }
    for r in list.into_inner() {
        let Some(readers) = r.readers.upgrade() else {
            continue;
        };
        readers.release_at_exit(r.index, r.tenure);
    }
}

impl Readers {
    /// The late list's end for slot `i`, taken in `tenure` (see
    /// [`late_list_destructor`]): frees it if its section is closed and
    /// no handle holds it. A section still open is never ended here (a
    /// later key destructor of the thread may still be inside it): the
    /// slot stays an orphan, waited for by grace periods, until its thread
    /// closes it and is gone ([`Readers::reap_locked`]). All under `free`,
    /// after checking the tenure: a slot that changed hands since it was
    /// listed is neither orphaned nor freed (refused).
    fn release_at_exit(&self, i: usize, tenure: u64) {
        let slot = self.slot(i);
        let free = self.lock_free();
        if !self.in_tenure(i, tenure) {
            drop(free);
            return self.refuse(i, tenure);
        }
        if slot.handles.load(Ordering::Relaxed) != 0 {
            // Held by a handle: leaked, or dropped by a later key
            // destructor of this thread, whose drop frees it (by its
            // tenure). It keeps its owner's key, which no later thread
            // gets (see `thread_key`).
            return;
        }
        if handshake::active(slot.ctr.load(Ordering::Relaxed)) {
            // Open: a leaked guard's, or one kept where a later key
            // destructor of this thread can still drop it. Only the
            // thread's end tells them apart: the reaper frees the slot
            // once the thread is gone. (The mark is made under `free`, as
            // the reaper reads it; the counter is left to the owner's own
            // `read_unlock`, or to the reaper once the owner is gone.)
            self.mark_orphan(i);
            drop(free);
            tracing::debug!(
                "krcu: a thread's late RCU registration list went with a read-side \
                 section open; grace periods wait for it until the thread is gone"
            );
            return;
        }
        self.release_locked(free, i);
    }
}

/// The one-entry slot cache: the last instance this thread read under,
/// and its slot there.
///
/// # Signal handlers
/// A signal handler can interrupt the thread anywhere, including between
/// the two loads of a lookup or the stores of an update, and can itself
/// update the cache (a `read_lock` of another instance takes the slow
/// path). The words are atomics (Relaxed: only this thread and its
/// handlers touch them; the compiler fences keep program order, which is
/// the order a handler observes), and:
/// - an update is `seq` to odd (a compare-exchange from the even value it
///   read), `id = 0`, `slot`, `id`, `seq` to the next even value. A handler
///   that finds `seq` odd interrupted an update and does not update (the
///   two would tear each other); an update never runs inside another.
/// - a lookup reads `seq`, `id`, `slot`, `seq`, and uses the slot only if
///   both `seq` reads agree, are even, and `id` matches. If a handler
///   updated or cleared the cache anywhere between, `seq` moved (it only
///   grows, so no ABA). If the lookup runs in a handler that interrupted an
///   update, `seq` is odd: it misses.
/// - clearing stores `id = 0`, then adds 2 to `seq` (one atomic add, so
///   it keeps the parity, and an update it interrupts sees it): a lookup it
///   interrupts misses, and an update it interrupts, finding `seq` moved
///   at its end, ends with `id = 0` (the slot it was caching may be the one
///   the clear was for) and makes `seq` even again.
///
/// So a handler may unregister the thread from an instance (drop its last
/// handle: [`forget_cached`] clears the cache if it holds that instance or
/// an update is in progress) while the interrupted code is looking up or
/// caching that instance's slot: the interrupted code misses, or leaves the
/// cache empty. (It must still not do so while the interrupted code is
/// *inside a section* on that slot, or holds the slot from a lookup that
/// already returned; the handler frees nothing then: the section is open.)
///
/// The lookup costs two more loads from the same line than a torn-prone
/// one, and no extra dependency: `read_lock` stays a few nanoseconds.
#[repr(C, align(32))] // 24 bytes: one cache line
struct Cache {
    /// Even outside updates; see above.
    seq: AtomicU64,
    /// The cached instance's id, 0 for none.
    id: AtomicU64,
    /// The thread's slot in that instance.
    slot: AtomicPtr<Slot>,
}

impl Cache {
    /// The cached slot if it belongs to instance `id`.
    #[inline(always)]
    fn get(&self, id: u64) -> Option<*const Slot> {
        let g1 = self.seq.load(Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        let cached = self.id.load(Ordering::Relaxed);
        let slot = self.slot.load(Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        let g2 = self.seq.load(Ordering::Relaxed);
        ((g1 ^ g2) | (cached ^ id) | (g1 & 1) == 0).then_some(slot.cast_const())
    }

    /// Caches `slot` for instance `id` (skipped when interrupting another
    /// update).
    fn set(&self, id: u64, slot: *const Slot) {
        let g = self.seq.load(Ordering::Relaxed);
        if g & 1 != 0
            || self
                .seq
                .compare_exchange(g, g + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        compiler_fence(Ordering::SeqCst);
        self.id.store(0, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        self.slot.store(slot.cast_mut(), Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        self.id.store(id, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        if self
            .seq
            .compare_exchange(g + 1, g + 2, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // A handler cleared the cache meanwhile (`seq` is still odd: a
            // clear adds 2, and no update runs inside this one): perhaps
            // for this very slot, now freed. End empty, then even. Nothing
            // interrupts between these stores but handlers that run to
            // completion, so the plain add cannot lose one of theirs.
            self.id.store(0, Ordering::Relaxed);
            compiler_fence(Ordering::SeqCst);
            self.seq.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Empties the cache; an update or lookup it interrupts sees `seq`
    /// move (see above).
    fn clear(&self) {
        self.id.store(0, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        self.seq.fetch_add(2, Ordering::Relaxed);
    }
}

thread_local! {
    /// The last instance this thread read under, and its slot there. No
    /// destructor, so it is reachable during thread teardown.
    static CACHE: Cache = const {
        Cache {
            seq: AtomicU64::new(0),
            id: AtomicU64::new(0),
            slot: AtomicPtr::new(core::ptr::null_mut()),
        }
    };
    static REGISTRATIONS: Registrations = const { Registrations(RefCell::new(Vec::new())) };
    /// The state of [`REGISTRATIONS`]: [`LIST_UNUSED`], [`LIST_LIVE`] (it
    /// holds registrations) or [`LIST_GONE`] (its destructor has started,
    /// or the late list's destructor retired it). No destructor, so it is
    /// reachable during thread teardown: the late list's destructor reads
    /// it to find a list whose destructor never ran (see the module doc).
    static LIST: Cell<u8> = const { Cell::new(LIST_UNUSED) };
}

/// [`LIST`]: the registration list holds no registration yet.
const LIST_UNUSED: u8 = 0;
/// [`LIST`]: the registration list holds registrations.
const LIST_LIVE: u8 = 1;
/// [`LIST`]: the registration list is gone for good; the late list takes
/// its part.
const LIST_GONE: u8 = 2;

/// Runs `f` on the thread's registration list; `Err` once it is gone
/// (destroyed, or retired by the late list's destructor).
fn with_registrations<R>(f: impl FnOnce(&RefCell<Vec<Registration>>) -> R) -> Result<R, ()> {
    if LIST.get() == LIST_GONE {
        return Err(());
    }
    REGISTRATIONS.try_with(|regs| f(regs)).map_err(|_| ())
}

thread_local! {
    /// This thread's [`thread_key`], 0 until first asked. No destructor, so
    /// it is reachable at any point of the thread's life.
    static THREAD_KEY: std::sync::atomic::AtomicU64 = const { std::sync::atomic::AtomicU64::new(0) };
}

/// This thread's key for [`Slot::owner_key`]: a number from a process-wide
/// counter, taken on first use and never 0. Never reused (64 bits), so
/// unique among all the threads the process ever had: unlike an address
/// of thread-local data (which glibc hands to a later thread when it
/// reuses a stack), the key of a dead thread left on a slot can never be
/// mistaken for a later thread's. The child of a `fork` inherits the
/// forking thread's key with its thread-local data.
///
/// Async-signal-safe: a handler that interrupts the first use between the
/// load and the compare-exchange sets the key itself, and the interrupted
/// call then takes the handler's (Relaxed: only this thread and its
/// handlers touch the thread-local; the counter needs only atomicity).
fn thread_key() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    THREAD_KEY.with(|k| {
        let key = k.load(std::sync::atomic::Ordering::Relaxed);
        if key != 0 {
            return key;
        }
        let new = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match k.compare_exchange(
            0,
            new,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        ) {
            Ok(_) => new,
            Err(key) => key,
        }
    })
}

/// Clears the cache if it may hold instance `id`: it does, or an update is
/// in progress (this runs in a handler that interrupted it: the update's
/// target is unknown).
fn forget_cached(id: u64) {
    let _ = CACHE.try_with(|c| {
        if c.id.load(Ordering::Relaxed) == id || c.seq.load(Ordering::Relaxed) & 1 != 0 {
            c.clear();
        }
    });
}

/// Enters a read-side section on `slot` (the shared fast path).
#[inline(always)]
pub(crate) fn lock<'a>(readers: &Readers, slot: &'a Slot) -> ReadGuard<'a> {
    handshake::read_lock(&slot.ctr, &readers.gp_ctr, slot.full_fence);
    if lockdep::COMPILED {
        context::rcu_read_enter();
    }
    ReadGuard {
        slot,
        instance: readers.id,
        _not_send: PhantomData,
    }
}

/// An RCU read-side critical section, ended when dropped
/// (`rcu_read_unlock`).
///
/// Sections nest. While one is open, a grace period of its instance that
/// began before it cannot end, so whatever the section could reach stays
/// allocated. Do not sleep inside it (the validator reports it); the guard
/// is tied to its thread.
///
/// # Misuse the compiler refuses
/// A guard cannot move to another thread, nor be shared with one:
/// ```compile_fail,E0277
/// fn send<T: Send>(_: T) {}
/// send(krcu::rcu::read_lock());
/// ```
/// ```compile_fail,E0277
/// fn sync<T: Sync>() {}
/// sync::<krcu::rcu::ReadGuard<'static>>();
/// ```
/// It cannot outlive its instance:
/// ```compile_fail,E0505
/// use krcu::rcu::{Rcu, RcuConfig};
/// let rcu = Rcu::new(krcu::Domain::global(), RcuConfig::default());
/// let g = rcu.read_lock();
/// drop(rcu);
/// drop(g);
/// ```
#[must_use = "the read-side section ends when the guard is dropped"]
#[doc(alias = "rcu_read_lock")]
pub struct ReadGuard<'a> {
    slot: &'a Slot,
    /// The id of the instance whose section this is (ids are never
    /// reused), so that [`RcuCell`](crate::cell::RcuCell) can refuse a
    /// guard of another instance.
    pub(super) instance: u64,
    _not_send: PhantomData<*const ()>,
}

impl ReadGuard<'_> {
    /// The id of the guard's instance (see `Rcu::id`).
    #[inline(always)]
    pub(crate) fn instance_id(&self) -> u64 {
        self.instance
    }
}

impl Drop for ReadGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        if lockdep::COMPILED {
            context::rcu_read_exit();
        }
        handshake::read_unlock(&self.slot.ctr, self.slot.full_fence);
    }
}

impl core::fmt::Debug for ReadGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReadGuard")
            .field(
                "nesting",
                &(self.slot.ctr.load(Ordering::Relaxed) & handshake::NEST_MASK),
            )
            .finish()
    }
}

/// The calling thread's registration with one instance
/// ([`Rcu::register_thread`](super::Rcu::register_thread)): its
/// [`read_lock`](Self::read_lock) goes straight to the thread's slot, and
/// neither it nor the instance's `read_lock` allocates while the handle
/// lives. Tied to its thread.
///
/// # Misuse the compiler refuses
/// A handle cannot move to another thread (its slot is its thread's):
/// ```compile_fail,E0277
/// fn send<T: Send>(_: T) {}
/// send(krcu::rcu::register_thread());
/// ```
/// It cannot be dropped inside a section it opened:
/// ```compile_fail,E0505
/// let h = krcu::rcu::global().register_thread();
/// let g = h.read_lock();
/// drop(h);
/// drop(g);
/// ```
pub struct ReaderHandle {
    pub(super) readers: Arc<Readers>,
    index: usize,
    /// The slot's tenure when the handle's registration took it.
    tenure: u64,
    slot: *const Slot,
}

impl ReaderHandle {
    pub(crate) fn new(readers: &Arc<Readers>) -> Self {
        let (index, tenure) = readers.register_current(1);
        let slot: *const Slot = readers.slot(index);
        let _ = CACHE.try_with(|c| c.set(readers.id, slot));
        ReaderHandle {
            readers: readers.clone(),
            index,
            tenure,
            slot,
        }
    }

    /// Enters a read-side section (`rcu_read_lock`): wait-free, no
    /// allocation, no system call.
    #[inline(always)]
    #[doc(alias = "rcu_read_lock")]
    pub fn read_lock(&self) -> ReadGuard<'_> {
        // SAFETY: the slot stays registered to this thread while the handle
        // lives (the handle keeps the registry alive and holds a handle
        // count that keeps the slot from being released).
        lock(&self.readers, unsafe { &*self.slot })
    }
}

impl Drop for ReaderHandle {
    fn drop(&mut self) {
        self.readers.drop_handle(self.index, self.tenure);
    }
}

impl core::fmt::Debug for ReaderHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReaderHandle")
            .field("instance", &self.readers.id)
            .field("slot", &self.index)
            .finish()
    }
}

#[cfg(test)]
mod tests;
