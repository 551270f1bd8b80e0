//! Adversarial review of a thread recycling its own `rcu_free` sheaves
//! (`slab/recycle.rs`): where the destructors of recycled objects run
//! (inside the caller's `kfree_rcu_slab`, so under whatever the caller
//! holds), and whether a barrier on another thread waits for a recycle in
//! progress. The failing ones are `#[ignore]`d with their finding.

mod common;

use common::wait_for;
use krcu::Krcu;
use krcu::slab::SlabCache;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

/// The library's defaults: no destructor of a retired object runs on the
/// retiring thread (a `T` with drop glue is not recycled there unless the
/// instance says `Assist::Always`).
fn instance() -> Krcu {
    Krcu::builder().arena_size(64 << 20).build().unwrap()
}

/// Recycling with destructors on the retiring thread whenever a grace
/// period has ended (`Assist::Always`): the most that runs there.
fn instance_always() -> Krcu {
    Krcu::builder()
        .arena_size(64 << 20)
        .assist(krcu::kvfree::Assist::Always)
        .build()
        .unwrap()
}

/// Retires objects made by `make` on the calling thread, with a grace
/// period now and then so that older sheaves are ready when later ones
/// fill, until `done` says so (or `limit` objects); `around` wraps each
/// retire. Returns how many were retired.
fn retire_until<T: Send + 'static>(
    k: &Krcu,
    cache: &SlabCache<T>,
    limit: usize,
    mut make: impl FnMut() -> T,
    mut around: impl FnMut(&mut dyn FnMut()),
    done: impl Fn() -> bool,
) -> usize {
    for i in 0..limit {
        if done() {
            return i;
        }
        let b = cache.alloc_box(make()).ok().unwrap();
        let mut b = Some(b);
        around(&mut || k.kfree_rcu_slab(b.take().unwrap()).unwrap());
        if i % 500 == 499 {
            k.rcu().synchronize();
        }
    }
    limit
}

// ---------------------------------------------------------------------
// Finding 1: a barrier on another thread returns while the writer is still
// running the destructors of a sheaf it recycled (objects retired before
// the barrier, not yet dropped when it returns).

static F1_ARMED: AtomicBool = AtomicBool::new(true);
static F1_IN_DTOR: AtomicBool = AtomicBool::new(false);
static F1_DONE: AtomicBool = AtomicBool::new(false);
static F1_RELEASE: AtomicBool = AtomicBool::new(false);

/// The first one dropped on the writer thread (by recycling) holds its
/// destructor until released (or 5 s, so that a barrier that waits for
/// it returns).
struct Slow {
    writer: std::thread::ThreadId,
}

impl Drop for Slow {
    fn drop(&mut self) {
        if std::thread::current().id() != self.writer || !F1_ARMED.swap(false, SeqCst) {
            return;
        }
        F1_IN_DTOR.store(true, SeqCst);
        let start = Instant::now();
        while !F1_RELEASE.load(SeqCst) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        F1_DONE.store(true, SeqCst);
    }
}

#[test]
fn a_barrier_waits_for_a_recycle_in_progress_on_another_thread() {
    let k = instance_always();
    let cache = k.slab_cache::<Slow>("slow").unwrap();
    let done_at_barrier = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let me = std::thread::current().id();
            retire_until(
                &k,
                &cache,
                1_000_000,
                || Slow { writer: me },
                |f| f(),
                || F1_DONE.load(SeqCst),
            )
        });
        wait_for(
            "a destructor run by recycling on the writer",
            Duration::from_secs(120),
            || F1_IN_DTOR.load(SeqCst) || writer.is_finished(),
        );
        assert!(F1_IN_DTOR.load(SeqCst), "the writer never recycled");
        // Everything the writer retired so far was queued before this
        // barrier, the object whose destructor is running among them.
        k.kvfree_rcu_barrier();
        let done = F1_DONE.load(SeqCst);
        F1_RELEASE.store(true, SeqCst);
        writer.join().unwrap();
        done
    });
    k.kvfree_rcu_barrier();
    assert!(
        done_at_barrier,
        "kvfree_rcu_barrier returned while an object retired before it was still being dropped"
    );
}

// ---------------------------------------------------------------------
// Finding 2: the destructors of earlier retired objects run inside the
// caller's `kfree_rcu_slab`, under whatever lock the caller holds. The
// usual RCU writer retires under its update lock; a destructor that takes
// that lock (a registry it leaves, a count it gives back) deadlocks.

static F2_LOCK: Mutex<u64> = Mutex::new(0);
static F2_WOULD_DEADLOCK: AtomicUsize = AtomicUsize::new(0);
static F2_DROPPED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static F2_HOLDING: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Its destructor takes the writers' lock (with a trylock, counting the
/// calls that would have deadlocked: the lock held by this very thread).
struct Registered;

