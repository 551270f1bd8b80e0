//! Uncontended lock + unlock of each lock kind, with the validator off and
//! on.
//!
//! The validator is compiled out of release builds unless the `lockdep`
//! feature is on, so run both:
//!   cargo bench -p krcu --bench locks                     # compiled out
//!   cargo bench -p krcu --bench locks --features lockdep  # off / on at run time

use criterion::{Criterion, criterion_group, criterion_main};
use krcu::Domain;
use krcu::context::PreemptModel;
use krcu::lock::{LocalLock, Mutex, RawSpinLock, SpinLock};
use krcu::lockdep::{COMPILED, ReportHandler, ReportLog};
use std::hint::black_box;

fn domain(model: PreemptModel, validator: bool) -> Domain {
    Domain::builder()
        .preempt_model(model)
        .lockdep(validator)
        .report_handler(ReportHandler::Collect(ReportLog::new()))
        .build()
}

fn bench_locks(c: &mut Criterion) {
    let settings: &[(&str, bool)] = if COMPILED {
        &[("validator-off", false), ("validator-on", true)]
    } else {
        &[("validator-compiled-out", false)]
    };
    for &(label, on) in settings {
        let mut g = c.benchmark_group(format!("lock+unlock/{label}"));
        let d = domain(PreemptModel::Full, on);
        let rt = domain(PreemptModel::Rt, on);

        let raw = RawSpinLock::new_in(&d, 0u64);
        g.bench_function("RawSpinLock", |b| b.iter(|| *black_box(&raw).lock() += 1));
        g.bench_function("RawSpinLock/try_lock", |b| {
            b.iter(|| {
                if let Some(mut g) = black_box(&raw).try_lock() {
                    *g += 1;
                }
            })
        });
        g.bench_function("RawSpinLock/irqsave", |b| {
            b.iter(|| *black_box(&raw).lock_irqsave() += 1)
        });
        let spin = SpinLock::new_in(&d, 0u64);
        g.bench_function("SpinLock", |b| b.iter(|| *black_box(&spin).lock() += 1));
        let spin_rt = SpinLock::new_in(&rt, 0u64);
        g.bench_function("SpinLock/rt", |b| {
            b.iter(|| *black_box(&spin_rt).lock() += 1)
        });
        let mutex = Mutex::new_in(&d, 0u64);
        g.bench_function("Mutex", |b| b.iter(|| *black_box(&mutex).lock() += 1));
        let local = LocalLock::new_in(&d, |_| 0u64);
        g.bench_function("LocalLock", |b| b.iter(|| *black_box(&local).lock() += 1));
        g.finish();
    }
    let mut g = c.benchmark_group("baseline");
    // The floor for any spinlock: one atomic read-modify-write to take it,
    // one release store to give it back.
    let flag = std::sync::atomic::AtomicBool::new(false);
    g.bench_function("AtomicBool cas+store", |b| {
        b.iter(|| {
            use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
            let f = black_box(&flag);
            while f.compare_exchange(false, true, Acquire, Relaxed).is_err() {}
            f.store(false, Release);
        })
    });
    let std_mutex = std::sync::Mutex::new(0u64);
    g.bench_function("std::sync::Mutex", |b| {
        b.iter(|| *black_box(&std_mutex).lock().unwrap() += 1)
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench_locks
}
criterion_main!(benches);
