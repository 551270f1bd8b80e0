//! The lock-order graph: an edge A → B for every time a lock of class B was
//! taken while one of class A was held (in the same context), and the search
//! that finds whether a new edge closes a cycle.
//!
//! The graph is process-wide, like the kernel's, and lives in fixed lock-free
//! tables: an edge is inserted once, by whichever thread sees it first, and
//! only that thread searches for a cycle, so a cycle is reported once however
//! many threads take the same order afterwards. The search runs only when a
//! new edge appears, never on the steady-state lock path, and uses fixed
//! arrays in static scratch memory (about 33 KB: too much for a signal
//! handler's alternate stack), and returns the cycle it found in a
//! fixed-size [`Chain`]: it neither allocates nor locks, so it may run in a
//! signal handler.
//!
//! The scratch is taken with a compare-exchange on an owner word. A search
//! that finds it taken by another thread waits (a search is bounded and
//! holds no lock); one that finds it taken by its own thread (a signal
//! handler that interrupted a search), or waits too long (the owner was
//! lost in a `fork` child), skips its check and counts it
//! ([`skipped_searches`]): a missed report, never a deadlock.

use super::ClassId;
use super::class::MAX_CLASSES;
use super::table::{KeySet, Slot};
use core::cell::UnsafeCell;
use core::panic::Location;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

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

const WORDS: usize = (MAX_CLASSES + 1).div_ceil(64);

/// The search's arrays.
struct Scratch {
    visited: [u64; WORDS],
    /// parent[c] = (class it was reached from, edge slot) for each reached
    /// class.
    parent: [(u16, u16); MAX_CLASSES + 1],
    frontier: [u16; MAX_CLASSES + 1],
    next_frontier: [u16; MAX_CLASSES + 1],
}

/// The one [`Scratch`], with the id of the thread using it (0: free).
struct ScratchCell {
    owner: AtomicUsize,
    data: UnsafeCell<Scratch>,
}

// SAFETY: `data` is only accessed through a `ScratchGuard`, of which at most
// one exists at a time (the owner word is won by compare-exchange).
unsafe impl Sync for ScratchCell {}

static SCRATCH: ScratchCell = ScratchCell {
    owner: AtomicUsize::new(0),
    data: UnsafeCell::new(Scratch {
        visited: [0; WORDS],
        parent: [(0, u16::MAX); MAX_CLASSES + 1],
        frontier: [0; MAX_CLASSES + 1],
        next_frontier: [0; MAX_CLASSES + 1],
    }),
};

static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// Cycle checks skipped because the search's scratch was busy (see the
/// module documentation).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn skipped_searches() -> u64 {
    SKIPPED.load(Ordering::Relaxed)
}

/// A non-zero id of the calling thread: the address of a thread-local
/// without destructor (a plain TLS address: async-signal-safe).
fn thread_id() -> usize {
    thread_local! {
        static ME: u8 = const { 0 };
    }
    ME.with(|m| core::ptr::from_ref(m) as usize)
}

struct ScratchGuard(&'static mut Scratch);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        // Release: this search's writes to the scratch happen before the
        // next owner's (whose winning compare-exchange is Acquire).
        SCRATCH.owner.store(0, Ordering::Release);
    }
}

/// Takes the scratch: waits for another thread's search (bounded: about a
/// second), never for this thread's own.
fn take_scratch() -> Option<ScratchGuard> {
    let me = thread_id();
    for i in 0u32..(1 << 16) + 100_000 {
        // Acquire: pairs with the previous owner's Release store of 0.
        match SCRATCH
            .owner
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        {
            // SAFETY: we won the owner word: no other guard exists until
            // ours drops and stores 0.
            Ok(_) => return Some(ScratchGuard(unsafe { &mut *SCRATCH.data.get() })),
            Err(owner) if owner == me => break,
            Err(_) if i < 1 << 16 => core::hint::spin_loop(),
            Err(_) => std::thread::sleep(std::time::Duration::from_micros(10)),
        }
    }
    SKIPPED.fetch_add(1, Ordering::Relaxed);
    None
}

/// Breadth-first search from `from` to `to` over the edges present now.
fn find_path(from: ClassId, to: ClassId) -> Option<Chain> {
    let guard = take_scratch()?;
    let Scratch {
        visited,
        parent,
        frontier,
        next_frontier,
    } = &mut *guard.0;
    visited.fill(0);
    parent.fill((0, u16::MAX));
    let (mut n, mut m);
    let mark = |v: &mut [u64; WORDS], c: u16| {
        let (w, b) = (c as usize / 64, c as usize % 64);
        let was = v[w] & (1 << b) != 0;
        v[w] |= 1 << b;
        was
    };
    mark(visited, from.0);
    frontier[0] = from.0;
    n = 1;
    let mut found = from == to;
    while n > 0 && !found {
        m = 0;
        for (slot, k) in EDGES.keys() {
            let (a, b) = unkey(k);
            if frontier[..n].contains(&a.0) && !mark(visited, b.0) {
                parent[b.0 as usize] = (a.0, slot as u16);
                next_frontier[m] = b.0;
                m += 1;
                if b == to {
                    found = true;
                    break;
                }
            }
        }
        let (f, nf) = (&mut *frontier, &*next_frontier);
        f[..m].copy_from_slice(&nf[..m]);
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

#[cfg(test)]
mod tests {
    use super::*;

    // Class ids far above what the unit tests register, so that these
    // edges (the graph is process-wide) touch no other test's classes.
    const A: ClassId = ClassId(4090);
    const B: ClassId = ClassId(4091);
    const C: ClassId = ClassId(4092);

    /// The search keeps its arrays off the stack: it runs, and finds a
    /// cycle, on a 32 KB stack (a signal handler's alternate stack is
    /// often 8 KB; the arrays were about 33 KB).
    #[test]
    fn cycle_search_fits_a_small_stack() {
        let chain = std::thread::Builder::new()
            .stack_size(32 * 1024)
            .spawn(|| {
                assert!(add_edge(A, B, None).is_none());
                assert!(add_edge(B, C, None).is_none());
                add_edge(C, A, None).map(|c| c.links().len())
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(chain, Some(2), "A -> B -> C closes with C -> A");
    }

    /// A search that finds the scratch taken by its own thread (a handler
    /// that interrupted a search) skips, counted, instead of waiting for
    /// itself.
    #[test]
    fn search_reentered_on_the_same_thread_skips() {
        let guard = take_scratch().expect("free scratch");
        let before = skipped_searches();
        assert!(find_path(ClassId(4093), ClassId(4093)).is_none());
        assert_eq!(skipped_searches(), before + 1);
        drop(guard);
        assert!(find_path(ClassId(4093), ClassId(4093)).is_some());
    }
}
