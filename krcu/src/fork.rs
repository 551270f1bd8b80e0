//! `fork()`: the child of a process that uses krcu keeps working.
//!
//! A child has one thread, the one that called `fork`: every worker thread
//! of every instance (the RCU grace-period workers, the `kfree_rcu`
//! workers and reclaimers, the page allocators' kswapd) is gone, and a lock
//! that any other thread held at the moment of the fork stays held in the
//! child for good. krcu does what liburcu does (`call_rcu_before_fork` /
//! `call_rcu_after_fork_parent` / `call_rcu_after_fork_child`, and
//! `rcu_before_fork` for its grace-period locks), through `pthread_atfork`
//! handlers registered as the program is loaded (from `.init_array`, so
//! that no fork catches the registration half done; building an instance
//! registers them too, should that entry be missing):
//!
//! - **prepare** (in the forking thread, before the fork) works in rounds.
//!   It waits until no process-wide instance ([`rcu::global`](crate::rcu::global),
//!   [`Krcu::global`](crate::Krcu::global)) is being built, snapshots the
//!   registered instances, and takes each new RCU instance's barrier lock
//!   (so no `rcu_barrier` is half done). It asks every worker to park at
//!   its safe point (the top of its loop, holding no lock, its state in
//!   shared memory) and waits until all have, then takes each instance's
//!   locks that other threads take: the grace-period lock (a `synchronize`
//!   in progress ends first), the reader registry, the locks of the
//!   instances' worker handles, and each `kfree_rcu` engine's monitor,
//!   front, `krc`, ready-list and wake-up locks. Last it
//!   takes the instance registry's lock, kept across the fork so that no
//!   instance is registered half built meanwhile. If an instance was
//!   registered since the snapshot, or a process-wide one is being built,
//!   it lets go of all but the barrier locks, lets the workers go on, and
//!   starts a new round. The registry lock is never held while the handler
//!   waits: a thread building an instance inside a read-side section that
//!   a grace period in progress waits for is not held up by the fork. At
//!   the fork no krcu thread is inside any of these locks.
//! - **parent**: releases them, lets the workers go on, and only then drops
//!   its references to the instances (a last reference dropped there may
//!   join a worker).
//! - **child**: releases them; forgets the reader registrations of the
//!   threads that do not exist in the child (a reader that was inside a
//!   read-side section there would hold up every grace period forever) and
//!   the reclaim work such threads had in hand; never joins the old
//!   threads' handles (glibc may give their descriptors to new threads);
//!   and starts new worker threads, which take over the state the parked
//!   ones left (the RCU worker's callback lists). An RCU instance being
//!   dropped (its worker draining its queue, e.g. after one of its own
//!   callbacks dropped it) gets a new, detached worker too, which runs
//!   every callback queued and exits.
//!
//! A krcu worker thread never joins another worker (the prepare handler
//! may have parked that one, and waits for this one): dropping an
//! [`Rcu`](crate::rcu::Rcu), a [`PageAllocator`](crate::page::PageAllocator)
//! or a [`Krcu`](crate::Krcu) on one (in an RCU callback, a `kfree_rcu`
//! destructor, a shrinker) detaches the instance's workers, which finish
//! their work and exit by themselves, holding the instance's shared state
//! alive until then (a `Krcu` hands its teardown to a thread of its own).
//!
//! So the child can retire objects, wait for grace periods and barriers,
//! and drop its instances. What stays the caller's responsibility:
//!
//! - `fork` waits for the grace period each RCU worker is running, which
//!   waits for the readers inside their sections: a thread that forks from
//!   inside a read-side section while its instance's worker waits for that
//!   very section deadlocks (liburcu's rule is the same: do not fork inside
//!   a read-side section).
//! - A krcu worker that waits for a barrier (`rcu_barrier`,
//!   `kvfree_rcu_barrier`, dropping a `SlabChannel`) from an RCU callback,
//!   a `kfree_rcu` destructor or a shrinker can deadlock a concurrent
//!   fork: the prepare handler holds the barrier lock and waits for that
//!   worker to park.
//! - A fork from a krcu worker thread itself (an RCU callback, a
//!   `kfree_rcu` destructor, a shrinker) waits for that thread to park:
//!   it deadlocks.
//! - A thread that builds instances without pause can hold a fork up (each
//!   new instance starts a new round).
//! - Locks krcu does not take here (the page allocator's zone and per-CPU
//!   lists, a [`SlabCache`](crate::slab::SlabCache)'s, the slab channel
//!   registry, the validator's tables, the application's own krcu locks)
//!   can be found held in the child if another application thread was
//!   inside them at the instant of the fork, as with any library: POSIX
//!   allows a child of a multithreaded process only async-signal-safe calls
//!   until it `exec`s. krcu's own workers never hold them while parked.
//!   (The page allocator's locks are taken under the `krc` raw locks on
//!   some paths, and would have to be held in that order, which the
//!   validator reports as an invalid wait context; so they are left out.)
//! - The child handler allocates and starts threads, which glibc permits
//!   in practice (liburcu does the same) though POSIX does not promise it.
//! - Objects another (now gone) thread of the parent was freeing at that
//!   instant are neither freed in the child nor freed early: they leak in
//!   the child's copy of memory. So do the objects queued on a `Krcu`
//!   whose drop was in progress at the fork (its `kfree_rcu` workers are
//!   not restarted in the child).

