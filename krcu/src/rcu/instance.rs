//! The instance: [`Rcu`], its settings and counters, `rcu_barrier`, and
//! the process-wide default with its free functions.

use super::callback::{self, HasRcuHead, PendingList, RcuCallbackFn, RcuHead, SegCbList};
use super::gp::{GpEngine, WaitMode};
use super::membarrier;
use super::reader::{self, GlobalReadGuard, GlobalReaderHandle, ReadGuard, ReaderHandle, Readers};
use super::seq::{self, GpCookie};
use super::stall::StallReport;
use super::worker::{self, Wake};
use crate::domain::Domain;
use crate::fork;
use crate::percpu::PerCpu;
use core::ptr::NonNull;
use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Settings of an [`Rcu`] instance.
#[derive(Debug, Clone)]
pub struct RcuConfig {
    stall_timeout: Duration,
    pub(super) batch_limit: usize,
    pub(super) gp_interval: Duration,
    force_fallback_fences: bool,
    worker_name: String,
}

impl Default for RcuConfig {
    fn default() -> Self {
        RcuConfig {
            stall_timeout: Duration::from_secs(21),
            batch_limit: 1000,
            gp_interval: Duration::from_millis(1),
            force_fallback_fences: false,
            worker_name: "krcu-rcu-gp".to_owned(),
        }
    }
}

impl RcuConfig {
    /// How long a grace period may wait for a reader before a stall warning
    /// names it (default 21 s, the kernel's `CONFIG_RCU_CPU_STALL_TIMEOUT`).
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// How many ready callbacks per CPU the worker invokes in one softirq
    /// batch before it looks for new work (default 1000; the kernel's
    /// `blimit`).
    pub fn batch_limit(mut self, limit: usize) -> Self {
        self.batch_limit = limit.max(1);
        self
    }

    /// The least time between the end of one grace period the worker runs
    /// (for callbacks and pollers) and the start of its next, so that a
    /// stream of callbacks is batched (default 1 ms; zero runs them back to
    /// back). `synchronize` is not affected.
    pub fn gp_interval(mut self, interval: Duration) -> Self {
        self.gp_interval = interval;
        self
    }

    /// Use full fences in readers and writer even where membarrier works
    /// (default off; for tests and comparisons).
    pub fn force_fallback_fences(mut self, on: bool) -> Self {
        self.force_fallback_fences = on;
        self
    }

    /// The worker thread's name (default `krcu-rcu-gp`).
    pub fn worker_name(mut self, name: impl Into<String>) -> Self {
        self.worker_name = name.into();
        self
    }
}

/// Counters of an instance ([`Rcu::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RcuStats {
    /// The grace-period sequence number now (`rcu_state.gp_seq`).
    pub gp_seq: u64,
    /// Grace periods run by the worker and by `synchronize`.
    pub grace_periods: u64,
    /// Grace periods run by `synchronize_expedited`.
    pub expedited_grace_periods: u64,
    /// Callbacks the worker has taken from the pending lists.
    pub callbacks_taken: u64,
    /// Callbacks invoked.
    pub callbacks_invoked: u64,
    /// Callbacks that panicked (caught; the worker goes on).
    pub callback_panics: u64,
    /// `rcu_barrier` calls that ran a barrier (not counting shared ones).
    pub barriers: u64,
    /// Stall warnings issued.
    pub stalls: u64,
    /// Whether readers rely on membarrier (false: full fences).
    pub membarrier: bool,
    /// Threads registered as readers now.
    pub readers: usize,
    /// Read-side sections left open by threads that exited (leaked
    /// guards). Each stalls this instance's grace periods until the
    /// instance is dropped: a leaked guard's references may still be in
    /// use, so its section is never ended early.
    pub abandoned_sections: usize,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) taken: AtomicU64,
    pub(super) invoked: AtomicU64,
    pub(super) panics: AtomicU64,
    pub(super) barriers: AtomicU64,
}

/// The barrier's callback head, one per CPU.
#[repr(C)]
struct BarrierHead {
    head: RcuHead,
    barrier: *const Barrier,
}

// SAFETY: `barrier` points into the Arc that owns the head; it is only read
// (to reach the Barrier's atomics and lock), from any thread.
unsafe impl Send for BarrierHead {}
// SAFETY: as for Send; `head` is Sync.
unsafe impl Sync for BarrierHead {}

/// `rcu_barrier`'s state (`rcu_state.barrier_*`).
struct Barrier {
    /// `barrier_mutex`.
    mutex: Mutex<()>,
    /// `barrier_sequence`, an rcu_seq.
    seq: AtomicU64,
    /// `barrier_cpu_count`.
    remaining: AtomicUsize,
    done: Mutex<()>,
    cv: Condvar,
    heads: PerCpu<BarrierHead>,
}

