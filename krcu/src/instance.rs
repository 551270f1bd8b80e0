//! `Krcu`: one instance of everything (domain, page allocator, RCU,
//! `kfree_rcu`), built with [`KrcuBuilder`], owning its worker threads and
//! stopping them on drop. A lazily built process-wide instance serves the
//! free functions ([`kfree_rcu`](crate::kfree_rcu) and friends).
//!
//! Uses: `context`, `domain`, `fork`, `kvfree`, `lockdep`, `page`, `rcu`,
//! `slab`.

use crate::context::{self, PreemptModel};
use crate::domain::{Domain, DomainBuilder};
use crate::error::BuildError;
use crate::fork;
use crate::kvfree::block::{Channel, box_channel, drop_box_by_head};
use crate::kvfree::channels;
use crate::kvfree::engine::Engine;
use crate::kvfree::worker::Workers;
use crate::kvfree::{KvfreeConfig, KvfreeStats, Policy};
use crate::lockdep::ReportHandler;
use crate::page::{Page, PageAllocator, PageConfig, ShrinkerHandle};
use crate::rcu::{HasRcuHead, Rcu, RcuConfig, RcuHead};
use crate::slab::SlabCache;
use core::ptr::NonNull;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// `kfree_rcu` was called from NMI context, which it refuses (as the
/// kernel does): the object is handed back and nothing was freed.
///
/// It happens only between [`context::enter_nmi`] and the drop of its
/// guard (a signal handler that declared itself an NMI). The object in
/// `.0` may still be reachable by readers (it was unlinked only just now):
/// do not drop it there. Keep it and retire it again from another context,
/// or leak it with [`std::mem::forget`]. (`kfree_rcu`'s result is a
/// `Result`, so it is `#[must_use]` too: never `.ok()` it away, which would
/// drop the object at once.)
#[derive(thiserror::Error)]
#[must_use = "the object is handed back and must not be dropped while readers can still reach it"]
#[error("kfree_rcu() called from NMI context: refused, the object is handed back")]
pub struct InNmi<T>(pub Box<T>);

impl<T> core::fmt::Debug for InNmi<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("InNmi(..)")
    }
}

/// Builds a [`Krcu`].
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
    /// How long objects may wait in a partly filled block.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.kvfree.drain_delay = delay;
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
        if k.drain_delay.is_zero() || k.active_poll.is_zero() {
            return Err(BuildError::ZeroPeriod);
        }
        Ok(())
    }

    /// Builds the page allocator and the `kfree_rcu` machinery on `rcu`, in
    /// its domain (the domain and RCU settings of the builder are not
    /// used), and starts the workers.
    fn build_on(self, rcu: Arc<Rcu>) -> Result<Krcu, BuildError> {
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

/// An instance of krcu: a domain (CPUs, preempt model, validator), a page
/// allocator, RCU, and the `kfree_rcu` machinery on top.
pub struct Krcu {
    engine: Arc<Engine>,
    workers: Arc<Workers>,
    shrinker: Option<ShrinkerHandle>,
}

impl core::fmt::Debug for Krcu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Krcu")
            .field("policy", &self.engine.config().policy)
            .field("preempt_model", &self.domain().preempt_model())
            .finish_non_exhaustive()
    }
}

impl Krcu {
    /// A builder with the defaults.
    pub fn builder() -> KrcuBuilder {
        KrcuBuilder::default()
    }

