//! RCU hot paths: `read_lock` + `read_unlock` (target ≤ 2 ns, liburcu memb
//! class), `synchronize_expedited` with 2 registered threads (target
//! ≤ 100 µs), `call_rcu` enqueue (target ≤ 20 ns), and callbacks run per
//! second (queue, grace period, invoke); an `RcuCell` load under an open
//! guard and with its own section, beside crossbeam-epoch's pin + load.
//!
//! `cargo bench -p krcu --bench rcu`

use criterion::{BatchSize, Criterion, Throughput, black_box, criterion_group, criterion_main};
use krcu::Domain;
use krcu::rcu::{HasRcuHead, Rcu, RcuConfig, RcuHead};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn instance(fallback: bool) -> Rcu {
    Rcu::new(
        Domain::global(),
        RcuConfig::default().force_fallback_fences(fallback),
    )
}

fn read_side(c: &mut Criterion) {
    let mut g = c.benchmark_group("rcu_read_lock");
    for (name, fallback) in [("membarrier", false), ("fallback_fences", true)] {
        let rcu = instance(fallback);
        let handle = rcu.register_thread();
        g.bench_function(format!("handle/{name}"), |b| {
            b.iter(|| drop(black_box(handle.read_lock())))
        });
        g.bench_function(format!("instance/{name}"), |b| {
            b.iter(|| drop(black_box(rcu.read_lock())))
        });
        let outer = rcu.read_lock();
        g.bench_function(format!("nested/{name}"), |b| {
            b.iter(|| drop(black_box(handle.read_lock())))
        });
        drop(outer);
    }
    g.finish();
}

/// Two registered threads that keep entering short read-side sections.
fn busy_readers(rcu: &Arc<Rcu>, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (0..2)
        .map(|_| {
            let (rcu, stop) = (rcu.clone(), stop.clone());
            std::thread::spawn(move || {
                let h = rcu.register_thread();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1000 {
                        let _g = black_box(h.read_lock());
                    }
                    std::thread::yield_now();
                }
            })
        })
        .collect()
}