/// The barrier callback (`rcu_barrier_callback`).
///
/// # Safety
/// `head` must be the head of a `BarrierHead` of a live `Barrier`.
unsafe fn barrier_callback(head: NonNull<RcuHead>) {
    // SAFETY: BarrierHead is repr(C) with the head first, and the caller
    // guarantees it is one; its Barrier lives in the same Arc.
    let barrier = unsafe { &*(*head.as_ptr().cast::<BarrierHead>()).barrier };
    if barrier.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        let _g = barrier.done.lock().unwrap_or_else(|e| e.into_inner());
        barrier.cv.notify_all();
    }
}

/// State shared by an instance's handle and its worker.
pub(super) struct Shared {
    pub(super) domain: Domain,
    pub(super) config: RcuConfig,
    pub(super) gp: GpEngine,
    pub(super) pending: PerCpu<PendingList>,
    pub(super) wake: Wake,
    pub(super) stop: AtomicBool,
    barrier: Arc<Barrier>,
    pub(super) stats: Counters,
    /// The worker thread; replaced in the child of a `fork`.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The worker's callback lists while it is parked for a `fork`: the
    /// parent's worker takes them back, the child's new worker takes them
    /// over.
    pub(super) handoff: Mutex<Option<Vec<SegCbList>>>,
}

impl Shared {
    fn on_worker(&self) -> bool {
        worker::is_worker_of(self.gp.readers.id)
    }

    /// Starts the worker thread.
    fn spawn_worker(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let s = self.clone();
        let token = fork::WorkerToken::new();
        std::thread::Builder::new()
            .name(self.config.worker_name.clone())
            .spawn(move || token.run(|| worker::run(s)))
    }
}

impl fork::Participant for Shared {
    fn lock_before_park(self: Arc<Self>, held: &mut Vec<Box<dyn Any>>) {
        // A barrier in progress needs the worker: let it end first.
        held.push(fork::hold(self, |s| {
            s.barrier.mutex.lock().unwrap_or_else(|e| e.into_inner())
        }));
    }

    fn kick(&self) {
        self.wake.kick();
    }

    fn caller_is_reading(&self) -> bool {
        self.gp.readers.current_thread_reading()
    }

    fn lock_after_park(self: Arc<Self>, phase: usize, held: &mut Vec<Box<dyn Any>>) {
        if phase == 0 {
            // A grace period in progress (a synchronize) ends first; then
            // no thread registers or unregisters a reader across the fork.
            held.push(fork::hold(self.clone(), |s| s.gp.lock_for_fork()));
            held.push(fork::hold(self.clone(), |s| s.gp.readers.lock_for_fork()));
            // The worker's handle (a drop takes it, briefly): the child's
            // handler takes it again.
            held.push(fork::hold(self, |s| {
                s.thread.lock().unwrap_or_else(|e| e.into_inner())
            }));
        }
    }

    fn restart_in_child(self: Arc<Self>) {
        self.gp.readers.forget_other_threads();
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        // The old worker does not exist here: its handle can never be
        // joined (that would wait forever).
        core::mem::forget(thread.take());
        // Restarted even when the instance is being dropped (by a thread
        // that is gone here, or by a callback of the worker, which returned
        // leaving the worker to drain): the new worker takes over the
        // handed-off callbacks, runs every one queued and exits. Nobody
        // joins it then (the dropping thread has taken, or will never take,
        // the handle): it is detached, and keeps the shared state alive.
        match self.spawn_worker() {
            Ok(h) if self.stop.load(Ordering::SeqCst) => drop(h),
            Ok(h) => *thread = Some(h),
            Err(e) => tracing::error!("krcu: cannot restart the RCU worker after fork: {e}"),
        }
    }
}

/// An RCU instance: its readers' slots, its grace-period engine, its
/// callback lists and the worker thread that runs them.
///
/// `Send + Sync`; share it by reference or in an `Arc`. Dropping it stops
/// the worker after every queued callback has run.
pub struct Rcu {
    shared: Arc<Shared>,
}

