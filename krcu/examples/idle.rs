//! What an idle instance costs: CPU time and context switches of every
//! thread but this one, over a window in which nothing is pending.
//!
//! For an instance of its own (`instance`) and for the process-wide one
//! (`global`), it queues a little work (1 000 objects with `kfree_rcu` and
//! a `kvfree_rcu_barrier`), waits until nothing is pending (and one second
//! more, for the idle trim), then measures `--rounds` windows of `--secs`
//! seconds each and prints every window and their median:
//! - CPU: the process's user+system time (`getrusage(RUSAGE_SELF)`) minus the
//!   measuring thread's own (`RUSAGE_THREAD`);
//! - context switches: voluntary plus non-voluntary, summed over
//!   `/proc/self/task/*/status`, the measuring thread's left out; per thread
//!   too (by name), to show which thread wakes.
//!
//! Run it with `cargo run --release -p krcu --example idle` (defaults:
//! both modes, 3 rounds of 10 s); `-- instance --secs 5 --rounds 1` for one
//! quick look.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// An object retired with `kfree_rcu`.
#[derive(krcu::HasRcuHead)]
struct Obj {
    #[rcu_head]
    head: krcu::rcu::RcuHead,
    _payload: [u64; 4],
}

impl Obj {
    fn boxed() -> Box<Obj> {
        Box::new(Obj {
            head: krcu::rcu::RcuHead::new(),
            _payload: [7; 4],
        })
    }
}

/// CPU time in microseconds of `who` (`RUSAGE_SELF` or `RUSAGE_THREAD`).
fn cpu_micros(who: libc::c_int) -> u64 {
    // SAFETY: getrusage writes a whole rusage into the zeroed one we own.
    let ru = unsafe {
        let mut ru: libc::rusage = core::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// Context switches of every thread of the process but `skip`, by thread
/// (name/tid).
fn switches(skip: i32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in dir.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        if tid == skip.to_string() {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // gone meanwhile
        };
        let mut name = String::new();
        let mut n = 0;
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("Name:") {
                name = v.trim().to_owned();
            } else if line.contains("ctxt_switches:") {
                n += line
                    .split(':')
                    .nth(1)
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        out.insert(format!("{name}/{tid}"), n);
    }
    out
}

/// One window's figures.
struct Window {
    cpu_us: u64,
    switches: u64,
    threads: usize,
    by_thread: BTreeMap<String, u64>,
}

fn measure(secs: u64) -> Window {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let cpu0 = cpu_micros(libc::RUSAGE_SELF) - cpu_micros(libc::RUSAGE_THREAD);
    let sw0 = switches(me);
    std::thread::sleep(Duration::from_secs(secs));
    let sw1 = switches(me);
    let cpu1 = cpu_micros(libc::RUSAGE_SELF) - cpu_micros(libc::RUSAGE_THREAD);
    let by_thread: BTreeMap<String, u64> = sw1
        .iter()
        .map(|(k, v)| (k.clone(), v - sw0.get(k).copied().unwrap_or(0)))
        .collect();
    Window {
        cpu_us: cpu1.saturating_sub(cpu0),
        switches: by_thread.values().sum(),
        threads: sw1.len(),
        by_thread,
    }
}

/// Queues a little work on `k` and waits until nothing is pending.
fn little_work(k: &krcu::Krcu) {
    for _ in 0..1000 {
        k.kfree_rcu(Obj::boxed()).expect("not in NMI context");
    }
    k.kvfree_rcu_barrier();
    let start = Instant::now();
    while k.stats().pending_objects > 0 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The monitor gives idle CPUs' spare blocks back about half a second
    // after their last call (its idle trim): that is still the tail of the
    // work, not idleness.
    std::thread::sleep(Duration::from_secs(1));
}

fn report(mode: &str, secs: u64, windows: &mut [Window]) {
    for (i, w) in windows.iter().enumerate() {
        println!(
            "{mode} window {}: {secs} s idle, {} threads besides this one: CPU {:.2} ms, {} context switches ({})",
            i + 1,
            w.threads,
            w.cpu_us as f64 / 1000.0,
            w.switches,
            w.by_thread
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut cpu: Vec<u64> = windows.iter().map(|w| w.cpu_us).collect();
    let mut sw: Vec<u64> = windows.iter().map(|w| w.switches).collect();
    cpu.sort_unstable();
    sw.sort_unstable();
    println!(
        "{mode} median over {} windows of {secs} s: CPU {:.2} ms, {} context switches",
        windows.len(),
        cpu[cpu.len() / 2] as f64 / 1000.0,
        sw[sw.len() / 2]
    );
}

fn run(mode: &str, secs: u64, rounds: usize) {
    let own;
    let k: &krcu::Krcu = if mode == "global" {
        krcu::Krcu::global()
    } else {
        own = krcu::Krcu::builder().build().expect("build an instance");
        &own
    };
    little_work(k);
    let mut windows: Vec<Window> = (0..rounds).map(|_| measure(secs)).collect();
    report(mode, secs, &mut windows);
}

fn main() {
    let mut modes = Vec::new();
    let (mut secs, mut rounds) = (10u64, 3usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => secs = args.next().and_then(|v| v.parse().ok()).expect("--secs N"),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--rounds N (N >= 1)")
            }
            "instance" | "global" => modes.push(a),
            other => {
                eprintln!(
                    "idle: unknown argument {other:?} (instance, global, --secs N, --rounds N)"
                );
                std::process::exit(2);
            }
        }
    }
    if modes.is_empty() {
        modes = vec!["instance".into(), "global".into()];
    }
    for m in &modes {
        run(m, secs, rounds);
    }
}