    /// The process-wide instance behind the free functions
    /// ([`kfree_rcu`](crate::kfree_rcu) and friends), built on first use with
    /// the defaults.
    ///
    /// It is built on top of the process-wide RCU: its domain is
    /// [`Domain::global`] and [`rcu`](Self::rcu) is
    /// [`krcu::rcu::global()`](crate::rcu::global) itself, so one set of
    /// grace periods serves `krcu::rcu::*` and the `kfree_rcu` free
    /// functions, and a reader entered through either holds off retires
    /// made through the other. The page allocator and the `kfree_rcu`
    /// workers start here, on first use: a program that only uses
    /// `krcu::rcu::*` never builds them.
    ///
    /// # Panics
    /// If it cannot be built (no memory for the arena's metadata, no
    /// thread).
    ///
    /// The free function [`kfree_rcu`](crate::kfree_rcu) never builds it
    /// where the caller may not sleep (see there).
    pub fn global() -> &'static Krcu {
        fork::init_global(&GLOBAL, || {
            Krcu::builder()
                .build_on(crate::rcu::global_arc().clone())
                .expect("krcu: cannot build the default instance")
        })
    }

    /// The instance's domain.
    pub fn domain(&self) -> &Domain {
        self.engine.domain()
    }

    /// The instance's RCU.
    pub fn rcu(&self) -> &Rcu {
        self.engine.rcu()
    }

    /// The instance's page allocator.
    pub fn pages(&self) -> &Arc<PageAllocator> {
        self.engine.pages()
    }

    /// The `kfree_rcu` settings.
    pub fn kvfree_config(&self) -> &KvfreeConfig {
        self.engine.config()
    }

    /// Frees `obj` after a grace period (the two-argument form: `T` embeds
    /// an [`RcuHead`] for the fallback).
    ///
    /// Never sleeps and never fails: from task context, from the worker's
    /// softirq context, from a signal handler (hardirq context), with a raw
    /// spinlock held. With a block available it makes no system call and no
    /// heap allocation and takes no lock but a trylock. On a thread that is
    /// not real-time it may also help free what is ready when reclaim falls
    /// behind (the flood brake, [`Assist`](crate::kvfree::Assist)): destructors then
    /// run on it; a real-time thread ([`register_thread`](Self::register_thread))
    /// never does. From NMI context it refuses and hands the object back.
    ///
    /// Only readers of this instance's RCU ([`rcu`](Self::rcu)) hold the
    /// object off: a guard of another instance does not. Where the
    /// validator runs, a call made inside a read-side section of another
    /// instance but not of this one is reported as
    /// [`SuspiciousRcuUsage`](crate::lockdep::ReportKind::SuspiciousRcuUsage).
    ///
    /// # Errors
    /// [`InNmi`] from NMI context, with the object handed back. The
    /// `Result` is `#[must_use]`: do not drop the error (nor `.ok()` it),
    /// which would free at once an object readers may still reach; leak it
    /// or retire it again from another context.
    #[doc(alias = "kvfree_call_rcu")]
    #[inline]
    #[track_caller]
    pub fn kfree_rcu<T: HasRcuHead>(&self, obj: Box<T>) -> Result<(), InNmi<T>> {
        if self.engine.refuse_nmi() {
            return Err(InNmi(obj));
        }
        // SAFETY: a Box the caller handed over: leaked, its head unqueued,
        // ours alone. Not in NMI context (checked above), so it is queued.
        unsafe { self.kfree_rcu_raw(NonNull::from(Box::leak(obj))) };
        // Checked once the object is queued: a report handler that panics
        // then loses nothing.
        self.check_reader("kfree_rcu()");
        Ok(())
    }

    /// [`kfree_rcu`](Self::kfree_rcu) of a leaked `Box<T>` given by
    /// pointer, for [`RcuCell`](crate::RcuCell): it retires a box that
    /// readers may still be reading through shared references, so it never
    /// makes a `Box` (a unique pointer) of it again until the grace period
    /// has passed. Returns `false`, with nothing done, in NMI context.
    /// Makes no validator check of the caller's read-side sections: a cell
    /// knows its instance by construction (the public `kfree_rcu` checks).
    ///
    /// # Safety
    /// `raw` comes from `Box::<T>::into_raw` (or `Box::leak`), no one frees
    /// it otherwise, its head is not queued, and nothing writes the object
    /// from now on: its ownership passes here, unless `false` is returned.
    #[track_caller]
    pub(crate) unsafe fn kfree_rcu_raw<T: HasRcuHead>(&self, raw: NonNull<T>) -> bool {
        if self.engine.refuse_nmi() {
            return false;
        }
        let ctx = context::kind();
        let raw = raw.as_ptr();
        // SAFETY: HasRcuHead's contract puts the head RCU_HEAD_OFFSET bytes
        // into the object, inside the allocation.
        let head =
            unsafe { NonNull::new_unchecked(raw.byte_add(T::RCU_HEAD_OFFSET).cast::<RcuHead>()) };
        // SAFETY: the object is a leaked Box<T> handed over here (the
        // caller's contract); its head is not queued; drop_box_by_head::<T>
        // frees exactly it; box_channel::<T> frees Box<T> pointers.
        unsafe {
            self.engine.queue(
                raw.cast(),
                &box_channel::<T>(),
                head,
                drop_box_by_head::<T>,
                ctx,
            );
        }
        true
    }

    /// Frees `obj` after a grace period (the single-argument form: no
    /// `RcuHead` needed). May sleep: when no block can be had it allocates
    /// one with a sleeping allocation, or waits for a grace period and frees
    /// the object inline. The validator reports a call where sleeping is not
    /// allowed. From NMI context it refuses and hands the object back.
    #[doc(alias = "kfree_rcu_mightsleep")]
    #[track_caller]
    pub fn kvfree_rcu_mightsleep<T: Send + 'static>(&self, obj: Box<T>) -> Result<(), InNmi<T>> {
        if self.engine.refuse_nmi() {
            return Err(InNmi(obj));
        }
        // Ours before any report: a report handler that panics then leaks
        // the object rather than free it under a reader.
        let raw = Box::into_raw(obj);
        self.domain().might_sleep();
        let ctx = context::kind();
        // SAFETY: a leaked Box<T> handed over here, on the channel of Box<T>.
        let queued = unsafe {
            self.engine
                .queue_mightsleep(raw.cast(), &box_channel::<T>(), ctx)
        };
        if !queued {
            self.engine.note_inline_synchronize();
            tracing::debug!("kvfree_rcu_mightsleep: no block, freeing inline after a grace period");
            self.rcu().synchronize();
            // SAFETY: not queued, so still ours; a grace period has passed.
            drop(unsafe { Box::from_raw(raw) });
        }
        // Checked once the object is handed over: a report handler that
        // panics then frees nothing early.
        self.check_reader("kvfree_rcu_mightsleep()");
        Ok(())
    }

    /// Frees `page`, a block of this instance's page allocator, after a
    /// grace period (the pages channel). Single-argument semantics: a
    /// retired page has no field readers leave alone for the `rcu_head`
    /// fallback, so when no block can be had it may sleep (a sleeping block
    /// allocation, or a grace period waited for inline). From NMI context it
    /// refuses and hands the page back.
    ///
    /// # Panics
    /// If the page is not from this instance's page allocator.
    #[track_caller]
    pub fn free_pages_rcu_mightsleep(&self, page: Page) -> Result<(), Page> {
        if self.engine.refuse_nmi() {
            return Err(page);
        }
        assert!(
            self.pages().owns(&page),
            "krcu: free_pages_rcu_mightsleep({:p}): not a page of this instance",
            page.as_ptr()
        );
        self.domain().might_sleep();
        let ctx = context::kind();
        let entry = channels::page_entry(page.addr(), page.order());
        let chan = channels::page_channel(self.pages());
        // SAFETY: the page is the caller's, handed over here, on the channel
        // of this instance's pages.
        if unsafe { self.engine.queue_mightsleep(entry, &chan, ctx) } {
            // Queued: the pages channel owns the block now and frees it by
            // address after the grace period.
            let _ = page.into_raw();
        } else {
            self.engine.note_inline_synchronize();
            self.rcu().synchronize();
            self.pages().free(page);
        }
        // Checked once the page is handed over (see kvfree_rcu_mightsleep).
        self.check_reader("free_pages_rcu_mightsleep()");
        Ok(())
    }

    /// The validator's check that a retire is not made inside a read-side
    /// section of another instance only: the caller's guard would not
    /// protect the object, which suggests its readers use the wrong
    /// instance. One thread-local load when the thread is in no reader;
    /// nothing without the validator.
    #[inline(always)]
    #[track_caller]
    fn check_reader(&self, what: &'static str) {
        if crate::lockdep::COMPILED && context::rcu_read_depth() > 0 {
            self.foreign_reader(what, core::panic::Location::caller());
        }
    }

    #[cold]
    fn foreign_reader(&self, what: &'static str, at: &'static core::panic::Location<'static>) {
        if !self.rcu().is_reading() {
            // No formatting here: this may run in a signal handler, where
            // the report is recorded in fixed storage and formatted later.
            crate::lockdep::rcu_suspicious(self.domain(), at, what);
        }
    }

    /// A channel for objects of `cache`: their blocks are freed with
    /// `free_bulk` (the kernel's `kfree_bulk`), which for a type without
    /// drop glue never touches the objects. Dropping the channel waits for
    /// everything queued on it (a `kvfree_rcu_barrier`).
    pub fn slab_channel<T: HasRcuHead>(
        &self,
        cache: &Arc<SlabCache<T>>,
    ) -> Result<SlabChannel<'_, T>, BuildError> {
        let slot = channels::register(cache).ok_or(BuildError::TooManySlabChannels {
            max: channels::REGISTRY_SLOTS,
        })?;
        Ok(SlabChannel {
            krcu: self,
            chan: channels::slab_channel(cache),
            cache: cache.clone(),
            slot,
        })
    }

    /// Declares the calling thread real-time and prepares it ahead of time
    /// (its RCU reader and its `kfree_rcu` front block on this instance): a
    /// real-time thread calls this once per instance it uses, before it
    /// must never allocate.
    ///
    /// # The promise
    /// From then on, `kfree_rcu` on this thread (two-argument form, task or
    /// softirq context), whatever this instance's [`Assist`](crate::kvfree::Assist)
    /// setting:
    /// - never runs a destructor: the flood brake, which makes callers free
    ///   ready objects when reclaim falls behind, is left to the other
    ///   threads;
    /// - never calls the global allocator (no allocation, no free);
    /// - never takes a blocking lock, and makes no system call.
    ///
    /// Neither do [`ReaderHandle::read_lock`](crate::rcu::ReaderHandle::read_lock)
    /// and this instance's [`Rcu::read_lock`](crate::rcu::Rcu::read_lock).
    /// Real-time is a property of the thread, not of the instance
    /// ([`context::set_realtime`]): on an instance it was not registered
    /// with, its calls take the per-CPU path (trylocks only) instead of
    /// making a front. The exception is [`Policy::Nowait`], kept to show the
    /// bug the 2020 kfree_rcu thread showed: its
    /// allocation may take the zone lock.
    ///
    /// Keep the handle for the fastest readers; dropping it unregisters the
    /// reader only (the thread stays real-time; `context::set_realtime(false)`
    /// withdraws that).
    pub fn register_thread(&self) -> crate::rcu::ReaderHandle<'_> {
        self.engine.prepare_thread();
        context::set_realtime(true);
        self.rcu().register_thread()
    }

    /// Waits until every object queued (on any thread) before this call
    /// has been freed (`kvfree_rcu_barrier`). Sleeps.
    ///
    /// From a destructor of a retired object (which this instance's
    /// reclaim runs, on a reclaimer or on a caller that assists) it frees
    /// what is ready itself rather than wait for a reclaimer that may be
    /// its own thread, and does not wait for the objects its own thread's
    /// reclaim has already taken in hand (the rest of that destructor's
    /// block among them): they are freed after the destructor returns.
    /// From an RCU callback of this instance's RCU it panics, as
    /// [`Rcu::rcu_barrier`] does: it would wait for itself.
    #[track_caller]
    pub fn kvfree_rcu_barrier(&self) {
        self.domain().might_sleep();
        self.engine.barrier();
    }

    /// The `kfree_rcu` engine, for kvfree's unit tests.
    #[cfg(test)]
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A snapshot of the `kfree_rcu` statistics.
    pub fn stats(&self) -> KvfreeStats {
        self.engine.stats()
    }
}

