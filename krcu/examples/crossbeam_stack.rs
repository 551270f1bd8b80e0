//! The program of `stack.rs`, written with crossbeam-epoch 0.9 for the
//! README's comparison: the classic Treiber stack, nodes linked by
//! `Atomic` pointers, popped nodes retired with `defer_destroy`. Readers
//! walk the whole stack under one `epoch::pin()` and check every node's
//! words. Each dereference, retirement and the final teardown is an
//! `unsafe` block whose `SAFETY` comment the programmer has to get right.
//!
//! It does less work per update than the krcu version (one allocation per
//! push, none per pop, against a boxed `Top` per update plus the `Arc`
//! node), at the price of that `unsafe`.
//!
//! Same checks as `stack.rs`: every node's `Drop` poisons its check word,
//! nodes carry their depth, checked against the walk, and at the end every
//! node created has been dropped exactly once. crossbeam-epoch has no
//! barrier: the end pins and flushes until the garbage is collected (for
//! at most ten seconds).
//!
//! Run it with `cargo run --release -p krcu --example crossbeam_stack`
//! (add a number of seconds, default 3). It exits non-zero on any bad
//! check.

use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Pushers pop instead while the stack is deeper than this.
const MAX_DEPTH: u64 = 1000;

static NODES_CREATED: AtomicU64 = AtomicU64::new(0);
static NODES_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Failed checks: bad nodes seen by readers or poppers, double drops.
static BAD_CHECKS: AtomicU64 = AtomicU64::new(0);

fn check_of(value: u64) -> u64 {
    value.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A_5A5A_5A5A_5A5A
}

fn bad(what: std::fmt::Arguments<'_>) {
    eprintln!("bad check: {what}");
    BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
}

/// A stack node: `next` and `depth` are set before it is published and
/// never changed after.
struct Node {
    value: u64,
    /// `value` scrambled; `Drop` inverts it.
    check: u64,
    /// Nodes from here to the bottom, this one included.
    depth: u64,
    next: Atomic<Node>,
}

impl Node {
    fn new(value: u64) -> Node {
        NODES_CREATED.fetch_add(1, Ordering::Relaxed);
        Node {
            value,
            check: check_of(value),
            depth: 1,
            next: Atomic::null(),
        }
    }

    fn is_sound(&self) -> bool {
        self.check == check_of(self.value)
    }
}

