//! What every part of the engine reads: the instance's domain, page
//! allocator, RCU and settings, the per-CPU `krc` states, and the counters
//! kept off the call path.
//!
//! Owns: [`Shared`]. Uses: `krc.rs`, `ready.rs`, `wake.rs`, `stats.rs`,
//! `block.rs`.
//!
//! Its fields are `pub(super)` and read-only after construction (shared
//! references to immutable settings and to per-CPU states whose own locks
//! and atomics guard them): the call path, the monitor, the cache and
//! reclaim all read them, and an accessor for each would add nothing.

use super::KvfreeConfig;
use super::block::BlockList;
use super::krc::{KrcCpu, Locked};
use super::ready::ReadyQueue;
use super::stats::EngineCounters;
use super::wake::Wake;
use crate::domain::Domain;
use crate::page::PageAllocator;
use crate::percpu::PerCpu;
use crate::rcu::Rcu;
use std::sync::Arc;

pub(super) struct Shared {
    pub(super) domain: Domain,
    pub(super) pages: Arc<PageAllocator>,
    pub(super) rcu: Arc<Rcu>,
    pub(super) config: KvfreeConfig,
    /// The `krc` states: `homes` home states, then as many overflow
    /// states, reached only when every home state's trylock fails: in
    /// userspace a holder can be preempted mid-section, and with more
    /// runnable threads than CPUs every home may be held at once.
    pub(super) cpus: PerCpu<KrcCpu>,
    /// CPUs (home states, and reclaimers).
    pub(super) homes: usize,
    pub(super) counters: EngineCounters,
}

impl Shared {
    pub(super) fn new(
        domain: &Domain,
        pages: Arc<PageAllocator>,
        rcu: Arc<Rcu>,
        config: KvfreeConfig,
    ) -> Shared {
        let homes = domain.cpus();
        let base = base_cache(&config);
        // One reclaimer per home CPU serves its home state and its
        // overflow state: their ready queues share its wake-up.
        let wakes: Vec<Arc<Wake>> = (0..homes).map(|_| Arc::new(Wake::new())).collect();
        let cpus = PerCpu::new(2 * homes, |cpu| {
            let ready = Arc::new(ReadyQueue::new(domain, wakes[cpu % homes].clone()));
            KrcCpu::new(domain, base, ready)
        });
        Shared {
            domain: domain.clone(),
            pages,
            rcu,
            config,
            cpus,
            homes,
            counters: EngineCounters::default(),
        }
    }

    /// The spare blocks a CPU keeps when calls are not fast.
    pub(super) fn base_cache(&self) -> usize {
        base_cache(&self.config)
    }

    /// Trylocks this CPU's state, then every other CPU's.
    #[inline]
    pub(super) fn try_lock_any(&self) -> Result<Locked<'_>, &KrcCpu> {
        let (me, cpu) = self.cpus.current();
        if let Some(krc) = cpu.krc.try_lock() {
            return Ok(Locked { cpu, krc });
        }
        self.try_lock_others(me).ok_or(cpu)
    }

    #[cold]
    fn try_lock_others(&self, me: usize) -> Option<Locked<'_>> {
        let n = self.cpus.cpus();
        (1..n).find_map(|d| {
            let cpu = self.cpus.get((me + d) % n);
            cpu.krc.try_lock().map(|krc| Locked { cpu, krc })
        })
    }

    /// Each home CPU's state with its overflow state: what one reclaimer
    /// serves.
    pub(super) fn served_by(&self, home: usize) -> [&KrcCpu; 2] {
        [self.cpus.get(home), self.cpus.get(home + self.homes)]
    }

    /// Gives blocks back to the page allocator.
    pub(super) fn free_blocks(&self, blocks: &mut BlockList) {
        while let Some(b) = blocks.pop() {
            // SAFETY: blocks on our lists are order-0 pages of our
            // allocator that we own; popped, no list holds it any more.
            unsafe { self.pages.free_pages(b.cast(), 0) };
        }
    }
}

fn base_cache(config: &KvfreeConfig) -> usize {
    if config.policy.refills() {
        config.cache_blocks
    } else {
        0
    }
}
