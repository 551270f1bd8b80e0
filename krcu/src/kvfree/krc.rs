//! One CPU's `kfree_rcu` state (the kernel's `struct kfree_rcu_cpu`).
//!
//! [`Krc`] is what the raw per-CPU lock protects: the current block of each
//! channel (with the full blocks behind it), the cache of spare blocks, the
//! pending counts and the counters. [`KrcCpu`] wraps it with what is reached
//! without that lock: the lock-free `rcu_head` list fallback, the refill
//! request flag, the two batch slots handed to RCU and the CPU's ready
//! queue.
//!
//! Owns: [`Krc`], [`KrcCpu`], [`Locked`]. Uses: `batch.rs`, `block.rs`,
//! `ready.rs`, `stats.rs`, the crate's locks and RCU lists.
//!
//! `Krc` is the record behind one lock that the call path (`call.rs`), the
//! monitor (`monitor.rs`) and the cache (`cache.rs`) each edit under that
//! lock, as the kernel's `struct kfree_rcu_cpu` is. Its channel slots and
//! pending counts are private, behind methods; three fields are
//! `pub(super)`, each with the reason at the field. `KrcCpu`'s lock-free
//! parts are private, behind methods; its lock, batches and ready queue
//! are `pub(super)` for the monitor and reclaim, which take them.

use super::batch::Batch;
use super::block::{BLOCK_BYTES, Block, BlockList, Channel};
use super::ready::ReadyQueue;
use super::stats::{KvfreeStats, Pending};
use crate::context::ContextKind;
use crate::domain::Domain;
use crate::lock::{RawSpinLock, RawSpinLockGuard};
use crate::rcu::{CbList, GpCookie, PendingList, RcuCallbackFn, RcuHead};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Channels a CPU keeps a current block for at once; a fifth evicts the
/// least recently used.
const CHANNELS: usize = 4;

/// Counters kept under the `krc` lock (plain integers: no atomic cost on
/// the call path).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct KrcCounters {
    /// Calls per context: task, softirq, hardirq.
    pub(super) calls: [u64; 3],
    /// Objects that went into a block.
    pub(super) to_block: u64,
    /// New blocks taken from the cache.
    pub(super) from_cache: u64,
    /// New blocks allocated inline by the policy.
    pub(super) inline_alloc: u64,
    /// Inline allocations the policy tried that failed.
    pub(super) inline_alloc_failed: u64,
    /// Objects that found no block and went on the `rcu_head` list.
    pub(super) list_fallback: u64,
    /// Single-argument calls that allocated a block with a sleeping
    /// allocation outside the lock.
    pub(super) sleeping_alloc: u64,
    /// Channel slots evicted for a new channel.
    pub(super) evictions: u64,
}

struct ChanSlot {
    chan: Option<Channel>,
    /// The current block first, full ones behind it.
    blocks: BlockList,
    last_use: u64,
}

impl ChanSlot {
    const EMPTY: ChanSlot = ChanSlot {
        chan: None,
        blocks: BlockList::new(),
        last_use: 0,
    };
}

/// The state behind a CPU's raw `krc` lock.
pub(super) struct Krc {
    slots: [ChanSlot; CHANNELS],
    /// Blocks of evicted channels, for the monitor.
    evicted: BlockList,
    /// Spare blocks. `pub(super)`: the cache (`cache.rs`) fills, trims and
    /// shrinks it, and the call path keeps a page it did not need here.
    pub(super) cache: BlockList,
    /// How many spare blocks the refill worker keeps here; grows when calls
    /// come fast enough to empty the cache, shrinks back when they stop.
    /// `pub(super)`: the cache grows it on a miss and resets it on a trim.
    pub(super) cache_target: usize,
    /// Objects in this CPU's blocks and on its list, not yet handed to RCU.
    pending_objs: usize,
    pending_bytes: usize,
    /// Blocks holding objects (current and full), not yet handed to RCU.
    blocks_in_use: usize,
    /// When the monitor first saw objects pending here (for the drain
    /// delay); set and cleared by the monitor only.
    pending_since: Option<Instant>,
    use_clock: u64,
    /// `pub(super)`: each path counts its own events, with plain adds
    /// under the lock (no atomic cost on the call path).
    pub(super) counters: KrcCounters,
    /// The monitor's count of calls at its last pass, and how many passes
    /// found no new calls (an idle CPU gives its cache back).
    calls_seen: u64,
    idle_passes: u32,
}

