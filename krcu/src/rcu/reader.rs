//! Readers: per-(thread, instance) slots, their registry, and the read-side
//! guard.
//!
//! # Slots
//! Each instance keeps a registry of cache-line-padded slots in chunks that
//! are never freed while the instance lives: the grace-period scan walks
//! them without a lock (it reads the published length with Acquire, then
//! the slots), and a thread that unregisters only returns its slot to a free
//! list for the next thread to take. A free slot reads zero, so a scan that
//! meets it skips it.
//!
//! # Registration
//! A thread gets its slot on first use ([`Rcu::read_lock`](super::Rcu::read_lock)
//! registers it, which allocates) or ahead of time with
//! [`Rcu::register_thread`](super::Rcu::register_thread), after which
//! neither `read_lock` allocates. The thread's registrations sit in a
//! thread-local list whose destructor unregisters them when the thread
//! exits; a one-entry thread-local cache (instance id, slot) makes
//! `Rcu::read_lock` one compare away from the slot. A [`ReaderHandle`] holds
//! the slot directly: [`ReaderHandle::read_lock`] is the fastest path.
//! Dropping the last handle unregisters the thread from that instance
//! (unless it is inside a read-side section of it; then the thread's exit
//! does).
//!
//! Instance ids are never reused, so a stale cache entry can never match a
//! later instance built at the same address.

