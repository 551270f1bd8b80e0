//! A concurrent Treiber stack on an [`RcuCell`], with no `unsafe`.
//!
//! Nodes are immutable and linked by `Arc`; the head is an
//! `RcuCell<Top<T>>`, where `Top` is the `Option<Arc<Node>>` of the top
//! node. A push or a pop builds a new `Top` and installs it with
//! `compare_exchange` against the `Top` it read (retrying on `Changed`);
//! the replaced `Top` is retired with `kfree_rcu` by the cell and, while it
//! waits for its grace period, holds its `Arc` to the old top node. Readers
//! walk the whole stack under one guard, following `next` through
//! `&Arc<Node>` without cloning it (no reference-count traffic for
//! readers), and check every node's words.
//!
//! Why it is safe with no `unsafe`: a reader reaches nodes only from a
//! `Top` it loaded under its guard. That `Top` is freed only after a grace
//! period that waits for the guard, and it keeps its node chain alive
//! through the `Arc`s, so every node a reader can reach outlives the guard;
//! the borrow checker ties every reference to the guard. The comparison in
//! `compare_exchange` is by address, and there is no ABA: the `Top` a
//! writer compares with was loaded under the writer's own guard, so it
//! cannot be freed and its address reused before the compare.
//!
//! What it costs: per update, one box for the new `Top` (made by the cell,
//! `RcuBox`) and one `kfree_rcu` of the old one; per push, also the `Arc`
//! node. A pop clones the `Arc` of the next node (one atomic increment); a
//! node is dropped when the last `Top` or node that links it is, after its
//! grace period, on a reclaimer thread.
//!
//! Every node's `Drop` poisons its check word, so a reader that reached a
//! dropped node would fail its check; nodes also carry their depth, checked
//! against the walk. At the end, after `kvfree_rcu_barrier`, every node and
//! every `Top` created has been dropped exactly once.
//!
//! Run it with `cargo run --release -p krcu --example stack` (add a number
//! of seconds, default 3: `... --example stack -- 10`). It exits non-zero
//! on any bad check. The same program with crossbeam-epoch is
//! `crossbeam_stack.rs`.

#![forbid(unsafe_code)]

use krcu::RcuCell;
use krcu::cell::CompareExchangeError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Pushers pop instead while the stack is deeper than this.
const MAX_DEPTH: u64 = 1000;

static NODES_CREATED: AtomicU64 = AtomicU64::new(0);
static NODES_DROPPED: AtomicU64 = AtomicU64::new(0);
static TOPS_CREATED: AtomicU64 = AtomicU64::new(0);
static TOPS_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Failed checks: bad nodes seen by readers or poppers, double drops.
static BAD_CHECKS: AtomicU64 = AtomicU64::new(0);

fn check_of(value: u64) -> u64 {
    value.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A_5A5A_5A5A_5A5A
}

fn bad(what: std::fmt::Arguments<'_>) {
    eprintln!("bad check: {what}");
    BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
}

/// A stack node: immutable once linked.
struct Node {
    value: u64,
    /// `value` scrambled; `Drop` inverts it.
    check: u64,
    /// Nodes from here to the bottom, this one included.
    depth: u64,
    next: Option<Arc<Node>>,
}

impl Node {
    fn new(value: u64, next: Option<Arc<Node>>) -> Node {
        NODES_CREATED.fetch_add(1, Ordering::Relaxed);
        let depth = next.as_ref().map_or(0, |n| n.depth) + 1;
        Node {
            value,
            check: check_of(value),
            depth,
            next,
        }
    }

    fn is_sound(&self) -> bool {
        self.check == check_of(self.value)
    }
}

