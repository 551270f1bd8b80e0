//! Krcu instances as the tests build them: one whose validator reports are
//! collected (never printed or panicked on) with a chosen block policy,
//! one with a chosen idle poll; the check that a log holds no report; and
//! driving an instance to idle.

use super::{CountedNode, wait_for};
use krcu::Krcu;
use krcu::kvfree::{KvfreeConfig, Policy};
use krcu::lockdep::{ReportHandler, ReportLog};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

/// A 64 MiB instance with `policy` and `cache_blocks` cached pointer
/// blocks (refilled below at most 3), its validator reports collected in
/// a log of its own.
pub fn collecting_instance(policy: Policy, cache_blocks: usize) -> Krcu {
    Krcu::builder()
        .arena_size(64 << 20)
        .report_handler(ReportHandler::Collect(ReportLog::new()))
        .kvfree_config(
            KvfreeConfig::default()
                .policy(policy)
                .cache_blocks(cache_blocks)
                .refill_mark(cache_blocks.min(3)),
        )
        .build()
        .unwrap()
}

/// No validator report in `log`; else fails with their count and the
/// first one's text.
pub fn assert_no_reports(log: &ReportLog) {
    let reports = log.take();
    assert!(
        reports.is_empty(),
        "{} reports, the first:\n{}",
        reports.len(),
        reports.first().map(|r| r.text.as_str()).unwrap_or("")
    );
}

/// How long the idle tests wait for progress before they fail: far below
/// the idle polls they set, far above a drain delay plus a grace period.
pub const IDLE_DEADLINE: Duration = Duration::from_secs(60);

/// A 32 MiB instance on 2 modelled CPUs with `policy` whose threads, once
/// idle, wake every `idle_poll`.
pub fn idle_instance(idle_poll: Duration, policy: Policy) -> Krcu {
    Krcu::builder()
        .arena_size(32 << 20)
        .cpus(2)
        .policy(policy)
        .idle_poll(idle_poll)
        .build()
        .unwrap()
}

/// Queues `n` objects on `k`, waits until they are freed, then until the
/// monitor sleeps idle (which it does only once nothing is pending and the
/// idle trim has run).
pub fn work_then_idle(k: &Krcu, n: usize) {
    let freed = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
        k.kfree_rcu(CountedNode::new(&freed)).unwrap();
    }
    k.kvfree_rcu_barrier();
    assert_eq!(freed.load(SeqCst), n);
    wait_for("the monitor sleeps idle", IDLE_DEADLINE, || {
        k.idle_counters().2
    });
}
