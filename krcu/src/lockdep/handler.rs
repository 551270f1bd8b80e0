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