impl Drop for Registered {
    fn drop(&mut self) {
        match F2_LOCK.try_lock() {
            Ok(mut n) => *n += 1,
            Err(TryLockError::WouldBlock) if F2_HOLDING.with(|h| h.get()) => {
                F2_WOULD_DEADLOCK.fetch_add(1, SeqCst);
            }
            // Held by another thread: `lock()` would just wait.
            Err(_) => *F2_LOCK.lock().unwrap_or_else(|e| e.into_inner()) += 1,
        }
        F2_DROPPED.fetch_add(1, SeqCst);
    }
}

#[test]
fn a_writer_retiring_under_its_lock_never_runs_destructors_that_take_it() {
    let k = instance();
    let cache = k.slab_cache::<Registered>("registered").unwrap();
    let n = 20_000;
    retire_until(
        &k,
        &cache,
        n,
        || Registered,
        |retire| {
            let _g = F2_LOCK.lock().unwrap();
            F2_HOLDING.with(|h| h.set(true));
            retire();
            F2_HOLDING.with(|h| h.set(false));
        },
        || false,
    );
    k.kvfree_rcu_barrier();
    assert_eq!(F2_DROPPED.load(SeqCst), n);
    let st = cache.stats();
    assert_eq!(
        F2_WOULD_DEADLOCK.load(SeqCst),
        0,
        "destructors ran inside kfree_rcu_slab with the caller's lock held ({} sheaves recycled)",
        st.rcu_sheaves_recycled
    );
}

// ---------------------------------------------------------------------
// Finding 3: `may_recycle` checks only the cache's own RCU: a writer inside
// a read-side section of another RCU (another instance, the global one)
// runs destructors inside that section; one that waits for that RCU's
// grace period panics (or, unchecked, waits for itself).

static F3_IN_OTHER_READER: AtomicUsize = AtomicUsize::new(0);
static F3_DROPPED: AtomicUsize = AtomicUsize::new(0);

struct Watches {
    other: *const krcu::rcu::Rcu,
}

// SAFETY: the other instance outlives every object (the test waits for all
// before it drops it).
unsafe impl Send for Watches {}

impl Drop for Watches {
    fn drop(&mut self) {
        // SAFETY: see Send.
        if unsafe { &*self.other }.is_reading() {
            F3_IN_OTHER_READER.fetch_add(1, SeqCst);
        }
        F3_DROPPED.fetch_add(1, SeqCst);
    }
}

/// Read-side sections of another instance are seen where the validator
/// tracks the thread's read depth (debug builds, the `lockdep` feature);
/// a release build without it sees only the cache's own instance's.
#[cfg(any(debug_assertions, feature = "lockdep"))]
#[test]
fn no_destructor_runs_inside_a_read_section_of_another_rcu() {
    let k = instance_always();
    let other = instance();
    let cache = k.slab_cache::<Watches>("watches").unwrap();
    let n = 20_000;
    retire_until(
        &k,
        &cache,
        n,
        || Watches { other: other.rcu() },
        |retire| {
            let _g = other.rcu().read_lock();
            retire();
        },
        || false,
    );
    k.kvfree_rcu_barrier();
    assert_eq!(F3_DROPPED.load(SeqCst), n);
    // (Before the fix it recycled here, with destructors inside the other
    // instance's section; now its sheaves go to `call_rcu`.)
    assert_eq!(
        F3_IN_OTHER_READER.load(SeqCst),
        0,
        "destructors ran inside a read-side section of another instance"
    );
}

// ---------------------------------------------------------------------
// Finding 4: a thread-local's destructor on an exiting thread that retires
// boxes recycles there, and runs other objects' destructors while the
// thread's other thread-locals are already gone: a destructor that uses
// one panics (caught and counted: its `Drop` left unfinished), where it
// ran fine on the RCU worker before.

static F4_TLS_GONE: AtomicUsize = AtomicUsize::new(0);
static F4_DROPPED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// A thread-local with a destructor, used by `UsesTls`'s destructor.
    static F4_SCRATCH: core::cell::RefCell<Vec<u8>> = const { core::cell::RefCell::new(Vec::new()) };
}

struct UsesTls;

impl Drop for UsesTls {
    fn drop(&mut self) {
        F4_DROPPED.fetch_add(1, SeqCst);
        if F4_SCRATCH.try_with(|s| s.borrow_mut().push(1)).is_err() {
            // `with` would panic here (the panic is caught and counted by
            // recycling); counted without the noise.
            F4_TLS_GONE.fetch_add(1, SeqCst);
        }
    }
}

/// Allocates and retires boxes at thread exit, from a thread-local's
/// destructor (as a writer's own state would when its thread ends).
struct RetireAtExit {
    k: *const Krcu,
    cache: *const SlabCache<UsesTls>,
    n: usize,
    first: Option<krcu::slab::SlabBox<UsesTls>>,
}

impl Drop for RetireAtExit {
    fn drop(&mut self) {
        // SAFETY: the instance and cache outlive the thread (joined before
        // they drop).
        let (k, cache) = unsafe { (&*self.k, &*self.cache) };
        for i in 0..self.n {
            k.kfree_rcu_slab(cache.alloc_box(UsesTls).ok().unwrap())
                .unwrap();
            if i % 500 == 499 {
                k.rcu().synchronize();
            }
        }
        k.kfree_rcu_slab(self.first.take().unwrap()).unwrap();
    }
}

