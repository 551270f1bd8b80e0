//! Stall warnings: a reader that holds up a grace period longer than the
//! instance's stall timeout is named (`rcu_check_gp_kthread_starvation`
//! and `print_other_cpu_stall` in the kernel, which print the stalled
//! CPUs' tasks).
//!
//! The grace-period wait warns first after the timeout, then every three
//! timeouts while the same grace period is still held up (the kernel's
//! rhythm). Each warning goes to `tracing::warn!`, to standard error, to a
//! counter, and to a small ring of recent reports that tests and tools
//! read with [`Rcu::stall_reports`](super::Rcu::stall_reports).
//!
//! Uses nothing else of the crate.
#![cfg(not(loom))]

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How many recent stall reports an instance keeps.
const KEEP: usize = 32;

/// One stall warning: which reader held up which grace period, for how
/// long so far.
///
/// ```
/// use krcu::rcu::{Rcu, RcuConfig};
/// use std::time::{Duration, Instant};
///
/// let config = RcuConfig::default().stall_timeout(Duration::from_millis(20));
/// let rcu = Rcu::new(krcu::Domain::global(), config);
/// std::thread::scope(|s| {
///     let guard = rcu.read_lock(); // a reader that stays too long
///     let writer = s.spawn(|| rcu.synchronize());
///     let deadline = Instant::now() + Duration::from_secs(60);
///     while rcu.stats().stalls == 0 {
///         assert!(Instant::now() < deadline, "no stall warning");
///         std::thread::sleep(Duration::from_millis(5));
///     }
///     drop(guard); // the grace period can end now
///     writer.join().unwrap();
/// });
/// let report = &rcu.stall_reports()[0];
/// assert!(report.waited >= Duration::from_millis(20));
/// assert!(report.to_string().starts_with("INFO: rcu detected stall"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[doc(alias = "rcu_cpu_stall")]
#[non_exhaustive]
pub struct StallReport {
    /// The stalled reader's thread name, as the kernel knows it (`comm`,
    /// at most 15 bytes), or `<tid N>` if it has none.
    pub thread: String,
    /// The stalled reader's kernel thread id.
    pub tid: i32,
    /// The grace-period sequence number that is held up.
    pub gp_seq: u64,
    /// How long the grace period had waited when the warning was issued.
    pub waited: Duration,
}

impl core::fmt::Display for StallReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "INFO: rcu detected stall: reader \"{}\" (tid {}) holds up grace period {} for {:?}",
            self.thread, self.tid, self.gp_seq, self.waited
        )
    }
}

/// An instance's stall detector state.
pub(crate) struct Stalls {
    timeout: Duration,
    count: AtomicU64,
    recent: Mutex<VecDeque<StallReport>>,
}

impl Stalls {
    pub(crate) fn new(timeout: Duration) -> Self {
        Stalls {
            timeout,
            count: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// A clock for one wait of one grace period.
    pub(crate) fn clock(&self) -> StallClock {
        StallClock {
            start: Instant::now(),
            next: self.timeout,
        }
    }

    /// Issues a warning.
    pub(crate) fn warn(&self, report: StallReport) {
        self.count.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            thread = %report.thread,
            tid = report.tid,
            gp_seq = report.gp_seq,
            waited = ?report.waited,
            "rcu stall"
        );
        eprintln!("{report}");
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == KEEP {
            recent.pop_front();
        }
        recent.push_back(report);
    }

    /// Warnings issued so far.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The most recent warnings, oldest first.
    pub(crate) fn recent(&self) -> Vec<StallReport> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// When the current wait is due to warn next.
pub(crate) struct StallClock {
    start: Instant,
    next: Duration,
}

impl StallClock {
    /// If a warning is due, how long the wait has lasted (and schedules the
    /// next one three timeouts later).
    pub(crate) fn due(&mut self, timeout: Duration) -> Option<Duration> {
        let waited = self.start.elapsed();
        (waited >= self.next).then(|| {
            self.next = waited + 3 * timeout;
            waited
        })
    }
}

impl Stalls {
    /// The configured timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }
}
