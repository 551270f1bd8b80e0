//! Shared test machinery: objects that know whether they were freed, once,
//! and after every reader was done; a pool to hand them out without
//! allocating (for signal handlers); a plain object that only counts its
//! drops; and a real signal source. Child
//! processes are in [`child`], test page allocators in [`pages`], the
//! counting global allocator in [`counting_alloc`], Krcu instances in
//! [`instances`], slab caches in [`slabs`], seccomp filters that prove a
//! thread makes no system call in [`seccomp`].
#![allow(dead_code)]

pub mod child;
pub mod counting_alloc;
pub mod instances;
pub mod pages;
#[cfg(target_os = "linux")]
pub mod seccomp;
pub mod slabs;

use krcu::Krcu;
use krcu::rcu::{HasRcuHead, RcuHead};
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};

pub const LIVE: u64 = 0x11FE_11FE_11FE_11FE;
pub const POISON: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// Counts, per object id, how often it was dropped.
pub struct Ledger {
    drops: Box<[AtomicU8]>,
    pub dropped: AtomicU64,
    pub double_frees: AtomicU64,
    next: AtomicUsize,
}

impl Ledger {
    pub fn new(capacity: usize) -> Arc<Ledger> {
        Arc::new(Ledger {
            drops: zeroed_counters(capacity),
            dropped: AtomicU64::new(0),
            double_frees: AtomicU64::new(0),
            next: AtomicUsize::new(0),
        })
    }

    /// How many objects it can issue.
    pub fn capacity(&self) -> usize {
        self.drops.len()
    }

    pub fn issued(&self) -> usize {
        self.next.load(SeqCst)
    }

    /// Every issued object dropped exactly once, none twice.
    pub fn assert_all_freed_once(&self) {
        let issued = self.issued();
        assert_eq!(self.double_frees.load(SeqCst), 0, "objects freed twice");
        for (id, d) in self.drops[..issued].iter().enumerate() {
            assert_eq!(
                d.load(SeqCst),
                1,
                "object {id} dropped {} times",
                d.load(SeqCst)
            );
        }
        assert_eq!(self.dropped.load(SeqCst), issued as u64);
    }
}

/// `n` counters at zero from one zeroed allocation (pages the system
/// hands out zeroed), not `n` stores one by one: in a debug build under
/// valgrind, a ledger of 24 M objects (`reader_writer_stress`) took most
/// of a minute to build that way.
fn zeroed_counters(n: usize) -> Box<[AtomicU8]> {
    // SAFETY: all-zero bytes are a valid AtomicU8 (zero): it has the same
    // size, alignment and bit validity as u8.
    unsafe { Box::<[AtomicU8]>::new_zeroed_slice(n).assume_init() }
}

/// A retired object: poisoned when dropped, counted in its ledger.
pub struct Obj {
    pub state: AtomicU64,
    pub payload: [u64; 2],
    id: usize,
    ledger: *const Ledger,
    pub head: RcuHead,
}

// SAFETY: the ledger outlives every object (tests hold an Arc until all
// objects are freed); the rest is plain data and atomics.
unsafe impl Send for Obj {}
// SAFETY: as above.
unsafe impl Sync for Obj {}

// SAFETY: `head` is an RcuHead field of Obj.
unsafe impl HasRcuHead for Obj {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Obj, head);
}

impl Obj {
    pub fn new(ledger: &Arc<Ledger>) -> Box<Obj> {
        let id = ledger.next.fetch_add(1, SeqCst);
        assert!(id < ledger.drops.len(), "ledger too small");
        Box::new(Obj {
            state: AtomicU64::new(LIVE),
            payload: [id as u64, !(id as u64)],
            id,
            ledger: Arc::as_ptr(ledger),
            head: RcuHead::new(),
        })
    }

    /// A new object by value, for a slab cache (which holds it in place).
    pub fn value(ledger: &Arc<Ledger>) -> Obj {
        *Obj::new(ledger)
    }

    /// What a reader checks: the object is alive and intact.
    pub fn check(&self) {
        assert_eq!(self.state.load(Acquire), LIVE, "use after free");
        assert_eq!(self.payload[0], !self.payload[1], "corrupt object");
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        // SAFETY: the ledger outlives the object.
        let ledger = unsafe { &*self.ledger };
        if self.state.swap(POISON, AcqRel) != LIVE {
            ledger.double_frees.fetch_add(1, SeqCst);
        }
        if ledger.drops[self.id].fetch_add(1, SeqCst) != 0 {
            ledger.double_frees.fetch_add(1, SeqCst);
        }
        ledger.dropped.fetch_add(1, SeqCst);
    }
}

/// A reader of `k`'s RCU: until `stop`, checks every object `slots`
/// publish (its poison word and payload), each pass inside one read-side
/// section, and counts its passes in `passes`.
///
/// # Safety
/// Every pointer in `slots` is, while the reader runs, an `Obj` that its
/// writer frees only a grace period of `k` after unlinking it.
pub unsafe fn check_published(
    k: &Krcu,
    slots: &[AtomicPtr<Obj>],
    stop: &std::sync::atomic::AtomicBool,
    passes: &AtomicU64,
) {
    let reader = k.rcu().register_thread();
    while !stop.load(Relaxed) {
        let _g = reader.read_lock();
        for slot in slots {
            // SAFETY: a published object lives until a grace period after
            // it is unlinked (the caller's promise); this section began
            // before that.
            unsafe { (*slot.load(Acquire)).check() };
        }
        passes.fetch_add(1, Relaxed);
    }
}

