//! Loom model of the sheaf exchange at the CPU level and the barn: two
//! threads on one modelled CPU with sheaves of one object allocate and
//! free so that sheaves run empty and fill, and are swapped between the
//! CPU's `main` and `spare` and exchanged at the barn (full for empty and
//! empty for full), racing for the CPU's and the barn's locks. (Under loom
//! the thread-owned sheaves are compiled out: their handshake is the
//! front blocks' steal gate, modelled in `loom_steal.rs`.) In every
//! interleaving no object is handed out twice, every object keeps its
//! value until freed, and shrink gives every page back.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p krcu --release --test loom_sheaves`
#![cfg(loom)]

#[allow(dead_code)]
#[path = "common/pages.rs"]
mod pages;

use krcu::page::Gfp;
use krcu::slab::SlabCache;
use loom::sync::Arc;
use loom::thread;
use pages::{assert_all_pages_back, tiny_allocator};

#[test]
fn sheaves_are_exchanged_at_the_cpu_and_the_barn_without_loss() {
    let mut model = loom::model::Builder::new();
    // Two preemptions cover a race at each of the CPU's lock and the
    // barn's; more makes the model run for hours.
    model.preemption_bound = Some(2);
    model.check(|| {
        let pa = tiny_allocator();
        let cache = Arc::new(
            SlabCache::<u64>::builder(&pa)
                .name("loom")
                .sheaf_capacity(1)
                .build()
                .unwrap(),
        );
        // Three objects allocated and freed: the CPU's main and spare
        // hold one each and a full sheaf waits in the barn.
        let seed: Vec<_> = (0..3u64)
            .map(|i| cache.alloc(Gfp::KERNEL, i).unwrap())
            .collect();
        for p in seed {
            // SAFETY: allocated above, freed once.
            unsafe { cache.free(p) };
        }
        let t = {
            let cache = cache.clone();
            thread::spawn(move || {
                let p = cache.alloc(Gfp::KERNEL, 100).unwrap();
                // SAFETY: ours, live.
                assert_eq!(unsafe { p.as_ptr().read() }, 100, "handed out twice");
                // SAFETY: freed once.
                unsafe { cache.free(p) };
            })
        };
        let mine: Vec<_> = (0..2u64)
            .map(|i| cache.alloc(Gfp::KERNEL, 200 + i).unwrap())
            .collect();
        for (i, p) in mine.into_iter().enumerate() {
            // SAFETY: ours, live: the other thread never got it.
            assert_eq!(
                unsafe { p.as_ptr().read() },
                200 + i as u64,
                "handed out twice"
            );
            // SAFETY: freed once.
            unsafe { cache.free(p) };
        }
        t.join().unwrap();
        let st = cache.stats();
        assert!(st.barn_gets + st.barn_puts > 0, "{st:?}");
        cache.shrink();
        assert_eq!(cache.stats().slabs, 0);
        drop(cache);
        assert_all_pages_back(&pa);
    });
}
