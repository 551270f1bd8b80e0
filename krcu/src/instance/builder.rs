//! [`KrcuBuilder`]: the settings of a [`Krcu`] and its construction.

use super::Krcu;
use crate::context::PreemptModel;
use crate::domain::DomainBuilder;
use crate::error::BuildError;
use crate::kvfree::engine::Engine;
use crate::kvfree::worker::Workers;
use crate::kvfree::{KvfreeConfig, Policy};
use crate::lockdep::ReportHandler;
use crate::page::{PageAllocator, PageConfig};
use crate::rcu::{Rcu, RcuConfig};
use std::sync::Arc;
use std::time::Duration;

/// Builds a [`Krcu`]: its domain (CPUs, preemption model, validator), its
/// page allocator, its RCU and its `kfree_rcu` settings. Every setter has a
/// default; [`build`](Self::build) checks them together.
///
/// ```
/// use krcu::context::PreemptModel;
/// use krcu::kvfree::{Assist, KvfreeConfig, Policy};
/// use std::time::Duration;
///
/// let krcu = krcu::Krcu::builder()
///     .cpus(1)
///     .arena_size(16 << 20)
///     .preempt_model(PreemptModel::Rt) // spinlocks sleep, as under PREEMPT_RT
///     .kvfree_config(
///         KvfreeConfig::default()
///             .policy(Policy::CacheRefill)
///             .drain_delay(Duration::from_millis(2))
///             .assist(Assist::Never),
///     )
///     .build()
///     .expect("valid settings");
/// assert_eq!(krcu.domain().preempt_model(), PreemptModel::Rt);
/// assert_eq!(krcu.kvfree_config().drain_delay, Duration::from_millis(2));
/// assert_eq!(krcu.kvfree_config().assist, Assist::Never);
/// ```
#[derive(Debug, Clone, Default)]
pub struct KrcuBuilder {
    domain: DomainBuilder,
    page: PageConfig,
    rcu: RcuConfig,
    kvfree: KvfreeConfig,
}

