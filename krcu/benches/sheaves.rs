//! The slab path against the heap: `SlabBox` allocate + drop against
//! `Box`, and `kfree_rcu_slab` of a box (into the thread's `rcu_free`
//! sheaf once sheaves are built; on this branch's stub, the kvfree block
//! fallback) against `kfree_rcu` of a `Box`. Objects are made outside the
//! timed part of the retire benchmarks.
//!
//!   cargo bench -p krcu --bench sheaves

#[path = "common/small.rs"]
mod small;

use criterion::{Criterion, criterion_group, criterion_main};
use krcu::Krcu;
use krcu::slab::SlabBox;
use small::{Small, small};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The 24 bytes of the README's figures, with no head (a slab object needs
/// none).
type Payload = [u64; 3];

fn krcu() -> Krcu {
    Krcu::builder().lockdep(false).build().unwrap()
}

fn alloc_free(c: &mut Criterion) {
    let k = krcu();
    let cache = k.slab_cache::<Payload>("bench").unwrap();
    let mut g = c.benchmark_group("sheaves");
    g.bench_function("SlabBox alloc+drop", |b| {
        b.iter(|| drop(black_box(cache.alloc_box(black_box([1, 2, 3])).unwrap())))
    });
    g.bench_function("Box alloc+drop", |b| {
        b.iter(|| drop(black_box(Box::new(black_box::<Payload>([1, 2, 3])))))
    });
    g.finish();
}

/// Runs `retire` on batches made off the clock.
fn batched<O>(iters: u64, mut make: impl FnMut(u64) -> O, mut retire: impl FnMut(O)) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(4096);
        let objs: Vec<O> = (0..n).map(&mut make).collect();
        let t = Instant::now();
        for o in objs {
            retire(black_box(o));
        }
        total += t.elapsed();
        left -= n;
    }
    total
}

fn retire(c: &mut Criterion) {
    let k = krcu();
    let cache = k.slab_cache::<Payload>("bench").unwrap();
    let mut g = c.benchmark_group("sheaves");
    g.bench_function("kfree_rcu_slab into the thread's sheaf", |b| {
        b.iter_custom(|iters| {
            batched(
                iters,
                |i| cache.alloc_box([i, i, i]).unwrap(),
                |o: SlabBox<Payload>| k.kfree_rcu_slab(o).unwrap(),
            )
        })
    });
    g.bench_function("kfree_rcu of a Box", |b| {
        b.iter_custom(|iters| batched(iters, small, |o: Box<Small>| k.kfree_rcu(o).unwrap()))
    });
    g.finish();
    k.kvfree_rcu_barrier();
}

criterion_group!(benches, alloc_free, retire);
criterion_main!(benches);
