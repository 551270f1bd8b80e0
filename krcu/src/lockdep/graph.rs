//! The lock-order graph: an edge A → B for every time a lock of class B was
//! taken while one of class A was held (in the same context), and the search
//! that finds whether a new edge closes a cycle.
//!
//! The graph is process-wide, like the kernel's, and lives in fixed lock-free
//! tables: an edge is inserted once, by whichever thread sees it first, and
//! only that thread searches for a cycle, so a cycle is reported once however
//! many threads take the same order afterwards. The search runs only when a
//! new edge appears, never on the steady-state lock path, and uses fixed
//! arrays on the stack, and returns the cycle it found in a fixed-size
//! [`Chain`]: it neither allocates nor locks, so it may run in a signal
//! handler.

use super::ClassId;
use super::class::MAX_CLASSES;
use super::table::{KeySet, Slot};
use core::panic::Location;
use core::sync::atomic::{AtomicPtr, Ordering};

const MAX_EDGES: usize = 16384; // edge slots fit in a u16

static EDGES: KeySet<MAX_EDGES> = KeySet::new();
/// Where the edge's second lock was first taken under its first.
static EDGE_AT: [AtomicPtr<Location<'static>>; MAX_EDGES] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_EDGES];

fn key(prev: ClassId, next: ClassId) -> u64 {
    (u64::from(prev.0) << 16) | u64::from(next.0)
}

fn unkey(k: u64) -> (ClassId, ClassId) {
    (ClassId((k >> 16) as u16), ClassId(k as u16))
}

/// One step of a dependency chain, for reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChainLink {
    pub(crate) from: ClassId,
    pub(crate) to: ClassId,
    pub(crate) at: Option<&'static Location<'static>>,
}

impl ChainLink {
    const EMPTY: ChainLink = ChainLink {
        from: ClassId::NONE,
        to: ClassId::NONE,
        at: None,
    };
}

/// How many links of a dependency chain a report keeps (the kernel's
/// reports rarely show more than a handful).
pub(crate) const MAX_CHAIN: usize = 64;

/// A dependency chain in fixed storage: its first [`MAX_CHAIN`] links, and
/// how many more there were.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chain {
    links: [ChainLink; MAX_CHAIN],
    len: usize,
    omitted: usize,
}

impl Chain {
    /// The links kept, from the new lock's class on.
    pub(crate) fn links(&self) -> &[ChainLink] {
        &self.links[..self.len]
    }

    /// How many links past the kept ones were left out.
    pub(crate) fn omitted(&self) -> usize {
        self.omitted
    }
}

/// Adds `prev → next`. If the edge is new and closes a cycle, returns the
/// existing chain `next → … → prev` that it closes.
pub(crate) fn add_edge(
    prev: ClassId,
    next: ClassId,
    at: Option<&'static Location<'static>>,
) -> Option<Chain> {
    match EDGES.insert(key(prev, next)) {
        Slot::Present(_) | Slot::Full => None,
        Slot::Inserted(i) => {
            if let Some(at) = at {
                let p = at as *const Location<'static> as *mut Location<'static>;
                EDGE_AT[i].store(p, Ordering::Release);
            }
            find_path(next, prev)
        }
    }
}

fn edge_at(i: usize) -> Option<&'static Location<'static>> {
    let p = EDGE_AT[i].load(Ordering::Acquire);
    // SAFETY: the pointer is null or was made from a `&'static Location`.
    unsafe { p.cast_const().as_ref() }
}

/// Breadth-first search from `from` to `to` over the edges present now.
fn find_path(from: ClassId, to: ClassId) -> Option<Chain> {
    const WORDS: usize = (MAX_CLASSES + 1).div_ceil(64);
    let mut visited = [0u64; WORDS];
    // parent[c] = (class it was reached from, edge slot) for each reached class.
    let mut parent = [(0u16, u16::MAX); MAX_CLASSES + 1];
    let mut frontier = [0u16; MAX_CLASSES + 1];
    let mut next_frontier = [0u16; MAX_CLASSES + 1];
    let (mut n, mut m);
    let mark = |v: &mut [u64; WORDS], c: u16| {
        let (w, b) = (c as usize / 64, c as usize % 64);
        let was = v[w] & (1 << b) != 0;
        v[w] |= 1 << b;
        was
    };
    mark(&mut visited, from.0);
    frontier[0] = from.0;
    n = 1;
    let mut found = from == to;
    while n > 0 && !found {
        m = 0;
        for (slot, k) in EDGES.keys() {
            let (a, b) = unkey(k);
            if frontier[..n].contains(&a.0) && !mark(&mut visited, b.0) {
                parent[b.0 as usize] = (a.0, slot as u16);
                next_frontier[m] = b.0;
                m += 1;
                if b == to {
                    found = true;
                    break;
                }
            }
        }
        frontier[..m].copy_from_slice(&next_frontier[..m]);
        n = m;
    }
    if !found {
        return None;
    }
    // The parents lead back from `to`: count the links, then fill them in
    // from the far end, keeping the first MAX_CHAIN.
    let mut total = 0;
    let mut c = to.0;
    while c != from.0 {
        total += 1;
        c = parent[c as usize].0;
    }
    let mut chain = Chain {
        links: [ChainLink::EMPTY; MAX_CHAIN],
        len: total.min(MAX_CHAIN),
        omitted: total.saturating_sub(MAX_CHAIN),
    };
    let mut c = to.0;
    for i in (0..total).rev() {
        let (p, slot) = parent[c as usize];
        if i < MAX_CHAIN {
            chain.links[i] = ChainLink {
                from: ClassId(p),
                to: ClassId(c),
                at: edge_at(slot as usize),
            };
        }
        c = p;
    }
    Some(chain)
}