thread_local! {
    static F4_AT_EXIT: core::cell::RefCell<Option<RetireAtExit>> = const { core::cell::RefCell::new(None) };
}

#[test]
fn destructors_recycled_at_thread_exit_can_use_thread_locals() {
    let k = std::sync::Arc::new(instance());
    let cache = std::sync::Arc::new(k.slab_cache::<UsesTls>("uses-tls").unwrap());
    let n = 20_000;
    // A plain thread: `join` returns after its thread-locals' destructors
    // (a scoped thread's join does not wait for them).
    let t = {
        let (k, cache) = (k.clone(), cache.clone());
        std::thread::spawn(move || {
            // The slab's thread state first (destroyed last), then the
            // retiring thread-local, then the scratch one (destroyed first).
            let first = cache.alloc_box(UsesTls).ok().unwrap();
            F4_AT_EXIT.with(|r| {
                *r.borrow_mut() = Some(RetireAtExit {
                    k: std::sync::Arc::as_ptr(&k),
                    cache: std::sync::Arc::as_ptr(&cache),
                    n,
                    first: Some(first),
                });
            });
            F4_SCRATCH.with(|s| s.borrow_mut().clear());
        })
    };
    t.join().unwrap();
    k.kvfree_rcu_barrier();
    k.kvfree_rcu_barrier();
    assert_eq!(F4_DROPPED.load(SeqCst), n + 1);
    let st = cache.stats();
    assert_eq!(
        F4_TLS_GONE.load(SeqCst),
        0,
        "destructors ran on the exiting thread after its thread-locals ({} sheaves recycled)",
        st.rcu_sheaves_recycled
    );
}

// ---------------------------------------------------------------------
// Checked sound: a real-time thread never runs a recycled destructor.

static RT_ON_RT: AtomicUsize = AtomicUsize::new(0);
static RT_DROPPED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static RT_THREAD: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

struct RtSpy;

impl Drop for RtSpy {
    fn drop(&mut self) {
        if RT_THREAD.with(|t| t.get()) {
            RT_ON_RT.fetch_add(1, SeqCst);
        }
        RT_DROPPED.fetch_add(1, SeqCst);
    }
}