impl core::fmt::Debug for Rcu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rcu")
            .field("id", &self.shared.gp.readers.id)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Rcu {
    /// Builds an instance in `domain` and starts its worker thread.
    ///
    /// # Panics
    /// If the worker thread cannot be spawned.
    pub fn new(domain: &Domain, config: RcuConfig) -> Rcu {
        let use_membarrier = !config.force_fallback_fences && membarrier::available();
        let readers = Readers::new(!use_membarrier);
        let cpus = domain.cpus();
        let barrier = Arc::new_cyclic(|me: &std::sync::Weak<Barrier>| Barrier {
            mutex: Mutex::new(()),
            seq: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            done: Mutex::new(()),
            cv: Condvar::new(),
            heads: PerCpu::new(cpus, |_| BarrierHead {
                head: RcuHead::new(),
                barrier: me.as_ptr(),
            }),
        });
        let shared = Arc::new(Shared {
            domain: domain.clone(),
            gp: GpEngine::new(readers, use_membarrier, config.stall_timeout),
            pending: PerCpu::new(cpus, |_| PendingList::new()),
            wake: Wake::new(),
            stop: AtomicBool::new(false),
            barrier,
            stats: Counters::default(),
            thread: Mutex::new(None),
            handoff: Mutex::new(None),
            config,
        });
        let worker = shared
            .spawn_worker()
            .expect("krcu: cannot spawn the RCU grace-period worker");
        *shared.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(worker);
        let weak: std::sync::Weak<dyn fork::Participant> = Arc::downgrade(&shared) as _;
        fork::register(weak);
        Rcu { shared }
    }

    /// The domain the instance runs in.
    pub fn domain(&self) -> &Domain {
        &self.shared.domain
    }

    /// The instance's settings.
    pub fn config(&self) -> &RcuConfig {
        &self.shared.config
    }

    /// The instance's unique id (never reused), which its guards carry.
    #[inline(always)]
    pub(crate) fn id(&self) -> u64 {
        self.shared.gp.readers.id
    }

    /// Registers the calling thread ahead of time (liburcu's
    /// `rcu_register_thread`): after this, neither [`ReaderHandle::read_lock`]
    /// nor [`Rcu::read_lock`] on this thread allocates. Dropping the handle
    /// (the last one, if several) unregisters the thread; so does its exit.
    pub fn register_thread(&self) -> ReaderHandle<'_> {
        ReaderHandle::new(&self.shared.gp.readers)
    }

    /// Enters a read-side critical section (`rcu_read_lock`), ended by
    /// dropping the guard. Wait-free and nestable; registers the thread on
    /// first use (which allocates: register ahead with
    /// [`register_thread`](Self::register_thread) where that matters).
    ///
    /// The slot is found through a one-entry thread-local cache of the last
    /// instance the thread read under; a miss (the thread alternates
    /// instances) searches the thread's registrations. A signal handler may
    /// read only on a thread registered with the instance, and should not
    /// rely on the miss path, which borrows the thread's registration list
    /// (use a thread that reads under one instance, or hold a
    /// [`ReaderHandle`] and read through it in the thread's own code).
    #[inline]
    #[doc(alias = "rcu_read_lock")]
    #[doc(alias = "rcu_read_unlock")]
    pub fn read_lock(&self) -> ReadGuard<'_> {
        let readers = &self.shared.gp.readers;
        reader::lock(readers, readers.current_slot())
    }

    /// Whether the calling thread is inside a read-side section of this
    /// instance (`rcu_read_lock_held`).
    #[doc(alias = "rcu_read_lock_held")]
    pub fn is_reading(&self) -> bool {
        self.shared.gp.readers.current_thread_reading()
    }

    /// Declares a wait for a grace period: the validator's might-sleep
    /// check, then the self-deadlock check.
    #[track_caller]
    fn may_wait(&self, what: &str) {
        self.shared.domain.might_sleep();
        if self.is_reading() {
            panic!(
                "krcu: {what} called inside an RCU read-side critical section of the same \
                 instance: it would wait for itself forever"
            );
        }
    }

    /// Waits for a full grace period (`synchronize_rcu`): every read-side
    /// section that began before the call has ended when it returns.
    /// Concurrent callers share grace periods. Sleeps: see the module doc
    /// for what is reported, and when it panics.
    #[track_caller]
    #[doc(alias = "synchronize_rcu")]
    pub fn synchronize(&self) {
        self.may_wait("synchronize_rcu()");
        self.shared.gp.synchronize(WaitMode::Normal);
    }

    /// [`synchronize`](Self::synchronize), waiting for lingering readers
    /// by spinning before sleeping (`synchronize_rcu_expedited`). The memb
    /// flavour's grace periods are expedited anyway; this trades CPU time
    /// for latency while a reader is still inside its section.
    #[track_caller]
    #[doc(alias = "synchronize_rcu_expedited")]
    pub fn synchronize_expedited(&self) {
        self.may_wait("synchronize_rcu_expedited()");
        self.shared.gp.synchronize(WaitMode::Expedited);
    }

    /// A cookie for the first grace period that starts after this call
    /// (`get_state_synchronize_rcu`); does not start one.
    #[inline]
    #[doc(alias = "get_state_synchronize_rcu")]
    pub fn get_state(&self) -> GpCookie {
        self.shared.gp.snapshot()
    }

    /// [`get_state`](Self::get_state), and makes sure that grace period
    /// will run (the worker starts it) (`start_poll_synchronize_rcu`).
    /// Never blocks; a system call only when the worker sleeps.
    #[doc(alias = "start_poll_synchronize_rcu")]
    pub fn start_poll(&self) -> GpCookie {
        let c = self.get_state();
        if self.shared.gp.request(c) {
            self.shared.wake.kick();
        }
        c
    }

    /// Whether a full grace period has elapsed since `cookie` was taken
    /// (`poll_state_synchronize_rcu`). Never blocks. A cookie from another
    /// instance means nothing here.
    #[inline]
    #[doc(alias = "poll_state_synchronize_rcu")]
    pub fn poll_state(&self, cookie: GpCookie) -> bool {
        self.shared.gp.poll(cookie)
    }

    /// Waits for a full grace period since `cookie` was taken, at once if
    /// one has elapsed (`cond_synchronize_rcu`). Sleeps, as
    /// [`synchronize`](Self::synchronize).
    #[track_caller]
    #[doc(alias = "cond_synchronize_rcu")]
    pub fn cond_synchronize(&self, cookie: GpCookie) {
        self.may_wait("cond_synchronize_rcu()");
        self.shared.gp.drive_to(cookie, WaitMode::Normal);
    }

    /// Queues `func` to be called with `head` after a full grace period
    /// (`call_rcu`), in the worker's softirq context.
    ///
    /// Never blocks, never allocates; callable with a raw spinlock held and
    /// from a signal handler. The only system call it can make is the
    /// futex wake-up of a sleeping worker.
    ///
    /// # Safety
    /// `head` must point to an [`RcuHead`] that is not queued, and it must
    /// stay valid and unmoved until `func` has been called with it. `func`
    /// must be safe to call with `head` in the worker thread after the grace
    /// period (typically it frees the object embedding the head).
    #[inline]
    pub unsafe fn call_rcu(&self, head: NonNull<RcuHead>, func: RcuCallbackFn) {
        let (_, list) = self.shared.pending.current();
        // SAFETY: forwarded from the caller.
        unsafe { list.push(head, func) };
        self.shared.wake.kick();
    }

    /// Hands `obj` to RCU: after a full grace period the worker calls
    /// [`HasRcuHead::rcu_callback`] with it (by default: drops it). The
    /// safe form of [`call_rcu`](Self::call_rcu); the same guarantees
    /// (no allocation, no lock, signal-safe).
    #[inline]
    #[doc(alias = "call_rcu")]
    pub fn call_rcu_box<T: HasRcuHead>(&self, obj: Box<T>) {
        let raw = Box::into_raw(obj);
        // SAFETY: by HasRcuHead's contract the head lies RCU_HEAD_OFFSET
        // bytes into the object, inside the allocation.
        let head = unsafe { raw.byte_add(T::RCU_HEAD_OFFSET) }.cast::<RcuHead>();
        // SAFETY: the head belongs to a leaked Box (so it is valid, unmoved
        // and not queued: the Box was owned by the caller), and
        // box_callback::<T> reclaims exactly that Box.
        unsafe {
            self.call_rcu(NonNull::new_unchecked(head), callback::box_callback::<T>);
        }
    }

    /// Waits until every callback queued (on any thread) before this call
    /// has run (`rcu_barrier`). Concurrent callers share barriers. Sleeps;
    /// panics inside a read-side section of this instance or on its worker
    /// thread (both would wait forever).
    #[track_caller]
    pub fn rcu_barrier(&self) {
        self.may_wait("rcu_barrier()");
        assert!(
            !self.shared.on_worker(),
            "krcu: rcu_barrier() called from an RCU callback: it would wait for itself forever"
        );
        // The global instance: callbacks parked before it was built are
        // queued first (see `adopt_early_for_barrier`).
        adopt_early_for_barrier(self);
        let b = &*self.shared.barrier;
        let snap = seq::seq_snap(b.seq.load(Ordering::Acquire));
        let _serial = b.mutex.lock().unwrap_or_else(|e| e.into_inner());
        if seq::seq_done(b.seq.load(Ordering::Acquire), snap) {
            return; // a barrier that began after our call has finished
        }
        let s = b.seq.load(Ordering::Relaxed);
        b.seq.store(seq::seq_start(s), Ordering::Relaxed);
        b.remaining.store(b.heads.cpus(), Ordering::Relaxed);
        for (cpu, h) in b.heads.iter() {
            // SAFETY: the barrier heads are queued only here, under the
            // barrier mutex, after the previous barrier saw every one run
            // (remaining reached zero); they live as long as the Arc<Barrier>
            // the worker's Shared holds; barrier_callback expects exactly
            // such a head.
            unsafe {
                self.shared
                    .pending
                    .get(cpu)
                    .push(NonNull::from(&h.head), barrier_callback);
            }
        }
        self.shared.wake.kick();
        let mut g = b.done.lock().unwrap_or_else(|e| e.into_inner());
        while b.remaining.load(Ordering::Acquire) != 0 {
            g = b.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        drop(g);
        b.seq
            .store(seq::seq_end(seq::seq_start(s)), Ordering::Release);
        self.shared.stats.barriers.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the calling thread is this instance's worker (in one of its
    /// callbacks): it must not wait for the worker.
    pub(crate) fn on_worker(&self) -> bool {
        self.shared.on_worker()
    }

    /// The instance is being torn down (see
    /// `Readers::begin_teardown`): its own drop, or the drop of the
    /// `Krcu` that owns it alone, once nothing borrows it.
    pub(crate) fn begin_teardown(&self) {
        self.shared.gp.readers.begin_teardown();
    }

    /// The instance's counters.
    pub fn stats(&self) -> RcuStats {
        let s = &self.shared;
        let (normal, expedited) = s.gp.completed();
        RcuStats {
            gp_seq: s.gp.seq(),
            grace_periods: normal,
            expedited_grace_periods: expedited,
            callbacks_taken: s.stats.taken.load(Ordering::Relaxed),
            callbacks_invoked: s.stats.invoked.load(Ordering::Relaxed),
            callback_panics: s.stats.panics.load(Ordering::Relaxed),
            barriers: s.stats.barriers.load(Ordering::Relaxed),
            stalls: s.gp.stalls.count(),
            membarrier: !s.gp.readers.full_fence,
            readers: s.gp.readers.registered(),
            abandoned_sections: s.gp.readers.abandoned(),
        }
    }

    /// The most recent stall warnings (up to 32), oldest first.
    pub fn stall_reports(&self) -> Vec<StallReport> {
        self.shared.gp.stalls.recent()
    }
}

impl Drop for Rcu {
    fn drop(&mut self) {
        // Nothing borrows the instance any more, so no reference loaded
        // under a leaked guard of it is left: its abandoned sections end
        // here, and the worker's last grace periods do not stall on them.
        self.begin_teardown();
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.kick();
        let worker = self
            .shared
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(w) = worker {
            if fork::on_worker_thread() {
                // Dropped on a krcu worker thread: by one of its own
                // callbacks (joining would wait for itself), or by a
                // callback, destructor or shrinker another worker runs,
                // which must never join a worker (a fork's prepare handler
                // may have parked that one, and waits for this one to
                // park). The worker is detached: it finishes the queue and
                // exits by itself, and its own Arc keeps the shared state
                // alive until then.
                drop(w);
                return;
            }
            if w.join().is_err() {
                tracing::error!("krcu: the RCU worker thread panicked");
            }
        }
    }
}

/// The process-wide instance: the global domain ([`Domain::global`]),
/// default settings, built on first use (one worker thread, nothing else).
///
/// It is the one RCU of the process-wide `kfree_rcu` instance too:
/// `krcu::Krcu::global().rcu()` is this very instance, so a reader entered
/// with [`read_lock`] holds off objects retired with `krcu::kfree_rcu` and
/// the other free functions, and the other way round. Using only this
/// module's functions never builds the `kfree_rcu` machinery or the page
/// allocator: those start on first use of a function that needs them.
pub fn global() -> &'static Rcu {
    global_arc()
}

