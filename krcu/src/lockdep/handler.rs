//! Where reports go: the [`ReportHandler`] a domain's validator delivers
//! to, and the write side of a [`ReportLog`] (the read side, which first
//! delivers deferred reports, is in `log.rs`, so that delivering does not
//! depend on the code that triggers it).
//!
//! Uses only the public report types.

use super::report::Report;
use std::sync::{Arc, Mutex};

/// A shared, growing list of reports, for tests and tools.
///
/// Every query first delivers the deferred reports (found in hardirq or NMI
/// context and not delivered yet; see
/// [`flush_deferred_reports`](super::flush_deferred_reports)), so a log read
/// after a signal handler's offence shows it.
///
/// ```
/// use krcu::lockdep::{ReportHandler, ReportKind, ReportLog};
/// let log = ReportLog::new();
/// let domain = krcu::Domain::builder().report_handler(ReportHandler::Collect(log.clone())).build();
/// {
///     let _guard = krcu::context::preempt_disable();
///     domain.might_sleep();
/// }
/// if krcu::lockdep::COMPILED {
///     assert_eq!(log.len(), 1);
///     assert_eq!(log.count(ReportKind::SleepInInvalidContext), 1);
///     let report = log.take().remove(0); // `take` empties the log
///     assert!(report.text.starts_with("BUG: sleeping function called from invalid context"));
///     assert!(report.text.contains("in_atomic(): 1"));
/// }
/// assert!(log.is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct ReportLog(Arc<Mutex<Vec<Report>>>);

impl ReportLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// The reports, locked, without delivering deferred ones first (the
    /// read side does that before calling this).
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Report>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What happens to a report.
///
/// ```
/// use krcu::lockdep::{Report, ReportHandler};
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// let seen = Arc::new(AtomicUsize::new(0));
/// let counter = seen.clone();
/// let handler = ReportHandler::Custom(Arc::new(move |report: &Report| {
///     assert!(!report.text.is_empty());
///     counter.fetch_add(1, Ordering::SeqCst);
/// }));
/// let domain = krcu::Domain::builder().report_handler(handler).build();
/// let mutex = krcu::lock::Mutex::new_in(&domain, ());
/// let raw = krcu::lock::RawSpinLock::new_in(&domain, ());
/// {
///     let _raw = raw.lock();
///     let _m = mutex.lock(); // a sleeping lock while atomic
/// }
/// assert_eq!(seen.load(Ordering::SeqCst) > 0, krcu::lockdep::COMPILED);
/// ```
#[derive(Clone, Default)]
pub enum ReportHandler {
    /// Print each distinct report once to standard error (the default).
    #[default]
    PrintOnce,
    /// Append every report to a log (tests).
    Collect(ReportLog),
    /// Panic with the report (strict mode).
    Panic,
    /// Call a function with every report.
    Custom(Arc<dyn Fn(&Report) + Send + Sync>),
}

impl core::fmt::Debug for ReportHandler {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ReportHandler::PrintOnce => "PrintOnce",
            ReportHandler::Collect(_) => "Collect",
            ReportHandler::Panic => "Panic",
            ReportHandler::Custom(_) => "Custom",
        })
    }
}

pub(crate) fn push(log: &ReportLog, r: Report) {
    log.lock().push(r);
}
