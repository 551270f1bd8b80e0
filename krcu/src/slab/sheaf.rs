//! Sheaves and the barn (Linux 6.18's `struct slab_sheaf` and
//! `struct node_barn`).
//!
//! A sheaf is an array of up to `capacity` free objects of one cache, in
//! one heap allocation made when the sheaf is (sheaves are recycled through
//! the barn, so that happens rarely). Whoever holds the sheaf's pointer
//! owns it whole: a thread (its own `main` or `rcu_free` sheaf), a CPU
//! under its lock, the barn under its lock, or RCU (a submitted `rcu_free`
//! sheaf, through the [`RcuHead`] it embeds).
//!
//! The barn keeps full and empty sheaves in two lists linked through the
//! sheaves, each with a limit, under one lock: a thread whose sheaf runs
//! empty gives it for a full one, one whose sheaf fills gives it for an
//! empty one, and so whole sheaves move between threads without touching
//! the slabs.
//!
//! A thread's spare sheaf and its list of `rcu_free` sheaves waiting for
//! their grace period ([`Recycle`], used by `recycle.rs`) are here too.
//!
//! Owns: [`Sheaf`], [`CpuSheaves`], [`Barn`], [`Recycle`]. Uses: the lock type, the RCU
//! head.

use crate::domain::Domain;
use crate::lock::SpinLock;
use core::ptr;

/// An array of free objects (`struct slab_sheaf`).
#[doc(alias = "slab_sheaf")]
#[repr(C)]
pub(crate) struct Sheaf {
    /// Its link through RCU while it is a submitted `rcu_free` sheaf (first
    /// field: the callback finds the sheaf at the head's address).
    #[cfg(not(loom))]
    pub(super) head: crate::rcu::RcuHead,
    /// The `CacheCore` it was submitted for (an `Arc` leaked while in
    /// flight; opaque here).
    #[cfg(not(loom))]
    pub(super) core: *const (),
    /// The grace period its objects wait for while it waits on its
    /// thread's list of sheaves to recycle (`recycle.rs`).
    #[cfg(not(loom))]
    pub(super) gp: crate::rcu::GpCookie,
    /// Objects in it: `objs[..len]`.
    pub(super) len: usize,
    /// Its link on a barn list.
    pub(super) next: *mut Sheaf,
    pub(super) objs: Box<[*mut u8]>,
}

impl Sheaf {
    /// A new empty sheaf of `capacity` objects (allocates).
    pub(super) fn new_raw(capacity: usize) -> *mut Sheaf {
        Box::into_raw(Box::new(Sheaf {
            #[cfg(not(loom))]
            head: crate::rcu::RcuHead::new(),
            #[cfg(not(loom))]
            core: ptr::null(),
            #[cfg(not(loom))]
            gp: crate::rcu::GpCookie::COMPLETED,
            len: 0,
            next: ptr::null_mut(),
            objs: vec![ptr::null_mut(); capacity].into_boxed_slice(),
        }))
    }

    #[inline(always)]
    pub(super) fn is_full(&self) -> bool {
        self.len == self.objs.len()
    }

    #[inline(always)]
    pub(super) fn capacity(&self) -> usize {
        self.objs.len()
    }

    /// Frees an empty sheaf's memory.
    ///
    /// # Safety
    /// `s` came from [`new_raw`](Self::new_raw), is owned by the caller and
    /// holds no object.
    pub(super) unsafe fn free_raw(s: *mut Sheaf) {
        // SAFETY: per the contract.
        unsafe {
            debug_assert_eq!((*s).len, 0, "a sheaf freed with objects in it");
            drop(Box::from_raw(s));
        }
    }
}

/// The objects in the sheaf `s` (0 for none).
pub(super) fn len(s: *mut Sheaf) -> usize {
    if s.is_null() {
        0
    } else {
        // SAFETY: callers own the sheaf they pass.
        unsafe { (*s).len }
    }
}

/// A CPU's sheaves (`struct slub_percpu_sheaves`), under its lock.
#[doc(alias = "slub_percpu_sheaves")]
pub(crate) struct CpuSheaves {
    pub(super) main: *mut Sheaf,
    pub(super) spare: *mut Sheaf,
    /// Where signal handlers (and threads without a slot of their own)
    /// retire objects with `kfree_rcu_sheaf`.
    pub(super) rcu_free: *mut Sheaf,
}

impl Default for CpuSheaves {
    fn default() -> Self {
        CpuSheaves {
            main: ptr::null_mut(),
            spare: ptr::null_mut(),
            rcu_free: ptr::null_mut(),
        }
    }
}

// SAFETY: the sheaves are owned by whoever holds the lock; which thread
// that is does not matter.
unsafe impl Send for CpuSheaves {}

/// A list of sheaves linked through `next`, with its length.
pub(super) struct SheafList {
    head: *mut Sheaf,
    pub(super) len: usize,
}

impl SheafList {
    const fn new() -> Self {
        SheafList {
            head: ptr::null_mut(),
            len: 0,
        }
    }