/// The process-wide instance, once built.
static GLOBAL: OnceLock<Arc<Rcu>> = OnceLock::new();

/// Callbacks queued with [`call_rcu`] / [`call_rcu_box`] from hardirq
/// (signal handler) or NMI context before [`GLOBAL`] was built: building
/// it there would allocate, take locks, spawn a thread, and deadlock if the
/// handler interrupted the thread building it. They wait here, lock-free,
/// until the instance is built from task context, which adopts them (and a
/// barrier on the global instance adopts any still here before it starts:
/// see `adopt_early_for_barrier`).
static EARLY: PendingList = PendingList::new();

/// The id of the process-wide instance, if it is built (a guard of it
/// exists only then).
pub(crate) fn global_id() -> Option<u64> {
    GLOBAL.get().map(|g| g.id())
}

/// [`global`] as the `Arc` that the process-wide `kfree_rcu` engine shares.
#[inline]
pub(crate) fn global_arc() -> &'static Arc<Rcu> {
    match GLOBAL.get() {
        Some(g) => g,
        None => global_arc_slow(),
    }
}

#[cold]
fn global_arc_slow() -> &'static Arc<Rcu> {
    // Built through the fork module, so that a fork waits for a first build
    // in progress instead of copying it half done.
    let g = fork::init_global(&GLOBAL, || {
        Arc::new(Rcu::new(Domain::global(), RcuConfig::default()))
    });
    // Store-buffering handshake with `call_rcu_early`: this side stored
    // GLOBAL (inside get_or_init) and now loads EARLY; the handler side
    // stores to EARLY and then loads GLOBAL. With a SeqCst fence between
    // store and load on both sides, at least one side sees the other's
    // store: either this take finds the early callback, or the handler
    // finds GLOBAL and adopts it itself. None is stranded.
    std::sync::atomic::fence(Ordering::SeqCst);
    adopt_early(g);
    g
}