impl Drop for Krcu {
    /// Frees everything queued, then stops the workers. Where that would
    /// wait for the calling thread itself (the last handle dropped by a
    /// destructor that this instance's reclaim runs, inside a callback on
    /// its RCU worker, by a shrinker that page reclaim runs, on kswapd or
    /// in direct reclaim), or on any krcu worker thread (which must never
    /// join a worker: see `fork`), the teardown is handed to a thread of
    /// its own and the drop returns at once, as the RCU worker does for its
    /// own drop.
    fn drop(&mut self) {
        let teardown = Teardown {
            engine: self.engine.clone(),
            workers: self.workers.clone(),
            shrinker: self.shrinker.take(),
        };
        // Inline unless it would wait for the calling thread: a destructor
        // run by this instance's reclaim, an RCU callback on its worker, a
        // thread running the page allocator's shrinkers (the teardown
        // unregisters this instance's shrinker, which takes the shrinker
        // mutex that thread holds, and joins the refill thread, which may
        // wait for that mutex in direct reclaim; kswapd is such a thread),
        // or any krcu worker thread, not only this instance's: a worker
        // never joins a worker (a fork's prepare handler may have parked
        // that one, and waits for this one to park).
        let inline = !(self.engine.in_own_reclaim()
            || self.engine.rcu().on_worker()
            || fork::on_worker_thread()
            || PageAllocator::in_reclaim());
        if inline {
            teardown.run();
            return;
        }
        let workers = self.workers.clone();
        let spawned = std::thread::Builder::new()
            .name("krcu-teardown".into())
            .spawn(move || teardown.run());
        if let Err(err) = spawned {
            // The closure, and with it the teardown, is gone: stop the
            // workers without waiting. What is still queued is leaked.
            tracing::error!(%err, "krcu: cannot start the teardown thread; queued objects leak");
            workers.stop_now();
        }
    }
}

