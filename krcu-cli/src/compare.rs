//! `krcu compare`: one end-to-end workload through krcu, crossbeam-epoch,
//! seize, (liburcu's `call_rcu` with the `liburcu` feature) and dropping
//! the Box at once: per thread, N times, allocate a 24-byte object, publish
//! it in the thread's slot, retire the one it replaced; the clock stops
//! when every object is freed. Systems run interleaved, in a rotating
//! order, round after round; ratios are krcu ÷ the other, per round.

use crate::args::{self, CliError, CmdResult};
use crate::output::{emit, round};
use crate::progress::Progress;
use crate::table::{Column, Table};
use crate::workload::{Obj24, Reports, Setup, median, peak_rss_bytes};
use crossbeam_utils::CachePadded;
use krcu::Krcu;
use krcu::context::PreemptModel;
use krcu::kvfree::Policy;
use krcu::slab::SlabBox;
use serde::Serialize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering::AcqRel};
use std::time::{Duration, Instant};

/// Options of `krcu compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Objects each thread allocates, publishes and retires per run, 1 to
    /// 20_000_000 (the whole comparison takes about 5 s per million).
    #[arg(long, default_value = "2_000_000", allow_negative_numbers = true, value_parser = args::compare_objects)]
    pub objects: usize,
    /// The most threads, 1 to 256: every system runs with 1 thread and
    /// with this many.
    #[arg(long, default_value = "2", allow_negative_numbers = true, value_parser = args::threads)]
    pub threads: usize,
    /// Rounds, 1 to 100 (each runs every system once per thread count).
    #[arg(long, default_value = "5", allow_negative_numbers = true, value_parser = args::rounds)]
    pub rounds: usize,
    /// krcu's policy.
    #[arg(long, default_value_t = Policy::default())]
    pub policy: Policy,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run every system in this process (the default runs each run in a
    /// fresh process of its own, so that its peak RSS is its own).
    #[arg(long)]
    pub in_process: bool,
    /// Internal: run the system of this index once at this many threads
    /// (`INDEX:THREADS`), in this process, and print its result for the
    /// parent.
    #[arg(long, hide = true)]
    pub one: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Krcu,
    /// krcu with callers freeing what is ready (Assist::Always).
    KrcuAssist,
    /// krcu's slab path: `SlabBox` from a shared cache, retired with
    /// `kfree_rcu_slab` (into the thread's `rcu_free` sheaf when the
    /// sheaves are built; the kvfree blocks otherwise).
    KrcuSheaves,
    CrossbeamEpoch,
    Seize,
    #[cfg(feature = "liburcu")]
    Liburcu,
    Drop,
}

impl System {
    const ALL: &[System] = &[
        System::Krcu,
        System::KrcuAssist,
        System::KrcuSheaves,
        System::CrossbeamEpoch,
        System::Seize,
        #[cfg(feature = "liburcu")]
        System::Liburcu,
        System::Drop,
    ];

    fn name(self) -> &'static str {
        match self {
            System::Krcu => "krcu kfree_rcu",
            System::KrcuAssist => "krcu, assist always",
            System::KrcuSheaves => "krcu sheaves (SlabBox)",
            System::CrossbeamEpoch => "crossbeam-epoch",
            System::Seize => "seize",
            #[cfg(feature = "liburcu")]
            System::Liburcu => "liburcu call_rcu",
            System::Drop => "drop at once",
        }
    }
}

/// One system at one thread count, over the rounds.
#[derive(Debug, Serialize)]
pub struct Row {
    pub system: &'static str,
    pub threads: usize,
    pub objects_per_s: Stat,
    pub ns_per_object: f64,
    /// krcu only: the most memory waiting for a grace period (objects and
    /// block pages), median over the rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_pending_bytes: Option<u64>,
    /// Peak resident memory of the process that ran it (fresh per run),
    /// median over the rounds; absent with `--in-process`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// krcu's objects/s ÷ this system's, per round (absent for krcu).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub krcu_ratio: Option<Stat>,
}