/// Adoptions in progress: a callback taken off [`EARLY`] is on neither
/// list until its adopter has queued it on the instance, and a barrier must
/// wait for it. The low 32 bits count adopters; the high 32 bits are the
/// process id they were counted in, so that an adopter that vanished in a
/// `fork` (another thread of the parent) counts for nothing in the child:
/// a value tagged with another process's id reads as zero. (An adoption the
/// forking thread itself had in progress, from a signal handler, is then
/// not waited for in the child. Only a stale value from an ancestor whose
/// pid the child reuses would be miscounted: no barrier can rely on an
/// adoption that process started anyway, but it would wait for it.)
static ADOPTING: AtomicU64 = AtomicU64::new(0);

fn adopting_tag() -> u64 {
    // SAFETY: getpid has no preconditions (and is async-signal-safe).
    u64::from(unsafe { libc::getpid() }.cast_unsigned()) << 32
}

/// Moves the callbacks parked on [`EARLY`] to `g`, oldest first. Lock-free
/// and allocation-free (a swap, then one push per callback, two counter
/// updates and a `getpid`): callable from a signal handler. Concurrent
/// adopters each take a disjoint part.
fn adopt_early(g: &Rcu) {
    if EARLY.is_empty() {
        return;
    }
    // Counted before the take (AcqRel, sequenced before it): a barrier
    // that finds EARLY empty because of this take sees the count (see
    // `adopt_early_for_barrier`). Uncounted when the guard drops, even if
    // a `call_rcu` below panics.
    let _counted = Adopting::enter();
    let mut list = EARLY.take();
    while let Some((head, func)) = list.pop() {
        // SAFETY: the head was queued by `call_rcu_early` with the caller's
        // `call_rcu` contract (valid, unmoved until `func` runs); taking it
        // off EARLY made it unqueued again, so it may be queued once more.
        unsafe { g.call_rcu(head, func) };
    }
}

