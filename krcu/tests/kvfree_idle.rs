//! An idle instance: its `kfree_rcu` threads sleep until there is work
//! (waking a few times a second at most), no wake-up is lost when work
//! comes just as the monitor decides to sleep, a real-time thread that
//! queues after a quiet spell never rings the doorbell and is served by the
//! monitor's timed wake-up, and neither a drop nor a fork waits for the
//! idle timeout. And `krcu::flush` runs every destructor queued on the
//! process-wide instance.
//!
//! Wake-ups are counted by the threads themselves (`Krcu::idle_counters`,
//! feature `testing`), not measured as CPU time. Every wait is bounded by
//! progress with a generous deadline, far below the idle timeouts the
//! tests set (so that a test passes only if the thread was woken, not
//! because its timeout ran out).

mod common;

use common::instances::{IDLE_DEADLINE, idle_instance, work_then_idle};
use common::{CountedNode, wait_for};
use krcu::Krcu;
use krcu::kvfree::Policy;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

fn instance(idle_poll: Duration) -> Krcu {
    idle_instance(idle_poll, Policy::default())
}

#[test]
fn an_idle_instance_wakes_its_threads_only_at_the_idle_poll() {
    let idle_poll = Duration::from_millis(100);
    let k = instance(idle_poll);
    work_then_idle(&k, 1000);
    let (before, _, _) = k.idle_counters();
    let window = Duration::from_secs(2);
    let start = Instant::now();
    std::thread::sleep(window);
    let elapsed = start.elapsed();
    let (after, _, _) = k.idle_counters();
    // The monitor, the refill thread and a reclaimer per CPU (2), each
    // about once per idle poll; twice that, plus a few for the edges, as a
    // bound (the refill thread may wake twice in a poll when its timeout
    // meets the monitor's pass). Polling every drain delay (5 ms) as
    // before, the monitor and the refill thread alone would wake about 800
    // times in 2 s. (Load only makes them wake less.)
    let threads = 4;
    let polls = (elapsed.as_millis() / idle_poll.as_millis()) as u64 + 3;
    let woke = after - before;
    assert!(
        woke <= 2 * threads * polls,
        "{woke} wake-ups in {elapsed:?} (at most {} expected)",
        2 * threads * polls
    );
    // And the idle sleep is not just never entered with nothing counted:
    // the threads did wake at their timeouts.
    assert!(woke > 0, "no wake-up at all in {elapsed:?}");
}

/// The lost wake-up: the monitor announced its idle sleep and re-checked
/// that nothing is pending; before it waits, a caller installs a block.
/// The caller's doorbell must see the announcement and kick, or the object
/// would wait for the idle timeout (10 minutes here).
#[test]
fn work_queued_as_the_monitor_decides_to_sleep_is_not_left_until_the_timeout() {
    let k = instance(Duration::from_secs(600));
    work_then_idle(&k, 100);
    let armed = Arc::new(AtomicBool::new(true));
    let (at_gap, gap_reached) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let hook_armed = armed.clone();
    k.set_idle_hook(Some(Arc::new(move || {
        if hook_armed.swap(false, SeqCst) {
            let _ = at_gap.send(());
            let _ = released.lock().unwrap().recv_timeout(IDLE_DEADLINE);
        }
    })));
    // The monitor sleeps idle (10 minutes) now: wake it with some work (a
    // task-context call rings the doorbell), so that once that is done it
    // goes to sleep idle again and stops in the hook, between its re-check
    // and its wait.
    let first = Arc::new(AtomicUsize::new(0));
    k.kfree_rcu(CountedNode::new(&first)).unwrap();
    gap_reached
        .recv_timeout(IDLE_DEADLINE)
        .expect("the monitor reached its idle wait");
    let (_, kicks_before, _) = k.idle_counters();
    let freed = Arc::new(AtomicUsize::new(0));
    k.kfree_rcu(CountedNode::new(&freed)).unwrap();
    let (_, kicks_after, _) = k.idle_counters();
    assert_eq!(
        kicks_after,
        kicks_before + 1,
        "the caller that installed the first block after the re-check kicked the monitor"
    );
    release.send(()).unwrap();
    assert_eq!(
        first.load(SeqCst),
        1,
        "the monitor went idle with work left"
    );
    // Freed after a drain delay and a grace period, not after 10 minutes.
    wait_for(
        "the object queued in the gap is freed",
        IDLE_DEADLINE,
        || freed.load(SeqCst) == 1,
    );
    k.set_idle_hook(None);
}

