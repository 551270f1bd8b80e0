//! `Krcu`: one instance of everything (domain, page allocator, RCU,
//! `kfree_rcu`), built with [`KrcuBuilder`], owning its worker threads and
//! stopping them on drop. A lazily built process-wide instance serves the
//! free functions ([`kfree_rcu`](crate::kfree_rcu) and friends).
//!
//! The parts: the builder (`builder.rs`), the process-wide instance and
//! the free functions (`global.rs`), the slab channels
//! (`slab_channel.rs`), `kfree_rcu` of slab boxes (`slab_retire.rs`); this file is the instance itself and its teardown.
//!
//! Uses: `context`, `domain`, `fork`, `kvfree`, `lockdep`, `page`, `rcu`,
//! `slab`.

mod builder;
mod global;
mod slab_channel;
mod slab_retire;

pub use builder::KrcuBuilder;
pub(crate) use global::kfree_rcu_raw_global;
pub use global::{flush, kfree_rcu, kvfree_rcu_barrier, kvfree_rcu_mightsleep, register_thread};
pub use slab_channel::SlabChannel;
pub(crate) use slab_retire::kfree_rcu_slab_raw_global;
pub use slab_retire::{SlabRetireError, kfree_rcu_slab};

use crate::context::{self};
use crate::domain::Domain;
use crate::error::BuildError;
use crate::fork;
use crate::kvfree::block::{box_channel, drop_box_by_head};
use crate::kvfree::channels;
use crate::kvfree::engine::Engine;
use crate::kvfree::worker::Workers;
use crate::kvfree::{KvfreeConfig, KvfreeStats};
use crate::page::{Page, PageAllocator, ShrinkerHandle};
use crate::rcu::{HasRcuHead, Rcu, RcuHead};
use crate::slab::SlabCache;
use core::ptr::NonNull;
use std::sync::Arc;

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
///
/// ```
/// let krcu = krcu::Krcu::builder().cpus(1).arena_size(16 << 20).build().unwrap();
/// let obj = Box::new(String::from("just unlinked"));
/// let refused = {
///     let _nmi = krcu::context::enter_nmi(); // say, a signal handler
///     krcu.kvfree_rcu_mightsleep(obj).unwrap_err()
/// };
/// assert_eq!(krcu.stats().refused_nmi, 1);
/// // Back in task context: retire the same object again.
/// krcu.kvfree_rcu_mightsleep(refused.0).expect("task context");
/// krcu.kvfree_rcu_barrier();
/// assert_eq!(krcu.stats().reclaimed_objects, 1);
/// ```
#[derive(thiserror::Error)]
#[must_use = "the object is handed back and must not be dropped while readers can still reach it"]
#[error("kfree_rcu() called from NMI context: refused, the object is handed back")]
pub struct InNmi<T>(pub Box<T>);

impl<T> core::fmt::Debug for InNmi<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("InNmi(..)")
    }
}

