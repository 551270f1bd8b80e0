//! Reclaim: registered shrinkers, the kswapd worker, and direct reclaim.
//!
//! - [`PageAllocator::register_shrinker`](super::PageAllocator::register_shrinker)
//!   adds a `count`/`scan` pair (`struct shrinker`): `count()` says how many
//!   objects could be freed, `scan(n)` frees up to `n` and says how many it
//!   did. Shrinkers run under the shrinker mutex (the kernel's
//!   `shrinker_rwsem`), so a shrinker must not register or unregister
//!   shrinkers from its callbacks; it may free pages and objects.
//! - **kswapd** is a thread the allocator owns. An allocation that leaves
//!   the zone below the low watermark (and whose flags include
//!   `KSWAPD_RECLAIM`) wakes it; it runs the shrinkers in rounds until the
//!   zone has `high` free pages or a round frees nothing.
//! - **Direct reclaim**: a sleeping allocation (`Gfp::KERNEL`) that fails
//!   at the min watermark runs a round of the shrinkers itself and drains
//!   every CPU's lists (`drain_all_pages`), then retries. A thread already
//!   reclaiming does not recurse into reclaim (the kernel's `PF_MEMALLOC`).
//!
//! The worker holds its own `Arc`s of the zone and of this shared state, not
//! of the allocator, so dropping the allocator can stop and join it.
//!
//! Wake-up ordering: a waker sets `wanted` (with `swap`, `AcqRel`) and, if it
//! was clear, unparks the thread; the worker clears `wanted` with a `swap`
//! before each balancing run and parks only when it found it clear. A wake
//! between its check and its `park` leaves the thread's unpark token set, so
//! `park` returns at once: no lost wake-up.
//!
//! Uses: `domain`, `fork`, `lock`; in this module `error.rs`, `stats.rs`,
//! `zone.rs`.

use super::stats::{GlobalCells, bump};
use super::zone::Zone;
use crate::domain::Domain;
use crate::lock::Mutex;
use core::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::*};
use std::sync::{Arc, Weak};

/// Objects asked of one shrinker per call (`SHRINK_BATCH`).
pub const SHRINK_BATCH: usize = 128;
/// kswapd gives up a balancing run after this many rounds without reaching
/// `high`, as the kernel's kswapd counts `kswapd_failures`.
const MAX_BALANCE_ROUNDS: usize = 64;

type CountFn = dyn Fn() -> usize + Send + Sync;
type ScanFn = dyn Fn(usize) -> usize + Send + Sync;

struct Shrinker {
    id: u64,
    name: &'static str,
    count: Box<CountFn>,
    scan: Box<ScanFn>,
}

