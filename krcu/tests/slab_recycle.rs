//! A thread recycles its own `rcu_free` sheaves: a writer that allocates
//! and retires `SlabBox`es in a loop gets its retired objects back as a
//! sheaf of free objects once their grace period has ended, with their
//! destructors run on its own thread; never before a reader is done (the
//! readers check a poison word), every object dropped once (the ledger),
//! the waiting list bounded while a reader holds the grace period off,
//! nothing stranded on an idle or exited thread, no destructor run inside
//! the writer's own read-side section, a panicking destructor counted;
//! by default (and with `Assist::Never`) a type with drop glue has its
//! destructors run on the RCU thread, even when it falls behind; one
//! without drop glue recycles always.

mod common;

use common::slabs::replace_and_retire;
use common::{Ledger, Obj, wait_for};
use krcu::Krcu;
use krcu::kvfree::Assist;
use krcu::slab::{SlabBox, SlabCache};
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// Destructors of recycled objects run on the retiring thread whenever a
/// grace period has ended (`Assist::Always`).
fn instance() -> Krcu {
    Krcu::builder()
        .arena_size(64 << 20)
        .assist(Assist::Always)
        .build()
        .unwrap()
}

/// The library's defaults (`Assist::WhenBehind`: a `T` with drop glue is
/// not recycled on the retiring thread).
fn default_instance() -> Krcu {
    Krcu::builder().arena_size(64 << 20).build().unwrap()
}

#[test]
fn a_writer_recycles_its_own_sheaves_after_their_readers() {
    let k = instance();
    let cache = k.slab_cache::<Obj>("objs").unwrap();
    let n = 200_000;
    let ledger = Ledger::new(n + 100);
    // Rounds until grace periods have ended while the writer still ran
    // (under valgrind or a loaded machine one round may not see one).
    let mut rounds = 0;
    while cache.stats().rcu_sheaves_recycled == 0 && rounds < 10 {
        replace_and_retire(&k, &cache, &ledger, n / 10);
        rounds += 1;
    }
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    let st = cache.stats();
    assert!(st.rcu_sheaves_recycled > 0, "{st:?}");
    assert_eq!((st.bad_frees, st.destructor_panics), (0, 0), "{st:?}");
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0);
}

/// A type whose destructor says on which thread it ran, and whether that
/// thread was inside a read-side section of the instance then.
struct Spy {
    writer: std::thread::ThreadId,
    on_writer: &'static AtomicUsize,
    in_reader: &'static AtomicUsize,
    dropped: &'static AtomicUsize,
    rcu: *const krcu::rcu::Rcu,
}

// SAFETY: the instance outlives every object (the test drops the cache
// and waits before the instance goes).
unsafe impl Send for Spy {}

impl Drop for Spy {
    fn drop(&mut self) {
        if std::thread::current().id() == self.writer {
            self.on_writer.fetch_add(1, Relaxed);
        }
        // SAFETY: see Send.
        if unsafe { &*self.rcu }.is_reading() {
            self.in_reader.fetch_add(1, Relaxed);
        }
        self.dropped.fetch_add(1, Relaxed);
    }
}

fn spy(k: &Krcu, counters: &'static [AtomicUsize; 3]) -> Spy {
    Spy {
        writer: std::thread::current().id(),
        on_writer: &counters[0],
        in_reader: &counters[1],
        dropped: &counters[2],
        rcu: k.rcu(),
    }
}

/// Retires `n` spies, waiting now and then for a grace period so that
/// older sheaves are ready when later ones fill; `inside` retires inside a
/// read-side section.
fn retire_spies(
    k: &Krcu,
    cache: &SlabCache<Spy>,
    counters: &'static [AtomicUsize; 3],
    n: usize,
    inside: bool,
) {
    for i in 0..n {
        let b = cache.alloc_box(spy(k, counters)).ok().unwrap();
        if inside {
            let _g = k.rcu().read_lock();
            k.kfree_rcu_slab(b).unwrap();
        } else {
            k.kfree_rcu_slab(b).unwrap();
        }
        if i % 1000 == 999 {
            k.rcu().synchronize();
        }
    }
}

