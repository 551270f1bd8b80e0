//! The page arena gives memory back: slabs freed by a shrink merge into
//! high-order blocks, which go back to the OS with `madvise`; the process's
//! resident memory drops, each page is counted once, and pages allocated
//! again are in use (and usable) again.
//!
//! Blocks of order `krcu::page::RELEASE_ORDER` and above go back.
//! One test in this binary: it measures the process's resident memory.

mod common;

use common::pages::allocator_on_cpus;
use common::slabs::assert_shrinks_to_no_slab;
use krcu::slab::{SlabBox, SlabCache};

/// Resident memory of the process in KiB (`/proc/self/smaps_rollup`, else
/// `statm`).
fn rss_kib() -> usize {
    if let Ok(s) = std::fs::read_to_string("/proc/self/smaps_rollup") {
        for line in s.lines() {
            if let Some(v) = line.strip_prefix("Rss:") {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
    }
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

#[test]
fn a_shrink_gives_freed_slabs_back_to_the_os() {
    const MIB: usize = 32;
    let pa = allocator_on_cpus(1, 128 << 20);
    let cache = SlabCache::<[u64; 64]>::new(&pa, "half-kib").unwrap();
    let n = (MIB << 20) / 512;
    let base = rss_kib();
    let boxes: Vec<SlabBox<[u64; 64]>> = (0..n as u64)
        .map(|i| cache.alloc_box([i; 64]).unwrap())
        .collect();
    let full = rss_kib();
    assert!(
        full >= base + (MIB << 10) * 3 / 4,
        "the objects are resident: {base} KiB -> {full} KiB"
    );
    assert_eq!(pa.released_pages_now(), 0);
    drop(boxes);
    assert_shrinks_to_no_slab(&cache);
    let s = pa.stats();
    let released = pa.released_pages_now();
    assert!(
        released * 4096 >= (MIB << 20) * 3 / 4,
        "released {released} pages: {s:?}"
    );
    assert_eq!(s.global.released_pages as usize, released, "{s:?}");
    assert!(s.global.release_passes >= 1);
    let after = rss_kib();
    assert!(
        after + (MIB << 10) / 2 <= full,
        "resident memory did not drop: {full} KiB -> {after} KiB"
    );
    // A second pass finds nothing new.
    assert_eq!(pa.release_free_memory(), 0);
    // Pages allocated again are in use again, and usable.
    let again: Vec<SlabBox<[u64; 64]>> = (0..n as u64 / 2)
        .map(|i| cache.alloc_box([i; 64]).unwrap())
        .collect();
    assert!(again.iter().enumerate().all(|(i, b)| b[63] == i as u64));
    assert!(pa.released_pages_now() < released);
    drop(again);
}