/// Min, median and max over the rounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stat {
    fn of(v: &[f64], digits: i32) -> Stat {
        let mut v = v.to_vec();
        let med = median(&mut v);
        Stat {
            min: round(v.first().copied().unwrap_or(0.0), digits),
            median: round(med, digits),
            max: round(v.last().copied().unwrap_or(0.0), digits),
        }
    }
}

/// `krcu compare`'s result.
#[derive(Debug, Serialize)]
pub struct CompareResult {
    pub objects_per_thread: usize,
    pub object_bytes: usize,
    pub rounds: usize,
    pub policy: String,
    pub liburcu: bool,
    pub rows: Vec<Row>,
}

type Slots = [CachePadded<AtomicPtr<Obj24>>];

/// The workload of one thread: `n` times, allocate an object, publish it
/// in `slot` and hand the one it replaced (unlinked, so the caller's) to
/// `retire`; at the end unlink and retire the last one.
fn churn(slot: &AtomicPtr<Obj24>, n: usize, mut retire: impl FnMut(*mut Obj24)) {
    for i in 0..=n {
        let new = if i < n {
            Box::into_raw(Obj24::boxed(i as u64))
        } else {
            core::ptr::null_mut()
        };
        let old = slot.swap(new, AcqRel);
        if !old.is_null() {
            retire(old);
        }
    }
}

/// Runs `per_thread` on `threads` threads, each with its own slot; returns
/// when it started (the caller stops the clock when all is freed).
fn timed(
    threads: usize,
    objects: usize,
    per_thread: impl Fn(&AtomicPtr<Obj24>, usize) + Sync,
) -> Instant {
    let slots: Box<Slots> = (0..threads)
        .map(|_| CachePadded::new(AtomicPtr::new(core::ptr::null_mut())))
        .collect();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for slot in slots.iter() {
            let f = &per_thread;
            s.spawn(move || f(slot, objects));
        }
    });
    t0
}

fn run_krcu(k: &Krcu, threads: usize, objects: usize) -> Duration {
    let t0 = timed(threads, objects, |slot, n| {
        churn(slot, n, |old| {
            // SAFETY: unlinked from the slot just now: ours.
            k.kfree_rcu(unsafe { Box::from_raw(old) })
                .expect("refused only in NMI context, which this thread never enters");
        });
    });
    k.kvfree_rcu_barrier();
    t0.elapsed()
}

/// The slab path: the same workload with objects of a cache shared by the
/// threads (made off the clock), retired with `kfree_rcu_slab`; the slot
/// holds the box's object, given up with `into_raw` while published.
fn run_krcu_sheaves(k: &Krcu, threads: usize, objects: usize) -> Duration {
    let cache = k
        .slab_cache::<Obj24>("compare")
        .expect("a 24-byte object fits a slab");
    let t0 = timed(threads, objects, |slot, n| {
        for i in 0..=n {
            let new = if i < n {
                let b = cache
                    .alloc_box(Obj24::new(i as u64))
                    .unwrap_or_else(|_| panic!("krcu compare: the arena is full"));
                SlabBox::into_raw(b).as_ptr()
            } else {
                core::ptr::null_mut()
            };
            if let Some(old) = NonNull::new(slot.swap(new, AcqRel)) {
                // SAFETY: unlinked from the slot just now: the box given up
                // with into_raw when it was published, ours again.
                let old = unsafe { SlabBox::from_raw(old) };
                if k.kfree_rcu_slab(old).is_err() {
                    unreachable!("refused only in NMI context or for another instance's cache");
                }
            }
        }
    });
    k.kvfree_rcu_barrier();
    t0.elapsed()
}

