//! The simulated machine and kernel configuration that an instance runs
//! under: how many CPUs, which preemption model, and the validator.
//!
//! Every lock belongs to a domain; a krcu instance builds one and builds all
//! of its locks in it, so that instances with different settings can run
//! side by side in one process (tests, and the CLI's comparisons). Locks
//! built without one belong to the process-wide [`Domain::global`].
//!
//! Uses `context`, `percpu` and the validator's types; the validator keeps
//! only its own state, never a domain (locks hold their domain's validator,
//! not the domain), so it does not use this file.

use crate::context::{self, PreemptModel};
use crate::lockdep::{self, HasValidator, ReportHandler, Validator};
use crate::percpu;
use core::panic::Location;
use std::sync::{Arc, OnceLock};

/// CPUs, preemption model and validator, shared by everything an instance
/// builds. Cheap to clone (an `Arc`).
///
/// ```
/// use krcu::context::PreemptModel;
/// let domain = krcu::Domain::builder().cpus(3).preempt_model(PreemptModel::None).build();
/// assert_eq!((domain.cpus(), domain.preempt_model()), (3, PreemptModel::None));
/// assert!(domain.same(&domain.clone()), "clones share one domain");
/// assert!(!domain.same(krcu::Domain::global()));
/// // Locks built in it follow its model: no spinlock sleeps without RT.
/// assert!(!krcu::lock::SpinLock::new_in(&domain, ()).sleeps());
/// ```
#[derive(Clone, Debug)]
pub struct Domain(Arc<DomainInner>);

#[derive(Debug)]
struct DomainInner {
    model: PreemptModel,
    cpus: usize,
    validator: Arc<Validator>,
}

/// Builds a [`Domain`].
#[derive(Debug, Clone)]
pub struct DomainBuilder {
    model: PreemptModel,
    cpus: usize,
    lockdep: bool,
    prove_raw_lock_nesting: bool,
    handler: ReportHandler,
}

impl Default for DomainBuilder {
    fn default() -> Self {
        DomainBuilder {
            model: PreemptModel::default(),
            cpus: percpu::num_cpus(),
            lockdep: lockdep::COMPILED,
            prove_raw_lock_nesting: true,
            handler: ReportHandler::PrintOnce,
        }
    }
}

impl DomainBuilder {
    /// The preemption model (default [`PreemptModel::Full`]).
    pub fn preempt_model(mut self, model: PreemptModel) -> Self {
        self.model = model;
        self
    }

    /// How many CPUs per-CPU state is kept for (default: the machine's).
    /// Threads on higher-numbered CPUs fold onto these.
    pub fn cpus(mut self, cpus: usize) -> Self {
        self.cpus = cpus.max(1);
        self
    }

    /// Whether the validator checks this domain's locks (default: on where
    /// it is compiled in, that is in debug builds or with the `lockdep`
    /// feature; asking for it where it is not compiled in has no effect).
    ///
    /// ```
    /// let quiet = krcu::Domain::builder().lockdep(false).build();
    /// assert!(!quiet.validator().enabled());
    /// let checked = krcu::Domain::builder().lockdep(true).build();
    /// assert_eq!(checked.validator().enabled(), krcu::lockdep::COMPILED);
    /// ```
    pub fn lockdep(mut self, on: bool) -> Self {
        self.lockdep = on;
        self
    }

    /// `CONFIG_PROVE_RAW_LOCK_NESTING` (default on, as in current kernels).
    pub fn prove_raw_lock_nesting(mut self, on: bool) -> Self {
        self.prove_raw_lock_nesting = on;
        self
    }

    /// Where the validator's reports go (default: print each once).
    pub fn report_handler(mut self, handler: ReportHandler) -> Self {
        self.handler = handler;
        self
    }

    /// Builds the domain.
    pub fn build(self) -> Domain {
        let validator = Validator::new(
            self.lockdep,
            self.prove_raw_lock_nesting,
            self.handler.clone(),
        );
        self.build_with(Arc::new(validator))
    }

    fn build_with(self, validator: Arc<Validator>) -> Domain {
        Domain(Arc::new(DomainInner {
            model: self.model,
            cpus: self.cpus,
            validator,
        }))
    }
}

impl Domain {
    /// A builder with the defaults.
    pub fn builder() -> DomainBuilder {
        DomainBuilder::default()
    }

    /// The process-wide default domain: the machine's CPUs, PreemptModel::Full,
    /// the validator on where compiled in, nesting proof on, reports printed
    /// once. The domain of the process-wide RCU
    /// ([`rcu::global`](crate::rcu::global)) and of the process-wide
    /// `kfree_rcu` instance built on it (`Krcu::global`).
    pub fn global() -> &'static Domain {
        static GLOBAL: OnceLock<Domain> = OnceLock::new();
        // The validator with the builder's defaults that locks built
        // without a domain report to as well.
        GLOBAL.get_or_init(|| Domain::builder().build_with(lockdep::global_validator().clone()))
    }

    /// The preemption model.
    #[inline]
    pub fn preempt_model(&self) -> PreemptModel {
        self.0.model
    }

    /// How many CPUs per-CPU state is kept for.
    #[inline]
    pub fn cpus(&self) -> usize {
        self.0.cpus
    }

    /// The validator.
    #[inline]
    pub fn validator(&self) -> &Validator {
        &self.0.validator
    }

    /// `preemptible()` under this domain's model.
    #[inline]
    pub fn preemptible(&self) -> bool {
        context::preemptible(self.0.model)
    }

    /// Declares that the caller may sleep here: a report to this domain's
    /// handler if it is atomic, has irqs off, or is in an RCU reader.
    ///
    /// ```
    /// use krcu::lockdep::{ReportHandler, ReportKind, ReportLog};
    /// let log = ReportLog::new();
    /// let domain = krcu::Domain::builder().report_handler(ReportHandler::Collect(log.clone())).build();
    /// domain.might_sleep(); // task context: fine
    /// {
    ///     let _irqs_off = krcu::context::local_irq_save();
    ///     domain.might_sleep(); // a bug
    /// }
    /// let expected = if krcu::lockdep::COMPILED { 1 } else { 0 };
    /// assert_eq!(log.count(ReportKind::SleepInInvalidContext), expected);
    /// ```
    #[track_caller]
    #[inline]
    pub fn might_sleep(&self) {
        self.might_sleep_at(Location::caller());
    }

    #[inline]
    pub(crate) fn might_sleep_at(&self, at: &'static Location<'static>) {
        lockdep::might_sleep_in(self, at);
    }

    /// Whether two handles name the same domain.
    pub fn same(&self, other: &Domain) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl HasValidator for Domain {
    #[inline]
    fn validator_handle(&self) -> &Arc<Validator> {
        &self.0.validator
    }
}
