//! Readers and writers together, the way users combine the API: readers
//! under the process-wide `krcu::rcu::read_lock()` and under an instance's
//! `read_lock`, writers that replace published objects and retire the old
//! ones through `krcu::kfree_rcu`, `krcu::kvfree_rcu_mightsleep`, a signal
//! handler, and an instance. Every object a reader reaches must still be
//! alive (objects poison themselves when dropped), and at the end every
//! object was freed exactly once.
//!
//! Runs 10 s by default (`KRCU_STRESS_SECS` changes it).

mod common;

use common::{LIVE, Ledger, Obj, Pool};
use krcu::Krcu;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::*};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Published objects per structure.
const SLOTS: usize = 64;
/// Objects the signal handler may retire (made ahead: it cannot allocate).
const HANDLER_POOL: usize = 200_000;
/// The most objects the writers make in all (the ledger's size).
const CAPACITY: usize = 24_000_000;

/// A structure readers traverse: an array of published pointers.
struct Published {
    slots: Vec<AtomicPtr<Obj>>,
}

impl Published {
    fn new(ledger: &Arc<Ledger>) -> Published {
        Published {
            slots: (0..SLOTS)
                .map(|_| AtomicPtr::new(Box::into_raw(Obj::new(ledger))))
                .collect(),
        }
    }

    /// Publishes `new` in slot `i` (Release: a reader that loads it sees it
    /// whole) and hands back the object it replaced, now unreachable to
    /// readers that start after this.
    fn replace(&self, i: usize, new: Box<Obj>) -> Box<Obj> {
        let old = self.slots[i % SLOTS].swap(Box::into_raw(new), AcqRel);
        // SAFETY: every slot holds a leaked Box; the swap made this thread
        // its only owner.
        unsafe { Box::from_raw(old) }
    }

    /// Reads every slot; counts objects found not alive. Must be called
    /// inside a read-side section of the instance the writers retire on.
    fn check_all(&self, early: &AtomicU64) -> usize {
        let mut seen = 0;
        for s in &self.slots {
            let p = s.load(Acquire);
            // SAFETY: the object was published and the caller is inside a
            // read-side section, so it cannot have been freed (that is what
            // this test checks: a poisoned state means it was).
            let o = unsafe { &*p };
            if o.state.load(Acquire) != LIVE || o.payload[0] != !o.payload[1] {
                early.fetch_add(1, Relaxed);
            }
            seen += 1;
        }
        seen
    }

    /// Frees every object still published (the test is over, no reader
    /// runs).
    fn free_all(self) {
        for s in self.slots {
            // SAFETY: every slot holds a leaked Box, and nothing else can
            // reach it any more.
            drop(unsafe { Box::from_raw(s.into_inner()) });
        }
    }
}

/// What the signal handler works on.
struct HandlerState {
    global: &'static Published,
    pool: Pool,
    next: AtomicU64,
    retired: AtomicU64,
}

static HANDLER: OnceLock<HandlerState> = OnceLock::new();
static HANDLER_ON: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigusr2(_: libc::c_int) {
    let _hardirq = krcu::context::enter_hardirq();
    if !HANDLER_ON.load(Acquire) {
        return;
    }
    let Some(h) = HANDLER.get() else { return };
    let Some(new) = h.pool.take() else { return };
    let i = h.next.fetch_add(7, Relaxed) as usize;
    let old = h.global.replace(i, new);
    match krcu::kfree_rcu(old) {
        Ok(()) => {
            h.retired.fetch_add(1, Relaxed);
        }
        // Not NMI here; if it were, leak rather than free under readers.
        Err(e) => std::mem::forget(e),
    }
}

fn install_sigusr2() {
    // SAFETY: the handler touches only atomics, a lock-free pool and
    // krcu's signal-safe kfree_rcu path.
    unsafe { common::set_handler(libc::SIGUSR2, on_sigusr2, libc::SA_RESTART) };
}

fn xorshift(s: &mut u64) -> usize {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s as usize
}