// SAFETY: a Krc owns the blocks in its lists (pages of the instance's
// arena); it is only reached through its RawSpinLock.
unsafe impl Send for Krc {}

impl Krc {
    fn new(cache_target: usize) -> Self {
        Krc {
            slots: [ChanSlot::EMPTY; CHANNELS],
            evicted: BlockList::new(),
            cache: BlockList::new(),
            cache_target,
            pending_objs: 0,
            pending_bytes: 0,
            blocks_in_use: 0,
            pending_since: None,
            use_clock: 0,
            counters: KrcCounters::default(),
            calls_seen: 0,
            idle_passes: 0,
        }
    }

    #[inline]
    pub(super) fn count_call(&mut self, ctx: ContextKind) {
        let i = match ctx {
            ContextKind::Task => 0,
            ContextKind::Softirq => 1,
            _ => 2,
        };
        self.counters.calls[i] += 1;
    }

    /// All calls seen here.
    pub(super) fn calls(&self) -> u64 {
        self.counters.calls.iter().sum()
    }

    /// Adds `obj` to `chan`'s current block if there is one with room.
    #[inline]
    pub(super) fn add(&mut self, chan: &Channel, obj: *mut u8, snap: GpCookie) -> bool {
        for slot in &mut self.slots {
            if let Some(c) = &slot.chan
                && c.same(chan)
            {
                let head = slot.blocks.head;
                if head.is_null() {
                    return false;
                }
                // SAFETY: blocks in a slot are owned by this Krc, which the
                // caller holds the lock of.
                let block = unsafe { &mut *head };
                if block.is_full() {
                    return false;
                }
                block.push(obj, snap);
                self.use_clock += 1;
                slot.last_use = self.use_clock;
                self.pending_objs += 1;
                self.pending_bytes += chan.obj_size;
                self.counters.to_block += 1;
                return true;
            }
        }
        false
    }