/// What dropping a [`Krcu`] waits for, movable to another thread.
struct Teardown {
    engine: Arc<Engine>,
    workers: Arc<Workers>,
    shrinker: Option<ShrinkerHandle>,
}

impl Teardown {
    fn run(mut self) {
        // The instance's RCU is its own (only the process-wide instance,
        // never torn down, shares the global RCU) and nothing borrows the
        // instance any more: sections left open by gone threads (leaked
        // guards) end now, so that the barrier below does not stall.
        self.engine.rcu().begin_teardown();
        // Nothing is lost: everything queued is freed before the instance
        // goes, and every spare block goes back to the page allocator.
        self.workers.shutdown();
        self.shrinker.take();
    }
}

/// The process-wide instance behind [`Krcu::global`].
static GLOBAL: OnceLock<Krcu> = OnceLock::new();

/// [`Krcu::kfree_rcu`] on the process-wide instance ([`Krcu::global`],
/// whose RCU is [`krcu::rcu::global()`](crate::rcu::global): readers entered
/// with `krcu::rcu::read_lock()` hold the object off).
///
/// The same promises as [`Krcu::kfree_rcu`], the first call included:
/// where the caller may not sleep (a signal handler, atomic, irqs off,
/// inside an RCU read-side section, a real-time thread) and the instance
/// is not built yet, it is not built there (that maps the arena, allocates
/// and starts threads, and from a handler that interrupted its own
/// initialisation would deadlock): the object goes to the global RCU's
/// `call_rcu` with a callback that drops the `Box`, the kernel's `rcu_head`
/// fallback. [`kvfree_rcu_barrier`] waits for those too (it runs
/// `rcu_barrier` on that same RCU). The first call where sleeping is
/// allowed builds the instance.
///
/// If the global RCU does not exist yet either, such objects wait, parked
/// without locks, until something builds it from a context that may sleep:
/// any task-context use of `krcu::rcu::*` or of these free functions, or
/// [`kvfree_rcu_barrier`]. A program whose only callers are real-time
/// threads or signal handlers should touch the global once at start-up
/// (`krcu::rcu::global();` or `Krcu::global();`), or nothing is freed.
#[track_caller]
#[doc(alias = "kvfree_call_rcu")]
pub fn kfree_rcu<T: HasRcuHead>(obj: Box<T>) -> Result<(), InNmi<T>> {
    if let Some(k) = GLOBAL.get() {
        return k.kfree_rcu(obj);
    }
    if context::in_nmi() {
        return Err(InNmi(obj));
    }
    // SAFETY: a Box the caller handed over: leaked, its head unqueued, ours
    // alone. Not in NMI context (checked above), so it is queued.
    unsafe { kfree_rcu_raw_global(NonNull::from(Box::leak(obj))) };
    Ok(())
}

