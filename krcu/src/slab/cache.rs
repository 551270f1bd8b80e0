//! `SlabCache<T>`: the object cache itself.

use super::layout::{self, Layout, SlabHeader};
use super::{SlabError, SlabStats};
use crate::lock::SpinLock;
use crate::page::{AllocError, FaultSites, Gfp, PageAllocator};
use crate::percpu::PerCpu;
use crate::sync::atomic::{AtomicPtr, AtomicU64, Ordering::*};
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use std::sync::Arc;

/// Objects a per-CPU cache holds.
const CPU_CAPACITY: usize = 64;
/// Objects moved per refill or flush of a per-CPU cache.
const CPU_BATCH: usize = 32;

/// A CPU's cache of free objects (SLUB's per-CPU sheaf, SLAB's
/// `array_cache`): a stack of object addresses.
struct CpuCache {
    objs: [*mut u8; CPU_CAPACITY],
    len: usize,
}

// SAFETY: the pointers are addresses of free slots in slabs owned by the
// cache; which thread holds the `CpuCache` (under its lock) does not matter.
unsafe impl Send for CpuCache {}

/// The cache's shared slab lists (`struct kmem_cache_node`): slabs with
/// available objects, doubly linked through their headers.
struct Node {
    partial: *mut SlabHeader,
    nr_partial: usize,
    nr_slabs: usize,
}

// SAFETY: the pointers are slab headers owned by the cache, only followed
// under the node lock.
unsafe impl Send for Node {}

#[derive(Default)]
struct Counters {
    cpu_allocs: AtomicU64,
    cpu_frees: AtomicU64,
    refills: AtomicU64,
    flushes: AtomicU64,
    slabs_allocated: AtomicU64,
    slabs_freed: AtomicU64,
    trylock_failures: AtomicU64,
    bulk_frees: AtomicU64,
    bad_frees: AtomicU64,
    deferred_frees: AtomicU64,
}

/// How a path that gives objects back to the slabs may wait.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Task context: the node lock is taken for real, empty slabs go back
    /// with `free_pages`.
    Block,
    /// `NO_LOCKS` or a signal handler: the node lock is only trylocked
    /// (objects are deferred when it fails), empty slabs go back with
    /// `free_pages_nolock`.
    Try,
}

/// Whether the caller runs in hardirq (signal handler) or NMI context, where
/// a blocking lock self-deadlocks if the interrupted thread holds it.
#[inline]
fn never_block() -> bool {
    crate::context::in_hardirq() || crate::context::in_nmi()
}

/// A cache of `T` objects carved from page-allocator pages
/// (`struct kmem_cache`).
///
/// - `alloc` pops an object from this CPU's cache, taken with trylock;
///   an empty cache refills a batch from the partial slabs under the node
///   lock, allocating a new slab from the page allocator when none is left.
/// - `free` pushes onto this CPU's cache; a full cache flushes a batch back
///   to the slabs. A failed trylock takes the node lock instead.
/// - `free_bulk` sorts the pointers, which groups them by slab, and returns
///   each group under one node-lock acquisition; for a `T` without drop
///   glue it never touches the objects' memory, only the slab headers.
/// - Empty slabs go back to the page allocator at once.
/// - In a signal handler (hardirq or NMI context) and with `NO_LOCKS`, no
///   path waits for a lock: the node lock is only trylocked, and objects
///   that cannot go back are pushed on a lock-free deferred list that the
///   next node-lock holder (a refill, a flush, [`shrink`](Self::shrink))
///   gives back; under PREEMPT_RT a handler's free touches no lock at all.
///   Empty slabs go back with `free_pages_nolock` there.
///
/// Every free is checked (the slab is this cache's, the address is a slot,
/// the object is allocated); bad input follows the page allocator's policy:
/// panic in debug builds, counted and reported in release builds, and a
/// `Result` from [`try_free`](Self::try_free). In a signal handler (hardirq
/// or NMI context) it is only counted (`SlabStats::bad_frees`).
///
/// Objects are handed out as raw pointers, so every free is `unsafe`: safe
/// code cannot free an object twice or free one another user holds.
/// ```compile_fail,E0133
/// # use krcu::{Domain, page::{Gfp, PageAllocator, PageConfig}, slab::SlabCache};
/// # let d = Domain::builder().cpus(1).build();
/// # let config = PageConfig { arena_size: 4 << 20, kswapd: false, ..PageConfig::default() };
/// # let pa = PageAllocator::new(&d, config).unwrap();
/// let cache = SlabCache::<u64>::new(&pa, "u64").unwrap();
/// let obj = cache.alloc(Gfp::KERNEL, 1).unwrap();
/// cache.free(obj); // error[E0133]: call to unsafe function
/// ```
#[doc(alias = "kmem_cache")]
pub struct SlabCache<T> {
    name: &'static str,
    pages: Arc<PageAllocator>,
    magic: u64,
    /// Per-object free bits checked on every allocation and free (double
    /// frees caught): `SLAB_CONSISTENCY_CHECKS`.
    checks: bool,
    layout: Layout,
    cpu: PerCpu<SpinLock<CpuCache>>,
    node: SpinLock<Node>,
    /// Objects freed where no lock could be had (a signal handler whose
    /// trylocks failed, or any under PREEMPT_RT): a lock-free stack linked
    /// through each object's first word, given back to the slabs by the
    /// next node-lock holder. Pushed with a Release compare-exchange, taken
    /// whole with an Acquire swap (no single pop, so no ABA); the objects
    /// stay counted in their slab's `inuse`, so their slabs stay allocated
    /// until they are given back.
    deferred: AtomicPtr<u8>,
    counters: Counters,
    _objects: PhantomData<T>,
}

