//! `kfree_rcu`: the call with room in the block; end to end (allocate,
//! retire, reclaim) against crossbeam-epoch, seize and dropping at once, in
//! one run; reclaim per object, blocks against the `rcu_head` list, with
//! cold objects.
//!
//!   cargo bench -p krcu --bench kvfree

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use krcu::Krcu;
use krcu::kvfree::{KvfreeConfig, Policy};
use krcu::rcu::{HasRcuHead, RcuHead};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// 24 bytes, as in DESIGN.md's figures: the head and a word.
struct Obj {
    head: RcuHead,
    #[allow(dead_code)] // payload: makes the object 24 bytes
    value: u64,
}

// SAFETY: `head` is an RcuHead field of Obj.
unsafe impl HasRcuHead for Obj {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Obj, head);
}

fn obj(v: u64) -> Box<Obj> {
    Box::new(Obj {
        head: RcuHead::new(),
        value: v,
    })
}

fn krcu() -> Krcu {
    Krcu::builder().lockdep(false).build().unwrap()
}

/// The call alone: objects are made outside the timed part.
fn call(c: &mut Criterion) {
    let k = krcu();
    let mut g = c.benchmark_group("kfree_rcu");
    g.bench_function("call (room in the block)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(4096);
                let objs: Vec<Box<Obj>> = (0..n).map(obj).collect();
                let t = Instant::now();
                for o in objs {
                    k.kfree_rcu(black_box(o)).unwrap();
                }
                total += t.elapsed();
                left -= n;
            }
            total
        })
    });
    g.finish();
}

const E2E: u64 = 200_000;

fn e2e_krcu(k: &Krcu, threads: usize) {
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for i in 0..E2E {
                    k.kfree_rcu(obj(i)).unwrap();
                }
            });
        }
    });
    k.kvfree_rcu_barrier();
}

fn e2e_crossbeam(threads: usize) {
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for i in 0..E2E {
                    let p = Box::into_raw(obj(i));
                    let guard = crossbeam_epoch::pin();
                    // SAFETY: the object is unreachable (never published);
                    // destroyed once, after the epoch advances.
                    unsafe { guard.defer_destroy(crossbeam_epoch::Shared::from(p.cast_const())) };
                }
                crossbeam_epoch::pin().flush();
            });
        }
    });
}

fn e2e_seize(collector: &seize::Collector, threads: usize) {
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for i in 0..E2E {
                    let p = Box::into_raw(obj(i));
                    // SAFETY: unreachable and retired once; boxed frees a
                    // Box<Obj>.
                    unsafe { collector.retire(p, seize::reclaim::boxed::<Obj>) };
                }
            });
        }
    });
}

fn e2e_drop(threads: usize) {
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for i in 0..E2E {
                    drop(black_box(obj(i)));
                }
            });
        }
    });
}

/// Allocate, retire, reclaim: objects per second, 1 and 2 threads.
fn end_to_end(c: &mut Criterion) {
    let k = krcu();
    let collector = seize::Collector::new();
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("end_to_end/{threads}-thread"));
        g.throughput(Throughput::Elements(E2E * threads as u64));
        g.sample_size(20);
        g.bench_function("krcu kfree_rcu", |b| b.iter(|| e2e_krcu(&k, threads)));
        g.bench_function("crossbeam-epoch", |b| b.iter(|| e2e_crossbeam(threads)));
        g.bench_function("seize", |b| b.iter(|| e2e_seize(&collector, threads)));
        g.bench_function("drop at once", |b| b.iter(|| e2e_drop(threads)));
        g.finish();
    }
}

/// Reclaim per object with cold objects: the blocks (one pointer array
/// walk, independent misses) against the rcu_head list (a dependent miss
/// per object to find the next). Timed by the engine's own reclaim clock.
fn reclaim(c: &mut Criterion) {
    const N: u64 = 100_000;
    let mut g = c.benchmark_group("reclaim per object (cold)");
    g.sample_size(10);
    for (name, policy, cache) in [
        ("blocks", Policy::CacheRefillNolock, 5),
        ("rcu_head list", Policy::Prohibit, 0),
    ] {
        let k = Krcu::builder()
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
        g.bench_function(BenchmarkId::new(name, N), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Scatter the objects: allocate with garbage between,
                    // and retire them in a shuffled order.
                    let mut objs: Vec<Box<Obj>> = Vec::with_capacity(N as usize);
                    let mut spacers = Vec::with_capacity(N as usize);
                    for i in 0..N {
                        objs.push(obj(i));
                        spacers.push(vec![0u8; 200]);
                    }
                    let len = objs.len();
                    for i in 0..len {
                        objs.swap(i, (i * 7919 + 13) % len);
                    }
                    for o in objs {
                        k.kfree_rcu(o).unwrap();
                    }
                    drop(spacers);
                    // Evict the caches: objects are cold when reclaimed.
                    let evict = vec![1u8; 64 << 20];
                    black_box(evict.iter().map(|&b| b as u64).sum::<u64>());
                    let before = k.stats();
                    k.kvfree_rcu_barrier();
                    let after = k.stats();
                    total += Duration::from_nanos(after.reclaim_nanos - before.reclaim_nanos);
                }
                // Report per object: scale to one object per iteration.
                total / N as u32
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = call, end_to_end, reclaim
}
criterion_main!(benches);