use std::any::Any;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock, Weak};
use std::time::Duration;

/// Set while a fork is being prepared: workers park at their checkpoint.
static REQUESTED: AtomicU32 = AtomicU32::new(0);
/// Worker threads alive (counted by [`WorkerToken`]).
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Worker threads parked at their checkpoint.
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// How many phases [`Participant::lock_after_park`] is called for.
const LOCK_PHASES: usize = 4;

/// Something with worker threads and locks to look after across `fork`.
pub(crate) trait Participant: Send + Sync {
    /// Prepare, before the workers park: locks whose holders need the
    /// workers to finish (a barrier in progress).
    fn lock_before_park(self: Arc<Self>, held: &mut Vec<Box<dyn Any>>);
    /// Wakes this participant's workers so that they reach their checkpoint.
    fn kick(&self);
    /// Prepare, once every worker is parked: every other lock, in phases
    /// `0..LOCK_PHASES` (each phase of every participant before the next
    /// phase of any, so that one lock class is always taken in one order).
    fn lock_after_park(self: Arc<Self>, phase: usize, held: &mut Vec<Box<dyn Any>>);
    /// Whether the calling thread is inside a read-side section of this
    /// participant (a fork from there can wait for itself).
    fn caller_is_reading(&self) -> bool {
        false
    }
    /// In the child, after every lock is released: forget the threads that
    /// are gone and start new workers.
    fn restart_in_child(self: Arc<Self>);
}

/// The participants, in the order they were built (an RCU before the
/// `kfree_rcu` engine built on it).
static REGISTRY: Mutex<Vec<Weak<dyn Participant>>> = Mutex::new(Vec::new());

/// Registers the `pthread_atfork` handlers as the program is loaded, before
/// any thread can fork: registered lazily instead, a fork concurrent with
/// the registration (or with a first build of a process-wide instance)
/// could leave the child with the registration's `Once`, or the instance's
/// `OnceLock`, in progress for good.
#[used]
// SAFETY: `.init_array` entries are called once by the dynamic loader (or
// the static start-up code) before `main`, with the program's arguments,
// which an `extern "C" fn()` ignores on every Linux ABI; this one only
// calls `install_handlers`, which is sound before `main`.
#[unsafe(link_section = ".init_array")]
static INSTALL_AT_LOAD: extern "C" fn() = {
    extern "C" fn install_at_load() {
        install_handlers();
    }
    install_at_load
};

/// Registers the `pthread_atfork` handlers, once (at load time; the calls
/// when an instance is built are a fallback).
fn install_handlers() {
    static HANDLERS: Once = Once::new();
    HANDLERS.call_once(|| {
        // SAFETY: the three handlers are `extern "C" fn()` that live for the
        // whole program; pthread_atfork only records them.
        let r = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        if r != 0 {
            tracing::error!("krcu: pthread_atfork failed ({r}): fork() children will hang");
        }
    });
}

