//! `krcu scale`: the kernel's rcuscale kfree test (`kfree_scale_thread`)
//! in userspace. Each thread, `loops` times, allocates `objects` 24-byte
//! objects (rcuscale's `struct kfree_obj`) and retires each at once, with
//! the two-argument form, the single-argument form, or both at random.

use crate::args::{self, CmdResult};
use crate::output::{emit, round};
use crate::progress::Progress;
use crate::table::Table;
use crate::workload::{Obj24, Reports, Rng, Setup, peak_rss_bytes};
use krcu::context::PreemptModel;
use krcu::kvfree::Policy;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

/// Which form of kfree_rcu to call (rcuscale's `kfree_rcu_test_single`
/// and `kfree_rcu_test_double`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// `kfree_rcu(obj, rh)`: the object embeds an rcu_head.
    Double,
    /// `kvfree_rcu_mightsleep(obj)`: no rcu_head, may sleep.
    Single,
    /// Each call picks one at random (rcuscale's default).
    Both,
    /// The sheaf path: `kfree_rcu_slab` of a `SlabBox` from a cache of the
    /// instance that the threads share (no rcu_head needed).
    Sheaf,
}

/// Options of `krcu scale`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Threads, 1 to 256 (rcuscale's `kfree_nthreads`) [default: one per
    /// CPU].
    #[arg(long, allow_negative_numbers = true, value_parser = args::threads)]
    threads: Option<usize>,
    /// Objects each thread allocates and retires per loop, 1 to 10_000_000
    /// (rcuscale's `kfree_alloc_num`).
    #[arg(long, default_value = "8000", allow_negative_numbers = true, value_parser = args::scale_objects)]
    objects: usize,
    /// Loops per thread, 1 to 100_000 (rcuscale's `kfree_loops`).
    #[arg(long, default_value = "100", allow_negative_numbers = true, value_parser = args::loops)]
    loops: usize,
    /// Which form of kfree_rcu each call uses.
    #[arg(long, value_enum, default_value_t = Mix::Both)]
    mix: Mix,
    /// The kfree_rcu policy.
    #[arg(long, default_value_t = Policy::default())]
    policy: Policy,
    /// The preempt model.
    #[arg(long, default_value_t = PreemptModel::Full)]
    preempt: PreemptModel,
    /// How long objects may wait in a partly filled block: a number with a
    /// unit (ns, us, ms, s, m or h), e.g. 10ms [default: the library's].
    #[arg(long, value_parser = args::duration)]
    drain_delay: Option<std::time::Duration>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `krcu scale`'s result.
#[derive(Debug, Serialize)]
pub struct ScaleResult {
    pub threads: usize,
    pub objects_per_loop: usize,
    pub loops: usize,
    pub mix: String,
    pub policy: String,
    pub preempt: String,
    pub objects: u64,
    pub single_form_calls: u64,
    pub total_s: f64,
    pub objects_per_s: f64,
    pub grace_periods: u64,
    pub batches: u64,
    pub mean_batch: f64,
    pub peak_pending_bytes: u64,
    pub peak_rss_bytes: u64,
    pub fallbacks: u64,
    pub fallback_pct: f64,
    pub reclaim_ns_per_object: f64,
}

/// Loops finished so far and workers still running, and a condition the
/// main thread waits on to move the progress bar: workers signal it,
/// nobody polls.
struct Workers {
    state: Mutex<(u64, usize)>,
    changed: Condvar,
}

impl Workers {
    fn new(running: usize) -> Workers {
        Workers {
            state: Mutex::new((0, running)),
            changed: Condvar::new(),
        }
    }

    fn loop_done(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 += 1;
        self.changed.notify_one();
    }

    /// Shows progress until every worker has ended (done or panicked),
    /// waking only when a worker finishes a loop or ends.
    fn show_until_ended(&self, progress: &mut Progress) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            progress.set(state.0, "");
            if state.1 == 0 {
                return;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Counts its worker out when dropped: at the end of the worker, or while
/// it unwinds from a panic, so the main thread never waits for a worker
/// that is gone.
struct Running<'a>(&'a Workers);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1 -= 1;
        self.0.changed.notify_one();
    }
}

