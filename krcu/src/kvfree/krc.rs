//! One CPU's `kfree_rcu` state (the kernel's `struct kfree_rcu_cpu`).
//!
//! [`Krc`] is what the raw per-CPU lock protects: the current block of each
//! channel (with the full blocks behind it), the cache of spare blocks, the
//! pending counts and the counters. [`KrcCpu`] wraps it with what is reached
//! without that lock: the lock-free `rcu_head` list fallback, the refill
//! request flag and the two batch slots handed to RCU.

use super::batch::Batch;
use super::block::{Block, BlockList, Channel};
use crate::context::ContextKind;
use crate::domain::Domain;
use crate::lock::RawSpinLock;
use crate::rcu::{CbList, GpCookie, PendingList};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// Channels a CPU keeps a current block for at once; a fifth evicts the
/// least recently used.
pub(crate) const CHANNELS: usize = 4;

/// Counters kept under the `krc` lock (plain integers: no atomic cost on
/// the call path).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KrcCounters {
    /// Calls per context: task, softirq, hardirq.
    pub(crate) calls: [u64; 3],
    /// Objects that went into a block.
    pub(crate) to_block: u64,
    /// New blocks taken from the cache.
    pub(crate) from_cache: u64,
    /// New blocks allocated inline by the policy.
    pub(crate) inline_alloc: u64,
    /// Inline allocations the policy tried that failed.
    pub(crate) inline_alloc_failed: u64,
    /// Objects that found no block and went on the `rcu_head` list.
    pub(crate) list_fallback: u64,
    /// Single-argument calls that allocated a block with a sleeping
    /// allocation outside the lock.
    pub(crate) sleeping_alloc: u64,
    /// Channel slots evicted for a new channel.
    pub(crate) evictions: u64,
}

pub(crate) struct ChanSlot {
    pub(crate) chan: Option<Channel>,
    /// The current block first, full ones behind it.
    pub(crate) blocks: BlockList,
    pub(crate) last_use: u64,
}

impl ChanSlot {
    const EMPTY: ChanSlot = ChanSlot {
        chan: None,
        blocks: BlockList::new(),
        last_use: 0,
    };
}

/// The state behind a CPU's raw `krc` lock.
pub(crate) struct Krc {
    pub(crate) slots: [ChanSlot; CHANNELS],
    /// Blocks of evicted channels, for the monitor.
    pub(crate) evicted: BlockList,
    /// Spare blocks.
    pub(crate) cache: BlockList,
    /// How many spare blocks the refill worker keeps here; grows when calls
    /// come fast enough to empty the cache, shrinks back when they stop.
    pub(crate) cache_target: usize,
    /// Objects in this CPU's blocks and on its list, not yet handed to RCU.
    pub(crate) pending_objs: usize,
    pub(crate) pending_bytes: usize,
    /// Blocks holding objects (current and full), not yet handed to RCU.
    pub(crate) blocks_in_use: usize,
    /// When the monitor first saw objects pending here (for the drain
    /// delay); set and cleared by the monitor only.
    pub(crate) pending_since: Option<Instant>,
    use_clock: u64,
    pub(crate) counters: KrcCounters,
    /// The monitor's count of calls at its last pass, and how many passes
    /// found no new calls (an idle CPU gives its cache back).
    pub(crate) calls_seen: u64,
    pub(crate) idle_passes: u32,
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
    pub(crate) fn count_call(&mut self, ctx: ContextKind) {
        let i = match ctx {
            ContextKind::Task => 0,
            ContextKind::Softirq => 1,
            _ => 2,
        };
        self.counters.calls[i] += 1;
    }

    /// All calls seen here.
    pub(crate) fn calls(&self) -> u64 {
        self.counters.calls.iter().sum()
    }