    /// Makes `page` the current block of `chan`, in front of its full
    /// blocks; evicts the least recently used channel if all are taken.
    ///
    /// # Safety
    /// `page` must be a 4 KiB page of the instance's arena owned by the
    /// caller.
    pub(super) unsafe fn install(&mut self, chan: &Channel, page: NonNull<u8>) {
        // SAFETY: forwarded from the caller.
        let block = unsafe { Block::init(page, *chan) };
        let i = match self
            .slots
            .iter()
            .position(|s| s.chan.as_ref().is_some_and(|c| c.same(chan)))
        {
            Some(i) => i,
            None => {
                let i = self
                    .slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| (s.chan.is_some(), s.last_use))
                    .map_or(0, |(i, _)| i);
                let slot = &mut self.slots[i];
                if slot.chan.is_some() {
                    self.counters.evictions += 1;
                    let mut old = core::mem::replace(&mut slot.blocks, BlockList::new());
                    self.evicted.append(&mut old);
                }
                slot.chan = Some(*chan);
                i
            }
        };
        // SAFETY: the block was just made in the caller's page.
        unsafe { self.slots[i].blocks.push(block) };
        self.blocks_in_use += 1;
    }

    /// Takes over a filled block from a thread's front, as a full block
    /// for the monitor to hand over.
    ///
    /// # Safety
    /// `b` must be an initialised block of this instance, owned by the
    /// caller, holding `objs` objects of `bytes` bytes.
    pub(super) unsafe fn adopt(&mut self, b: NonNull<Block>, objs: usize, bytes: usize) {
        // SAFETY: the caller owns the block.
        unsafe { self.evicted.push(b) };
        self.blocks_in_use += 1;
        self.pending_objs += objs;
        self.pending_bytes += bytes;
    }

    /// A spare block's page, if the cache has one.
    #[inline]
    pub(super) fn take_cached(&mut self) -> Option<NonNull<u8>> {
        let b = self.cache.pop()?;
        self.counters.from_cache += 1;
        Some(b.cast())
    }

    /// Whether any slot has full blocks behind its current one, or blocks
    /// were evicted.
    pub(super) fn has_full_blocks(&self) -> bool {
        !self.evicted.is_empty() || self.slots.iter().any(|s| s.blocks.len > 1)
    }

    /// The monitor's look at this CPU at `now`: counts an idle pass (no
    /// call since the last), notes when objects started to wait, and says
    /// whether they waited `drain_delay`.
    pub(super) fn monitor_look(
        &mut self,
        now: Instant,
        drain_delay: Duration,
        list_waiting: bool,
    ) -> bool {
        let calls = self.calls();
        if calls == self.calls_seen {
            self.idle_passes = self.idle_passes.saturating_add(1);
        } else {
            self.calls_seen = calls;
            self.idle_passes = 0;
        }
        if self.pending_objs > 0 || list_waiting {
            self.pending_since.get_or_insert(now);
        }
        self.pending_since
            .is_some_and(|t| now.duration_since(t) >= drain_delay)
    }

    /// Whether objects wait in this CPU's blocks.
    pub(super) fn has_pending(&self) -> bool {
        self.pending_objs > 0
    }

    /// Monitor passes in a row that found no new call.
    pub(super) fn idle_passes(&self) -> u32 {
        self.idle_passes
    }

    /// After a hand-over at `now`: what is left (current blocks) waits a
    /// drain delay from now; nothing left, nothing waits.
    pub(super) fn restart_drain_clock(&mut self, now: Instant) {
        self.pending_since = if self.pending_objs > 0 {
            Some(now)
        } else {
            None
        };
    }

    /// Keeps spare blocks from `spare` in the cache, up to its target.
    pub(super) fn keep_spare(&mut self, spare: &mut BlockList) {
        while self.cache.len < self.cache_target {
            let Some(b) = spare.pop() else { break };
            // SAFETY: an emptied block the caller owned, now the cache's.
            unsafe { self.cache.push(b) };
        }
    }

    /// Takes the blocks ready to hand over: the full ones, and with `all`
    /// the current ones too. Returns them and the objects they hold.
    pub(super) fn detach_blocks(&mut self, all: bool) -> (BlockList, usize, usize) {
        let mut out = BlockList::new();
        let (mut objs, mut bytes) = (0, 0);
        let mut take = |b: NonNull<Block>, out: &mut BlockList| {
            // SAFETY: the block is owned by this Krc and moves to `out`.
            let blk = unsafe { &*b.as_ptr() };
            objs += blk.count;
            bytes += blk.count * blk.chan.obj_size;
            // SAFETY: as above.
            unsafe { out.push(b) };
        };
        while let Some(b) = self.evicted.pop() {
            take(b, &mut out);
        }
        for slot in &mut self.slots {
            let current = if all { None } else { slot.blocks.pop() };
            while let Some(b) = slot.blocks.pop() {
                take(b, &mut out);
            }
            if let Some(c) = current {
                // SAFETY: popped from this slot just above.
                unsafe { slot.blocks.push(c) };
            }
        }
        self.blocks_in_use -= out.len;
        self.pending_objs -= objs;
        self.pending_bytes -= bytes;
        (out, objs, bytes)
    }
}

/// One CPU's `kfree_rcu` state with what is reached without its lock.
pub(super) struct KrcCpu {
    /// Lock order: after the fronts registry's lock (the monitor adopts a
    /// stolen front block into CPU 0's `krc` with it held), before every
    /// ready lock; two `krc` locks nest only in the fork handler, in CPU
    /// order (the call path trylocks).
    pub(super) krc: RawSpinLock<Krc>,
    /// The `rcu_head` list: objects that found no block, or found every
    /// `krc` lock taken. Lock-free, so the fallback can never wait.
    list: PendingList,
    /// Objects on `list` (Relaxed, as the other counts here: statistics
    /// and the monitor's "anything waiting?" hint; the objects themselves
    /// are published by the list's own push and taken by its swap).
    list_objs: AtomicUsize,
    /// The size of the objects last put on the list: list bytes are
    /// estimated as objects times this (exact when one type floods).
    list_obj_size: AtomicUsize,
    /// Calls that found every `krc` lock taken (counted here: they never
    /// held a lock).
    lock_busy: AtomicU64,
    /// The call path asks the worker for spare blocks (Relaxed: a flag the
    /// refill worker polls; no data is handed over with it, the blocks go
    /// into the cache under the `krc` lock).
    refill_wanted: AtomicBool,
    /// At most two batches in flight per CPU.
    pub(super) batches: [Batch; 2],
    /// Objects whose grace period has elapsed, waiting to be freed.
    pub(super) ready: Arc<ReadyQueue>,
}

