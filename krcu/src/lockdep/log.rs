//! The read side of a [`ReportLog`]: every query first delivers the
//! deferred reports, so a log read after a signal handler's offence shows
//! it. Kept apart from the log's write side (`handler.rs`), which the
//! delivery it triggers uses.
//!
//! Uses the log and report types and [`flush_deferred_reports`].

use super::flush_deferred_reports;
use super::handler::ReportLog;
use super::report::{Report, ReportKind};

impl ReportLog {
    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Report>> {
        // Flush before locking: delivering takes this log's lock.
        flush_deferred_reports();
        self.lock()
    }
    /// A copy of every report so far.
    pub fn reports(&self) -> Vec<Report> {
        self.entries().clone()
    }
    /// Removes and returns every report so far.
    pub fn take(&self) -> Vec<Report> {
        core::mem::take(&mut *self.entries())
    }
    /// How many reports of `kind` there are.
    pub fn count(&self, kind: ReportKind) -> usize {
        self.entries().iter().filter(|r| r.kind == kind).count()
    }
    /// How many reports there are.
    pub fn len(&self) -> usize {
        self.entries().len()
    }
    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