#[test]
fn destructors_run_on_the_writer_but_never_inside_its_read_section() {
    static OUTSIDE: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
    static INSIDE: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
    let k = instance();
    let cache = k.slab_cache::<Spy>("spies").unwrap();
    retire_spies(&k, &cache, &OUTSIDE, 20_000, false);
    let recycled = cache.stats().rcu_sheaves_recycled;
    assert!(recycled > 0, "{:?}", cache.stats());
    assert!(
        OUTSIDE[0].load(Relaxed) > 0,
        "no destructor ran on the writer"
    );
    retire_spies(&k, &cache, &INSIDE, 20_000, true);
    k.kvfree_rcu_barrier();
    assert_eq!(OUTSIDE[2].load(Relaxed), 20_000);
    assert_eq!(INSIDE[2].load(Relaxed), 20_000);
    assert_eq!(
        OUTSIDE[1].load(Relaxed) + INSIDE[1].load(Relaxed),
        0,
        "a destructor ran inside a reader"
    );
    assert_eq!(
        cache.stats().rcu_sheaves_recycled,
        recycled,
        "retiring inside its read section, the writer recycled nothing"
    );
}

#[test]
fn a_reader_holding_the_grace_period_bounds_the_writers_waiting_list() {
    let k = Arc::new(instance());
    let cache = k.slab_cache::<Obj>("objs").unwrap();
    let n = 100_000;
    let ledger = Ledger::new(n);
    let (held, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let reader = {
        let (k, held, release) = (k.clone(), held.clone(), release.clone());
        std::thread::spawn(move || {
            let _g = k.rcu().read_lock();
            held.wait();
            release.wait();
        })
    };
    held.wait();
    for _ in 0..n {
        let b = cache.alloc_box(*Obj::new(&ledger)).ok().unwrap();
        k.kfree_rcu_slab(b).unwrap();
    }
    let st = cache.stats();
    assert_eq!(ledger.dropped.load(SeqCst), 0, "freed under a reader");
    assert_eq!(st.rcu_sheaves_recycled, 0, "{st:?}");
    // The list held at most its bound; the rest went to call_rcu.
    assert!(st.rcu_sheaves > 0, "nothing overflowed to call_rcu: {st:?}");
    release.wait();
    reader.join().unwrap();
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
}

#[test]
fn an_idle_or_exited_writers_waiting_sheaves_are_freed() {
    let k = Arc::new(instance());
    let cache = Arc::new(k.slab_cache::<Obj>("objs").unwrap());
    let ledger = Ledger::new(2 * 5_000);
    let (done, park) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let idle = {
        let (k, cache, ledger, done, park) = (
            k.clone(),
            cache.clone(),
            ledger.clone(),
            done.clone(),
            park.clone(),
        );
        std::thread::spawn(move || {
            for _ in 0..5_000 {
                let b = cache.alloc_box(*Obj::new(&ledger)).ok().unwrap();
                k.kfree_rcu_slab(b).unwrap();
            }
            done.wait();
            park.wait(); // idle, alive, until the objects are freed
        })
    };
    done.wait();
    // No barrier: the monitor finds the idle thread's sheaves.
    wait_for(
        "the idle writer's objects",
        Duration::from_secs(120),
        || ledger.dropped.load(SeqCst) == 5_000,
    );
    park.wait();
    idle.join().unwrap();
    let exited = {
        let (k, cache, ledger) = (k.clone(), cache.clone(), ledger.clone());
        std::thread::spawn(move || {
            for _ in 0..5_000 {
                let b = cache.alloc_box(*Obj::new(&ledger)).ok().unwrap();
                k.kfree_rcu_slab(b).unwrap();
            }
        })
    };
    exited.join().unwrap();
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
}

/// Its destructor panics for every 100th object, and retires a box of its
/// own cache (a destructor that uses the cache it is dropped from).
struct Nested {
    id: usize,
    child: Option<SlabBox<Nested>>,
    krcu: *const Krcu,
    dropped: &'static AtomicUsize,
}

// SAFETY: the instance outlives every object (the test waits for all
// before it is dropped).
unsafe impl Send for Nested {}

impl Drop for Nested {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Relaxed);
        if let Some(c) = self.child.take() {
            // SAFETY: see Send.
            unsafe { &*self.krcu }.kfree_rcu_slab(c).unwrap();
        }
        if self.id.is_multiple_of(100) {
            panic!("destructor {} panics (on purpose)", self.id);
        }
    }
}

