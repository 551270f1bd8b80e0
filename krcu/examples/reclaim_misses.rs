//! Cache misses of reclaim, blocks against the `rcu_head` list, with cold
//! objects: run under callgrind's cache simulation, collecting only inside
//! reclaim:
//!
//!   cargo build --release -p krcu --example reclaim_misses
//!   valgrind --tool=callgrind --cache-sim=yes --collect-atstart=no \
//!     --toggle-collect='*Reclaim*reclaim_c*' target/release/examples/reclaim_misses blocks
//!
//! and again with `list`. The argument picks the path: `blocks` (the
//! default policy) or `list` (no block can be had: every object takes the
//! fallback). A third argument `slab` retires slab objects without drop
//! glue, which `free_bulk` frees without touching.

use krcu::Krcu;
use krcu::kvfree::{KvfreeConfig, Policy};
use krcu::rcu::{HasRcuHead, RcuHead};
use krcu::slab::SlabCache;
use std::sync::Arc;
use std::time::Duration;

struct Obj {
    head: RcuHead,
    value: u64,
}

// SAFETY: `head` is an RcuHead field of Obj.
unsafe impl HasRcuHead for Obj {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Obj, head);
}

const N: u64 = 50_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let list = args.get(1).map(String::as_str) == Some("list");
    let slab = args.get(2).map(String::as_str) == Some("slab");
    let (policy, cache) = if list {
        (Policy::Prohibit, 0)
    } else {
        (Policy::CacheRefillNolock, 5)
    };
    let k = Krcu::builder()
        .arena_size(64 << 20)
        .lockdep(false)
        .kvfree_config(
            KvfreeConfig::default()
                .policy(policy)
                .cache_blocks(cache)
                .refill_mark(cache.min(3))
                .drain_delay(Duration::from_secs(3600)),
        )
        .build()
        .unwrap();
    // Scatter the objects and make them cold: garbage between them, a
    // shuffled order, and a large buffer touched before reclaim.
    let mut spacers = Vec::new();
    if slab {
        let c = Arc::new(SlabCache::<Obj>::new(k.pages(), "obj").unwrap());
        let chan = k.slab_channel(&c).unwrap();
        let mut objs: Vec<_> = (0..N)
            .map(|i| {
                spacers.push(vec![0u8; 200]);
                c.alloc(
                    krcu::page::Gfp::KERNEL,
                    Obj {
                        head: RcuHead::new(),
                        value: i,
                    },
                )
                .unwrap_or_else(|_| panic!("alloc"))
            })
            .collect();
        shuffle(&mut objs);
        for o in objs {
            // SAFETY: allocated from the channel's cache, unreachable.
            unsafe { chan.kfree_rcu(o).unwrap() };
        }
        evict();
        drop(chan);
    } else {
        let mut objs: Vec<Box<Obj>> = (0..N)
            .map(|i| {
                spacers.push(vec![0u8; 200]);
                Box::new(Obj {
                    head: RcuHead::new(),
                    value: i,
                })
            })
            .collect();
        shuffle(&mut objs);
        for o in objs {
            k.kfree_rcu(o).unwrap();
        }
        evict();
        k.kvfree_rcu_barrier();
    }
    let s = k.stats();
    println!(
        "{} objects: to_block {}, list {}, reclaimed {}, {:.1} ns/object",
        N,
        s.to_block,
        s.list_fallbacks,
        s.reclaimed_objects,
        s.reclaim_ns_per_object()
    );
    std::hint::black_box(spacers);
}

fn shuffle<T>(v: &mut [T]) {
    let n = v.len();
    for i in 0..n {
        v.swap(i, (i * 7919 + 13) % n);
    }
}

fn evict() {
    let buf = vec![1u8; 32 << 20];
    std::hint::black_box(buf.iter().map(|&b| b as u64).sum::<u64>());
}

#[allow(dead_code)]
fn value(o: &Obj) -> u64 {
    o.value
}
