//! Thread-owned sheaves: a thread's `main` and `rcu_free` sheaf of a cache
//! are its own, so that the allocation, free and `kfree_rcu` fast paths
//! are plain loads and stores: no atomic read-modify-write and no lock.
//! Only exchanges (once per sheaf) go to the CPU level or the barn. A slot
//! also holds the thread's spare sheaf and its `rcu_free` sheaves waiting
//! for their grace period, which the thread recycles itself
//! (`recycle.rs`); a taker submits waiting sheaves to `call_rcu`.
//!
//! # Taking a thread's sheaves without its cooperation
//! [`shrink`](super::SlabCache::shrink), `submit_rcu_sheaves` and the
//! cache's drop must take sheaves from idle or exited threads. Each slot
//! has the front blocks' steal gate (`kvfree/steal.rs`): the owner touches
//! its sheaves only inside a section (`busy = true`; barrier B_o; load
//! `steal` (Acquire), leaving if set; ... ; `busy = false` (Release)); the
//! taker sets `steal` (SeqCst), runs barrier B_m, waits while `busy`
//! (Acquire), takes the sheaves, and clears `steal` (Release). B_o/B_m are
//! a compiler fence and `membarrier()` where membarrier is available (the
//! fast path then has no fence), two SeqCst fences otherwise. Either the
//! owner's `busy = true` is seen by the taker (which waits), or the
//! owner's load of `steal` sees it set (and the owner leaves its sheaves
//! alone); an owner that reads the final `steal = false` also sees the
//! null pointers the taker left. The loom model of the gate is
//! `tests/loom_steal.rs`.
//!
//! # Lifetimes (the invariant)
//! A slot is shared by `Arc` between the thread (its `OWNED` list) and the
//! cache's registry, so its memory outlives both. The cache is never
//! reached from a slot: a slot holds only sheaves and a cache id. When the
//! cache is dropped it takes every slot's sheaves with the steal gate and
//! never releases the gate (`dead`): no thread touches a dropped cache's
//! sheaves, and the thread forgets the slot at its next registration.
//! When a thread exits, `OWNED`'s destructor clears `CURRENT` (so later
//! destructors that free into the cache take the CPU path) and marks its
//! slots `exited`; the cache takes their sheaves at its next shrink,
//! registration of another thread, or drop (their `rcu_free` sheaves also
//! at `submit_rcu_sheaves`). Threads whose
//! thread-locals are gone use the CPU level.
//!
//! Signal handlers (hardirq or NMI context) never use a slot: they may
//! have interrupted its owner inside its section.
//!
//! Owns: [`ThreadSlot`], [`Registry`] and the thread-locals that find a
//! slot. Uses: the steal gate, `sheaf.rs`.
#![cfg(not(loom))]

use super::sheaf::{Recycle, Sheaf};
use crate::kvfree::steal::StealGate;
use crate::sync::UnsafeCell;
use core::cell::{Cell, RefCell};
use core::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard};

/// One thread's sheaves of one cache.
pub(super) struct ThreadSlot {
    cache: u64,
    gate: StealGate,
    /// The owner's sheaves: `main` (alloc and free) and `rcu_free`; the
    /// owner's inside a section, the taker's while it holds the gate.
    main: UnsafeCell<*mut Sheaf>,
    rcu: UnsafeCell<*mut Sheaf>,
    /// The owner's spare sheaf and its `rcu_free` sheaves waiting for
    /// their grace period (`recycle.rs`), as `main` and `rcu`.
    recycle: UnsafeCell<Recycle>,
    /// Fast-path hits (single writer: the owner; load + store).
    pub(super) alloc_hits: AtomicU64,
    pub(super) free_hits: AtomicU64,
    /// Sheaves the owner added to its waiting list (single writer: the
    /// owner; load + store), and that count at a taker's last look.
    pub(super) waiting_added: AtomicU64,
    waiting_seen: AtomicU64,
    /// Odd while the owner recycles sheaves it took off its waiting list
    /// (which no taker can find then), raised (SeqCst) inside its section
    /// and again once they are filed; and the fork generation it was
    /// raised in (a recycle of a thread of the parent is nobody's in a
    /// child).
    pub(super) recycle_seq: AtomicU64,
    pub(super) recycle_fork: AtomicU64,
    exited: AtomicBool,
    /// The cache is gone: the gate stays closed for good.
    dead: AtomicBool,
}