/// [`kfree_rcu`] of a leaked `Box<T>` given by pointer (see
/// [`Krcu::kfree_rcu_raw`]). Returns `false`, with nothing done, in NMI
/// context.
///
/// # Safety
/// As [`Krcu::kfree_rcu_raw`].
#[track_caller]
pub(crate) unsafe fn kfree_rcu_raw_global<T: HasRcuHead>(raw: NonNull<T>) -> bool {
    if let Some(k) = GLOBAL.get() {
        // SAFETY: the caller's contract, passed on.
        return unsafe { k.kfree_rcu_raw(raw) };
    }
    if !may_build_global() {
        // SAFETY: the caller's contract, passed on.
        return unsafe { kfree_rcu_unbuilt(raw) };
    }
    // SAFETY: the caller's contract, passed on.
    unsafe { Krcu::global().kfree_rcu_raw(raw) }
}

/// Whether the calling context may build the process-wide instance (it
/// sleeps: locks, allocations, thread starts).
#[inline]
fn may_build_global() -> bool {
    matches!(
        context::kind(),
        context::ContextKind::Task | context::ContextKind::Softirq
    ) && !context::in_atomic()
        && !context::irqs_disabled()
        && context::rcu_read_depth() == 0
        && !context::is_realtime()
}

/// `kfree_rcu` before the process-wide instance exists, where it may not
/// be built: the `rcu_head` fallback on the global RCU.
///
/// # Safety
/// As [`Krcu::kfree_rcu_raw`].
#[cold]
unsafe fn kfree_rcu_unbuilt<T: HasRcuHead>(raw: NonNull<T>) -> bool {
    if context::in_nmi() {
        return false;
    }
    let raw = raw.as_ptr();
    // SAFETY: HasRcuHead's contract puts the head RCU_HEAD_OFFSET bytes
    // into the object, inside the allocation.
    let head =
        unsafe { NonNull::new_unchecked(raw.byte_add(T::RCU_HEAD_OFFSET).cast::<RcuHead>()) };
    // SAFETY: the head belongs to a leaked Box<T> handed over here (valid,
    // unmoved, not queued: the Box was the caller's), and
    // drop_box_by_head::<T> frees exactly that Box after the grace period.
    // Never builds the global RCU either: the caller may not sleep.
    unsafe { crate::rcu::call_rcu_global_nobuild(head, drop_box_by_head::<T>) };
    true
}

