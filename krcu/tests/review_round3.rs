//! Adversarial review, round 3: failing tests for the round-2 fixes.

mod common;

use krcu::Domain;
use krcu::page::Gfp;
use krcu::slab::SlabCache;
use std::time::{Duration, Instant};

/// Set in the child process a test runs its work in (see
/// [`common::child::in_child_else_run`]).
const CHILD_VAR: &str = "REVIEW_ROUND3_CHILD";

/// In the child, true: the test `name` does its work. In the parent, runs
/// `name` in the child, fails unless it passed within `limit`, and returns
/// false.
fn in_child(name: &str, limit: Duration) -> bool {
    common::child::in_child_else_run(CHILD_VAR, name, limit)
}

/// A panic payload whose own destructor panics.
struct NastyPayload;

impl Drop for NastyPayload {
    fn drop(&mut self) {
        panic!("the payload's drop panics");
    }
}

/// An object whose destructor panics with a [`NastyPayload`].
#[derive(Debug)]
struct PanicsOnDrop(#[allow(dead_code)] u64);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        std::panic::panic_any(NastyPayload);
    }
}

/// Finding 1: `free_bulk` of a batch holding an object whose destructor
/// panics and a bad pointer (a detected double free). In debug builds the
/// bad-free report panics *inside* `free_bulk_with`, after the first
/// destructor panic was stashed in `free_bulk`'s `first_panic`: unwinding
/// drops that payload, whose destructor panics, which is a panic while
/// panicking: the process aborts. (`free_bulk` drops later payloads with
/// `drop_panic_payload` for exactly this reason, but not the stashed one.)
/// Even with a harmless payload the documented "the first panic is
/// resumed" is broken: the caller sees the bad-free panic instead.
#[cfg(debug_assertions)]
#[test]
fn free_bulk_with_a_panicking_destructor_and_a_bad_free_does_not_abort() {
    if !in_child(
        "free_bulk_with_a_panicking_destructor_and_a_bad_free_does_not_abort",
        Duration::from_secs(20),
    ) {
        return;
    }
    let pa = common::pages::allocator_on_cpus(1, 4 << 20);
    let cache = SlabCache::<PanicsOnDrop>::new(&pa, "nasty").unwrap();
    let freed = cache.alloc(Gfp::KERNEL, PanicsOnDrop(0)).unwrap();
    let mut forgot = false;
    // SAFETY: `freed` came from this cache; its destructor's panic is
    // caught here. The second free below is the detected bad input.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
        cache.free(freed)
    }));
    if let Err(p) = r {
        // The payload panics when dropped: keep it.
        core::mem::forget(p);
        forgot = true;
    }
    assert!(forgot);
    let live = cache.alloc(Gfp::KERNEL, PanicsOnDrop(1)).unwrap();
    let mut batch = [live, freed];
    // SAFETY: `live` is a live object of this cache; `freed` was freed
    // already, a double free the cache detects (consistency checks are
    // on in debug builds) and refuses before touching it.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
        cache.free_bulk(&mut batch)
    }));
    let payload = r.expect_err("free_bulk reported nothing");
    let first = payload.is::<NastyPayload>();
    core::mem::forget(payload);
    assert!(first, "the first (destructor) panic was not resumed");
}