// SAFETY: the sheaf pointers are owned by the thread or the taker as the
// gate decides (module doc); everything else is atomics.
unsafe impl Send for ThreadSlot {}
// SAFETY: as for Send.
unsafe impl Sync for ThreadSlot {}

/// Which threads' waiting lists (`recycle.rs`) a taker takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Chains {
    /// Those whose owner added none since the previous such look (an
    /// idle thread's: nothing else would ever free them).
    Idle,
    /// Every one.
    All,
}

/// Which of a slot's sheaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Which {
    Main,
    Rcu,
}

impl ThreadSlot {
    fn new(cache: u64) -> ThreadSlot {
        ThreadSlot {
            cache,
            gate: StealGate::new(!crate::rcu::membarrier::available()),
            main: UnsafeCell::new(ptr::null_mut()),
            rcu: UnsafeCell::new(ptr::null_mut()),
            recycle: UnsafeCell::new(Recycle::new()),
            alloc_hits: AtomicU64::new(0),
            free_hits: AtomicU64::new(0),
            waiting_added: AtomicU64::new(0),
            waiting_seen: AtomicU64::new(0),
            recycle_seq: AtomicU64::new(0),
            recycle_fork: AtomicU64::new(0),
            exited: AtomicBool::new(false),
            dead: AtomicBool::new(false),
        }
    }

    #[inline(always)]
    fn cell(&self, which: Which) -> &UnsafeCell<*mut Sheaf> {
        match which {
            Which::Main => &self.main,
            Which::Rcu => &self.rcu,
        }
    }

    /// The owner runs `f` on its sheaf pointer inside a section; None if a
    /// taker holds the gate.
    #[inline(always)]
    pub(super) fn with<R>(&self, which: Which, f: impl FnOnce(&mut *mut Sheaf) -> R) -> Option<R> {
        if !self.gate.begin() {
            return None;
        }
        // SAFETY: inside the owner's section with no steal asked, the
        // pointer (and the sheaf it names) is the owner's (module doc).
        let r = self.cell(which).with_mut(|p| f(unsafe { &mut *p }));
        self.gate.end();
        Some(r)
    }