fn run_crossbeam(threads: usize, objects: usize) -> Duration {
    let collector = crossbeam_epoch::Collector::new();
    let t0 = timed(threads, objects, |slot, n| {
        let handle = collector.register();
        churn(slot, n, |old| {
            let guard = handle.pin();
            let old = SendPtr(old);
            // SAFETY: unlinked; freed once, after every guard
            // pinned before now is gone.
            unsafe { guard.defer_unchecked(move || drop(Box::from_raw(old.get()))) };
        });
    });
    // The collector's last reference: everything deferred is run.
    drop(collector);
    t0.elapsed()
}

fn run_seize(threads: usize, objects: usize) -> Duration {
    let collector = seize::Collector::new();
    let t0 = timed(threads, objects, |slot, n| {
        churn(slot, n, |old| {
            // SAFETY: unlinked; allocated with Box.
            unsafe { collector.retire(old, seize::reclaim::boxed) };
        });
    });
    // Dropping the collector reclaims everything retired.
    drop(collector);
    t0.elapsed()
}

fn run_drop(threads: usize, objects: usize) -> Duration {
    timed(threads, objects, |slot, n| {
        churn(slot, n, |old| {
            // SAFETY: unlinked; nobody else can reach it.
            drop(unsafe { Box::from_raw(old) });
        });
    })
    .elapsed()
}

/// A raw pointer moved into a deferred closure.
struct SendPtr(*mut Obj24);
// SAFETY: the object is plain data; the pointer is only used to free it.
unsafe impl Send for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut Obj24 {
        self.0
    }
}

#[cfg(feature = "liburcu")]
mod urcu {
    //! liburcu's memb flavour, linked from liburcu-dev (`urcu-memb`).
    use super::{Obj24, churn, timed};
    use std::time::Duration;

    /// `struct rcu_head` (urcu/call-rcu.h): a wait-free queue node and a
    /// function, two words, the same size as krcu's RcuHead.
    #[repr(C)]
    pub struct UrcuHead {
        next: *mut UrcuHead,
        func: unsafe extern "C" fn(*mut UrcuHead),
    }
    const _: () = assert!(size_of::<UrcuHead>() == size_of::<krcu::rcu::RcuHead>());

    #[link(name = "urcu-memb")]
    unsafe extern "C" {
        fn urcu_memb_register_thread();
        fn urcu_memb_unregister_thread();
        fn urcu_memb_call_rcu(head: *mut UrcuHead, func: unsafe extern "C" fn(*mut UrcuHead));
        fn urcu_memb_barrier();
    }

    unsafe extern "C" fn free_obj(head: *mut UrcuHead) {
        // SAFETY: the head is the `head` field of a leaked Box<Obj24>.
        unsafe {
            let obj = head
                .byte_sub(core::mem::offset_of!(Obj24, head))
                .cast::<Obj24>();
            drop(Box::from_raw(obj));
        }
    }

    pub fn run(threads: usize, objects: usize) -> Duration {
        let t0 = timed(threads, objects, |slot, n| {
            // SAFETY: registering the calling thread has no preconditions.
            unsafe { urcu_memb_register_thread() };
            churn(slot, n, |old| {
                // SAFETY: unlinked; the object's RcuHead field is two
                // words, unused while liburcu owns it as its rcu_head;
                // free_obj frees the Box once.
                unsafe {
                    let head = (&raw mut (*old).head).cast::<UrcuHead>();
                    urcu_memb_call_rcu(head, free_obj);
                }
            });
            // SAFETY: registered above.
            unsafe { urcu_memb_unregister_thread() };
        });
        // SAFETY: waits for every callback queued so far.
        unsafe { urcu_memb_barrier() };
        t0.elapsed()
    }
}