// SAFETY: the cache hands out `T`s to whichever thread asks and drops them
// (in `free`) on whichever thread frees, so `T: Send` is required; all its
// own state is behind locks or atomics.
unsafe impl<T: Send> Send for SlabCache<T> {}
// SAFETY: as for Send: shared access only goes through locks and atomics.
unsafe impl<T: Send> Sync for SlabCache<T> {}

impl<T> core::fmt::Debug for SlabCache<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlabCache")
            .field("name", &self.name)
            .field("order", &self.layout.order)
            .field("objects_per_slab", &self.layout.objects)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<T> SlabCache<T> {
    /// A cache of `T` over `pages` (`kmem_cache_create`), with consistency
    /// checks in debug builds only (see [`with_checks`](Self::with_checks)).
    #[doc(alias = "kmem_cache_create")]
    pub fn new(pages: &Arc<PageAllocator>, name: &'static str) -> Result<Self, SlabError> {
        Self::with_checks(pages, name, cfg!(debug_assertions))
    }

    /// A cache of `T` over `pages`, choosing whether per-object consistency
    /// checks run (`SLAB_CONSISTENCY_CHECKS`, slub_debug's `F`). With them,
    /// every allocation and free flips the object's free bit in its slab
    /// header with an atomic instruction, so a double free is refused with
    /// its address. Without them, a free still checks that the pointer is a
    /// slot of one of this cache's slabs (no atomic instruction), but a
    /// double free of a valid object goes unnoticed, as in the kernel with
    /// slub_debug off: the atomic costs about as much as the rest of the
    /// fast path.
    #[doc(alias = "SLAB_CONSISTENCY_CHECKS")]
    pub fn with_checks(
        pages: &Arc<PageAllocator>,
        name: &'static str,
        checks: bool,
    ) -> Result<Self, SlabError> {
        // A process-wide id source, not shared state of the model: std.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let layout = Layout::new(core::mem::size_of::<T>(), core::mem::align_of::<T>()).ok_or(
            SlabError::TooLarge {
                size: core::mem::size_of::<T>(),
                align: core::mem::align_of::<T>(),
            },
        )?;
        let domain = pages.domain();
        Ok(SlabCache {
            name,
            pages: Arc::clone(pages),
            magic: 0x51ab_0000_0000_0000 | NEXT.fetch_add(1, Relaxed),
            checks,
            layout,
            cpu: PerCpu::new(domain.cpus(), |_| {
                SpinLock::named(
                    domain,
                    "s->cpu_slab->lock",
                    CpuCache {
                        objs: [ptr::null_mut(); CPU_CAPACITY],
                        len: 0,
                    },
                )
            }),
            node: SpinLock::named(
                domain,
                "n->list_lock",
                Node {
                    partial: ptr::null_mut(),
                    nr_partial: 0,
                    nr_slabs: 0,
                },
            ),
            deferred: AtomicPtr::new(ptr::null_mut()),
            counters: Counters::default(),
            _objects: PhantomData,
        })
    }

    /// The cache's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Objects per slab.
    pub fn objects_per_slab(&self) -> usize {
        self.layout.objects
    }

    /// The page order of each slab.
    pub fn slab_order(&self) -> u32 {
        self.layout.order
    }

    /// The page allocator the slabs come from.
    pub fn page_allocator(&self) -> &Arc<PageAllocator> {
        &self.pages
    }

    /// Allocates an object and moves `value` into it
    /// (`kmem_cache_alloc`); gives `value` back if no memory could be had.
    #[track_caller]
    #[inline]
    #[doc(alias = "kmem_cache_alloc")]
    pub fn alloc(&self, gfp: Gfp, value: T) -> Result<NonNull<T>, T> {
        match self.alloc_uninit(gfp) {
            Ok(slot) => {
                let p = slot.cast::<T>();
                // SAFETY: the slot is freshly allocated, sized and aligned
                // for `T`, and exclusively ours.
                unsafe { p.as_ptr().write(value) };
                Ok(p)
            }
            Err(_) => Err(value),
        }
    }

    /// Allocates an uninitialised object. `gfp` decides what a refill may
    /// do: with `NO_LOCKS` the node lock is only trylocked and a new slab
    /// comes from the per-CPU page lists only; with `KERNEL` the caller may
    /// sleep (the validator is told). Under PREEMPT_RT, `NO_LOCKS` refuses
    /// hardirq (signal handler) and NMI context with
    /// [`AllocError::Context`], as the page allocator's `NO_LOCKS` does: the
    /// cache's locks sleep there, and even a trylock's unlock may wake a
    /// sleeper, which is not async-signal-safe.
    #[track_caller]
    #[inline]
    pub fn alloc_uninit(&self, gfp: Gfp) -> Result<NonNull<MaybeUninit<T>>, AllocError> {
        if gfp.may_sleep() {
            self.pages.domain().might_sleep();
        }
        if gfp.contains(Gfp::NO_LOCKS) && self.pages.sleeping_locks_forbidden() {
            return Err(AllocError::Context);
        }
        let (_, cpu) = self.cpu.current();
        let cached = match cpu.try_lock() {
            Some(mut cc) if cc.len > 0 => {
                cc.len -= 1;
                bump_locked(&self.counters.cpu_allocs);
                Some(cc.objs[cc.len])
            }
            Some(_) => None,
            None => {
                self.counters.trylock_failures.fetch_add(1, Relaxed);
                None
            }
        };
        let obj = match cached {
            Some(obj) => obj,
            None => self.alloc_slow(gfp)?,
        };
        // Poisoned while free (see `asan`): accessible while allocated.
        crate::asan::unpoison(obj, core::mem::size_of::<T>());
        if self.checks {
            let (hdr, i) = self.slab_of_trusted(obj);
            // SAFETY: `hdr` is the header of a live slab of this cache: the
            // object came from one of its slabs and the slab cannot be
            // freed while one of its objects is outside it (inuse > 0).
            let ok = layout::mark_allocated(unsafe { &*hdr }, i);
            assert!(ok, "slab {}: object {obj:p} handed out twice", self.name);
        }
        // SAFETY: slots are non-null addresses inside the arena.
        Ok(unsafe { NonNull::new_unchecked(obj.cast()) })
    }

    /// Drops the object and frees it (`kmem_cache_free`). Bad input per the
    /// cache's policy (see the type's documentation).
    ///
    /// # Safety
    /// `obj` must have come from this cache's `alloc`, hold an initialised
    /// `T`, and not be used after this call.
    #[track_caller]
    #[inline]
    #[doc(alias = "kmem_cache_free")]
    pub unsafe fn free(&self, obj: NonNull<T>) {
        // SAFETY: forwarded from the caller.
        if let Err(e) = unsafe { self.try_free(obj) } {
            self.bad_free(e);
        }
    }

    /// As [`free`](Self::free), but bad input is returned, not reported;
    /// nothing is dropped or freed then.
    ///
    /// # Safety
    /// As for [`free`](Self::free), except that a pointer this cache did not
    /// hand out, or already freed, is detected and refused rather than
    /// undefined behaviour provided it points into the page arena.
    pub unsafe fn try_free(&self, obj: NonNull<T>) -> Result<(), SlabError> {
        self.check_and_mark_free(obj)?;
        // A panicking destructor must not lose the object: it is marked
        // free already, so unless its slot goes back to the slab here the
        // slab (and its pages) could never be returned. Catch the panic,
        // give the slot back, then resume it.
        // SAFETY: the caller guarantees an initialised, unaliased `T`; we
        // won the free bit, so no other free of it runs.
        let panicked = unsafe { drop_catching(obj) };
        let obj = obj.as_ptr().cast::<u8>();
        // Before it is anyone's to take again.
        crate::asan::poison(obj, core::mem::size_of::<T>());
        self.free_slot(obj);
        if let Err(payload) = panicked {
            std::panic::resume_unwind(payload);
        }
        Ok(())
    }

    /// Puts a slot (dropped, marked free) back: on this CPU's cache, else
    /// in the slabs. In a signal handler (hardirq or NMI context) it never
    /// waits for a lock, as `free_pages_nolock`: trylocks only, and the
    /// lock-free deferred list when they fail; under PREEMPT_RT there it
    /// touches no lock at all (the locks sleep, and even a trylock's unlock
    /// may wake a sleeper) and defers at once.
    #[inline]
    fn free_slot(&self, obj: *mut u8) {
        if self.pages.sleeping_locks_forbidden() {
            self.defer(obj);
            return;
        }
        let mode = if never_block() {
            Mode::Try
        } else {
            Mode::Block
        };
        let (_, cpu) = self.cpu.current();
        match cpu.try_lock() {
            Some(mut cc) => {
                if cc.len == CPU_CAPACITY {
                    if mode == Mode::Try {
                        // A flush could wait for the node lock.
                        drop(cc);
                        self.return_to_slabs(&mut [obj], Mode::Try);
                        return;
                    }
                    self.flush(&mut cc, CPU_BATCH);
                }
                let n = cc.len;
                cc.objs[n] = obj;
                cc.len = n + 1;
                bump_locked(&self.counters.cpu_frees);
            }
            None => {
                self.counters.trylock_failures.fetch_add(1, Relaxed);
                self.return_to_slabs(&mut [obj], mode);
            }
        }
    }

    /// Pushes a free slot on the deferred list. Lock-free, allocation-free,
    /// async-signal-safe.
    #[cold]
    fn defer(&self, obj: *mut u8) {
        // The link lives in the free slot's first word (slots are at least
        // a pointer, pointer-aligned: see `Layout::new`).
        crate::asan::unpoison(obj, core::mem::size_of::<*mut u8>());
        let link = obj.cast::<*mut u8>();
        let mut head = self.deferred.load(Relaxed);
        loop {
            // SAFETY: the slot is free and ours alone until the
            // compare-exchange below publishes it; it is big and aligned
            // enough for a pointer.
            unsafe { link.write(head) };
            // Release: the drainer's Acquire swap sees the link written.
            match self
                .deferred
                .compare_exchange_weak(head, obj, Release, Relaxed)
            {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
        self.counters.deferred_frees.fetch_add(1, Relaxed);
    }

    /// Gives every deferred slot back to its slab, with the node lock held
    /// (`node` is its guard's data); slabs that become empty are chained on
    /// `empty`.
    fn drain_deferred_locked(&self, node: &mut Node, empty: &mut *mut SlabHeader) {
        // Acquire (here and in the swap): pairs with the pushes' Release,
        // making each slot's link visible.
        if self.deferred.load(Acquire).is_null() {
            return;
        }
        let mut p = self.deferred.swap(ptr::null_mut(), Acquire);
        while !p.is_null() {
            // SAFETY: `p` was published by `defer` with its link in its
            // first word; the swap made the chain ours alone.
            let next = unsafe { p.cast::<*mut u8>().read() };
            crate::asan::poison(p, core::mem::size_of::<*mut u8>());
            self.return_locked(node, p, empty);
            p = next;
        }
    }

    /// Drops and frees many objects at once (`kmem_cache_free_bulk`):
    /// sorts `objs` in place, which groups them by slab, and returns each
    /// slab's group under one node-lock acquisition. For a `T` without drop
    /// glue the objects' memory is never read or written. Bad pointers are
    /// reported per the cache's policy and skipped.
    ///
    /// # Safety
    /// As for [`free`](Self::free), for every pointer.
    #[track_caller]
    #[doc(alias = "kmem_cache_free_bulk")]
    ///
    /// # Panics
    /// If destructors panic, every object is still freed (the others
    /// dropped, all returned to their slabs) and then the first panic is
    /// resumed.
    pub unsafe fn free_bulk(&self, objs: &mut [NonNull<T>]) {
        let mut first_panic = None;
        let drop_one = |obj: NonNull<T>| {
            // SAFETY: as in `try_free`: given once, after its free was
            // checked and marked.
            if let Err(payload) = unsafe { drop_catching(obj) } {
                match first_panic {
                    None => first_panic = Some(payload),
                    // Only the first is resumed; dropping a later one may
                    // panic too, which must not cut the loop short.
                    Some(_) => crate::unwind::drop_panic_payload(payload),
                }
            }
        };
        // SAFETY: forwarded from the caller; `drop_one` drops each object
        // in place, once.
        let bad = unsafe { self.free_bulk_with(objs, drop_one) };
        match (first_panic, bad) {
            // The destructor's panic is the one resumed, as documented; the
            // bad free is counted and logged, not raised on top of it.
            (Some(payload), bad) => {
                if let Some(e) = bad {
                    self.note_bad_free(e);
                }
                std::panic::resume_unwind(payload);
            }
            (None, Some(e)) => self.bad_free(e),
            (None, None) => {}
        }
    }

    /// [`free_bulk`](Self::free_bulk), dropping each object (after its
    /// free is checked and marked) with `drop_one`, which must drop it in
    /// place and may catch a panic of its destructor: `kfree_rcu` does, so
    /// that one panicking destructor neither stops the others nor leaks
    /// their memory.
    ///
    /// Returns the first bad pointer's error (the others are counted), for
    /// the caller to report once every good object is back: reporting
    /// panics in debug builds, which must not cut a bulk free short or
    /// land on top of a destructor's panic.
    ///
    /// # Safety
    /// As for [`free`](Self::free), for every pointer; `drop_one` must drop
    /// the object it is given, once, and not use it afterwards.
    #[track_caller]
    #[must_use = "a bad free must be reported"]
    pub(crate) unsafe fn free_bulk_with(
        &self,
        objs: &mut [NonNull<T>],
        mut drop_one: impl FnMut(NonNull<T>),
    ) -> Option<SlabError> {
        let mut kept = 0;
        // A bad pointer is reported once the good ones are back in their
        // slabs: the report panics in debug builds, and the objects already
        // marked free and dropped would otherwise never be returned.
        let mut first_bad = None;
        for i in 0..objs.len() {
            let obj = objs[i];
            match self.check_and_mark_free(obj) {
                Ok(()) => {
                    drop_one(obj);
                    crate::asan::poison(obj.as_ptr().cast(), core::mem::size_of::<T>());
                    objs[kept] = obj;
                    kept += 1;
                }
                Err(e) => match first_bad {
                    None => first_bad = Some(e),
                    Some(_) => {
                        self.counters.bad_frees.fetch_add(1, Relaxed);
                    }
                },
            }
        }
        let objs = &mut objs[..kept];
        objs.sort_unstable();
        // SAFETY: `NonNull<T>` and `*mut u8` have the same layout.
        let raw = unsafe { &mut *(ptr::from_mut(objs) as *mut [*mut u8]) };
        let mode = if never_block() {
            Mode::Try
        } else {
            Mode::Block
        };
        self.return_to_slabs(raw, mode);
        self.counters.bulk_frees.fetch_add(1, Relaxed);
        first_bad
    }

    /// Returns every CPU's cached objects to the slabs, and so
    /// empty slabs to the page allocator (`kmem_cache_shrink`). Returns the
    /// objects moved.
    #[doc(alias = "kmem_cache_shrink")]
    pub fn shrink(&self) -> usize {
        let mut moved = 0;
        for (_, cpu) in self.cpu.iter() {
            let mut cc = cpu.lock();
            moved += cc.len;
            let n = cc.len;
            self.flush(&mut cc, n);
        }
        // Frees deferred from signal handlers.
        self.return_to_slabs(&mut [], Mode::Block);
        moved
    }

    /// A snapshot of the cache's statistics.
    pub fn stats(&self) -> SlabStats {
        let c = &self.counters;
        let node = self.node.lock();
        SlabStats {
            cpu_allocs: c.cpu_allocs.load(Relaxed),
            cpu_frees: c.cpu_frees.load(Relaxed),
            refills: c.refills.load(Relaxed),
            flushes: c.flushes.load(Relaxed),
            slabs_allocated: c.slabs_allocated.load(Relaxed),
            slabs_freed: c.slabs_freed.load(Relaxed),
            trylock_failures: c.trylock_failures.load(Relaxed),
            bulk_frees: c.bulk_frees.load(Relaxed),
            bad_frees: c.bad_frees.load(Relaxed),
            deferred_frees: c.deferred_frees.load(Relaxed),
            slabs: node.nr_slabs,
            partial_slabs: node.nr_partial,
        }
    }

    // ------------------------------------------------------------------

    /// The slab header and slot of an object this cache handed out (no
    /// checks: for the allocation path's own objects).
    #[inline]
    fn slab_of_trusted(&self, obj: *mut u8) -> (*mut SlabHeader, usize) {
        let base = self.pages.block_base(obj as usize, self.layout.order);
        let i = (obj as usize - base.as_ptr() as usize - self.layout.first) / self.layout.stride;
        (base.as_ptr().cast(), i)
    }

    /// The magic number this cache's slabs carry.
    pub(crate) fn magic(&self) -> u64 {
        self.magic
    }

    /// The magic of the slab holding `obj`, an object of some cache of
    /// `T`, read from the slab's header. The arena is aligned to its
    /// largest block, so a slab starts at `obj` rounded down to the slab
    /// size, which depends on `T` alone.
    ///
    /// # Safety
    /// `obj` must point into an allocated slab of a `SlabCache<T>`.
    pub(crate) unsafe fn slab_magic_of(obj: *const u8) -> u64 {
        let layout = Layout::new(core::mem::size_of::<T>(), core::mem::align_of::<T>())
            .expect("a cache of T exists, so its layout does");
        let base = obj as usize & !((crate::page::PAGE_SIZE << layout.order) - 1);
        // SAFETY: by the caller's contract `base` is the start of an
        // allocated slab, whose header begins with the magic.
        unsafe { (*(base as *const SlabHeader)).magic.load(Acquire) }
    }

    /// The slab header and slot of `obj`, checked: inside an allocated
    /// block of this cache's slab order, whose header has this cache's
    /// magic, at a slot start.
    fn check(&self, obj: *mut u8) -> Result<(*mut SlabHeader, usize), SlabError> {
        let addr = obj as usize;
        let base = self
            .pages
            .allocated_block(addr, self.layout.order)
            .ok_or(SlabError::NotFromCache { addr })?;
        let hdr = base.as_ptr().cast::<SlabHeader>();
        // SAFETY: the block is allocated with the slab order; whoever owns
        // it, its first 8 bytes are mapped and aligned, and reading them
        // through an atomic is how every slab's magic is read.
        let magic = unsafe { (*hdr).magic.load(Acquire) };
        if magic != self.magic {
            return Err(SlabError::NotFromCache { addr });
        }
        let i = self
            .layout
            .index_of(base, addr)
            .ok_or(SlabError::NotAnObject { addr })?;
        Ok((hdr, i))
    }

    /// Checks a free (see [`check`](Self::check)) and, with consistency
    /// checks on, wins the object's free bit or reports a double free.
    #[inline]
    fn check_and_mark_free(&self, obj: NonNull<T>) -> Result<(), SlabError> {
        let (hdr, i) = self.check(obj.as_ptr().cast())?;
        // SAFETY: checked: a slot of a live slab of this cache.
        if self.checks && !layout::mark_free(unsafe { &*hdr }, i) {
            return Err(SlabError::DoubleFree {
                addr: obj.as_ptr() as usize,
            });
        }
        Ok(())
    }

    #[cold]
    #[track_caller]
    fn bad_free(&self, e: SlabError) {
        if cfg!(debug_assertions) && !never_block() {
            self.counters.bad_frees.fetch_add(1, Relaxed);
            panic!("slab cache {}: {e}", self.name);
        }
        self.note_bad_free(e);
    }

    /// Counts a bad free and logs it; never panics (for callers that must
    /// not unwind: a bulk free already resuming a destructor's panic, and
    /// `kfree_rcu` reclaim).
    pub(crate) fn note_bad_free(&self, e: SlabError) {
        self.counters.bad_frees.fetch_add(1, Relaxed);
        if never_block() {
            // In a signal handler `tracing` may allocate and lock: counted
            // only (in `bad_frees`), as the page allocator does.
            return;
        }
        tracing::error!(cache = self.name, "slab cache {}: {e}", self.name);
    }

    /// Takes a batch from the slabs (allocating a slab if need be) with no
    /// per-CPU lock held, since a new slab may need a sleeping allocation;
    /// keeps one object and puts the rest in this CPU's cache, or back in
    /// the slabs if the cache is busy or full.
    #[cold]
    fn alloc_slow(&self, gfp: Gfp) -> Result<*mut u8, AllocError> {
        let mut batch = [ptr::null_mut(); CPU_BATCH];
        let n = self.take_from_slabs(&mut batch, gfp)?;
        let (obj, rest) = (batch[n - 1], &mut batch[..n - 1]);
        let mut kept = 0;
        if let Some(mut cc) = self.cpu.current().1.try_lock() {
            kept = rest.len().min(CPU_CAPACITY - cc.len);
            let len = cc.len;
            cc.objs[len..len + kept].copy_from_slice(&rest[..kept]);
            cc.len = len + kept;
            bump_locked(&self.counters.refills);
        }
        if kept < rest.len() {
            // With `NO_LOCKS`, trylock only: the surplus is deferred if the
            // node lock is busy (it may be held by the thread a signal
            // handler interrupted).
            let mode = if gfp.contains(Gfp::NO_LOCKS) {
                Mode::Try
            } else {
                Mode::Block
            };
            self.return_to_slabs(&mut rest[kept..], mode);
        }
        Ok(obj)
    }

    /// Fills `out` from the partial slabs (at least one object), allocating
    /// a slab when none has objects. Returns how many were taken.
    fn take_from_slabs(&self, out: &mut [*mut u8], gfp: Gfp) -> Result<usize, AllocError> {
        let mode = if gfp.contains(Gfp::NO_LOCKS) {
            Mode::Try
        } else {
            Mode::Block
        };
        loop {
            let mut empty = ptr::null_mut();
            let n = {
                let mut node = self.lock_node(mode).ok_or(AllocError::Contended)?;
                self.drain_deferred_locked(&mut node, &mut empty);
                self.take_locked(&mut node, out)
            };
            self.free_slabs(empty, mode);
            if n > 0 {
                return Ok(n);
            }
            let slab = self.new_slab(gfp)?;
            let Some(mut node) = self.lock_node(mode) else {
                // The slab was never on a list nor handed out: give it
                // straight back rather than lose it.
                // SAFETY: fresh from `new_slab`, on no list, no object of
                // it handed out; `next` chains it alone.
                unsafe { (*slab).next = ptr::null_mut() };
                self.free_slabs(slab, Mode::Try);
                return Err(AllocError::Contended);
            };
            node.nr_slabs += 1;
            // SAFETY: a fresh slab, owned by this cache, on no list.
            unsafe { Self::partial_add(&mut node, slab) };
        }
    }

    /// The node lock: a real lock, except in [`Mode::Try`], which only
    /// trylocks (and can be made to fail: [`FaultSites::SLAB_NODE_TRYLOCK`]).
    fn lock_node(&self, mode: Mode) -> Option<crate::lock::SpinLockGuard<'_, Node>> {
        match mode {
            Mode::Block => Some(self.node.lock()),
            Mode::Try
                if self
                    .pages
                    .faults()
                    .should_fail(FaultSites::SLAB_NODE_TRYLOCK) =>
            {
                None
            }
            Mode::Try => self.node.try_lock(),
        }
    }

    fn new_slab(&self, gfp: Gfp) -> Result<*mut SlabHeader, AllocError> {
        let page = self.pages.alloc_pages(gfp - Gfp::ZERO, self.layout.order)?;
        self.counters.slabs_allocated.fetch_add(1, Relaxed);
        // The slab keeps the block by address; `return_to_slabs` frees it.
        let base = page.into_raw();
        // SAFETY: a block of the slab order just allocated for us; pages are
        // page-aligned, more than a header needs.
        Ok(unsafe { layout::init_header(base, &self.layout, self.magic) })
    }

    /// Takes available objects from partial slabs into `out`.
    fn take_locked(&self, node: &mut Node, out: &mut [*mut u8]) -> usize {
        let mut n = 0;
        while n < out.len() && !node.partial.is_null() {
            let hdr = node.partial;
            // SAFETY: slabs on the partial list are live and this cache's;
            // their non-atomic fields are ours under the node lock.
            let h = unsafe { &mut *hdr };
            for w in 0..h.avail.len() {
                while h.avail[w] != 0 && n < out.len() {
                    let b = h.avail[w].trailing_zeros() as usize;
                    h.avail[w] &= !(1u64 << b);
                    out[n] = self.layout.slot(hdr, w * 64 + b).as_ptr();
                    n += 1;
                    h.inuse += 1;
                }
            }
            if h.avail.iter().all(|&w| w == 0) {
                // SAFETY: `hdr` is on the partial list.
                unsafe { Self::partial_del(node, hdr) };
            }
        }
        n
    }

    /// Flushes `count` objects from the top of a per-CPU cache.
    fn flush(&self, cc: &mut CpuCache, count: usize) {
        let count = count.min(cc.len);
        let start = cc.len - count;
        self.return_to_slabs(&mut cc.objs[start..cc.len], Mode::Block);
        cc.len = start;
        self.counters.flushes.fetch_add(1, Relaxed);
    }

    /// Gives objects (already marked free) back to their slabs under one
    /// node-lock acquisition, with the deferred ones; slabs that become
    /// empty go back to the page allocator after the lock is dropped. In
    /// [`Mode::Try`], if the trylock fails the objects are deferred.
    fn return_to_slabs(&self, objs: &mut [*mut u8], mode: Mode) {
        let mut empty: *mut SlabHeader = ptr::null_mut();
        {
            // Under PREEMPT_RT in a signal handler not even a trylock.
            let locked = if mode == Mode::Try && self.pages.sleeping_locks_forbidden() {
                None
            } else {
                self.lock_node(mode)
            };
            let Some(mut node) = locked else {
                for &obj in objs.iter() {
                    self.defer(obj);
                }
                return;
            };
            self.drain_deferred_locked(&mut node, &mut empty);
            for &obj in objs.iter() {
                self.return_locked(&mut node, obj, &mut empty);
            }
        }
        self.free_slabs(empty, mode);
    }

    /// Gives one object back to its slab, with the node lock held; chains
    /// the slab on `empty` if it becomes empty.
    fn return_locked(&self, node: &mut Node, obj: *mut u8, empty: &mut *mut SlabHeader) {
        let (hdr, i) = self.slab_of_trusted(obj);
        // SAFETY: the object is this cache's and outside its slab, so the
        // slab is live (inuse > 0); its plain fields are ours under the
        // node lock.
        let h = unsafe { &mut *hdr };
        let (w, m) = layout::bit(i);
        h.avail[w] |= m;
        h.inuse -= 1;
        if h.inuse == 0 {
            if h.on_partial {
                // SAFETY: it is on the partial list.
                unsafe { Self::partial_del(node, hdr) };
            }
            node.nr_slabs -= 1;
            h.next = *empty;
            *empty = hdr;
        } else if !h.on_partial {
            // SAFETY: live, this cache's, on no list.
            unsafe { Self::partial_add(node, hdr) };
        }
    }

    /// Gives a chain of empty slabs (linked by `next`, off every list) back
    /// to the page allocator: in [`Mode::Try`] with `free_pages_nolock`,
    /// which never waits for the zone lock.
    fn free_slabs(&self, mut empty: *mut SlabHeader, mode: Mode) {
        while !empty.is_null() {
            // SAFETY: an empty slab taken off every list: ours alone.
            let next = unsafe { (*empty).next };
            // SAFETY: as above; clearing the magic makes stale frees into
            // this block fail the cache check once the pages are reused.
            unsafe { (*empty).magic.store(0, Release) };
            // SAFETY: slabs start on a block of the slab order allocated
            // from this page allocator.
            let base = unsafe { NonNull::new_unchecked(empty.cast::<u8>()) };
            // SAFETY: the slab's block, of the slab order, is this cache's
            // (taken with `into_raw` in `new_slab`); empty and off every
            // list, nothing refers to it any more.
            unsafe {
                match mode {
                    Mode::Block => self.pages.free_pages(base, self.layout.order),
                    Mode::Try => self.pages.free_pages_nolock(base, self.layout.order),
                }
            }
            self.counters.slabs_freed.fetch_add(1, Relaxed);
            empty = next;
        }
    }

    /// # Safety
    /// `hdr` must be a live slab of this cache on no list, with the node
    /// lock held (`node` is its guard's data).
    unsafe fn partial_add(node: &mut Node, hdr: *mut SlabHeader) {
        // SAFETY: per the contract.
        let h = unsafe { &mut *hdr };
        h.prev = ptr::null_mut();
        h.next = node.partial;
        if !node.partial.is_null() {
            // SAFETY: the old head is a live slab on the list.
            unsafe { (*node.partial).prev = hdr };
        }
        node.partial = hdr;
        h.on_partial = true;
        node.nr_partial += 1;
    }

    /// # Safety
    /// `hdr` must be on `node`'s partial list, with the node lock held.
    unsafe fn partial_del(node: &mut Node, hdr: *mut SlabHeader) {
        // SAFETY: per the contract; its neighbours are on the list too.
        unsafe {
            let h = &mut *hdr;
            if h.prev.is_null() {
                node.partial = h.next;
            } else {
                (*h.prev).next = h.next;
            }
            if !h.next.is_null() {
                (*h.next).prev = h.prev;
            }
            h.on_partial = false;
        }
        node.nr_partial -= 1;
    }
}

