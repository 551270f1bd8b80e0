//! Slab sheaves: the thread's own sheaf against `Box` (glibc's thread
//! cache), one alloc + free pair at a time and in runs that cross sheaf
//! boundaries (so that exchanges at the CPU level and the barn are in the
//! figure), and `kfree_rcu` into the thread's `rcu_free` sheaf.
//!
//! `cargo bench -p krcu --bench slab`. Targets (issue "Slab sheaves"):
//! sheaf alloc + free ≤ `Box` alloc + free; `kfree_rcu` into the thread's
//! sheaf ≤ 10 ns with room in the sheaf.

use criterion::{BatchSize, Criterion, black_box, criterion_group, criterion_main};
use krcu::Domain;
use krcu::page::{Gfp, PageAllocator, PageConfig, Watermarks};
use krcu::slab::SlabCache;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

fn allocator() -> Arc<PageAllocator> {
    PageAllocator::new(
        &Domain::builder().build(),
        PageConfig::default()
            .arena_size(64 << 20)
            .watermarks(Watermarks::NONE)
            .kswapd(false),
    )
    .unwrap()
}

type Small = [u64; 3];
type Line = [u64; 8];

fn pairs(c: &mut Criterion) {
    let pa = allocator();
    let small = SlabCache::<Small>::new(&pa, "bench-24").unwrap();
    let line = SlabCache::<Line>::new(&pa, "bench-64").unwrap();
    let mut g = c.benchmark_group("slab");
    g.bench_function("sheaf alloc+free (24 B)", |b| {
        b.iter(|| {
            let p = small.alloc(Gfp::KERNEL, black_box([1, 2, 3])).unwrap();
            // SAFETY: just allocated, freed once.
            unsafe { small.free(black_box(p)) };
        })
    });
    g.bench_function("Box alloc+free (24 B)", |b| {
        b.iter(|| drop(black_box(Box::new(black_box([1u64, 2, 3])))))
    });
    g.bench_function("sheaf alloc+free (64 B)", |b| {
        b.iter(|| {
            let p = line.alloc(Gfp::KERNEL, black_box([7; 8])).unwrap();
            // SAFETY: just allocated, freed once.
            unsafe { line.free(black_box(p)) };
        })
    });
    g.bench_function("Box alloc+free (64 B)", |b| {
        b.iter(|| drop(black_box(Box::new(black_box([7u64; 8])))))
    });
    // 1000 live objects: every sheaf boundary is crossed (exchanges at the
    // CPU level and the barn, refills and flushes are in the figure).
    const RUN: usize = 1000;
    g.bench_function("sheaf 1000 allocs then 1000 frees (64 B), per pair", |b| {
        let mut held: Vec<NonNull<Line>> = Vec::with_capacity(RUN);
        b.iter_custom(|iters| {
            let t = std::time::Instant::now();
            for _ in 0..iters.div_ceil(RUN as u64) {
                for i in 0..RUN as u64 {
                    held.push(line.alloc(Gfp::KERNEL, [i; 8]).unwrap());
                }
                for p in held.drain(..) {
                    // SAFETY: allocated above, freed once.
                    unsafe { line.free(p) };
                }
            }
            t.elapsed() * iters as u32 / (iters.div_ceil(RUN as u64) * RUN as u64) as u32
        })
    });
    g.bench_function("Box 1000 allocs then 1000 frees (64 B), per pair", |b| {
        let mut held: Vec<Box<Line>> = Vec::with_capacity(RUN);
        b.iter_custom(|iters| {
            let t = std::time::Instant::now();
            for _ in 0..iters.div_ceil(RUN as u64) {
                for i in 0..RUN as u64 {
                    held.push(Box::new([i; 8]));
                }
                held.clear();
            }
            t.elapsed() * iters as u32 / (iters.div_ceil(RUN as u64) * RUN as u64) as u32
        })
    });
    g.bench_function("sheaf alloc + kfree_rcu_sheaf (64 B)", |b| {
        b.iter_batched(
            || (),
            |()| {
                let p = line.alloc(Gfp::KERNEL, [3; 8]).unwrap();
                // SAFETY: just allocated, retired once, not used after.
                if let Err(p) = unsafe { line.testing_kfree_rcu_sheaf(p) } {
                    // SAFETY: handed back untouched: ours to free.
                    unsafe { line.free(p) };
                }
            },
            BatchSize::SmallInput,
        )
    });
    // The retire alone: objects allocated outside the timed part, then
    // retired one by one (a sheaf submitted with one call_rcu every
    // `sheaf_capacity` calls is in the figure).
    g.bench_function("kfree_rcu_sheaf alone (64 B), per object", |b| {
        const N: usize = 256;
        let mut held: Vec<NonNull<Line>> = Vec::with_capacity(N);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = N.min((iters - done) as usize);
                for _ in 0..n {
                    held.push(line.alloc(Gfp::KERNEL, [5; 8]).unwrap());
                }
                let t = std::time::Instant::now();
                for p in held.drain(..) {
                    // SAFETY: allocated above, retired once.
                    if let Err(p) = unsafe { line.testing_kfree_rcu_sheaf(black_box(p)) } {
                        // SAFETY: handed back untouched: ours to free.
                        unsafe { line.free(p) };
                    }
                }
                total += t.elapsed();
                done += n as u64;
            }
            total
        })
    });
    g.finish();
    line.testing_submit_rcu_sheaves();
    line.testing_rcu_sheaf_barrier();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = pairs
}
criterion_main!(benches);
