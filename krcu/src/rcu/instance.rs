//! The instance: [`Rcu`], its readers, grace periods and callbacks, and
//! its counters. `rcu_barrier` is in `barrier.rs`; the process-wide
//! instance and its free functions in `early.rs` and `global.rs`.
//!
//! Uses the state it shares with its worker (`state.rs`), the worker
//! (`worker.rs`, which it starts), the readers, the grace-period engine and
//! the callback lists.
#![cfg(not(loom))]

use super::callback::{self, HasRcuHead, PendingList, RcuCallbackFn, RcuHead};
use super::gp::{GpEngine, WaitMode};
use super::membarrier;
use super::reader::{self, ReadGuard, ReaderHandle, Readers};
use super::seq::GpCookie;
use super::stall::StallReport;
use super::state::{Barrier, BarrierHead, Counters, RcuConfig, Shared};
use super::wake::Wake;
use super::worker;
use crate::domain::Domain;
use crate::fork;
use crate::percpu::PerCpu;
use core::ptr::NonNull;
use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

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

/// An RCU instance: its readers' slots, its grace-period engine, its
/// callback lists and the worker thread that runs them.
///
/// `Send + Sync`; share it by reference or in an `Arc`. Dropping it stops
/// the worker after every queued callback has run.
///
/// A writer unlinks, waits for a grace period, then frees; a reader that
/// began before the wait is done by the time it returns:
/// ```
/// use krcu::rcu::{Rcu, RcuConfig};
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::time::Duration;
///
/// let rcu = Rcu::new(&krcu::Domain::builder().cpus(1).build(), RcuConfig::default());
/// let reader_done = AtomicBool::new(false);
/// let (entered_tx, entered_rx) = std::sync::mpsc::channel();
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         let guard = rcu.read_lock();
///         entered_tx.send(()).unwrap();
///         std::thread::sleep(Duration::from_millis(50)); // a slow reader
///         reader_done.store(true, Ordering::SeqCst);
///         drop(guard);
///     });
///     entered_rx.recv().unwrap(); // the reader is in its section
///     rcu.synchronize(); // waits for it
///     assert!(reader_done.load(Ordering::SeqCst));
/// });
/// assert!(rcu.stats().grace_periods >= 1);
/// ```
pub struct Rcu {
    pub(super) shared: Arc<Shared>,
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
    /// ```
    /// use krcu::rcu::{Rcu, RcuConfig};
    /// use std::time::Duration;
    /// let domain = krcu::Domain::builder().cpus(2).build();
    /// let config = RcuConfig::default().gp_interval(Duration::ZERO).worker_name("my-rcu");
    /// let rcu = Rcu::new(&domain, config);
    /// assert!(rcu.domain().same(&domain));
    /// assert_eq!(rcu.stats().grace_periods, 0, "none yet");
    /// rcu.synchronize();
    /// assert!(rcu.stats().grace_periods >= 1);
    /// ```
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
    ///
    /// ```
    /// use krcu::rcu::{Rcu, RcuConfig};
    /// let rcu = Rcu::new(krcu::Domain::global(), RcuConfig::default());
    /// assert_eq!(rcu.stats().readers, 0);
    /// let handle = rcu.register_thread(); // allocates, once
    /// assert_eq!(rcu.stats().readers, 1);
    /// {
    ///     let _guard = handle.read_lock(); // wait-free, no allocation
    ///     assert!(rcu.is_reading());
    /// }
    /// drop(handle);
    /// assert_eq!(rcu.stats().readers, 0, "unregistered");
    /// ```
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
    ///
    /// ```
    /// use krcu::rcu::{Rcu, RcuConfig};
    /// let rcu = Rcu::new(krcu::Domain::global(), RcuConfig::default());
    /// assert!(!rcu.is_reading());
    /// let outer = rcu.read_lock();
    /// let inner = rcu.read_lock(); // sections nest
    /// assert!(rcu.is_reading());
    /// drop(inner);
    /// assert!(rcu.is_reading(), "the outer section is still open");
    /// drop(outer);
    /// assert!(!rcu.is_reading());
    /// ```
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
    pub(super) fn may_wait(&self, what: &str) {
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
    /// for what is reported. (An example: [`Rcu`].)
    ///
    /// # Panics
    /// Inside a read-side section of this instance: it would wait for
    /// itself forever.
    ///
    /// ```should_panic
    /// let rcu = krcu::rcu::Rcu::new(krcu::Domain::global(), Default::default());
    /// let _guard = rcu.read_lock();
    /// rcu.synchronize(); // panics rather than hang
    /// ```
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
    ///
    /// ```
    /// let rcu = krcu::rcu::Rcu::new(krcu::Domain::global(), Default::default());
    /// rcu.synchronize_expedited();
    /// assert!(rcu.stats().expedited_grace_periods >= 1);
    /// ```
    ///
    /// # Panics
    /// As [`synchronize`](Self::synchronize).
    #[track_caller]
    #[doc(alias = "synchronize_rcu_expedited")]
    pub fn synchronize_expedited(&self) {
        self.may_wait("synchronize_rcu_expedited()");
        self.shared.gp.synchronize(WaitMode::Expedited);
    }

    /// A cookie for the first grace period that starts after this call
    /// (`get_state_synchronize_rcu`); does not start one.
    ///
    /// The polled API, to free a batch without blocking:
    /// ```
    /// use krcu::rcu::{GpCookie, Rcu, RcuConfig};
    /// let rcu = Rcu::new(krcu::Domain::global(), RcuConfig::default());
    /// let guard = rcu.read_lock(); // a reader that may see the batch
    /// let cookie: GpCookie = rcu.get_state(); // taken when the batch closes
    /// assert!(!rcu.poll_state(cookie), "the reader holds the grace period off");
    /// drop(guard);
    /// rcu.cond_synchronize(cookie); // waits only if it has not elapsed
    /// assert!(rcu.poll_state(cookie), "now the batch may be freed");
    /// assert!(rcu.poll_state(GpCookie::COMPLETED));
    /// ```
    #[inline]
    #[doc(alias = "get_state_synchronize_rcu")]
    pub fn get_state(&self) -> GpCookie {
        self.shared.gp.snapshot()
    }

    /// [`get_state`](Self::get_state), and makes sure that grace period
    /// will run (the worker starts it) (`start_poll_synchronize_rcu`).
    /// Never blocks; a system call only when the worker sleeps.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let rcu = krcu::rcu::Rcu::new(krcu::Domain::global(), Default::default());
    /// let cookie = rcu.start_poll(); // the worker runs the grace period
    /// let deadline = Instant::now() + Duration::from_secs(30);
    /// while !rcu.poll_state(cookie) {
    ///     assert!(Instant::now() < deadline, "the worker never ran it");
    ///     std::thread::sleep(Duration::from_millis(1)); // other work here
    /// }
    /// assert!(rcu.stats().grace_periods >= 1);
    /// ```
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
    /// [`synchronize`](Self::synchronize). (An example:
    /// [`get_state`](Self::get_state).)
    ///
    /// # Panics
    /// As [`synchronize`](Self::synchronize), unless the grace period has
    /// elapsed already.
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
    ///
    /// ```
    /// use core::ptr::NonNull;
    /// use krcu::rcu::{Rcu, RcuHead};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    ///
    /// static CALLED: AtomicU32 = AtomicU32::new(0);
    /// #[repr(C)]
    /// struct Node {
    ///     rcu: RcuHead, // first, so a head pointer is a node pointer
    ///     value: u32,
    /// }
    /// /// # Safety
    /// /// `head` is the head of a leaked `Box<Node>`.
    /// unsafe fn free_node(head: NonNull<RcuHead>) {
    ///     // SAFETY: the head is the first field of a leaked Box<Node>.
    ///     let node = unsafe { Box::from_raw(head.cast::<Node>().as_ptr()) };
    ///     CALLED.fetch_add(node.value, Ordering::SeqCst);
    /// }
    ///
    /// let rcu = Rcu::new(krcu::Domain::global(), Default::default());
    /// let node = Box::leak(Box::new(Node { rcu: RcuHead::new(), value: 5 }));
    /// // SAFETY: the head is not queued and stays put until `free_node`,
    /// // which frees exactly that node, has run.
    /// unsafe { rcu.call_rcu(NonNull::from(&mut node.rcu), free_node) };
    /// rcu.rcu_barrier();
    /// assert_eq!(CALLED.load(Ordering::SeqCst), 5);
    /// ```
    #[inline]
    pub unsafe fn call_rcu(&self, head: NonNull<RcuHead>, func: RcuCallbackFn) {
        // SAFETY: forwarded from the caller.
        unsafe { self.call_rcu_nowake(head, func) };
        self.shared.wake.kick();
    }

    /// [`call_rcu`](Self::call_rcu) without waking a sleeping worker: no
    /// system call at all, for real-time threads. The callback waits until
    /// something wakes the worker (another `call_rcu`, a poller,
    /// [`kick_if_pending`](Self::kick_if_pending), which kvfree's monitor
    /// runs on every pass) or its idle check (at most a second).
    ///
    /// # Safety
    /// As for `call_rcu`.
    #[inline]
    pub(crate) unsafe fn call_rcu_nowake(&self, head: NonNull<RcuHead>, func: RcuCallbackFn) {
        let (_, list) = self.shared.pending.current();
        // SAFETY: forwarded from the caller.
        unsafe { list.push(head, func) };
    }

    /// Wakes a sleeping worker if callbacks are queued (those queued by
    /// [`call_rcu_nowake`](Self::call_rcu_nowake)).
    pub(crate) fn kick_if_pending(&self) {
        if self.shared.pending.iter().any(|(_, l)| !l.is_empty()) {
            self.shared.wake.kick();
        }
    }

    /// Hands `obj` to RCU: after a full grace period the worker calls
    /// [`HasRcuHead::rcu_callback`] with it (by default: drops it). The
    /// safe form of [`call_rcu`](Self::call_rcu); the same guarantees
    /// (no allocation, no lock, signal-safe).
    ///
    /// ```
    /// use krcu::rcu::{HasRcuHead, Rcu, RcuHead};
    /// use std::sync::atomic::{AtomicBool, Ordering};
    ///
    /// static DROPPED: AtomicBool = AtomicBool::new(false);
    /// #[derive(HasRcuHead)]
    /// struct Node {
    ///     rcu: RcuHead,
    /// }
    /// impl Drop for Node {
    ///     fn drop(&mut self) {
    ///         DROPPED.store(true, Ordering::SeqCst);
    ///     }
    /// }
    ///
    /// let rcu = Rcu::new(krcu::Domain::global(), Default::default());
    /// rcu.call_rcu_box(Box::new(Node { rcu: RcuHead::new() }));
    /// rcu.rcu_barrier(); // the callback has run
    /// assert!(DROPPED.load(Ordering::SeqCst));
    /// // Counted with the barrier's own callbacks (one per CPU).
    /// assert!(rcu.stats().callbacks_invoked >= 1);
    /// ```
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

    /// The instance's counters (see [`RcuStats`] and the
    /// [guide](crate::guide#what-each-statistic-means)).
    ///
    /// ```
    /// let rcu = krcu::rcu::Rcu::new(krcu::Domain::global(), Default::default());
    /// let before = rcu.stats();
    /// rcu.synchronize();
    /// let after = rcu.stats();
    /// assert!(after.grace_periods > before.grace_periods);
    /// assert_ne!(after.gp_seq, before.gp_seq, "the sequence number moved on");
    /// assert_eq!((after.stalls, after.abandoned_sections), (0, 0));
    /// ```
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

impl Shared {
    pub(super) fn on_worker(&self) -> bool {
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