#[test]
fn a_destructor_that_panics_or_retires_into_its_cache_loses_nothing() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let k = instance();
    let cache = k.slab_cache::<Nested>("nested").unwrap();
    let node = |id, child| Nested {
        id,
        child,
        krcu: &k,
        dropped: &DROPPED,
    };
    let n = 10_000;
    for i in 0..n {
        let child = cache.alloc_box(node(2 * i + 1, None)).ok().unwrap();
        let b = cache.alloc_box(node(2 * i, Some(child))).ok().unwrap();
        k.kfree_rcu_slab(b).unwrap();
        if i % 500 == 499 {
            k.rcu().synchronize();
        }
    }
    k.kvfree_rcu_barrier();
    k.kvfree_rcu_barrier();
    assert_eq!(DROPPED.load(Relaxed), 2 * n);
    let st = cache.stats();
    assert!(st.rcu_sheaves_recycled > 0, "{st:?}");
    assert!(st.destructor_panics > 0, "{st:?}");
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0);
}

#[test]
fn by_default_destructors_run_on_the_rcu_thread_and_a_type_without_drop_glue_recycles() {
    static SPIES: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
    let k = default_instance();
    let spies = k.slab_cache::<Spy>("spies").unwrap();
    // No grace period waited for: the RCU thread may fall behind, and
    // still no destructor runs on this thread.
    for _ in 0..20_000 {
        k.kfree_rcu_slab(spies.alloc_box(spy(&k, &SPIES)).ok().unwrap())
            .unwrap();
    }
    k.kvfree_rcu_barrier();
    assert_eq!(SPIES[2].load(Relaxed), 20_000);
    assert_eq!(SPIES[0].load(Relaxed), 0, "a destructor ran on the writer");
    assert_eq!(spies.stats().rcu_sheaves_recycled, 0, "{:?}", spies.stats());
    // No drop glue: nothing runs, so the writer recycles by default.
    let plain = k.slab_cache::<[u64; 3]>("plain").unwrap();
    for i in 0..20_000u64 {
        k.kfree_rcu_slab(plain.alloc_box([i; 3]).ok().unwrap())
            .unwrap();
        if i % 1000 == 999 {
            k.rcu().synchronize();
        }
    }
    assert!(
        plain.stats().rcu_sheaves_recycled > 0,
        "{:?}",
        plain.stats()
    );
    k.kvfree_rcu_barrier();
    plain.shrink();
    assert_eq!(plain.stats().slabs, 0);
}

#[test]
fn with_assist_never_no_destructor_runs_on_the_writer_even_when_behind() {
    static SPIES: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
    let k = Krcu::builder()
        .arena_size(64 << 20)
        .assist(Assist::Never)
        .build()
        .unwrap();
    let cache = k.slab_cache::<Spy>("spies").unwrap();
    // No grace period waited for: the RCU thread may fall behind.
    for _ in 0..50_000 {
        let b = cache.alloc_box(spy(&k, &SPIES)).ok().unwrap();
        k.kfree_rcu_slab(b).unwrap();
    }
    k.kvfree_rcu_barrier();
    assert_eq!(SPIES[2].load(Relaxed), 50_000);
    assert_eq!(SPIES[0].load(Relaxed), 0, "a destructor ran on the writer");
}
