//! rcutorture in small: readers walk a table of nodes that writers replace
//! and retire (through `call_rcu`, through `synchronize` and through the
//! polled API); every node carries a state word and a generation that
//! readers check. Zero use-after-free, and every retirement's callback runs
//! exactly once.
//!
//! Runs 10 s by default (`KRCU_RCU_STRESS_SECS` overrides): 2 readers and
//! 2 writers, as the RCU issue asks.
//!
//! Retired nodes are poisoned, not freed, by their callback: they go to a
//! quarantine pool that writers reuse under a new generation. A reader that
//! could still reach a retired node would see the poison, or a generation
//! change within its section; no freed memory is ever read, so the check
//! itself is sound.

use krcu::Domain;
use krcu::rcu::{HasRcuHead, Rcu, RcuConfig, RcuHead};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SLOTS: usize = 64;
const LIVE: u64 = 0x11fe_11fe_11fe_11fe;
const POISON: u64 = 0xdead_dead_dead_dead;

struct Node {
    state: AtomicU64,
    generation: AtomicU64,
    /// `generation * 3`, written with it: a torn or stale node mismatches.
    check: AtomicU64,
    /// Callbacks run on this node's current life (must end at 1).
    callbacks: AtomicU64,
    pool: Arc<Pool>,
    rcu: RcuHead,
}

// SAFETY: the offset is that of the embedded head.
unsafe impl HasRcuHead for Node {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Node, rcu);
    fn rcu_callback(self: Box<Self>) {
        self.retire_now();
        let pool = self.pool.clone();
        pool.put(self);
    }
}

impl Node {
    fn retire_now(&self) {
        let cbs = self.callbacks.fetch_add(1, Ordering::SeqCst);
        assert_eq!(cbs, 0, "a node's callback ran twice");
        assert_eq!(
            self.state.swap(POISON, Ordering::SeqCst),
            LIVE,
            "retired twice"
        );
        self.pool.callbacks_run.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Pool {
    /// Boxed: a node's address is its identity while readers can see it.
    #[allow(clippy::vec_box)]
    free: Mutex<Vec<Box<Node>>>,
    callbacks_run: AtomicU64,
    retired: AtomicU64,
    violations: AtomicU64,
    reads: AtomicU64,
    generation: AtomicU64,
}

impl Pool {
    fn put(&self, node: Box<Node>) {
        self.free.lock().unwrap().push(node);
    }

    fn make(self: &Arc<Self>) -> Box<Node> {
        let g = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let node = self.free.lock().unwrap().pop();
        let node = match node {
            Some(n) => n,
            None => Box::new(Node {
                state: AtomicU64::new(POISON),
                generation: AtomicU64::new(0),
                check: AtomicU64::new(0),
                callbacks: AtomicU64::new(0),
                pool: self.clone(),
                rcu: RcuHead::new(),
            }),
        };
        node.generation.store(g, Ordering::Relaxed);
        node.check.store(g * 3, Ordering::Relaxed);
        node.callbacks.store(0, Ordering::Relaxed);
        node.state.store(LIVE, Ordering::Relaxed);
        node
    }
}

fn read_side(rcu: &Rcu, table: &[AtomicPtr<Node>], pool: &Pool, i: usize) {
    let p = table[i % SLOTS].load(Ordering::Acquire);
    // SAFETY: the reader is inside a read-side section (the caller's
    // guard), and nodes are retired only after a grace period following
    // their unlink, so `p` is live for the whole section; they are never
    // freed while the test runs at all (the quarantine).
    let n = unsafe { &*p };
    let g = n.generation.load(Ordering::Relaxed);
    let ok = n.state.load(Ordering::Relaxed) == LIVE && n.check.load(Ordering::Relaxed) == g * 3;
    // Some work inside the section, then re-check.
    std::hint::black_box(rcu.is_reading());
    let still =
        n.state.load(Ordering::Relaxed) == LIVE && n.generation.load(Ordering::Relaxed) == g;
    if !(ok && still) {
        pool.violations.fetch_add(1, Ordering::SeqCst);
    }
    pool.reads.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn readers_never_see_a_retired_node() {
    let secs: u64 = std::env::var("KRCU_RCU_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rcu = Rcu::new(Domain::global(), RcuConfig::default().batch_limit(64));
    let gp_seq_at_start = rcu.stats().gp_seq;
    let pool = Arc::new(Pool::default());
    let table: Vec<AtomicPtr<Node>> = (0..SLOTS)
        .map(|_| AtomicPtr::new(Box::into_raw(pool.make())))
        .collect();
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(secs);

    std::thread::scope(|s| {
        for r in 0..2 {
            let (rcu, table, pool, stop) = (&rcu, &table, &pool, &stop);
            s.spawn(move || {
                let handle = rcu.register_thread();
                let mut i: usize = r * 17;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    if i.is_multiple_of(3) {
                        // Nested sections through both entry points.
                        let _outer = rcu.read_lock();
                        let _inner = handle.read_lock();
                        read_side(rcu, table, pool, i);
                    } else {
                        let _g = handle.read_lock();
                        read_side(rcu, table, pool, i);
                        read_side(rcu, table, pool, i + 7);
                    }
                }
            });
        }
        for w in 0..2 {
            let (rcu, table, pool) = (&rcu, &table, &pool);
            s.spawn(move || {
                let mut i: usize = w * 31;
                while Instant::now() < deadline {
                    i += 1;
                    let new = Box::into_raw(pool.make());
                    let old = table[i % SLOTS].swap(new, Ordering::AcqRel);
                    pool.retired.fetch_add(1, Ordering::SeqCst);
                    // SAFETY: `old` was unlinked by the swap and is ours to
                    // retire; it came from Box::into_raw.
                    let old = unsafe { Box::from_raw(old) };
                    match i % 64 {
                        // Wait for readers ourselves, then retire inline.
                        0 => {
                            rcu.synchronize();
                            old.rcu_callback();
                        }
                        1 => {
                            rcu.synchronize_expedited();
                            old.rcu_callback();
                        }
                        // The polled API: retire once the cookie has passed.
                        2 => {
                            let c = rcu.start_poll();
                            rcu.cond_synchronize(c);
                            assert!(rcu.poll_state(c));
                            old.rcu_callback();
                        }
                        _ => rcu.call_rcu_box(old),
                    }
                    if i.is_multiple_of(4096) {
                        rcu.rcu_barrier();
                    }
                }
            });
        }
        // Writers stop at the deadline; readers a little after them.
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
    });

    rcu.rcu_barrier();
    let retired = pool.retired.load(Ordering::SeqCst);
    let ran = pool.callbacks_run.load(Ordering::SeqCst);
    let reads = pool.reads.load(Ordering::SeqCst);
    eprintln!(
        "rcu stress: {secs} s, {reads} reads, {retired} retirements, stats {:?}",
        rcu.stats()
    );
    assert_eq!(
        pool.violations.load(Ordering::SeqCst),
        0,
        "use after retire"
    );
    assert!(reads > 0 && retired > 0);
    assert_eq!(
        retired, ran,
        "every retirement ran its callback exactly once"
    );
    assert!(rcu.stats().gp_seq != gp_seq_at_start);
    for p in &table {
        // SAFETY: every thread has stopped; the table owns these nodes.
        drop(unsafe { Box::from_raw(p.load(Ordering::Relaxed)) });
    }
    pool.free.lock().unwrap().clear(); // nodes hold the pool: break the cycle
}