#[test]
fn a_real_time_thread_never_runs_recycled_destructors() {
    let k = instance_always();
    let cache = k.slab_cache::<RtSpy>("rt-spies").unwrap();
    let n = 20_000;
    std::thread::scope(|s| {
        s.spawn(|| {
            let _rt = k.register_thread();
            RT_THREAD.with(|t| t.set(true));
            for i in 0..n {
                let b = cache.alloc_box(RtSpy).ok().unwrap();
                k.kfree_rcu_slab(b).unwrap();
                if i % 500 == 499 {
                    // Let grace periods end (no synchronize on a real-time
                    // thread).
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            RT_THREAD.with(|t| t.set(false));
        });
    });
    k.kvfree_rcu_barrier();
    assert_eq!(RT_DROPPED.load(SeqCst), n);
    assert_eq!(RT_ON_RT.load(SeqCst), 0, "{:?}", cache.stats());
}

// ---------------------------------------------------------------------
// Checked sound: the validator reports nothing on the recycling paths
// (allocation swapping the spare in, retire, recycle, with destructors that
// use the cache), and the cache is empty after barrier and shrink.

struct UsesCache {
    cache: *const SlabCache<UsesCache>,
    k: *const Krcu,
    child: bool,
}

// SAFETY: the cache and instance outlive every object (barrier before drop).
unsafe impl Send for UsesCache {}

impl Drop for UsesCache {
    fn drop(&mut self) {
        if self.child {
            return;
        }
        // SAFETY: see Send.
        let (cache, k) = unsafe { (&*self.cache, &*self.k) };
        // Allocate from and retire into the same cache.
        let c = cache
            .alloc_box(UsesCache {
                cache: self.cache,
                k: self.k,
                child: true,
            })
            .ok()
            .unwrap();
        k.kfree_rcu_slab(c).unwrap();
    }
}

#[test]
fn the_validator_reports_nothing_on_the_recycling_paths() {
    if !krcu::lockdep::COMPILED {
        return;
    }
    let log = krcu::lockdep::ReportLog::new();
    let k = Krcu::builder()
        .assist(krcu::kvfree::Assist::Always)
        .arena_size(64 << 20)
        .lockdep(true)
        .report_handler(krcu::lockdep::ReportHandler::Collect(log.clone()))
        .build()
        .unwrap();
    let cache = k.slab_cache::<UsesCache>("uses-cache").unwrap();
    retire_until(
        &k,
        &cache,
        20_000,
        || UsesCache {
            cache: &cache,
            k: &k,
            child: false,
        },
        |f| f(),
        || false,
    );
    k.kvfree_rcu_barrier();
    k.kvfree_rcu_barrier();
    krcu::lockdep::flush_deferred_reports();
    let st = cache.stats();
    assert!(st.rcu_sheaves_recycled > 0, "{st:?}");
    assert!(log.reports().is_empty(), "{:?}", log.reports());
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0, "{:?}", cache.stats());
    // A `T` without drop glue recycles inside the writer's own read-side
    // section (nothing runs there but the sheaf moves): nothing reported.
    let plain = k.slab_cache::<[u64; 4]>("plain").unwrap();
    retire_until(
        &k,
        &plain,
        20_000,
        || [7; 4],
        |f| {
            let _g = k.rcu().read_lock();
            f();
        },
        || false,
    );
    k.kvfree_rcu_barrier();
    krcu::lockdep::flush_deferred_reports();
    assert!(
        plain.stats().rcu_sheaves_recycled > 0,
        "{:?}",
        plain.stats()
    );
    assert!(log.reports().is_empty(), "{:?}", log.reports());
    plain.shrink();
    assert_eq!(plain.stats().slabs, 0, "{:?}", plain.stats());
}

// ---------------------------------------------------------------------
// Finding 5: a thread that retires objects but allocates none from the
// cache (a consumer retiring what a producer allocated) recycles one sheaf
// into its spare, which then stays full (only an allocation swaps it out),
// so it never recycles again: every later sheaf waits on its list until
// the list's 4 MiB bound pushes it to `call_rcu`, long after its grace
// period ended, while the thread keeps retiring (so the monitor never
// sees it idle). Before, each full sheaf went to `call_rcu` at once.

struct Numbered {
    id: usize,
    dropped: &'static [AtomicBool],
}

impl Drop for Numbered {
    fn drop(&mut self) {
        self.dropped[self.id].store(true, SeqCst);
    }
}

#[test]
fn a_retire_only_threads_objects_are_dropped_after_their_grace_period() {
    // The monitor's passes 2 s apart: under load the consumer below may
    // pause long enough for two 250 us passes to find it idle and submit
    // its list, which would hide the finding.
    let k = Krcu::builder()
        .assist(krcu::kvfree::Assist::Always)
        .arena_size(64 << 20)
        .kvfree_config({
            let mut c = krcu::kvfree::KvfreeConfig::default();
            c.active_poll = Duration::from_secs(2);
            c
        })
        .build()
        .unwrap();
    let cache = k.slab_cache::<Numbered>("numbered").unwrap();
    let most = 2_000_000;
    let measured = 20_000;
    let dropped: &'static [AtomicBool] =
        Box::leak((0..most).map(|_| AtomicBool::new(false)).collect());
    let issued = AtomicUsize::new(0);
    let retired = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let cap = cache.sheaf_capacity();
    let late = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        // The producer allocates; the consumer only retires, without a
        // pause (so the monitor never finds it idle).
        s.spawn(|| {
            let tx = tx;
            for id in 0..most {
                if stop.load(SeqCst) {
                    break;
                }
                let b = cache.alloc_box(Numbered { id, dropped }).ok().unwrap();
                issued.store(id + 1, SeqCst);
                if tx.send(b).is_err() {
                    break;
                }
            }
        });
        s.spawn(|| {
            for b in rx {
                k.kfree_rcu_slab(b).unwrap();
                retired.fetch_add(1, SeqCst);
            }
        });
        // The first `measured` objects are in full sheaves the consumer
        // has moved past (two sheaves more, and it keeps retiring).
        wait_for("the consumer", Duration::from_secs(120), || {
            retired.load(SeqCst) >= measured + 2 * cap
        });
        k.rcu().synchronize();
        k.rcu().rcu_barrier();
        let late = dropped[..measured]
            .iter()
            .filter(|d| !d.load(SeqCst))
            .count();
        stop.store(true, SeqCst);
        late
    });
    k.kvfree_rcu_barrier();
    let issued = issued.load(SeqCst);
    assert!(dropped[..issued].iter().all(|d| d.load(SeqCst)));
    assert_eq!(
        late,
        0,
        "{late} of {measured} objects not dropped a grace period (and rcu_barrier) after \
         their sheaf was full: {:?}",
        cache.stats()
    );
}

// ---------------------------------------------------------------------
// Checked sound: a SIGUSR1 handler retiring boxes of the same cache with
// `kfree_rcu_slab` while it interrupts a writer that recycles (inside its
// slot sections and its destructors included); readers check the poison
// word and the whole object; every object dropped once; nothing left
// after barrier and shrink.

struct SigTarget {
    k: *const Krcu,
    boxes: Vec<std::sync::atomic::AtomicPtr<common::Obj>>,
    next: AtomicUsize,
    queued: AtomicUsize,
    refused: AtomicUsize,
}

static SIG_TARGET: std::sync::atomic::AtomicPtr<SigTarget> =
    std::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