/// Finding 2: a thread's first read in a `pthread` key destructor that
/// runs in the second round (after Rust's thread teardown finished)
/// aborts the process: `acquire_slot` calls `ThreadInfo::current`, which
/// calls `std::thread::current()`, which panics once the thread's std
/// data is gone; the panic cannot unwind out of the `extern "C"`
/// destructor.
#[test]
fn a_first_read_in_a_second_round_key_destructor_does_not_abort() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    if !in_child(
        "a_first_read_in_a_second_round_key_destructor_does_not_abort",
        Duration::from_secs(25),
    ) {
        return;
    }
    static KEY: std::sync::OnceLock<libc::pthread_key_t> = std::sync::OnceLock::new();
    static RCU: std::sync::OnceLock<&'static krcu::rcu::Rcu> = std::sync::OnceLock::new();
    static ROUND: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn key_dtor(_: *mut libc::c_void) {
        if ROUND.fetch_add(1, SeqCst) == 0 {
            // SAFETY: a live key; the value is only a non-null marker.
            unsafe {
                libc::pthread_setspecific(*KEY.get().unwrap(), core::ptr::dangling::<u8>().cast())
            };
            return;
        }
        drop(RCU.get().unwrap().read_lock());
        ROUND.store(100, SeqCst);
    }
    let rcu = private_rcu();
    RCU.set(rcu).ok().unwrap();
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: valid out pointer; the destructor ignores the value.
    let r = unsafe { libc::pthread_key_create(&mut key, Some(key_dtor)) };
    assert_eq!(r, 0);
    KEY.set(key).unwrap();
    std::thread::spawn(move || {
        // SAFETY: a live key; the value is only a non-null marker.
        unsafe { libc::pthread_setspecific(key, core::ptr::dangling::<u8>().cast()) };
    })
    .join()
    .unwrap();
    let t = Instant::now();
    while ROUND.load(SeqCst) != 100 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ROUND.load(SeqCst), 100, "the second round never read");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rcu.stats().readers, 0, "the key destructor's slot leaked");
}

type Keys = std::sync::OnceLock<(libc::pthread_key_t, libc::pthread_key_t)>;

/// Makes two `pthread` keys of "another library", K1 with `k1_dtor` before
/// krcu's late key and K2 with `k2_dtor` after it (both after std's key),
/// keeps them in `keys`, and starts a raw `pthread` running `start`;
/// returns it, to be joined.
fn split_keys_then_start(
    keys: &Keys,
    k1_dtor: extern "C" fn(*mut libc::c_void),
    k2_dtor: extern "C" fn(*mut libc::c_void),
    start: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
) -> libc::pthread_t {
    let (mut k0, mut k1, mut k2): (
        libc::pthread_key_t,
        libc::pthread_key_t,
        libc::pthread_key_t,
    ) = (0, 0, 0);
    // A key without destructor first: it takes any free index below
    // std's key, so that K1 comes after std's key.
    // SAFETY: valid out pointer; no destructor.
    let r = unsafe { libc::pthread_key_create(&mut k0, None) };
    assert_eq!(r, 0);
    // SAFETY: valid out pointer; the destructor ignores the value.
    let r = unsafe { libc::pthread_key_create(&mut k1, Some(k1_dtor)) };
    assert_eq!(r, 0);
    // krcu's late key is made at a thread's first registration: here,
    // between K1 and K2 (another instance, so the test's stays untouched).
    drop(private_rcu().read_lock());
    // SAFETY: as above.
    let r = unsafe { libc::pthread_key_create(&mut k2, Some(k2_dtor)) };
    assert_eq!(r, 0);
    keys.set((k1, k2)).unwrap();
    let mut t: libc::pthread_t = 0;
    // SAFETY: valid out pointer, default attributes, a start routine that
    // ignores its argument; the caller joins it.
    let r =
        unsafe { libc::pthread_create(&mut t, core::ptr::null(), start, core::ptr::null_mut()) };
    assert_eq!(r, 0);
    t
}

/// On the calling thread, gives both keys in `keys` a value (a non-null
/// marker), so that their destructors run when it exits.
fn set_both(keys: &Keys) {
    let (k1, k2) = *keys.get().unwrap();
    // SAFETY: live keys; the values are only non-null markers.
    unsafe {
        libc::pthread_setspecific(k1, core::ptr::dangling::<u8>().cast());
        libc::pthread_setspecific(k2, core::ptr::dangling::<u8>().cast());
    }
}

fn private_rcu() -> &'static krcu::rcu::Rcu {
    Box::leak(Box::new(krcu::rcu::Rcu::new(
        Domain::global(),
        krcu::rcu::RcuConfig::default(),
    )))
}