    /// Adds `obj` to `chan`'s current block if there is one with room.
    #[inline]
    pub(crate) fn add(&mut self, chan: &Channel, obj: *mut u8, snap: GpCookie) -> bool {
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
    pub(crate) unsafe fn install(&mut self, chan: &Channel, page: NonNull<u8>) {
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
    pub(crate) unsafe fn adopt(&mut self, b: NonNull<Block>, objs: usize, bytes: usize) {
        // SAFETY: the caller owns the block.
        unsafe { self.evicted.push(b) };
        self.blocks_in_use += 1;
        self.pending_objs += objs;
        self.pending_bytes += bytes;
    }

    /// A spare block's page, if the cache has one.
    #[inline]
    pub(crate) fn take_cached(&mut self) -> Option<NonNull<u8>> {
        let b = self.cache.pop()?;
        self.counters.from_cache += 1;
        Some(b.cast())
    }

    /// Whether any slot has full blocks behind its current one, or blocks
    /// were evicted.
    pub(crate) fn has_full_blocks(&self) -> bool {
        !self.evicted.is_empty() || self.slots.iter().any(|s| s.blocks.len > 1)
    }

    /// Takes the blocks ready to hand over: the full ones, and with `all`
    /// the current ones too. Returns them and the objects they hold.
    pub(crate) fn detach_blocks(&mut self, all: bool) -> (BlockList, usize, usize) {
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

/// What is ready to be freed on a CPU.
pub(crate) struct Ready {
    pub(crate) blocks: BlockList,
    pub(crate) list: CbList,
    /// Objects and bytes in `blocks` and `list`.
    pub(crate) objs: usize,
    pub(crate) bytes: usize,
}

impl Default for Ready {
    fn default() -> Self {
        Ready {
            blocks: BlockList::new(),
            list: CbList::new(),
            objs: 0,
            bytes: 0,
        }
    }
}

// SAFETY: owns its blocks and heads exclusively; reached only through its
// lock.
unsafe impl Send for Ready {}

/// One CPU's `kfree_rcu` state with what is reached without its lock.
pub(crate) struct KrcCpu {
    pub(crate) krc: RawSpinLock<Krc>,
    /// The `rcu_head` list: objects that found no block, or found every
    /// `krc` lock taken. Lock-free, so the fallback can never wait.
    pub(crate) list: PendingList,
    pub(crate) list_objs: AtomicUsize,
    /// The size of the objects last put on the list: list bytes are
    /// estimated as objects times this (exact when one type floods).
    pub(crate) list_obj_size: AtomicUsize,
    /// Calls that found every `krc` lock taken (counted here: they never
    /// held a lock).
    pub(crate) lock_busy: AtomicU64,
    /// The call path asks the worker for spare blocks.
    pub(crate) refill_wanted: AtomicBool,
    /// At most two batches in flight per CPU.
    pub(crate) batches: [Batch; 2],
    /// Objects whose grace period has elapsed, waiting to be freed: taken
    /// by the reclaimer in chunks, and by assisting callers a block at a
    /// time with trylock.
    pub(crate) ready: RawSpinLock<Ready>,
    /// Blocks on the ready list (read without the lock, for the heuristics).
    pub(crate) ready_blocks: AtomicUsize,
    /// Threads freeing blocks they took from the ready list.
    pub(crate) reclaiming: AtomicUsize,
    /// Objects freed by assisting callers.
    pub(crate) assisted: AtomicU64,
    /// Wakes this CPU's reclaimer.
    pub(crate) reclaim_wake: std::sync::Mutex<bool>,
    pub(crate) reclaim_cv: std::sync::Condvar,
}

impl KrcCpu {
    pub(crate) fn new(domain: &Domain, cpu: usize, cache_target: usize) -> Self {
        KrcCpu {
            krc: RawSpinLock::named(domain, "&krcp->lock", Krc::new(cache_target)),
            list: PendingList::new(),
            list_objs: AtomicUsize::new(0),
            list_obj_size: AtomicUsize::new(0),
            lock_busy: AtomicU64::new(0),
            refill_wanted: AtomicBool::new(false),
            batches: [Batch::new(cpu), Batch::new(cpu)],
            ready: RawSpinLock::named(domain, "&krcp->ready_lock", Ready::default()),
            ready_blocks: AtomicUsize::new(0),
            reclaiming: AtomicUsize::new(0),
            assisted: AtomicU64::new(0),
            reclaim_wake: std::sync::Mutex::new(false),
            reclaim_cv: std::sync::Condvar::new(),
        }
    }

    /// Asks the worker for a refill (a plain store when not yet asked).
    #[inline]
    pub(crate) fn want_refill(&self) {
        if !self.refill_wanted.load(Ordering::Relaxed) {
            self.refill_wanted.store(true, Ordering::Relaxed);
        }
    }
}
