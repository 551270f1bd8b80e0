//! A domain's validator: whether it runs, its nesting-proof switch, where
//! its reports go, and the delivery of a report to that place. Also the
//! process-wide validator, of locks built without a domain and of
//! [`Domain::global`](crate::Domain::global).
//!
//! Uses the report handler's write side, the public report types and the
//! lock-free `table`; never the code that finds reports.

use super::COMPILED;
use super::handler::{self, ReportHandler};
use super::report::Report;
use super::table::{FNV_OFFSET, KeySet, Slot, hash_bytes};
use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// A domain's validator: whether it runs, its nesting-proof switch, and
/// where its reports go.
///
/// ```
/// use krcu::lock::{RawSpinLock, SpinLock};
/// use krcu::lockdep::{ReportHandler, ReportLog};
/// let log = ReportLog::new();
/// let domain = krcu::Domain::builder().report_handler(ReportHandler::Collect(log.clone())).build();
/// let validator = domain.validator();
/// assert_eq!(validator.enabled(), krcu::lockdep::COMPILED);
/// // Without the nesting proof a spinlock_t counts as a raw spinlock, as on
/// // a kernel without CONFIG_PROVE_RAW_LOCK_NESTING: no report.
/// validator.set_prove_raw_lock_nesting(false);
/// let (raw, spin) = (RawSpinLock::new_in(&domain, ()), SpinLock::new_in(&domain, ()));
/// {
///     let _r = raw.lock();
///     let _s = spin.lock();
/// }
/// assert!(log.is_empty());
/// validator.set_enabled(false); // switched off at run time: one load per lock
/// assert!(!validator.enabled());
/// ```
pub struct Validator {
    enabled: AtomicBool,
    prove_raw_lock_nesting: AtomicBool,
    handler: ReportHandler,
    #[cfg_attr(not(krcu_lockdep), allow(dead_code))]
    printed: KeySet<1024>,
}

impl core::fmt::Debug for Validator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Validator")
            .field("enabled", &self.enabled())
            .field("prove_raw_lock_nesting", &self.prove_raw_lock_nesting())
            .field("handler", &self.handler)
            .finish()
    }
}

impl Validator {
    pub(crate) fn new(enabled: bool, prove_raw_lock_nesting: bool, handler: ReportHandler) -> Self {
        Validator {
            enabled: AtomicBool::new(enabled && COMPILED),
            prove_raw_lock_nesting: AtomicBool::new(prove_raw_lock_nesting),
            handler,
            printed: KeySet::new(),
        }
    }

    /// Whether the validator checks this domain's locks (always false when
    /// it is not compiled in).
    #[inline]
    pub fn enabled(&self) -> bool {
        COMPILED && self.enabled.load(Ordering::Relaxed)
    }

    /// Switches checking on or off (a no-op when not compiled in).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on && COMPILED, Ordering::Relaxed);
    }

    /// Whether CONFIG locks are told apart from SPIN ones
    /// (`CONFIG_PROVE_RAW_LOCK_NESTING`).
    #[inline]
    pub fn prove_raw_lock_nesting(&self) -> bool {
        self.prove_raw_lock_nesting.load(Ordering::Relaxed)
    }

    /// Switches the raw-lock nesting proof.
    pub fn set_prove_raw_lock_nesting(&self, on: bool) {
        self.prove_raw_lock_nesting.store(on, Ordering::Relaxed);
    }

    /// The handler reports go to.
    pub fn handler(&self) -> &ReportHandler {
        &self.handler
    }

    #[cfg_attr(not(krcu_lockdep), allow(dead_code))]
    pub(crate) fn deliver(&self, report: Report) {
        match &self.handler {
            ReportHandler::PrintOnce => {
                let mut h = hash_bytes(FNV_OFFSET, &[report.kind as u8]);
                h = hash_bytes(h, report.class.unwrap_or("").as_bytes());
                h = hash_bytes(h, report.at.as_bytes());
                for l in &report.held {
                    h = hash_bytes(h, l.name.as_bytes());
                }
                // A report that says others were dropped is printed even if
                // it repeats one.
                if report.dropped > 0
                    || matches!(self.printed.insert(h), Slot::Inserted(_) | Slot::Full)
                {
                    // Never eprintln!: it panics when stderr is gone (a
                    // closed pipe), and a report must never unwind into
                    // the caller it describes.
                    use std::io::Write as _;
                    let _ = writeln!(std::io::stderr().lock(), "{}", report.text);
                }
            }
            ReportHandler::Collect(log) => handler::push(log, report),
            ReportHandler::Panic => panic!("{}", report.text),
            ReportHandler::Custom(f) => f(&report),
        }
    }
}

/// The validator of the process-wide default domain, and of locks built
/// without a domain: on where compiled in, nesting proof on, reports
/// printed once (a [`DomainBuilder`](crate::DomainBuilder)'s defaults).
pub(crate) fn global() -> &'static Arc<Validator> {
    static GLOBAL: OnceLock<Arc<Validator>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Validator::new(COMPILED, true, ReportHandler::PrintOnce)))
}

/// What carries a validator (a [`Domain`](crate::Domain)), for the hooks
/// that take one: the validator need not know the domain's type.
pub(crate) trait HasValidator {
    /// The validator, shared (unused with the validator compiled out).
    #[cfg_attr(not(krcu_lockdep), allow(dead_code))]
    fn validator_handle(&self) -> &Arc<Validator>;
}

impl HasValidator for Arc<Validator> {
    fn validator_handle(&self) -> &Arc<Validator> {
        self
    }
}