extern "C" fn retire_in_handler(_: libc::c_int) {
    let _irq = krcu::context::enter_hardirq();
    let t = SIG_TARGET.load(Acquire);
    if t.is_null() {
        return;
    }
    // SAFETY: published only while the test runs; cleared (every signal
    // delivered) before it goes.
    let t = unsafe { &*t };
    let i = t.next.fetch_add(1, Relaxed);
    let Some(slot) = t.boxes.get(i) else { return };
    let p = slot.swap(core::ptr::null_mut(), AcqRel);
    let Some(p) = core::ptr::NonNull::new(p) else {
        return;
    };
    // SAFETY: from `SlabBox::into_raw`, taken once (the swap).
    let b = unsafe { krcu::slab::SlabBox::from_raw(p) };
    // SAFETY: see above.
    match unsafe { &*t.k }.kfree_rcu_slab(b) {
        Ok(()) => t.queued.fetch_add(1, Relaxed),
        Err(e) => {
            // Handed back: keep it for the test to retire.
            slot.store(
                krcu::slab::SlabBox::into_raw(e.into_inner()).as_ptr(),
                Release,
            );
            t.refused.fetch_add(1, Relaxed)
        }
    };
}

#[test]
fn a_signal_handler_retiring_into_the_cache_of_a_recycling_writer() {
    use common::{Ledger, Obj};
    use krcu::slab::SlabBox;
    use std::sync::atomic::AtomicPtr;
    let _serial = common::signal_lock();
    let k = instance_always();
    let cache = k.slab_cache::<Obj>("signalled").unwrap();
    let handler_boxes = 20_000;
    let writes = 200_000;
    let ledger = Ledger::new(handler_boxes + writes + 64);
    let target = SigTarget {
        k: &k,
        boxes: (0..handler_boxes)
            .map(|_| {
                let b = cache.alloc_box(*Obj::new(&ledger)).ok().unwrap();
                AtomicPtr::new(SlabBox::into_raw(b).as_ptr())
            })
            .collect(),
        next: AtomicUsize::new(0),
        queued: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
    };
    // SAFETY: the handler uses atomics and kfree_rcu_slab's handler path.
    unsafe { common::set_handler(libc::SIGUSR1, retire_in_handler, libc::SA_RESTART) };
    SIG_TARGET.store(core::ptr::from_ref(&target).cast_mut(), Release);
    let slots: Vec<AtomicPtr<Obj>> = (0..32)
        .map(|_| AtomicPtr::new(core::ptr::null_mut()))
        .collect();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (k, cache, ledger, slots, stop) = (&k, &cache, &ledger, &slots, &stop);
        for _ in 0..2 {
            s.spawn(|| {
                let reader = k.rcu().register_thread();
                while !stop.load(Relaxed) {
                    let _g = reader.read_lock();
                    for slot in slots.iter() {
                        let p = slot.load(Acquire);
                        if !p.is_null() {
                            // SAFETY: published objects live until a grace
                            // period after they are unlinked.
                            unsafe { (*p).check() };
                        }
                    }
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = s.spawn(move || {
            // SAFETY: pthread_self is always safe.
            tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
            let mut owned: Vec<Option<SlabBox<Obj>>> = (0..slots.len()).map(|_| None).collect();
            for i in 0..writes {
                let new = cache.alloc_box(*Obj::new(ledger)).ok().unwrap();
                let j = i % slots.len();
                slots[j].store(SlabBox::as_ptr(&new).cast_mut(), Release);
                if let Some(old) = owned[j].replace(new) {
                    k.kfree_rcu_slab(old).unwrap();
                }
                if i % 5_000 == 4_999 {
                    k.rcu().synchronize();
                }
            }
            for (j, b) in owned.into_iter().enumerate() {
                slots[j].store(core::ptr::null_mut(), Release);
                k.kfree_rcu_slab(b.unwrap()).unwrap();
            }
        });
        let thread = rx.recv().unwrap() as libc::pthread_t;
        while !writer.is_finished() {
            // SAFETY: the writer is alive until joined below (the scope).
            unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
            std::thread::sleep(Duration::from_micros(50));
        }
        stop.store(true, Relaxed);
    });
    SIG_TARGET.store(core::ptr::null_mut(), Release);
    // Whatever the handler did not take (or handed back) goes now.
    for slot in &target.boxes {
        let p = slot.swap(core::ptr::null_mut(), AcqRel);
        if let Some(p) = core::ptr::NonNull::new(p) {
            // SAFETY: as in the handler.
            k.kfree_rcu_slab(unsafe { SlabBox::from_raw(p) }).unwrap();
        }
    }
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    let st = cache.stats();
    assert!(
        target.queued.load(Relaxed) > 0,
        "no handler retired: {st:?}"
    );
    assert!(st.rcu_sheaves_recycled > 0, "{st:?}");
    assert_eq!((st.bad_frees, st.destructor_panics), (0, 0), "{st:?}");
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0, "{:?}", cache.stats());
}

// ---------------------------------------------------------------------
// Checked sound: a destructor run by recycling drops the cache's last
// handle (the cache is retired under the recycling thread, between its
// two sections), and the thread goes on retiring into the orphaned cache;
// every object dropped once, no deadlock.

thread_local! {
    static HOLDS_WRITER: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

struct HoldsCache {
    cache: Option<std::sync::Arc<SlabCache<HoldsCache>>>,
    dropped: &'static AtomicUsize,
    last_handle_dropped: &'static AtomicBool,
}

impl Drop for HoldsCache {
    fn drop(&mut self) {
        if let Some(c) = self.cache.take() {
            let last = std::sync::Arc::strong_count(&c) == 1;
            drop(c);
            let on_writer = HOLDS_WRITER.with(|w| w.get());
            self.last_handle_dropped.store(last && on_writer, SeqCst);
        }
        self.dropped.fetch_add(1, SeqCst);
    }
}

#[test]
fn a_recycled_destructor_drops_the_caches_last_handle() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    static LAST: AtomicBool = AtomicBool::new(false);
    let k = instance_always();
    let n = 20_000;
    std::thread::scope(|s| {
        s.spawn(|| {
            HOLDS_WRITER.with(|w| w.set(true));
            let cache = std::sync::Arc::new(k.slab_cache::<HoldsCache>("holds").unwrap());
            let mut boxes: Vec<_> = (0..n)
                .map(|_| {
                    cache
                        .alloc_box(HoldsCache {
                            cache: None,
                            dropped: &DROPPED,
                            last_handle_dropped: &LAST,
                        })
                        .ok()
                        .unwrap()
                })
                .collect();
            boxes[0].cache = Some(cache.clone());
            drop(cache);
            for (i, b) in boxes.into_iter().enumerate() {
                k.kfree_rcu_slab(b).unwrap();
                if i % 500 == 499 {
                    k.rcu().synchronize();
                }
            }
        });
    });
    k.kvfree_rcu_barrier();
    k.kvfree_rcu_barrier();
    assert_eq!(DROPPED.load(SeqCst), n);
    assert!(
        LAST.load(SeqCst),
        "the last handle was not dropped by recycling on the writer"
    );
}

// ---------------------------------------------------------------------
// Checked sound: destructors run by recycling that wait (a
// `kvfree_rcu_barrier` of the same instance, a `synchronize`) on the
// writer thread: no deadlock, everything dropped once.

struct Waits {
    k: *const Krcu,
    kind: u8,
    dropped: &'static AtomicUsize,
    waited_on_writer: &'static AtomicUsize,
}

// SAFETY: the instance outlives every object (barrier before it drops).
unsafe impl Send for Waits {}

thread_local! {
    static WAITS_WRITER: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

impl Drop for Waits {
    fn drop(&mut self) {
        // SAFETY: see Send.
        let k = unsafe { &*self.k };
        if WAITS_WRITER.with(|w| w.get()) {
            match self.kind {
                1 => k.kvfree_rcu_barrier(),
                2 => k.rcu().synchronize(),
                _ => {}
            }
            if self.kind != 0 {
                self.waited_on_writer.fetch_add(1, SeqCst);
            }
        }
        self.dropped.fetch_add(1, SeqCst);
    }
}

#[test]
fn recycled_destructors_that_wait_for_the_instance_do_not_deadlock() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    static WAITED: AtomicUsize = AtomicUsize::new(0);
    let k = std::sync::Arc::new(instance_always());
    let cache = std::sync::Arc::new(k.slab_cache::<Waits>("waits").unwrap());
    let n = 20_000;
    let writer = {
        let (k, cache) = (k.clone(), cache.clone());
        std::thread::spawn(move || {
            WAITS_WRITER.with(|w| w.set(true));
            retire_until(
                &k,
                &cache,
                n,
                {
                    let mut i = 0u32;
                    let kp = std::sync::Arc::as_ptr(&k);
                    move || {
                        i += 1;
                        Waits {
                            k: kp,
                            kind: if i.is_multiple_of(997) {
                                1
                            } else if i.is_multiple_of(991) {
                                2
                            } else {
                                0
                            },
                            dropped: &DROPPED,
                            waited_on_writer: &WAITED,
                        }
                    }
                },
                |f| f(),
                || false,
            );
        })
    };
    wait_for("the writer (deadlocked?)", Duration::from_secs(120), || {
        writer.is_finished()
    });
    writer.join().unwrap();
    k.kvfree_rcu_barrier();
    k.kvfree_rcu_barrier();
    assert_eq!(DROPPED.load(SeqCst), n);
    assert!(
        WAITED.load(SeqCst) > 0,
        "no waiting destructor ran on the writer"
    );
    assert_eq!(cache.stats().destructor_panics, 0, "{:?}", cache.stats());
}

// ---------------------------------------------------------------------
// Checked sound: takers (shrink, kvfree_rcu_barrier, the monitor) racing a
// recycling writer, readers checking every published object's poison word
// and payload: every object dropped once, nothing left after barrier and
// shrink.

#[test]
fn takers_racing_a_recycling_writer_under_readers() {
    use common::{Ledger, Obj};
    use krcu::slab::SlabBox;
    use std::sync::atomic::AtomicPtr;
    let k = instance_always();
    let cache = k.slab_cache::<Obj>("raced").unwrap();
    let writes = 300_000;
    let ledger = Ledger::new(writes + 64);
    let slots: Vec<AtomicPtr<Obj>> = (0..64)
        .map(|_| AtomicPtr::new(core::ptr::null_mut()))
        .collect();
    let stop = AtomicBool::new(false);
    let takes = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let reader = k.rcu().register_thread();
                while !stop.load(Relaxed) {
                    let _g = reader.read_lock();
                    for slot in &slots {
                        let p = slot.load(Acquire);
                        if !p.is_null() {
                            // SAFETY: published objects live until a grace
                            // period after they are unlinked.
                            unsafe { (*p).check() };
                        }
                    }
                }
            });
        }
        s.spawn(|| {
            while !stop.load(Relaxed) {
                cache.shrink();
                k.kvfree_rcu_barrier();
                takes.fetch_add(1, Relaxed);
            }
        });
        let mut owned: Vec<Option<SlabBox<Obj>>> = (0..slots.len()).map(|_| None).collect();
        for i in 0..writes {
            let new = cache.alloc_box(*Obj::new(&ledger)).ok().unwrap();
            let j = (i * 7) % slots.len();
            slots[j].store(SlabBox::as_ptr(&new).cast_mut(), Release);
            if let Some(old) = owned[j].replace(new) {
                k.kfree_rcu_slab(old).unwrap();
            }
        }
        for (j, b) in owned.into_iter().enumerate() {
            slots[j].store(core::ptr::null_mut(), Release);
            k.kfree_rcu_slab(b.unwrap()).unwrap();
        }
        wait_for("a few takes", Duration::from_secs(120), || {
            takes.load(Relaxed) >= 3
        });
        stop.store(true, Relaxed);
    });
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    let st = cache.stats();
    assert_eq!((st.bad_frees, st.destructor_panics), (0, 0), "{st:?}");
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0, "{:?}", cache.stats());
}

