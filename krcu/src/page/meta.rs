//! Page metadata: the state word and the list links of each page frame
//! (the kernel's `struct page`, reduced), kept in a side array by the zone.
//!
//! Each page frame (pfn = page index in the arena) has a [`PageMeta`] in a
//! side array, never inside the page: a state word (what the block headed
//! by this page is: free in the buddy, on a per-CPU list, allocated, ...,
//! with its order and migratetype) and two links (`next`, `prev`, pfn
//! indices) for the intrusive lists. Only the first page of a block (its
//! head) carries a state other than [`Kind::Tail`]; merging clears the
//! absorbed buddy's head, splitting sets the new halves'. So no allocation
//! or free ever walks the pages of a block.
//!
//! # Ownership and memory ordering
//! A page's links belong to whoever owns the page: the zone lock while it
//! is in the buddy, its CPU's pcp lock while on a per-CPU list, nobody while
//! allocated. The links are atomics accessed `Relaxed`: the lock that hands
//! the page over (an `Acquire` take after a `Release` drop) orders them.
//! The state word is also read without a lock by the free path's checks and
//! changed from `Allocated` to `Freeing` with a compare-exchange, so that of
//! two racing frees of one block exactly one wins and the other reports a
//! double free.
//!
//! Uses only the migratetype of `gfp`.

use super::gfp::Migratetype;
use crate::sync::atomic::{AtomicU32, Ordering::*};

/// "No page" in a pfn link.
pub(crate) const NONE: u32 = u32::MAX;

/// What the block headed by a page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Kind {
    /// Not the head of any block.
    Tail = 0,
    /// Head of a free block on a buddy free list (`PageBuddy`).
    Buddy = 1,
    /// Head of a free block on a per-CPU list.
    Pcp = 2,
    /// Head of an allocated block.
    Allocated = 3,
    /// Being freed: won the race against any other free of this block.
    Freeing = 4,
    /// On the deferred-free list, waiting for the zone lock.
    Deferred = 5,
}

/// A page state word: kind, order and migratetype packed in a `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State(u32);

impl State {
    pub(crate) const TAIL: State = State(0);

    #[inline]
    pub(crate) fn new(kind: Kind, order: u32, mt: Migratetype) -> State {
        State((kind as u32) << 8 | (mt as u32) << 4 | order)
    }
    #[inline]
    pub(crate) fn kind(self) -> Kind {
        match self.0 >> 8 {
            1 => Kind::Buddy,
            2 => Kind::Pcp,
            3 => Kind::Allocated,
            4 => Kind::Freeing,
            5 => Kind::Deferred,
            _ => Kind::Tail,
        }
    }
    #[inline]
    pub(crate) fn order(self) -> u32 {
        self.0 & 0xf
    }
    #[inline]
    pub(crate) fn mt(self) -> Migratetype {
        Migratetype::from_index(((self.0 >> 4) & 0xf) as usize)
    }
}

/// The metadata of one page frame (the kernel's `struct page`, reduced).
#[derive(Debug)]
pub(crate) struct PageMeta {
    state: AtomicU32,
    next: AtomicU32,
    prev: AtomicU32,
}

impl PageMeta {
    pub(super) fn new() -> Self {
        PageMeta {
            state: AtomicU32::new(0),
            next: AtomicU32::new(NONE),
            prev: AtomicU32::new(NONE),
        }
    }
    #[inline]
    pub(crate) fn state(&self) -> State {
        State(self.state.load(Acquire))
    }
    #[inline]
    pub(crate) fn set_state(&self, s: State) {
        self.state.store(s.0, Release);
    }
    /// Moves the state from `from` to `to` if it still is `from`.
    #[inline]
    pub(crate) fn transition(&self, from: State, to: State) -> bool {
        self.state
            .compare_exchange(from.0, to.0, AcqRel, Acquire)
            .is_ok()
    }
    #[inline]
    pub(crate) fn next(&self) -> u32 {
        self.next.load(Relaxed)
    }
    #[inline]
    pub(crate) fn set_next(&self, pfn: u32) {
        self.next.store(pfn, Relaxed);
    }
    #[inline]
    pub(super) fn prev(&self) -> u32 {
        self.prev.load(Relaxed)
    }
    #[inline]
    pub(super) fn set_prev(&self, pfn: u32) {
        self.prev.store(pfn, Relaxed);
    }
}
