//! A real hard-interrupt source: SIGUSR1 sent to a chosen thread, whose
//! handler enters krcu's hardirq context and runs whatever [`OnSignal`] is
//! routed to it. The handler never allocates: objects reach it through a
//! [`Ring`] a task thread fills ahead (of `Box`es or `SlabBox`es: any
//! [`Owned`] pointer). Written once for every command that floods from a
//! signal handler: the handler and its installation, the route, the thread
//! that sends the signals and the thread they land on.

use krcu::slab::SlabBox;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Barrier, Mutex, MutexGuard, OnceLock};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

/// What the signal handler runs, in hardirq context, on the interrupted
/// thread: it must not allocate, nor take a lock that thread may hold.
pub trait OnSignal: Sync {
    fn on_signal(&self);
}

/// The routed handler, type-erased for the static the handler reads.
struct Route {
    func: unsafe fn(*const ()),
    ctx: *const (),
}

/// Calls `H::on_signal` on `ctx`.
///
/// # Safety
/// `ctx` points to an `H` that outlives the route.
unsafe fn call_on_signal<H: OnSignal>(ctx: *const ()) {
    // SAFETY: per the contract; the RouteGuard borrows the `H`.
    unsafe { &*ctx.cast::<H>() }.on_signal();
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
        // SAFETY: `route` pairs `func` with the `ctx` it was made for.
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

/// The installed route, until dropped; one at a time per process. It
/// borrows the handler, so the handler outlives it.
pub struct RouteGuard<'h> {
    _one: MutexGuard<'static, ()>,
    _route: Box<Route>,
    _handler: PhantomData<&'h ()>,
}

/// Installs the signal handler (once) and routes it to `handler` until the
/// guard drops. The caller must join every thread that signals or is
/// signalled before it drops the guard.
pub fn route<H: OnSignal>(handler: &H) -> RouteGuard<'_> {
    static ONE: Mutex<()> = Mutex::new(());
    let one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    install();
    let route = Box::new(Route {
        func: call_on_signal::<H>,
        ctx: (handler as *const H).cast(),
    });
    ROUTE.store(&*route as *const Route as *mut Route, SeqCst);
    RouteGuard {
        _one: one,
        _route: route,
        _handler: PhantomData,
    }
}

impl Drop for RouteGuard<'_> {
    fn drop(&mut self) {
        ROUTE.store(core::ptr::null_mut(), SeqCst);
        while IN_HANDLER.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
    }
}

/// Spawns in `s` a thread that, after `start`, only sleeps until `stop`:
/// a place for the handler to land where no lock is held (a handler that
/// lands on a thread holding a lock its `kfree_rcu` takes spins forever).
/// Returns the thread and what to signal it by.
pub fn spawn_sleeper<'scope>(
    s: &'scope Scope<'scope, '_>,
    start: &'scope Barrier,
    stop: &'scope AtomicBool,
) -> (ScopedJoinHandle<'scope, ()>, libc::pthread_t) {
    let (tx, rx) = std::sync::mpsc::channel();
    let sleeper = s.spawn(move || {
        tx.send(this_thread()).ok();
        start.wait();
        while !stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let thread = rx.recv().expect("the sleeper sends its thread first");
    (sleeper, thread)
}

/// How the sender thread paces itself between signals.
#[derive(Clone, Copy)]
pub enum Pace {
    /// Yields: signals as fast as the scheduler lets it.
    Yield,
    /// Sleeps this long.
    Sleep(Duration),
}

/// Spawns in `s` the thread that raises the interrupts: after `start`,
/// until `stop`, it fills `ring` with `make()`, signals `victim` (with
/// none, the ring is still filled, for the end to drain), then waits per
/// `pace`. Returns the number of signals sent.
pub fn spawn_sender<'scope, P: Owned>(
    s: &'scope Scope<'scope, '_>,
    start: &'scope Barrier,
    stop: &'scope AtomicBool,
    ring: &'scope Ring<P>,
    victim: Option<libc::pthread_t>,
    pace: Pace,
    mut make: impl FnMut() -> P + Send + 'scope,
) -> ScopedJoinHandle<'scope, u64> {
    s.spawn(move || {
        let mut sent = 0u64;
        start.wait();
        while !stop.load(Relaxed) {
            for _ in 0..ring.room() {
                ring.push(make());
            }
            if let Some(victim) = victim {
                interrupt(victim);
                sent += 1;
            }
            match pace {
                Pace::Yield => std::thread::yield_now(),
                Pace::Sleep(d) => std::thread::sleep(d),
            }
        }
        sent
    })
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

/// An owning pointer that crosses a [`Ring`] as a raw pointer: a `Box`
/// or a `SlabBox`.
pub trait Owned: Send {
    type Target;
    fn into_raw(self) -> NonNull<Self::Target>;
    /// # Safety
    /// `p` came from `into_raw` of this type and is taken back once.
    unsafe fn from_raw(p: NonNull<Self::Target>) -> Self;
}

impl<T: Send> Owned for Box<T> {
    type Target = T;
    fn into_raw(self) -> NonNull<T> {
        NonNull::from(Box::leak(self))
    }
    unsafe fn from_raw(p: NonNull<T>) -> Self {
        // SAFETY: the caller's contract: leaked by into_raw above, once.
        unsafe { Box::from_raw(p.as_ptr()) }
    }
}

impl<T: Send> Owned for SlabBox<T> {
    type Target = T;
    fn into_raw(self) -> NonNull<T> {
        SlabBox::into_raw(self)
    }
    unsafe fn from_raw(p: NonNull<T>) -> Self {
        // SAFETY: the caller's contract: given up by into_raw above, once.
        unsafe { SlabBox::from_raw(p) }
    }
}

/// A single-producer, single-consumer ring of owned pointers: a task
/// thread fills it (allocating), the signal handler empties it (not
/// allocating).
pub struct Ring<P: Owned> {
    slots: Box<[AtomicPtr<P::Target>]>,
    head: AtomicUsize,
    tail: AtomicUsize,
}

impl<P: Owned> Ring<P> {
    pub fn new(capacity: usize) -> Ring<P> {
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
    pub fn push(&self, b: P) {
        let t = self.tail.load(Relaxed);
        debug_assert!(t - self.head.load(Acquire) < self.slots.len());
        self.slots[t % self.slots.len()].store(b.into_raw().as_ptr(), Relaxed);
        self.tail.store(t + 1, Release);
    }

    /// Consumer side: the oldest pointer, if any. Lock-free,
    /// allocation-free.
    pub fn pop(&self) -> Option<P> {
        let h = self.head.load(Relaxed);
        if h == self.tail.load(Acquire) {
            return None;
        }
        let p = self.slots[h % self.slots.len()].swap(core::ptr::null_mut(), Relaxed);
        self.head.store(h + 1, Release);
        // SAFETY: slots between head and tail hold pointers given up by
        // push, each taken once (single consumer).
        NonNull::new(p).map(|p| unsafe { P::from_raw(p) })
    }
}

impl<P: Owned> Drop for Ring<P> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}