impl Drop for Node {
    /// Poisons the node, then unlinks the chain below it iteratively: a
    /// chain of a thousand nodes, each holding the last `Arc` of the next,
    /// would otherwise be dropped by as many nested calls.
    fn drop(&mut self) {
        if !self.is_sound() {
            bad(format_args!("node {} dropped twice", self.value));
        }
        self.check = !self.check;
        NODES_DROPPED.fetch_add(1, Ordering::Relaxed);
        let mut next = self.next.take();
        while let Some(node) = next {
            // The last reference: take its `next` before it drops, so that
            // its own `drop` has nothing below it. Otherwise another `Top`
            // or node still links it, and the chain stays.
            next = Arc::into_inner(node).and_then(|mut node| node.next.take());
        }
    }
}

/// The head: the top node, if any. One boxed `Top` per update.
struct Top(Option<Arc<Node>>);

impl Top {
    fn new(node: Option<Arc<Node>>) -> Top {
        TOPS_CREATED.fetch_add(1, Ordering::Relaxed);
        Top(node)
    }

    fn depth(&self) -> u64 {
        self.0.as_ref().map_or(0, |n| n.depth)
    }
}

impl Drop for Top {
    fn drop(&mut self) {
        TOPS_DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

struct Stack {
    head: RcuCell<Top>,
}

impl Stack {
    fn new() -> Stack {
        Stack {
            head: RcuCell::new(Top::new(None)),
        }
    }

    fn push(&self, value: u64) {
        let guard = krcu::rcu::read_lock();
        let mut current = self.head.load(&guard);
        let mut node = Arc::new(Node::new(value, None));
        loop {
            // Link the new node to the top we compare with. It is ours
            // alone until published, so `get_mut` succeeds.
            let next = current.and_then(|top| top.0.clone());
            let unpublished = Arc::get_mut(&mut node).expect("unpublished");
            unpublished.depth = next.as_ref().map_or(0, |n| n.depth) + 1;
            unpublished.next = next;
            match self
                .head
                .compare_exchange(current, Top::new(Some(node)), &guard)
            {
                Ok(_) => return,
                Err(CompareExchangeError::Changed { current: seen, new }) => {
                    current = seen;
                    node = Top::take_node(new);
                }
                Err(CompareExchangeError::Refused(e)) => panic!("push refused: {e}"),
            }
        }
    }

    /// Pops the top value, if any.
    fn pop(&self) -> Option<u64> {
        let guard = krcu::rcu::read_lock();
        let mut current = self.head.load(&guard);
        loop {
            let top = current.and_then(|top| top.0.as_ref())?;
            if !top.is_sound() {
                bad(format_args!("popped node {} is poisoned", top.value));
            }
            match self
                .head
                .compare_exchange(current, Top::new(top.next.clone()), &guard)
            {
                // The old `Top` is retired: it drops its `Arc` to `top`
                // after the grace period.
                Ok(_) => return Some(top.value),
                Err(CompareExchangeError::Changed { current: seen, .. }) => current = seen,
                Err(CompareExchangeError::Refused(e)) => panic!("pop refused: {e}"),
            }
        }
    }

    /// Walks the whole stack under one guard, checking every node; returns
    /// the number of nodes visited.
    fn check_all(&self) -> u64 {
        let guard = krcu::rcu::read_lock();
        let top = self.head.load(&guard).expect("the head always holds a Top");
        let mut expected_depth = top.depth();
        let mut visited = 0;
        let mut cur = top.0.as_ref();
        while let Some(node) = cur {
            if !node.is_sound() || node.depth != expected_depth {
                bad(format_args!(
                    "node {} at depth {} of {expected_depth}, sound {}",
                    node.value,
                    node.depth,
                    node.is_sound()
                ));
            }
            expected_depth = expected_depth.wrapping_sub(1);
            visited += 1;
            cur = node.next.as_ref();
        }
        if expected_depth != 0 {
            bad(format_args!("the walk ended {expected_depth} nodes early"));
        }
        visited
    }
}

impl Top {
    /// The node of a `Top` handed back unpublished.
    fn take_node(mut top: Top) -> Arc<Node> {
        top.0.take().expect("a push offers a node")
    }
}

/// A tiny xorshift generator: which operation a worker does next.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let stack = Arc::new(Stack::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (walks, visited, pushes, pops) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );

    let mut threads = Vec::new();
    for _ in 0..2 {
        let (stack, stop, walks, visited) =
            (stack.clone(), stop.clone(), walks.clone(), visited.clone());
        threads.push(std::thread::spawn(move || {
            let (mut n, mut nodes) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                nodes += stack.check_all();
                n += 1;
            }
            walks.fetch_add(n, Ordering::Relaxed);
            visited.fetch_add(nodes, Ordering::Relaxed);
        }));
    }
    for id in 0..3u64 {
        let (stack, stop, pushes, pops) =
            (stack.clone(), stop.clone(), pushes.clone(), pops.clone());
        threads.push(std::thread::spawn(move || {
            let mut random = 0x2545_F491_4F6C_DD1D ^ (id + 1);
            let (mut pushed, mut popped) = (0u64, 0u64);
            let mut value = id << 48;
            while !stop.load(Ordering::Relaxed) {
                let deep = {
                    let guard = krcu::rcu::read_lock();
                    stack.head.load(&guard).map_or(0, Top::depth) > MAX_DEPTH
                };
                // Push a little more often than pop, up to the bound.
                if deep || next_random(&mut random) % 8 < 3 {
                    popped += u64::from(stack.pop().is_some());
                } else {
                    value += 1;
                    stack.push(value);
                    pushed += 1;
                }
            }
            pushes.fetch_add(pushed, Ordering::Relaxed);
            pops.fetch_add(popped, Ordering::Relaxed);
        }));
    }

    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a thread panicked");
    }
    let (pushed, popped) = (pushes.load(Ordering::Relaxed), pops.load(Ordering::Relaxed));
    let depth = stack.check_all();
    if depth != pushed - popped {
        bad(format_args!(
            "{depth} nodes left, {pushed} pushed, {popped} popped"
        ));
    }

    // Every update retired one `Top`; the one in the cell is live, and so
    // are the `depth` nodes it links.
    krcu::kvfree_rcu_barrier();
    let retired_tops = pushed + popped;
    let tops_dropped = TOPS_DROPPED.load(Ordering::Relaxed);
    let tops_created = TOPS_CREATED.load(Ordering::Relaxed);
    // Failed compares drop their unpublished `Top` at once.
    let tops_never_published = tops_created - 1 - retired_tops;
    let nodes_live = NODES_CREATED.load(Ordering::Relaxed) - NODES_DROPPED.load(Ordering::Relaxed);
    if tops_dropped != retired_tops + tops_never_published || nodes_live != depth {
        bad(format_args!(
            "while live: {tops_dropped} Tops dropped of {retired_tops} retired and \
             {tops_never_published} never published; {nodes_live} nodes live, {depth} linked"
        ));
    }
    drop(stack);
    krcu::kvfree_rcu_barrier();
    let (nodes_created, nodes_dropped) = (
        NODES_CREATED.load(Ordering::Relaxed),
        NODES_DROPPED.load(Ordering::Relaxed),
    );
    let (tops_created, tops_dropped) = (
        TOPS_CREATED.load(Ordering::Relaxed),
        TOPS_DROPPED.load(Ordering::Relaxed),
    );
    if nodes_dropped != nodes_created || tops_dropped != tops_created {
        bad(format_args!(
            "at the end: {nodes_dropped} of {nodes_created} nodes, {tops_dropped} of \
             {tops_created} Tops dropped"
        ));
    }
    let bad_checks = BAD_CHECKS.load(Ordering::Relaxed);
    println!(
        "stack: {} walks ({} nodes checked), {} updates ({pushed} pushes, {popped} pops), \
         {retired_tops} Tops retired, {nodes_dropped} of {nodes_created} nodes and \
         {tops_dropped} of {tops_created} Tops dropped, {bad_checks} bad checks",
        walks.load(Ordering::Relaxed),
        visited.load(Ordering::Relaxed),
        pushed + popped,
    );
    if bad_checks != 0 {
        std::process::exit(1);
    }
}
