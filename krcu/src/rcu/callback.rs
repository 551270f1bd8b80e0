//! `call_rcu`'s data: the embedded [`RcuHead`], the per-CPU lock-free
//! pending lists that `call_rcu` pushes onto, and the worker's lists
//! segmented by grace period (the kernel's `rcu_segcblist`).
//!
//! # The enqueue path
//! `call_rcu` pushes the head onto its CPU's pending list with a
//! compare-exchange on the list head (a Treiber push). It takes no lock,
//! allocates nothing and makes no system call (except, rarely, the wake-up
//! of a sleeping worker, see [`worker`](super::worker)). A signal handler
//! that interrupts a push on the same thread and pushes too simply makes the
//! interrupted compare-exchange fail once and retry. The worker takes a
//! whole list at once with an exchange, so no node is ever popped alone and
//! the ABA problem of Treiber stacks does not arise.
//!
//! # Segments
//! The worker owns everything it has taken. Per CPU it keeps callbacks in
//! segments, oldest first:
//!
//! | kernel (`rcu_segcblist`) | here |
//! |---|---|
//! | `RCU_DONE_TAIL` | `done`: its grace period has ended, ready to invoke |
//! | `RCU_WAIT_TAIL` | `wait[0]`: waiting for the grace period of its cookie |
//! | `RCU_NEXT_READY_TAIL` | `wait[1]`: waiting for a later grace period |
//! | `RCU_NEXT_TAIL` | the pending list, not yet taken, no cookie yet |
//!
//! When the worker takes a pending list it snapshots the grace-period
//! counter *after* the exchange: every callback in the list was queued
//! before the snapshot, so the grace period the cookie names began after it
//! was queued (`rcu_segcblist_accelerate`). Segments with equal cookies
//! merge; a third distinct cookie merges into the later segment, which only
//! makes it wait longer. Invocation is FIFO per CPU, which `rcu_barrier`
//! relies on.
//!
//! Uses: `sync`; in this module `seq.rs`.
#![cfg(not(loom))]

use super::seq::GpCookie;
use crate::sync::UnsafeCell;
use crate::sync::atomic::{AtomicPtr, Ordering};
use core::ptr::{self, NonNull};

/// The function a callback runs: it receives the head it was queued with.
pub type RcuCallbackFn = unsafe fn(NonNull<RcuHead>);

/// The link and function of a queued callback, embedded in the object it
/// retires (`struct rcu_head`: two words).
///
/// From `call_rcu` until its function is called, RCU owns the head: it
/// must not move, be reused or be freed.
#[doc(alias = "rcu_head")]
#[doc(alias = "callback_head")]
#[repr(C)]
pub struct RcuHead {
    next: UnsafeCell<*mut RcuHead>,
    func: UnsafeCell<Option<RcuCallbackFn>>,
}

// SAFETY: the fields are touched only by the thread that queues the head
// (before publishing it with a Release compare-exchange) and by the worker
// that took it (after an Acquire exchange): never by two threads at once.
unsafe impl Send for RcuHead {}
// SAFETY: as for Send; shared references give no access to the fields.
unsafe impl Sync for RcuHead {}

impl RcuHead {
    /// A head that is not queued.
    pub const fn new() -> Self {
        RcuHead {
            next: UnsafeCell::new(ptr::null_mut()),
            func: UnsafeCell::new(None),
        }
    }
}

impl Default for RcuHead {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for RcuHead {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RcuHead")
    }
}