thread_local! {
    /// This thread's adoptions in progress: `adopt_early` frames on its
    /// stack (one in a signal handler nested on the one it interrupted).
    /// A barrier on this thread never waits for them: they cannot finish
    /// before it returns. No destructor, so reachable at any time (and
    /// async-signal-safe).
    static MY_ADOPTING: AtomicU64 = const { AtomicU64::new(0) };
}

/// One adoption counted in [`ADOPTING`] and [`MY_ADOPTING`], until dropped.
struct Adopting {
    tag: u64,
}

impl Adopting {
    fn enter() -> Self {
        // Relaxed: only this thread and its handlers read it, and the
        // AcqRel update below keeps it before (its release half), as the
        // one in `drop` keeps the decrement after: a handler that sees
        // this adoption in ADOPTING sees it here too.
        MY_ADOPTING.with(|m| m.fetch_add(1, Ordering::Relaxed));
        let tag = adopting_tag();
        let _ = ADOPTING.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
            Some(if v & !0xffff_ffff == tag {
                v + 1
            } else {
                tag | 1
            })
        });
        Adopting { tag }
    }
}

impl Drop for Adopting {
    fn drop(&mut self) {
        let tag = self.tag;
        // Release: the adopter's pushes happen before a barrier's Acquire
        // load that reads this count (or a later one).
        let _ = ADOPTING.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
            // A value tagged otherwise was reset by a fork: this adoption is
            // not counted there.
            (v & !0xffff_ffff == tag && v & 0xffff_ffff != 0).then(|| v - 1)
        });
        MY_ADOPTING.with(|m| m.fetch_sub(1, Ordering::Relaxed));
    }
}

/// Before a barrier on `rcu`: if it is the global instance, every callback
/// parked on [`EARLY`] before the barrier is queued on it first, so that
/// the barrier waits for it.
///
/// Only the barrier needs this: it is the one operation that promises to
/// wait for callbacks already queued (`kvfree_rcu_barrier` is this barrier
/// on the global instance). The instance's builder adopts the parked
/// callbacks only after publishing [`GLOBAL`], and a thread that finds
/// `GLOBAL` set takes `global_arc`'s fast path (which stays one load, for
/// `read_lock`'s sake), so without this a barrier starting in that window
/// could end before them. A grace period (`synchronize`, polling) promises
/// nothing about callbacks and needs no adoption; the callbacks themselves
/// are only delayed until the builder (or the next barrier) adopts them.
///
/// Ordering: let callback X be parked (its push on EARLY, a Release RMW)
/// before this barrier starts (happens-before). Then this `adopt_early`'s
/// load of EARLY sees X's push or a later take. If X is still there, this
/// call adopts it itself, before queueing the barrier's heads. If another
/// adopter took it, that adopter counted itself in [`ADOPTING`] before its
/// take; every later RMW of EARLY continues the take's release sequence,
/// so our SeqCst load of EARLY synchronises with the take, and the count
/// we load (Acquire) after it includes that adopter until it has finished,
/// and its decrement (Release, after its pushes) makes those pushes happen
/// before our barrier's. Either way X is on a per-CPU pending list before
/// the barrier head of that list, and runs first.
///
/// Except for adoptions of the barrier's own thread ([`MY_ADOPTING`]): a
/// barrier in a signal handler that interrupted an adoption on its thread
/// would wait for it forever (it cannot go on until the handler returns),
/// so it waits only for the others, and the interrupted adoption's
/// callbacks may run after it. (`rcu_barrier` sleeps: calling it from a
/// handler is reported as such, and only this wait is kept from hanging.)
fn adopt_early_for_barrier(rcu: &Rcu) {
    let Some(g) = GLOBAL.get() else { return };
    if !core::ptr::eq(&**g, rcu) {
        return;
    }
    adopt_early(g);
    // Counted in ADOPTING since before this call (in the frames it
    // interrupted), and still counted: see `Adopting`.
    let mine = MY_ADOPTING.with(|m| m.load(Ordering::Relaxed));
    loop {
        let v = ADOPTING.load(Ordering::Acquire);
        let counted = if v & !0xffff_ffff == adopting_tag() {
            v & 0xffff_ffff
        } else {
            0
        };
        if counted <= mine {
            return;
        }
        // An adopter is between its take and its pushes (a few pushes:
        // it holds no lock and never blocks).
        std::thread::yield_now();
    }
}