impl<T> Drop for SlabCache<T> {
    /// Returns cached objects, and so empty slabs, to the page allocator.
    /// Slabs with objects still allocated stay allocated (leaked, with a
    /// warning), as `kmem_cache_destroy` leaves them.
    #[doc(alias = "kmem_cache_destroy")]
    fn drop(&mut self) {
        self.shrink();
        let slabs = self.node.lock().nr_slabs;
        if slabs > 0 {
            tracing::warn!(
                cache = self.name,
                slabs,
                "slab cache dropped with objects still allocated"
            );
        }
    }
}

/// Drops the `T` at `obj` in place, catching a panic of its destructor
/// (returned, for the caller to resume once the memory is back).
///
/// # Safety
/// `obj` must hold an initialised `T` that nothing uses afterwards.
#[inline]
unsafe fn drop_catching<T>(obj: NonNull<T>) -> std::thread::Result<()> {
    if !core::mem::needs_drop::<T>() {
        return Ok(());
    }
    // SAFETY: per the contract; after a panic the value counts as dropped
    // (as `drop_in_place` leaves it), and it is never touched again.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
        ptr::drop_in_place(obj.as_ptr())
    }))
}

#[inline(always)]
fn bump_locked(c: &AtomicU64) {
    c.store(c.load(Relaxed) + 1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Domain;
    use crate::page::{PageConfig, Watermarks};
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    /// A free in a signal handler whose per-CPU trylock fails must not wait
    /// for the node lock: the thread it interrupted may hold it (here
    /// another thread holds both, as long as the free has not returned, or
    /// 5 s). The object is deferred, and the next task-context node-lock
    /// holder gives it back.
    #[test]
    fn hardirq_free_never_waits_for_the_node_lock() {
        let d = Domain::builder().cpus(1).build();
        let pa = PageAllocator::new(
            &d,
            PageConfig {
                arena_size: 4 << 20,
                watermarks: Some(Watermarks::NONE),
                kswapd: false,
                ..PageConfig::default()
            },
        )
        .unwrap();
        let cache = SlabCache::<u64>::new(&pa, "hardirq").unwrap();
        let obj = cache.alloc(Gfp::KERNEL, 5).unwrap();
        let held = AtomicBool::new(false);
        let done = AtomicBool::new(false);
        let waited = std::thread::scope(|s| {
            s.spawn(|| {
                let _cpu = cache.cpu.get(0).lock();
                let _node = cache.node.lock();
                held.store(true, SeqCst);
                let t = Instant::now();
                while !done.load(SeqCst) && t.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            while !held.load(SeqCst) {
                std::thread::yield_now();
            }
            let t = Instant::now();
            {
                let _hardirq = crate::context::enter_hardirq();
                // SAFETY: allocated above, freed once, not used again.
                unsafe { cache.free(obj) };
            }
            let waited = t.elapsed();
            done.store(true, SeqCst);
            waited
        });
        assert!(
            waited < Duration::from_secs(2),
            "the handler's free waited {waited:?} for the node lock"
        );
        assert_eq!(cache.stats().deferred_frees, 1);
        cache.shrink();
        assert_eq!(cache.stats().slabs, 0);
    }
}
