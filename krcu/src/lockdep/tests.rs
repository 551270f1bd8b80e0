//! Validator rules that need the crate's insides: a pretend RCU read-side
//! section that no grace period waits for (it was `lockdep::testing`,
//! public only for `tests/lockdep.rs`).

use crate::context::{self, PreemptModel};
use crate::domain::Domain;
use crate::lock::{Mutex, SpinLock};
use crate::lockdep::{ReportHandler, ReportKind, ReportLog};

/// Raises the thread's RCU read-side depth, as a reader does, without
/// being a reader (grace periods do not wait for it).
struct RcuReadDepth(core::marker::PhantomData<*const ()>);

impl RcuReadDepth {
    fn enter() -> Self {
        context::rcu_read_enter();
        RcuReadDepth(core::marker::PhantomData)
    }
}

impl Drop for RcuReadDepth {
    fn drop(&mut self) {
        context::rcu_read_exit();
    }
}

#[test]
fn rcu_reader_allows_config_at_most() {
    let log = ReportLog::new();
    let d = Domain::builder()
        .preempt_model(PreemptModel::Full)
        .prove_raw_lock_nesting(true)
        .lockdep(true)
        .report_handler(ReportHandler::Collect(log.clone()))
        .build();
    let spin = SpinLock::new_in(&d, ());
    let m = Mutex::new_in(&d, ());
    let _r = RcuReadDepth::enter();
    drop(spin.lock());
    assert!(log.is_empty());
    drop(m.lock());
    assert_eq!(log.count(ReportKind::InvalidWaitContext), 1);
    let s = log
        .take()
        .into_iter()
        .find(|r| r.kind == ReportKind::SleepInInvalidContext)
        .unwrap();
    assert!(
        s.text.contains("RCU nest depth: 1, expected: 0"),
        "{}",
        s.text
    );
}