impl Drop for Node {
    /// Poisons the node. It does not own `next`: the node below is freed by
    /// whoever pops it, or by the stack's `Drop`.
    fn drop(&mut self) {
        if !self.is_sound() {
            bad(format_args!("node {} dropped twice", self.value));
        }
        self.check = !self.check;
        NODES_DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

struct Stack {
    head: Atomic<Node>,
}

impl Stack {
    fn new() -> Stack {
        Stack {
            head: Atomic::null(),
        }
    }

    fn depth(&self, guard: &Guard) -> u64 {
        let head = self.head.load(Ordering::Acquire, guard);
        // SAFETY: loaded under `guard`. A node is freed only by
        // `defer_destroy` after a pop unlinked it from `head`, once every
        // guard pinned before the pop is gone, or by the stack's `Drop`,
        // when no guard can be alive.
        unsafe { head.as_ref() }.map_or(0, |n| n.depth)
    }

    fn push(&self, value: u64) {
        let guard = epoch::pin();
        let mut node = Owned::new(Node::new(value));
        loop {
            let head = self.head.load(Ordering::Acquire, &guard);
            // SAFETY: loaded under `guard`, as in `depth`.
            node.depth = unsafe { head.as_ref() }.map_or(0, |n| n.depth) + 1;
            node.next.store(head, Ordering::Relaxed);
            match self.head.compare_exchange(
                head,
                node,
                Ordering::Release,
                Ordering::Relaxed,
                &guard,
            ) {
                Ok(_) => return,
                Err(e) => node = e.new,
            }
        }
    }

    /// Pops the top value, if any.
    fn pop(&self) -> Option<u64> {
        let guard = epoch::pin();
        loop {
            let head = self.head.load(Ordering::Acquire, &guard);
            // SAFETY: loaded under `guard`, as in `depth`.
            let top = unsafe { head.as_ref() }?;
            if !top.is_sound() {
                bad(format_args!("popped node {} is poisoned", top.value));
            }
            let next = top.next.load(Ordering::Relaxed, &guard);
            if self
                .head
                .compare_exchange(head, next, Ordering::Release, Ordering::Relaxed, &guard)
                .is_ok()
            {
                let value = top.value;
                // SAFETY: our compare-exchange unlinked `head` from the
                // stack, so no thread can reach it again once the guards
                // pinned now are gone; only the thread whose exchange
                // unlinked it retires it.
                unsafe { guard.defer_destroy(head) };
                return Some(value);
            }
        }
    }

    /// Walks the whole stack under one guard, checking every node; returns
    /// the number of nodes visited.
    fn check_all(&self) -> u64 {
        let guard = epoch::pin();
        let mut expected_depth = None;
        let mut visited = 0;
        let mut cur = self.head.load(Ordering::Acquire, &guard);
        // SAFETY: `head` and every `next` are loaded under `guard`, as in
        // `depth`; `next` is never changed once a node is published, so a
        // node reached from a reachable one was reachable when `guard` was
        // pinned, and is retired (if at all) only after `guard` is gone.
        while let Some(node) = unsafe { cur.as_ref() } {
            let expected = *expected_depth.get_or_insert(node.depth);
            if !node.is_sound() || node.depth != expected {
                bad(format_args!(
                    "node {} at depth {} of {expected}, sound {}",
                    node.value,
                    node.depth,
                    node.is_sound()
                ));
            }
            expected_depth = Some(expected.wrapping_sub(1));
            visited += 1;
            cur = node.next.load(Ordering::Acquire, &guard);
        }
        let expected_depth = expected_depth.unwrap_or(0);
        if expected_depth != 0 {
            bad(format_args!("the walk ended {expected_depth} nodes early"));
        }
        visited
    }
}

impl Drop for Stack {
    /// Frees the nodes still linked (popped ones were retired already).
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no thread can reach the stack any more, so
        // no guard protects its nodes and none need wait.
        let guard = unsafe { epoch::unprotected() };
        let mut cur = self.head.load(Ordering::Relaxed, guard);
        while !cur.is_null() {
            // SAFETY: `cur` is linked in the stack, which owns it (it was
            // never popped, so never retired); it is freed only here.
            let node = unsafe { cur.into_owned() };
            cur = node.next.load(Ordering::Relaxed, guard);
        }
    }
}

/// Pins and flushes until `expected` nodes have been dropped (or ten
/// seconds have passed): crossbeam-epoch frees garbage only as pinning
/// threads advance the epoch.
fn collect_garbage(expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while NODES_DROPPED.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        epoch::pin().flush();
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
                let deep = stack.depth(&epoch::pin()) > MAX_DEPTH;
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

    // Every pop retired one node; the `depth` nodes still linked are live.
    collect_garbage(popped);
    let nodes_live = NODES_CREATED.load(Ordering::Relaxed) - NODES_DROPPED.load(Ordering::Relaxed);
    if NODES_DROPPED.load(Ordering::Relaxed) != popped || nodes_live != depth {
        bad(format_args!(
            "while live: {} nodes dropped of {popped} retired; {nodes_live} nodes live, \
             {depth} linked",
            NODES_DROPPED.load(Ordering::Relaxed)
        ));
    }
    drop(stack);
    let (nodes_created, nodes_dropped) = (
        NODES_CREATED.load(Ordering::Relaxed),
        NODES_DROPPED.load(Ordering::Relaxed),
    );
    if nodes_dropped != nodes_created {
        bad(format_args!(
            "at the end: {nodes_dropped} of {nodes_created} nodes dropped"
        ));
    }
    let bad_checks = BAD_CHECKS.load(Ordering::Relaxed);
    println!(
        "crossbeam_stack: {} walks ({} nodes checked), {} updates ({pushed} pushes, \
         {popped} pops), {popped} nodes retired, {nodes_dropped} of {nodes_created} nodes \
         dropped, {bad_checks} bad checks",
        walks.load(Ordering::Relaxed),
        visited.load(Ordering::Relaxed),
        pushed + popped,
    );
    if bad_checks != 0 {
        std::process::exit(1);
    }
}