pub fn run(a: &Args) -> CmdResult {
    let threads = a.threads.unwrap_or_else(args::cpus);
    let mut setup = Setup::new(a.policy, a.preempt);
    setup.drain_delay = a.drain_delay;
    let k = setup.build(&Reports::default())?;
    let cache = k
        .slab_cache::<Obj24>("scale")
        .expect("a 24-byte object fits a slab");
    let gp0 = k.rcu().stats().grace_periods;
    let total_loops = (threads * a.loops) as u64;
    let done = Workers::new(threads);
    let singles = AtomicU64::new(0);
    let mut progress = Progress::new("scale", total_loops, a.json);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (k, done, singles, cache) = (&k, &done, &singles, &cache);
                s.spawn(move || {
                    let _running = Running(done);
                    let mut rng = Rng::new(t as u64 + 1);
                    let mut single = 0;
                    for _ in 0..a.loops {
                        for i in 0..a.objects {
                            if a.mix == Mix::Sheaf {
                                let b = cache
                                    .alloc_box(Obj24::new(i as u64))
                                    .unwrap_or_else(|_| panic!("krcu scale: the arena is full"));
                                if k.kfree_rcu_slab(b).is_err() {
                                    unreachable!(
                                        "refused only in NMI context or for another instance's cache"
                                    );
                                }
                                continue;
                            }
                            let obj = Obj24::boxed(i as u64);
                            let use_single = match a.mix {
                                Mix::Double | Mix::Sheaf => false,
                                Mix::Single => true,
                                Mix::Both => rng.next() & 0x800 != 0,
                            };
                            if use_single {
                                single += 1;
                                k.kvfree_rcu_mightsleep(obj).expect(
                                    "refused only in NMI context, which this thread never enters",
                                );
                            } else {
                                k.kfree_rcu(obj).expect(
                                    "refused only in NMI context, which this thread never enters",
                                );
                            }
                        }
                        done.loop_done();
                    }
                    singles.fetch_add(single, Relaxed);
                })
            })
            .collect();
        done.show_until_ended(&mut progress);
        // Every worker has counted itself out: joining waits only for the
        // threads' last instructions, and a worker's panic comes out here.
        for w in workers {
            if let Err(panic) = w.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    // The clock stops when the last object is freed: after the barrier.
    k.kvfree_rcu_barrier();
    let elapsed = t0.elapsed();
    progress.finish();
    let s = k.stats();
    let objects = total_loops * a.objects as u64;
    let fallbacks = s.list_fallbacks + s.lock_busy_fallbacks + s.inline_synchronize;
    let result = ScaleResult {
        threads,
        objects_per_loop: a.objects,
        loops: a.loops,
        mix: format!("{:?}", a.mix).to_lowercase(),
        policy: a.policy.to_string(),
        preempt: a.preempt.to_string(),
        objects,
        single_form_calls: singles.load(Relaxed),
        total_s: round(elapsed.as_secs_f64(), 6),
        objects_per_s: round(objects as f64 / elapsed.as_secs_f64(), 0),
        grace_periods: k.rcu().stats().grace_periods - gp0,
        batches: s.batches,
        mean_batch: round(s.mean_batch(), 1),
        peak_pending_bytes: s.peak_pending_bytes,
        peak_rss_bytes: peak_rss_bytes(),
        fallbacks,
        fallback_pct: round(s.fallback_ratio() * 100.0, 4),
        reclaim_ns_per_object: round(s.reclaim_ns_per_object(), 1),
    };
    emit(a.json, &result, render);
    Ok(())
}

fn render(r: &ScaleResult) -> String {
    let rows = [
        (
            "objects",
            format!(
                "{} ({} threads × {} loops × {})",
                r.objects, r.threads, r.loops, r.objects_per_loop
            ),
        ),
        (
            "forms",
            format!("{} ({} single-argument calls)", r.mix, r.single_form_calls),
        ),
        (
            "total time",
            format!("{:.6} s (until the last object was freed)", r.total_s),
        ),
        ("objects/s", format!("{:.2} M", r.objects_per_s / 1e6)),
        ("grace periods", r.grace_periods.to_string()),
        (
            "batches",
            format!("{} (mean {} objects)", r.batches, r.mean_batch),
        ),
        ("peak pending", args::show_bytes(r.peak_pending_bytes)),
        ("peak RSS", args::show_bytes(r.peak_rss_bytes)),
        (
            "fallbacks",
            format!("{} ({:.3} %)", r.fallbacks, r.fallback_pct),
        ),
        ("reclaim", format!("{} ns/object", r.reclaim_ns_per_object)),
    ];
    let t = Table::of_pairs(["what", "value"], rows);
    format!(
        "krcu scale: rcuscale's kfree test, policy {}, preempt {}\n\n{}",
        r.policy,
        r.preempt,
        t.render()
    )
}