// ---------------------------------------------------------------------
// Checked sound: an exited writer's spare (recycled free objects), main
// and waiting sheaves all come back: every object dropped once and no
// slab left after barrier and shrink.

#[test]
fn an_exited_writers_sheaves_all_come_back() {
    use common::{Ledger, Obj};
    let k = instance_always();
    let cache = k.slab_cache::<Obj>("exited").unwrap();
    let n = 50_000;
    let ledger = Ledger::new(n);
    std::thread::scope(|s| {
        s.spawn(|| {
            retire_until(&k, &cache, n, || *Obj::new(&ledger), |f| f(), || false);
        });
    });
    let st = cache.stats();
    assert!(st.rcu_sheaves_recycled > 0, "{st:?}");
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0, "{:?}", cache.stats());
}

// ---------------------------------------------------------------------
// Finding 6: the waiting list of a live thread is out of reach of memory
// pressure: after a reader held the grace period off (the list filled to
// its 4 MiB bound), and then ended, a writer that pauses keeps every
// object of its list, grace period long over, through `shrink` (what the
// page allocator's shrinker runs) and `rcu_barrier`; only its next
// retires (one sheaf each) or the monitor's idle passes free them.
// Before, full sheaves went to `call_rcu` and were freed after the reader.

#[test]
fn shrink_reclaims_a_paused_writers_objects_past_their_grace_period() {
    use common::{Ledger, Obj};
    // The monitor's passes 2 s apart (as in finding 5).
    let k = std::sync::Arc::new(
        Krcu::builder()
            .assist(krcu::kvfree::Assist::Always)
            .arena_size(64 << 20)
            .kvfree_config({
                let mut c = krcu::kvfree::KvfreeConfig::default();
                c.active_poll = Duration::from_secs(2);
                c
            })
            .build()
            .unwrap(),
    );
    let cache = std::sync::Arc::new(k.slab_cache::<Obj>("paused").unwrap());
    let n = 100_000;
    let ledger = Ledger::new(n);
    let held = std::sync::Arc::new(std::sync::Barrier::new(2));
    let paused = std::sync::Arc::new(std::sync::Barrier::new(2));
    let resume = std::sync::Arc::new(std::sync::Barrier::new(2));
    let writer = {
        let (k, cache, ledger, held, paused, resume) = (
            k.clone(),
            cache.clone(),
            ledger.clone(),
            held.clone(),
            paused.clone(),
            resume.clone(),
        );
        std::thread::spawn(move || {
            held.wait();
            for _ in 0..n {
                let b = cache.alloc_box(*Obj::new(&ledger)).ok().unwrap();
                k.kfree_rcu_slab(b).unwrap();
            }
            held.wait();
            paused.wait(); // alive, idle, until measured
            resume.wait();
        })
    };
    {
        let _g = k.rcu().read_lock();
        held.wait();
        held.wait();
    }
    paused.wait();
    // The reader is gone: a grace period, callbacks done, memory pressure.
    k.rcu().synchronize();
    k.rcu().rcu_barrier();
    cache.shrink();
    k.rcu().rcu_barrier();
    let kept = n as u64 - ledger.dropped.load(SeqCst);
    let st = cache.stats();
    resume.wait();
    writer.join().unwrap();
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    // At most the writer's partly filled sheaf.
    assert!(
        kept <= cache.sheaf_capacity() as u64,
        "{kept} objects past their grace period kept through shrink: {st:?}"
    );
}