/// An instance of krcu: a domain (CPUs, preempt model, validator), a page
/// allocator, RCU, and the `kfree_rcu` machinery on top.
///
/// Build one with [`Krcu::builder`], or use the process-wide one
/// ([`Krcu::global`], behind the free functions [`kfree_rcu`](crate::kfree_rcu)
/// and friends). It owns its worker threads (the RCU grace-period worker,
/// the `kfree_rcu` monitor, refill and reclaimer threads, the page
/// allocator's reclaim worker); dropping it frees everything still queued,
/// then stops them.
///
/// ```
/// use std::time::Duration;
///
/// let krcu = krcu::Krcu::builder()
///     .cpus(1)                              // per-CPU state for one CPU
///     .arena_size(16 << 20)                 // 16 MiB of pages for its blocks
///     .drain_delay(Duration::from_millis(1))
///     .build()
///     .expect("valid settings");
/// for i in 0..1000u64 {
///     krcu.kvfree_rcu_mightsleep(Box::new(i)).expect("task context");
/// }
/// krcu.kvfree_rcu_barrier(); // all 1000 freed, after a grace period
/// let stats = krcu.stats();
/// assert_eq!(stats.calls(), 1000);
/// assert_eq!(stats.reclaimed_objects, 1000);
/// assert_eq!(stats.pending_objects, 0);
/// ```
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
    /// A builder with the defaults (see [`KrcuBuilder`]).
    ///
    /// ```
    /// use krcu::kvfree::Policy;
    /// let krcu = krcu::Krcu::builder().cpus(2).policy(Policy::CacheRefill).build().unwrap();
    /// assert_eq!(krcu.kvfree_config().policy, Policy::CacheRefill);
    /// assert_eq!(krcu.domain().cpus(), 2);
    /// assert_eq!(krcu.pages().cpus(), 2);
    /// ```
    pub fn builder() -> KrcuBuilder {
        KrcuBuilder::default()
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
    /// A reader of this instance holds the object off until it leaves its
    /// section:
    /// ```
    /// use krcu::rcu::{HasRcuHead, RcuHead};
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// static DROPPED: AtomicUsize = AtomicUsize::new(0);
    /// #[derive(HasRcuHead)]
    /// struct Node {
    ///     value: u64,
    ///     rcu: RcuHead,
    /// }
    /// impl Drop for Node {
    ///     fn drop(&mut self) {
    ///         DROPPED.fetch_add(1, Ordering::SeqCst);
    ///     }
    /// }
    ///
    /// let krcu = krcu::Krcu::builder().cpus(1).arena_size(16 << 20).build().unwrap();
    /// let guard = krcu.rcu().read_lock(); // a reader, as of now
    /// krcu.kfree_rcu(Box::new(Node { value: 7, rcu: RcuHead::new() })).unwrap();
    /// std::thread::sleep(std::time::Duration::from_millis(20));
    /// assert_eq!(DROPPED.load(Ordering::SeqCst), 0, "the reader holds it off");
    /// drop(guard);
    /// krcu.kvfree_rcu_barrier();
    /// assert_eq!(DROPPED.load(Ordering::SeqCst), 1);
    /// ```
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
            self.engine.call().queue(
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
    ///
    /// ```
    /// let krcu = krcu::Krcu::builder().cpus(1).arena_size(16 << 20).build().unwrap();
    /// // Any `Box<T>`: no `RcuHead` to embed.
    /// krcu.kvfree_rcu_mightsleep(Box::new(vec![1u8; 100])).expect("task context");
    /// krcu.kvfree_rcu_barrier();
    /// assert_eq!(krcu.stats().reclaimed_objects, 1);
    /// ```
    ///
    /// # Errors
    /// [`InNmi`] from NMI context, with the object handed back (see there
    /// for an example): do not drop it.
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
                .call()
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
    /// ```
    /// use krcu::page::Gfp;
    /// let krcu = krcu::Krcu::builder().cpus(1).arena_size(16 << 20).build().unwrap();
    /// let page = krcu.pages().alloc_page(Gfp::KERNEL).unwrap();
    /// krcu.free_pages_rcu_mightsleep(page).expect("task context");
    /// krcu.kvfree_rcu_barrier();
    /// assert_eq!(krcu.stats().reclaimed_objects, 1);
    /// ```
    ///
    /// # Errors
    /// From NMI context the page is handed back (`Err(page)`), not freed.
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
        if unsafe { self.engine.call().queue_mightsleep(entry, &chan, ctx) } {
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
    ///
    /// ```
    /// use krcu::page::Gfp;
    /// use krcu::rcu::{HasRcuHead, RcuHead};
    /// use krcu::slab::SlabCache;
    /// use std::sync::Arc;
    ///
    /// #[derive(HasRcuHead)]
    /// struct Entry {
    ///     key: u64,
    ///     rcu: RcuHead,
    /// }
    ///
    /// let krcu = krcu::Krcu::builder().cpus(1).arena_size(16 << 20).build().unwrap();
    /// let cache = Arc::new(SlabCache::<Entry>::new(krcu.pages(), "entry").unwrap());
    /// let channel = krcu.slab_channel(&cache).unwrap();
    /// let obj = cache.alloc(Gfp::KERNEL, Entry { key: 1, rcu: RcuHead::new() }).ok().unwrap();
    /// // SAFETY: `obj` is from the channel's cache, unreachable to new
    /// // readers (it was never published), and freed no other way.
    /// unsafe { channel.kfree_rcu(obj) }.unwrap();
    /// drop(channel); // waits until it is back in the cache
    /// assert_eq!(krcu.stats().reclaimed_objects, 1);
    /// assert!(cache.stats().bulk_frees >= 1, "freed with free_bulk");
    /// ```
    ///
    /// # Errors
    /// [`BuildError::TooManySlabChannels`] when every slot of the
    /// process-wide channel registry is taken.
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
    /// The one cost: it never wakes the `kfree_rcu` monitor either. While
    /// anything is pending the monitor polls and nothing changes; but what a
    /// real-time thread (or a signal handler) queues after a quiet spell,
    /// while the monitor sleeps idle, waits for its next timed wake-up: at
    /// most [`idle_poll`](crate::kvfree::KvfreeConfig::idle_poll) (default
    /// 1 s) plus a drain delay before it is handed to RCU. Other threads'
    /// calls wake the monitor at once.
    ///
    /// Neither do [`ReaderHandle::read_lock`](crate::rcu::ReaderHandle::read_lock)
    /// and this instance's [`Rcu::read_lock`](crate::rcu::Rcu::read_lock).
    /// Real-time is a property of the thread, not of the instance
    /// ([`context::set_realtime`]): on an instance it was not registered
    /// with, its calls take the per-CPU path (trylocks only) instead of
    /// making a front. The exception is [`Policy::Nowait`](crate::kvfree::Policy::Nowait), kept to show the
    /// bug the 2020 kfree_rcu thread showed: its
    /// allocation may take the zone lock.
    ///
    /// Keep the handle for the fastest readers; dropping it unregisters the
    /// reader only (the thread stays real-time; `context::set_realtime(false)`
    /// withdraws that).
    ///
    /// ```
    /// use krcu::context;
    /// let krcu = krcu::Krcu::builder().cpus(1).arena_size(16 << 20).build().unwrap();
    /// std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         let reader = krcu.register_thread(); // where it may still allocate
    ///         assert!(context::is_realtime());
    ///         // The real-time loop: read, retire, never allocate or block.
    ///         let guard = reader.read_lock();
    ///         assert!(krcu.rcu().is_reading());
    ///         drop(guard);
    ///         let refused = krcu.defer(|| ()); // boxes a closure: refused here
    ///         assert!(matches!(refused, Err(krcu::DeferError::Realtime(_))));
    ///     });
    /// });
    /// assert!(!context::is_realtime(), "a property of that thread only");
    /// ```
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
    ///
    /// ```
    /// use std::sync::Arc;
    /// let krcu = krcu::Krcu::builder().cpus(1).arena_size(16 << 20).build().unwrap();
    /// let shared = Arc::new(());
    /// for _ in 0..10 {
    ///     krcu.kvfree_rcu_mightsleep(Box::new(shared.clone())).unwrap();
    /// }
    /// krcu.kvfree_rcu_barrier();
    /// assert_eq!(Arc::strong_count(&shared), 1, "the ten clones were dropped");
    /// ```
    ///
    /// # Panics
    /// From a callback on this instance's RCU worker: it would wait for
    /// itself. (Do not call it inside a read-side section of this instance
    /// either: it sleeps, which the validator reports.)
    #[track_caller]
    pub fn kvfree_rcu_barrier(&self) {
        self.domain().might_sleep();
        // The reclaimers start on demand: a barrier is such a demand.
        self.workers.ensure_reclaimers();
        self.engine.barrier();
    }

    /// The `kfree_rcu` engine, for kvfree's unit tests.
    #[cfg(test)]
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A snapshot of the `kfree_rcu` statistics (what each field means:
    /// [`KvfreeStats`], and the [guide](crate::guide#what-each-statistic-means)).
    ///
    /// ```
    /// let krcu = krcu::Krcu::builder().cpus(1).arena_size(16 << 20).build().unwrap();
    /// assert_eq!(krcu.stats().calls(), 0);
    /// krcu.kvfree_rcu_mightsleep(Box::new([0u64; 4])).unwrap();
    /// let queued = krcu.stats();
    /// assert_eq!((queued.calls_task, queued.to_block), (1, 1));
    /// krcu.kvfree_rcu_barrier();
    /// let done = krcu.stats();
    /// assert_eq!((done.reclaimed_objects, done.pending_objects), (1, 0));
    /// assert!(done.grace_periods >= 1);
    /// ```
    pub fn stats(&self) -> KvfreeStats {
        self.engine.stats()
    }

    /// For krcu's tests (feature `testing`): wake-ups of every `kfree_rcu`
    /// thread so far, doorbell kicks that woke the monitor from an idle
    /// sleep, and whether the monitor sleeps idle now.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn idle_counters(&self) -> (u64, u64, bool) {
        self.engine.idle_counters()
    }

    /// For krcu's tests (feature `testing`): makes every later start of
    /// the reclaimer threads fail, as if no thread could be had.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn fail_reclaimer_start(&self, fail: bool) {
        self.workers.fail_reclaimer_start(fail);
    }

    /// For krcu's tests (feature `testing`): a hook the monitor runs
    /// between its idle re-check and its wait (None removes it).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn set_idle_hook(&self, hook: Option<std::sync::Arc<dyn Fn() + Send + Sync>>) {
        self.engine.set_idle_hook(hook);
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
