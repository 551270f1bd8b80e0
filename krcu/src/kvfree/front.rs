//! The per-thread front block, ahead of the per-CPU `krc` state.
//!
//! A thread in task or softirq context appends to a block of its own with
//! plain stores: no atomic read-modify-write, no lock, so the common call
//! costs a few loads and stores. An object of another channel than the
//! block's takes the per-CPU path (which keeps a block for each of several
//! channels), so a thread that retires two types in turn does not burn a
//! block per call. When the block is full the thread swaps it under its
//! CPU's `krc` trylock: the full
//! block goes to the `krc` as an evicted block, which the monitor hands to
//! RCU at once, and a new one comes from the cache or the policy. Signal
//! handlers (hardirq) and NMI never use a front: they take the per-CPU path.
//!
//! # Taking a partial block from its owner
//! The monitor must hand over a block that has waited a drain delay, or
//! whose thread exited, without the owner's cooperation. The handshake is
//! the memb RCU one (`rcu/handshake.rs`), with `busy` as the read-side
//! section:
//!
//! - owner: `busy = true`; compiler fence; if `steal` is clear (an Acquire
//!   load), use the block; `busy = false` (Release).
//! - monitor: `steal = true`; `membarrier()`; wait while `busy`; take the
//!   block; `steal = false` (Release).
//!
//! `membarrier()` runs a full barrier in the owner at some point P of its
//! instruction stream. If the owner's `busy = true` precedes P, the monitor
//! sees it after the membarrier and waits for the section to end; if it
//! follows P, the owner's later load of `steal` sees it set and the section
//! leaves the block alone. The monitor's Acquire load of `busy = false`
//! reads the owner's Release store that followed its last writes to the
//! block, so it sees the block whole; the owner's Acquire load of `steal`,
//! if it reads the monitor's final `steal = false`, sees the block pointer
//! the monitor cleared before it, never the old one. The handshake itself
//! is `steal.rs` (with a loom model). Without membarrier there are no
//! fronts (the fallback would need a full fence on every call).
//!
//! Owns: [`Front`] (one thread's front for one instance) and the
//! thread-locals that find it. Uses: `block.rs`, `steal.rs`, RCU's
//! snapshot. The registry of every thread's front is `fronts.rs`.

use super::block::{Block, Channel};
use super::steal::StealGate;
use crate::rcu::Rcu;
use core::cell::{Cell, RefCell};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Arc;

/// One thread's front for one instance. Its block and counts are
/// `pub(super)`: the owner's swap (`call.rs`, inside the owner's section)
/// and the registry (`fronts.rs`, the monitor's steal and the statistics)
/// read and write them under the handshake described above.
pub(super) struct Front {
    engine: u64,
    /// The owner's section and the monitor's steal (membarrier variant:
    /// fronts exist only where membarrier is in use).
    gate: StealGate,
    pub(super) block: AtomicPtr<Block>,
    /// Objects and bytes in `block` (single writer at a time: the owner, or
    /// the monitor while it steals).
    pub(super) objs: AtomicUsize,
    pub(super) bytes: AtomicUsize,
    /// Calls that queued through this front: task, softirq.
    pub(super) calls: [AtomicU64; 2],
    /// The thread exited: the monitor takes the block and forgets the front.
    pub(super) exited: AtomicBool,
    /// The instance is gone: the thread may forget the front.
    dead: AtomicBool,
}

// SAFETY: the block pointer is owned by the thread or the monitor as the
// handshake above decides; everything else is atomics.
unsafe impl Send for Front {}
// SAFETY: as for Send.
unsafe impl Sync for Front {}

#[inline]
fn bump(a: &AtomicUsize, n: usize) {
    // One writer: a load and a store, not a read-modify-write.
    a.store(a.load(Relaxed) + n, Relaxed);
}

impl Front {
    fn new(engine: u64) -> Front {
        Front {
            engine,
            gate: StealGate::new(false),
            block: AtomicPtr::new(ptr::null_mut()),
            objs: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            calls: [AtomicU64::new(0), AtomicU64::new(0)],
            exited: AtomicBool::new(false),
            dead: AtomicBool::new(false),
        }
    }

    /// Enters the owner's section; false (and left) if a steal is asked.
    #[inline]
    pub(super) fn begin(&self) -> bool {
        self.gate.begin()
    }

    /// Leaves the owner's section.
    #[inline]
    pub(super) fn end(&self) {
        self.gate.end();
    }

    /// The owner's fast path: puts `obj` in the front block if it is of
    /// `chan` and has room.
    #[inline]
    pub(super) fn try_push(&self, chan: &Channel, obj: *mut u8, rcu: &Rcu, ctx: usize) -> Push {
        if !self.begin() {
            return Push::Stolen;
        }
        // The cookie is taken inside the section, where the block is ours.
        let snap = rcu.get_state();
        let b = self.block.load(Relaxed);
        let mut done = Push::Swap;
        if !b.is_null() {
            // SAFETY: inside the owner's section with no steal asked, the
            // block belongs to this thread (module doc).
            let blk = unsafe { &mut *b };
            if !blk.chan.same(chan) {
                done = Push::OtherChannel;
            } else if !blk.is_full() {
                blk.push(obj, snap);
                self.count(1, chan.obj_size, ctx);
                done = Push::Done;
            }
        }
        self.end();
        done
    }

    /// Counts objects put in the block (owner only, inside its section).
    #[inline]
    pub(super) fn count(&self, objs: usize, bytes: usize, ctx: usize) {
        bump(&self.objs, objs);
        bump(&self.bytes, bytes);
        let c = &self.calls[ctx];
        c.store(c.load(Relaxed) + objs as u64, Relaxed);
    }

