//! Page allocator and slab cache hot paths.
//!
//! `cargo bench -p krcu --bench page`. Targets (docs/design.md and the README): a per-CPU or
//! NO_LOCKS order-0 allocation ≤ 15 ns; the per-CPU round trip ≥ 2× faster
//! than the zone-locked path; SlabCache alloc + free within 1.5× of `Box`.

use criterion::{BatchSize, Criterion, black_box, criterion_group, criterion_main};
use krcu::Domain;
use krcu::page::{Gfp, Page, PageAllocator, PageConfig, Watermarks};
use krcu::slab::SlabCache;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn allocator(pcp_lists: bool) -> Arc<PageAllocator> {
    PageAllocator::new(
        &Domain::builder().build(),
        PageConfig::default()
            .arena_size(64 << 20)
            .watermarks(Watermarks::NONE)
            .kswapd(false)
            .pcp_lists(pcp_lists),
    )
    .unwrap()
}

/// Times `n` allocations alone: the pages are freed (onto this CPU's lists)
/// outside the timed region, `n` at a time, fewer than `high`.
fn alloc_only(pa: &PageAllocator, iters: u64, alloc: impl Fn() -> Page) -> Duration {
    const N: usize = 32;
    let mut held = Vec::with_capacity(N);
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = N.min((iters - done) as usize);
        let t = Instant::now();
        for _ in 0..n {
            held.push(alloc());
        }
        total += t.elapsed();
        for p in held.drain(..) {
            pa.free(p);
        }
        done += n as u64;
    }
    total
}

fn pages(c: &mut Criterion) {
    let pcp = allocator(true);
    let buddy = allocator(false);
    let mut g = c.benchmark_group("page");
    g.bench_function("pcp order-0 alloc+free (NOWAIT)", |b| {
        b.iter(|| {
            let p = pcp.alloc_page(black_box(Gfp::NOWAIT)).unwrap();
            pcp.free(black_box(p));
        })
    });
    g.bench_function("buddy order-0 alloc+free (zone lock, pcp off)", |b| {
        b.iter(|| {
            let p = buddy.alloc_page(black_box(Gfp::NOWAIT)).unwrap();
            buddy.free(black_box(p));
        })
    });
    g.bench_function("NO_LOCKS order-0 alloc+free (hit)", |b| {
        b.iter(|| {
            let p = pcp.alloc_page(black_box(Gfp::NO_LOCKS)).unwrap();
            pcp.free(black_box(p));
        })
    });
    g.bench_function("nolock order-0 alloc+free", |b| {
        b.iter(|| {
            let p = pcp.alloc_pages_nolock(black_box(0)).unwrap();
            pcp.free_nolock(black_box(p));
        })
    });
    g.bench_function("pcp order-0 alloc only (NOWAIT)", |b| {
        b.iter_custom(|iters| alloc_only(&pcp, iters, || pcp.alloc_page(Gfp::NOWAIT).unwrap()))
    });
    g.bench_function("NO_LOCKS order-0 alloc only (hit)", |b| {
        b.iter_custom(|iters| alloc_only(&pcp, iters, || pcp.alloc_page(Gfp::NO_LOCKS).unwrap()))
    });
    g.finish();
}

type Obj = [u64; 3];

fn slab(c: &mut Criterion) {
    let pa = allocator(true);
    let cache = SlabCache::<Obj>::new(&pa, "bench").unwrap();
    let mut g = c.benchmark_group("slab");
    g.bench_function("SlabCache alloc+free (24 B)", |b| {
        b.iter(|| {
            let p = cache.alloc(Gfp::NOWAIT, black_box([1, 2, 3])).unwrap();
            // SAFETY: just allocated, freed once.
            unsafe { cache.free(black_box(p)) };
        })
    });
    g.bench_function("Box alloc+free (24 B)", |b| {
        b.iter(|| drop(black_box(Box::new(black_box([1u64, 2, 3])))))
    });
    const BULK: usize = 256;
    g.bench_function("SlabCache 256 allocs + free_bulk", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(BULK),
            |v| {
                for i in 0..BULK as u64 {
                    v.push(cache.alloc(Gfp::NOWAIT, [i, i, i]).unwrap());
                }
                // SAFETY: all just allocated, freed once.
                unsafe { cache.free_bulk(v) };
                v.clear();
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("Box 256 allocs + drops", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(BULK),
            |v| {
                for i in 0..BULK as u64 {
                    v.push(Box::new([i, i, i]));
                }
                v.clear();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = pages, slab
}
criterion_main!(benches);