/// State shared between the allocator and its kswapd thread.
pub(crate) struct Shared {
    shrinkers: Mutex<Vec<Shrinker>>,
    next_id: AtomicU64,
    wanted: AtomicBool,
    stop: AtomicBool,
    /// The kswapd thread, to unpark (a leaked `Box`, replaced only in the
    /// child of a `fork`; null without kswapd).
    thread: AtomicPtr<std::thread::Thread>,
    pub(crate) stats: GlobalCells,
    /// Bad frees in signal handlers, to report from task context.
    pub(crate) handler_bad_frees: super::error::DeferredBadFrees,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let p = *self.thread.get_mut();
        if !p.is_null() {
            // SAFETY: set from Box::into_raw by set_thread; nothing else can
            // use it once the last Arc of Shared goes.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl core::fmt::Debug for Shared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shared")
            .field("wanted", &self.wanted)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// Set while this thread runs shrinkers (`PF_MEMALLOC`).
    static IN_RECLAIM: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread runs shrinkers (see `PageAllocator::in_reclaim`).
pub(crate) fn in_reclaim() -> bool {
    IN_RECLAIM.try_with(Cell::get).unwrap_or(false)
}

impl Shared {
    pub(crate) fn new(domain: &Domain) -> Self {
        Shared {
            shrinkers: Mutex::named(domain, "shrinker_rwsem", Vec::new()),
            next_id: AtomicU64::new(1),
            wanted: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            thread: AtomicPtr::new(core::ptr::null_mut()),
            stats: GlobalCells::default(),
            handler_bad_frees: Default::default(),
        }
    }

    pub(crate) fn register(
        self: &Arc<Self>,
        name: &'static str,
        count: Box<CountFn>,
        scan: Box<ScanFn>,
    ) -> ShrinkerHandle {
        let id = self.next_id.fetch_add(1, Relaxed);
        self.shrinkers.lock().push(Shrinker {
            id,
            name,
            count,
            scan,
        });
        ShrinkerHandle {
            id,
            shared: Arc::downgrade(self),
        }
    }

    /// Wakes kswapd (`wakeup_kswapd`). Lock-free: a flag and, on the first
    /// wake since the worker last looked, an unpark.
    #[inline]
    #[doc(alias = "wakeup_kswapd")]
    pub(crate) fn wake_kswapd(&self) {
        if self.wanted.load(Relaxed) || self.wanted.swap(true, AcqRel) {
            return;
        }
        bump(&self.stats.kswapd_wakeups);
        self.unpark();
    }

    /// Unparks kswapd, if there is one.
    pub(crate) fn unpark(&self) {
        let p = self.thread.load(Acquire);
        if !p.is_null() {
            // SAFETY: a Box<Thread> published by set_thread (Release, read
            // with Acquire), freed only when Shared drops, or when replaced
            // in a fork child, where no other thread runs.
            unsafe { (*p).unpark() };
        }
    }

    /// One round over the shrinkers (`shrink_slab`): each is asked to free
    /// up to [`SHRINK_BATCH`] objects. Returns the objects freed. A thread
    /// already inside reclaim gets 0 (no recursion).
    #[doc(alias = "shrink_slab")]
    pub(crate) fn shrink_round(&self) -> usize {
        if IN_RECLAIM.with(|r| r.replace(true)) {
            return 0;
        }
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                IN_RECLAIM.with(|r| r.set(false));
            }
        }
        let _reset = Reset;
        let list = self.shrinkers.lock();
        let mut freed = 0;
        for s in list.iter() {
            let n = (s.count)();
            if n > 0 {
                let got = (s.scan)(n.min(SHRINK_BATCH));
                tracing::trace!(shrinker = s.name, asked = n.min(SHRINK_BATCH), freed = got);
                freed += got;
            }
        }
        self.stats.shrinker_freed.fetch_add(freed as u64, Relaxed);
        freed
    }

    /// kswapd's `balance_pgdat`: shrink until `high` free pages or no
    /// progress.
    #[doc(alias = "balance_pgdat")]
    fn balance(&self, zone: &Zone) {
        bump(&self.stats.reclaim_runs);
        for _ in 0..MAX_BALANCE_ROUNDS {
            if zone.free_pages() >= zone.wmark.high || self.stop.load(Relaxed) {
                return;
            }
            if self.shrink_round() == 0 {
                return;
            }
        }
    }

    /// Records kswapd's thread. Called once when the allocator is built,
    /// and again in the child of a `fork` with the child's new kswapd.
    pub(crate) fn set_thread(&self, t: std::thread::Thread) {
        let old = self.thread.swap(Box::into_raw(Box::new(t)), AcqRel);
        if !old.is_null() {
            // SAFETY: replaced only in the child of a fork (see above),
            // where no other thread can be reading it.
            drop(unsafe { Box::from_raw(old) });
        }
    }

    /// Asks the worker to stop and wakes it.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Release);
        self.unpark();
    }
}

/// The kswapd thread's body.
pub(crate) fn kswapd(zone: Arc<Zone>, shared: Arc<Shared>) {
    while !shared.stop.load(Acquire) {
        crate::fork::checkpoint();
        if shared.wanted.swap(false, AcqRel) {
            shared.balance(&zone);
            continue;
        }
        std::thread::park();
    }
}

/// A registered shrinker; unregistered when dropped
/// (`unregister_shrinker`). Holds only a weak reference to the allocator.
#[must_use = "the shrinker is unregistered when the handle is dropped"]
#[derive(Debug)]
pub struct ShrinkerHandle {
    id: u64,
    shared: Weak<Shared>,
}

impl ShrinkerHandle {
    /// Keeps the shrinker registered for the allocator's lifetime.
    pub fn leak(self) {
        core::mem::forget(self);
    }
}

impl Drop for ShrinkerHandle {
    #[doc(alias = "unregister_shrinker")]
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.shrinkers.lock().retain(|s| s.id != self.id);
        }
    }
}
