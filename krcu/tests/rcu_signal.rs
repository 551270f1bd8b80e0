//! `call_rcu` from a real signal handler: a SIGUSR1 flood, directed with
//! `pthread_kill` at a thread that spends its time holding a RawSpinLock and
//! calling `call_rcu` itself (so handlers interrupt its pushes). No
//! deadlock; every callback runs exactly once; `rcu_barrier` returns.
//!
//! The handler takes its objects from a preallocated pool by an atomic
//! index: it allocates nothing, takes no lock, and enters hardirq context
//! first. This binary holds this one test, and the handler reaches the
//! instance through a static, so nothing else in the process is disturbed.

mod common;

use krcu::Domain;
use krcu::context;
use krcu::lock::RawSpinLock;
use krcu::rcu::{Rcu, RcuConfig, RcuHead};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

const POOL: usize = 200_000;

struct Item {
    rcu: RcuHead,
    ran: AtomicU32,
}

static RCU: AtomicPtr<Rcu> = AtomicPtr::new(core::ptr::null_mut());
static ITEMS: AtomicPtr<Item> = AtomicPtr::new(core::ptr::null_mut());
static NEXT: AtomicUsize = AtomicUsize::new(0);
static FROM_HANDLER: AtomicUsize = AtomicUsize::new(0);
static RAN: AtomicUsize = AtomicUsize::new(0);
static HANDLER_IN_ATOMIC: AtomicUsize = AtomicUsize::new(0);

/// # Safety
/// `head` is the head of an `Item` of the static pool.
unsafe fn item_done(head: NonNull<RcuHead>) {
    // SAFETY: Item is repr(Rust) but the head's offset is known.
    let item = unsafe {
        &*head
            .as_ptr()
            .byte_sub(core::mem::offset_of!(Item, rcu))
            .cast::<Item>()
    };
    item.ran.fetch_add(1, Ordering::SeqCst);
    RAN.fetch_add(1, Ordering::SeqCst);
}

/// Queues the next pool item; async-signal-safe. False when the pool is
/// used up.
fn queue_one() -> bool {
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    if i >= POOL {
        return false;
    }
    let rcu = RCU.load(Ordering::Acquire);
    let items = ITEMS.load(Ordering::Acquire);
    // SAFETY: both statics are set before any signal is sent and outlive
    // every handler (cleared only after the flood and the target stopped);
    // item `i` is handed out once by the fetch_add, so its head is not
    // queued, and the pool lives until after rcu_barrier.
    unsafe {
        let head = NonNull::from(&(*items.add(i)).rcu);
        (*rcu).call_rcu(head, item_done);
    }
    true
}

extern "C" fn on_sigusr1(_sig: libc::c_int) {
    let _hardirq = context::enter_hardirq();
    if context::atomic_depth() > 1 {
        // The interrupted thread held its raw spinlock.
        HANDLER_IN_ATOMIC.fetch_add(1, Ordering::Relaxed);
    }
    if queue_one() {
        FROM_HANDLER.fetch_add(1, Ordering::Relaxed);
    }
}

fn install_handler() {
    // SAFETY: the handler enters hardirq context, takes its objects from a
    // preallocated pool by an atomic index and calls `call_rcu`: no
    // allocation, no lock. SA_RESTART restarts any interrupted system call
    // (the futex wake, for one).
    unsafe { common::set_handler(libc::SIGUSR1, on_sigusr1, libc::SA_RESTART) };
}

#[test]
fn call_rcu_from_a_signal_handler_under_a_raw_spinlock() {
    let domain = Domain::builder().build();
    let rcu = Box::new(Rcu::new(&domain, RcuConfig::default()));
    let items: Box<[Item]> = (0..POOL)
        .map(|_| Item {
            rcu: RcuHead::new(),
            ran: AtomicU32::new(0),
        })
        .collect();
    RCU.store(&*rcu as *const Rcu as *mut Rcu, Ordering::Release);
    ITEMS.store(items.as_ptr() as *mut Item, Ordering::Release);
    install_handler();

    let lock = RawSpinLock::named(&domain, "victim->lock", 0u64);
    let stop = AtomicBool::new(false);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let sent = std::thread::scope(|s| {
        let victim = s.spawn(|| {
            // SAFETY: pthread_self has no preconditions.
            tid_tx
                .send(unsafe { libc::pthread_self() } as usize)
                .unwrap();
            let mut own = 0u64;
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut g = lock.lock();
                round += 1;
                if round.is_multiple_of(16) && queue_one() {
                    own += 1;
                }
                for _ in 0..256 {
                    *g = std::hint::black_box(*g + 1);
                }
                drop(g);
            }
            own
        });
        let target = tid_rx.recv().unwrap() as libc::pthread_t;
        let mut sent = 0u64;
        while FROM_HANDLER.load(Ordering::Relaxed) < 50_000
            && NEXT.load(Ordering::Relaxed) < POOL
            && sent < 1_000_000
        {
            // SAFETY: `target` is a live thread of this process (it runs
            // until `stop`), and SIGUSR1 has a handler installed.
            let r = unsafe { libc::pthread_kill(target, libc::SIGUSR1) };
            assert_eq!(r, 0);
            sent += 1;
            if sent.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let own = victim.join().unwrap();
        eprintln!("victim queued {own} itself");
        sent
    });

    rcu.rcu_barrier();
    let queued = NEXT.load(Ordering::SeqCst).min(POOL);
    let from_handler = FROM_HANDLER.load(Ordering::SeqCst);
    eprintln!(
        "signals sent {sent}, call_rcu from the handler {from_handler} ({} under the raw \
         spinlock), total queued {queued}, stats {:?}",
        HANDLER_IN_ATOMIC.load(Ordering::SeqCst),
        rcu.stats()
    );
    assert!(from_handler > 0, "no handler ran");
    assert!(
        HANDLER_IN_ATOMIC.load(Ordering::SeqCst) > 0,
        "no handler interrupted the lock holder"
    );
    assert_eq!(RAN.load(Ordering::SeqCst), queued);
    for (i, it) in items.iter().enumerate() {
        let expect = u32::from(i < queued);
        assert_eq!(it.ran.load(Ordering::SeqCst), expect, "item {i}");
    }
    // Quiesce the handler's statics before the pool and instance go.
    // SAFETY: restoring the default disposition; no more signals are sent.
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
    RCU.store(core::ptr::null_mut(), Ordering::Release);
    ITEMS.store(core::ptr::null_mut(), Ordering::Release);
    drop(rcu);
    drop(items);
}