/// A real-time thread queueing after a quiet spell makes no system call:
/// it does not ring the doorbell; the monitor's next timed wake-up (the
/// idle poll, 200 ms here) finds the object.
#[test]
fn a_real_time_thread_after_a_quiet_spell_leaves_its_work_for_the_timed_wakeup() {
    let k = Arc::new(instance(Duration::from_millis(200)));
    work_then_idle(&k, 100);
    let (_, kicks_before, _) = k.idle_counters();
    let freed = Arc::new(AtomicUsize::new(0));
    let node = CountedNode::new(&freed);
    let k2 = k.clone();
    std::thread::spawn(move || {
        let _handle = k2.register_thread(); // real-time from here on
        k2.kfree_rcu(node).unwrap();
        krcu::context::set_realtime(false);
    })
    .join()
    .unwrap();
    wait_for(
        "the real-time thread's object is freed",
        IDLE_DEADLINE,
        || freed.load(SeqCst) == 1,
    );
    let (_, kicks_after, _) = k.idle_counters();
    assert_eq!(
        kicks_after, kicks_before,
        "a real-time thread rang the doorbell"
    );
}

/// A task-context caller after a quiet spell does ring it: its object waits
/// a drain delay, not the idle poll (10 minutes here).
#[test]
fn a_task_caller_after_a_quiet_spell_wakes_the_monitor() {
    let k = instance(Duration::from_secs(600));
    work_then_idle(&k, 100);
    let (_, kicks_before, _) = k.idle_counters();
    let freed = Arc::new(AtomicUsize::new(0));
    k.kfree_rcu(CountedNode::new(&freed)).unwrap();
    wait_for("the object is freed", IDLE_DEADLINE, || {
        freed.load(SeqCst) == 1
    });
    let (_, kicks_after, _) = k.idle_counters();
    assert!(kicks_after > kicks_before, "no doorbell kick");
}

/// Dropping an instance whose threads sleep idle wakes them: the drop does
/// not wait for their 10-minute timeout.
#[test]
fn dropping_an_idle_instance_does_not_wait_for_the_idle_timeout() {
    let k = instance(Duration::from_secs(600));
    work_then_idle(&k, 100);
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        drop(k);
        let _ = done.send(());
    });
    finished
        .recv_timeout(IDLE_DEADLINE)
        .expect("the drop of an idle instance finished");
}

/// A fork while the threads sleep idle parks them (they are kicked) and
/// the child's restarted threads work: neither waits for the timeout. In a
/// child process of its own, so that no other test's threads run at the
/// fork.
#[test]
fn fork_while_the_threads_sleep_idle_does_not_wait_for_their_timeout() {
    common::child::assert_passes_in_child("inner_fork_while_the_threads_sleep_idle", IDLE_DEADLINE);
}

#[test]
#[ignore = "run by its outer test in a child process"]
fn inner_fork_while_the_threads_sleep_idle() {
    let k = instance(Duration::from_secs(600));
    work_then_idle(&k, 100);
    // The forking thread is in no read-side section and the child uses
    // only its own instance, then exits with _exit.
    let code = common::child::fork_run("fork while idle", IDLE_DEADLINE, || {
        let freed = Arc::new(AtomicUsize::new(0));
        for _ in 0..100 {
            k.kfree_rcu(CountedNode::new(&freed)).unwrap();
        }
        k.kvfree_rcu_barrier();
        i32::from(freed.load(SeqCst) != 100)
    });
    assert_eq!(code, 0, "the child's objects were not all freed");
    // The parent's threads went back to sleep idle, and still work.
    work_then_idle(&k, 100);
}

