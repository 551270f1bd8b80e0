//! Loom model of the per-CPU trylock and its fallback: two threads on one
//! modelled CPU race for its pcp lock; the loser falls back to the buddy
//! under the zone lock (normal modes), trylocks the zone lock (nolock), or
//! fails (NO_LOCKS). In every interleaving no page is handed out twice and
//! every page comes back.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p krcu --release --test loom_pcp`
#![cfg(loom)]

// Only the page helpers: the rest of `common` needs what loom builds leave
// out (the RCU head, the instance).
#[allow(dead_code)]
#[path = "common/pages.rs"]
mod pages;

use krcu::page::{Gfp, PageAllocator};
use loom::thread;
use pages::{assert_all_pages_back, tiny_allocator};

/// Every page back, merged into the arena's one order-3 block.
fn check_all_back(pa: &PageAllocator) {
    let s = assert_all_pages_back(pa);
    assert_eq!(s.free_blocks[3], 1, "merged back to one order-3 block");
}

#[test]
fn pcp_trylock_falls_back_to_the_buddy() {
    loom::model(|| {
        let pa = tiny_allocator();
        let t = {
            let pa = pa.clone();
            thread::spawn(move || {
                let p = pa.alloc_page(Gfp::NOWAIT).unwrap();
                pa.free(p);
                pa.alloc_page(Gfp::NOWAIT).unwrap()
            })
        };
        let mine = pa.alloc_page(Gfp::NOWAIT).unwrap();
        let theirs = t.join().unwrap();
        assert_ne!(mine, theirs, "a page handed out twice");
        pa.free(mine);
        pa.free(theirs);
        check_all_back(&pa);
    });
}

#[test]
fn nolock_and_no_locks_never_wait() {
    loom::model(|| {
        let pa = tiny_allocator();
        // Seed this CPU's lists with the pages NO_LOCKS will look for.
        let seed = pa.alloc_page(Gfp::NOWAIT).unwrap();
        pa.free(seed);
        let t = {
            let pa = pa.clone();
            thread::spawn(move || {
                let p = pa.alloc_pages_nolock(0).ok();
                let got = p.is_some();
                if let Some(p) = p {
                    pa.free_nolock(p);
                }
                got
            })
        };
        // NO_LOCKS either finds a page on the list or fails (the other
        // thread holds the pcp lock, or emptied the list); it never waits.
        let mine = pa.alloc_page(Gfp::NO_LOCKS).ok();
        let _ = t.join().unwrap();
        if let Some(p) = mine {
            pa.free_nolock(p);
        }
        check_all_back(&pa);
    });
}
