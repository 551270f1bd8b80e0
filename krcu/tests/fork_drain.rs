//! `fork()` while an RCU instance dropped by one of its own callbacks is
//! still draining its queue: in the child, the callbacks queued on it run
//! (a new worker takes over the queue, finishes it and exits), as they do
//! in the parent.
//!
//! In its own binary: the test forks, and needs no other thread of the
//! process to be reading or forking meanwhile.

mod common;

use common::CountedNode;

use krcu::Domain;
use krcu::rcu::{HasRcuHead, Rcu, RcuConfig, RcuHead};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

/// Owns the instance it is queued on: its drop (in the instance's own
/// callback) drops the instance.
struct Owner {
    inner: Option<Rcu>,
    entered: Sender<()>,
    go: Receiver<()>,
    rcu: RcuHead,
}

// SAFETY: `rcu` is an RcuHead field of Owner.
unsafe impl HasRcuHead for Owner {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Owner, rcu);
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.entered.send(());
        let _ = self.go.recv_timeout(Duration::from_secs(10));
        // Meanwhile the test thread forks: its prepare handler waits for
        // this worker to park, which it does right after this callback,
        // with the nodes queued and `stop` set.
        std::thread::sleep(Duration::from_millis(200));
        drop(self.inner.take());
    }
}

const N: usize = 50;

#[test]
fn fork_child_runs_callbacks_of_an_instance_dropped_by_its_callback() {
    let freed = Arc::new(AtomicUsize::new(0));
    let (entered_tx, entered) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let owner = Box::new(Owner {
        inner: Some(Rcu::new(Domain::global(), RcuConfig::default())),
        entered: entered_tx,
        go: go_rx,
        rcu: RcuHead::new(),
    });
    // The instance lives inside the owner's box (its address does not
    // change when the box is handed over) until the owner's drop drops it,
    // which waits for `go`, sent after the last use of `rcu` below.
    let rcu: *const Rcu = owner.inner.as_ref().unwrap();
    // SAFETY: see above: the instance is alive here.
    unsafe { &*rcu }.call_rcu_box(owner);
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the owner's callback never ran");
    for _ in 0..N {
        // SAFETY: the owner's drop is waiting for `go`: the instance is
        // alive.
        unsafe { &*rcu }.call_rcu_box(CountedNode::new(&freed));
    }
    go.send(()).unwrap();
    // SAFETY: fork has no preconditions; the child only checks the counter
    // and ends with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let start = Instant::now();
        while freed.load(SeqCst) < N && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let code = if freed.load(SeqCst) == N { 0 } else { 1 };
        // SAFETY: _exit ends the child without running the parent's
        // handlers.
        unsafe { libc::_exit(code) }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let Some(status) = common::child::wait_pid_until(pid, deadline) else {
        panic!("the child hung");
    };
    assert!(libc::WIFEXITED(status), "the child died: {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "in the child, callbacks queued on an instance that one of its own \
         callbacks dropped (its worker still draining at the fork) never ran"
    );
    // In the parent the detached worker drains them too.
    let start = Instant::now();
    while freed.load(SeqCst) < N && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(freed.load(SeqCst), N, "in the parent, callbacks were lost");
}