/// [`Krcu::register_thread`] on the process-wide instance: makes the
/// calling thread real-time (see there for the promise) and returns its
/// reader handle, whose guards are
/// [`GlobalReadGuard`](crate::rcu::GlobalReadGuard)s (the ones cells of the
/// process-wide instance take). Builds the instance: call it where the
/// thread may still allocate, before its real-time work.
///
/// ```
/// let cell = krcu::RcuCell::new(1u32);
/// let prepared = krcu::RcuBox::new(2u32);
/// let handle = krcu::register_thread(); // this thread is real-time now
/// assert!(cell.store(3).is_err()); // would allocate: refused
/// cell.store_box(prepared).expect("not in NMI context");
/// assert_eq!(cell.load(&handle.read_lock()), Some(&2));
/// krcu::context::set_realtime(false);
/// ```
pub fn register_thread() -> crate::rcu::GlobalReaderHandle {
    crate::rcu::GlobalReaderHandle::new(Krcu::global().register_thread())
}

/// [`Krcu::kvfree_rcu_mightsleep`] on the process-wide instance.
#[track_caller]
pub fn kvfree_rcu_mightsleep<T: Send + 'static>(obj: Box<T>) -> Result<(), InNmi<T>> {
    if context::in_nmi() {
        return Err(InNmi(obj));
    }
    // Leaked while the instance is built: a build that fails (panics)
    // leaks the object rather than free it under a reader.
    let raw = Box::into_raw(obj);
    let krcu = Krcu::global();
    // SAFETY: `raw` came from Box::into_raw just above and nothing else
    // took it: it is the caller's Box again.
    krcu.kvfree_rcu_mightsleep(unsafe { Box::from_raw(raw) })
}