    /// The owner runs `f` on all its sheaves inside one section; None if a
    /// taker holds the gate. `f` must not call into the cache (a nested
    /// section would end this one early): no destructor runs in it.
    #[inline]
    pub(super) fn with_all<R>(&self, f: impl FnOnce(Sheaves<'_>) -> R) -> Option<R> {
        if !self.gate.begin() {
            return None;
        }
        // SAFETY: inside the owner's section with no steal asked, the
        // pointers (and the sheaves they name) are the owner's (module
        // doc); the three cells are distinct.
        let r = self.main.with_mut(|m| {
            self.rcu.with_mut(|r| {
                // SAFETY: see above.
                self.recycle.with_mut(|x| unsafe {
                    f(Sheaves {
                        main: &mut *m,
                        rcu: &mut *r,
                        recycle: &mut *x,
                    })
                })
            })
        });
        self.gate.end();
        Some(r)
    }

    /// The owner takes its sheaf out (null if it has none or a taker holds
    /// the gate).
    pub(super) fn take(&self, which: Which) -> *mut Sheaf {
        self.with(which, |p| core::mem::replace(p, ptr::null_mut()))
            .unwrap_or(ptr::null_mut())
    }

    /// The owner puts a sheaf in its empty slot; gives it back if a taker
    /// holds the gate or the slot is not empty.
    pub(super) fn install(&self, which: Which, s: *mut Sheaf) -> Result<(), *mut Sheaf> {
        self.with(which, |p| {
            if p.is_null() {
                *p = s;
                Ok(())
            } else {
                Err(s)
            }
        })
        .unwrap_or(Err(s))
    }

    /// Bumps a single-writer counter (the owner's).
    #[inline(always)]
    pub(super) fn hit(c: &AtomicU64) {
        c.store(c.load(Relaxed) + 1, Relaxed);
    }

    /// A taker's: with the gate held, takes out the sheaves of the kinds
    /// `which` selects and runs `f` on each: `main` and the spare as
    /// [`Which::Main`] (objects free to hand out, or none), `rcu_free` and
    /// each sheaf waiting for its grace period as [`Which::Rcu`] (objects
    /// readers may still reach: submitted to `call_rcu`, whose grace period
    /// starts later than the one they waited for). Returns whether it left
    /// any sheaf in place.
    fn take_all(
        &self,
        which: &impl Fn(Which) -> bool,
        chains: Chains,
        f: &mut impl FnMut(*mut Sheaf, Which),
    ) -> bool {
        let mut kept = false;
        for w in [Which::Main, Which::Rcu] {
            // SAFETY: the caller holds the gate: the pointers are ours.
            let p = self.cell(w).with_mut(|p| unsafe { &mut *p });
            if p.is_null() {
                continue;
            }
            if which(w) {
                f(core::mem::replace(p, ptr::null_mut()), w);
            } else {
                kept = true;
            }
        }
        // SAFETY: as above.
        let x = self.recycle.with_mut(|x| unsafe { &mut *x });
        if !x.spare.is_null() {
            if which(Which::Main) {
                f(core::mem::replace(&mut x.spare, ptr::null_mut()), Which::Main);
            } else {
                kept = true;
            }
        }
        if x.waiting.len > 0 {
            let take = match chains {
                Chains::All => true,
                Chains::Idle => {
                    // Only takers (under the registry's lock) write `seen`.
                    let added = self.waiting_added.load(Relaxed);
                    self.waiting_seen.swap(added, Relaxed) == added
                }
            };
            if take {
                while let Some(s) = x.waiting.pop_front() {
                    f(s, Which::Rcu);
                }
            } else {
                kept = true;
            }
        }
        kept
    }
}

/// The owner's view of all its sheaves in one section ([`ThreadSlot::with_all`]).
pub(super) struct Sheaves<'a> {
    pub(super) main: &'a mut *mut Sheaf,
    pub(super) rcu: &'a mut *mut Sheaf,
    pub(super) recycle: &'a mut Recycle,
}

struct Entry(Arc<ThreadSlot>);

/// A cache's slots, one per thread that used it.
pub(super) struct Registry {
    /// A `std` mutex: taken only in task context (registration, shrink,
    /// statistics, drop), never in a signal handler. Sheaves taken are
    /// handled under it, so it comes before the CPU, barn and node locks.
    slots: Mutex<Vec<Entry>>,
    /// Hits of the slots forgotten (exited threads).
    gone_alloc_hits: AtomicU64,
    gone_free_hits: AtomicU64,
    /// Set by `retire` (under the lock): no more slots.
    closed: AtomicBool,
}