impl KrcCpu {
    pub(super) fn new(domain: &Domain, cache_target: usize, ready: Arc<ReadyQueue>) -> Self {
        KrcCpu {
            krc: RawSpinLock::named(domain, "&krcp->lock", Krc::new(cache_target)),
            list: PendingList::new(),
            list_objs: AtomicUsize::new(0),
            list_obj_size: AtomicUsize::new(0),
            lock_busy: AtomicU64::new(0),
            refill_wanted: AtomicBool::new(false),
            batches: [Batch::new(ready.clone()), Batch::new(ready.clone())],
            ready,
        }
    }

    /// Asks the worker for a refill (a plain store when not yet asked).
    #[inline]
    pub(super) fn want_refill(&self) {
        if !self.refill_wanted.load(Ordering::Relaxed) {
            self.refill_wanted.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a refill is asked for.
    pub(super) fn refill_wanted(&self) -> bool {
        self.refill_wanted.load(Ordering::Relaxed)
    }

    /// Takes the refill request (the refill worker).
    pub(super) fn take_refill_request(&self) -> bool {
        self.refill_wanted.swap(false, Ordering::Relaxed)
    }

    /// Counts a call that found every `krc` lock taken.
    pub(super) fn count_lock_busy(&self) {
        self.lock_busy.fetch_add(1, Ordering::Relaxed);
    }

    /// Puts an object on the `rcu_head` list.
    ///
    /// # Safety
    /// `head` is the embedded head of an object handed over by the caller,
    /// not queued, and `func` frees the object given `head`.
    #[inline]
    pub(super) unsafe fn push_list(
        &self,
        head: NonNull<RcuHead>,
        func: RcuCallbackFn,
        size: usize,
    ) {
        self.list_objs.fetch_add(1, Ordering::Relaxed);
        self.list_obj_size.store(size, Ordering::Relaxed);
        // SAFETY: forwarded from the caller: the head is not queued and
        // `func` frees its object.
        unsafe { self.list.push(head, func) };
    }

    /// Whether objects wait on the `rcu_head` list.
    pub(super) fn list_waiting(&self) -> bool {
        self.list_objs.load(Ordering::Relaxed) > 0
    }

    /// Takes the `rcu_head` list, with its objects and estimated bytes.
    pub(super) fn take_list(&self) -> (CbList, usize, usize) {
        let list = self.list.take();
        let n = list.len();
        self.list_objs.fetch_sub(n, Ordering::Relaxed);
        let bytes = n * self.list_obj_size.load(Ordering::Relaxed);
        (list, n, bytes)
    }

    /// What waits on this CPU, not yet handed to RCU: the objects in its
    /// blocks (whose pages count) and on its list. `krc` is this CPU's
    /// state, locked.
    pub(super) fn pending(&self, krc: &Krc) -> Pending {
        let list_objs = self.list_objs.load(Ordering::Relaxed);
        Pending {
            objs: krc.pending_objs + list_objs,
            bytes: krc.pending_bytes
                + krc.blocks_in_use * BLOCK_BYTES
                + list_objs * self.list_obj_size.load(Ordering::Relaxed),
            blocks: krc.blocks_in_use,
        }
    }

    /// Adds this CPU's counts to `s` (takes its `krc` lock).
    pub(super) fn add_stats(&self, s: &mut KvfreeStats) {
        let k = self.krc.lock();
        let kc = &k.counters;
        s.calls_task += kc.calls[0];
        s.calls_softirq += kc.calls[1];
        s.calls_hardirq += kc.calls[2];
        s.to_block += kc.to_block;
        s.blocks_from_cache += kc.from_cache;
        s.inline_allocs += kc.inline_alloc;
        s.inline_alloc_failures += kc.inline_alloc_failed;
        s.list_fallbacks += kc.list_fallback;
        s.sleeping_allocs += kc.sleeping_alloc;
        s.evictions += kc.evictions;
        s.blocks_cached += k.cache.len as u64;
        let p = self.pending(&k);
        s.blocks_in_use += p.blocks as u64;
        s.pending_objects += p.objs as u64;
        s.pending_bytes += p.bytes as u64;
        s.lock_busy_fallbacks += self.lock_busy.load(Ordering::Relaxed);
        s.assisted_objects += self.ready.assisted();
    }
}

/// A `krc` lock held, and the CPU it belongs to.
pub(super) struct Locked<'a> {
    pub(super) cpu: &'a KrcCpu,
    pub(super) krc: RawSpinLockGuard<'a, Krc>,
}
