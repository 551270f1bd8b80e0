//! `fork()`: the child of a process that uses krcu (the process-wide
//! instance and a built one) keeps working: it retires objects, waits for
//! barriers and grace periods, and drops its instance, without hanging,
//! even when the parent forked while other threads were retiring and
//! reading, and when a thread of the parent sat inside a read-side section
//! at the moment of fork (that thread does not exist in the child).
//!
//! One test, in its own binary, so that the process has few threads and no
//! other test forks or reads at the same time.

mod common;

use common::CountedNode;

use krcu::Krcu;
use krcu::rcu;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the parent waits for a child before it counts as hung.
const CHILD_TIMEOUT: Duration = Duration::from_secs(20);

/// Exit codes of the child.
const OK: i32 = 0;
const PANICKED: i32 = 101;

/// The child's work: retire on the process-wide instance and on `k` with
/// every entry point, wait for everything, and check every destructor ran.
fn retire_and_wait(k: &Krcu) {
    let freed = Arc::new(AtomicUsize::new(0));
    const N: usize = 200;
    for _ in 0..N {
        krcu::kfree_rcu(CountedNode::new(&freed)).unwrap();
        k.kfree_rcu(CountedNode::new(&freed)).unwrap();
    }
    krcu::kvfree_rcu_mightsleep(CountedNode::new(&freed)).unwrap_or_else(|_| unreachable!());
    rcu::call_rcu_box(CountedNode::new(&freed));
    k.rcu().call_rcu_box(CountedNode::new(&freed));
    krcu::kvfree_rcu_barrier();
    k.kvfree_rcu_barrier();
    rcu::synchronize();
    k.rcu().synchronize();
    rcu::rcu_barrier();
    k.rcu().rcu_barrier();
    assert_eq!(freed.load(SeqCst), 2 * N + 3, "not every destructor ran");
    let _g = rcu::read_lock();
    // The child has its own workers: for each of the two instances an RCU
    // worker, a kvfree worker and kswapd.
    // A thread names itself when it first runs, a moment after it is
    // spawned: wait (bounded) for the restarted ones to do so.
    let deadline = Instant::now() + Duration::from_secs(10);
    for name in ["krcu-rcu-gp", "krcu-kvfree", "kswapd"] {
        while threads_named(name) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(threads_named(name), 2, "{name} threads in the child");
    }
}

/// How many threads of this process have this name.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|n| n.trim_end() == name)
        .count()
}

/// Forks; the child runs `work` and exits with `OK` (or `PANICKED`); the
/// parent waits for it, polling, and kills it after `CHILD_TIMEOUT`.
fn fork_and_check(what: &str, work: impl FnOnce()) {
    // SAFETY: fork has no preconditions; the child runs `work` and ends
    // with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        // SAFETY: _exit ends the child without running the parent's atexit
        // handlers or the test harness's teardown, which belong to the
        // parent.
        unsafe { libc::_exit(if r.is_ok() { OK } else { PANICKED }) }
    }
    let Some(status) = common::child::wait_pid_until(pid, Instant::now() + CHILD_TIMEOUT) else {
        panic!("{what}: the child hung (killed after {CHILD_TIMEOUT:?})");
    };
    assert!(
        libc::WIFEXITED(status),
        "{what}: the child died: status {status:#x}"
    );
    assert_eq!(
        libc::WEXITSTATUS(status),
        OK,
        "{what}: the child failed (exit code 101: it panicked)"
    );
}

fn built() -> Krcu {
    Krcu::builder()
        .arena_size(16 << 20)
        .cpus(2)
        .build()
        .unwrap()
}

#[test]
fn fork_child_retires_and_synchronizes() {
    // A fork that hangs fails the test instead of hanging it.
    let done = Arc::new(AtomicBool::new(false));
    {
        let done = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(SeqCst) {
                if start.elapsed() > Duration::from_secs(120) {
                    eprintln!("fork test: hung for 120 s in the parent; aborting");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }

    // The parent uses the process-wide instance and a built one.
    let freed = Arc::new(AtomicUsize::new(0));
    let k = built();
    krcu::kfree_rcu(CountedNode::new(&freed)).unwrap();
    k.kfree_rcu(CountedNode::new(&freed)).unwrap();
    krcu::kvfree_rcu_barrier();
    k.kvfree_rcu_barrier();
    rcu::synchronize();
    assert_eq!(freed.load(SeqCst), 2);

    // Quiet: the child works, then drops its copy of the built instance.
    fork_and_check("quiet fork", || {
        retire_and_wait(&k);
        drop(k);
    });

    // A thread of the parent sits inside read-side sections of both
    // instances when the parent forks: in the child it does not exist, and
    // its sections must not hold up the child's grace periods.
    let k = Arc::new(built());
    let (inside_tx, inside_rx) = mpsc::channel();
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    let reader = {
        let k = k.clone();
        std::thread::spawn(move || {
            let _g = rcu::read_lock();
            let _h = k.rcu().read_lock();
            inside_tx.send(()).unwrap();
            let _ = leave_rx.recv();
        })
    };
    inside_rx.recv().unwrap();
    fork_and_check("fork with a reader inside", || retire_and_wait(&k));
    leave_tx.send(()).unwrap();
    reader.join().unwrap();

    // Busy: another thread retires, reads and synchronizes on both
    // instances while the parent forks.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (k, stop, freed) = (k.clone(), stop.clone(), freed.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(SeqCst) {
                {
                    let _g = rcu::read_lock();
                    krcu::kfree_rcu(CountedNode::new(&freed)).unwrap();
                }
                {
                    let _g = k.rcu().read_lock();
                    k.kfree_rcu(CountedNode::new(&freed)).unwrap();
                }
                if i.is_multiple_of(64) {
                    rcu::synchronize();
                    k.kvfree_rcu_barrier();
                }
                i += 1;
            }
        })
    };
    for round in 0..3 {
        fork_and_check(&format!("busy fork {round}"), || retire_and_wait(&k));
    }
    stop.store(true, SeqCst);
    busy.join().unwrap();
    done.store(true, SeqCst);
}