/// `call_rcu` on the global instance, never building it in hardirq or NMI
/// context (see [`EARLY`]).
///
/// # Safety
/// As for [`Rcu::call_rcu`].
#[inline]
unsafe fn call_rcu_global(head: NonNull<RcuHead>, func: RcuCallbackFn) {
    if let Some(g) = GLOBAL.get() {
        // SAFETY: forwarded from the caller.
        return unsafe { g.call_rcu(head, func) };
    }
    if crate::context::in_hardirq() || crate::context::in_nmi() {
        // SAFETY: forwarded from the caller.
        unsafe { call_rcu_early(head, func) };
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { global_arc().call_rcu(head, func) };
    }
}

/// `call_rcu` on the global instance that never builds it, whatever the
/// context: for callers that may not sleep (atomic, irqs off, inside a
/// reader, a real-time thread), where building it would allocate, take
/// locks and spawn its worker. Before the instance exists the callback is
/// parked on [`EARLY`], adopted when it is built (by any task-context use,
/// or [`rcu_barrier`]).
///
/// # Safety
/// As for [`Rcu::call_rcu`].
pub(crate) unsafe fn call_rcu_global_nobuild(head: NonNull<RcuHead>, func: RcuCallbackFn) {
    match GLOBAL.get() {
        // SAFETY: forwarded from the caller.
        Some(g) => unsafe { g.call_rcu(head, func) },
        // SAFETY: forwarded from the caller.
        None => unsafe { call_rcu_early(head, func) },
    }
}

/// Parks a callback on [`EARLY`] (no global instance yet, hardirq or NMI
/// context); adopts it at once if the instance was built meanwhile.
///
/// # Safety
/// As for [`Rcu::call_rcu`].
#[cold]
unsafe fn call_rcu_early(head: NonNull<RcuHead>, func: RcuCallbackFn) {
    // SAFETY: forwarded from the caller.
    unsafe { EARLY.push(head, func) };
    // See `global_arc_slow` for the handshake this fence is half of.
    std::sync::atomic::fence(Ordering::SeqCst);
    if let Some(g) = GLOBAL.get() {
        adopt_early(g);
    }
}

/// [`Rcu::read_lock`] on the [`global`] instance. The first call builds
/// the instance (allocating, spawning its worker): to read from a signal
/// handler, use the instance (e.g. call [`global`]) once before. A
/// thread's first call also registers it as a reader (allocating): a
/// thread that must not allocate takes a handle first
/// ([`register_thread`], or [`krcu::register_thread`](crate::register_thread)
/// for a real-time thread) and reads through it.
///
/// The guard's type says its instance: cells of the process-wide instance
/// ([`RcuCell::new`](crate::RcuCell::new)) take it, and only it.
#[inline]
#[doc(alias = "rcu_read_lock")]
pub fn read_lock() -> GlobalReadGuard<'static> {
    GlobalReadGuard::new(global().read_lock())
}

/// [`Rcu::register_thread`] on the [`global`] instance: its handle's
/// guards are [`GlobalReadGuard`]s. (It does not make the thread
/// real-time: [`krcu::register_thread`](crate::register_thread) does.)
pub fn register_thread() -> GlobalReaderHandle {
    GlobalReaderHandle::new(global().register_thread())
}

/// [`Rcu::synchronize`] on the [`global`] instance.
#[track_caller]
#[doc(alias = "synchronize_rcu")]
pub fn synchronize() {
    global().synchronize();
}

/// [`Rcu::synchronize_expedited`] on the [`global`] instance.
#[track_caller]
#[doc(alias = "synchronize_rcu_expedited")]
pub fn synchronize_expedited() {
    global().synchronize_expedited();
}

/// [`Rcu::get_state`] on the [`global`] instance.
#[doc(alias = "get_state_synchronize_rcu")]
pub fn get_state() -> GpCookie {
    global().get_state()
}

/// [`Rcu::start_poll`] on the [`global`] instance.
#[doc(alias = "start_poll_synchronize_rcu")]
pub fn start_poll() -> GpCookie {
    global().start_poll()
}

/// [`Rcu::poll_state`] on the [`global`] instance.
#[doc(alias = "poll_state_synchronize_rcu")]
pub fn poll_state(cookie: GpCookie) -> bool {
    global().poll_state(cookie)
}

/// [`Rcu::cond_synchronize`] on the [`global`] instance.
#[track_caller]
#[doc(alias = "cond_synchronize_rcu")]
pub fn cond_synchronize(cookie: GpCookie) {
    global().cond_synchronize(cookie);
}