/// [`Krcu::kvfree_rcu_barrier`] on the process-wide instance. Before the
/// instance is built, objects retired with [`kfree_rcu`] went to the global
/// RCU's `call_rcu` (see there): this is then its `rcu_barrier`, and does
/// not build the instance.
#[track_caller]
pub fn kvfree_rcu_barrier() {
    match GLOBAL.get() {
        // Its barrier runs `rcu_barrier` on the global RCU too, so it also
        // waits for what went to `call_rcu` before the instance was built.
        Some(k) => k.kvfree_rcu_barrier(),
        // Whoever queued on the instance built it first (`get_or_init`
        // returned before the call): if this load sees none, everything
        // queued before this call is on the global RCU's lists.
        None => crate::rcu::rcu_barrier(),
    }
}

/// `kfree_rcu` for the objects of one [`SlabCache`], from
/// [`Krcu::slab_channel`].
pub struct SlabChannel<'k, T: HasRcuHead> {
    krcu: &'k Krcu,
    cache: Arc<SlabCache<T>>,
    chan: Channel,
    slot: usize,
}

impl<T: HasRcuHead> SlabChannel<'_, T> {
    /// The cache.
    pub fn cache(&self) -> &Arc<SlabCache<T>> {
        &self.cache
    }

    /// Frees `obj` after a grace period, in bulk with its block (the
    /// two-argument form: never sleeps, never fails; the embedded
    /// [`RcuHead`] is the fallback). From NMI context it refuses and hands
    /// the object back.
    ///
    /// # Safety
    /// `obj` must be an object allocated from this channel's cache, handed
    /// over here (unreachable to readers that start from now on), and freed
    /// no other way.
    #[doc(alias = "kfree_bulk")]
    #[track_caller]
    pub unsafe fn kfree_rcu(&self, obj: NonNull<T>) -> Result<(), NonNull<T>> {
        if self.krcu.engine.refuse_nmi() {
            return Err(obj);
        }
        let ctx = context::kind();
        // SAFETY: HasRcuHead puts the head inside the object.
        let head = unsafe { obj.byte_add(T::RCU_HEAD_OFFSET) }.cast::<RcuHead>();
        // SAFETY: by the caller's contract the object is this cache's and
        // handed over; slab_free_by_head::<T> finds the cache, registered
        // while this channel lives.
        unsafe {
            self.krcu.engine.queue(
                obj.as_ptr().cast(),
                &self.chan,
                head,
                channels::slab_free_by_head::<T>,
                ctx,
            );
        }
        // Checked once the object is queued (see Krcu::kfree_rcu).
        self.krcu.check_reader("kfree_rcu()");
        Ok(())
    }
}

impl<T: HasRcuHead> Drop for SlabChannel<'_, T> {
    fn drop(&mut self) {
        if self.krcu.rcu().on_worker() {
            // Inside a callback on this instance's RCU worker the barrier
            // would wait for that very callback (it panics rather than
            // hang): objects of this channel may still be queued, so the
            // cache and its registry slot are kept for good.
            self.keep_cache("inside an RCU callback of its instance");
            return;
        }
        // Should the barrier unwind (it panics where it would wait for
        // itself), objects of this channel may still be queued: keep the
        // cache rather than free it under them.
        struct KeepOnUnwind<'c, T>(&'c Arc<SlabCache<T>>, bool);
        impl<T> Drop for KeepOnUnwind<'_, T> {
            fn drop(&mut self) {
                if !self.1 {
                    core::mem::forget(self.0.clone());
                }
            }
        }
        let mut unwinding = KeepOnUnwind(&self.cache, false);
        self.krcu.kvfree_rcu_barrier();
        unwinding.1 = true;
        if self.krcu.engine.in_own_reclaim() {
            // Dropped by a destructor that this instance's reclaim runs:
            // the barrier could not wait for what this thread's reclaim
            // holds, which may include objects of this channel, freed
            // through the cache (by pointer, and by the registry for the
            // list fallback) after the destructor returns. Keep both for
            // good rather than free the cache under them.
            self.keep_cache("inside kfree_rcu reclaim");
            return;
        }
        channels::unregister(self.slot);
    }
}

impl<T: HasRcuHead> SlabChannel<'_, T> {
    /// Keeps the cache alive and its registry slot taken for good: objects
    /// of this channel may be freed through them after the drop returns.
    #[cold]
    fn keep_cache(&self, why: &str) {
        tracing::warn!("krcu: a SlabChannel dropped {why}; its cache is kept alive");
        core::mem::forget(self.cache.clone());
    }
}