/// Runs one system; krcu gets a fresh instance (built off the clock) so
/// its peak pending memory is this run's.
fn run_one(
    system: System,
    setup: &Setup,
    threads: usize,
    objects: usize,
) -> Result<(Duration, u64), krcu::BuildError> {
    let d = match system {
        System::Krcu | System::KrcuAssist => {
            let setup = Setup {
                assist: (system == System::KrcuAssist).then_some(krcu::kvfree::Assist::Always),
                ..*setup
            };
            let k = setup.build(&Reports::default())?;
            let d = run_krcu(&k, threads, objects);
            return Ok((d, k.stats().peak_pending_bytes));
        }
        System::KrcuSheaves => {
            let k = setup.build(&Reports::default())?;
            let d = run_krcu_sheaves(&k, threads, objects);
            return Ok((d, k.stats().peak_pending_bytes));
        }
        System::CrossbeamEpoch => run_crossbeam(threads, objects),
        System::Seize => run_seize(threads, objects),
        #[cfg(feature = "liburcu")]
        System::Liburcu => urcu::run(threads, objects),
        System::Drop => run_drop(threads, objects),
    };
    Ok((d, 0))
}

/// One run's figures.
struct RunResult {
    time: Duration,
    pending: u64,
    rss: u64,
}

/// Runs `system` once in a fresh process (this program, `compare --one`),
/// which warms up and runs it; returns its figures.
fn run_isolated(a: &Args, si: usize, threads: usize) -> Result<RunResult, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Failed(format!("krcu compare: no executable: {e}")))?;
    let out = std::process::Command::new(exe)
        .args([
            "compare",
            "--one",
            &format!("{si}:{threads}"),
            "--objects",
            &a.objects.to_string(),
            "--policy",
            &a.policy.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| CliError::Failed(format!("krcu compare: cannot run a system: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if !out.status.success() || v.len() != 3 {
        return Err(CliError::Failed(format!(
            "krcu compare: {} failed in its own process ({}): {text}",
            System::ALL[si].name(),
            out.status
        )));
    }
    Ok(RunResult {
        time: Duration::from_nanos(v[0]),
        pending: v[1],
        rss: v[2],
    })
}

/// `compare --one INDEX:THREADS`: a warm-up and one run of one system in
/// this process; prints nanoseconds, peak pending bytes, peak RSS bytes.
fn run_one_here(a: &Args, spec: &str) -> CmdResult {
    let bad = || CliError::Usage(format!("--one {spec}: expected INDEX:THREADS"));
    let (si, threads) = spec.split_once(':').ok_or_else(bad)?;
    let si: usize = si.parse().map_err(|_| bad())?;
    let threads: usize = threads.parse().map_err(|_| bad())?;
    let system = *System::ALL.get(si).ok_or_else(bad)?;
    let setup = Setup::new(a.policy, PreemptModel::Full);
    run_one(system, &setup, 1, a.objects / 10 + 1)?;
    let (d, pending) = run_one(system, &setup, threads, a.objects)?;
    println!("{} {pending} {}", d.as_nanos(), peak_rss_bytes());
    Ok(())
}

/// Runs the comparison; used by `krcu compare` and the tour.
pub fn measure(a: &Args, quiet: bool) -> Result<CompareResult, crate::args::CliError> {
    let setup = Setup::new(a.policy, PreemptModel::Full);
    let counts: Vec<usize> = if a.threads == 1 {
        vec![1]
    } else {
        vec![1, a.threads]
    };
    let systems = System::ALL;
    // rates[count][system][round], pending likewise.
    let mut rates = vec![vec![Vec::new(); systems.len()]; counts.len()];
    let mut pending = vec![vec![Vec::new(); systems.len()]; counts.len()];
    let mut rss = vec![vec![Vec::new(); systems.len()]; counts.len()];
    let mut progress = Progress::new(
        "compare",
        (a.rounds * counts.len() * systems.len()) as u64,
        quiet,
    );
    // A warm-up of each, not measured: page faults, allocator arenas (a
    // fresh process warms up itself).
    if a.in_process {
        for &s in systems {
            run_one(s, &setup, 1, a.objects / 10 + 1)?;
        }
    }
    for round in 0..a.rounds {
        for (ci, &threads) in counts.iter().enumerate() {
            for j in 0..systems.len() {
                let si = (j + round) % systems.len();
                progress.step(&format!(
                    "round {} · {} · {threads} threads",
                    round + 1,
                    systems[si].name()
                ));
                let r = if a.in_process {
                    let (time, p) = run_one(systems[si], &setup, threads, a.objects)?;
                    RunResult {
                        time,
                        pending: p,
                        rss: 0,
                    }
                } else {
                    run_isolated(a, si, threads)?
                };
                rates[ci][si].push((threads * a.objects) as f64 / r.time.as_secs_f64());
                pending[ci][si].push(r.pending as f64);
                rss[ci][si].push(r.rss as f64);
            }
        }
    }
    progress.finish();
    let mut rows = Vec::new();
    for (ci, &threads) in counts.iter().enumerate() {
        for (si, &system) in systems.iter().enumerate() {
            let tput = Stat::of(&rates[ci][si], 0);
            let ratios: Vec<f64> = rates[ci][0]
                .iter()
                .zip(&rates[ci][si])
                .map(|(k, o)| k / o)
                .collect();
            rows.push(Row {
                system: system.name(),
                threads,
                objects_per_s: tput,
                ns_per_object: round(1e9 / tput.median * threads as f64, 1),
                peak_pending_bytes: matches!(
                    system,
                    System::Krcu | System::KrcuAssist | System::KrcuSheaves
                )
                .then(|| median(&mut pending[ci][si].clone()) as u64),
                peak_rss_bytes: (!a.in_process).then(|| median(&mut rss[ci][si].clone()) as u64),
                krcu_ratio: (system != System::Krcu).then(|| Stat::of(&ratios, 2)),
            });
        }
    }
    Ok(CompareResult {
        objects_per_thread: a.objects,
        object_bytes: size_of::<Obj24>(),
        rounds: a.rounds,
        policy: a.policy.to_string(),
        liburcu: cfg!(feature = "liburcu"),
        rows,
    })
}

pub fn run(a: &Args) -> CmdResult {
    if let Some(spec) = &a.one {
        return run_one_here(a, spec);
    }
    let r = measure(a, a.json)?;
    emit(a.json, &r, render);
    Ok(())
}

pub fn render(r: &CompareResult) -> String {
    let columns = [
        Column::<Row>::new("system", |row| row.system.to_string()),
        Column::new("threads", |row| row.threads.to_string()),
        Column::new("M objects/s (min / median / max)", |row| {
            let s = row.objects_per_s;
            format!(
                "{:.1} / {:.1} / {:.1}",
                s.min / 1e6,
                s.median / 1e6,
                s.max / 1e6
            )
        }),
        Column::new("ns/object/thread", |row| {
            format!("{:.1}", row.ns_per_object)
        }),
        Column::new("krcu peak pending", |row| {
            row.peak_pending_bytes.map_or("-".into(), args::show_bytes)
        }),
        Column::new("peak RSS", |row| {
            row.peak_rss_bytes.map_or("-".into(), args::show_bytes)
        }),
        Column::new("krcu ÷ this (min / median / max)", |row| {
            row.krcu_ratio.map_or("-".into(), |q| {
                format!("{:.2} / {:.2} / {:.2}", q.min, q.median, q.max)
            })
        }),
    ];
    let t = Table::of(&columns, &r.rows);
    let mut out = format!(
        "krcu compare: {} objects of {} bytes per thread, allocated, published, retired and freed; {} rounds, interleaved\n\n",
        r.objects_per_thread, r.object_bytes, r.rounds
    );
    out.push_str(&t.render());
    if !r.liburcu {
        out.push_str("(liburcu's call_rcu joins with `--features liburcu`, given liburcu-dev)\n");
    }
    out
}