/// Registers `p` (and the `pthread_atfork` handlers, once).
pub(crate) fn register(p: Weak<dyn Participant>) {
    install_handlers();
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|w| w.strong_count() > 0);
    reg.push(p);
}

/// Process-wide instances being built now ([`init_global`]); incremented
/// under the registry lock.
static INITIALIZING: AtomicUsize = AtomicUsize::new(0);

/// `cell.get_or_init(f)` for a process-wide instance, kept out of a fork: a
/// child forked while another thread is inside `f` would find the cell
/// being initialised for good (that thread does not exist there), and its
/// first use of the instance would block forever. The prepare handler
/// waits until no initialisation is in progress, and one that starts while
/// the handler holds the registry lock (at the end of prepare) waits until
/// the fork is over before it touches the cell. One load once initialised.
pub(crate) fn init_global<T>(cell: &'static OnceLock<T>, f: impl FnOnce() -> T) -> &'static T {
    if let Some(v) = cell.get() {
        return v;
    }
    struct Initializing;
    impl Drop for Initializing {
        fn drop(&mut self) {
            INITIALIZING.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _init = {
        // Ordering: the increment is made under the registry lock, and the
        // prepare handler reads the count under it as its last step: either
        // the handler sees this initialisation (and lets it finish before
        // the fork), or this thread takes the lock after the fork's
        // handlers released it, and has not touched the cell before.
        let _reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        INITIALIZING.fetch_add(1, Ordering::SeqCst);
        Initializing
    };
    cell.get_or_init(f)
}

/// Held by a worker thread while it runs: the prepare handler waits until
/// every live worker has parked.
pub(crate) struct WorkerToken(());

impl WorkerToken {
    pub(crate) fn new() -> Self {
        LIVE.fetch_add(1, Ordering::SeqCst);
        WorkerToken(())
    }
}

impl WorkerToken {
    /// Runs the body `f` of the worker thread the token was made for,
    /// marked as a krcu worker (see [`on_worker_thread`]); the token ends
    /// with it (also when it unwinds).
    pub(crate) fn run<R>(self, f: impl FnOnce() -> R) -> R {
        ON_WORKER.with(|w| w.set(true));
        let _token = self;
        f()
    }
}

thread_local! {
    /// Whether this thread is a krcu worker ([`WorkerToken::run`]).
    static ON_WORKER: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Whether the calling thread is a krcu worker thread (of any instance: an
/// RCU worker running a callback, a `kfree_rcu` worker or reclaimer running
/// a destructor, kswapd running a shrinker). Such a thread must never join
/// another worker: the prepare handler of a `fork` may have parked that one
/// and waits for this one to park too. The drops of [`Rcu`](crate::rcu::Rcu),
/// [`PageAllocator`](crate::page::PageAllocator) and [`Krcu`](crate::Krcu)
/// detach instead.
pub(crate) fn on_worker_thread() -> bool {
    ON_WORKER.try_with(|w| w.get()).unwrap_or(false)
}

impl Drop for WorkerToken {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a fork is being prepared (a worker about to sleep checks it
/// after announcing its sleep, so that the prepare handler's kick is not
/// lost).
#[inline]
pub(crate) fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst) != 0
}

/// A worker's safe point: the caller holds no lock and keeps no state on
/// its stack that the child could not rebuild. Parks while a fork is being
/// prepared. One load when none is.
#[inline]
pub(crate) fn checkpoint() {
    if requested() {
        park();
    }
}

#[cold]
fn park() {
    // Ordering: SeqCst throughout. The prepare handler reads PARKED after
    // its SeqCst store of REQUESTED; a worker counted here has finished
    // everything before its SeqCst increment (and published its state with
    // it), so the forking thread sees that state once it sees the count.
    PARKED.fetch_add(1, Ordering::SeqCst);
    while REQUESTED.load(Ordering::SeqCst) != 0 {
        // SAFETY: FUTEX_WAIT on a static, aligned u32, no timeout: returns
        // when woken, when the word is no longer 1, or on a signal.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                REQUESTED.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                1 as libc::c_int,
                core::ptr::null::<libc::timespec>(),
            );
        }
    }
    PARKED.fetch_sub(1, Ordering::SeqCst);
}

/// A lock guard kept across the fork, with the owner of the lock: fields
/// drop in order, the guard before the owner.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct Held<O: ?Sized + 'static, G: 'static> {
    _guard: G,
    _owner: Arc<O>,
}

/// Takes a lock of `owner` with `take` and keeps the guard until the
/// parent or child handler drops it.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn hold<O, G>(owner: Arc<O>, take: impl FnOnce(&'static O) -> G) -> Box<dyn Any>
where
    O: ?Sized + Send + Sync + 'static,
    G: 'static,
{
    // SAFETY: the reference is used only by `take` and by the guard it
    // returns, which is stored next to the Arc that keeps `*owner` alive and
    // dropped before it (field order); nothing else sees the 'static.
    let o: &'static O = unsafe { &*Arc::as_ptr(&owner) };
    Box::new(Held {
        _guard: take(o),
        _owner: owner,
    })
}

/// What the prepare handler took, for the parent or child handler, and
/// the participants it saw. Not a thread-local: a thread may fork from a
/// thread-local destructor, after its thread-locals are gone.
struct Stash(UnsafeCell<Option<Taken>>);

/// The guards prepare holds (the registry's last) and the participants.
type Taken = (Vec<Box<dyn Any>>, Vec<Arc<dyn Participant>>);

// SAFETY: the cell is touched only by the thread that holds the registry
// lock (its guard is the last entry of what is stashed): prepare writes it
// right before it returns holding that lock, and the parent or child
// handler, on the same thread, takes it out before that guard is dropped.
// A fork on another thread blocks on the registry lock until then, and
// the guards never leave the forking thread.
unsafe impl Sync for Stash {}

static STASH: Stash = Stash(UnsafeCell::new(None));

/// The participants registered now that `seen` does not hold (by address;
/// dropped ones left out), upgraded. Holds the registry lock only while it
/// looks, so that an instance being built (perhaps by a reader that a grace
/// period in progress waits for) is never held up by a fork.
fn unseen(seen: &[Arc<dyn Participant>]) -> Vec<Arc<dyn Participant>> {
    let reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    reg.iter()
        .filter(|w| !is_seen(w, seen))
        .filter_map(Weak::upgrade)
        .collect()
}

/// Whether `w` is dropped or one of `seen`.
fn is_seen(w: &Weak<dyn Participant>, seen: &[Arc<dyn Participant>]) -> bool {
    let addr = w.as_ptr().cast::<()>();
    w.strong_count() == 0 || seen.iter().any(|p| Arc::as_ptr(p).cast::<()>() == addr)
}

/// Lets the parked workers go on.
fn resume_workers() {
    REQUESTED.store(0, Ordering::SeqCst);
    // SAFETY: FUTEX_WAKE on a static, aligned u32 reads no other memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            REQUESTED.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

/// Releases `held` down to its first `keep` entries, newest first.
fn unwind_to(held: &mut Vec<Box<dyn Any>>, keep: usize) {
    while held.len() > keep {
        drop(held.pop());
    }
}

/// Asks every worker to park and waits until all have. Returns false, at
/// once, if a participant outside `parts` has registered meanwhile (its
/// workers may sleep unkicked, and its barrier lock is not held): the
/// caller starts a new round.
fn park_all(parts: &[Arc<dyn Participant>], start: std::time::Instant, warned: &mut bool) -> bool {
    REQUESTED.store(1, Ordering::SeqCst);
    // Kick until every live worker is parked (a kick can precede the
    // worker's sleep; the workers also check `requested` before sleeping,
    // but a timed sleep in between is cut short this way).
    //
    // Ordering: SeqCst on REQUESTED, PARKED and LIVE. A worker counted in
    // PARKED incremented it after its last access to its state before
    // parking (see `park`), so once this thread reads PARKED >= LIVE every
    // worker alive is parked and its state visible here. A worker started
    // later (LIVE incremented by its spawner) reads REQUESTED at its first
    // checkpoint and parks too.
    while PARKED.load(Ordering::SeqCst) < LIVE.load(Ordering::SeqCst) {
        for p in parts {
            p.kick();
        }
        {
            let reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            if !reg.iter().all(|w| is_seen(w, parts)) {
                return false;
            }
        }
        if !*warned
            && start.elapsed() > Duration::from_secs(5)
            && parts.iter().any(|p| p.caller_is_reading())
        {
            *warned = true;
            eprintln!(
                "krcu: fork() called inside an RCU read-side section waits for the grace \
                 period in progress, which may be waiting for this very section: deadlock"
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

extern "C" fn prepare() {
    // Rounds: take the barrier locks of every participant not yet seen,
    // park every worker, take the other locks, and last the registry lock
    // (held across the fork, so that no instance is registered half built
    // meanwhile). If a participant registered since the round's snapshot
    // (its workers were not asked to park, or were not waited for, and its
    // locks are not held), let go of everything but the barrier locks, let
    // the workers go on, and start a new round with it. The registry lock
    // is never held while this thread waits for anything but itself: a
    // thread building an instance (`Rcu::new`, the first `rcu::global()`)
    // inside a read-side section that a grace period in progress waits
    // for is never held up here.
    let mut parts: Vec<Arc<dyn Participant>> = Vec::new();
    let mut held: Vec<Box<dyn Any>> = Vec::new();
    let start = std::time::Instant::now();
    let mut warned = false;
    let reg = loop {
        // A process-wide instance being built finishes first (no worker is
        // parked now, and building one waits for none).
        while INITIALIZING.load(Ordering::SeqCst) != 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        let fresh = unseen(&parts);
        for p in &fresh {
            p.clone().lock_before_park(&mut held);
        }
        parts.extend(fresh);
        let before_park = held.len();
        if park_all(&parts, start, &mut warned) {
            for phase in 0..LOCK_PHASES {
                for p in &parts {
                    p.clone().lock_after_park(phase, &mut held);
                }
            }
            let reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            if INITIALIZING.load(Ordering::SeqCst) == 0 && reg.iter().all(|w| is_seen(w, &parts)) {
                break reg;
            }
        }
        unwind_to(&mut held, before_park);
        resume_workers();
    };
    held.push(Box::new(reg));
    // SAFETY: this thread holds the registry lock (just pushed); see Stash.
    unsafe { *STASH.0.get() = Some((held, parts)) };
}

/// Releases what prepare took, newest first; returns the participants.
fn release() -> Vec<Arc<dyn Participant>> {
    // SAFETY: the parent and child handlers run on the thread that ran
    // prepare, which still holds the registry lock; see Stash.
    let taken = unsafe { (*STASH.0.get()).take() };
    let Some((mut held, parts)) = taken else {
        return Vec::new();
    };
    unwind_to(&mut held, 0);
    parts
}

extern "C" fn parent() {
    let parts = release();
    resume_workers();
    // Only now, with the workers running: if one of these is the last
    // reference to a participant, its drop may join a worker.
    drop(parts);
}

/// Forks this process has been through (as a child): raised in each
/// child, so that state a thread of the parent left in progress (a slab
/// sheaf being recycled) is known to be nobody's.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// How many forks made this process (0 in the original one).
pub(crate) fn generation() -> u64 {
    FORKS.load(Ordering::SeqCst)
}

extern "C" fn child() {
    FORKS.fetch_add(1, Ordering::SeqCst);
    let parts = release();
    // Only this thread exists: no worker is parked or alive.
    PARKED.store(0, Ordering::SeqCst);
    LIVE.store(0, Ordering::SeqCst);
    REQUESTED.store(0, Ordering::SeqCst);
    for p in parts {
        p.restart_in_child();
    }
}
