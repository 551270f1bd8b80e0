//! A real hard-interrupt source: SIGUSR1 sent to a chosen thread, whose
//! handler enters krcu's hardirq context and runs whatever route is
//! installed. The handler never allocates: objects reach it through a
//! [`Ring`] a task thread fills ahead.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// What the handler runs: `func(ctx)`, in hardirq context.
pub struct Route {
    pub func: unsafe fn(*const ()),
    pub ctx: *const (),
}

static ROUTE: AtomicPtr<Route> = AtomicPtr::new(core::ptr::null_mut());
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sigusr1(_: libc::c_int) {
    let _hardirq = krcu::context::enter_hardirq();
    IN_HANDLER.fetch_add(1, SeqCst);
    let r = ROUTE.load(SeqCst);
    if !r.is_null() {
        // SAFETY: a route is published only while its RouteGuard lives,
        // and the guard waits for running handlers before it goes.
        let r = unsafe { &*r };
        // SAFETY: the route's owner pairs `func` with a `ctx` it accepts.
        unsafe { (r.func)(r.ctx) };
    }
    IN_HANDLER.fetch_sub(1, SeqCst);
}

fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: a zeroed sigaction with a plain handler and an empty mask
        // is valid; the handler touches only atomics, preallocated objects
        // and krcu's signal-safe path.
        unsafe {
            let mut sa: libc::sigaction = core::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGUSR1, &sa, core::ptr::null_mut());
        }
    });
}

/// The installed route, until dropped; one at a time per process.
pub struct RouteGuard {
    _one: MutexGuard<'static, ()>,
}

/// Installs the handler (once) and routes it to `route` until the guard
/// drops. The caller must join every thread that signals or is signalled
/// before `route` goes.
pub fn route(route: &Route) -> RouteGuard {
    static ONE: Mutex<()> = Mutex::new(());
    let one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    install();
    ROUTE.store(route as *const Route as *mut Route, SeqCst);
    RouteGuard { _one: one }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        ROUTE.store(core::ptr::null_mut(), SeqCst);
        while IN_HANDLER.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
    }
}

/// The calling thread, to be signalled.
pub fn this_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

/// Sends SIGUSR1 to `thread`, which must be alive (the caller joins it
/// only after its last signal).
pub fn interrupt(thread: libc::pthread_t) {
    // SAFETY: the thread is alive, per the contract above.
    unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
}

/// A single-producer, single-consumer ring of boxes: a task thread fills
/// it (allocating), the signal handler empties it (not allocating).
pub struct Ring<T> {
    slots: Box<[AtomicPtr<T>]>,
    head: AtomicUsize,
    tail: AtomicUsize,
}

impl<T> Ring<T> {
    pub fn new(capacity: usize) -> Ring<T> {
        Ring {
            slots: (0..capacity)
                .map(|_| AtomicPtr::new(core::ptr::null_mut()))
                .collect(),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
        }
    }

    /// Producer side: how many boxes fit now.
    pub fn room(&self) -> usize {
        self.slots.len() - (self.tail.load(Relaxed) - self.head.load(Acquire))
    }

    /// Producer side: adds `b` (there must be room).
    pub fn push(&self, b: Box<T>) {
        let t = self.tail.load(Relaxed);
        debug_assert!(t - self.head.load(Acquire) < self.slots.len());
        self.slots[t % self.slots.len()].store(Box::into_raw(b), Relaxed);
        self.tail.store(t + 1, Release);
    }

    /// Consumer side: the oldest box, if any. Lock-free, allocation-free.
    pub fn pop(&self) -> Option<Box<T>> {
        let h = self.head.load(Relaxed);
        if h == self.tail.load(Acquire) {
            return None;
        }
        let p = self.slots[h % self.slots.len()].swap(core::ptr::null_mut(), Relaxed);
        self.head.store(h + 1, Release);
        // SAFETY: slots between head and tail hold boxes leaked by push,
        // each taken once (single consumer).
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}