/// The simplest retired object: it counts its drops in a shared counter,
/// for tests that only ask whether everything was freed, and when.
pub struct CountedNode {
    freed: Arc<AtomicUsize>,
    head: RcuHead,
}

// SAFETY: `head` is an RcuHead field of CountedNode.
unsafe impl HasRcuHead for CountedNode {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(CountedNode, head);
}

impl CountedNode {
    pub fn new(freed: &Arc<AtomicUsize>) -> Box<CountedNode> {
        Box::new(CountedNode {
            freed: Arc::clone(freed),
            head: RcuHead::new(),
        })
    }
}

impl Drop for CountedNode {
    fn drop(&mut self) {
        self.freed.fetch_add(1, SeqCst);
    }
}

/// Objects made ahead, taken without allocating (for signal handlers).
pub struct Pool {
    slots: Vec<AtomicPtr<Obj>>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(ledger: &Arc<Ledger>, n: usize) -> Pool {
        Pool {
            slots: (0..n)
                .map(|_| AtomicPtr::new(Box::into_raw(Obj::new(ledger))))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next object, or None when the pool is spent. Lock-free,
    /// allocation-free.
    pub fn take(&self) -> Option<Box<Obj>> {
        let i = self.next.fetch_add(1, Relaxed);
        let p = self.slots.get(i)?.swap(core::ptr::null_mut(), AcqRel);
        // SAFETY: each slot holds a leaked Box taken at most once.
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for s in &self.slots {
            let p = s.swap(core::ptr::null_mut(), AcqRel);
            if !p.is_null() {
                // SAFETY: never taken, so still the leaked Box.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

/// What the signal handler retires objects into.
pub struct SignalTarget {
    pub krcu: *const Krcu,
    pub pool: *const Pool,
    pub handled: AtomicU64,
    pub queued: AtomicU64,
    pub refused: AtomicU64,
}

static TARGET: AtomicPtr<SignalTarget> = AtomicPtr::new(core::ptr::null_mut());

/// Tests that use the signal handler take this lock: one target at a time.
pub fn signal_lock() -> std::sync::MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    let _hardirq = krcu::context::enter_hardirq();
    let t = TARGET.load(Acquire);
    if t.is_null() {
        return;
    }
    // SAFETY: the target is published only while the test that owns it
    // runs, and cleared (with every signal delivered) before it goes.
    let t = unsafe { &*t };
    t.handled.fetch_add(1, Relaxed);
    // SAFETY: as above.
    let pool = unsafe { &*t.pool };
    if let Some(obj) = pool.take() {
        // SAFETY: as above.
        match unsafe { &*t.krcu }.kfree_rcu(obj) {
            Ok(()) => t.queued.fetch_add(1, Relaxed),
            Err(e) => {
                t.refused.fetch_add(1, Relaxed);
                // Not freed by kfree_rcu: leak nothing, but do not free in
                // the handler either; hand it to the pool's drop.
                std::mem::forget(e);
                0
            }
        };
    }
}

/// Installs `handler` for the signal `sig`: a plain handler (no
/// `SA_SIGINFO`), with `flags` (`0`, or `libc::SA_RESTART`) and an empty
/// mask.
///
/// # Safety
///
/// `handler` runs on whatever the signal interrupts: it must do only what
/// is safe there (atomics, krcu's signal-safe paths, no allocation, no
/// lock the interrupted code may hold).
pub unsafe fn set_handler(
    sig: libc::c_int,
    handler: extern "C" fn(libc::c_int),
    flags: libc::c_int,
) {
    // SAFETY: a zeroed sigaction with a plain handler of the right
    // signature, flags without SA_SIGINFO and an empty mask is valid; what
    // the handler does is the caller's promise.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = handler as libc::sighandler_t;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, core::ptr::null_mut()), 0);
    }
}

/// Installs the SIGUSR1 handler (once per process).
pub fn install_handler() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: the handler only touches atomics and krcu's signal-safe
        // path.
        unsafe { set_handler(libc::SIGUSR1, on_sigusr1, libc::SA_RESTART) };
    });
}

/// Points the handler at `t` until the guard drops.
pub struct TargetGuard;
pub fn set_target(t: &SignalTarget) -> TargetGuard {
    TARGET.store(t as *const SignalTarget as *mut SignalTarget, Release);
    TargetGuard
}
impl Drop for TargetGuard {
    fn drop(&mut self) {
        TARGET.store(core::ptr::null_mut(), Release);
    }
}

/// Waits until `f` holds, checking every 5 ms; fails, naming `what`, after
/// `limit`.
pub fn wait_for(what: &str, limit: std::time::Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Sends SIGUSR1 to `thread` (a pthread) `n` times, a little apart.
pub fn flood(thread: libc::pthread_t, n: usize) {
    for _ in 0..n {
        // SAFETY: the thread is alive: the caller joins it after this.
        unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
        std::thread::yield_now();
    }
}
