//! `fork()` while another thread is building the process-wide instance
//! (`Krcu::global()`, and with it `rcu::global()`) for the first time: the
//! child's first use of it does not block forever on an initialisation
//! that a thread gone in the child had begun.
//!
//! In its own binary: the process-wide instance must not exist before the
//! test starts.

mod common;

use krcu::Krcu;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[test]
fn fork_while_the_global_instance_is_built() {
    let go = Arc::new(Barrier::new(2));
    let built = Arc::new(AtomicBool::new(false));
    let builder = {
        let (go, built) = (go.clone(), built.clone());
        std::thread::spawn(move || {
            go.wait();
            let _ = Krcu::global();
            built.store(true, SeqCst);
        })
    };
    go.wait();
    // Fork again and again while the instance is being built (at most 32
    // children: under valgrind on a loaded machine each child takes a
    // second or more of CPU, and the wait below is for all of them).
    let mut children = Vec::new();
    while !built.load(SeqCst) && children.len() < 32 {
        // SAFETY: fork has no preconditions; the child uses the instance
        // and ends with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let r = std::panic::catch_unwind(|| {
                let k = Krcu::global();
                k.kfree_rcu(Box::new(Node::default())).unwrap();
                k.kvfree_rcu_barrier();
                krcu::rcu::synchronize();
            });
            // SAFETY: _exit ends the child without running the parent's
            // handlers.
            unsafe { libc::_exit(if r.is_ok() { 0 } else { 101 }) }
        }
        children.push(pid);
    }
    builder.join().unwrap();
    let start = Instant::now();
    let mut hung = 0;
    for pid in children {
        match common::child::wait_pid_until(pid, start + Duration::from_secs(60)) {
            Some(status) => assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "a child failed: status {status:#x}"
            ),
            None => hung += 1,
        }
    }
    assert_eq!(
        hung, 0,
        "children forked while another thread built the process-wide instance hung \
         in their first use of it"
    );
}

#[derive(Default)]
struct Node {
    rcu: krcu::rcu::RcuHead,
}

// SAFETY: `rcu` is an RcuHead field of Node.
unsafe impl krcu::rcu::HasRcuHead for Node {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Node, rcu);
}