/// [`Rcu::call_rcu`] on the [`global`] instance, with the same
/// guarantees: never blocks, never allocates, signal-safe.
///
/// In hardirq (signal handler, see [`crate::context::enter_hardirq`]) or
/// NMI context before the global instance exists, it does not build it
/// (that allocates, locks and spawns): the callback is parked on a static
/// lock-free list, and the instance adopts it when it is built, on the
/// process's next use of it from task context (any function of this
/// module, or the global `kfree_rcu`). Until then the callback is only
/// delayed, never lost, and a barrier ([`rcu_barrier`], or
/// `kvfree_rcu_barrier`) that starts after it was queued waits for it;
/// a program that queues callbacks only from handlers
/// should call [`global`] once at startup. (In a handler not marked with
/// `enter_hardirq` the context cannot be told and the instance is built
/// there: initialise it first.)
///
/// # Safety
/// As for [`Rcu::call_rcu`].
pub unsafe fn call_rcu(head: NonNull<RcuHead>, func: RcuCallbackFn) {
    // SAFETY: forwarded from the caller.
    unsafe { call_rcu_global(head, func) }
}

/// [`Rcu::call_rcu_box`] on the [`global`] instance; in a signal handler
/// before the instance exists, as [`call_rcu`].
#[doc(alias = "call_rcu")]
pub fn call_rcu_box<T: HasRcuHead>(obj: Box<T>) {
    let raw = Box::into_raw(obj);
    // SAFETY: by HasRcuHead's contract the head lies RCU_HEAD_OFFSET bytes
    // into the object, inside the allocation.
    let head = unsafe { raw.byte_add(T::RCU_HEAD_OFFSET) }.cast::<RcuHead>();
    // SAFETY: the head belongs to a leaked Box (valid, unmoved, not
    // queued), and box_callback::<T> reclaims exactly that Box.
    unsafe { call_rcu_global(NonNull::new_unchecked(head), callback::box_callback::<T>) }
}

/// [`Rcu::rcu_barrier`] on the [`global`] instance.
#[track_caller]
pub fn rcu_barrier() {
    global().rcu_barrier();
}

#[cfg(test)]
mod early_tests {
    use super::*;
    use std::sync::mpsc;

    static RAN: AtomicUsize = AtomicUsize::new(0);

    struct Node {
        head: RcuHead,
    }

    // SAFETY: `head` is an RcuHead field of Node.
    unsafe impl HasRcuHead for Node {
        const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Node, head);

        fn rcu_callback(self: Box<Self>) {
            RAN.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn node() -> NonNull<RcuHead> {
        let raw = Box::into_raw(Box::new(Node {
            head: RcuHead::new(),
        }));
        // SAFETY: the head lies at RCU_HEAD_OFFSET inside the allocation.
        NonNull::new(unsafe { raw.byte_add(Node::RCU_HEAD_OFFSET) }.cast()).unwrap()
    }

    /// A barrier on a thread whose own adoption it interrupted (a signal
    /// handler's, simulated here by holding the count) does not wait for
    /// it; an adoption that panics is uncounted.
    #[test]
    fn a_barrier_never_waits_for_its_own_threads_adoption() {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let g = global_arc();
            let r = std::panic::catch_unwind(|| {
                let _counted = Adopting::enter();
                panic!("an adopter's call_rcu panics");
            });
            let uncounted = r.is_err() && MY_ADOPTING.with(|m| m.load(Ordering::Relaxed)) == 0;
            let interrupted = Adopting::enter();
            g.rcu_barrier();
            drop(interrupted);
            let _ = tx.send(uncounted);
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(20))
                .expect("the barrier waited for its own thread's adoption"),
            "a panicking adoption stayed counted"
        );
    }

    /// Both cases in one test: they share EARLY and the counter.
    #[test]
    fn a_global_barrier_waits_for_callbacks_parked_or_being_adopted() {
        let g = global_arc();
        let before = RAN.load(Ordering::SeqCst);
        // Parked while the builder had published GLOBAL but not adopted
        // yet (the window): the barrier adopts it.
        // SAFETY: a fresh, unqueued head of a leaked Box; box_callback
        // reclaims exactly that Box.
        unsafe { EARLY.push(node(), callback::box_callback::<Node>) };
        g.rcu_barrier();
        assert_eq!(RAN.load(Ordering::SeqCst), before + 1);

        // Taken off EARLY by an adopter that has not queued it yet: the
        // barrier waits for the adopter.
        // SAFETY: as above.
        unsafe { EARLY.push(node(), callback::box_callback::<Node>) };
        let tag = adopting_tag();
        let _ = ADOPTING.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
            Some(if v & !0xffff_ffff == tag {
                v + 1
            } else {
                tag | 1
            })
        });
        let mut list = EARLY.take();
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || {
            global_arc().rcu_barrier();
            let _ = tx.send(RAN.load(Ordering::SeqCst));
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "the barrier ended before a callback being adopted was queued"
        );
        while let Some((head, func)) = list.pop() {
            // SAFETY: taken off EARLY, queued there with the contract above.
            unsafe { g.call_rcu(head, func) };
        }
        ADOPTING.fetch_sub(1, Ordering::AcqRel);
        let ran = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        assert_eq!(ran, before + 2);
    }
}