use super::handshake;
use crate::context;
use crate::lockdep;
use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use core::cell::{Cell, RefCell};
use core::marker::PhantomData;
use crossbeam_utils::CachePadded;
use std::sync::{Arc, Mutex, Weak};

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
    /// The owning thread; `None` while the slot is free.
    pub(crate) owner: Mutex<Option<ThreadInfo>>,
    /// The owner's live [`ReaderHandle`]s for this slot. Here rather than
    /// in the thread's registration list so that it outlives that list:
    /// the last handle releases the slot, once. Only the owning thread
    /// touches it (handles are tied to their thread), so Relaxed is enough;
    /// a released slot (count zero) passes to its next owner through the
    /// `free` mutex.
    handles: AtomicUsize,
    /// Released with its section open: never reused, and grace periods no
    /// longer wait for it (see [`Readers::release_slot`]).
    abandoned: AtomicBool,
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
    /// Free slot indices; also serialises growth.
    free: Mutex<Vec<usize>>,
    /// Slots taken by threads.
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

    /// How many threads are registered.
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

    /// Takes a slot for the calling thread.
    fn acquire_slot(&self) -> usize {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
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
                            abandoned: AtomicBool::new(false),
                        })
                    }));
                    c.store(Box::into_raw(chunk), Ordering::Release);
                }
                self.len.store(i + 1, Ordering::Release);
                i
            }
        };
        *self.slot(i).owner.lock().unwrap_or_else(|e| e.into_inner()) = Some(ThreadInfo::current());
        self.in_use.fetch_add(1, Ordering::Relaxed);
        i
    }

    /// Returns slot `i` to the free list.
    ///
    /// A thread whose registration goes with a section still open (a leaked
    /// guard, or a guard kept in a thread-local whose destructor runs after
    /// the registration list's) must not hold grace periods up for good,
    /// and must not touch another thread's slot when that guard drops
    /// later. So the slot is **abandoned**: grace periods stop waiting for
    /// it ([`Readers::holds_up`]), and it never goes back to the free list;
    /// the late guard's unlock then changes only this slot. A section that
    /// outlives its thread's registration is not protected any more (as a
    /// reader of a thread that exited, it can no longer reach anything).
    fn release_slot(&self, i: usize) {
        let slot = self.slot(i);
        *slot.owner.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        if handshake::active(slot.ctr.load(Ordering::Relaxed)) {
            tracing::warn!(
                "krcu: a thread's RCU registration ended with a read-side section open; \
                 grace periods no longer wait for it"
            );
            slot.abandoned.store(true, Ordering::Relaxed);
            return;
        }
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(i);
    }

    /// Whether slot `i` holds a grace period up at counter value `v`: an
    /// active reader in the other phase, in a slot not abandoned.
    ///
    /// Ordering: `abandoned` is set once, by the slot's owner, and only
    /// lets a grace period stop waiting for a section that no longer
    /// protects anything; a scan that reads it late just waits another
    /// round. Nothing is published through it, so Relaxed is enough.
    #[inline]
    pub(crate) fn holds_up(&self, i: usize, v: usize) -> bool {
        let slot = self.slot(i);
        handshake::holds_up(slot.ctr.load(Ordering::Relaxed), v)
            && !slot.abandoned.load(Ordering::Relaxed)
    }

    /// The calling thread's slot, registering it on first use.
    #[inline]
    pub(crate) fn current_slot(self: &Arc<Self>) -> &Slot {
        let (id, slot) = CACHE.with(Cell::get);
        if id == self.id {
            // SAFETY: the cache holds a slot of the live instance with this
            // id (ids are never reused, and `self` keeps the slots alive);
            // it is cleared when the thread unregisters from it.
            return unsafe { &*slot };
        }
        self.current_slot_slow()
    }

    #[cold]
    fn current_slot_slow(self: &Arc<Self>) -> &Slot {
        let i = self.register_current(0);
        let slot: *const Slot = self.slot(i);
        let _ = CACHE.try_with(|c| c.set((self.id, slot)));
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
            let index = self.acquire_slot();
            regs.push(Registration {
                id: self.id,
                readers: Arc::downgrade(self),
                index,
            });
            index
        });
        let index = found.unwrap_or_else(|_| {
            // The thread is exiting and its registrations are gone: a slot
            // that stays registered (and inactive) for good, unless a
            // handle holds it (its last handle releases it).
            tracing::debug!("krcu: RCU reader registered during thread teardown");
            self.acquire_slot()
        });
        self.slot(index)
            .handles
            .fetch_add(handles, Ordering::Relaxed);
        index
    }

    /// Whether the calling thread is inside a read-side section of this
    /// instance (never registers, never allocates).
    pub(crate) fn current_thread_reading(&self) -> bool {
        let (id, slot) = CACHE.try_with(Cell::get).unwrap_or((0, core::ptr::null()));
        if id == self.id {
            // SAFETY: as in `current_slot`.
            return handshake::active(unsafe { &*slot }.ctr.load(Ordering::Relaxed));
        }
        REGISTRATIONS
            .try_with(|regs| {
                regs.try_borrow().is_ok_and(|regs| {
                    regs.iter().any(|r| {
                        r.id == self.id
                            && handshake::active(self.slot(r.index).ctr.load(Ordering::Relaxed))
                    })
                })
            })
            .unwrap_or(false)
    }

    /// The registry lock, held across a `fork` so that no registration is
    /// half made in the child.
    pub(crate) fn lock_for_fork(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// In the child of a `fork`: every slot but the calling thread's belongs
    /// to a thread that does not exist here. Their sections are closed and
    /// their slots freed, so that they hold up no grace period (liburcu's
    /// `urcu_bp` prunes dead readers after fork the same way).
    pub(crate) fn forget_other_threads(&self) {
        let mine = REGISTRATIONS
            .try_with(|regs| {
                regs.try_borrow()
                    .ok()
                    .and_then(|regs| regs.iter().find(|r| r.id == self.id).map(|r| r.index))
            })
            .ok()
            .flatten();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.len();
        let mut is_free = vec![false; n];
        for &i in free.iter() {
            is_free[i] = true;
        }
        for (i, was_free) in is_free.into_iter().enumerate() {
            if was_free || Some(i) == mine {
                continue;
            }
            let slot = self.slot(i);
            // Release: the slot's next owner (or a grace period's Acquire
            // scan) sees it closed.
            slot.ctr.store(0, Ordering::Release);
            // The owner lock is taken only briefly, never by a worker; a
            // thread that died holding it leaves a stale name, nothing else.
            if let Ok(mut owner) = slot.owner.try_lock() {
                *owner = None;
            }
            self.in_use.fetch_sub(1, Ordering::Relaxed);
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
            // The thread-exit destructor ran and left this slot to its
            // handles (it had some): this was the last one.
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

/// The thread's registrations; unregistered when the thread exits.
struct Registrations(RefCell<Vec<Registration>>);

impl Drop for Registrations {
    fn drop(&mut self) {
        let _ = CACHE.try_with(|c| c.set((0, core::ptr::null())));
        for r in self.0.get_mut().drain(..) {
            // A registration with live handles is released by the last
            // handle's drop (see `Readers::drop_handle`), once. Without
            // the instance there is no handle (each holds the registry).
            if let Some(readers) = r.readers.upgrade()
                && readers.slot(r.index).handles.load(Ordering::Relaxed) == 0
            {
                readers.release_slot(r.index);
            }
        }
    }
}

impl core::ops::Deref for Registrations {
    type Target = RefCell<Vec<Registration>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

thread_local! {
    /// The last instance this thread read under, and its slot there.
    static CACHE: Cell<(u64, *const Slot)> = const { Cell::new((0, core::ptr::null())) };
    static REGISTRATIONS: Registrations = const { Registrations(RefCell::new(Vec::new())) };
}

fn forget_cached(id: u64) {
    let _ = CACHE.try_with(|c| {
        if c.get().0 == id {
            c.set((0, core::ptr::null()));
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
    _not_send: PhantomData<*const ()>,
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
        let _ = CACHE.try_with(|c| c.set((readers.id, slot)));
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