// ---------------------------------------------------------------------
// Checked sound: with consistency checks on (an object handed out twice,
// or freed twice, panics), a writer recycling `rcu_free` sheaves of raw
// objects under readers that check every published object; every object
// dropped once, every page back.

#[test]
fn with_consistency_checks_nothing_is_handed_out_or_freed_twice() {
    use common::{Ledger, Obj};
    use std::sync::atomic::AtomicPtr;
    let pa = common::pages::allocator_on_cpus(2, 32 << 20);
    let rcu = std::sync::Arc::new(krcu::rcu::Rcu::new(
        krcu::Domain::global(),
        krcu::rcu::RcuConfig::default(),
    ));
    let cache = SlabCache::<Obj>::builder(&pa)
        .name("checked")
        .sheaf_capacity(8)
        .checks(true)
        .rcu(rcu.clone())
        .build()
        .unwrap();
    let writes = 200_000;
    let ledger = Ledger::new(writes + 64);
    let slots: Vec<AtomicPtr<Obj>> = (0..16)
        .map(|_| AtomicPtr::new(core::ptr::null_mut()))
        .collect();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let reader = rcu.register_thread();
            while !stop.load(Relaxed) {
                let _g = reader.read_lock();
                for slot in &slots {
                    let p = slot.load(Acquire);
                    if !p.is_null() {
                        // SAFETY: published objects live until a grace
                        // period after they are unlinked.
                        unsafe { (*p).check() };
                    }
                }
            }
        });
        let mut owned: Vec<Option<core::ptr::NonNull<Obj>>> = vec![None; slots.len()];
        let retire = |p: core::ptr::NonNull<Obj>| {
            // SAFETY: allocated from this cache, unlinked, retired once.
            if let Err(p) = unsafe { cache.testing_kfree_rcu_sheaf(p) } {
                rcu.synchronize();
                // SAFETY: handed back untouched; a grace period later.
                unsafe { cache.free(p) };
            }
        };
        for i in 0..writes {
            let new = cache
                .alloc(krcu::page::Gfp::KERNEL, *Obj::new(&ledger))
                .ok()
                .unwrap();
            let j = (i * 5) % slots.len();
            slots[j].store(new.as_ptr(), Release);
            if let Some(old) = owned[j].replace(new) {
                retire(old);
            }
            if i % 20_000 == 19_999 {
                rcu.synchronize();
            }
        }
        for (j, p) in owned.into_iter().enumerate() {
            slots[j].store(core::ptr::null_mut(), Release);
            retire(p.unwrap());
        }
        stop.store(true, Relaxed);
    });
    cache.testing_submit_rcu_sheaves();
    rcu.rcu_barrier();
    cache.testing_rcu_sheaf_barrier();
    ledger.assert_all_freed_once();
    let st = cache.stats();
    assert!(st.rcu_sheaves_recycled > 0, "{st:?}");
    assert_eq!((st.bad_frees, st.destructor_panics), (0, 0), "{st:?}");
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0, "{:?}", cache.stats());
    drop(cache);
    common::pages::assert_all_pages_back(&pa);
}

