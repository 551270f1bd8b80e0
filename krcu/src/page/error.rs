//! What can go wrong: bad frees ([`PageError`]), failed allocations
//! ([`AllocError`]) and bad configurations
//! ([`BuildError`](crate::BuildError), the crate's one build error).
//!
//! The policy for bad frees is on [`PageError`].
//!
//! Uses nothing else of the crate.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Bad frees seen in hardirq or NMI context, waiting to be reported from
/// task context: lock-free and allocation-free to record.
#[derive(Debug, Default)]
pub(crate) struct DeferredBadFrees {
    pending: AtomicU64,
    last_addr: AtomicUsize,
}

impl DeferredBadFrees {
    /// Records `e` (async-signal-safe: two relaxed atomics; the address is
    /// a hint, so a torn pair under concurrent records does not matter).
    pub(crate) fn record(&self, e: &PageError) {
        self.last_addr.store(e.addr(), Relaxed);
        self.pending.fetch_add(1, Relaxed);
    }

    /// Takes what is pending: how many, and the last address.
    pub(crate) fn take(&self) -> Option<(u64, usize)> {
        if self.pending.load(Relaxed) == 0 {
            return None;
        }
        let n = self.pending.swap(0, Relaxed);
        (n > 0).then(|| (n, self.last_addr.load(Relaxed)))
    }
}

/// A free that the allocator refused. Every variant names the address.
///
/// # Error policy for bad frees
/// Freeing a page that is not allocated, with the wrong order, twice, or
/// outside the arena is never silent corruption: the page allocator checks
/// every free against its side array before touching any list.
/// With an owning [`Page`](super::Page) handle safe code can only get a
/// page of another allocator wrong; the address-based frees are `unsafe`
/// and also check for the rest.
/// - [`PageAllocator::try_free`](super::PageAllocator::try_free) and
///   [`PageAllocator::try_free_pages`](super::PageAllocator::try_free_pages)
///   return the [`PageError`], naming the address, and change nothing.
/// - [`PageAllocator::free`](super::PageAllocator::free),
///   [`PageAllocator::free_pages`](super::PageAllocator::free_pages) (and the
///   other non-`try` frees) **panic in debug builds** with that message; in
///   release builds they **count** the error
///   ([`GlobalStats::bad_frees`](super::GlobalStats::bad_frees)), **report** it
///   with `tracing::error!`, and leave the page alone (a leak, never a
///   corruption).
///
/// In hardirq (signal handler) or NMI context neither is possible (a panic
/// there aborts the process; `tracing` may allocate and lock), so a bad
/// free there is only counted ([`GlobalStats::handler_bad_frees`](super::GlobalStats::handler_bad_frees))
/// and reported from task context later, by the next
/// [`PageAllocator::drain_all`](super::PageAllocator::drain_all) (with
/// `tracing::error!`, in every build: a panic there would strike an
/// unrelated caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The address is not inside the arena, or the [`Page`](super::Page)
    /// came from another allocator.
    #[error("free of {addr:#x}: outside the page arena")]
    OutsideArena {
        /// The address passed.
        addr: usize,
    },
    /// The address is not aligned to a block of the given order.
    #[error("free of {addr:#x}: not aligned to an order-{order} block")]
    Misaligned {
        /// The address passed.
        addr: usize,
        /// The order passed.
        order: u32,
    },
    /// The order is above the maximum.
    #[error("free of {addr:#x}: order {order} is above the maximum order")]
    BadOrder {
        /// The address passed.
        addr: usize,
        /// The order passed.
        order: u32,
    },
    /// The page is free already (on a free list or a per-CPU list).
    #[error("free of {addr:#x}: double free (the page is already free)")]
    DoubleFree {
        /// The address passed.
        addr: usize,
    },
    /// The address is inside a block but not at its start: not something
    /// the allocator handed out.
    #[error("free of {addr:#x}: not the start of an allocated block")]
    NotAllocated {
        /// The address passed.
        addr: usize,
    },
    /// The block was allocated with another order.
    #[error("free of {addr:#x}: freed as order {given}, allocated as order {allocated}")]
    WrongOrder {
        /// The address passed.
        addr: usize,
        /// The order passed to the free.
        given: u32,
        /// The order it was allocated with.
        allocated: u32,
    },
}

impl PageError {
    /// The address the bad free named.
    pub fn addr(&self) -> usize {
        match *self {
            PageError::OutsideArena { addr }
            | PageError::Misaligned { addr, .. }
            | PageError::BadOrder { addr, .. }
            | PageError::DoubleFree { addr }
            | PageError::NotAllocated { addr }
            | PageError::WrongOrder { addr, .. } => addr,
        }
    }
}

/// Why an allocation failed. Allocation failure is normal (the kernel
/// returns NULL); the reason is for tests and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AllocError {
    /// The order is above the maximum (or above the per-CPU orders for
    /// [`Gfp::NO_LOCKS`](super::Gfp::NO_LOCKS)).
    #[error("order not served on this path")]
    BadOrder,
    /// [`Gfp::NO_LOCKS`](super::Gfp::NO_LOCKS): this CPU's lists hold no
    /// page of the order.
    #[error("the per-CPU lists are empty")]
    PcpEmpty,
    /// A lock-free mode found a lock taken (the per-CPU lock for
    /// `NO_LOCKS`, the zone lock for `alloc_pages_nolock`).
    #[error("a lock was taken and this mode only trylocks")]
    Contended,
    /// Not enough free memory above the watermark this allocation may use,
    /// after whatever reclaim its flags allow.
    #[error("out of memory")]
    NoMemory,
    /// The fault injector failed it.
    #[error("failed by fault injection")]
    Injected,
    /// A mode that the context forbids (`alloc_pages_nolock` or `NO_LOCKS`
    /// in hardirq or NMI context under PREEMPT_RT, where even a trylock of
    /// a sleeping spinlock is unsafe).
    #[error("not allowed in this context")]
    Context,
}