/// A type that embeds an [`RcuHead`], so that a `Box` of it can be handed
/// to [`Rcu::call_rcu_box`](super::Rcu::call_rcu_box) or
/// [`kfree_rcu`](crate::kfree_rcu).
///
/// Derive it (feature `derive`, on by default): `use krcu::rcu::HasRcuHead`
/// brings both the trait and the derive, which finds the field of type
/// `RcuHead` and computes its offset with `offset_of!`.
///
/// ```
/// use krcu::rcu::{HasRcuHead, RcuHead};
///
/// #[derive(HasRcuHead)]
/// struct Node {
///     value: u64,
///     rcu: RcuHead,
/// }
/// assert_eq!(Node::RCU_HEAD_OFFSET, core::mem::offset_of!(Node, rcu));
///
/// krcu::kfree_rcu(Box::new(Node { value: 1, rcu: RcuHead::new() })).unwrap();
/// krcu::kvfree_rcu_barrier(); // the node has been dropped
/// ```
///
/// When the head's type is spelled through an alias, or the struct holds
/// several heads, mark the one to use with `#[rcu_head]`:
///
/// ```
/// use krcu::rcu::{HasRcuHead, RcuHead};
///
/// type Head = RcuHead;
///
/// #[derive(HasRcuHead)]
/// struct Node<T: Send + 'static> {
///     value: T,
///     #[rcu_head]
///     rcu: Head,
/// }
/// assert_eq!(Node::<u8>::RCU_HEAD_OFFSET, core::mem::offset_of!(Node<u8>, rcu));
/// ```
///
/// By hand, the offset is yours to get right:
///
/// ```
/// use krcu::rcu::{HasRcuHead, RcuHead};
/// use std::sync::Arc;
/// struct Node {
///     owner: Arc<()>,
///     rcu: RcuHead,
/// }
/// // SAFETY: the offset is that of the embedded head.
/// unsafe impl HasRcuHead for Node {
///     const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Node, rcu);
/// }
/// let owner = Arc::new(());
/// krcu::rcu::call_rcu_box(Box::new(Node { owner: owner.clone(), rcu: RcuHead::new() }));
/// krcu::rcu::rcu_barrier();
/// assert_eq!(Arc::strong_count(&owner), 1, "dropped through the head");
/// ```
///
/// # What the derive refuses
/// Each of these fails to compile, with an error at the offending span.
///
/// A struct with no `RcuHead` field:
///
/// ```compile_fail
/// use krcu::rcu::HasRcuHead;
///
/// #[derive(HasRcuHead)]
/// struct Node {
///     value: u64,
/// }
/// ```
///
/// Two heads, and no `#[rcu_head]` to say which one:
///
/// ```compile_fail
/// use krcu::rcu::{HasRcuHead, RcuHead};
///
/// #[derive(HasRcuHead)]
/// struct Node {
///     first: RcuHead,
///     second: RcuHead,
/// }
/// ```
///
/// An enum (or a union): no single offset holds the head in every value.
///
/// ```compile_fail
/// use krcu::rcu::{HasRcuHead, RcuHead};
///
/// #[derive(HasRcuHead)]
/// enum Node {
///     Leaf { rcu: RcuHead },
/// }
/// ```
///
/// `#[rcu_head]` on a field that is not an `RcuHead`, even one that
/// dereferences to one: the chosen field's type is checked exactly.
///
/// ```compile_fail,E0308
/// use krcu::rcu::{HasRcuHead, RcuHead};
///
/// #[derive(HasRcuHead)]
/// struct Node {
///     #[rcu_head]
///     value: u64,
///     rcu: RcuHead,
/// }
/// ```
///
/// ```compile_fail,E0308
/// use krcu::rcu::{HasRcuHead, RcuHead};
///
/// #[derive(HasRcuHead)]
/// struct Node {
///     value: u64,
///     #[rcu_head]
///     rcu: Box<RcuHead>,
/// }
/// ```
///
/// A `#[repr(packed)]` struct, whose head could be unaligned:
///
/// ```compile_fail
/// use krcu::rcu::{HasRcuHead, RcuHead};
///
/// #[derive(HasRcuHead)]
/// #[repr(C, packed)]
/// struct Node {
///     tag: u8,
///     rcu: RcuHead,
/// }
/// ```
///
/// # Safety
/// `RCU_HEAD_OFFSET` must be the byte offset of a field of type `RcuHead`
/// in `Self`.
pub unsafe trait HasRcuHead: Sized + Send + 'static {
    /// The byte offset of the embedded [`RcuHead`] (use
    /// `core::mem::offset_of!`).
    const RCU_HEAD_OFFSET: usize;

    /// What runs after the grace period, in the worker's softirq context:
    /// by default the object is dropped.
    fn rcu_callback(self: Box<Self>) {
        drop(self);
    }
}

/// The trampoline that turns a head back into the `Box<T>` it lives in.
///
/// # Safety
/// `head` must be the embedded head of a `Box<T>` leaked by `call_rcu_box`.
pub(crate) unsafe fn box_callback<T: HasRcuHead>(head: NonNull<RcuHead>) {
    // SAFETY: by the caller's contract the head lies RCU_HEAD_OFFSET bytes
    // into a live, leaked Box<T>; going back by the offset stays inside
    // that allocation and yields the pointer Box::into_raw returned.
    let obj = unsafe { head.as_ptr().byte_sub(T::RCU_HEAD_OFFSET) }.cast::<T>();
    // SAFETY: as above; the Box is reclaimed exactly once, here.
    T::rcu_callback(unsafe { Box::from_raw(obj) });
}

/// One CPU's pending list: a lock-free stack of heads.
#[derive(Debug)]
pub(crate) struct PendingList {
    head: AtomicPtr<RcuHead>,
}