/// The scenario of finding 3, on a thread that is not a Rust
/// thread (a raw `pthread`, as a C library's, which never touched a Rust
/// thread-local), so that std's own teardown key has no value until the
/// first round: two `pthread` keys of another library, K1 made before
/// krcu's late key and K2 after it (both after std's key), so that in the
/// first round of key destructors K1's runs, then krcu's late-list
/// destructor, then K2's, all before std tears the thread's data down.
/// K1's destructor registers the thread with `rcu` (`register_thread`:
/// the thread's first use of krcu, after the thread-local destructors
/// ran); the late-list destructor retires that registration list (the
/// handle's slot A, held, moves to a new late list); K2's destructor reads
/// once with `read_lock` and drops the handle.
///
/// The late-list destructor emptied the registration list but the list is
/// still alive, so K2's `read_lock` registers a *second* slot B in it;
/// dropping the handle then finds that registration (by instance id),
/// removes it and releases the handle's slot A; the next round's late-list
/// destructor finds A (moved there as held, now unheld) and releases it
/// again. A is on the free list twice, and B is taken for good.
fn run_split_key_destructors(rcu: &'static krcu::rcu::Rcu) {
    use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::SeqCst};
    static RCU: std::sync::OnceLock<&'static krcu::rcu::Rcu> = std::sync::OnceLock::new();
    static KEYS: Keys = Keys::new();
    static HANDLE: AtomicPtr<krcu::rcu::ReaderHandle> = AtomicPtr::new(core::ptr::null_mut());
    static DONE: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn k1_dtor(_: *mut libc::c_void) {
        let h = Box::new(RCU.get().unwrap().register_thread());
        HANDLE.store(Box::into_raw(h), SeqCst);
    }
    extern "C" fn k2_dtor(_: *mut libc::c_void) {
        let rcu = *RCU.get().unwrap();
        let g = rcu.read_lock();
        drop(g);
        let h = HANDLE.swap(core::ptr::null_mut(), SeqCst);
        if !h.is_null() {
            // SAFETY: from Box::into_raw in k1_dtor, on this same thread.
            drop(unsafe { Box::from_raw(h) });
        }
        DONE.store(1, SeqCst);
    }
    extern "C" fn start(_: *mut libc::c_void) -> *mut libc::c_void {
        set_both(&KEYS);
        core::ptr::null_mut()
    }
    RCU.set(rcu).ok().unwrap();
    let t = split_keys_then_start(&KEYS, k1_dtor, k2_dtor, start);
    // SAFETY: `t` is our joinable thread, joined once.
    let r = unsafe { libc::pthread_join(t, core::ptr::null_mut()) };
    assert_eq!(r, 0);
    let t = Instant::now();
    while DONE.load(SeqCst) == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(DONE.load(SeqCst), 1, "K2's destructor never finished");
    std::thread::sleep(Duration::from_millis(100));
}