impl KrcuBuilder {
    /// The page allocator's arena size in bytes (default 256 MiB, reserved
    /// but not touched until used).
    pub fn arena_size(mut self, bytes: usize) -> Self {
        self.page.arena_size = bytes;
        self
    }
    /// CPUs to keep per-CPU state for (default: the machine's).
    pub fn cpus(mut self, cpus: usize) -> Self {
        self.domain = self.domain.cpus(cpus);
        self
    }
    /// The preemption model (default `Full`).
    pub fn preempt_model(mut self, model: PreemptModel) -> Self {
        self.domain = self.domain.preempt_model(model);
        self
    }
    /// Whether the validator checks this instance (where compiled in).
    pub fn lockdep(mut self, on: bool) -> Self {
        self.domain = self.domain.lockdep(on);
        self
    }
    /// `CONFIG_PROVE_RAW_LOCK_NESTING` (default on).
    pub fn prove_raw_lock_nesting(mut self, on: bool) -> Self {
        self.domain = self.domain.prove_raw_lock_nesting(on);
        self
    }
    /// Where the validator's reports go.
    pub fn report_handler(mut self, handler: ReportHandler) -> Self {
        self.domain = self.domain.report_handler(handler);
        self
    }
    /// How `kfree_rcu` gets block pages under its raw lock.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.kvfree.policy = policy;
        self
    }
    /// How long objects may wait in a partly filled block before they are
    /// handed to RCU (default 5 ms; see
    /// [`KvfreeConfig::drain_delay`](crate::kvfree::KvfreeConfig::drain_delay)).
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.kvfree.drain_delay = delay;
        self
    }
    /// How long the worker threads sleep when nothing is pending (default
    /// 1 s; see [`KvfreeConfig::idle_poll`] for the delay it bounds).
    pub fn idle_poll(mut self, period: Duration) -> Self {
        self.kvfree.idle_poll = period;
        self
    }
    /// Whether task-context callers help free ready objects (default
    /// [`Assist::WhenBehind`](crate::kvfree::Assist::WhenBehind)).
    pub fn assist(mut self, assist: crate::kvfree::Assist) -> Self {
        self.kvfree.assist = assist;
        self
    }
    /// Spare blocks per CPU for the refill policies (default 5).
    pub fn cache_blocks(mut self, n: usize) -> Self {
        self.kvfree.cache_blocks = n;
        self
    }
    /// All `kfree_rcu` settings at once.
    pub fn kvfree_config(mut self, config: KvfreeConfig) -> Self {
        self.kvfree = config;
        self
    }
    /// All page allocator settings at once.
    pub fn page_config(mut self, config: PageConfig) -> Self {
        self.page = config;
        self
    }
    /// All RCU settings at once.
    pub fn rcu_config(mut self, config: RcuConfig) -> Self {
        self.rcu = config;
        self
    }

    /// Builds the instance (its own domain and RCU) and starts its workers.
    ///
    /// ```
    /// use krcu::BuildError;
    /// // 100 spare blocks per CPU, above the default cap of 64: refused.
    /// let err = krcu::Krcu::builder().cache_blocks(100).build().unwrap_err();
    /// assert!(matches!(
    ///     err,
    ///     BuildError::CacheBlocks { cache_blocks: 100, max_cache_blocks: 64 }
    /// ));
    /// let err = krcu::Krcu::builder().arena_size(1000).build().unwrap_err();
    /// assert!(matches!(err, BuildError::ArenaSize(1000)));
    /// ```
    ///
    /// # Errors
    /// A [`BuildError`] naming the setting that is wrong: `cache_blocks`
    /// above `max_cache_blocks` ([`CacheBlocks`](BuildError::CacheBlocks)),
    /// `refill_mark` above `cache_blocks` ([`RefillMark`](BuildError::RefillMark)),
    /// a zero `drain_delay` or `active_poll` ([`ZeroPeriod`](BuildError::ZeroPeriod)),
    /// an arena that is not a positive multiple of the page size, too small
    /// for its watermarks, or that cannot be mapped (as
    /// [`PageAllocator::new`](crate::page::PageAllocator::new)), or a worker
    /// thread that could not be started ([`Thread`](BuildError::Thread)).
    pub fn build(self) -> Result<Krcu, BuildError> {
        self.validate()?;
        let domain = self.domain.clone().build();
        let rcu = Arc::new(Rcu::new(&domain, self.rcu.clone()));
        self.build_on(rcu)
    }

    /// Checks the `kfree_rcu` settings.
    fn validate(&self) -> Result<(), BuildError> {
        let k = &self.kvfree;
        if k.cache_blocks > k.max_cache_blocks {
            return Err(BuildError::CacheBlocks {
                cache_blocks: k.cache_blocks,
                max_cache_blocks: k.max_cache_blocks,
            });
        }
        if k.refill_mark > k.cache_blocks {
            return Err(BuildError::RefillMark {
                refill_mark: k.refill_mark,
                cache_blocks: k.cache_blocks,
            });
        }
        if k.drain_delay.is_zero() || k.active_poll.is_zero() || k.idle_poll.is_zero() {
            return Err(BuildError::ZeroPeriod);
        }
        Ok(())
    }

    /// Builds the page allocator and the `kfree_rcu` machinery on `rcu`, in
    /// its domain (the domain and RCU settings of the builder are not
    /// used), and starts the workers.
    pub(super) fn build_on(self, rcu: Arc<Rcu>) -> Result<Krcu, BuildError> {
        self.validate()?;
        let domain = rcu.domain().clone();
        let pages = PageAllocator::new(&domain, self.page)?;
        let engine = Engine::new(&domain, pages.clone(), rcu, self.kvfree);
        let weak = Arc::downgrade(&engine);
        let weak2 = weak.clone();
        let shrinker = pages.register_shrinker(
            "kfree_rcu",
            move || weak.upgrade().map_or(0, |e| e.shrink_count()),
            move |n| weak2.upgrade().map_or(0, |e| e.shrink_scan(n)),
        );
        // Spare blocks are there before the first call (`spawn` fills the
        // caches first): a real-time thread does not depend on the worker
        // having run.
        let workers = Workers::spawn(&engine).map_err(BuildError::Thread)?;
        Ok(Krcu {
            engine,
            workers,
            shrinker: Some(shrinker),
        })
    }
}
