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
//! thread, with its section closed (or, in the child of a `fork`, from the
//! only thread left), so a guard can never end another thread's section.
//! A taken slot records its owner's key (the address of the owner's
//! thread-local cache), so that the child of a `fork` keeps the forking
//! thread's slots even when it cannot read its registration list (a fork
//! from a signal handler that interrupted a registration).
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
//! thread-local). When the late list's destructor runs, no code of the
//! thread that Rust can reach is left: a section still open there belongs
//! to a leaked guard, which it ends with a warning (the kernel's
//! `exit_rcu` does the same), and it frees the slots. So a leaked guard does
//! not stall grace periods after its thread has exited, and a section
//! running in a thread-local destructor is waited for.
//!
//! The late list is armed at a thread's first registration, not only when
//! the registration list's destructor needs it: a thread that first reads
//! in another library's `pthread` key destructor (after glibc has run the
//! thread-local destructors) makes a registration list whose destructor
//! never runs. The late list's destructor is the backstop: if that list
//! still holds registrations (a destructor-less flag says so) it retires
//! them as the list's destructor would, emptying it first, so that no slot
//! is released twice.
//!
//! Instance ids are never reused, so a stale cache entry can never match a
//! later instance built at the same address.

use super::handshake;
use crate::context;
use crate::lockdep;
use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
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
    fn current() -> Self {
        let t = std::thread::current();
        ThreadInfo {
            name: t
                .name()
                .map_or_else(|| format!("{:?}", t.id()), str::to_owned),
            // SAFETY: gettid has no preconditions.
            tid: unsafe { libc::gettid() },
        }
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
    /// The owning thread's [`thread_key`] (0 while free, or once the owner
    /// has exited leaving the slot held): how the child of a `fork` tells
    /// the forking thread's slots even when its registration list is out
    /// of reach. Changed only under the `free` mutex (Relaxed).
    owner_key: AtomicUsize,
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

    /// Takes a slot for the calling thread.
    fn acquire_slot(&self) -> usize {
        let mut free = self.lock_free();
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
                            owner_key: AtomicUsize::new(0),
                        })
                    }));
                    c.store(Box::into_raw(chunk), Ordering::Release);
                }
                self.len.store(i + 1, Ordering::Release);
                i
            }
        };
        *self.slot(i).owner.lock().unwrap_or_else(|e| e.into_inner()) = Some(ThreadInfo::current());
        self.slot(i)
            .owner_key
            .store(thread_key(), Ordering::Relaxed);
        self.in_use.fetch_add(1, Ordering::Relaxed);
        drop(free);
        i
    }

    /// Returns the calling thread's slot `i`, closed, to the free list.
    ///
    /// Only the slot's owning thread calls this (or the surviving thread
    /// of a `fork`), and only with the section closed, so no guard of the
    /// owner can touch the slot after its next owner takes it: every guard
    /// of the owner has been dropped, or was leaked and its thread has
    /// finished (see [`late_list_destructor`]).
    fn release_slot(&self, i: usize) {
        let slot = self.slot(i);
        debug_assert!(!handshake::active(slot.ctr.load(Ordering::Relaxed)));
        let mut free = self.lock_free();
        *slot.owner.lock().unwrap_or_else(|e| e.into_inner()) = None;
        slot.owner_key.store(0, Ordering::Relaxed);
        if !slot.orphan.swap(false, Ordering::Relaxed) {
            self.in_use.fetch_sub(1, Ordering::Relaxed);
        }
        free.push(i);
    }

    /// Makes the calling thread's open slot `i` an orphan: no longer
    /// counted as a registered thread, but still waited for and still
    /// named in stall warnings, until its thread frees it.
    fn orphan_slot(&self, i: usize) {
        let slot = self.slot(i);
        let _free = self.lock_free();
        if !slot.orphan.swap(true, Ordering::Relaxed) {
            self.in_use.fetch_sub(1, Ordering::Relaxed);
        }
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
        let i = self.register_current(0);
        let slot: *const Slot = self.slot(i);
        let _ = CACHE.try_with(|c| c.set(self.id, slot));
        self.slot(i)
    }

    /// Finds or makes the calling thread's registration; adds `handles`
    /// to its slot's handle count. Returns the slot index.
    fn register_current(self: &Arc<Self>, handles: usize) -> usize {
        let found = REGISTRATIONS.try_with(|regs| {
            let mut regs = regs.borrow_mut();
            if let Some(r) = regs.iter().find(|r| r.id == self.id) {
                return r.index;
            }
            // A first registration in this list: arm the late list first,
            // so that its destructor, which runs after every thread-local
            // destructor, is the backstop that frees what this list still
            // holds if the list's own destructor never runs (a list first
            // used after the thread-local destructors ran, from another
            // library's `pthread` key destructor: see the module doc).
            // Cheap after the first time (one `pthread_getspecific`).
            let _ = with_late_list(true, |_| ());
            let _ = REGISTERED.try_with(|r| r.set(true));
            let index = self.acquire_slot();
            regs.push(Registration {
                id: self.id,
                readers: Arc::downgrade(self),
                index,
            });
            index
        });
        let index = found.unwrap_or_else(|_| {
            // The thread is exiting and its registration list is gone: the
            // late list holds its slot (or gets a new one), and frees it
            // when the thread ends.
            with_late_list(true, |late| {
                if let Some(r) = late.iter().find(|r| r.id == self.id) {
                    return r.index;
                }
                let index = self.acquire_slot();
                late.push(Registration {
                    id: self.id,
                    readers: Arc::downgrade(self),
                    index,
                });
                index
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
        index
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
        REGISTRATIONS
            .try_with(|regs| regs.try_borrow().is_ok_and(|regs| regs.iter().any(active)))
            .unwrap_or_else(|_| {
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
    /// borrowed), by the slot's owner key: the address of the thread's
    /// thread-local cache, which the child's only thread inherits unchanged
    /// and which no other live thread of the parent shared.
    pub(crate) fn forget_other_threads(&self) {
        let find = |regs: &[Registration]| regs.iter().find(|r| r.id == self.id).map(|r| r.index);
        let mine = REGISTRATIONS
            .try_with(|regs| regs.try_borrow().ok().and_then(|regs| find(&regs)))
            .unwrap_or_else(|_| with_late_list(false, |late| find(late)).flatten());
        let my_key = thread_key();
        let mut free = self.lock_free();
        let n = self.len();
        let mut is_free = vec![false; n];
        for &i in free.iter() {
            is_free[i] = true;
        }
        for (i, was_free) in is_free.into_iter().enumerate() {
            let slot = self.slot(i);
            if was_free || Some(i) == mine || slot.owner_key.load(Ordering::Relaxed) == my_key {
                continue;
            }
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
            // An orphan was counted out already (under `free`, which the
            // fork held, so the mark and the count agree).
            if !slot.orphan.swap(false, Ordering::Relaxed) {
                self.in_use.fetch_sub(1, Ordering::Relaxed);
            }
            free.push(i);
        }
    }

    fn drop_handle(self: &Arc<Self>, index: usize) {
        let slot = self.slot(index);
        let before = slot.handles.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "reader handle count underflow");
        if before > 1 {
            // Another handle of this thread still holds the slot.
            return;
        }
        let gone = REGISTRATIONS.try_with(|regs| {
            let mut regs = regs.borrow_mut();
            let Some(pos) = regs.iter().position(|r| r.id == self.id) else {
                return;
            };
            if !handshake::active(slot.ctr.load(Ordering::Relaxed)) {
                regs.swap_remove(pos);
                forget_cached(self.id);
                self.release_slot(index);
            }
        });
        if gone.is_err() {
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
                    if !late.iter().any(|r| r.id == self.id) {
                        late.push(Registration {
                            id: self.id,
                            readers: Arc::downgrade(self),
                            index,
                        });
                    }
                });
                // Open and no longer held: an orphan, as the registration
                // list's destructor makes one (kept taken for good if
                // there is no late list).
                self.orphan_slot(index);
                if kept.is_none() {
                    tracing::warn!("krcu: no thread-specific key for an RCU orphan slot; it leaks");
                }
                return;
            }
            let _ = with_late_list(false, |late| late.retain(|r| r.id != self.id));
            self.release_slot(index);
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
}

/// The thread's registrations; their destructor runs at thread exit.
struct Registrations(RefCell<Vec<Registration>>);

impl Drop for Registrations {
    fn drop(&mut self) {
        // From here on the late list's destructor must not look at this
        // list (it is being destroyed).
        let _ = REGISTERED.try_with(|r| r.set(false));
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
            readers.release_slot(r.index);
            continue;
        }
        // Still held by a handle, or inside a section, in a
        // thread-local destroyed later: the late list keeps it (a
        // handle's last drop, or the list's destructor, frees it).
        if open && !held {
            tracing::debug!(
                "krcu: a thread's RCU registration list went with a read-side \
                 section open; grace periods wait for it until it ends"
            );
            readers.orphan_slot(r.index);
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

/// The late list's destructor: the thread has run every thread-local
/// destructor, so no guard of it can still be dropped (one still open was
/// leaked): it closes such sections (with a warning, as the kernel's
/// `exit_rcu`) and frees the slots. A slot still held by a handle (a
/// leaked handle) stays taken, as a leaked handle's slot does.
///
/// Once a slot is freed here another thread may take it, so this thread
/// must never enter it again: no guard of it is left to drop (above), no
/// handle holds it (skipped), and the cache is cleared before the slots
/// go, so a `read_lock` in code that still runs on this thread (another
/// key's destructor) misses the cache, finds no late list (POSIX clears
/// the value before calling us) and takes a fresh slot in a new one, whose
/// destructor runs in the next round.
extern "C" fn late_list_destructor(p: *mut libc::c_void) {
    // SAFETY: the value was set by `with_late_list` from Box::into_raw, and
    // POSIX calls the destructor once per value, after clearing it.
    let list = unsafe { Box::from_raw(p.cast::<LateList>()) };
    let _ = CACHE.try_with(Cache::clear);
    // A registration list whose destructor never ran: first used after the
    // thread-local destructors had run (from another `pthread` key's
    // destructor), so its destructor was registered too late to run. Its
    // registrations are retired here, as that destructor would: the list
    // is emptied first, so nothing is released twice, and a slot still
    // open or held goes to a new late list, whose destructor runs in the
    // next round. (Where Rust's thread-local destructors run from a key
    // destructor of their own, as on musl, the list may still be destroyed
    // later: it finds it empty. `REGISTERED` is false once its destructor
    // has started, so the list is never touched after it is gone.)
    if REGISTERED.try_with(Cell::get) == Ok(true) {
        let regs = REGISTRATIONS.try_with(|regs| {
            regs.try_borrow_mut()
                .map(|mut regs| core::mem::take(&mut *regs))
                .unwrap_or_default()
        });
        let _ = REGISTERED.try_with(|r| r.set(false));
        if let Ok(regs) = regs {
            retire_registrations(regs);
        }
    }
    for r in list.into_inner() {
        let Some(readers) = r.readers.upgrade() else {
            continue;
        };
        let slot = readers.slot(r.index);
        if slot.handles.load(Ordering::Relaxed) != 0 {
            // Held by a leaked handle: taken for good. The thread is gone,
            // so its key may be another thread's next: drop it (under
            // `free`, as every change of the key).
            let _free = readers.lock_free();
            slot.owner_key.store(0, Ordering::Relaxed);
            continue;
        }
        if handshake::active(slot.ctr.load(Ordering::Relaxed)) {
            tracing::warn!(
                "krcu: a thread exited inside an RCU read-side section (a leaked guard); \
                 the section is ended"
            );
            // Release: the section's accesses happen before a grace
            // period's scan that reads the zero (as `read_unlock`).
            slot.ctr.store(0, Ordering::Release);
        }
        readers.release_slot(r.index);
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
    /// Whether [`REGISTRATIONS`] holds registrations and its destructor has
    /// not started. No destructor, so it is reachable during thread
    /// teardown: the late list's destructor reads it to find a list whose
    /// destructor never ran (see the module doc).
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// This thread's key for [`Slot::owner_key`]: the address of its cache, a
/// thread-local without destructor (so reachable at any point of the
/// thread's life, and never 0). Unique among live threads, and the same in
/// the child of a `fork` for the thread that forked.
fn thread_key() -> usize {
    CACHE.with(|c| core::ptr::from_ref(c).addr())
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
    instance: u64,
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
/// let h = krcu::rcu::register_thread();
/// let g = h.read_lock();
/// drop(h);
/// drop(g);
/// ```
pub struct ReaderHandle {
    readers: Arc<Readers>,
    index: usize,
    slot: *const Slot,
}

impl ReaderHandle {
    pub(crate) fn new(readers: &Arc<Readers>) -> Self {
        let index = readers.register_current(1);
        let slot: *const Slot = readers.slot(index);
        let _ = CACHE.try_with(|c| c.set(readers.id, slot));
        ReaderHandle {
            readers: readers.clone(),
            index,
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
        self.readers.drop_handle(self.index);
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
mod tests {
    use super::super::{Rcu, RcuConfig};
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn leaked() -> &'static Rcu {
        Box::leak(Box::new(Rcu::new(
            crate::Domain::global(),
            RcuConfig::default(),
        )))
    }

    /// Whether a grace period started now ends within `d`.
    fn gp_ends_within(rcu: &'static Rcu, d: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            rcu.synchronize();
            let _ = tx.send(());
        });
        rx.recv_timeout(d).is_ok()
    }

    /// Runs `at_exit` in a thread-local destructor that runs after the
    /// registration list's (`before` runs first, registering the thread).
    fn at_teardown(before: impl FnOnce() + Send + 'static, at_exit: Box<dyn FnOnce() + Send>) {
        struct AtExit(Option<Box<dyn FnOnce() + Send>>);
        impl Drop for AtExit {
            fn drop(&mut self) {
                if let Some(f) = self.0.take() {
                    f();
                }
            }
        }
        thread_local! {
            static AT_EXIT: RefCell<AtExit> = const { RefCell::new(AtExit(None)) };
        }
        std::thread::spawn(move || {
            AT_EXIT.with(|_| {});
            before();
            AT_EXIT.with(|a| a.borrow_mut().0 = Some(at_exit));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_guard_leaked_during_teardown_is_ended_when_the_thread_ends() {
        let rcu = leaked();
        at_teardown(
            move || drop(rcu.read_lock()),
            Box::new(move || core::mem::forget(rcu.read_lock())),
        );
        // The thread is gone (joined): its leaked section holds nothing up.
        assert!(gp_ends_within(rcu, Duration::from_secs(10)));
        assert_eq!(rcu.stats().readers, 0);
    }

    #[test]
    fn a_handle_dropped_inside_a_section_during_teardown_keeps_it_waited_for() {
        let rcu = leaked();
        let (to_main, from_thread) = mpsc::channel();
        let (to_thread, from_main) = mpsc::channel::<()>();
        // (Results come back over the channel: a panic in a thread-local
        // destructor would abort the test binary.)
        let t = std::thread::spawn(move || {
            at_teardown(
                move || drop(rcu.read_lock()),
                Box::new(move || {
                    let g = rcu.read_lock();
                    drop(rcu.register_thread());
                    // Nested, and still the same section.
                    drop(rcu.read_lock());
                    let _ = to_main.send(rcu.is_reading());
                    let _ = from_main.recv_timeout(Duration::from_secs(10));
                    drop(g);
                    let _ = to_main.send(!rcu.is_reading());
                }),
            )
        });
        assert!(from_thread.recv_timeout(Duration::from_secs(10)).unwrap());
        // Another thread takes a slot meanwhile (never the open one).
        std::thread::spawn(move || drop(rcu.read_lock()))
            .join()
            .unwrap();
        let ended = gp_ends_within(rcu, Duration::from_millis(300));
        to_thread.send(()).unwrap();
        let closed = from_thread.recv_timeout(Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        assert!(!ended, "a grace period ended under a teardown reader");
        assert!(closed, "the section outlived its guard");
        assert!(gp_ends_within(rcu, Duration::from_secs(10)));
        assert_eq!(rcu.stats().readers, 0);
    }

    #[test]
    fn an_orphan_is_reentered_by_its_thread_and_freed_at_exit() {
        let rcu = leaked();
        thread_local! {
            static HELD: RefCell<Option<ReadGuard<'static>>> = const { RefCell::new(None) };
        }
        struct Check(&'static Rcu, mpsc::Sender<[bool; 3]>);
        impl Drop for Check {
            fn drop(&mut self) {
                let rcu = self.0;
                // The registration list is gone; the section (held in
                // HELD, destroyed after this) is open: an orphan.
                let open = rcu.is_reading();
                let uncounted = rcu.stats().readers == 0;
                drop(rcu.read_lock());
                // A nested section must not end the outer one.
                let _ = self.1.send([open, uncounted, rcu.is_reading()]);
            }
        }
        thread_local! {
            static CHECK: RefCell<Option<Check>> = const { RefCell::new(None) };
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            HELD.with(|_| {});
            CHECK.with(|_| {});
            let g = rcu.read_lock();
            HELD.with(|h| *h.borrow_mut() = Some(g));
            CHECK.with(|c| *c.borrow_mut() = Some(Check(rcu, tx)));
        })
        .join()
        .unwrap();
        assert_eq!(rx.recv().unwrap(), [true; 3]);
        assert!(gp_ends_within(rcu, Duration::from_secs(10)));
        assert_eq!(rcu.stats().readers, 0);
    }

    /// A `fork` from a signal handler that interrupted `register_current`
    /// (or `drop_handle`) finds the registration list borrowed: the child
    /// must still keep the forking thread's slot (run here on a private
    /// registry, with the child's step called directly).
    #[test]
    fn the_forking_threads_slot_survives_a_borrowed_registration_list() {
        let readers = Readers::new(true);
        let other = readers.clone();
        // Another thread's slot, which the child must free.
        std::thread::spawn(move || {
            let h = ReaderHandle::new(&other);
            core::mem::forget(h);
        })
        .join()
        .unwrap();
        let h = ReaderHandle::new(&readers);
        assert_eq!(readers.registered(), 2);
        REGISTRATIONS.with(|regs| {
            let _interrupted = regs.borrow_mut();
            readers.forget_other_threads();
        });
        assert_eq!(
            readers.registered(),
            1,
            "the forking thread's slot was freed"
        );
        let mine = readers.slot(h.index);
        assert!(mine.owner.lock().unwrap().is_some());
        assert_eq!(mine.handles.load(Ordering::Relaxed), 1);
        // The next registration takes the dead thread's slot, not ours.
        let other = readers.clone();
        let taken = std::thread::spawn(move || {
            let h = ReaderHandle::new(&other);
            let i = h.index;
            drop(h);
            i
        })
        .join()
        .unwrap();
        assert_ne!(taken, h.index);
        drop(h);
        assert_eq!(readers.registered(), 0);
    }

    #[test]
    fn cache_updates_never_nest_and_mid_update_lookups_miss() {
        let c = Cache {
            seq: AtomicU64::new(0),
            id: AtomicU64::new(0),
            slot: AtomicPtr::new(core::ptr::null_mut()),
        };
        let a = core::ptr::dangling::<Slot>();
        let b = a.wrapping_add(1);
        c.set(1, a);
        assert_eq!(c.get(1), Some(a));
        assert_eq!(c.get(2), None);
        // A handler interrupting an update to (2, b) after its first
        // stores sees no pair, and does not update itself.
        c.seq.store(3, Ordering::Relaxed);
        c.id.store(0, Ordering::Relaxed);
        c.slot.store(b.cast_mut(), Ordering::Relaxed);
        assert_eq!(c.get(1), None);
        assert_eq!(c.get(2), None);
        c.set(3, a);
        assert_eq!(c.id.load(Ordering::Relaxed), 0);
        assert_eq!(c.slot.load(Ordering::Relaxed).cast_const(), b);
        // The interrupted update ends.
        c.id.store(2, Ordering::Relaxed);
        c.seq.store(4, Ordering::Relaxed);
        assert_eq!(c.get(2), Some(b));
        c.clear();
        assert_eq!(c.get(2), None);
        // A lookup interrupted by a clear (after reading `seq` and the
        // pair) misses.
        c.set(2, b);
        let g1 = c.seq.load(Ordering::Relaxed);
        c.clear();
        c.id.store(2, Ordering::Relaxed); // as if read before the clear
        assert_ne!(c.seq.load(Ordering::Relaxed), g1);
        c.id.store(0, Ordering::Relaxed);
        // An update interrupted by a clear ends empty, and even.
        let g = c.seq.load(Ordering::Relaxed);
        c.seq.store(g + 1, Ordering::Relaxed);
        c.id.store(0, Ordering::Relaxed);
        c.clear(); // the handler, after the update's first stores
        assert_eq!(c.seq.load(Ordering::Relaxed) & 1, 1);
        c.slot.store(a.cast_mut(), Ordering::Relaxed);
        c.id.store(1, Ordering::Relaxed);
        // A lookup in a handler here (seq odd, id set) misses.
        assert_eq!(c.get(1), None);
        // The update's end, as `set` does it.
        assert!(
            c.seq
                .compare_exchange(g + 1, g + 2, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        );
        c.id.store(0, Ordering::Relaxed);
        c.seq.fetch_add(1, Ordering::Relaxed);
        assert_eq!(c.seq.load(Ordering::Relaxed) & 1, 0);
        assert_eq!(c.get(1), None);
        c.set(1, a);
        assert_eq!(c.get(1), Some(a));
    }
}