fn grace_periods(c: &mut Criterion) {
    let mut g = c.benchmark_group("rcu_synchronize");
    g.measurement_time(Duration::from_secs(3));
    let rcu = Arc::new(instance(false));
    // Idle: two registered threads, outside read-side sections.
    let stop = Arc::new(AtomicBool::new(false));
    let parked: Vec<_> = (0..2)
        .map(|_| {
            let (rcu, stop) = (rcu.clone(), stop.clone());
            std::thread::spawn(move || {
                let _h = rcu.register_thread();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect();
    while rcu.stats().readers < 2 {
        std::thread::yield_now();
    }
    g.bench_function("expedited/2_idle_registered", |b| {
        b.iter(|| rcu.synchronize_expedited())
    });
    stop.store(true, Ordering::Relaxed);
    parked.into_iter().for_each(|t| t.join().unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let readers = busy_readers(&rcu, &stop);
    g.bench_function("expedited/2_reading_threads", |b| {
        b.iter(|| rcu.synchronize_expedited())
    });
    g.bench_function("normal/2_reading_threads", |b| b.iter(|| rcu.synchronize()));
    stop.store(true, Ordering::Relaxed);
    readers.into_iter().for_each(|t| t.join().unwrap());
    g.finish();
}

unsafe fn noop(_: NonNull<RcuHead>) {}

fn enqueue(c: &mut Criterion) {
    let mut g = c.benchmark_group("call_rcu");
    // Back-to-back grace periods, so that the untimed rcu_barrier between
    // rounds is short.
    let rcu = Rcu::new(
        Domain::global(),
        RcuConfig::default().gp_interval(Duration::ZERO),
    );
    // Warm heads: a pool that stays in cache, reused after each barrier (an
    // object being retired has usually just been touched).
    const ROUND: usize = 8192;
    let pool: Vec<RcuHead> = (0..ROUND).map(|_| RcuHead::new()).collect();
    g.bench_function("enqueue", |b| {
        b.iter_custom(|iters| {
            let mut left = iters as usize;
            let mut timed = Duration::ZERO;
            while left > 0 {
                let n = left.min(ROUND);
                let start = Instant::now();
                for h in &pool[..n] {
                    // SAFETY: the heads live until after rcu_barrier below,
                    // which runs every callback before they are reused.
                    unsafe { rcu.call_rcu(NonNull::from(h), noop) };
                }
                timed += start.elapsed();
                rcu.rcu_barrier();
                left -= n;
            }
            timed
        })
    });
    // Cold heads: fresh memory for every call (each push also misses in
    // cache on the head it writes).
    g.bench_function("enqueue_cold_heads", |b| {
        b.iter_custom(|iters| {
            let heads: Vec<RcuHead> = (0..iters).map(|_| RcuHead::new()).collect();
            let start = Instant::now();
            for h in &heads {
                // SAFETY: the heads live until after rcu_barrier below, are
                // queued once and not moved meanwhile.
                unsafe { rcu.call_rcu(NonNull::from(h), noop) };
            }
            let t = start.elapsed();
            rcu.rcu_barrier();
            t
        })
    });
    g.finish();
}

struct Obj {
    _payload: [u64; 2],
    rcu: RcuHead,
}

// SAFETY: the offset is that of the embedded head.
unsafe impl HasRcuHead for Obj {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Obj, rcu);
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("rcu_callbacks");
    const N: usize = 100_000;
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    let rcu = instance(false);
    g.bench_function("queue_gp_invoke_free_100k", |b| {
        b.iter_batched(
            || {
                (0..N)
                    .map(|_| {
                        Box::new(Obj {
                            _payload: [1, 2],
                            rcu: RcuHead::new(),
                        })
                    })
                    .collect::<Vec<_>>()
            },
            |objs| {
                for o in objs {
                    rcu.call_rcu_box(o);
                }
                rcu.rcu_barrier();
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// `RcuCell::load`: under a guard already held (the pointer load and, for
/// an instance of one's own, the instance check), and a whole read
/// (`read_lock`, load, read the value, unlock); crossbeam-epoch's
/// `pin` + `Atomic::load` for the same whole read.
fn cell_load(c: &mut Criterion) {
    let mut g = c.benchmark_group("rcu_cell");
    let global = krcu::RcuCell::new(7u64);
    let held = krcu::rcu::read_lock();
    g.bench_function("load_held/global", |b| {
        b.iter(|| black_box(global.load(black_box(&held))).copied())
    });
    drop(held);
    g.bench_function("read_lock_load_unlock/global", |b| {
        b.iter(|| {
            let guard = krcu::rcu::read_lock();
            black_box(global.load(&guard).copied())
        })
    });
    let k = Arc::new(
        krcu::Krcu::builder()
            .arena_size(16 << 20)
            .build()
            .expect("instance"),
    );
    let mine = krcu::RcuCell::new_in(k.clone(), 7u64);
    let held = k.rcu().read_lock();
    g.bench_function("load_held/instance", |b| {
        b.iter(|| black_box(mine.load(black_box(&held))).copied())
    });
    drop(held);
    let handle = k.rcu().register_thread();
    g.bench_function("read_lock_load_unlock/instance_handle", |b| {
        b.iter(|| {
            let guard = handle.read_lock();
            black_box(mine.load(&guard).copied())
        })
    });
    drop(handle);
    let atomic = crossbeam_epoch::Atomic::new(7u64);
    g.bench_function("pin_load_unpin/crossbeam_epoch", |b| {
        b.iter(|| {
            let guard = crossbeam_epoch::pin();
            let shared = atomic.load(std::sync::atomic::Ordering::Acquire, &guard);
            // SAFETY: the value is never retired while the bench runs.
            black_box(unsafe { shared.as_ref() }.copied())
        })
    });
    g.finish();
    // SAFETY: no thread reads `atomic` any more.
    drop(unsafe { atomic.into_owned() });
}

criterion_group!(
    benches,
    read_side,
    grace_periods,
    enqueue,
    throughput,
    cell_load
);
criterion_main!(benches);