/// Finding 3: the slot released twice is handed to two threads at once.
/// Thread X reads under it and stays inside its section; thread Y reads
/// under the same slot (its `read_lock` nests on X's count) and exits: Y's
/// teardown finds "its" slot open, orphans it, and its late-list
/// destructor ends "the leaked section", storing 0 into X's counter. A
/// grace period then completes while X is still inside its section.
#[test]
fn a_slot_released_twice_never_ends_another_threads_section() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::mpsc;
    if !in_child(
        "a_slot_released_twice_never_ends_another_threads_section",
        Duration::from_secs(25),
    ) {
        return;
    }
    let rcu = private_rcu();
    run_split_key_destructors(rcu);
    let (in_tx, in_rx) = mpsc::channel();
    let (out_tx, out_rx) = mpsc::channel::<()>();
    let x = std::thread::spawn(move || {
        let g = rcu.read_lock();
        in_tx.send(()).unwrap();
        let _ = out_rx.recv_timeout(Duration::from_secs(10));
        drop(g);
    });
    in_rx.recv().unwrap();
    std::thread::spawn(move || {
        let g = rcu.read_lock();
        drop(g);
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    static GP_DONE: AtomicBool = AtomicBool::new(false);
    let gp = std::thread::spawn(move || {
        rcu.synchronize();
        GP_DONE.store(true, SeqCst);
    });
    std::thread::sleep(Duration::from_millis(700));
    let premature = GP_DONE.load(SeqCst);
    out_tx.send(()).unwrap();
    // X's `read_unlock` finds its counter zeroed under it (a debug
    // assertion panics there): its section was ended by Y's teardown.
    let x_ok = x.join().is_ok();
    gp.join().unwrap();
    assert!(
        !premature,
        "a grace period ended while thread X was inside its read-side section"
    );
    assert!(x_ok, "X's read-side section was ended by another thread");
}

/// Round 4: a guard opened in another library's `pthread` key destructor
/// (K1, which runs before krcu's late-list destructor) through an armed
/// late list, and kept in a Rust thread-local first used there (glibc
/// never runs its destructor), is dropped by a key destructor that runs
/// after the late list's (K2). The late-list destructor must not take
/// that section for a leaked guard's: ending it (and freeing the slot)
/// let a grace period end while K2 was still inside the section, and the
/// drop then ran `read_unlock` on a freed slot ("read_unlock without
/// read_lock", an abort in debug builds).
#[test]
fn a_guard_kept_past_the_late_list_is_still_waited_for() {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    if !in_child(
        "a_guard_kept_past_the_late_list_is_still_waited_for",
        Duration::from_secs(25),
    ) {
        return;
    }
    static RCU: std::sync::OnceLock<&'static krcu::rcu::Rcu> = std::sync::OnceLock::new();
    static KEYS: Keys = Keys::new();
    /// 1: K2 runs, its guard kept; 3: K2 dropped the guard.
    static STATE: AtomicUsize = AtomicUsize::new(0);
    static GO: AtomicBool = AtomicBool::new(false);
    thread_local! {
        static HELD: RefCell<Option<krcu::rcu::ReadGuard<'static>>> = const { RefCell::new(None) };
    }
    extern "C" fn k1_dtor(_: *mut libc::c_void) {
        let rcu = *RCU.get().unwrap();
        HELD.with(|h| *h.borrow_mut() = Some(rcu.read_lock()));
    }
    extern "C" fn k2_dtor(_: *mut libc::c_void) {
        STATE.store(1, SeqCst);
        let t = Instant::now();
        while !GO.load(SeqCst) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let g = HELD.with(|h| h.borrow_mut().take());
        drop(g);
        STATE.store(3, SeqCst);
    }
    extern "C" fn start(_: *mut libc::c_void) -> *mut libc::c_void {
        // Arms the thread's late list (a first registration).
        drop(RCU.get().unwrap().read_lock());
        set_both(&KEYS);
        core::ptr::null_mut()
    }
    let rcu = private_rcu();
    RCU.set(rcu).ok().unwrap();
    let t = split_keys_then_start(&KEYS, k1_dtor, k2_dtor, start);
    let t0 = Instant::now();
    while STATE.load(SeqCst) == 0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(STATE.load(SeqCst), 1, "K2's destructor never ran");
    static GP_DONE: AtomicBool = AtomicBool::new(false);
    let gp = std::thread::spawn(move || {
        rcu.synchronize();
        GP_DONE.store(true, SeqCst);
    });
    std::thread::sleep(Duration::from_millis(500));
    let premature = GP_DONE.load(SeqCst);
    GO.store(true, SeqCst);
    // SAFETY: `t` is our joinable thread, joined once.
    let r = unsafe { libc::pthread_join(t, core::ptr::null_mut()) };
    assert_eq!(r, 0);
    assert_eq!(STATE.load(SeqCst), 3, "K2's destructor never finished");
    gp.join().unwrap();
    assert!(
        !premature,
        "a grace period ended while K2 was inside its section"
    );
    // The thread is gone: its slot holds nothing up, and is not counted.
    rcu.synchronize();
    assert_eq!(rcu.stats().readers, 0);
}