impl PendingList {
    pub(crate) const fn new() -> Self {
        PendingList {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Pushes `node` with `func`. Lock-free, allocation-free and
    /// async-signal-safe.
    ///
    /// The compare-exchange is SeqCst: the caller then reads the worker's
    /// sleep state, and the worker, after announcing sleep, reads this
    /// head (a store-load handshake that needs SeqCst on both sides).
    ///
    /// # Safety
    /// `node` must point to a live `RcuHead` that is not queued, and stay
    /// valid and unmoved until `func` is called with it.
    #[inline]
    pub(crate) unsafe fn push(&self, node: NonNull<RcuHead>, func: RcuCallbackFn) {
        let n = node.as_ptr();
        // SAFETY: the head is not queued, so this thread owns its fields
        // until the compare-exchange below publishes it.
        unsafe { (*n).func.with_mut(|f| *f = Some(func)) };
        let mut cur = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: as above: not yet published.
            unsafe { (*n).next.with_mut(|p| *p = cur) };
            match self
                .head
                .compare_exchange_weak(cur, n, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Whether anything is pending (SeqCst: see [`push`](Self::push)).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head.load(Ordering::SeqCst).is_null()
    }

    /// Takes everything pushed so far, oldest first.
    pub(crate) fn take(&self) -> CbList {
        // Acquire: pairs with the pushes' Release half, making each head's
        // fields visible.
        let mut p = self.head.swap(ptr::null_mut(), Ordering::AcqRel);
        let mut list = CbList::new();
        // Reverse the stack (newest first) into a FIFO: the newest node,
        // met first, becomes the tail.
        list.tail = p;
        while !p.is_null() {
            // SAFETY: `p` was published by a push and is now owned by the
            // worker alone.
            let next = unsafe { (*p).next.with(|x| *x) };
            // SAFETY: as above.
            unsafe { (*p).next.with_mut(|x| *x = list.head) };
            list.head = p;
            list.len += 1;
            p = next;
        }
        list
    }
}

/// An intrusive FIFO of heads owned by the worker.
#[derive(Debug)]
pub(crate) struct CbList {
    head: *mut RcuHead,
    tail: *mut RcuHead,
    len: usize,
}

// SAFETY: a CbList owns its heads exclusively (they were taken from a
// pending list); moving it to another thread moves that ownership.
unsafe impl Send for CbList {}

impl CbList {
    pub(crate) const fn new() -> Self {
        CbList {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves all of `other` to the end of `self`.
    pub(crate) fn append(&mut self, other: &mut CbList) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            core::mem::swap(self, other);
            return;
        }
        // SAFETY: `self.tail` is a node this list owns.
        unsafe { (*self.tail).next.with_mut(|p| *p = other.head) };
        self.tail = other.tail;
        self.len += other.len;
        *other = CbList::new();
    }

    /// Removes the oldest head with its function.
    pub(crate) fn pop(&mut self) -> Option<(NonNull<RcuHead>, RcuCallbackFn)> {
        let h = NonNull::new(self.head)?;
        // SAFETY: the node is owned by this list.
        let (next, func) = unsafe {
            let n = h.as_ptr();
            ((*n).next.with(|p| *p), (*n).func.with_mut(|f| (*f).take()))
        };
        self.head = next;
        self.len -= 1;
        if self.head.is_null() {
            self.tail = ptr::null_mut();
        }
        let func = func.expect("krcu: a queued RcuHead without a function");
        Some((h, func))
    }
}

/// One CPU's callbacks as the worker holds them.
#[derive(Debug)]
pub(crate) struct SegCbList {
    pub(crate) done: CbList,
    wait: [(GpCookie, CbList); 2],
}

impl SegCbList {
    pub(crate) fn new() -> Self {
        SegCbList {
            done: CbList::new(),
            wait: [
                (GpCookie::COMPLETED, CbList::new()),
                (GpCookie::COMPLETED, CbList::new()),
            ],
        }
    }

    /// Adds callbacks that may run once `cookie` is done
    /// (`rcu_segcblist_accelerate`).
    pub(crate) fn accelerate(&mut self, mut list: CbList, cookie: GpCookie) {
        if list.is_empty() {
            return;
        }
        let [w0, w1] = &mut self.wait;
        if w0.1.is_empty() {
            *w0 = (cookie, list);
        } else if w0.0 == cookie && w1.1.is_empty() {
            w0.1.append(&mut list);
        } else if w1.1.is_empty() {
            *w1 = (cookie, list);
        } else {
            // Merge into the later segment; waiting longer is always safe.
            if cookie.at_or_after(w1.0) {
                w1.0 = cookie;
            }
            w1.1.append(&mut list);
        }
    }

    /// Moves the segments whose grace period has ended to `done`
    /// (`rcu_segcblist_advance`), given the counter `cur`.
    pub(crate) fn advance(&mut self, cur: u64) {
        let [w0, w1] = &mut self.wait;
        if !w0.1.is_empty() && w0.0.done_at(cur) {
            self.done.append(&mut w0.1);
            core::mem::swap(w0, w1);
        }
        if w0.1.is_empty() && !w1.1.is_empty() {
            core::mem::swap(w0, w1);
        }
        let [w0, w1] = &mut self.wait;
        if !w0.1.is_empty() && w0.0.done_at(cur) {
            self.done.append(&mut w0.1);
            core::mem::swap(w0, w1);
        }
    }

    /// The oldest cookie still waited for.
    pub(crate) fn oldest_wait(&self) -> Option<GpCookie> {
        let w0 = &self.wait[0];
        (!w0.1.is_empty()).then_some(w0.0)
    }

    /// Callbacks held (all segments).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.done.len() + self.wait[0].1.len() + self.wait[1].1.len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