    /// Takes the block from its owner (the monitor): `membarrier` must be
    /// in use. None if the owner stays inside its section (preempted
    /// there): the monitor tries again on its next pass.
    pub(super) fn steal(&self) -> Option<(*mut Block, usize, usize)> {
        /// Looks at the owner's section before giving up (each a yield).
        const SPINS: usize = 64;
        if !self.gate.try_steal(SPINS) {
            return None;
        }
        let b = self.block.swap(ptr::null_mut(), AcqRel);
        let objs = self.objs.swap(0, Relaxed);
        let bytes = self.bytes.swap(0, Relaxed);
        self.gate.release();
        Some((b, objs, bytes))
    }

    /// The fork prepare handler: asks for the block (step one of the
    /// steal); [`fork_wait`](Self::fork_wait) follows a barrier.
    pub(super) fn fork_ask(&self) {
        self.gate.ask();
    }

    /// The barrier between `fork_ask` and `fork_wait` (one serves every
    /// front).
    pub(super) fn fork_barrier(&self) {
        self.gate.barrier();
    }

    /// Waits until the owner is out of its section; the gate then stays
    /// closed until [`fork_release`](Self::fork_release).
    pub(super) fn fork_wait(&self) {
        self.gate.wait_owner();
    }

    /// Opens the gate again (in the parent and the child).
    pub(super) fn fork_release(&self) {
        self.gate.release();
    }

    /// In the child of a `fork`: the owner does not exist here (see
    /// `StealGate::forget_owner`).
    pub(super) fn forget_owner(&self) {
        self.exited.store(true, Release);
        self.gate.forget_owner();
    }

    pub(super) fn set_dead(&self) {
        self.dead.store(true, Release);
    }
}

/// What [`Front::try_push`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Push {
    /// The object is in the front block.
    Done,
    /// No block, or a full one: swap it for a new one.
    Swap,
    /// The block is of another channel (and may have room): the object
    /// takes the per-CPU path, which keeps a block per channel for several
    /// channels, rather than burn a block per change of type.
    OtherChannel,
    /// The monitor is taking the block.
    Stolen,
}

/// The fronts a thread owns; marks them exited when the thread ends.
struct Owned(RefCell<Vec<Arc<Front>>>);

impl Drop for Owned {
    fn drop(&mut self) {
        // First forget the front: thread-local destructors that run after
        // this one (a value whose Drop calls kfree_rcu) must not reach a
        // front the monitor is about to take and free. They find none, and
        // cannot make one (OWNED is gone), so they take the per-CPU path.
        CURRENT.with(|c| c.set((0, ptr::null())));
        for f in self.0.borrow().iter() {
            f.exited.store(true, Release);
        }
    }
}

thread_local! {
    /// Set while this thread is inside a front section that calls out
    /// (`CallPath::swap_front` in `call.rs`: the lock validator's report handler, a
    /// tracing subscriber, may run there and retire objects): a nested
    /// call takes the per-CPU path, never a front (const, no destructor).
    static IN_SWAP: Cell<bool> = const { Cell::new(false) };
    /// The front last used, and its instance's id (no destructor: readable
    /// from any context without registering anything).
    static CURRENT: Cell<(u64, *const Front)> = const { Cell::new((0, ptr::null())) };
    static OWNED: Owned = const { Owned(RefCell::new(Vec::new())) };
}

/// Whether this thread is inside a front section that calls out (see
/// `IN_SWAP`).
#[inline]
pub(super) fn in_swap() -> bool {
    IN_SWAP.with(Cell::get)
}

/// Marks this thread inside (`true`) or out of a front section that calls
/// out; returns the previous value.
#[inline]
pub(super) fn set_in_swap(on: bool) -> bool {
    IN_SWAP.with(|c| c.replace(on))
}

/// This thread's front for instance `engine`, if it has one.
#[inline]
pub(super) fn current(engine: u64) -> Option<&'static Front> {
    let (id, f) = CURRENT.with(Cell::get);
    if id == engine && !f.is_null() {
        // SAFETY: CURRENT is only set (by `get_or_register`) to a front in
        // this thread's OWNED list, and is cleared before the list is pruned
        // and by OWNED's destructor before the list's Arcs are dropped; so
        // while it is set, OWNED holds an Arc of the front.
        Some(unsafe { &*f })
    } else {
        None
    }
}

/// Whether `f` is one of the calling thread's fronts.
pub(super) fn owned_here(f: &Front) -> bool {
    OWNED
        .try_with(|o| {
            o.0.try_borrow()
                .is_ok_and(|l| l.iter().any(|x| ptr::eq(Arc::as_ptr(x), f)))
        })
        .unwrap_or(false)
}

/// This thread's front for `engine`, made (and handed to `register`, which
/// records it with the instance) if it has none. Allocates and takes the
/// instance's `std` mutex: only where sleeping is allowed (task context,
/// not atomic, irqs on, outside RCU readers).
pub(super) fn get_or_register(
    engine: u64,
    register: impl FnOnce(Arc<Front>),
) -> Option<&'static Front> {
    OWNED
        .try_with(|owned| {
            let mut list = owned.0.borrow_mut();
            // Pruning may free the front CURRENT names: forget it first.
            CURRENT.with(|c| c.set((0, ptr::null())));
            list.retain(|f| !f.dead.load(Acquire));
            let f = match list.iter().find(|f| f.engine == engine) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(Front::new(engine));
                    register(f.clone());
                    list.push(f.clone());
                    f
                }
            };
            CURRENT.with(|c| c.set((engine, Arc::as_ptr(&f))));
            // SAFETY: as in `current`: the Arc stays in OWNED.
            unsafe { &*Arc::as_ptr(&f) }
        })
        .ok()
}