#[test]
fn readers_on_the_global_and_an_instance_never_see_a_freed_object() {
    let secs: u64 = std::env::var("KRCU_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let ledger = Ledger::new(CAPACITY + HANDLER_POOL + 4 * SLOTS);
    let instance = Arc::new(
        Krcu::builder()
            .arena_size(64 << 20)
            .build()
            .expect("instance"),
    );
    // Leaked so the signal handler can reach it; drained at the end.
    let global: &'static Published = Box::leak(Box::new(Published::new(&ledger)));
    let local = Arc::new(Published::new(&ledger));
    assert!(
        HANDLER
            .set(HandlerState {
                global,
                pool: Pool::new(&ledger, HANDLER_POOL),
                next: AtomicU64::new(0),
                retired: AtomicU64::new(0),
            })
            .is_ok()
    );
    // Build the global instance before any handler can run.
    let _ = Krcu::global();
    install_sigusr2();

    let stop = Arc::new(AtomicBool::new(false));
    let early = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let made = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();

    // Readers under the process-wide RCU.
    for _ in 0..2 {
        let (stop, early, reads) = (stop.clone(), early.clone(), reads.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                let _g = krcu::rcu::read_lock();
                let n = global.check_all(&early);
                // Linger a little inside the section, then look again: the
                // second look must still find the first look's objects
                // (and any newer ones) alive.
                std::hint::spin_loop();
                global.check_all(&early);
                reads.fetch_add(n as u64, Relaxed);
            }
        }));
    }
    // A reader under the instance's RCU.
    {
        let (stop, early, reads) = (stop.clone(), early.clone(), reads.clone());
        let (instance, local) = (instance.clone(), local.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                let _g = instance.rcu().read_lock();
                let n = local.check_all(&early);
                local.check_all(&early);
                reads.fetch_add(n as u64, Relaxed);
            }
        }));
    }
    // Writers. Each stops at its share of the ledger.
    let share = (CAPACITY / 4) as u64;
    let writer = |kind: u8| {
        let (stop, made, ledger) = (stop.clone(), made.clone(), ledger.clone());
        let (instance, local) = (instance.clone(), local.clone());
        std::thread::spawn(move || {
            let mut seed = 0x9E37_79B9_7F4A_7C15 ^ u64::from(kind);
            let mut n = 0;
            while !stop.load(Relaxed) && n < share {
                let i = xorshift(&mut seed);
                let new = Obj::new(&ledger);
                match kind {
                    0 => krcu::kfree_rcu(global.replace(i, new)).expect("not NMI"),
                    1 => krcu::kvfree_rcu_mightsleep(global.replace(i, new)).expect("not NMI"),
                    2 => instance.kfree_rcu(local.replace(i, new)).expect("not NMI"),
                    _ => instance
                        .kvfree_rcu_mightsleep(local.replace(i, new))
                        .expect("not NMI"),
                }
                n += 1;
                if n % 4096 == 0 {
                    // Let the readers and the reclaimers in on 2 cores.
                    std::thread::yield_now();
                }
            }
            made.fetch_add(n, Relaxed);
        })
    };
    let writers: Vec<_> = (0..4).map(writer).collect();

    // The signal source: interrupts a global reader, so that the handler
    // runs inside (and outside) read-side sections of the same thread.
    HANDLER_ON.store(true, Release);
    let victim = {
        use std::os::unix::thread::JoinHandleExt;
        threads[0].as_pthread_t()
    };
    let signaller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                // SAFETY: the victim thread runs until `stop`, and is joined
                // only after this thread is.
                unsafe { libc::pthread_kill(victim, libc::SIGUSR2) };
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };

    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            early.load(Relaxed),
            0,
            "a reader reached an object freed while it was inside its read-side section"
        );
    }
    stop.store(true, Relaxed);
    signaller.join().unwrap();
    HANDLER_ON.store(false, Release);
    for w in writers {
        w.join().unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }

    let h = HANDLER.get().unwrap();
    eprintln!(
        "stress: {} objects retired by writers, {} by the signal handler, {} reads",
        made.load(Relaxed),
        h.retired.load(Relaxed),
        reads.load(Relaxed)
    );
    assert_eq!(early.load(Relaxed), 0, "objects freed under a reader");
    assert!(made.load(Relaxed) > 0 && reads.load(Relaxed) > 0);
    assert!(h.retired.load(Relaxed) > 0, "the signal handler never ran");

    // Everything retired is freed, once; then what is still published.
    krcu::kvfree_rcu_barrier();
    instance.kvfree_rcu_barrier();
    // SAFETY: `global` was leaked above; no reader, writer or handler can
    // reach it any more (all joined, the handler switched off).
    let global = unsafe { Box::from_raw(global as *const Published as *mut Published) };
    global.free_all();
    Arc::into_inner(local).expect("writers joined").free_all();
    let pool_left = &HANDLER.get().unwrap().pool;
    while let Some(o) = pool_left.take() {
        drop(o);
    }
    drop(instance);
    ledger.assert_all_freed_once();
}