/// `krcu::flush`: 1 000 objects queued on the process-wide instance have
/// all been dropped when it returns. In a child process of its own, so
/// that nothing else uses the process-wide instance meanwhile.
#[test]
fn flush_runs_every_destructor_queued_on_the_global_instance() {
    common::child::assert_passes_in_child(
        "inner_flush_runs_every_destructor_queued_on_the_global_instance",
        IDLE_DEADLINE,
    );
}

#[test]
#[ignore = "run by its outer test in a child process"]
fn inner_flush_runs_every_destructor_queued_on_the_global_instance() {
    let freed = Arc::new(AtomicUsize::new(0));
    const N: usize = 1000;
    for _ in 0..N {
        krcu::kfree_rcu(CountedNode::new(&freed)).unwrap();
    }
    krcu::flush();
    assert_eq!(freed.load(SeqCst), N, "not every destructor had run");
}

/// The reclaimer threads start on demand: none at build, all of them once
/// the monitor first hands work to RCU (no barrier here: the monitor's own
/// pass starts them). In a child process of its own, so that no other
/// test's instance has threads of that name.
#[test]
fn reclaimer_threads_start_when_there_is_something_to_reclaim() {
    common::child::assert_passes_in_child("inner_reclaimer_threads_start_on_demand", IDLE_DEADLINE);
}

/// How many threads of this process have a name starting with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|n| n.starts_with(prefix))
        .count()
}

#[test]
#[ignore = "run by its outer test in a child process"]
fn inner_reclaimer_threads_start_on_demand() {
    let k = instance(Duration::from_millis(100));
    // A moment for the threads started at build to name themselves.
    wait_for("the monitor names itself", IDLE_DEADLINE, || {
        threads_named("krcu-kvmon") == 1
    });
    assert_eq!(
        threads_named("krcu-reclaim"),
        0,
        "reclaimers started at build"
    );
    let freed = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        k.kfree_rcu(CountedNode::new(&freed)).unwrap();
    }
    wait_for(
        "the objects are freed without a barrier",
        IDLE_DEADLINE,
        || freed.load(SeqCst) == 100,
    );
    // Both reclaimers (one per CPU of the instance) name themselves a
    // moment after they start.
    wait_for("both reclaimers run", IDLE_DEADLINE, || {
        threads_named("krcu-reclaim") == 2
    });
}

/// Where the reclaimers cannot be started (fault injection: no thread),
/// nothing is lost: a barrier frees what is ready itself, and so does the
/// teardown. In a child process of its own (it counts threads by name).
#[test]
fn without_reclaimer_threads_barriers_and_the_teardown_free_everything() {
    common::child::assert_passes_in_child("inner_without_reclaimer_threads", IDLE_DEADLINE);
}

#[test]
#[ignore = "run by its outer test in a child process"]
fn inner_without_reclaimer_threads() {
    let k = instance(Duration::from_millis(100));
    k.fail_reclaimer_start(true);
    let freed = Arc::new(AtomicUsize::new(0));
    for _ in 0..1000 {
        k.kfree_rcu(CountedNode::new(&freed)).unwrap();
    }
    k.kvfree_rcu_barrier();
    assert_eq!(freed.load(SeqCst), 1000, "the barrier left objects unfreed");
    // Handed over by the monitor's own passes, then freed by the teardown.
    for _ in 0..1000 {
        k.kfree_rcu(CountedNode::new(&freed)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(threads_named("krcu-reclaim"), 0, "a reclaimer started");
    drop(k);
    assert_eq!(
        freed.load(SeqCst),
        2000,
        "the teardown left objects unfreed"
    );
}