// ---------------------------------------------------------------------
// Checked sound: fork while this thread and another (alive, paused)
// hold waiting lists and spares: in the child this thread goes on
// recycling, and a barrier takes the other thread's list; every object
// dropped once, no slab left after shrink.

#[test]
fn fork_with_waiting_lists_on_two_threads() {
    use common::{Ledger, Obj};
    let k = std::sync::Arc::new(instance_always());
    let cache = std::sync::Arc::new(k.slab_cache::<Obj>("forked").unwrap());
    let n = 20_000;
    let ledger = Ledger::new(4 * n);
    let (ready, done) = (
        std::sync::Arc::new(std::sync::Barrier::new(2)),
        std::sync::Arc::new(std::sync::Barrier::new(2)),
    );
    let other = {
        let (k, cache, ledger, ready, done) = (
            k.clone(),
            cache.clone(),
            ledger.clone(),
            ready.clone(),
            done.clone(),
        );
        std::thread::spawn(move || {
            retire_until(&k, &cache, n, || *Obj::new(&ledger), |f| f(), || false);
            ready.wait();
            done.wait();
        })
    };
    retire_until(&k, &cache, n, || *Obj::new(&ledger), |f| f(), || false);
    ready.wait();
    let code = common::child::fork_run("child", Duration::from_secs(120), || {
        retire_until(&k, &cache, n, || *Obj::new(&ledger), |f| f(), || false);
        k.kvfree_rcu_barrier();
        k.kvfree_rcu_barrier();
        let issued = ledger.issued() as u64;
        let dropped = ledger.dropped.load(SeqCst);
        let twice = ledger.double_frees.load(SeqCst);
        let st = cache.stats();
        cache.shrink();
        let slabs = cache.stats().slabs;
        if dropped != issued || twice != 0 || st.rcu_sheaves_recycled == 0 || slabs != 0 {
            eprintln!(
                "child: issued {issued} dropped {dropped} twice {twice} slabs {slabs} {st:?}"
            );
            return 1;
        }
        0
    });
    done.wait();
    other.join().unwrap();
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    assert_eq!(code, 0, "the child found objects lost or slabs left");
}