    /// # Safety
    /// `s` is owned by the caller, on no list; the list takes it.
    unsafe fn push(&mut self, s: *mut Sheaf) {
        // SAFETY: per the contract.
        unsafe { (*s).next = self.head };
        self.head = s;
        self.len += 1;
    }

    fn pop(&mut self) -> Option<*mut Sheaf> {
        if self.head.is_null() {
            return None;
        }
        let s = self.head;
        // SAFETY: sheaves on the list are the list's; `s` leaves it.
        self.head = unsafe { (*s).next };
        self.len -= 1;
        Some(s)
    }
}

// SAFETY: as for CpuSheaves.
unsafe impl Send for SheafList {}

/// The barn's lists (`struct node_barn`).
pub(super) struct BarnLists {
    pub(super) full: SheafList,
    pub(super) empty: SheafList,
}

/// A cache's barn: full and empty sheaves, each list up to `limit`.
#[doc(alias = "node_barn")]
pub(crate) struct Barn {
    pub(super) lists: SpinLock<BarnLists>,
    pub(super) limit: usize,
}

impl Barn {
    pub(super) fn new(domain: &Domain, limit: usize) -> Barn {
        Barn {
            lists: SpinLock::named(
                domain,
                "barn->lock",
                BarnLists {
                    full: SheafList::new(),
                    empty: SheafList::new(),
                },
            ),
            limit,
        }
    }

    /// Full and empty sheaves held now.
    pub(super) fn counts(&self) -> (usize, usize) {
        let l = self.lists.lock();
        (l.full.len, l.empty.len)
    }
}

impl BarnLists {
    pub(super) fn take_full(&mut self) -> Option<*mut Sheaf> {
        self.full.pop()
    }

    pub(super) fn take_empty(&mut self) -> Option<*mut Sheaf> {
        self.empty.pop()
    }

    /// Files a full (or non-empty) sheaf; gives it back if the list is at
    /// `limit`.
    pub(super) fn put_full(&mut self, s: *mut Sheaf, limit: usize) -> Result<(), *mut Sheaf> {
        if self.full.len >= limit {
            return Err(s);
        }
        // SAFETY: the caller owns `s`; the list takes it.
        unsafe { self.full.push(s) };
        Ok(())
    }

    /// Files an empty sheaf; gives it back if the list is at `limit`.
    pub(super) fn put_empty(&mut self, s: *mut Sheaf, limit: usize) -> Result<(), *mut Sheaf> {
        if self.empty.len >= limit {
            return Err(s);
        }
        // SAFETY: the caller owns `s`; the list takes it.
        unsafe { self.empty.push(s) };
        Ok(())
    }
}

#[cfg(not(loom))]
/// A thread's spare sheaf and its `rcu_free` sheaves waiting for their
/// grace periods (`recycle.rs` says how they are used).
pub(super) struct Recycle {
    /// A sheaf of free objects (a recycled one, for the next allocation
    /// that finds `main` empty) or an empty one (for the next `rcu_free`
    /// sheaf), or null.
    pub(super) spare: *mut Sheaf,
    /// Full `rcu_free` sheaves, oldest first, each stamped with its grace
    /// period.
    pub(super) waiting: Fifo,
}

#[cfg(not(loom))]
impl Recycle {
    pub(super) const fn new() -> Recycle {
        Recycle {
            spare: ptr::null_mut(),
            waiting: Fifo::new(),
        }
    }
}

/// Sheaves in order, linked through `next`.
#[cfg(not(loom))]
pub(super) struct Fifo {
    head: *mut Sheaf,
    tail: *mut Sheaf,
    pub(super) len: usize,
}

#[cfg(not(loom))]
impl Fifo {
    /// An empty list.
    pub(super) const fn new() -> Fifo {
        Fifo {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
            len: 0,
        }
    }

    /// Appends `s`.
    ///
    /// # Safety
    /// `s` is owned by the caller and on no list; the list takes it.
    pub(super) unsafe fn push_back(&mut self, s: *mut Sheaf) {
        // SAFETY: per the contract; the tail is the list's.
        unsafe {
            (*s).next = ptr::null_mut();
            if self.tail.is_null() {
                self.head = s;
            } else {
                (*self.tail).next = s;
            }
        }
        self.tail = s;
        self.len += 1;
    }

    /// The oldest sheaf, still on the list.
    pub(super) fn front(&self) -> Option<*mut Sheaf> {
        (!self.head.is_null()).then_some(self.head)
    }

    /// Takes the oldest sheaf off.
    pub(super) fn pop_front(&mut self) -> Option<*mut Sheaf> {
        let s = self.front()?;
        // SAFETY: sheaves on the list are the list's; `s` leaves it.
        self.head = unsafe { core::mem::replace(&mut (*s).next, ptr::null_mut()) };
        if self.head.is_null() {
            self.tail = ptr::null_mut();
        }
        self.len -= 1;
        Some(s)
    }
}