impl Registry {
    pub(super) fn new() -> Registry {
        Registry {
            slots: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            gone_alloc_hits: AtomicU64::new(0),
            gone_free_hits: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the sheaves of every slot (of exited ones only with
    /// `exited_only`) whose owner is out of its section, handing each to
    /// `f`; forgets exited slots once emptied. Returns the sum of `f`'s
    /// results. Only the sheaves `which` selects are taken; a slot whose
    /// owner stays inside its section (64 looks) is left for next time.
    /// Each slot's steal runs its own barrier (a `membarrier` each).
    pub(super) fn take_where(
        &self,
        exited_only: bool,
        which: impl Fn(Which) -> bool,
        chains: Chains,
        f: &mut impl FnMut(*mut Sheaf, Which) -> usize,
    ) -> usize {
        /// Looks at an owner inside its section before giving up.
        const SPINS: usize = 64;
        let mut sum = 0;
        let mut gone_hits = (0, 0);
        self.lock().retain(|Entry(slot)| {
            let exited = slot.exited.load(Acquire);
            if exited_only && !exited {
                return true;
            }
            if !slot.gate.try_steal(SPINS) {
                return true;
            }
            let kept = slot.take_all(&which, chains, &mut |s, w| sum += f(s, w));
            slot.gate.release();
            let forget = exited && !kept;
            if forget {
                gone_hits.0 += slot.alloc_hits.load(Relaxed);
                gone_hits.1 += slot.free_hits.load(Relaxed);
            }
            !forget
        });
        self.gone_alloc_hits.fetch_add(gone_hits.0, Relaxed);
        self.gone_free_hits.fetch_add(gone_hits.1, Relaxed);
        sum
    }

    /// The cache is being dropped: takes every slot's sheaves for good
    /// (waiting for owners inside their sections, which never block
    /// there), handing each to `f`.
    pub(super) fn retire(&self, mut f: impl FnMut(*mut Sheaf, Which)) {
        let slots: Vec<Entry> = {
            let mut list = self.lock();
            // Under the lock: no slot registers after the drain.
            self.closed.store(true, Relaxed);
            list.drain(..).collect()
        };
        for Entry(slot) in &slots {
            slot.gate.ask();
        }
        if let Some(Entry(s)) = slots.first() {
            s.gate.barrier();
        }
        for Entry(slot) in &slots {
            slot.gate.wait_owner();
            slot.take_all(&|_| true, Chains::All, &mut f);
            slot.dead.store(true, Release);
        }
    }

    /// Registers `slot` (a thread's first use of the cache).
    /// False (and nothing registered) once the cache is being dropped: a
    /// slot registered after `retire` would hold a sheaf nobody takes.
    fn add(&self, slot: Arc<ThreadSlot>) -> bool {
        let mut list = self.lock();
        if self.closed.load(Relaxed) {
            return false;
        }
        list.push(Entry(slot));
        true
    }

    /// The slots whose owner is recycling now (in this process, not a
    /// parent's thread), with their sequence then: a barrier waits until
    /// each has moved on.
    pub(super) fn recycling(&self) -> Vec<(Arc<ThreadSlot>, u64)> {
        let fork = crate::fork::generation();
        self.lock()
            .iter()
            .filter_map(|Entry(s)| {
                let seq = s.recycle_seq.load(SeqCst);
                (seq % 2 == 1 && s.recycle_fork.load(SeqCst) == fork).then(|| (s.clone(), seq))
            })
            .collect()
    }

    /// How many slots are registered (each may hold a `main` sheaf).
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The fast-path hits of every live slot.
    pub(super) fn hits(&self) -> (u64, u64) {
        let gone = (
            self.gone_alloc_hits.load(Relaxed),
            self.gone_free_hits.load(Relaxed),
        );
        self.lock().iter().fold(gone, |(a, f), Entry(s)| {
            (
                a + s.alloc_hits.load(Relaxed),
                f + s.free_hits.load(Relaxed),
            )
        })
    }
}

/// The slots a thread owns; marks them exited when the thread ends.
struct Owned(RefCell<Vec<Arc<ThreadSlot>>>);

impl Drop for Owned {
    fn drop(&mut self) {
        // First forget the slot: destructors that run after this one and
        // free into a cache must not reach a slot the cache may take and
        // forget; they find none and take the CPU path.
        CURRENT.with(|c| {
            for e in c {
                e.set(NO_ENTRY);
            }
        });
        EXITING.with(|e| e.set(true));
        for s in self.0.borrow().iter() {
            s.exited.store(true, Release);
        }
    }
}

/// How many caches' slots a thread finds on its fast path: a thread
/// alternating between up to this many caches hits its sheaves in each.
const RECENT: usize = 4;

/// An empty entry of `CURRENT` (cache ids start at 1).
const NO_ENTRY: (u64, *const ThreadSlot) = (0, ptr::null());

thread_local! {
    /// The slots used most recently, newest first, with their caches' ids
    /// (no destructor: readable from any context). Plain loads on the fast
    /// path; written only on a miss (`find_or_register`).
    static CURRENT: [Cell<(u64, *const ThreadSlot)>; RECENT] =
        const { [const { Cell::new(NO_ENTRY) }; RECENT] };
    static OWNED: Owned = const { Owned(RefCell::new(Vec::new())) };
    /// Set when `OWNED`'s destructor runs: the thread's thread-locals are
    /// being destroyed (no destructor of a retired object runs inline
    /// from then on, see `recycle.rs`).
    static EXITING: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread has begun destroying its thread-locals (as
/// far as this module can tell: from the destructor of its slot list on).
pub(super) fn exiting() -> bool {
    EXITING.with(Cell::get)
}

/// This thread's slot for cache `id`, if it is among the last [`RECENT`]
/// used.
#[inline(always)]
pub(super) fn current(id: u64) -> Option<&'static ThreadSlot> {
    CURRENT.with(|entries| {
        for e in entries {
            let (c, s) = e.get();
            if c == id {
                // SAFETY: an entry only names a slot in this thread's OWNED
                // list, and is cleared before the list drops that slot's
                // Arc (pruning) and by OWNED's destructor; so while set,
                // OWNED keeps the slot alive.
                return Some(unsafe { &*s });
            }
        }
        None
    })
}

/// Makes `slot` (of cache `id`) the newest entry of `CURRENT`, the oldest
/// giving way.
fn remember(id: u64, slot: *const ThreadSlot) {
    CURRENT.with(|entries| {
        let mut carry = (id, slot);
        for e in entries {
            let old = e.replace(carry);
            if old.0 == id || old.0 == 0 {
                // The entry was this cache's (now newer) or empty: stop.
                break;
            }
            carry = old;
        }
    });
}

/// Clears the entry of `CURRENT` naming `slot`, if any.
fn forget(slot: *const ThreadSlot) {
    CURRENT.with(|entries| {
        for e in entries {
            if e.get().1 == slot {
                e.set(NO_ENTRY);
            }
        }
    });
}

/// This thread's slot for cache `id`, found among its slots or made and
/// registered with `registry` (which first takes back the sheaves of
/// exited threads through `reclaim`). None where thread-locals are gone.
/// Allocates and takes the registry's mutex: task context only.
#[cold]
pub(super) fn find_or_register(
    id: u64,
    registry: &Registry,
    reclaim: impl FnOnce(),
) -> Option<&'static ThreadSlot> {
    OWNED
        .try_with(|owned| {
            let mut list = owned.0.try_borrow_mut().ok()?;
            // Pruning may free slots CURRENT names: forget them first.
            list.retain(|s| {
                let dead = s.dead.load(Acquire);
                if dead {
                    forget(Arc::as_ptr(s));
                }
                !dead
            });
            let slot = match list.iter().find(|s| s.cache == id) {
                Some(s) => s.clone(),
                None => {
                    reclaim();
                    let s = Arc::new(ThreadSlot::new(id));
                    if !registry.add(s.clone()) {
                        return None;
                    }
                    list.push(s.clone());
                    s
                }
            };
            remember(id, Arc::as_ptr(&slot));
            // SAFETY: as in `current`: the Arc stays in OWNED.
            Some(unsafe { &*Arc::as_ptr(&slot) })
        })
        .ok()
        .flatten()
}
